/*
 * fence.h — claims of accounts, and the fence every write goes through.
 *
 * A worker works an account only under a claim: a row of `claims` naming
 * the owner (the worker id), a token and an expiry. Each new claim of an
 * account gets the next token of that account, so a token is never seen
 * twice. Every write a recompute makes checks, inside the transaction of
 * the write, that the account's claim still has the token the work started
 * under, and renews it (on SQLite only once less than half the lease is
 * left: there a read decides, the transaction holding the file); a write
 * whose claim was taken over is refused with DUN_E_FENCED and nothing of
 * it lands. Writes that cannot share a transaction (a Stripe call) check
 * and renew just before they go out, so another worker can take the
 * account only half a lease or more after the last check: longer than any
 * call's timeout.
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
 * account's next token, expiring lease_ms from now (wall clock), unless
 * another owner's claim is live: then DUN_E_FENCED and nothing changes. One
 * statement decides, on the claim's row itself, so two processes taking the
 * same account at once (concurrent transactions on PostgreSQL) cannot both
 * win: the second waits for the first's row lock and then sees its claim.
 */
enum dun_err dun_fence_acquire(struct dun_db *db, const char *account_id, const char *owner,
			       int64_t lease_ms, struct dun_fence *out);

/* Whether account_id has a live claim (not expired) of an owner other than owner. */
enum dun_err dun_fence_held_by_other(struct dun_db *db, const char *account_id, const char *owner,
				     bool *held);

/*
 * In the caller's transaction: whether f's claim is still the account's;
 * renews it (expiry at least lease_ms from now; on SQLite only when less
 * than lease_ms / 2 is left). DUN_E_FENCED when another claim took the
 * account. A fence with token 0 always passes.
 */
enum dun_err dun_fence_check(struct dun_db *db, const struct dun_fence *f);

/*
 * Begin a write transaction for work under f and check f in it (rolled
 * back again when the check fails). Work under a claim runs in a concurrent
 * transaction (store/db.h): the claim's row lock keeps other processes off
 * the account, so the fleet's workers write side by side. Without a claim
 * (f NULL or token 0: a single-process tool) the transaction is exclusive.
 */
enum dun_err dun_fence_begin(struct dun_db *db, const struct dun_fence *f);

/* dun_fence_check() in a transaction of its own. */
enum dun_err dun_fence_renew(struct dun_db *db, const struct dun_fence *f);

/* Release owner's claim of account_id (the token stays), in the caller's transaction if any. */
enum dun_err dun_fence_release(struct dun_db *db, const char *account_id, const char *owner);
/*
 * The same release as a bound statement, not yet run: to send with other
 * writes of the caller's transaction in one dun_db_pipeline() (db.h), then
 * run with dun_stmt_done(). The strings are borrowed until then.
 */
struct dun_stmt *dun_fence_release_stmt(struct dun_db *db, const char *account_id,
					const char *owner);

#endif
