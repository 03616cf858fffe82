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
 * The platform: with the local platform the stream reads its table like
 * every other; an HTTP platform is read in batches ([platform] read_batch
 * accounts per POST /accounts/read, in account order, the pending outbox
 * calls applied on top as in a recompute), so a scan of N accounts makes
 * about N / batch requests, not N. A batch that cannot be read fails the
 * scan: it never counts drift on a guess.
 *
 * Reads proceed in windows of WINDOW accounts. The drifting accounts of a
 * window are queued (with enqueue) in one transaction once the window's
 * statements are closed, so a read never spans a write and no read
 * transaction outlives a window.
 */
#include "scan.h"
#include "apply/shadow.h"
#include "gather/platform_read.h"
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

/* The HTTP platform's answers for a run of accounts in id order. */
struct batch {
	struct dun_platform_conn *conn;
	int cap, n, at;
	char (*ids)[DUN_ID_MAX];
	const char **ptrs;
	struct dun_platform_view *views;
};

/* Read the platform for the accounts from first on (first included). */
static enum dun_err batch_fill(struct dun_engine *en, struct batch *b, const char *first,
			       struct dun_scan_result *out)
{
	struct dun_stmt *st =
	    dun_db_stmt(en->db, "SELECT id FROM accounts WHERE id >= ?1 ORDER BY id LIMIT ?2");
	dun_stmt_bind_text(st, 1, first);
	dun_stmt_bind_int(st, 2, b->cap);
	b->n = b->at = 0;
	while (b->n < b->cap && dun_stmt_row(st)) {
		dun_stmt_col_copy(st, 0, b->ids[b->n], DUN_ID_MAX);
		b->ptrs[b->n] = b->ids[b->n];
		b->n++;
	}
	enum dun_err e = dun_stmt_err(st);
	dun_stmt_reset(st);
	if (e != DUN_OK)
		return e;
	e = dun_platform_read_batch(b->conn, en->db, b->ptrs, b->n, b->views, out->error,
				    sizeof out->error);
	out->platform_requests = dun_platform_conn_requests(b->conn);
	return e;
}

/* Put the platform's answer for the account the stream just read into en->snap. */
static enum dun_err batch_apply(struct dun_engine *en, struct batch *b, struct dun_scan_result *out)
{
	const char *id = en->snap.state.account_id;
	if (b->at >= b->n || strcmp(b->ids[b->at], id) != 0) {
		enum dun_err e = batch_fill(en, b, id, out);
		if (e != DUN_OK)
			return e;
		if (b->n == 0 || strcmp(b->ids[0], id) != 0) {
			snprintf(out->error, sizeof out->error,
				 "platform: account %.64s vanished during the scan", id);
			return DUN_E_CONFLICT;
		}
	}
	const struct dun_platform_view *v = &b->views[b->at++];
	dun_platform_view_to_snapshot(v, &en->snap);
	out->kept_accounts += v->n_others > 0;
	return DUN_OK;
}

/*
 * The accounts marked incomplete (their last recompute could not read every
 * store, apply/recompute.c), sorted for bsearch; usually none.
 */
struct idset {
	char (*ids)[DUN_ID_MAX];
	size_t n, cap;
};

static int id_cmp(const void *a, const void *b)
{
	return strcmp((const char *)a, (const char *)b);
}

static enum dun_err load_incomplete(struct dun_db *db, struct idset *set)
{
	struct dun_stmt *st = dun_db_stmt(db, "SELECT account_id FROM incomplete_accounts");
	int rc;
	while ((rc = dun_stmt_step(st)) == DUN_STEP_ROW) {
		if (set->n == set->cap) {
			set->cap = set->cap ? set->cap * 2 : 16;
			set->ids = dun_realloc(set->ids, sizeof *set->ids * set->cap);
		}
		dun_stmt_col_copy(st, 0, set->ids[set->n++], DUN_ID_MAX);
	}
	enum dun_err e = rc == DUN_STEP_DONE ? DUN_OK : dun_stmt_err(st);
	dun_stmt_reset(st);
	if (set->n > 1)
		qsort(set->ids, set->n, sizeof *set->ids, id_cmp);
	return e;
}

static bool in_set(const struct idset *set, const char *id)
{
	return set->n && bsearch(id, set->ids, set->n, sizeof *set->ids, id_cmp) != NULL;
}

/* Accounts the local platform restricts for another reason. */
static enum dun_err local_kept(struct dun_engine *en, struct dun_scan_result *out)
{
	struct dun_stmt *st =
	    dun_db_stmt(en->db, "SELECT COUNT(DISTINCT account_id) FROM platform_restrictions");
	if (dun_stmt_row(st))
		out->kept_accounts = dun_stmt_col_int64(st, 0);
	enum dun_err e = dun_stmt_err(st);
	dun_stmt_reset(st);
	return e;
}

enum dun_err dun_scan_run(struct dun_engine *en, int64_t now, bool enqueue,
			  dun_scan_progress_fn progress, void *arg, struct dun_scan_result *out)
{
	memset(out, 0, sizeof *out);
	out->examples = json_array();
	struct dun_stream stream;
	/* At 100% active nobody observes: no per-account question to ask. */
	bool all_active = dun_rollout_all_active(en->db, &en->rollout);
	const struct dun_platform_reader *reader = en->applier.platform.reader;
	struct batch b = {0};
	if (reader) {
		b.conn = dun_platform_conn_new(reader);
		b.cap = reader->batch > 0 ? reader->batch : 500;
		b.ids = dun_malloc(sizeof *b.ids * (size_t)b.cap);
		b.ptrs = dun_malloc(sizeof *b.ptrs * (size_t)b.cap);
		b.views = dun_malloc(sizeof *b.views * (size_t)b.cap);
	}
	struct idset incomplete = {0};
	enum dun_err e = reader ? DUN_OK : local_kept(en, out);
	if (e == DUN_OK)
		e = load_incomplete(en->db, &incomplete);
	if (e == DUN_OK)
		e = dun_stream_init(&stream, en->db, NULL, 0);
	if (e != DUN_OK) {
		free(incomplete.ids);
		dun_platform_conn_free(b.conn);
		free(b.ids);
		free(b.ptrs);
		free(b.views);
		return e;
	}
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
		if (reader && (e = batch_apply(en, &b, out)) != DUN_OK)
			break;
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
		/* Decided on what the mirror holds, but a recompute could not read it all. */
		if (in_set(&incomplete, s->account_id))
			m |= 1u << DUN_DRIFT_INCOMPLETE;
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
	free(incomplete.ids);
	dun_platform_conn_free(b.conn);
	free(b.ids);
	free(b.ptrs);
	free(b.views);
	return e;
}
