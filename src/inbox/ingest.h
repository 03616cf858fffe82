/*
 * ingest.h — one provider event in: stored, folded into the mirror, and
 * turned into a trigger, all in one transaction.
 *
 * The same function serves `dunning ingest FILE` and POST /webhooks/stripe,
 * so both take exactly the same path.
 */
#ifndef DUN_INGEST_H
#define DUN_INGEST_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <jansson.h>

#include "store/db.h"

struct dun_ingest_result {
	char event_id[96];
	char type[64];
	char account_id[64];
	bool duplicate; /* the event id was already stored */
	bool stale;	/* the payload was older than the mirror's copy */
	bool triggered; /* a trigger was enqueued (or coalesced into one) */
	int64_t trigger_id;
	const char *outcome; /* static: "triggered", "duplicate", "ignored_type", "unmapped", ... */
};

/*
 * Ingest one Stripe-format event (body, len bytes, need not be
 * NUL-terminated). Malformed input is DUN_E_PARSE with err saying what is
 * wrong; nothing is written then. Runs its own transaction.
 */
enum dun_err dun_ingest_event(struct dun_db *db, const char *body, size_t len,
			      struct dun_ingest_result *res, char *err, size_t err_size);

/* Same, inside the caller's transaction (for batching many events in one commit). */
enum dun_err dun_ingest_event_in_tx(struct dun_db *db, const char *body, size_t len,
				    struct dun_ingest_result *res, char *err, size_t err_size);

/*
 * Parse an event body as dun_ingest_event_in_tx() does: *ev_out is a new
 * reference (NULL on DUN_E_PARSE, with err saying where). The webhook
 * parses on its request thread, outside the group commit's transaction.
 */
enum dun_err dun_ingest_parse(const char *body, size_t len, json_t **ev_out, char *err,
			      size_t err_size);

/*
 * dun_ingest_event_in_tx() for an event already parsed by
 * dun_ingest_parse() from body (stored as the raw event). Borrows ev.
 */
enum dun_err dun_ingest_parsed_in_tx(struct dun_db *db, json_t *ev, const char *body, size_t len,
				     struct dun_ingest_result *res, char *err, size_t err_size);

struct dun_sim;

/*
 * Deliver the simulated provider's queued webhooks (see provider/sim.h)
 * through the same ingest path, in batches of one transaction each.
 * *n_out (may be NULL) gets the number of events delivered.
 */
enum dun_err dun_ingest_sim_events(struct dun_db *db, struct dun_sim *sim, int64_t *n_out,
				   char *err, size_t err_size);

/* The trigger kind an event type starts, or NULL when it starts none. */
const char *dun_ingest_trigger_kind(const char *event_type, bool consolidated);

#endif
