/*
 * worker.h — draining the inbox: claim accounts, recompute, settle.
 */
#ifndef DUN_WORKER_H
#define DUN_WORKER_H

#include "apply/recompute.h"
#include "inbox/inbox.h"

struct dun_drain_stats {
	int64_t accounts;
	int64_t triggers;
	int64_t failed;
	int64_t rechecks_enqueued;
	int64_t consequences_applied;
	int64_t active;	   /* accounts recomputed in active mode (written to) */
	int64_t observed;  /* accounts recomputed in observe mode (shadow only) */
	int64_t batched;   /* accounts settled inside a shared transaction (worker.c) */
	int64_t unbatched; /* accounts run alone: batching off, or their pass needed the network */
	int64_t batches;   /* shared transactions committed */
	bool interrupted;  /* stopped by dun_worker_request_stop(); the rest is queued */
};

/*
 * Ask every drain of the process to stop after the recompute it is in
 * (async-signal-safe: a signal handler may call it). The triggers it had
 * claimed and not worked are given back, due now.
 */
void dun_worker_request_stop(void);
bool dun_worker_stop_requested(void);

/*
 * Recompute the account of a claimed trigger under its claim (item->token
 * fences every write, renewed as it goes) and settle its triggers: done on
 * success, retrying or dead on failure. A claim another worker took over
 * (the lease ran out) is left to that worker: DUN_E_FENCED, nothing settled.
 * Returns the recompute's error; *settle_err (may be NULL) the settling's.
 */
enum dun_err dun_worker_run_claimed(struct dun_engine *en, const struct dun_inbox_config *cfg,
				    const char *worker_id, const struct dun_inbox_item *item,
				    struct dun_recompute_result *r, enum dun_err *settle_err);

/*
 * Work items[0..n), claimed by worker_id (dun_inbox_claim), and settle them,
 * adding to *stats: in shared transactions when cfg->batch_max is above 1
 * (see "Batches" in worker.c), else each alone. Returns a store error of
 * settling; a failed recompute is settled and counted, not returned.
 */
/*
 * Claim up to max accounts at now (dun_inbox_claim) into items and work
 * them as dun_worker_run_items does. Where one writer holds the store
 * (SQLite) and batches are on, the claim is made inside the first batch's
 * transaction and commits with its work ("Claims in the batch" in
 * worker.c). *n: the accounts claimed, 0 when nothing was due. An error
 * with *n 0 is the claim's; with *n above 0, the settling's.
 */
enum dun_err dun_worker_claim_run(struct dun_engine *en, const struct dun_inbox_config *cfg,
				  const char *worker_id, int64_t now, int max,
				  struct dun_inbox_item *items, int *n,
				  struct dun_drain_stats *stats);

enum dun_err dun_worker_run_items(struct dun_engine *en, const struct dun_inbox_config *cfg,
				  const char *worker_id, const struct dun_inbox_item *items, int n,
				  struct dun_drain_stats *stats);

/*
 * Process every trigger that is due at now (and enqueue due rechecks first),
 * until none is left or max_accounts were processed (0: no limit). With
 * cfg->batch_max above 1 the accounts share transactions (see "Batches" in
 * worker.c). Borrows en.
 */
enum dun_err dun_worker_drain(struct dun_engine *en, const struct dun_inbox_config *cfg,
			      const char *worker_id, int64_t now, int64_t max_accounts,
			      struct dun_drain_stats *stats);

#endif
