/*
 * service.c — `dunning serve` assembled (see service.h): the order in which
 * its parts start and stop, and the routes.
 *
 * Start-up fails fast and leaves nothing running: the policy and the
 * database are checked, the listening address is bound (so a port in use
 * is reported before any thread exists), then the committer, the workers
 * and the admin lane open their own connections, and only then does the
 * HTTP server start accepting.
 *
 * Stopping is the reverse, gracefully: stop accepting; answer parked
 * support recomputes (202, their triggers stay queued); wait until every
 * request in flight is answered, which needs the committer (webhooks are
 * answered after their commit) and the lane to keep running — for at most
 * [server] shutdown_grace_ms, after which connections still sending their
 * request are cut (nothing of theirs was stored) and the complete ones
 * get a few more seconds; stop the HTTP
 * server; drain and stop the committer and the lane; and let each worker
 * finish the recompute it is in.
 */
#include "service.h"
#include "apply/effects_setup.h"
#include "apply/rollout.h"
#include "config/policy_file.h"
#include "server/admin.h"
#include "server/panel.h"
#include "server/committer.h"
#include "server/http.h"
#include "server/lane.h"
#include "server/shared_provider.h"
#include "server/webhook.h"
#include "server/workers.h"
#include "store/db.h"
#include "util/log.h"
#include "util/mem.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* Admin threads: enough that one slow provider call does not hold up the others. */
#define LANE_THREADS	   2
/*
 * After [server] shutdown_grace_ms, connections still sending a request are
 * cut; requests already complete then get this long to be answered (a
 * webhook waits for its commit, which is quick).
 */
#define DRAIN_AFTER_CUT_MS 5000
/* A connection with no traffic at all is closed after this. */
#define IDLE_TIMEOUT_S	   60

static const struct dun_http_route routes[] = {
    {"POST", "/webhooks/stripe", dun_webhook_handle},
    {"GET", "/healthz", dun_admin_healthz},
    {"GET", "/readyz", dun_admin_readyz},
    {"GET", "/metrics", dun_admin_metrics},
    {"GET", "/accounts/{}", dun_admin_account},
    {"POST", "/accounts/{}/recompute", dun_admin_recompute},
    {"POST", "/accounts/{}/pay-bad-debt", dun_admin_pay_bad_debt},
    {"GET", "/events", dun_admin_events},
    {"POST", "/events/{}/retry", dun_admin_retry},
    /* the support panel (panel.c) */
    {"GET", "/", dun_panel_get},
    {"GET", "/panel", dun_panel_get},
    {"GET", "/panel/", dun_panel_get},
    {"GET", "/panel/style.css", dun_panel_get},
    {"GET", "/panel/login", dun_panel_get},
    {"POST", "/panel/login", dun_panel_post},
    {"POST", "/panel/logout", dun_panel_post},
    {"GET", "/panel/search", dun_panel_get},
    {"GET", "/panel/accounts/{}", dun_panel_get},
    {"GET", "/panel/accounts/{}/recompute", dun_panel_get},
    {"POST", "/panel/accounts/{}/recompute", dun_panel_post},
    {"POST", "/panel/accounts/{}/pay-bad-debt", dun_panel_post},
    {"POST", "/panel/accounts/{}/kill-switch", dun_panel_post},
    {"GET", "/panel/triggers", dun_panel_get},
    {"POST", "/panel/triggers/{}/retry", dun_panel_post},
    {"GET", "/panel/outboxes", dun_panel_get},
    {"GET", "/panel/rollout", dun_panel_get},
    {"GET", "/panel/drift", dun_panel_get},
    {"POST", "/panel/drift/scan", dun_panel_post},
    {"GET", "/panel/actions", dun_panel_get},
};

/* How long a worker gives way to a webhook burst before it claims anyway. */
#define WORKER_YIELD_MAX_MS 200

static bool settled(void *arg, struct dun_db *db, const char *account_id)
{
	struct dun_service *svc = arg;
	/*
	 * What the simulated provider did during this recompute (a retry that
	 * succeeded, a consolidated invoice) reaches the mirror as its webhooks
	 * would, and may start the next recompute.
	 */
	int64_t delivered = 0;
	bool more = dun_shared_provider_deliver_called(svc->provider, &delivered) == DUN_OK &&
		    delivered > 0;
	dun_admin_settled(svc->admin, db, account_id);
	return more;
}

static void worker_yield(void *arg)
{
	struct dun_service *svc = arg;
	dun_committer_wait_idle(svc->committer, WORKER_YIELD_MAX_MS);
}

/*
 * On SQLite a worker's batch holds the one write lock the committer needs.
 * On PostgreSQL the committer's transaction runs beside the workers' (they
 * meet only on the mirror lock, which a batch merely tries): no need to
 * cut batches short there.
 */
static bool worker_contended(void *arg)
{
	struct dun_service *svc = arg;
	return !dun_db_is_url(svc->cfg.db_path) && dun_committer_busy(svc->committer);
}

static bool committer_busy(void *arg)
{
	struct dun_service *svc = arg;
	return dun_committer_busy(svc->committer);
}

/*
 * The simulated provider learns the webhooks stored since it last did
 * (provider/sim.c, "Learning") once no webhook batch has been committed
 * for LEARN_QUIET_MS (not between the batches of a burst, where its
 * transactions would take the write lock and CPU from the webhooks), and
 * stops between its transactions as soon as a batch waits. An operation of
 * the simulator learns whatever is left first.
 */
#define LEARN_QUIET_MS 200

static bool housekeep(void *arg)
{
	struct dun_service *svc = arg;
	/* What another process (a CLI on the same store) had the simulator queue. */
	int64_t delivered = 0;
	bool more =
	    dun_shared_provider_deliver(svc->provider, &delivered) == DUN_OK && delivered > 0;
	if (dun_committer_quiet(svc->committer, LEARN_QUIET_MS))
		dun_shared_provider_learn(svc->provider, committer_busy, svc);
	return more;
}

static void wake_workers(void *arg)
{
	struct dun_service *svc = arg;
	if (svc->workers)
		dun_workers_wake(svc->workers);
}

/*
 * The database holds the rollout state (apply/rollout.h); [rollout] only
 * states what the operator expects it to be. A disagreement refuses the
 * start-up instead of silently writing one over the other.
 */
static enum dun_err check_rollout(const struct dun_config *cfg, char *err, size_t err_size)
{
	if (!cfg->rollout_mode[0] && cfg->rollout_percent < 0)
		return DUN_OK;
	struct dun_db *db = NULL;
	enum dun_err e = dun_db_open(cfg->db_path, &db, err, err_size);
	if (e != DUN_OK)
		return e;
	char why[512] = "";
	e = dun_rollout_check_expected(db, cfg->rollout_mode, cfg->rollout_percent, why,
				       sizeof why);
	if (e != DUN_OK)
		snprintf(err, err_size, "%s: %s", cfg->path[0] ? cfg->path : cfg->db_path, why);
	dun_db_close(db);
	return e;
}

static int http_threads(void)
{
	long n = sysconf(_SC_NPROCESSORS_ONLN);
	return n < 1 ? 1 : n > 8 ? 8 : (int)n;
}

/* Lane first (its jobs wake the workers), then the committer (it wakes them too). */
static void teardown(struct dun_service *svc)
{
	if (svc->email_started) {
		dun_senders_stop(&svc->senders);
		pthread_join(svc->email_thread, NULL);
		svc->email_started = false;
	}
	if (svc->senders_started) {
		dun_senders_stop(&svc->senders);
		pthread_join(svc->senders_thread, NULL);
	}
	dun_lane_stop(svc->lane);
	dun_committer_stop(svc->committer);
	dun_workers_stop(svc->workers);
	dun_admin_destroy(svc->admin);
	dun_panel_destroy(svc->panel);
	dun_shared_provider_destroy(svc->provider);
	free(svc);
}

enum dun_err dun_service_start(const struct dun_config *cfg, struct dun_service **out, char *err,
			       size_t err_size)
{
	*out = NULL;
	struct dun_service *svc = dun_calloc(1, sizeof *svc);
	svc->cfg = *cfg;
	cfg = &svc->cfg;
	dun_metrics_init(&svc->metrics);
	enum dun_err e = DUN_OK;
	if (cfg->policy_path[0])
		e = dun_policy_file_load(cfg->policy_path, &svc->policy, err, err_size);
	else
		dun_policy_defaults(&svc->policy);
	if (e != DUN_OK) {
		free(svc);
		return DUN_E_CONFIG;
	}
	/* Opening once here migrates the schema before any thread connects. */
	struct dun_db *db = NULL;
	e = dun_db_open(cfg->db_path, &db, err, err_size);
	if (e != DUN_OK) {
		free(svc);
		return e;
	}
	/* Effects are checked once here (templates, SMTP settings) for a clear error. */
	struct dun_effects fx;
	e = dun_effects_open(cfg, db, false, &fx, err, err_size);
	if (e == DUN_OK) {
		if (fx.warning[0])
			dun_log(DUN_LOG_WARN, "server.effects_warning", "message", fx.warning,
				NULL);
		dun_effects_close(&fx);
	}
	dun_db_close(db);
	if (e != DUN_OK) {
		free(svc);
		return e;
	}
	e = check_rollout(cfg, err, err_size);
	if (e != DUN_OK) {
		free(svc);
		return e;
	}
	e = dun_shared_provider_new(cfg, &svc->provider, err, err_size);
	if (e != DUN_OK) {
		free(svc);
		return e;
	}
	int fd = -1;
	e = dun_http_listen(cfg->listen_host, cfg->listen_port, &fd, svc->addr, sizeof svc->addr,
			    err, err_size);
	if (e != DUN_OK) {
		teardown(svc);
		return e;
	}
	const char *colon = strrchr(svc->addr, ':');
	svc->port = colon ? atoi(colon + 1) : 0;
	svc->admin = dun_admin_new(svc);
	svc->panel = dun_panel_new(svc);
	struct dun_provider provider = dun_shared_provider_get(svc->provider);
	e = dun_committer_start(cfg->db_path, cfg->group_commit_max, &svc->metrics, wake_workers,
				svc, &svc->committer, err, err_size);
	/* Where the simulator does not learn lazily, in the committer's transaction. */
	if (e == DUN_OK && dun_shared_provider_learns_with_commit(svc->provider))
		dun_committer_set_observer(svc->committer, dun_shared_provider_observe,
					   svc->provider);
	if (e == DUN_OK)
		e = dun_workers_start(cfg, &svc->policy, provider, &svc->metrics, "serve",
				      &(struct dun_workers_hooks){.settled = settled,
								  .yield = worker_yield,
								  .contended = worker_contended,
								  .housekeep = housekeep,
								  .arg = svc},
				      &svc->workers, err, err_size);
	if (e == DUN_OK)
		e = dun_lane_start(cfg, &svc->policy, provider, LANE_THREADS, &svc->lane, err,
				   err_size);
	if (e == DUN_OK) {
		dun_senders_init(&svc->senders, cfg->db_path, cfg);
		if (pthread_create(&svc->senders_thread, NULL, dun_senders_thread, &svc->senders) ==
		    0) {
			svc->senders_started = true;
		} else {
			snprintf(err, err_size, "cannot start the delivery thread");
			e = DUN_E_IO;
		}
	}
	if (e == DUN_OK) {
		if (pthread_create(&svc->email_thread, NULL, dun_senders_email_thread,
				   &svc->senders) == 0) {
			svc->email_started = true;
		} else {
			snprintf(err, err_size, "cannot start the email thread");
			e = DUN_E_IO;
		}
	}
	if (e == DUN_OK) {
		struct dun_http_config hc = {
		    .listen_fd = fd,
		    .threads = http_threads(),
		    .body_max_bytes = cfg->body_max_bytes,
		    .max_connections = (int)cfg->max_connections,
		    .max_connections_per_client = (int)cfg->max_connections_per_client,
		    .header_timeout_ms = cfg->header_timeout_ms,
		    .idle_timeout_s = IDLE_TIMEOUT_S,
		    .routes = routes,
		    .n_routes = (int)(sizeof routes / sizeof routes[0]),
		    .arg = svc,
		    .metrics = &svc->metrics,
		};
		e = dun_http_start(&hc, &svc->http, err, err_size);
	}
	if (e != DUN_OK) {
		close(fd);
		teardown(svc);
		return e;
	}
	char workers[16], shown_db[sizeof cfg->db_path];
	snprintf(workers, sizeof workers, "%d", cfg->workers);
	dun_db_redact(cfg->db_path, shown_db, sizeof shown_db);
	dun_log(DUN_LOG_INFO, "server.listening", "addr", svc->addr, "workers", workers, "provider",
		dun_shared_provider_kind(svc->provider), "db", shown_db, NULL);
	if (!cfg->n_webhook_secrets)
		dun_log(DUN_LOG_WARN, "server.webhooks_disabled", "reason",
			"no [stripe] webhook_secrets: POST /webhooks/stripe answers 503", NULL);
	if (!cfg->admin_token[0])
		dun_log(DUN_LOG_WARN, "server.admin_disabled", "reason",
			"no [admin] token: the admin API answers 503", NULL);
	*out = svc;
	return DUN_OK;
}

void dun_service_tick(struct dun_service *svc)
{
	dun_admin_expire(svc->admin);
}

bool dun_service_stop(struct dun_service *svc)
{
	dun_log(DUN_LOG_INFO, "server.stopping", "addr", svc->addr, NULL);
	dun_http_begin_shutdown(svc->http);
	dun_admin_release_all(svc->admin);
	if (!dun_http_wait_idle(svc->http, svc->cfg.shutdown_grace_ms)) {
		int n = dun_http_cut_unfinished(svc->http);
		char cut[24], grace[24];
		snprintf(cut, sizeof cut, "%d", n);
		snprintf(grace, sizeof grace, "%lld", (long long)svc->cfg.shutdown_grace_ms);
		dun_log(DUN_LOG_WARN, "server.grace_over", "cut_connections", cut,
			"shutdown_grace_ms", grace, NULL);
		if (!dun_http_wait_idle(svc->http, DRAIN_AFTER_CUT_MS)) {
			dun_log(DUN_LOG_ERROR, "server.drain_timeout", "reason",
				"complete requests were still unanswered after the grace period",
				NULL);
			return false;
		}
	}
	dun_http_stop(svc->http);
	svc->http = NULL;
	/*
	 * Every request is answered: from here a lost database is not waited
	 * for, so the workers and senders stop within a statement even while
	 * PostgreSQL is unreachable (their work is durable in the inbox and
	 * the outboxes, and the next start takes it up).
	 */
	dun_db_stop_retrying();
	teardown(svc);
	dun_log(DUN_LOG_INFO, "server.stopped", NULL);
	return true;
}
