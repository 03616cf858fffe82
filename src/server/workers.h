/*
 * workers.h — the threads of `dunning serve` that drain the inbox.
 *
 * Each worker owns an engine context (its own SQLite connection and
 * engine), claims one account at a time (dun_inbox_claim coalesces the
 * account's ready triggers and keeps any other worker or process off it),
 * recomputes it and settles its triggers; when idle it enqueues the
 * scheduled rechecks that came due and sleeps until woken or poll_ms.
 */
#ifndef DUN_WORKERS_H
#define DUN_WORKERS_H

#include "config/config.h"
#include "core/policy.h"
#include "provider/provider.h"
#include "server/metrics.h"
#include "store/db.h"

struct dun_workers;

/*
 * Called on the worker thread after an account's triggers were settled
 * (done, retrying or dead), with the worker's connection (no transaction
 * open). The admin API uses it to answer a waiting recompute request.
 * True when it stored new work: the pool then wakes its idle workers (a
 * hook must not reach the pool itself: the first ones run while
 * dun_workers_start() has not returned it yet).
 */
typedef bool (*dun_workers_settled_fn)(void *arg, struct dun_db *db, const char *account_id);

/* Called on the worker thread before each claim; may wait (see workers.c). */
typedef void (*dun_workers_yield_fn)(void *arg);

/*
 * Asked between the accounts of a batch: true when a writer that must not
 * wait (the webhook committer) wants the lock. The batch then commits and
 * yield runs before the next one (see workers.c).
 */
typedef bool (*dun_workers_contended_fn)(void *arg);

/*
 * Called at most every poll_ms across the pool, on a worker thread between
 * batches, beside the pool's own housekeeping (checkpoint, rechecks): for
 * the service's other background chores. True as for settled.
 */
typedef bool (*dun_workers_housekeep_fn)(void *arg);

/* What the pool calls back; any function may be NULL. Each gets arg. */
struct dun_workers_hooks {
	dun_workers_settled_fn settled;
	dun_workers_yield_fn yield;
	dun_workers_contended_fn contended;
	dun_workers_housekeep_fn housekeep;
	void *arg;
};

/*
 * Start cfg->workers threads (cfg, policy, provider and metrics are
 * borrowed and must outlive the pool). Claims are made as
 * "<role>-w<n>@<host>:<pid>" (dun_inbox_worker_id), so the claims of a
 * process that died are taken back at its next start, without waiting for
 * their lease.
 * hooks (may be NULL) is copied.
 */
enum dun_err dun_workers_start(const struct dun_config *cfg, const struct dun_policy *policy,
			       struct dun_provider provider, struct dun_metrics *metrics,
			       const char *role, const struct dun_workers_hooks *hooks,
			       struct dun_workers **out, char *err, size_t err_size);
/* Wake idle workers now (new triggers were enqueued). Thread-safe. */
void dun_workers_wake(struct dun_workers *w);
/* How many worker threads are alive. */
int dun_workers_running(struct dun_workers *w);
/*
 * Stop: each worker finishes the recompute it is in (and settles it), then
 * exits; joins them all and frees the pool. NULL is a no-op.
 */
void dun_workers_stop(struct dun_workers *w);

#endif
