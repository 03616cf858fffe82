/*
 * inbox.h — the durable inbox of triggers and their workflow states.
 *
 *   received ──claim──► processing ──ok──► done
 *                           │
 *                           └─fail──► retrying ──(not_before)──► processing ...
 *                                        └─(max attempts or terminal error)──► dead
 *
 * See inbox.c for the design (coalescing, per-account serialization, leases).
 */
#ifndef DUN_INBOX_H
#define DUN_INBOX_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "store/db.h"

#define DUN_TRIGGER_KIND_MAX 32

struct dun_inbox_item {
	int64_t id;
	char account_id[64];
	char kind[DUN_TRIGGER_KIND_MAX];
	char source[32];
	char event_id[96];
	char state[16];
	int attempts;
	char last_error[256];
	int64_t not_before;
	int64_t created_at;
	int64_t updated_at;
	int coalesced; /* claim only: how many triggers this claim stands for */
	int64_t token; /* claim only: the claim's fencing token (store/fence.h) */
};

struct dun_inbox_config {
	int max_attempts;	/* then dead; default 8 */
	int64_t backoff_base_s; /* default 30 */
	int64_t backoff_max_s;	/* default 3600 */
	int64_t lease_s;	/* a claim not renewed for this long is taken back; default 300 */
	/*
	 * A drain's batches (inbox/worker.c): up to batch_max accounts share
	 * one transaction, which takes no new account once batch_budget_us of
	 * work is done (the write lock is held that long). batch_max 1: one
	 * transaction or more per account, as before batching. Defaults 64, 5000.
	 * Where batches run beside other writers instead of holding the store
	 * (PostgreSQL: dun_db_writes_concurrently) the budget is
	 * batch_budget_concurrent_us (default 50000), and a batch that took the
	 * mirror writers' lock commits after that account, since webhooks
	 * wait for that lock.
	 */
	int batch_max;
	int64_t batch_budget_us;
	int64_t batch_budget_concurrent_us;
	/*
	 * Asked between accounts of a drain (may be NULL): when it says stop,
	 * the claimed accounts not yet started are given back, due now, as
	 * after dun_worker_request_stop() (inbox/worker.h).
	 */
	bool (*should_stop)(void *arg);
	void *stop_arg;
	/*
	 * Asked between accounts of a batch (may be NULL): true when a writer
	 * that must not wait behind recomputes (the service's webhook
	 * committer) wants the lock the batch holds. The batch then commits
	 * what it has, and give_way (may be NULL) runs before the next batch
	 * of the same claim begins, so the lock is held for one account's
	 * work at most once someone waits. Both get yield_arg.
	 */
	bool (*contended)(void *arg);
	void (*give_way)(void *arg);
	/*
	 * Around each batch's transaction (may be NULL): turn(yield_arg, true)
	 * before its BEGIN, turn(yield_arg, false) once it committed or rolled
	 * back. The service uses it where batches of several workers cannot
	 * run beside each other anyway (SQLite, one writer), to queue them on
	 * a mutex rather than in the store's busy wait, where two workers and
	 * the webhook committer raced for the lock each time it came free.
	 */
	void (*turn)(void *arg, bool take);
	void *yield_arg;
};

void dun_inbox_config_defaults(struct dun_inbox_config *c);

/*
 * A worker id for this process: "<role>@<host>:<pid>". Claims carry it, so a
 * claim whose process is gone (same host, pid no longer running) is taken
 * back at once instead of waiting for its lease.
 */
void dun_inbox_worker_id(char *out, size_t out_size, const char *role);

/*
 * The fleet's turns ([server] fleet_workers): at most n workers of all the
 * processes sharing the store hold one at once. A turn is a row of
 * fleet_turns held like a claim: by an owner (a worker id) until an expiry
 * on the wall clock (never the settable --now clock), so the turn of a
 * replica that died or hangs comes free after lease_ms, and at once when
 * its owner is a process of this host that is gone.
 *
 * dun_inbox_turn_take: one read of the turns held, then an upsert of a free
 * one, trying from start (mod n); never waits. *turn is the turn taken, or
 * -1 when all n are held. dun_inbox_turn_keep: push the expiry of a turn
 * still held (*kept false: it ran out and another took it).
 * dun_inbox_turn_give: give it back. Each is its own transaction.
 */
enum dun_err dun_inbox_turn_take(struct dun_db *db, int n, int start, const char *owner,
				 int64_t lease_ms, int *turn);
enum dun_err dun_inbox_turn_keep(struct dun_db *db, int turn, const char *owner, int64_t lease_ms,
				 bool *kept);
enum dun_err dun_inbox_turn_give(struct dun_db *db, int turn, const char *owner);

/*
 * Add a trigger. dedup_key (may be NULL) makes the insert a no-op when a
 * trigger with the same key exists; *inserted says which. *id_out (may be
 * NULL) gets the new or existing id. Runs in the caller's transaction if any.
 */
enum dun_err dun_inbox_enqueue(struct dun_db *db, const char *account_id, const char *kind,
			       const char *source, const char *event_id, const char *dedup_key,
			       int64_t not_before, bool *inserted, int64_t *id_out);

/*
 * Claim up to max accounts that have ready triggers, no trigger in
 * processing and no live claim (store/fence.h): every ready trigger of a
 * claimed account moves to processing under worker_id (coalescing), and the
 * account's claim is taken with a new token. out[i] describes the oldest
 * trigger of the i-th account, with coalesced = how many and the token.
 * Also takes back the triggers of expired claims (wall clock, never `now`).
 */
enum dun_err dun_inbox_claim(struct dun_db *db, const struct dun_inbox_config *cfg,
			     const char *worker_id, int64_t now, int max,
			     struct dun_inbox_item *out, int *n_out);

/*
 * Whether a claim at now may find work (a ready trigger, or one in
 * processing whose claim may have expired): one read, no write lock.
 */
bool dun_inbox_maybe_ready(struct dun_db *db, int64_t now);

/*
 * dun_inbox_claim's pass inside the caller's write transaction, once (no
 * retry): where one writer holds the store (SQLite), the worker claims in
 * the transaction of its first batch (inbox/worker.c), so a claim is
 * written and committed with the work it authorises. A rollback of that
 * transaction takes the claims back with it.
 */
enum dun_err dun_inbox_claim_in_tx(struct dun_db *db, const struct dun_inbox_config *cfg,
				   const char *worker_id, int64_t now, int max,
				   struct dun_inbox_item *out, int *n_out);

/*
 * Claim the ready triggers of one account (the CLI's recompute). *n_out is
 * 0 when the account has nothing ready or is being processed elsewhere.
 */
enum dun_err dun_inbox_claim_account(struct dun_db *db, const struct dun_inbox_config *cfg,
				     const char *worker_id, const char *account_id, int64_t now,
				     struct dun_inbox_item *out, int *n_out);

/* The claimed triggers of account_id under worker_id are done; the claim is released. */
enum dun_err dun_inbox_complete(struct dun_db *db, const char *worker_id, const char *account_id,
				int64_t now);
/* The same, in the caller's transaction (one commit with the decision). */
enum dun_err dun_inbox_complete_in_tx(struct dun_db *db, const char *worker_id,
				      const char *account_id, int64_t now);

/*
 * The claimed triggers of account_id failed with error. Retryable errors go
 * to retrying with capped exponential backoff and jitter; after
 * max_attempts, or for a terminal error, they go to dead. The claim is released.
 */
enum dun_err dun_inbox_fail(struct dun_db *db, const struct dun_inbox_config *cfg,
			    const char *worker_id, const char *account_id, int64_t now,
			    bool retryable, const char *error);
/* dun_inbox_fail() in the caller's transaction (a worker's batch). */
enum dun_err dun_inbox_fail_in_tx(struct dun_db *db, const struct dun_inbox_config *cfg,
				  const char *worker_id, const char *account_id, int64_t now,
				  bool retryable, const char *error);

/*
 * Give back the claimed triggers of account_id under worker_id without
 * working them (a drain stopped by a signal): to retrying, due now, attempts
 * unchanged; the claim is released.
 */
enum dun_err dun_inbox_release(struct dun_db *db, const char *worker_id, const char *account_id,
			       int64_t now);

/* Move dead (or retrying) triggers back to received, due now: one id, or all dead (id 0). */
enum dun_err dun_inbox_requeue(struct dun_db *db, int64_t id, int64_t now, int *n_out);

/* Enqueue a `recheck` trigger for every account whose scheduled recheck is due. */
enum dun_err dun_inbox_enqueue_due_rechecks(struct dun_db *db, int64_t now, int *n_out);

/* Count triggers per state (received, processing, done, retrying, dead). */
struct dun_inbox_counts {
	int64_t received, processing, done, retrying, dead;
};
enum dun_err dun_inbox_counts(struct dun_db *db, struct dun_inbox_counts *c);

/* Backoff before attempt n (1-based) with jitter from seed; exposed for tests. */
int64_t dun_inbox_backoff(const struct dun_inbox_config *cfg, int attempts, uint64_t seed);

#endif
