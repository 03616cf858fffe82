/*
 * worker.c — the loop that turns inbox triggers into recomputes.
 *
 * The worker claims a batch of accounts (coalescing their triggers), runs
 * the pipeline once per account, and settles the triggers: done on success,
 * retrying or dead on failure (inbox.c decides which). An unknown account is
 * a terminal failure: no retry will make it exist.
 */
#include "worker.h"
#include "util/clock.h"
#include "util/log.h"

#include <signal.h>
#include <stdio.h>
#include <string.h>

#define BATCH 64

static volatile sig_atomic_t stop_requested;

void dun_worker_request_stop(void)
{
	stop_requested = 1;
}

bool dun_worker_stop_requested(void)
{
	return stop_requested != 0;
}

struct settle_arg {
	const char *worker_id, *account_id;
};

static enum dun_err settle_in_decision(struct dun_db *db, void *arg)
{
	const struct settle_arg *a = arg;
	return dun_inbox_complete_in_tx(db, a->worker_id, a->account_id, dun_clock_now());
}

enum dun_err dun_worker_run_claimed(struct dun_engine *en, const struct dun_inbox_config *cfg,
				    const char *worker_id, const struct dun_inbox_item *item,
				    struct dun_recompute_result *r, enum dun_err *settle_err)
{
	memset(r, 0, sizeof *r);
	struct dun_fence f = {.token = item->token, .lease_ms = cfg->lease_s * 1000};
	snprintf(f.account_id, sizeof f.account_id, "%s", item->account_id);
	snprintf(f.owner, sizeof f.owner, "%s", worker_id);
	enum dun_err se = DUN_OK;
	/* A claim taken in a batch may have run out before its turn came. */
	enum dun_err re = dun_fence_renew(en->db, &f);
	if (re == DUN_OK) {
		struct dun_trigger_ref t = {.id = item->id, .kind = item->kind};
		struct settle_arg sa = {worker_id, item->account_id};
		en->applier.fence = &f;
		en->settle = settle_in_decision;
		en->settle_arg = &sa;
		re = dun_engine_recompute(en, item->account_id, &t, false, r);
		en->applier.fence = NULL;
		en->settle = NULL;
		en->settle_arg = NULL;
	}
	if (re == DUN_E_FENCED) {
		dun_log(DUN_LOG_WARN, "worker.claim_lost", "worker", worker_id, "account",
			item->account_id, "error", r->apply.error_text, NULL);
	} else if (re == DUN_OK) {
		if (!r->settled)
			se = dun_inbox_complete(en->db, worker_id, item->account_id,
						dun_clock_now());
	} else {
		const char *msg = r->apply.error_text[0] ? r->apply.error_text : dun_err_str(re);
		se = dun_inbox_fail(en->db, cfg, worker_id, item->account_id, dun_clock_now(),
				    dun_err_is_retryable(re), msg);
	}
	if (settle_err)
		*settle_err = se;
	return re;
}

enum dun_err dun_worker_drain(struct dun_engine *en, const struct dun_inbox_config *cfg,
			      const char *worker_id, int64_t now, int64_t max_accounts,
			      struct dun_drain_stats *stats)
{
	struct dun_inbox_item items[BATCH];
	memset(stats, 0, sizeof *stats);
	int n_rechecks = 0;
	enum dun_err e = dun_inbox_enqueue_due_rechecks(en->db, now, &n_rechecks);
	if (e != DUN_OK)
		return e;
	stats->rechecks_enqueued = n_rechecks;
	for (;;) {
		if (stop_requested) {
			stats->interrupted = true;
			break;
		}
		int want = BATCH;
		if (max_accounts && max_accounts - stats->accounts < want)
			want = (int)(max_accounts - stats->accounts);
		if (want <= 0)
			break;
		int n = 0;
		e = dun_inbox_claim(en->db, cfg, worker_id, now, want, items, &n);
		if (e != DUN_OK)
			return e;
		if (n == 0)
			break;
		for (int i = 0; i < n; i++) {
			if (stop_requested) {
				/* Nothing of these was started: back to the queue, due now. */
				for (int k = i; k < n && e == DUN_OK; k++)
					e = dun_inbox_release(en->db, worker_id,
							      items[k].account_id, dun_clock_now());
				stats->interrupted = true;
				return e;
			}
			struct dun_recompute_result r;
			enum dun_err re =
			    dun_worker_run_claimed(en, cfg, worker_id, &items[i], &r, &e);
			stats->accounts++;
			stats->triggers += items[i].coalesced;
			stats->consequences_applied += r.apply.n_applied;
			if (re == DUN_OK || r.decision_id)
				*(r.mode == DUN_MODE_ACTIVE ? &stats->active : &stats->observed) +=
				    1;
			if (re != DUN_OK)
				stats->failed++;
			if (e != DUN_OK)
				return e;
		}
	}
	return DUN_OK;
}
