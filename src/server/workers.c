/*
 * workers.c — the inbox drain of the long-running service (see
 * workers.h). It is the service's form of src/inbox/worker.c: the same
 * claim → dun_engine_recompute → complete/fail cycle, run forever on
 * several threads instead of once.
 *
 * Batches. A worker claims up to CLAIM_MAX accounts at once and works
 * them as `dunning work` does (inbox/worker.c, "Batches"): several accounts
 * share one transaction, each under its own savepoint, so a recompute does
 * not cost a durable commit of its own; a pass that needs the network runs
 * alone after the commit. On shutdown a worker finishes the account it is
 * in and gives the claimed accounts it has not started back, due now, so
 * none is left for the lease to take back.
 *
 * Webhooks first. SQLite has one writer at a time and every commit is an
 * fsync; a recompute commits several small transactions, the webhook
 * committer one per batch. Left alone, the workers would hold the write
 * lock most of the time during a burst and Stripe's deliveries would wait
 * behind recomputes nobody is waiting for. So before each claim a worker
 * calls the yield hook, which waits (a bounded time) until no webhook batch
 * is queued or committing: during a burst the recomputes run in the gaps
 * and catch up afterwards; the triggers are durable in the inbox meanwhile.
 * A webhook batch that arrives while a worker is inside a batch of its own
 * makes the contended hook true: the worker commits after the account it
 * is in and yields again before going on with the accounts it claimed, so
 * a webhook waits for one account's work, not a whole batch (the batching
 * bought the recomputes shared commits; this keeps it off the webhooks'
 * p99).
 *
 * Across processes (PostgreSQL), a trigger one replica stores must wake
 * the idle workers of all of them without each polling hard: the pool
 * keeps one more connection that LISTENs on the inbox channel, and every
 * commit that stored a trigger due now NOTIFYs it (in the COMMIT's round
 * trip, store/db.h). The listener thread wakes the pool on each
 * notification; poll_ms stays only as the timer for triggers that come
 * due later (backoffs, rechecks). A lost listening connection is
 * re-established with backoff; until then the timer still drains.
 *
 * A worker that hits a store error (e.g. the database is locked for longer
 * than the busy timeout) logs it and tries again after poll_ms; it never
 * exits on its own, so /readyz's "workers running" means "not stopped".
 */
#include "workers.h"
#include "inbox/worker.h"
#include "inbox/inbox.h"
#include "server/engine_ctx.h"
#include "store/db.h"
#include "util/clock.h"
#include "util/log.h"
#include "util/mem.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

struct worker {
	struct dun_workers *pool;
	struct dun_engine_ctx *ctx;
	char id[192];
	pthread_t thread;
	bool started;
	int turn;	 /* the fleet's turn this worker holds, -1: none (see has_turn) */
	int64_t turn_at; /* when it was taken or last kept, wall clock ms */
};

struct dun_workers {
	const struct dun_config *cfg;
	struct dun_metrics *metrics;
	struct dun_inbox_config inbox;
	struct dun_workers_hooks hooks;
	struct worker *w;
	int n;
	int64_t fleet_cap; /* [server] fleet_workers as a number: 0 = no cap */
	pthread_mutex_t mu;
	pthread_cond_t cv;
	pthread_mutex_t turn; /* one batch at a time where the store has one writer */
	uint64_t wakeups;     /* guarded by mu: bumped by every wake */
	bool stopping;	      /* guarded by mu */
	_Atomic int running;
	_Atomic int64_t last_recheck_ms;
	struct dun_db *listen_db; /* NULL where the store cannot listen (SQLite) */
	pthread_t listener;
	bool listener_started;
};

static bool stopping(struct dun_workers *p)
{
	pthread_mutex_lock(&p->mu);
	bool s = p->stopping;
	pthread_mutex_unlock(&p->mu);
	return s;
}

/* Sleep up to ms, or until woken (by new work or by stop) after `seen`. */
static void idle(struct dun_workers *p, uint64_t seen, int64_t ms)
{
	struct timespec ts;
	clock_gettime(CLOCK_REALTIME, &ts);
	ts.tv_sec += ms / 1000;
	ts.tv_nsec += (ms % 1000) * 1000000;
	if (ts.tv_nsec >= 1000000000) {
		ts.tv_sec++;
		ts.tv_nsec -= 1000000000;
	}
	pthread_mutex_lock(&p->mu);
	while (!p->stopping && p->wakeups == seen)
		if (pthread_cond_timedwait(&p->cv, &p->mu, &ts) != 0)
			break;
	pthread_mutex_unlock(&p->mu);
}

static uint64_t wakeups(struct dun_workers *p)
{
	pthread_mutex_lock(&p->mu);
	uint64_t v = p->wakeups;
	pthread_mutex_unlock(&p->mu);
	return v;
}

/*
 * Checkpoint and enqueue due rechecks at most every poll_ms across the
 * pool: both are cheap, but the rechecks take the write lock, which the
 * webhook committer wants.
 */
static void maybe_rechecks(struct worker *w, int64_t now)
{
	struct dun_workers *p = w->pool;
	int64_t now_ms = dun_clock_mono_ms();
	int64_t last = atomic_load(&p->last_recheck_ms);
	if (now_ms - last < p->cfg->poll_ms ||
	    !atomic_compare_exchange_strong(&p->last_recheck_ms, &last, now_ms))
		return;
	/*
	 * The webhook committer never checkpoints (committer.c); a passive
	 * checkpoint here copies what it wrote back into the database without
	 * blocking it, and keeps the WAL from growing without end when the
	 * workers themselves write little.
	 */
	dun_db_checkpoint(w->ctx->db);
	if (p->hooks.housekeep && p->hooks.housekeep(p->hooks.arg))
		dun_workers_wake(p);
	int n = 0;
	enum dun_err e = dun_inbox_enqueue_due_rechecks(w->ctx->db, now, &n);
	if (e != DUN_OK) {
		dun_log(DUN_LOG_WARN, "worker.recheck_failed", "worker", w->id, "error",
			dun_err_str(e), NULL);
		return;
	}
	if (n > 0) {
		atomic_fetch_add(&p->metrics->rechecks_enqueued, n);
		dun_workers_wake(p);
	}
}

/* Accounts a worker claims at once: a few batches' worth, so the fleet's
 * other workers still find work in a small backlog. */
#define CLAIM_MAX 16

static bool pool_stopping(void *arg)
{
	return stopping(arg);
}

static bool pool_contended(void *arg)
{
	struct dun_workers *p = arg;
	return p->hooks.contended(p->hooks.arg);
}

static void pool_turn(void *arg, bool take)
{
	struct dun_workers *p = arg;
	if (take)
		pthread_mutex_lock(&p->turn);
	else
		pthread_mutex_unlock(&p->turn);
}

static void pool_give_way(void *arg)
{
	struct dun_workers *p = arg;
	p->hooks.yield(p->hooks.arg);
}

/* Claim up to CLAIM_MAX accounts and run them; false when there was nothing to do. */
static bool run_some(struct worker *w)
{
	struct dun_workers *p = w->pool;
	struct dun_inbox_item items[CLAIM_MAX];
	int n = 0;
	int64_t now = dun_clock_now();
	if (p->hooks.yield)
		p->hooks.yield(p->hooks.arg);
	maybe_rechecks(w, now);
	dun_engine_ctx_refresh(w->ctx);
	struct dun_drain_stats st;
	memset(&st, 0, sizeof st);
	enum dun_err e =
	    dun_worker_claim_run(&w->ctx->engine, &p->inbox, w->id, now,
				 p->inbox.batch_max > 1 ? CLAIM_MAX : 1, items, &n, &st);
	if (e != DUN_OK && n == 0) {
		dun_log(DUN_LOG_WARN, "worker.claim_failed", "worker", w->id, "error",
			dun_err_str(e), NULL);
		return false;
	}
	if (n == 0)
		return false;
	atomic_fetch_add(&p->metrics->consequences_applied, st.consequences_applied);
	atomic_fetch_add(&p->metrics->recomputes_ok, st.accounts - st.failed);
	atomic_fetch_add(&p->metrics->recomputes_failed, st.failed);
	if (e != DUN_OK)
		/* The claims stay in processing; their leases bring them back. */
		dun_log(DUN_LOG_ERROR, "worker.settle_failed", "worker", w->id, "account",
			items[0].account_id, "error", dun_err_str(e), NULL);
	bool more = false;
	if (p->hooks.settled)
		for (int i = 0; i < n; i++)
			more |= p->hooks.settled(p->hooks.arg, w->ctx->db, items[i].account_id);
	if (more)
		dun_workers_wake(p);
	return true;
}

/*
 * [server] fleet_workers: on PostgreSQL at most that many workers of all the
 * replicas work at once (auto, the default: twice this host's CPUs). A
 * worker takes one of the fleet's turns (a row held like a claim, inbox.h)
 * before it claims, keeps it while it finds work (renewed once half its
 * lease is gone) and gives it back when it goes idle; one that finds every
 * turn held waits as an idle worker does (woken by new work, or after
 * poll_ms) and tries again. A replica that dies or
 * hangs holds its turns for a lease at most ([inbox] lease_s), less when
 * it was a process of the same host. Without the cap, or on SQLite, every
 * worker always works.
 */
static bool has_turn(struct worker *w)
{
	struct dun_workers *p = w->pool;
	if (p->fleet_cap <= 0 || !dun_db_writes_concurrently(w->ctx->db))
		return true;
	int64_t lease_ms = p->inbox.lease_s * 1000;
	int64_t wall = dun_clock_wall_ms();
	enum dun_err e = DUN_OK;
	if (w->turn >= 0) {
		if (wall - w->turn_at < lease_ms / 2)
			return true;
		bool kept = false;
		e = dun_inbox_turn_keep(w->ctx->db, w->turn, w->id, lease_ms, &kept);
		if (e == DUN_OK && kept) {
			w->turn_at = wall;
			return true;
		}
		w->turn = -1; /* ran out and went to another worker: take one again */
	}
	/* Each worker starts at its own place, so most find a free turn first. */
	uint32_t h = 2166136261u;
	for (const char *c = w->id; *c; c++)
		h = (h ^ (uint8_t)*c) * 16777619u;
	if (e == DUN_OK)
		e = dun_inbox_turn_take(w->ctx->db, (int)p->fleet_cap,
					(int)(h % (uint32_t)p->fleet_cap), w->id, lease_ms,
					&w->turn);
	if (e != DUN_OK)
		dun_log(DUN_LOG_WARN, "worker.turn_failed", "worker", w->id, "error",
			dun_err_str(e), NULL);
	if (w->turn < 0)
		return false;
	w->turn_at = wall;
	return true;
}

static void give_turn(struct worker *w)
{
	if (w->turn < 0)
		return;
	enum dun_err e = dun_inbox_turn_give(w->ctx->db, w->turn, w->id);
	if (e != DUN_OK) /* it runs out with its lease */
		dun_log(DUN_LOG_WARN, "worker.turn_failed", "worker", w->id, "error",
			dun_err_str(e), NULL);
	w->turn = -1;
}

static void *worker_main(void *arg)
{
	struct worker *w = arg;
	struct dun_workers *p = w->pool;
	pthread_setname_np(pthread_self(), "dun-worker");
	dun_log(DUN_LOG_DEBUG, "worker.started", "worker", w->id, NULL);
	while (!stopping(p)) {
		uint64_t seen = wakeups(p);
		if (has_turn(w) && run_some(w))
			continue;
		give_turn(w);
		idle(p, seen, p->cfg->poll_ms);
	}
	give_turn(w);
	atomic_fetch_sub(&p->running, 1);
	dun_log(DUN_LOG_DEBUG, "worker.stopped", "worker", w->id, NULL);
	return NULL;
}

/* Wake the pool on every notification of a new trigger (see the top). */
static void *listener_main(void *arg)
{
	struct dun_workers *p = arg;
	bool down = false;
	while (!stopping(p)) {
		int rc = dun_db_wait_inbox(p->listen_db, 250);
		if (rc > 0) {
			if (down)
				dun_log(DUN_LOG_INFO, "workers.listen_restored", NULL);
			down = false;
			dun_workers_wake(p);
		} else if (rc < 0) {
			if (!down)
				dun_log(DUN_LOG_WARN, "workers.listen_lost", "error",
					dun_db_errmsg(p->listen_db), NULL);
			down = true;
			struct timespec ts = {.tv_sec = 0, .tv_nsec = 250 * 1000000L};
			nanosleep(&ts, NULL);
		}
	}
	return NULL;
}

/* Start the listener where the store can listen; a failure is not fatal
 * (the workers still poll), but it is said. */
static void start_listener(struct dun_workers *p)
{
	char err[512] = "";
	struct dun_db *db = NULL;
	if (!dun_db_is_url(p->cfg->db_path))
		return; /* SQLite: one service per file; its threads wake each other */
	if (dun_db_open_nomigrate(p->cfg->db_path, &db, err, sizeof err) != DUN_OK) {
		dun_log(DUN_LOG_WARN, "workers.listen_failed", "error", err, NULL);
		return;
	}
	if (!dun_db_can_listen(db)) {
		dun_db_close(db);
		return;
	}
	if (dun_db_listen_inbox(db, err, sizeof err) != DUN_OK) {
		dun_log(DUN_LOG_WARN, "workers.listen_failed", "error", err, NULL);
		dun_db_close(db);
		return;
	}
	p->listen_db = db;
	if (pthread_create(&p->listener, NULL, listener_main, p) != 0) {
		dun_log(DUN_LOG_WARN, "workers.listen_failed", "error",
			"cannot start the listener thread", NULL);
		dun_db_close(db);
		p->listen_db = NULL;
		return;
	}
	p->listener_started = true;
}

enum dun_err dun_workers_start(const struct dun_config *cfg, const struct dun_policy *policy,
			       struct dun_provider provider, struct dun_metrics *metrics,
			       const char *role, const struct dun_workers_hooks *hooks,
			       struct dun_workers **out, char *err, size_t err_size)
{
	*out = NULL;
	struct dun_workers *p = dun_calloc(1, sizeof *p);
	p->cfg = cfg;
	p->fleet_cap = dun_config_fleet_cap(cfg, NULL);
	p->metrics = metrics;
	if (hooks)
		p->hooks = *hooks;
	dun_inbox_config_defaults(&p->inbox);
	p->inbox.should_stop = pool_stopping;
	p->inbox.stop_arg = p;
	if (p->hooks.contended)
		p->inbox.contended = pool_contended;
	if (p->hooks.yield)
		p->inbox.give_way = pool_give_way;
	p->inbox.yield_arg = p;
	/* SQLite: the batches of this pool's workers queue here, not on the file lock. */
	if (!dun_db_is_url(cfg->db_path))
		p->inbox.turn = pool_turn;
	p->inbox.max_attempts = cfg->inbox_max_attempts;
	p->inbox.backoff_base_s = cfg->inbox_backoff_base_s;
	p->inbox.backoff_max_s = cfg->inbox_backoff_max_s;
	p->inbox.lease_s = cfg->inbox_lease_s;
	p->n = cfg->workers;
	p->w = dun_calloc((size_t)p->n, sizeof *p->w);
	pthread_mutex_init(&p->mu, NULL);
	pthread_mutex_init(&p->turn, NULL);
	pthread_cond_init(&p->cv, NULL);
	atomic_store(&p->last_recheck_ms, dun_clock_mono_ms() - cfg->poll_ms);
	/* Open every context first, so a failure leaves no thread to stop. */
	for (int i = 0; i < p->n; i++) {
		struct worker *w = &p->w[i];
		w->pool = p;
		w->turn = -1;
		char name[48];
		snprintf(name, sizeof name, "%s-w%d", role, i + 1);
		dun_inbox_worker_id(w->id, sizeof w->id, name);
		enum dun_err e = dun_engine_ctx_new(cfg, policy, provider, &w->ctx, err, err_size);
		if (e != DUN_OK) {
			dun_workers_stop(p);
			return e;
		}
		/* Reads through the shared page cache (store/db.h). */
		dun_db_map_file(w->ctx->db, DUN_DB_WORKER_MAP_MB);
	}
	for (int i = 0; i < p->n; i++) {
		struct worker *w = &p->w[i];
		atomic_fetch_add(&p->running, 1);
		if (pthread_create(&w->thread, NULL, worker_main, w) != 0) {
			atomic_fetch_sub(&p->running, 1);
			snprintf(err, err_size, "cannot start worker thread %d", i + 1);
			dun_workers_stop(p);
			return DUN_E_IO;
		}
		w->started = true;
	}
	start_listener(p);
	*out = p;
	return DUN_OK;
}

void dun_workers_wake(struct dun_workers *p)
{
	pthread_mutex_lock(&p->mu);
	p->wakeups++;
	pthread_cond_broadcast(&p->cv);
	pthread_mutex_unlock(&p->mu);
}

int dun_workers_running(struct dun_workers *p)
{
	return atomic_load(&p->running);
}

void dun_workers_stop(struct dun_workers *p)
{
	if (!p)
		return;
	pthread_mutex_lock(&p->mu);
	p->stopping = true;
	pthread_cond_broadcast(&p->cv);
	pthread_mutex_unlock(&p->mu);
	if (p->listener_started)
		pthread_join(p->listener, NULL);
	dun_db_close(p->listen_db);
	for (int i = 0; i < p->n; i++) {
		if (p->w[i].started)
			pthread_join(p->w[i].thread, NULL);
		dun_engine_ctx_destroy(p->w[i].ctx);
	}
	pthread_cond_destroy(&p->cv);
	pthread_mutex_destroy(&p->mu);
	pthread_mutex_destroy(&p->turn);
	free(p->w);
	free(p);
}
