/*
 * ingest_sim.c — the simulated provider's webhooks, delivered through the
 * real ingest path (see ingest.h). Kept apart from ingest.c so the webhook
 * path (and its fuzz target) does not depend on the simulated provider.
 */
#include "ingest.h"
#include "provider/sim.h"

#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/*
 * Each batch is taken (marked delivered) and ingested in one transaction:
 * a failure or a crash in between leaves the events queued for the next
 * delivery, never marked delivered without being stored. Whether anything
 * is queued is read first, outside a transaction: most calls (after every
 * recompute of the service) find nothing, and then take no write lock.
 */
enum dun_err dun_ingest_sim_events(struct dun_db *db, struct dun_sim *sim, int64_t *n_out,
				   char *err, size_t err_size)
{
	int64_t total = 0;
	if (n_out)
		*n_out = 0;
	for (;;) {
		bool queued = false;
		enum dun_err e = dun_sim_has_events(sim, &queued);
		if (e != DUN_OK || !queued) {
			if (e != DUN_OK && err && err_size)
				snprintf(err, err_size,
					 "cannot read the simulated provider's events: %s",
					 dun_db_errmsg(db));
			if (n_out)
				*n_out = total;
			return e;
		}
		/* A mirror writer beside the workers' claimed work (store/db.h). */
		e = dun_db_begin_mirror(db);
		if (e != DUN_OK)
			return e;
		json_t *evs = NULL;
		e = dun_sim_take_events_in_tx(sim, 500, &evs);
		size_t n = json_array_size(evs);
		size_t i;
		json_t *ev;
		json_array_foreach(evs, i, ev)
		{
			if (e != DUN_OK)
				break;
			char *body = json_dumps(ev, JSON_COMPACT);
			struct dun_ingest_result r;
			if (!body)
				e = DUN_E_PARSE;
			else
				e = dun_ingest_event_in_tx(db, body, strlen(body), &r, err,
							   err_size);
			free(body);
		}
		if (e == DUN_OK)
			e = dun_db_commit(db);
		if (e != DUN_OK)
			dun_db_rollback(db);
		json_decref(evs);
		if (e != DUN_OK)
			return e;
		total += (int64_t)n;
		if (n == 0)
			break;
	}
	if (n_out)
		*n_out = total;
	return DUN_OK;
}
