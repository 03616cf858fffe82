/*
 * worker.c — the loop that turns inbox triggers into recomputes.
 *
 * The worker claims a batch of accounts (coalescing their triggers), runs
 * the pipeline once per account, and settles the triggers: done on success,
 * retrying or dead on failure (inbox.c decides which). An unknown account is
 * a terminal failure: no retry will make it exist.
 *
 * Batches
 * -------
 * Every commit is an fsync, and the store does several times more rows per
 * second in large transactions than in single-row ones. So a drain works
 * the accounts it claimed in shared transactions: one BEGIN, then for each
 * account a SAVEPOINT, inside which it checks and renews the account's
 * claim, gathers, decides, records the decision, applies the plan's
 * engine-DB consequences (engine tables, email outbox, platform outbox) and
 * settles the account's triggers; then RELEASE, and the next account. A
 * transaction takes no new account after batch_max accounts or
 * batch_budget_us of work, so the write lock is never held much longer than
 * that and webhooks are not kept waiting; then COMMIT. On PostgreSQL a
 * batch holds no store-wide lock against webhooks or other workers, only
 * its accounts' rows: its budget is batch_budget_concurrent_us of this
 * thread's CPU time (or ten times that of the clock), so a fleet of workers
 * on busy CPUs, where an account's wall time grows with the number of
 * processes, still shares commits instead of committing every account
 * alone; only a batch that took the mirror
 * writers' lock (an account whose plan wrote the mirror, which webhook
 * batches write too) commits after that account. When the caller
 * says a writer is waiting (cfg->contended: the service's webhook
 * committer), the transaction commits after the account it is in and the
 * next one begins only after cfg->give_way: a waiting webhook batch waits
 * for one account's work and a commit, not for a whole batch.
 *
 * One account cannot spoil the others. A batch is first run without the
 * savepoints (they cost a copy of every page an account writes on SQLite,
 * two round trips on PostgreSQL); if any account of it ends otherwise than
 * done or deferred before its decision, that pass is rolled back whole and
 * the same accounts run again with a savepoint each. There a claim another
 * worker took over (DUN_E_FENCED) or any failure rolls back to that
 * account's savepoint: nothing of it stays. A failure is then recorded (a failed decision, the
 * triggers to retrying or dead, as unbatched) in the same savepoint; a lost
 * claim is left to its new owner, nothing settled.
 *
 * No network inside the transaction. An account whose pass would wait on
 * one — an HTTP platform to read, a provider refresh of the mirror, a plan
 * with a provider call or a destructive consequence (which re-reads the
 * provider first) — is rolled back to its savepoint undecided and run after
 * the COMMIT through the unbatched path (dun_worker_run_claimed), with its
 * own transactions around each call, as before batching.
 *
 * Claims in the batch. Where one writer holds the store (SQLite: the
 * batch's transaction is the store's write lock), the drain claims its
 * accounts inside its first batch's transaction (dun_worker_claim_run)
 * instead of in a transaction of their own: the claims, the triggers moved
 * to processing, the work and the settling then reach the log once, in one
 * commit, where they took two (the claim's pages were written twice). A
 * quick pass that must be redone takes its claims back with it, and the
 * careful pass claims again. Claimed accounts the first batch did not reach
 * keep their claims by its commit and run in the next batches as before.
 * Where processes claim beside each other (PostgreSQL), a claim is its own
 * short transaction first: it must be visible to the others before the
 * work starts, and holds no lock while it waits.
 *
 * Crashes. A trigger is settled in the transaction that holds its effects:
 * the decision, the `applied` records under their keys, the outbox rows.
 * A crash before the COMMIT loses every account of the batch together: on
 * SQLite a first batch's claims go with it (the triggers are still ready);
 * otherwise their triggers stay in processing under claims of a dead
 * process; the next claim takes them back and recomputes them from the
 * state as it was.
 * After the COMMIT all of them are done, once. Nothing is acknowledged
 * before it is durable and nothing is applied twice. A COMMIT that fails
 * means nothing of the batch landed: its accounts run again, unbatched.
 */
#include "worker.h"
#include "util/clock.h"
#include "util/log.h"
#include "util/mem.h"

#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
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

/* The process was asked to stop, or the caller's own stop says so. */
static bool stopping(const struct dun_inbox_config *cfg)
{
	return stop_requested || (cfg->should_stop && cfg->should_stop(cfg->stop_arg));
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

/* What one claimed account did, for the drain's counts. */
static void tally(struct dun_drain_stats *stats, const struct dun_inbox_item *item,
		  const struct dun_recompute_result *r, enum dun_err re, bool batched)
{
	stats->accounts++;
	stats->triggers += item->coalesced;
	stats->consequences_applied += r->apply.n_applied;
	if (re == DUN_OK || r->decision_id)
		*(r->mode == DUN_MODE_ACTIVE ? &stats->active : &stats->observed) += 1;
	if (re != DUN_OK)
		stats->failed++;
	*(batched ? &stats->batched : &stats->unbatched) += 1;
}

/* The unbatched path for one claimed account, counted. */
static enum dun_err run_alone(struct dun_engine *en, const struct dun_inbox_config *cfg,
			      const char *worker_id, const struct dun_inbox_item *item,
			      struct dun_drain_stats *stats)
{
	struct dun_recompute_result r;
	enum dun_err se = DUN_OK;
	enum dun_err re = dun_worker_run_claimed(en, cfg, worker_id, item, &r, &se);
	tally(stats, item, &r, re, false);
	return se;
}

enum slot_state {
	SLOT_DONE,     /* committed with the batch */
	SLOT_FAILED,   /* rolled back; recorded as failed with the batch */
	SLOT_FENCED,   /* rolled back; the claim is another worker's */
	SLOT_DEFERRED, /* rolled back undecided; to run unbatched */
};

struct slot {
	enum slot_state state;
	enum dun_err re;
	struct dun_recompute_result r;
};

/*
 * After a failed batched pass, rolled back to the account's savepoint:
 * record the failure as the unbatched path would (a failed decision when
 * the plan failed, the triggers to retrying or dead) in the savepoint.
 */
static enum dun_err record_failure(struct dun_engine *en, const struct dun_inbox_config *cfg,
				   const char *worker_id, const struct dun_inbox_item *item,
				   const struct dun_trigger_ref *t, struct slot *sl)
{
	const char *msg = sl->r.apply.error_text[0] ? sl->r.apply.error_text : dun_err_str(sl->re);
	enum dun_err e = DUN_OK;
	if (sl->r.apply.n_failed)
		e = dun_engine_record_failure(en, t, sl->r.mode, msg, &sl->r.decision_id);
	sl->r.apply.n_applied = 0;
	if (e == DUN_OK)
		e = dun_inbox_fail_in_tx(en->db, cfg, worker_id, item->account_id, dun_clock_now(),
					 dun_err_is_retryable(sl->re), msg);
	return e;
}

/* What became of one account of a batch, for the batch's loop. */
enum batch_step {
	STEP_ON,     /* settled in the slot: go on with the next account */
	STEP_BROKEN, /* the transaction is unusable: roll back whole, accounts alone */
	STEP_REDO,   /* the quick pass cannot keep this outcome: roll back, redo carefully */
};

/*
 * One account of a batch. careful: inside a savepoint of its own, so that
 * a failed or fenced account is rolled back alone and its failure recorded
 * in its place. Not careful (a batch's first pass): no savepoint, which
 * saves the copy of every page the account writes into the savepoint's
 * journal on SQLite and two round trips on PostgreSQL; then only a clean
 * outcome is kept (done, or deferred before anything but its claim's
 * renewal was written), and anything else makes the batch run again,
 * carefully, from its first account.
 */
static enum batch_step run_in_batch(struct dun_engine *en, const struct dun_inbox_config *cfg,
				    const char *worker_id, const struct dun_inbox_item *item,
				    struct slot *sl, bool careful)
{
	memset(sl, 0, sizeof *sl);
	if (careful && dun_db_savepoint(en->db, "batch_account") != DUN_OK)
		return STEP_BROKEN;
	struct dun_fence f = {.token = item->token, .lease_ms = cfg->lease_s * 1000};
	snprintf(f.account_id, sizeof f.account_id, "%s", item->account_id);
	snprintf(f.owner, sizeof f.owner, "%s", worker_id);
	struct dun_trigger_ref t = {.id = item->id, .kind = item->kind};
	struct settle_arg sa = {worker_id, item->account_id};
	bool deferred = false;
	en->applier.fence = &f;
	en->settle = settle_in_decision;
	en->settle_arg = &sa;
	sl->re = dun_engine_recompute_batched(en, item->account_id, &t, &sl->r, &deferred);
	en->applier.fence = NULL;
	en->settle = NULL;
	en->settle_arg = NULL;
	if (sl->re == DUN_OK && !deferred) {
		sl->state = SLOT_DONE;
		if (!careful)
			return STEP_ON;
		return dun_db_release(en->db, "batch_account") == DUN_OK ? STEP_ON : STEP_BROKEN;
	}
	if (!careful) {
		/*
		 * Deferred without an error, the pass stopped before its
		 * decision: it wrote nothing but the renewal of its own claim
		 * (recompute.h), which the unbatched run renews again.
		 */
		if (sl->re == DUN_OK && !sl->r.apply.fresh_read) {
			sl->state = SLOT_DEFERRED;
			return STEP_ON;
		}
		return STEP_REDO;
	}
	if (dun_db_rollback_to(en->db, "batch_account") != DUN_OK)
		return STEP_BROKEN;
	if (deferred || sl->r.apply.fresh_read || sl->re == DUN_E_BUSY) {
		/*
		 * The plan re-read the provider (and may have failed on what it
		 * found: an invoice paid meanwhile). That read went into the
		 * mirror, and the rollback just took it out again; the unbatched
		 * path keeps it, so its retry decides on it. A busy store (the
		 * mirror writers' lock, store/db.h; a deadlock PostgreSQL broke)
		 * is not a failure of the account either: it runs alone too.
		 */
		sl->state = SLOT_DEFERRED;
	} else if (sl->re == DUN_E_FENCED) {
		sl->state = SLOT_FENCED;
		sl->r.apply.n_applied = 0;
	} else if (record_failure(en, cfg, worker_id, item, &t, sl) == DUN_OK) {
		sl->state = SLOT_FAILED;
	} else {
		/* Not even the failure could be written: let the unbatched path try. */
		if (dun_db_rollback_to(en->db, "batch_account") != DUN_OK)
			return STEP_BROKEN;
		sl->state = SLOT_DEFERRED;
	}
	return dun_db_release(en->db, "batch_account") == DUN_OK ? STEP_ON : STEP_BROKEN;
}

/*
 * Whether a batch has done its share. Where it holds the store (SQLite),
 * by the clock: webhooks wait for the write lock that long. Where it holds
 * only its accounts' rows (PostgreSQL), by this thread's CPU time: waiting
 * for busy CPUs or for the database is not work done, and counting it made
 * batches smaller the more processes shared the machine, each commit
 * costing more of them; ten budgets of the clock still end a batch that
 * waits for long.
 */
static bool over_budget(const struct dun_inbox_config *cfg, bool concurrent, int64_t t0,
			int64_t cpu0)
{
	if (!concurrent)
		return dun_clock_mono_us() - t0 >= cfg->batch_budget_us;
	return dun_clock_thread_cpu_us() - cpu0 >= cfg->batch_budget_concurrent_us ||
	       dun_clock_mono_us() - t0 >= 10 * cfg->batch_budget_concurrent_us;
}

/* A claim made in the first batch's transaction ("Claims in the batch"). */
struct claim_req {
	int64_t now;
	int max;
	struct dun_inbox_item *out; /* room for max */
};

/*
 * Work items[0..*np) (claimed by worker_id) in batches; see "Batches" above.
 * With claim, items is claim->out: the accounts are claimed first, inside
 * the first batch's transaction, and *np says how many. Returns a store
 * error of settling (as the unbatched drain does), or the claim's with *np
 * 0.
 */
static enum dun_err run_batches(struct dun_engine *en, const struct dun_inbox_config *cfg,
				const char *worker_id, const struct dun_inbox_item *items, int *np,
				const struct claim_req *claim, struct dun_drain_stats *stats)
{
	int n = claim ? 0 : *np;
	struct slot *slots = dun_calloc((size_t)(claim ? claim->max : n) + 1, sizeof *slots);
	/* A batch's first pass is quick (no savepoint per account), see run_in_batch. */
	bool careful = false;
	/* The next batch claims its accounts first. */
	bool claiming = claim != NULL;
	enum dun_err e = DUN_OK;
	int i = 0;
	while ((i < n || claiming) && e == DUN_OK) {
		if (stopping(cfg)) {
			/* Nothing of these was started: back to the queue, due now. */
			for (int k = i; k < n && e == DUN_OK; k++)
				e = dun_inbox_release(en->db, worker_id, items[k].account_id,
						      dun_clock_now());
			stats->interrupted = true;
			break;
		}
		int first = i;
		if (first > 0 && cfg->give_way && !careful)
			cfg->give_way(cfg->yield_arg);
		if (cfg->turn)
			cfg->turn(cfg->yield_arg, true);
		enum dun_err be = dun_db_begin_concurrent(en->db);
		bool whole = be == DUN_OK;
		if (claiming) {
			if (whole)
				be = dun_inbox_claim_in_tx(en->db, cfg, worker_id, claim->now,
							   claim->max, claim->out, &n);
			if (be != DUN_OK || n == 0) {
				/* Nothing claimed: keep what the pass took back; an error is the claim's. */
				if (be == DUN_OK)
					be = dun_db_commit(en->db);
				if (be != DUN_OK && whole)
					dun_db_rollback(en->db);
				if (cfg->turn)
					cfg->turn(cfg->yield_arg, false);
				n = 0;
				e = be;
				break;
			}
		}
		int64_t t0 = dun_clock_mono_us();
		int64_t cpu0 = dun_clock_thread_cpu_us();
		bool concurrent = dun_db_writes_concurrently(en->db);
		bool redo = false;
		while (whole && i < n) {
			if (i > first && (i - first >= cfg->batch_max ||
					  over_budget(cfg, concurrent, t0, cpu0) ||
					  dun_db_holds_mirror(en->db) || stopping(cfg) ||
					  (cfg->contended && cfg->contended(cfg->yield_arg))))
				break;
			enum batch_step step =
			    run_in_batch(en, cfg, worker_id, &items[i], &slots[i], careful);
			i++;
			whole = step == STEP_ON;
			redo = step == STEP_REDO;
		}
		if (redo) {
			/*
			 * Nothing of the quick pass stays: the same accounts,
			 * carefully; claimed again if the claims went with it.
			 */
			dun_db_rollback(en->db);
			if (cfg->turn)
				cfg->turn(cfg->yield_arg, false);
			i = first;
			if (claiming)
				n = 0;
			careful = true;
			continue;
		}
		careful = false;
		enum dun_err ce = DUN_OK;
		if (whole) {
			ce = dun_db_commit(en->db);
			whole = ce == DUN_OK;
		}
		if (whole)
			stats->batches++;
		if (!whole) {
			/* Nothing of this batch landed: each of its accounts runs alone. */
			dun_db_rollback(en->db);
			dun_log(DUN_LOG_WARN, "worker.batch_failed", "worker", worker_id, "error",
				dun_db_errmsg(en->db), NULL);
			if (claiming) {
				/* Its claims went with it: nothing is held, nothing was done. */
				if (cfg->turn)
					cfg->turn(cfg->yield_arg, false);
				n = 0;
				e = ce != DUN_OK ? ce : DUN_E_STORE;
				break;
			}
			if (i == first)
				i++;
			for (int k = first; k < i; k++)
				slots[k].state = SLOT_DEFERRED;
		}
		claiming = false;
		if (cfg->turn)
			cfg->turn(cfg->yield_arg, false);
		for (int k = first; k < i && e == DUN_OK; k++) {
			struct slot *sl = &slots[k];
			struct dun_trigger_ref t = {.id = items[k].id, .kind = items[k].kind};
			switch (sl->state) {
			case SLOT_DONE:
				dun_engine_log_done(items[k].account_id, &t, &sl->r);
				tally(stats, &items[k], &sl->r, DUN_OK, true);
				break;
			case SLOT_FAILED:
				dun_log(DUN_LOG_WARN, "recompute.failed", "account",
					items[k].account_id, "trigger", items[k].kind, "code",
					dun_err_name(sl->re), "error", sl->r.apply.error_text,
					"batched", "1", NULL);
				tally(stats, &items[k], &sl->r, sl->re, true);
				break;
			case SLOT_FENCED:
				dun_log(DUN_LOG_WARN, "worker.claim_lost", "worker", worker_id,
					"account", items[k].account_id, "error",
					sl->r.apply.error_text, NULL);
				tally(stats, &items[k], &sl->r, sl->re, true);
				break;
			case SLOT_DEFERRED:
				e = run_alone(en, cfg, worker_id, &items[k], stats);
				break;
			}
		}
	}
	*np = n;
	free(slots);
	return e;
}

enum dun_err dun_worker_claim_run(struct dun_engine *en, const struct dun_inbox_config *cfg,
				  const char *worker_id, int64_t now, int max,
				  struct dun_inbox_item *items, int *n,
				  struct dun_drain_stats *stats)
{
	*n = 0;
	if (cfg->batch_max > 1 && !dun_db_writes_concurrently(en->db)) {
		if (!dun_inbox_maybe_ready(en->db, now))
			return DUN_OK;
		struct claim_req claim = {.now = now, .max = max, .out = items};
		return run_batches(en, cfg, worker_id, items, n, &claim, stats);
	}
	/* A claim is a write transaction too: in turn with the batches. */
	if (cfg->turn)
		cfg->turn(cfg->yield_arg, true);
	enum dun_err e = dun_inbox_claim(en->db, cfg, worker_id, now, max, items, n);
	if (cfg->turn)
		cfg->turn(cfg->yield_arg, false);
	if (e != DUN_OK || *n == 0)
		return e;
	return dun_worker_run_items(en, cfg, worker_id, items, *n, stats);
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
		if (stopping(cfg)) {
			stats->interrupted = true;
			break;
		}
		int want = BATCH;
		if (max_accounts && max_accounts - stats->accounts < want)
			want = (int)(max_accounts - stats->accounts);
		if (want <= 0)
			break;
		int n = 0;
		e = dun_worker_claim_run(en, cfg, worker_id, now, want, items, &n, stats);
		if (e != DUN_OK || stats->interrupted)
			return e;
		if (n == 0)
			break;
	}
	return DUN_OK;
}

enum dun_err dun_worker_run_items(struct dun_engine *en, const struct dun_inbox_config *cfg,
				  const char *worker_id, const struct dun_inbox_item *items, int n,
				  struct dun_drain_stats *stats)
{
	if (cfg->batch_max > 1)
		return run_batches(en, cfg, worker_id, items, &n, NULL, stats);
	enum dun_err e = DUN_OK;
	for (int i = 0; i < n; i++) {
		if (stopping(cfg)) {
			/* Nothing of these was started: back to the queue, due now. */
			for (int k = i; k < n && e == DUN_OK; k++)
				e = dun_inbox_release(en->db, worker_id, items[k].account_id,
						      dun_clock_now());
			stats->interrupted = true;
			return e;
		}
		e = run_alone(en, cfg, worker_id, &items[i], stats);
		if (e != DUN_OK)
			return e;
	}
	return DUN_OK;
}
