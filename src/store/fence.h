/*
 * fence.h — claims of accounts, and the fence every write goes through.
 *
 * A worker works an account only under a claim: a row of `claims` naming
 * the owner (the worker id), a token and an expiry. Each new claim of an
 * account gets the next token of that account, so a token is never seen
 * twice. Every write a recompute makes checks, inside the transaction of
 * the write, that the account's claim still has the token the work started
 * under, and renews it; a write whose claim was taken over is refused with
 * DUN_E_FENCED and nothing of it lands. Writes that cannot share a
 * transaction (a Stripe call) check and renew just before they go out, so
 * another worker can take the account only a full lease after the last
 * check: longer than any call's timeout.
 *
 * Expiries are wall-clock milliseconds (dun_clock_wall_ms()), never the
 * settable clock: a process run with `--now` in the future cannot take the
 * live claims of a service beside it.
 */
#ifndef DUN_FENCE_H
#define DUN_FENCE_H

#include <stdint.h>

#include "store/db.h"

#define DUN_FENCE_OWNER_MAX 160

struct dun_fence {
	char account_id[64];
	char owner[DUN_FENCE_OWNER_MAX];
	int64_t token;	  /* 0: no claim; checks pass (single-process tools only) */
	int64_t lease_ms; /* how far each renewal pushes the expiry */
};

/*
 * Take the claim of account_id for owner, in the caller's transaction: the
 * account's next token, expiring lease_ms from now (wall clock). Does not
 * look at a live claim of someone else: the caller has checked there is none
 * (dun_fence_held_by_other) in the same transaction.
 */
enum dun_err dun_fence_acquire(struct dun_db *db, const char *account_id, const char *owner,
			       int64_t lease_ms, struct dun_fence *out);

/* Whether account_id has a live claim (not expired) of an owner other than owner. */
enum dun_err dun_fence_held_by_other(struct dun_db *db, const char *account_id, const char *owner,
				     bool *held);

/*
 * In the caller's transaction: whether f's claim is still the account's;
 * renews it (expiry at least lease_ms from now). DUN_E_FENCED when another
 * claim took the account. A fence with token 0 always passes.
 */
enum dun_err dun_fence_check(struct dun_db *db, const struct dun_fence *f);

/* dun_fence_check() in a transaction of its own. */
enum dun_err dun_fence_renew(struct dun_db *db, const struct dun_fence *f);

/* Release owner's claim of account_id (the token stays), in the caller's transaction if any. */
enum dun_err dun_fence_release(struct dun_db *db, const char *account_id, const char *owner);

#endif
