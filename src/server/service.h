/*
 * service.h — `dunning serve` as one object: the HTTP server, the webhook
 * committer, the inbox workers, the admin lane and the delivery loop of the
 * platform outbox and outcome events (apply/senders.h), started from one
 * configuration and stopped gracefully.
 *
 *   request threads ──verified body──► committer ──one fsync per batch──► inbox
 *          │                                                              │
 *          └──admin requests──► admin lane            workers ◄──claim────┘
 */
#ifndef DUN_SERVICE_H
#define DUN_SERVICE_H

#include <pthread.h>
#include <stdbool.h>

#include "apply/senders.h"
#include "config/config.h"
#include "core/policy.h"
#include "server/metrics.h"

struct dun_service {
	struct dun_config cfg; /* a copy; secrets stay in here and are never logged */
	struct dun_policy policy;
	struct dun_metrics metrics;
	struct dun_shared_provider *provider;
	struct dun_committer *committer;
	struct dun_workers *workers;
	struct dun_lane *lane;
	struct dun_admin *admin;
	struct dun_panel *panel;
	struct dun_http *http;
	struct dun_senders senders; /* the platform outbox and outcome-event delivery loop */
	pthread_t senders_thread;
	bool senders_started;
	pthread_t email_thread; /* the email sender, on the same struct dun_senders */
	bool email_started;
	char addr[96]; /* the address actually listened on, "127.0.0.1:8080" */
	int port;
};

/*
 * Start everything cfg describes (cfg is copied): load the policy, open and
 * migrate the database, check [rollout] against it, bind the listening address,
 * start the threads. On failure nothing is left running and err says what
 * is wrong; the error is DUN_E_CONFIG for a bad setting, DUN_E_IO for an
 * address that cannot be bound, or the database's error.
 */
enum dun_err dun_service_start(const struct dun_config *cfg, struct dun_service **out, char *err,
			       size_t err_size);
/* Housekeeping the main thread runs a few times a second (expires admin waits). */
void dun_service_tick(struct dun_service *svc);
/*
 * Graceful stop: stop accepting, answer the requests in flight (webhooks
 * are committed first), let each worker finish its recompute, close. false
 * when requests were still in flight after the drain timeout (the process
 * should then exit without further cleanup).
 */
bool dun_service_stop(struct dun_service *svc);

#endif
