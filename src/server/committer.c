/*
 * committer.c — the single writer of webhook events (see committer.h).
 *
 * Where it sits: POST /webhooks/stripe verifies the signature and parses the
 * JSON on a request thread (a malformed body never reaches this thread),
 * then hands the raw body and the parsed event here. This thread runs the
 * ingest step
 * (store the raw event, fold it into the mirror, enqueue the trigger — the
 * same dun_ingest_event_in_tx() as `dunning ingest`) for a batch of events
 * inside one transaction, commits, and answers each request. The recompute
 * happens later, in the workers.
 *
 * Why group commit: with synchronous=FULL every COMMIT is an fsync, and an
 * fsync costs far more than the inserts of an event. One transaction per
 * batch pays one fsync for all of them. There is no timer: the batch is
 * simply everything that queued up while the previous batch was being
 * written (up to batch_max), so an idle service commits a lone event at
 * once and a busy one commits large batches.
 *
 * Durability before the answer: an item's done callback, which sends the
 * HTTP answer, runs only after COMMIT returned. If COMMIT fails, every event
 * of the batch is answered with an error (Stripe delivers again) — none was
 * acknowledged.
 *
 * Why parse on the request threads: this thread is the one serial stage of
 * ingestion, so it does only what must be serial (the SQL); JSON parsing,
 * a third of an event's cost, runs in parallel before it.
 *
 * Isolation of bad events: a batch is first written with no savepoint per
 * event (they cost a third of the serial path, see attempt_batch). If an
 * event cannot be ingested (an invalid envelope, a store error on just that
 * row), that transaction is rolled back and the batch written again with
 * each event inside its own SAVEPOINT: the failing one is rolled back to
 * its savepoint and answered with its own error; the other events of the
 * batch commit normally.
 */
#include "committer.h"
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

struct dun_committer {
	struct dun_db *db;
	int batch_max;
	struct dun_metrics *metrics;
	void (*triggered)(void *arg);
	void *arg;
	dun_committer_observe_fn observe; /* guarded by mu */
	void *observe_arg;		  /* guarded by mu */
	pthread_t thread;
	pthread_mutex_t mu;
	pthread_cond_t cv;
	pthread_cond_t idle_cv;		     /* broadcast when nothing is queued or committing */
	struct dun_commit_item *head, *tail; /* guarded by mu */
	bool committing;		     /* guarded by mu */
	int64_t last_batch_ms; /* guarded by mu: monotonic, when the last batch ended */
	bool stopping;	       /* guarded by mu */
	_Atomic bool running;
};

static void fail_all(struct dun_commit_item **items, int n, enum dun_err e, const char *why)
{
	for (int i = 0; i < n; i++) {
		if (items[i]->err != DUN_OK)
			continue; /* keeps its own, more precise error */
		items[i]->err = e;
		snprintf(items[i]->err_text, sizeof items[i]->err_text, "%s", why);
	}
}

static bool savepoint(struct dun_db *db, const char *sql)
{
	return dun_stmt_done(dun_db_stmt(db, sql)) == DUN_OK;
}

/* The new event of it learnt by the observer, in the current transaction. */
static enum dun_err learn(dun_committer_observe_fn observe, void *observe_arg, struct dun_db *db,
			  struct dun_commit_item *it)
{
	json_t *ev = it->ev ? json_incref(it->ev) : json_loadb(it->body, it->len, 0, NULL);
	enum dun_err e = DUN_OK;
	if (ev)
		e = observe(observe_arg, db, ev, it->err_text, sizeof it->err_text);
	json_decref(ev);
	return e;
}

/*
 * One attempt at the batch's transaction, in one of two ways.
 *
 * careful false (tried first): the events one after the other with no
 * savepoint of their own, and the observer (if any) learning them in one
 * pass before COMMIT. A savepoint per event cost a third of a mapped
 * event's instructions under callgrind: SQLite copies every page an event
 * touches first into the savepoint's journal (and truncates it on RELEASE),
 * PostgreSQL takes three more round trips. Should any event (or its
 * learning) fail, its writes may be half done: the transaction is rolled
 * back untouched and the attempt says so (returns false).
 *
 * careful true (then): each event, and its learning, in its own savepoint,
 * so the event that fails is the only one refused and rolled back, and the
 * others of the batch are stored.
 *
 * Returns true once the batch's outcome is settled (committed, or failed
 * and rolled back); sets *any_trigger.
 */
static bool attempt_batch(struct dun_committer *c, struct dun_commit_item **items, int n,
			  dun_committer_observe_fn observe, void *observe_arg, bool careful,
			  bool *any_trigger, enum dun_err *e_out)
{
	*any_trigger = false;
	for (int i = 0; i < n; i++) {
		items[i]->err = DUN_OK;
		items[i]->err_text[0] = '\0';
	}
	/* Beside the workers' claimed work, alone among mirror writers (store/db.h). */
	struct timespec t0, t1;
	clock_gettime(CLOCK_MONOTONIC, &t0);
	enum dun_err e = dun_db_begin_mirror(c->db);
	clock_gettime(CLOCK_MONOTONIC, &t1);
	dun_metrics_lock_wait(c->metrics, (int64_t)(t1.tv_sec - t0.tv_sec) * 1000000 +
					      (t1.tv_nsec - t0.tv_nsec) / 1000);
	*e_out = e;
	if (e != DUN_OK) {
		fail_all(items, n, e, "cannot begin a transaction");
		return true;
	}
	for (int i = 0; i < n; i++) {
		struct dun_commit_item *it = items[i];
		if (careful && !savepoint(c->db, "SAVEPOINT webhook_event")) {
			it->err = DUN_E_STORE;
			snprintf(it->err_text, sizeof it->err_text, "cannot open a savepoint");
			continue;
		}
		if (it->ev)
			it->err =
			    dun_ingest_parsed_in_tx(c->db, it->ev, it->body, it->len, &it->res,
						    it->err_text, sizeof it->err_text);
		else
			it->err = dun_ingest_event_in_tx(c->db, it->body, it->len, &it->res,
							 it->err_text, sizeof it->err_text);
		if (!careful) {
			if (it->err != DUN_OK) {
				dun_db_rollback(c->db);
				return false;
			}
			*any_trigger |= it->res.triggered;
			continue;
		}
		/* In the event's savepoint: learnt exactly when stored. */
		if (it->err == DUN_OK && !it->res.duplicate && observe)
			it->err = learn(observe, observe_arg, c->db, it);
		if (it->err != DUN_OK) {
			if (!savepoint(c->db, "ROLLBACK TO webhook_event")) {
				/* The transaction is unusable: give up the whole batch. */
				dun_db_rollback(c->db);
				*e_out = DUN_E_STORE;
				fail_all(items, n, DUN_E_STORE, "cannot roll back to a savepoint");
				*any_trigger = false;
				return true;
			}
		} else if (it->res.triggered) {
			*any_trigger = true;
		}
		savepoint(c->db, "RELEASE webhook_event");
	}
	for (int i = 0; !careful && observe && i < n; i++) {
		struct dun_commit_item *it = items[i];
		if (it->res.duplicate)
			continue;
		if (learn(observe, observe_arg, c->db, it) != DUN_OK) {
			dun_db_rollback(c->db);
			return false;
		}
	}
	e = dun_db_commit(c->db);
	*e_out = e;
	if (e != DUN_OK) {
		dun_db_rollback(c->db);
		/* Nothing of the batch is durable, so nothing may be acknowledged. */
		for (int i = 0; i < n; i++)
			if (items[i]->err == DUN_OK) {
				items[i]->err = e;
				snprintf(items[i]->err_text, sizeof items[i]->err_text,
					 "cannot commit: %s", dun_db_errmsg(c->db));
			}
		*any_trigger = false;
	}
	return true;
}

static void run_batch(struct dun_committer *c, struct dun_commit_item **items, int n)
{
	struct timespec ts0, ts1;
	clock_gettime(CLOCK_MONOTONIC, &ts0);
	pthread_mutex_lock(&c->mu);
	dun_committer_observe_fn observe = c->observe;
	void *observe_arg = c->observe_arg;
	pthread_mutex_unlock(&c->mu);
	bool any_trigger = false;
	enum dun_err e = DUN_OK;
	if (!attempt_batch(c, items, n, observe, observe_arg, false, &any_trigger, &e))
		attempt_batch(c, items, n, observe, observe_arg, true, &any_trigger, &e);
	clock_gettime(CLOCK_MONOTONIC, &ts1);
	int64_t us =
	    (int64_t)(ts1.tv_sec - ts0.tv_sec) * 1000000 + (ts1.tv_nsec - ts0.tv_nsec) / 1000;
	dun_metrics_batch(c->metrics, n, us);
	if (e != DUN_OK) {
		char num[16], ms[24];
		snprintf(num, sizeof num, "%d", n);
		snprintf(ms, sizeof ms, "%lld", (long long)(us / 1000));
		dun_log(DUN_LOG_ERROR, "webhook.commit_failed", "events", num, "duration_ms", ms,
			"error", dun_err_str(e), NULL);
	}
	if (any_trigger && c->triggered)
		c->triggered(c->arg);
	for (int i = 0; i < n; i++)
		items[i]->done(items[i]); /* last access to the item */
}

void dun_committer_set_observer(struct dun_committer *c, dun_committer_observe_fn observe,
				void *arg)
{
	pthread_mutex_lock(&c->mu);
	c->observe = observe;
	c->observe_arg = arg;
	pthread_mutex_unlock(&c->mu);
}

static void *committer_main(void *arg)
{
	struct dun_committer *c = arg;
	/* Named for per-thread CPU figures (top -H, /proc/PID/task/TID/comm). */
	pthread_setname_np(pthread_self(), "dun-committer");
	struct dun_commit_item **batch = dun_calloc((size_t)c->batch_max, sizeof *batch);
	for (;;) {
		pthread_mutex_lock(&c->mu);
		while (!c->head && !c->stopping)
			pthread_cond_wait(&c->cv, &c->mu);
		if (!c->head) {
			pthread_mutex_unlock(&c->mu);
			break;
		}
		int n = 0;
		while (c->head && n < c->batch_max) {
			batch[n++] = c->head;
			c->head = c->head->next;
		}
		if (!c->head)
			c->tail = NULL;
		c->committing = true;
		pthread_mutex_unlock(&c->mu);
		run_batch(c, batch, n);
		pthread_mutex_lock(&c->mu);
		c->committing = false;
		c->last_batch_ms = dun_clock_mono_ms();
		if (!c->head)
			pthread_cond_broadcast(&c->idle_cv);
		pthread_mutex_unlock(&c->mu);
	}
	free(batch);
	atomic_store(&c->running, false);
	return NULL;
}

enum dun_err dun_committer_start(const char *db_path, int batch_max, struct dun_metrics *metrics,
				 void (*triggered)(void *arg), void *arg,
				 struct dun_committer **out, char *err, size_t err_size)
{
	*out = NULL;
	struct dun_committer *c = dun_calloc(1, sizeof *c);
	enum dun_err e = dun_db_open(db_path, &c->db, err, err_size);
	if (e != DUN_OK) {
		free(c);
		return e;
	}
	dun_engine_ctx_busy_wait(c->db);
	/*
	 * No automatic checkpoint on this connection: copying the WAL back into
	 * the database would run after one of our COMMITs, inside the serial
	 * path of every webhook. The workers checkpoint instead (workers.c).
	 */
	dun_db_checkpoint_manual(c->db);
	c->batch_max = batch_max > 0 ? batch_max : 1;
	c->metrics = metrics;
	c->triggered = triggered;
	c->arg = arg;
	pthread_mutex_init(&c->mu, NULL);
	pthread_cond_init(&c->cv, NULL);
	pthread_cond_init(&c->idle_cv, NULL);
	atomic_store(&c->running, true);
	if (pthread_create(&c->thread, NULL, committer_main, c) != 0) {
		snprintf(err, err_size, "cannot start the committer thread");
		pthread_cond_destroy(&c->idle_cv);
		pthread_cond_destroy(&c->cv);
		pthread_mutex_destroy(&c->mu);
		dun_db_close(c->db);
		free(c);
		return DUN_E_IO;
	}
	*out = c;
	return DUN_OK;
}

void dun_committer_submit(struct dun_committer *c, struct dun_commit_item *item)
{
	item->next = NULL;
	pthread_mutex_lock(&c->mu);
	if (c->tail)
		c->tail->next = item;
	else
		c->head = item;
	c->tail = item;
	pthread_cond_signal(&c->cv);
	pthread_mutex_unlock(&c->mu);
}

void dun_committer_wait_idle(struct dun_committer *c, int64_t max_ms)
{
	struct timespec ts;
	clock_gettime(CLOCK_REALTIME, &ts);
	ts.tv_sec += max_ms / 1000;
	ts.tv_nsec += (max_ms % 1000) * 1000000;
	if (ts.tv_nsec >= 1000000000) {
		ts.tv_sec++;
		ts.tv_nsec -= 1000000000;
	}
	pthread_mutex_lock(&c->mu);
	while ((c->head || c->committing) && !c->stopping)
		if (pthread_cond_timedwait(&c->idle_cv, &c->mu, &ts) != 0)
			break;
	pthread_mutex_unlock(&c->mu);
}

bool dun_committer_busy(struct dun_committer *c)
{
	pthread_mutex_lock(&c->mu);
	bool busy = c->head || c->committing;
	pthread_mutex_unlock(&c->mu);
	return busy;
}

bool dun_committer_quiet(struct dun_committer *c, int64_t ms)
{
	pthread_mutex_lock(&c->mu);
	bool quiet = !c->head && !c->committing && dun_clock_mono_ms() - c->last_batch_ms >= ms;
	pthread_mutex_unlock(&c->mu);
	return quiet;
}

bool dun_committer_running(struct dun_committer *c)
{
	return atomic_load(&c->running);
}

void dun_committer_stop(struct dun_committer *c)
{
	if (!c)
		return;
	pthread_mutex_lock(&c->mu);
	c->stopping = true;
	pthread_cond_signal(&c->cv);
	pthread_cond_broadcast(&c->idle_cv);
	pthread_mutex_unlock(&c->mu);
	pthread_join(c->thread, NULL);
	pthread_cond_destroy(&c->idle_cv);
	pthread_cond_destroy(&c->cv);
	pthread_mutex_destroy(&c->mu);
	dun_db_close(c->db);
	free(c);
}
