/*
 * events_sender.h — EXECUTE: payment-outcome events out.
 *
 * The applier stores each stage change and lift as a row of outcome_events
 * (the payload final, with a stable id) in the transaction that records it.
 * This sender posts every event to every configured endpoint ([events]
 * endpoints), signed like Stripe signs its webhooks, at least once, retried
 * with backoff. Payload schema and signature check: docs/events.md.
 */
#ifndef DUN_EVENTS_SENDER_H
#define DUN_EVENTS_SENDER_H

#include <stdbool.h>
#include <stdint.h>

#include "apply/outbox.h"
#include "config/config.h"
#include "store/db.h"

/* "evt_" + 32 hex digits + NUL */
#define DUN_EVENT_ID_SIZE	    37
#define DUN_EVENT_SCHEMA_VERSION    1
#define DUN_EVENTS_BACKOFF_BASE_S   2
#define DUN_EVENTS_BACKOFF_MAX_S    3600
#define DUN_EVENTS_RUN_MAX	    1000 /* posts per run at most */
/* The header that carries "t=<unix seconds>,v1=<hex HMAC-SHA256>". */
#define DUN_EVENTS_SIGNATURE_HEADER "Dunning-Signature"

/*
 * The stable id of the event with this dedup key: "evt_" and the first 32
 * hex digits of SHA-256(key). Same key, same id, in every process and
 * version; receivers deduplicate on it.
 */
void dun_event_id(const char *key, char out[DUN_EVENT_ID_SIZE]);

struct dun_events_stats {
	/* this run */
	int64_t queued; /* delivery rows created for new events */
	int64_t attempted;
	int64_t sent;
	int64_t retried;
	int64_t dead;
	bool stopped_early; /* some endpoint did not answer: its rest waits */
	bool more;	    /* DUN_EVENTS_RUN_MAX reached: call again */
	/* the deliveries after the run */
	int64_t pending;
	int64_t dead_total;
	int64_t oldest_pending_at;
};

/*
 * Queue a delivery of every event not yet queued for each configured
 * endpoint (an endpoint added later receives the events already stored),
 * then post what is due at now: per endpoint, in event order per account
 * (a lift never overtakes the stage change before it), claimed like the
 * platform outbox so several senders never post one delivery at once.
 * Each post carries the stored payload and a fresh signature made at now.
 * DUN_E_CONFIG when endpoints are set but no secret; DUN_OK otherwise, even
 * when posts failed (failures are row states).
 */
enum dun_err dun_events_sender_run_once(struct dun_db *db, const struct dun_config *cfg,
					int64_t now, struct dun_events_stats *stats);

/* Move dead deliveries back to pending (event_id 0: all); *n_out counts them. */
enum dun_err dun_events_requeue_dead(struct dun_db *db, int64_t event_id, int64_t now, int *n_out);

#endif
