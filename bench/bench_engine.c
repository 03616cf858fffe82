/*
 * bench_engine.c — the drift scan and recompute benchmark (bench/run.sh
 * runs it on the database gen_db wrote; docs/performance.md has the
 * methodology and the numbers).
 *
 * Every figure is reported against a baseline measured in the same process,
 * on the same connection settings, so the ratios do not depend on the
 * machine:
 *
 *   scan / raw read   dun_scan_run() (streaming GATHER, EVALUATE, DECIDE,
 *                     drift classes) against stepping the scan's own SQL
 *                     (dun_stream_sql) to the end and reading every column
 *                     of every row with the column getters; best of --rounds
 *                     alternating runs of each
 *   peak RSS          ru_maxrss of a child process forked before anything
 *                     was opened, which runs one scan and exits
 *   recompute /       dun_engine_recompute() in active mode (simulated
 *   gather            provider, local platform, log mailer) on --recomputes
 *                     random accounts of a copy of the database, against
 *                     dun_gather() alone on the same accounts
 *   pointwise         (--pointwise) the per-account scan the stream
 *                     replaced, against the same raw read
 *
 * Drift counts are checked against what the generator planted; a mismatch
 * is the only thing that makes the exit status non-zero. Timings never do.
 */
#include "gen.h"
#include "pointwise.h"

#include "apply/local.h"
#include "apply/recompute.h"
#include "apply/render.h"
#include "gather/stream.h"
#include "inbox/scan.h"
#include "inbox/worker.h"
#include "provider/sim.h"
#include "util/clock.h"
#include "util/log.h"
#include "util/mem.h"

#include <fcntl.h>
#include <getopt.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define SCAN_TARGET 1.2
#define RSS_TARGET  (64.0 * 1024 * 1024)

struct opts {
	const char *db;
	const char *templates;
	int rounds;
	int recomputes;
	bool pointwise;
	bool drain_only; /* --drain-only: the batched drains alone, for a profiler */
	uint64_t seed;
};

/* One engine as `dunning` wires the embedded default. */
struct bench {
	struct dun_db *db;
	struct dun_policy policy;
	struct dun_sim *sim;
	struct dun_template_set *templates;
	struct dun_template_renderer renderer;
	struct dun_engine en;
};

static double now_s(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* CPU seconds (user + system) this process has used. */
static double cpu_s(void)
{
	struct rusage ru;
	getrusage(RUSAGE_SELF, &ru);
	return (double)ru.ru_utime.tv_sec + (double)ru.ru_utime.tv_usec / 1e6 +
	       (double)ru.ru_stime.tv_sec + (double)ru.ru_stime.tv_usec / 1e6;
}

/*
 * Wall-clock and CPU time of one phase. Everything the phases read is in the
 * OS page cache, so on an idle machine the two agree; on a shared one the
 * CPU time is the steadier of the two.
 */
struct timing {
	double wall;
	double cpu;
};

static struct timing timing_start(void)
{
	struct timing t = {now_s(), cpu_s()};
	return t;
}

static struct timing timing_stop(struct timing t0)
{
	struct timing t = {now_s() - t0.wall, cpu_s() - t0.cpu};
	return t;
}

static void keep_best(struct timing *best, struct timing t, bool first)
{
	if (first || t.wall < best->wall)
		best->wall = t.wall;
	if (first || t.cpu < best->cpu)
		best->cpu = t.cpu;
}

static void die(const char *what, const char *why)
{
	fprintf(stderr, "bench_engine: %s: %s\n", what, why);
	exit(2);
}

static void bench_open(struct bench *b, const struct opts *o, const char *path)
{
	char err[512] = "";
	memset(b, 0, sizeof *b);
	if (dun_db_open(path, &b->db, err, sizeof err) != DUN_OK)
		die(path, err);
	dun_policy_defaults(&b->policy);
	if (dun_template_set_load(o->templates, &b->templates, err, sizeof err) != DUN_OK)
		die(o->templates, err);
	b->renderer.templates = b->templates;
	b->renderer.support_email = "support@example.invalid";
	b->sim = dun_sim_new(b->db, 1);
	dun_engine_init(&b->en, b->db, &b->policy, dun_sim_provider(b->sim),
			dun_local_platform(b->db), dun_log_mailer(),
			dun_template_renderer(&b->renderer));
}

static void bench_close(struct bench *b)
{
	dun_engine_free(&b->en);
	dun_sim_destroy(b->sim);
	dun_template_set_destroy(b->templates);
	dun_db_close(b->db);
}

static int64_t setting_i64(struct dun_db *db, const char *key, int64_t fallback)
{
	char buf[64];
	bool found = false;
	if (dun_db_setting_get(db, key, buf, sizeof buf, &found) != DUN_OK || !found)
		return fallback;
	return strtoll(buf, NULL, 10);
}

static int64_t count_rows(struct dun_db *db, const char *sql)
{
	struct dun_stmt *st = NULL;
	int64_t n = -1;
	if (dun_db_prepare(db, sql, &st) == DUN_OK && dun_stmt_row(st))
		n = dun_stmt_col_int64(st, 0);
	dun_stmt_finalize(st);
	return n;
}

/* Pages the store had to read from the file since the last call. */
static int64_t cache_misses(struct dun_db *db)
{
	return dun_db_cache_misses(db);
}

/* ---- the raw read --------------------------------------------------------------------- */

/*
 * The baseline: the scan's own queries, from the first account, every row
 * stepped and every column read with the accessor its type calls for. Like
 * the stream, they read range after range of DUN_STREAM_RANGE accounts
 * (dun_stream_range_sql); within a range one query after the other.
 */
static struct timing raw_read(struct dun_db *db, int64_t *rows_out)
{
	uint64_t sum = 0;
	int64_t rows = 0;
	struct timing t0 = timing_start();
	dun_db_set_cache_kb(db, DUN_STREAM_CACHE_KB); /* the stream's own setting */
	struct dun_stmt *range = NULL, *st[DUN_STREAM__COUNT] = {0};
	if (dun_db_prepare(db, dun_stream_range_sql(), &range) != DUN_OK)
		die("raw read", dun_db_errmsg(db));
	for (int q = 0; q < DUN_STREAM__COUNT; q++)
		if (dun_db_prepare(db, dun_stream_sql(q), &st[q]) != DUN_OK)
			die("raw read", dun_db_errmsg(db));
	char last[DUN_ID_MAX * 4] = "", hi[DUN_ID_MAX * 4];
	for (;;) {
		dun_stmt_reset(range);
		dun_stmt_bind_text(range, 1, last);
		dun_stmt_bind_int64(range, 2, DUN_STREAM_RANGE);
		if (!dun_stmt_row(range))
			die("raw read", dun_db_errmsg(db));
		bool done = dun_stmt_col_is_null(range, 0);
		dun_stmt_col_copy(range, 0, hi, sizeof hi);
		dun_stmt_reset(range);
		if (done)
			break;
		for (int q = 0; q < DUN_STREAM__COUNT; q++) {
			dun_stmt_reset(st[q]);
			dun_stmt_bind_text(st[q], 1, last);
			dun_stmt_bind_text(st[q], 2, hi);
			int rc;
			while ((rc = dun_stmt_step(st[q])) == DUN_STEP_ROW) {
				rows++;
				int n = dun_stmt_col_count(st[q]);
				for (int c = 0; c < n; c++) {
					switch (dun_stmt_col_type(st[q], c)) {
					case DUN_COL_INT:
						sum += (uint64_t)dun_stmt_col_int64(st[q], c);
						break;
					case DUN_COL_FLOAT:
						sum += (uint64_t)dun_stmt_col_double(st[q], c);
						break;
					case DUN_COL_TEXT: {
						const char *t = dun_stmt_col_text(st[q], c);
						sum += (uint64_t)dun_stmt_col_bytes(st[q], c) +
						       (t ? t[0] : 0);
						break;
					}
					case DUN_COL_BLOB:
						sum += (uint64_t)dun_stmt_col_bytes(st[q], c);
						break;
					case DUN_COL_NULL:
						sum++;
						break;
					}
				}
			}
			if (rc != DUN_STEP_DONE)
				die("raw read", dun_db_errmsg(db));
			dun_stmt_reset(st[q]);
		}
		memcpy(last, hi, sizeof last);
	}
	for (int q = 0; q < DUN_STREAM__COUNT; q++)
		dun_stmt_finalize(st[q]);
	dun_stmt_finalize(range);
	dun_db_set_cache_kb(db, DUN_DB_CACHE_KB);
	struct timing t = timing_stop(t0);
	/* The checksum is printed so no compiler can drop the reads. */
	fprintf(stderr, "raw read: %" PRId64 " rows, checksum %016" PRIx64 "\n", rows, sum);
	*rows_out = rows;
	return t;
}

static struct timing scan(struct bench *b, int64_t now, struct dun_scan_result *r)
{
	struct timing t0 = timing_start();
	enum dun_err e = dun_scan_run(&b->en, now, false, NULL, NULL, r);
	struct timing t = timing_stop(t0);
	if (e != DUN_OK)
		die("scan", dun_err_str(e));
	json_decref(r->examples);
	r->examples = NULL;
	return t;
}

/* ---- peak RSS of one scan, in a fresh process ------------------------------------------ */

struct child_report {
	double seconds;
	int64_t accounts;
	int64_t drifting;
};

static long scan_rss_kb(const struct opts *o, struct child_report *rep)
{
	int fds[2];
	if (pipe(fds) != 0)
		die("pipe", "failed");
	pid_t pid = fork();
	if (pid < 0)
		die("fork", "failed");
	if (pid == 0) {
		close(fds[0]);
		struct bench b;
		bench_open(&b, o, o->db);
		struct dun_scan_result r;
		struct child_report out = {0};
		out.seconds =
		    scan(&b, setting_i64(b.db, DUN_BENCH_KEY_NOW, dun_clock_now()), &r).wall;
		out.accounts = r.accounts;
		out.drifting = r.drifting;
		bench_close(&b);
		_exit(write(fds[1], &out, sizeof out) == (ssize_t)sizeof out ? 0 : 1);
	}
	close(fds[1]);
	memset(rep, 0, sizeof *rep);
	ssize_t got = read(fds[0], rep, sizeof *rep);
	close(fds[0]);
	int status = 0;
	struct rusage ru;
	if (wait4(pid, &status, 0, &ru) != pid || !WIFEXITED(status) || WEXITSTATUS(status) != 0 ||
	    got != (ssize_t)sizeof *rep)
		die("scan in a child process", "failed");
	return ru.ru_maxrss;
}

/* ---- recomputes ----------------------------------------------------------------------- */

static void copy_file(const char *from, const char *to)
{
	int in = open(from, O_RDONLY);
	int out = open(to, O_WRONLY | O_CREAT | O_TRUNC, 0644);
	if (in < 0 || out < 0)
		die(to, "cannot copy the database");
	size_t cap = 4 << 20;
	char *buf = dun_malloc(cap);
	ssize_t n;
	while ((n = read(in, buf, cap)) > 0)
		if (write(out, buf, (size_t)n) != n)
			die(to, "short write");
	/* On disk before the timed part, so its fsyncs do not pay for the copy. */
	if (n < 0 || fsync(out) != 0)
		die(to, "cannot copy the database");
	free(buf);
	close(in);
	close(out);
}

static void remove_db(const char *path)
{
	const char *const suffixes[] = {"", "-wal", "-shm"};
	for (size_t i = 0; i < sizeof suffixes / sizeof suffixes[0]; i++) {
		char p[4200];
		snprintf(p, sizeof p, "%s%s", path, suffixes[i]);
		unlink(p);
	}
}

/* n distinct accounts, uniformly at random (Floyd's sampling over rowids). */
static char (*sample(struct dun_db *db, int n, uint64_t seed, int *got))[DUN_ID_MAX]
{
	int64_t max = count_rows(db, "SELECT MAX(rowid) FROM accounts");
	if (max < 1)
		die("sample", "no accounts");
	if (n > max)
		n = (int)max;
	uint8_t *taken = dun_calloc((size_t)max / 8 + 1, 1);
	char(*ids)[DUN_ID_MAX] = dun_calloc((size_t)n, DUN_ID_MAX);
	struct dun_stmt *st = NULL;
	dun_db_prepare(db, "SELECT id FROM accounts WHERE rowid = ?1", &st);
	uint64_t s = seed * 0x9e3779b97f4a7c15ULL + 1;
	*got = 0;
	for (int64_t j = max - n + 1; j <= max; j++) {
		s ^= s << 13;
		s ^= s >> 7;
		s ^= s << 17;
		int64_t t = 1 + (int64_t)(s % (uint64_t)j);
		if (taken[t / 8] & (1u << (t % 8)))
			t = j;
		taken[t / 8] |= (uint8_t)(1u << (t % 8));
		dun_stmt_bind_int64(st, 1, t);
		if (dun_stmt_row(st))
			dun_stmt_col_copy(st, 0, ids[(*got)++], DUN_ID_MAX);
		dun_stmt_reset(st);
	}
	dun_stmt_finalize(st);
	free(taken);
	return ids;
}

/*
 * The simulated provider holds the sampled accounts' objects, built from
 * the mirror, so the recomputes' provider calls (and the fresh re-read
 * before destructive consequences) find them.
 */
static void seed_sim(struct dun_db *db, char (*ids)[DUN_ID_MAX], int n)
{
	static const char *const sql[] = {
	    "INSERT OR REPLACE INTO sim_objects(id, type, customer_id, behavior, body)"
	    " SELECT p.id, 'customer', p.id, COALESCE((SELECT a.decline_code || '@30'"
	    "  FROM p_invoices i JOIN p_attempts a ON a.invoice_id = i.id"
	    "  WHERE i.account_id = c.account_id AND i.customer_id = p.id AND i.status = 'open'"
	    "  AND a.status = 'failed'"
	    "  ORDER BY a.created DESC LIMIT 1), 'ok'),"
	    " json_object('id', p.id, 'object', 'customer', 'email', p.email, 'name', p.name,"
	    "  'metadata', json(p.metadata), 'invoice_settings',"
	    "  json_object('default_payment_method', p.default_payment_method))"
	    " FROM customers c JOIN p_customers p ON p.id = c.id WHERE c.account_id = ?1",
	    "INSERT OR REPLACE INTO sim_objects(id, type, customer_id, behavior, body)"
	    " SELECT s.id, 'subscription', s.customer_id, '',"
	    " json_object('id', s.id, 'object', 'subscription', 'customer', s.customer_id,"
	    "  'status', s.status)"
	    " FROM customers c JOIN p_subscriptions s ON s.customer_id = c.id"
	    " WHERE c.account_id = ?1",
	    "INSERT OR REPLACE INTO sim_objects(id, type, customer_id, behavior, body)"
	    " SELECT i.id, 'invoice', i.customer_id, '',"
	    " json_object('id', i.id, 'object', 'invoice', 'customer', i.customer_id,"
	    "  'subscription', i.subscription_id, 'status', i.status, 'amount_due', i.amount_due,"
	    "  'amount_paid', i.amount_paid, 'amount_remaining', i.amount_remaining,"
	    "  'currency', i.currency, 'attempt_count', i.attempt_count,"
	    "  'attempted', json(CASE WHEN i.attempt_count > 0 THEN 'true' ELSE 'false' END),"
	    "  'billing_reason', i.billing_reason, 'collection_method', i.collection_method,"
	    "  'created', i.created, 'hosted_invoice_url', i.hosted_invoice_url,"
	    "  'payment_intent', i.payment_intent, 'metadata', json(i.metadata),"
	    "  'status_transitions', json_object('paid_at', NULLIF(i.paid_at, 0)))"
	    " FROM customers c JOIN p_invoices i ON i.account_id = c.account_id"
	    " AND i.customer_id = c.id WHERE c.account_id = ?1",
	};
	char err[256];
	if (dun_db_exec(db, "BEGIN", err, sizeof err) != DUN_OK)
		die("seed", err);
	for (size_t k = 0; k < sizeof sql / sizeof sql[0]; k++) {
		struct dun_stmt *st = NULL;
		if (dun_db_prepare(db, sql[k], &st) != DUN_OK)
			die("seed", dun_db_errmsg(db));
		for (int i = 0; i < n; i++) {
			dun_stmt_bind_text(st, 1, ids[i]);
			if (dun_stmt_step(st) != DUN_STEP_DONE)
				die("seed", dun_db_errmsg(db));
			dun_stmt_reset(st);
		}
		dun_stmt_finalize(st);
	}
	if (dun_db_exec(db, "COMMIT", err, sizeof err) != DUN_OK)
		die("seed", err);
}

struct recompute_report {
	int n;
	double gather_s;
	double recompute_s;
	int noop, applied, failed;
	int64_t consequences;
};

static void recomputes(const struct opts *o, int64_t now, struct recompute_report *rep)
{
	char work[4200];
	snprintf(work, sizeof work, "%s.recompute-%ld", o->db, (long)getpid());
	remove_db(work);
	copy_file(o->db, work);
	struct bench b;
	memset(rep, 0, sizeof *rep);
	{
		/* Active for every account, as after a full rollout. */
		struct dun_db *db = NULL;
		char err[512];
		if (dun_db_open(work, &db, err, sizeof err) != DUN_OK)
			die(work, err);
		if (dun_db_setting_set(db, "mode", "active") != DUN_OK ||
		    dun_db_setting_set(db, "rollout.percent", "100") != DUN_OK)
			die(work, "cannot set the rollout");
		dun_db_close(db);
	}
	bench_open(&b, o, work);
	dun_clock_set(now);
	char(*ids)[DUN_ID_MAX] = sample(b.db, o->recomputes, o->seed, &rep->n);
	seed_sim(b.db, ids, rep->n);

	struct dun_snapshot snap;
	dun_snapshot_init(&snap);
	for (int pass = 0; pass < 2; pass++) {
		/* The first pass only warms the cache for both timed ones. */
		double t0 = now_s();
		for (int i = 0; i < rep->n; i++)
			if (dun_gather(b.db, ids[i], &snap) != DUN_OK)
				die(ids[i], "gather failed");
		rep->gather_s = now_s() - t0;
	}
	dun_snapshot_free(&snap);

	struct dun_trigger_ref trigger = {.id = 0, .kind = "support_recompute"};
	double t0 = now_s();
	for (int i = 0; i < rep->n; i++) {
		struct dun_recompute_result r;
		enum dun_err e = dun_engine_recompute(&b.en, ids[i], &trigger, false, &r);
		if (e != DUN_OK)
			rep->failed++;
		else if (!r.n_planned)
			rep->noop++;
		else
			rep->applied++;
		rep->consequences += r.apply.n_applied;
	}
	rep->recompute_s = now_s() - t0;
	free(ids);
	bench_close(&b);
	remove_db(work);
}

/* ---- the workers: batched against one transaction per account ---------------------- */

/*
 * The inbox path of `dunning work`: triggers enqueued for a set of
 * accounts, then dun_worker_drain() with batching off (batch_max 1: the
 * decision, each consequence and the settlement commit on their own, as
 * before batching) or on (the defaults: up to 64 accounts per transaction).
 * Two groups of accounts, told apart by a dry run of their plan: an empty
 * plan, and a plan with consequences. Each group is dealt alternately into
 * two halves of the same make-up; the unbatched drain works one half and
 * the batched drain the other (an account's plan is spent once applied),
 * and dun_gather() alone over both halves is the baseline, all in one run
 * on one copy of the database, durable as in production.
 */
struct group_report {
	int n[2];		      /* accounts of each half */
	double gather_s[2];	      /* dun_gather() over each half */
	double drain_s[2];	      /* [0] unbatched, [1] batched */
	double drain_cpu_s[2];	      /* CPU time of the same drains */
	int64_t drain_misses[2];      /* pages the drains read from the file */
	int64_t unbatched_in_batched; /* accounts the batched drain ran alone (network) */
	int64_t batches;	      /* shared transactions of the batched drain */
	int64_t failed[2];
	int64_t consequences[2];
};

/*
 * What the store costs at the least, on the same copy, with the engine's
 * durability: a point read by primary key inside a transaction, a one-row
 * update inside a shared transaction, and a transaction of one update
 * committed on its own (the fsync). An empty recompute is a known number of
 * each (docs/performance.md, "Empty plans"), which bounds it from below.
 */
struct floor_report {
	struct timing read, write, commit; /* per operation */
};

struct worker_report {
	int sampled;
	int provider_plans; /* of the consequences group: plans with a provider call */
	struct group_report empty, conseq;
	struct floor_report floor;
};

static void enqueue_all(struct dun_db *db, char (*ids)[DUN_ID_MAX], const int *which, int n,
			int64_t now)
{
	if (dun_db_begin(db) != DUN_OK)
		die("enqueue", dun_db_errmsg(db));
	for (int i = 0; i < n; i++) {
		bool inserted = false;
		int64_t id = 0;
		if (dun_inbox_enqueue(db, ids[which[i]], "support_recompute", "bench", "", NULL,
				      now, &inserted, &id) != DUN_OK)
			die("enqueue", dun_db_errmsg(db));
	}
	if (dun_db_commit(db) != DUN_OK)
		die("enqueue", dun_db_errmsg(db));
}

static double gather_all(struct dun_db *db, char (*ids)[DUN_ID_MAX], const int *which, int n)
{
	struct dun_snapshot snap;
	dun_snapshot_init(&snap);
	double t0 = now_s();
	for (int i = 0; i < n; i++)
		if (dun_gather(db, ids[which[i]], &snap) != DUN_OK)
			die(ids[which[i]], "gather failed");
	double t = now_s() - t0;
	dun_snapshot_free(&snap);
	return t;
}

static void drain_group(struct bench *b, char (*ids)[DUN_ID_MAX], int *members, int n, int64_t now,
			bool batched_only, struct group_report *g)
{
	/* Dealt alternately: half 0 at even places, half 1 at odd ones. */
	int *half[2] = {dun_calloc((size_t)n + 1, sizeof(int)),
			dun_calloc((size_t)n + 1, sizeof(int))};
	g->n[0] = g->n[1] = 0;
	for (int i = 0; i < n; i++)
		half[i % 2][g->n[i % 2]++] = members[i];
	for (int pass = 0; pass < 2; pass++) /* the first pass warms the cache */
		for (int h = 0; h < 2; h++)
			g->gather_s[h] = gather_all(b->db, ids, half[h], g->n[h]);
	char worker[200];
	dun_inbox_worker_id(worker, sizeof worker, "bench");
	for (int h = batched_only ? 1 : 0; h < 2; h++) {
		struct dun_inbox_config cfg;
		dun_inbox_config_defaults(&cfg);
		if (h == 0)
			cfg.batch_max = 1;
		enqueue_all(b->db, ids, half[h], g->n[h], now);
		struct dun_drain_stats st;
		cache_misses(b->db);
		struct timing t0 = timing_start();
		if (dun_worker_drain(&b->en, &cfg, worker, now, 0, &st) != DUN_OK)
			die("drain", dun_db_errmsg(b->db));
		struct timing t = timing_stop(t0);
		g->drain_s[h] = t.wall;
		g->drain_cpu_s[h] = t.cpu;
		g->drain_misses[h] = cache_misses(b->db);
		if (st.accounts != g->n[h] + st.rechecks_enqueued) {
			char why[160];
			snprintf(why, sizeof why,
				 "worked %" PRId64 " accounts, %d enqueued and %" PRId64
				 " rechecks due",
				 st.accounts, g->n[h], st.rechecks_enqueued);
			die("drain", why);
		}
		g->failed[h] = st.failed;
		g->consequences[h] = st.consequences_applied;
		if (h == 1) {
			g->unbatched_in_batched = st.unbatched;
			g->batches = st.batches;
		}
	}
	free(half[0]);
	free(half[1]);
}

static struct timing per_op(struct timing t, int n)
{
	struct timing r = {t.wall / n, t.cpu / n};
	return r;
}

static void floor_loops(struct dun_db *db, char (*ids)[DUN_ID_MAX], int n, struct floor_report *f)
{
	const int rounds = 5, commits = 50;
	/* A real change: SQLite leaves a page clean when a row is rewritten as it was. */
	struct dun_stmt *rd = dun_db_stmt(db, "SELECT segment FROM accounts WHERE id = ?1");
	struct dun_stmt *wr = dun_db_stmt(db, "UPDATE accounts SET created_at = created_at + 1"
					      " WHERE id = ?1");
	if (dun_db_begin(db) != DUN_OK)
		die("floor", dun_db_errmsg(db));
	struct timing t0 = timing_start();
	for (int r = 0; r < rounds; r++)
		for (int i = 0; i < n; i++) {
			dun_stmt_bind_text(rd, 1, ids[i]);
			if (!dun_stmt_row(rd))
				die(ids[i], "floor: no such account");
			dun_stmt_reset(rd);
		}
	f->read = per_op(timing_stop(t0), rounds * n);
	dun_db_rollback(db);
	/* Updates in transactions of 64, as a batched drain takes accounts. */
	t0 = timing_start();
	for (int i = 0; i < n; i++) {
		if (i % 64 == 0 && dun_db_begin(db) != DUN_OK)
			die("floor", dun_db_errmsg(db));
		dun_stmt_bind_text(wr, 1, ids[i]);
		if (dun_stmt_done(wr) != DUN_OK)
			die("floor", dun_db_errmsg(db));
		if ((i % 64 == 63 || i == n - 1) && dun_db_commit(db) != DUN_OK)
			die("floor", dun_db_errmsg(db));
	}
	f->write = per_op(timing_stop(t0), n);
	t0 = timing_start();
	for (int i = 0; i < commits; i++) {
		if (dun_db_begin(db) != DUN_OK)
			die("floor", dun_db_errmsg(db));
		dun_stmt_bind_text(wr, 1, ids[i % n]);
		if (dun_stmt_done(wr) != DUN_OK || dun_db_commit(db) != DUN_OK)
			die("floor", dun_db_errmsg(db));
	}
	f->commit = per_op(timing_stop(t0), commits);
}

static void workers(const struct opts *o, int64_t now, struct worker_report *rep)
{
	char work[4200];
	snprintf(work, sizeof work, "%s.workers-%ld", o->db, (long)getpid());
	remove_db(work);
	copy_file(o->db, work);
	memset(rep, 0, sizeof *rep);
	struct bench b;
	bench_open(&b, o, work);
	/* As the service's workers read (src/server/workers.c). */
	dun_db_map_file(b.db, DUN_DB_WORKER_MAP_MB);
	if (dun_db_setting_set(b.db, "mode", "active") != DUN_OK ||
	    dun_db_setting_set(b.db, "rollout.percent", "100") != DUN_OK)
		die(work, "cannot set the rollout");
	dun_clock_set(now);
	char err[256];
	/* Only the triggers enqueued below: rechecks due now are worked first, untimed. */
	if (dun_db_exec(b.db, "DELETE FROM inbox", err, sizeof err) != DUN_OK)
		die(work, err);
	struct dun_inbox_config cfg;
	dun_inbox_config_defaults(&cfg);
	struct dun_drain_stats st;
	char worker[200];
	dun_inbox_worker_id(worker, sizeof worker, "bench");
	if (dun_worker_drain(&b.en, &cfg, worker, now, 0, &st) != DUN_OK)
		die("drain of due rechecks", dun_db_errmsg(b.db));

	/* Enough accounts that the smaller group, with consequences, is not a handful. */
	int want = o->recomputes * 10;
	char(*ids)[DUN_ID_MAX] = sample(b.db, want, o->seed + 7, &rep->sampled);
	seed_sim(b.db, ids, rep->sampled);
	int *empty = dun_calloc((size_t)rep->sampled + 1, sizeof(int));
	int *conseq = dun_calloc((size_t)rep->sampled + 1, sizeof(int));
	int n_empty = 0, n_conseq = 0;
	for (int i = 0; i < rep->sampled; i++) {
		struct dun_recompute_result r;
		if (dun_engine_recompute(&b.en, ids[i], NULL, true, &r) != DUN_OK)
			continue;
		if (r.n_planned == 0) {
			/*
			 * Every empty plan of the sample: with only
			 * 2 x --recomputes of them the quick run's batched
			 * drain lasted about 25 ms, a handful of commits,
			 * and its figure moved by a quarter between runs.
			 */
			empty[n_empty++] = i;
		} else {
			conseq[n_conseq++] = i;
			rep->provider_plans += !dun_apply_plan_batchable(&b.en.applier, &b.en.plan);
		}
	}
	drain_group(&b, ids, empty, n_empty, now, o->drain_only, &rep->empty);
	drain_group(&b, ids, conseq, n_conseq, now, o->drain_only, &rep->conseq);
	if (rep->sampled > 0)
		floor_loops(b.db, ids, rep->sampled, &rep->floor);
	free(empty);
	free(conseq);
	free(ids);
	bench_close(&b);
	remove_db(work);
}

static void print_group(const char *name, const struct group_report *g)
{
	double gather = (g->n[0] + g->n[1]) / (g->gather_s[0] + g->gather_s[1]);
	double unb = g->n[0] / g->drain_s[0], bat = g->n[1] / g->drain_s[1];
	printf("  %-22s %6d + %-6d %10.0f %12.0f %10.0f %10.2f %10.2f\n", name, g->n[0], g->n[1],
	       gather, unb, bat, bat / unb, gather / bat);
}

/* ---- report --------------------------------------------------------------------------- */

static const char *verdict(bool ok)
{
	return ok ? "ok" : "ABOVE TARGET";
}

static void usage(FILE *f)
{
	fprintf(f, "usage: bench_engine --db PATH [--rounds N] [--recomputes N] [--pointwise]"
		   " [--templates DIR] [--seed S] [--drain-only]\n");
}

int main(int argc, char **argv)
{
	static const struct option lopts[] = {{"db", required_argument, NULL, 'd'},
					      {"rounds", required_argument, NULL, 'r'},
					      {"recomputes", required_argument, NULL, 'n'},
					      {"pointwise", no_argument, NULL, 'p'},
					      {"templates", required_argument, NULL, 't'},
					      {"seed", required_argument, NULL, 's'},
					      {"drain-only", no_argument, NULL, 'D'},
					      {"help", no_argument, NULL, 'h'},
					      {NULL, 0, NULL, 0}};
	struct opts o = {
	    .rounds = 3, .recomputes = 2000, .seed = 1, .templates = DUN_DATA_DIR "/templates"};
	int c;
	while ((c = getopt_long(argc, argv, "d:r:n:pt:s:hD", lopts, NULL)) != -1) {
		switch (c) {
		case 'd':
			o.db = optarg;
			break;
		case 'r':
			o.rounds = atoi(optarg);
			break;
		case 'n':
			o.recomputes = atoi(optarg);
			break;
		case 'p':
			o.pointwise = true;
			break;
		case 't':
			o.templates = optarg;
			break;
		case 's':
			o.seed = strtoull(optarg, NULL, 10);
			break;
		case 'D':
			o.drain_only = true;
			break;
		case 'h':
			usage(stdout);
			return 0;
		default:
			usage(stderr);
			return 64;
		}
	}
	if (!o.db || optind != argc || o.rounds < 1 || o.recomputes < 0) {
		usage(stderr);
		return 64;
	}
	dun_log_set_level(DUN_LOG_ERROR);
	if (dun_db_is_url(o.db)) {
		/* A PostgreSQL copy (bench/pg_scan.py): the scan only, no file to copy. */
		o.recomputes = 0;
	} else if (access(o.db, R_OK) != 0) {
		die(o.db, "no such database (bench/run.sh generates it with gen_db)");
	}

	{
		/*
		 * Writes on for everyone, as after a full rollout: a new
		 * installation observes, and the scan of an observe account
		 * judges its (here empty) shadow, not the planted drift.
		 */
		struct dun_db *db = NULL;
		char err[512];
		if (dun_db_open(o.db, &db, err, sizeof err) != DUN_OK)
			die(o.db, err);
		if (dun_db_setting_set(db, "mode", "active") != DUN_OK ||
		    dun_db_setting_set(db, "rollout.percent", "100") != DUN_OK)
			die(o.db, "cannot set the rollout");
		dun_db_close(db);
	}

	if (o.drain_only) {
		/*
		 * The batched drains alone (no scan, no unbatched half), so
		 * that a profiler attached to the whole process sees them.
		 */
		struct bench b;
		bench_open(&b, &o, o.db);
		const int64_t now = setting_i64(b.db, DUN_BENCH_KEY_NOW, -1);
		bench_close(&b);
		if (now < 0)
			die(o.db, "not a database gen_db wrote");
		struct worker_report wk = {0};
		workers(&o, now, &wk);
		printf("batched drains: empty plan %d accounts %.0f/s (cpu %.3f s of wall %.3f s),"
		       " with consequences %d accounts %.0f/s\n",
		       wk.empty.n[1], wk.empty.n[1] / wk.empty.drain_s[1], wk.empty.drain_cpu_s[1],
		       wk.empty.drain_s[1], wk.conseq.n[1], wk.conseq.n[1] / wk.conseq.drain_s[1]);
		return 0;
	}

	/* Peak RSS first, from a process that has opened nothing else. */
	fprintf(stderr, "bench: scan in a fresh process (peak RSS)...\n");
	struct child_report child;
	long rss_kb = scan_rss_kb(&o, &child);

	struct bench b;
	bench_open(&b, &o, o.db);
	const int64_t now = setting_i64(b.db, DUN_BENCH_KEY_NOW, -1);
	if (now < 0)
		die(o.db, "not a database gen_db wrote");
	int64_t n_invoices = count_rows(b.db, "SELECT COUNT(*) FROM p_invoices");
	int64_t n_attempts = count_rows(b.db, "SELECT COUNT(*) FROM p_attempts");

	struct timing raw_best = {0}, scan_best = {0};
	int64_t rows = 0, raw_misses = 0, scan_misses = 0;
	struct dun_scan_result r;
	for (int i = 0; i < o.rounds; i++) {
		fprintf(stderr, "bench: round %d/%d: raw read, scan...\n", i + 1, o.rounds);
		cache_misses(b.db);
		struct timing raw_t = raw_read(b.db, &rows);
		raw_misses = cache_misses(b.db);
		struct timing scan_t = scan(&b, now, &r);
		scan_misses = cache_misses(b.db);
		keep_best(&raw_best, raw_t, i == 0);
		keep_best(&scan_best, scan_t, i == 0);
		fprintf(stderr,
			"bench: raw %.2f s (cpu %.2f, %" PRId64
			" page reads), scan %.2f s (cpu %.2f, %" PRId64
			" page reads), ratio %.3f (cpu %.3f)\n",
			raw_t.wall, raw_t.cpu, raw_misses, scan_t.wall, scan_t.cpu, scan_misses,
			scan_t.wall / raw_t.wall, scan_t.cpu / raw_t.cpu);
	}
	struct dun_scan_result pw = {0};
	struct timing pointwise_t = {0};
	if (o.pointwise) {
		fprintf(stderr, "bench: per-account scan...\n");
		struct timing t0 = timing_start();
		if (dun_bench_pointwise_scan(&b.en, now, &pw) != DUN_OK)
			die("per-account scan", "failed");
		pointwise_t = timing_stop(t0);
	}
	int mismatches = 0;
	int64_t expect[DUN_DRIFT__COUNT];
	for (int k = 0; k < DUN_DRIFT__COUNT; k++) {
		char key[96];
		snprintf(key, sizeof key, "%s%s", DUN_BENCH_KEY_EXPECT,
			 dun_drift_name((enum dun_drift_class)k));
		expect[k] = setting_i64(b.db, key, -1);
		/* Classes read off the plan are not planted (see test_stream_equiv.c). */
		mismatches += k <= DUN_DRIFT_STAGE && expect[k] != r.per_class[k];
	}
	int64_t planted = setting_i64(b.db, DUN_BENCH_KEY_EXPECT "drifting", -1);
	mismatches += planted + r.per_class[DUN_DRIFT_OTHER] != r.drifting;
	if (o.pointwise) {
		mismatches += pw.drifting != r.drifting || pw.planned != r.planned;
		for (int k = 0; k < DUN_DRIFT__COUNT; k++)
			mismatches += pw.per_class[k] != r.per_class[k];
	}
	bench_close(&b);

	struct recompute_report rec = {0};
	if (o.recomputes > 0) {
		fprintf(stderr, "bench: %d recomputes on a copy of the database...\n",
			o.recomputes);
		recomputes(&o, now, &rec);
	}

	struct worker_report wk = {0};
	if (o.recomputes > 0) {
		fprintf(stderr, "bench: the workers, batched and not, on a copy...\n");
		workers(&o, now, &wk);
	}

	double ratio = scan_best.wall / raw_best.wall;
	double ratio_cpu = scan_best.cpu / raw_best.cpu;
	double rss = (double)rss_kb * 1024.0;
	double n = (double)r.accounts;
	printf("\n");
	printf("dunning benchmark: %s\n", o.db);
	printf("  %" PRId64 " accounts, %" PRId64 " invoices, %" PRId64
	       " payment attempts; %" PRId64 " rows in the scan's reads\n",
	       r.accounts, n_invoices, n_attempts, rows);
	printf("\n  drift scan (best of %d)            seconds  cpu seconds   accounts/s\n",
	       o.rounds);
	printf("  raw read of the same columns      %8.2f     %8.2f   %10.0f\n", raw_best.wall,
	       raw_best.cpu, n / raw_best.wall);
	printf("  scan (stream, evaluate, decide)   %8.2f     %8.2f   %10.0f\n", scan_best.wall,
	       scan_best.cpu, n / scan_best.wall);
	if (o.pointwise)
		printf("  per-account scan (before)         %8.2f     %8.2f   %10.0f\n",
		       pointwise_t.wall, pointwise_t.cpu, n / pointwise_t.wall);
	printf("  first scan, fresh process         %8.2f\n", child.seconds);
	printf("  pages read from the file: raw %" PRId64 ", scan %" PRId64 "\n", raw_misses,
	       scan_misses);
	printf("\n  %-34s %8.3f   target <= %.2f  %s\n", "scan / raw read", ratio, SCAN_TARGET,
	       verdict(ratio <= SCAN_TARGET));
	printf("  %-34s %8.3f   target <= %.2f  %s\n", "scan / raw read, cpu time", ratio_cpu,
	       SCAN_TARGET, verdict(ratio_cpu <= SCAN_TARGET));
	if (o.pointwise)
		printf("  %-34s %8.3f\n", "per-account scan / raw read",
		       pointwise_t.wall / raw_best.wall);
	printf("  %-34s %8.1f MB  target <= %.0f MB  %s\n", "peak RSS of a scan", rss / 1048576.0,
	       RSS_TARGET / 1048576.0, verdict(rss <= RSS_TARGET));
	printf("\n  drifting %" PRId64 " of %" PRId64 " (planted %" PRId64 "), %" PRId64
	       " consequences planned\n",
	       r.drifting, r.accounts, planted, r.planned);
	for (int k = 0; k < DUN_DRIFT__COUNT; k++)
		printf("    %-30s %8" PRId64 "  expected %8" PRId64 "%s\n",
		       dun_drift_name((enum dun_drift_class)k), r.per_class[k], expect[k],
		       k > DUN_DRIFT_STAGE || r.per_class[k] == expect[k] ? "" : "  MISMATCH");
	if (rec.n > 0) {
		printf("\n  recomputes (%d random accounts, active mode)   seconds   per second\n",
		       rec.n);
		printf("  dun_gather only                            %8.3f   %10.0f\n",
		       rec.gather_s, rec.n / rec.gather_s);
		printf("  dun_engine_recompute                       %8.3f   %10.0f\n",
		       rec.recompute_s, rec.n / rec.recompute_s);
		printf("  %-42s %8.2f\n", "recompute / gather", rec.recompute_s / rec.gather_s);
		printf("  outcomes: %d with nothing to do, %d applied (%" PRId64
		       " consequences), %d failed\n",
		       rec.noop, rec.applied, rec.consequences, rec.failed);
	}
	if (wk.sampled > 0) {
		printf("\n  workers (dun_worker_drain, active mode, durable), accounts/s\n");
		printf("  %-22s %-15s %10s %12s %10s %10s %10s\n", "plans", "accounts", "gathers",
		       "unbatched", "batched", "bat/unbat", "gath/bat");
		print_group("empty plan", &wk.empty);
		print_group("with consequences", &wk.conseq);
		double empty_rate = wk.empty.n[1] / wk.empty.drain_s[1];
		double speedup = (wk.conseq.n[1] / wk.conseq.drain_s[1]) /
				 (wk.conseq.n[0] / wk.conseq.drain_s[0]);
		printf("  %-42s %8.0f   target >= 10000  %s\n", "batched, empty plan, per second",
		       empty_rate, empty_rate >= 10000 ? "ok" : "MISSED");
		printf("  %-42s %8.2f   target >= 2      %s\n",
		       "batched / unbatched, with consequences", speedup,
		       speedup >= 2 ? "ok" : "MISSED");
		printf("  consequences applied: unbatched %" PRId64 ", batched %" PRId64
		       "; failed: %" PRId64 ", %" PRId64 "\n",
		       wk.conseq.consequences[0], wk.conseq.consequences[1], wk.conseq.failed[0],
		       wk.conseq.failed[1]);
		printf("  shared transactions: %" PRId64 " for %d empty plans, %" PRId64
		       " for %d with consequences\n",
		       wk.empty.batches, wk.empty.n[1], wk.conseq.batches, wk.conseq.n[1]);
		for (int h = 0; h < 2; h++)
			printf("  empty plan, %-9s drain: cpu %.3f s of wall %.3f s, %" PRId64
			       " pages read from the file\n",
			       h ? "batched" : "unbatched", wk.empty.drain_cpu_s[h],
			       wk.empty.drain_s[h], wk.empty.drain_misses[h]);
		printf("  store floor: point read %.2f us (cpu %.2f), row update in a shared"
		       " transaction %.2f us (cpu %.2f), durable commit %.3f ms (cpu %.3f)\n",
		       wk.floor.read.wall * 1e6, wk.floor.read.cpu * 1e6, wk.floor.write.wall * 1e6,
		       wk.floor.write.cpu * 1e6, wk.floor.commit.wall * 1e3,
		       wk.floor.commit.cpu * 1e3);
		printf("  of %d sampled accounts, %d with consequences (%d that need the network);"
		       " the batched drain ran %" PRId64 " of its half alone\n",
		       wk.sampled, wk.conseq.n[0] + wk.conseq.n[1], wk.provider_plans,
		       wk.conseq.unbatched_in_batched + wk.empty.unbatched_in_batched);
	}
	if (mismatches)
		printf("\n  drift counts differ from what the generator planted\n");
	return mismatches ? 1 : 0;
}
