/*
 * scan.c — the drift scan (see scan.h).
 *
 * The scan reads every account through the streaming GATHER
 * (gather/stream.h), which builds the snapshot dun_gather() would build
 * from a few ordered passes over the tables instead of ten point queries per
 * account, and runs the same EVALUATE and DECIDE a recompute uses, so
 * "drift" means exactly "a recompute would change something the stores
 * disagree on".
 *
 * Reads proceed in windows of WINDOW accounts. The drifting accounts of a
 * window are queued (with enqueue) in one transaction once the window's
 * statements are closed, so a read never spans a write and no read
 * transaction outlives a window.
 */
#include "scan.h"
#include "apply/shadow.h"
#include "gather/shadow.h"
#include "gather/stream.h"
#include "inbox/inbox.h"
#include "util/mem.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define WINDOW	 4096
#define EXAMPLES 20

/* Queue a drift_detected trigger for each pending account, in one transaction. */
static enum dun_err flush(struct dun_engine *en, char (*pending)[DUN_ID_MAX], int *n, int64_t now,
			  struct dun_scan_result *out)
{
	if (!*n)
		return DUN_OK;
	enum dun_err e = dun_db_begin(en->db);
	for (int i = 0; i < *n && e == DUN_OK; i++) {
		char key[128];
		snprintf(key, sizeof key, "drift:%.63s:%lld", pending[i], (long long)now);
		bool inserted = false;
		e = dun_inbox_enqueue(en->db, pending[i], "drift_detected", "scan", "", key, 0,
				      &inserted, NULL);
		out->enqueued += inserted;
	}
	if (e == DUN_OK)
		e = dun_db_commit(en->db);
	if (e != DUN_OK)
		dun_db_rollback(en->db);
	*n = 0;
	return e;
}

static void count(struct dun_scan_result *out, const char *account, unsigned m,
		  const struct dun_plan *plan)
{
	out->drifting++;
	for (int c = 0; c < DUN_DRIFT__COUNT; c++)
		if (m & (1u << c))
			out->per_class[c]++;
	if (json_array_size(out->examples) >= EXAMPLES)
		return;
	json_t *classes = json_array();
	for (int c = 0; c < DUN_DRIFT__COUNT; c++)
		if (m & (1u << c))
			json_array_append_new(classes,
					      json_string(dun_drift_name((enum dun_drift_class)c)));
	/* The consequence types a recompute would plan, each once. */
	json_t *types = json_array();
	for (int i = 0; i < plan->n; i++) {
		const char *t = dun_conseq_name(plan->items[i].type);
		bool seen = false;
		for (int k = 0; k < i && !seen; k++)
			seen = plan->items[k].type == plan->items[i].type;
		if (!seen)
			json_array_append_new(types, json_string(t));
	}
	json_array_append_new(out->examples, json_pack("{s:s, s:o, s:o}", "account", account,
						       "classes", classes, "consequences", types));
}

enum dun_err dun_scan_run(struct dun_engine *en, int64_t now, bool enqueue,
			  dun_scan_progress_fn progress, void *arg, struct dun_scan_result *out)
{
	memset(out, 0, sizeof *out);
	out->examples = json_array();
	struct dun_stream stream;
	/* At 100% active nobody observes: no per-account question to ask. */
	bool all_active = dun_rollout_all_active(en->db, &en->rollout);
	enum dun_err e = dun_stream_init(&stream, en->db, NULL, 0);
	if (e != DUN_OK)
		return e;
	char(*pending)[DUN_ID_MAX] = enqueue ? dun_malloc(sizeof *pending * WINDOW) : NULL;
	int n_pending = 0, in_window = 0;
	for (;;) {
		bool got = false;
		e = dun_stream_next(&stream, &en->snap, &got);
		if (e != DUN_OK || !got)
			break;
		/*
		 * No targeted refresh (gather/refresh.h) here, deliberately:
		 * the scan is a read-only estimate over every account and
		 * must never call the provider per account. The accounts it
		 * finds drifting are re-checked by the recompute it enqueues,
		 * which refreshes what it needs.
		 */
		e = dun_engine_decide(en, now);
		if (e != DUN_OK)
			break;
		const struct dun_state *s = &en->snap.state;
		out->accounts++;
		out->planned += en->plan.n;
		unsigned m = dun_drift_classify_plan(s, &en->desired, &en->plan);
		if (!all_active && dun_rollout_mode(en->db, &en->rollout, s->account_id, NULL) ==
				       DUN_MODE_OBSERVE) {
			/* Real-store drift of an observe account: information only. */
			out->observe_accounts++;
			out->observe_real_drifting += m != 0;
			for (int c = 0; c < DUN_DRIFT__COUNT; c++)
				out->observe_real_per_class[c] += (m >> c) & 1u;
			e = dun_shadow_overlay(en->db, &en->snap);
			if (e == DUN_OK)
				e = dun_engine_decide(en, now);
			/* As a recompute does: what the shadow already holds is done. */
			if (e == DUN_OK)
				e = dun_shadow_filter_plan(en->db, &en->plan);
			if (e != DUN_OK)
				break;
			m = dun_drift_classify_plan(s, &en->desired, &en->plan);
		}
		if (m) {
			count(out, s->account_id, m, &en->plan);
			if (enqueue)
				memcpy(pending[n_pending++], s->account_id, DUN_ID_MAX);
		}
		if (progress && out->accounts % 10000 == 0)
			progress(out->accounts, arg);
		if (++in_window == WINDOW) {
			in_window = 0;
			dun_stream_pause(&stream);
			e = flush(en, pending, &n_pending, now, out);
			if (e != DUN_OK)
				break;
		}
	}
	dun_stream_pause(&stream);
	if (e == DUN_OK)
		e = flush(en, pending, &n_pending, now, out);
	dun_stream_free(&stream);
	free(pending);
	return e;
}
