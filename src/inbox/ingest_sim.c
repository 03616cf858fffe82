/*
 * ingest_sim.c — the simulated provider's webhooks, delivered through the
 * real ingest path (see ingest.h). Kept apart from ingest.c so the webhook
 * path (and its fuzz target) does not depend on the simulated provider.
 */
#include "ingest.h"
#include "provider/sim.h"

#include <jansson.h>
#include <stdlib.h>
#include <string.h>

enum dun_err dun_ingest_sim_events(struct dun_db *db, struct dun_sim *sim, int64_t *n_out,
				   char *err, size_t err_size)
{
	int64_t total = 0;
	for (;;) {
		json_t *evs = dun_sim_take_events(sim, 500);
		size_t n = json_array_size(evs);
		if (!n) {
			json_decref(evs);
			break;
		}
		/* A mirror writer beside the workers' claimed work (store/db.h). */
		enum dun_err e = dun_db_begin_mirror(db);
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
	}
	if (n_out)
		*n_out = total;
	return DUN_OK;
}
