/*
 * admin.c — the admin API of `dunning serve` (see admin.h and
 * docs/http-api.md): the support button (recompute), the explain trace,
 * pay-bad-debt, the inbox and its retries, plus /healthz, /readyz and
 * /metrics. It is a front door to the same pipeline the CLI drives: every
 * endpoint calls the function the matching `dunning` subcommand calls.
 *
 * Authentication: a bearer token ([admin] token or DUNNING_ADMIN_TOKEN),
 * compared in constant time (both sides are hashed first, so neither the
 * content nor the length of the token leaks through timing). Without a
 * configured token the admin endpoints answer 503: the API is never open
 * by default. /healthz, /readyz and /metrics need no token; they reveal
 * counts, never account data.
 *
 * Threads: handlers run on HTTP threads and only validate the request;
 * everything that reads the database or calls the provider is a job on the
 * admin lane. A support recompute with wait enqueues its trigger on the
 * lane and parks the request here; the worker that settles the account
 * answers it (dun_admin_settled), or the main thread's tick answers 202
 * when the wait is over.
 */
#include "admin.h"
#include "apply/explain.h"
#include "apply/paybaddebt.h"
#include "core/text.h"
#include "inbox/inbox.h"
#include "server/committer.h"
#include "server/lane.h"
#include "server/metrics_db.h"
#include "server/service.h"
#include "server/shared_provider.h"
#include "server/workers.h"
#include "util/clock.h"
#include "util/mem.h"

#include <errno.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/statvfs.h>

/* How long a support recompute waits for its result by default, and at most. */
#define WAIT_DEFAULT_S	     10
#define WAIT_MAX_S	     60
#define EVENTS_LIMIT_DEFAULT 50
#define EVENTS_LIMIT_MAX     1000
/* /readyz fails while the database's disk has less room than this. */
#define READY_FREE_BYTES_MIN (1024 * 1024)

enum job_kind {
	JOB_READYZ,
	JOB_METRICS,
	JOB_ACCOUNT,
	JOB_RECOMPUTE,
	JOB_PAY,
	JOB_EVENTS,
	JOB_RETRY
};

struct admin_job {
	struct dun_lane_job lane; /* first: the lane hands back this pointer */
	enum job_kind kind;
	struct dun_service *svc;
	struct dun_http_request *req;
	char account[DUN_ID_MAX];
	char state[16];
	int64_t id;
	int64_t limit;
	int64_t wait_ms;
	/* a parked support recompute */
	int64_t trigger_id;
	int64_t started_ms;
	int64_t deadline_ms;
	struct admin_job *next_waiter;
};

struct dun_admin {
	struct dun_service *svc;
	pthread_mutex_t mu;
	struct admin_job *waiters; /* guarded by mu */
};

struct dun_admin *dun_admin_new(struct dun_service *svc)
{
	struct dun_admin *a = dun_calloc(1, sizeof *a);
	a->svc = svc;
	pthread_mutex_init(&a->mu, NULL);
	return a;
}

void dun_admin_destroy(struct dun_admin *a)
{
	if (!a)
		return;
	pthread_mutex_destroy(&a->mu);
	free(a);
}

/* ---- request checks ------------------------------------------------------------ */

static bool token_matches(const char *given, const char *want)
{
	unsigned char a[EVP_MAX_MD_SIZE], b[EVP_MAX_MD_SIZE];
	unsigned int la = 0, lb = 0;
	if (!EVP_Digest(given, strlen(given), a, &la, EVP_sha256(), NULL) ||
	    !EVP_Digest(want, strlen(want), b, &lb, EVP_sha256(), NULL) || la != lb)
		return false;
	return CRYPTO_memcmp(a, b, la) == 0;
}

/* Refuse an oversized body; for admin routes also check the token. */
static bool admit(struct dun_service *svc, struct dun_http_request *req, bool admin)
{
	if (dun_http_body_too_big(req)) {
		dun_http_reply_error(req, 413, "payload_too_large",
				     "the body is larger than %lld bytes ([server] body_max_bytes)",
				     (long long)dun_http_body_max(req));
		return false;
	}
	if (!admin)
		return true;
	if (!svc->cfg.admin_token[0]) {
		dun_http_reply_error(req, 503, "admin_disabled",
				     "the admin API is off: no token is configured ([admin] token "
				     "or DUNNING_ADMIN_TOKEN)");
		return false;
	}
	const char *h = dun_http_header(req, "Authorization");
	const char *token = NULL;
	if (h && strncasecmp(h, "Bearer ", 7) == 0) {
		token = h + 7;
		while (*token == ' ')
			token++;
	}
	if (!token || !*token || !token_matches(token, svc->cfg.admin_token)) {
		dun_http_add_header(req, "WWW-Authenticate", "Bearer realm=\"dunning\"");
		dun_http_reply_error(req, 401, "unauthorized",
				     token ? "the bearer token is wrong"
					   : "send Authorization: Bearer <admin token>");
		return false;
	}
	return true;
}

static bool account_param(struct dun_http_request *req, char *out)
{
	const char *id = dun_http_param(req, 0);
	if (!id[0] || strlen(id) >= DUN_ID_MAX) {
		dun_http_reply_error(req, 400, "invalid_account",
				     "an account id has 1 to %d characters", DUN_ID_MAX - 1);
		return false;
	}
	dun_strlcpy(out, id, DUN_ID_MAX);
	dun_http_log(req, "account", out);
	return true;
}

/* A whole number from a query argument; def when absent; false when malformed. */
static bool query_int(struct dun_http_request *req, const char *key, int64_t def, int64_t lo,
		      int64_t hi, int64_t *out)
{
	const char *v = dun_http_query(req, key);
	*out = def;
	if (!v)
		return true;
	char *end;
	errno = 0;
	long long n = strtoll(v, &end, 10);
	if (errno || end == v || *end || n < lo || n > hi) {
		dun_http_reply_error(req, 400, "invalid_parameter",
				     "%s: expected a whole number from %lld to %lld, got \"%s\"",
				     key, (long long)lo, (long long)hi, v);
		return false;
	}
	*out = n;
	return true;
}

static void run_job(struct dun_lane_job *lj, struct dun_engine_ctx *ctx);

static void submit(struct dun_service *svc, struct dun_http_request *req, struct admin_job *job,
		   enum job_kind kind)
{
	job->lane.run = run_job;
	job->kind = kind;
	job->svc = svc;
	job->req = req;
	dun_http_set_user(req, job, free);
	dun_http_suspend(req);
	dun_lane_submit(svc->lane, &job->lane);
}

/* ---- the jobs (on lane threads) --------------------------------------------------- */

static json_t *str_or_empty(struct dun_stmt *st, int col)
{
	const char *t = dun_stmt_col_text(st, col);
	return json_string(t ? (const char *)t : "");
}

/*
 * Whether the database can take writes: the disk that holds it has room,
 * and a small write commits. Both, because a write can still succeed on a
 * full disk (SQLite reuses its WAL file's space) right up to the moment the
 * next webhook needs a page more. why says what is wrong.
 */
static bool db_writable(struct dun_service *svc, struct dun_db *db, char *why, size_t why_size)
{
	char dir[DUN_CONFIG_STR];
	dun_strlcpy(dir, svc->cfg.db_path, sizeof dir);
	char *slash = strrchr(dir, '/');
	if (!slash)
		dun_strlcpy(dir, ".", sizeof dir);
	else if (slash == dir)
		dir[1] = '\0';
	else
		*slash = '\0';
	struct statvfs vfs;
	if (statvfs(dir, &vfs) == 0) {
		uint64_t free_bytes = (uint64_t)vfs.f_bavail * vfs.f_frsize;
		if (free_bytes < READY_FREE_BYTES_MIN) {
			snprintf(why, why_size,
				 "disk full: %llu bytes free for the database (less than %d)",
				 (unsigned long long)free_bytes, READY_FREE_BYTES_MIN);
			return false;
		}
	}
	char now[24];
	snprintf(now, sizeof now, "%lld", (long long)dun_clock_mono_ms());
	enum dun_err e = dun_db_setting_set(db, "readyz.write_probe", now);
	if (e != DUN_OK) {
		snprintf(why, why_size, "cannot write: %s", dun_err_str(e));
		return false;
	}
	return true;
}

static void job_readyz(struct admin_job *job, struct dun_engine_ctx *ctx)
{
	struct dun_service *svc = job->svc;
	struct dun_stmt *st =
	    dun_db_stmt(ctx->db, "SELECT COUNT(*) FROM inbox WHERE state = 'dead'");
	int rc = dun_stmt_step(st);
	bool db_ok = rc == DUN_STEP_ROW;
	int64_t dead = db_ok ? dun_stmt_col_int64(st, 0) : 0;
	dun_stmt_reset(st);
	char db_state[256];
	dun_strlcpy(db_state, db_ok ? "ok" : dun_db_errmsg(ctx->db), sizeof db_state);
	if (db_ok)
		db_ok = db_writable(svc, ctx->db, db_state, sizeof db_state);
	int running = dun_workers_running(svc->workers);
	bool committer = dun_committer_running(svc->committer);
	bool ready = db_ok && running == svc->cfg.workers && committer;
	char reason[320] = "";
	if (!db_ok)
		snprintf(reason, sizeof reason, "database: %s", db_state);
	else if (running != svc->cfg.workers)
		snprintf(reason, sizeof reason, "%d of %d workers running", running,
			 svc->cfg.workers);
	else if (!committer)
		snprintf(reason, sizeof reason, "the webhook committer is stopped");
	json_t *o = json_pack("{s:b, s:s, s:i, s:i, s:s, s:I}", "ready", ready, "database",
			      db_state, "workers_running", running, "workers_configured",
			      svc->cfg.workers, "committer", committer ? "running" : "stopped",
			      "dead_triggers", (json_int_t)dead);
	if (!ready) {
		json_object_set_new(o, "reason", json_string(reason));
		dun_http_log(job->req, "reason", reason);
	}
	dun_http_reply_json(job->req, ready ? 200 : 503, o);
}

static int64_t scalar(struct dun_db *db, const char *sql, int64_t arg)
{
	struct dun_stmt *st = dun_db_stmt(db, sql);
	if (dun_stmt_param_count(st) >= 1)
		dun_stmt_bind_int64(st, 1, arg);
	int64_t v = dun_stmt_row(st) ? dun_stmt_col_int64(st, 0) : 0;
	dun_stmt_reset(st);
	return v;
}

/*
 * Accounts with a payment in flight (an open invoice with a processing
 * attempt: the in-flight guard holds their stage), by how long the oldest
 * has been in flight; and how many are past [guard] processing_max, where
 * the payment counts as failed and the hold has ended (docs/policy.md).
 */
static void held_gauge(FILE *f, struct dun_db *db, const struct dun_policy *policy, int64_t now)
{
	static const struct {
		const char *label;
		int64_t below_s;
	} buckets[] = {{"lt_1h", 3600},
		       {"1h_1d", 86400},
		       {"1d_3d", 3 * 86400},
		       {"3d_7d", 7 * 86400},
		       {"ge_7d", INT64_MAX}};
	enum { N_BUCKETS = sizeof buckets / sizeof buckets[0] };
	int64_t count[N_BUCKETS] = {0};
	int64_t past_max = 0;
	struct dun_stmt *st = dun_db_stmt(
	    db, "SELECT MIN(a.created) FROM p_attempts a JOIN p_invoices i ON i.id = a.invoice_id"
		" JOIN customers c ON c.id = i.customer_id WHERE a.status = 'processing'"
		" AND i.status = 'open' GROUP BY c.account_id");
	while (dun_stmt_row(st)) {
		int64_t age = now - dun_stmt_col_int64(st, 0);
		if (age < 0)
			age = 0;
		for (int i = 0; i < N_BUCKETS; i++)
			if (age < buckets[i].below_s) {
				count[i]++;
				break;
			}
		if (policy->processing_max_s > 0 && age >= policy->processing_max_s)
			past_max++;
	}
	dun_stmt_reset(st);
	fprintf(f, "# HELP dunning_accounts_payment_processing Accounts with a payment in flight "
		   "(the stage is held), by how long the oldest has been in flight.\n"
		   "# TYPE dunning_accounts_payment_processing gauge\n");
	for (int i = 0; i < N_BUCKETS; i++)
		fprintf(f, "dunning_accounts_payment_processing{age=\"%s\"} %lld\n",
			buckets[i].label, (long long)count[i]);
	fprintf(f,
		"# HELP dunning_accounts_payment_processing_past_max Accounts whose payment has "
		"been in flight longer than [guard] processing_max: counted as failed, no longer "
		"held.\n"
		"# TYPE dunning_accounts_payment_processing_past_max gauge\n"
		"dunning_accounts_payment_processing_past_max %lld\n",
		(long long)past_max);
}

/*
 * The state of the accounts themselves, read per scrape: how many are in
 * each stage, how many are lifting, how many are stuck lifting (their
 * window closed and no recompute cleared it — the seeds' "stuck-in-lifting"
 * gauge), and how many bad-debt episodes are open.
 */
static void account_gauges(FILE *f, struct dun_db *db, const struct dun_policy *policy)
{
	int64_t per_stage[DUN_STAGE__COUNT] = {0};
	struct dun_stmt *st = dun_db_stmt(db, "SELECT stage, COUNT(*) FROM dunning GROUP BY stage");
	while (dun_stmt_row(st)) {
		enum dun_stage stage;
		if (dun_stage_parse(dun_stmt_col_text(st, 0), &stage))
			per_stage[stage] += dun_stmt_col_int64(st, 1);
	}
	dun_stmt_reset(st);
	fprintf(f, "# HELP dunning_accounts Accounts by recorded dunning stage (accounts never "
		   "in dunning are not counted).\n"
		   "# TYPE dunning_accounts gauge\n");
	for (int i = 0; i < DUN_STAGE__COUNT; i++)
		fprintf(f, "dunning_accounts{stage=\"%s\"} %lld\n",
			dun_stage_name((enum dun_stage)i), (long long)per_stage[i]);
	int64_t now = dun_clock_now();
	fprintf(
	    f,
	    "# HELP dunning_accounts_lifting Accounts inside the in-flight guard's lifting "
	    "window.\n"
	    "# TYPE dunning_accounts_lifting gauge\n"
	    "dunning_accounts_lifting %lld\n"
	    "# HELP dunning_accounts_stuck_lifting Accounts whose lifting window closed "
	    "without a recompute clearing it.\n"
	    "# TYPE dunning_accounts_stuck_lifting gauge\n"
	    "dunning_accounts_stuck_lifting %lld\n"
	    "# HELP dunning_bad_debt_episodes_open Bad-debt episodes not yet exited.\n"
	    "# TYPE dunning_bad_debt_episodes_open gauge\n"
	    "dunning_bad_debt_episodes_open %lld\n",
	    (long long)scalar(db, "SELECT COUNT(*) FROM dunning WHERE lifting_since > 0", 0),
	    (long long)scalar(db,
			      "SELECT COUNT(*) FROM dunning WHERE lifting_since > 0"
			      " AND lifting_since < ?1",
			      now - policy->lifting_window_s),
	    (long long)scalar(db, "SELECT COUNT(*) FROM bad_debt_episodes WHERE exited_at = 0", 0));
	held_gauge(f, db, policy, now);
}

static void job_metrics(struct admin_job *job, struct dun_engine_ctx *ctx)
{
	struct dun_service *svc = job->svc;
	struct dun_inbox_counts counts;
	bool ok = dun_inbox_counts(ctx->db, &counts) == DUN_OK;
	char *text = dun_metrics_render(&svc->metrics, ok ? &counts : NULL,
					dun_workers_running(svc->workers), svc->cfg.workers,
					svc->senders_started ? &svc->senders : NULL);
	char *all = NULL;
	size_t len = 0;
	FILE *f = open_memstream(&all, &len);
	if (!f)
		dun_oom();
	fputs(text, f);
	if (ok)
		account_gauges(f, ctx->db, &svc->policy);
	/* The figures the database holds (docs/operations.md, Metrics). */
	enum dun_err de =
	    ok ? dun_metrics_db_render(f, ctx->db, &svc->policy,
				       svc->cfg.metrics_account_series_limit, dun_clock_now())
	       : DUN_E_STORE;
	fprintf(f,
		"# HELP dunning_metrics_database_ok Whether every database figure could be read "
		"for this scrape.\n"
		"# TYPE dunning_metrics_database_ok gauge\n"
		"dunning_metrics_database_ok %d\n",
		de == DUN_OK ? 1 : 0);
	fclose(f);
	free(text);
	dun_http_reply(job->req, 200, "text/plain; version=0.0.4; charset=utf-8", all, len);
}

static void job_account(struct admin_job *job, struct dun_engine_ctx *ctx)
{
	json_t *o = NULL;
	enum dun_err e = dun_explain_json(&ctx->engine, job->account, dun_clock_now(), &o);
	if (e == DUN_OK)
		dun_http_reply_json(job->req, 200, o);
	else if (e == DUN_E_NOT_FOUND)
		dun_http_reply_error(job->req, 404, "account_not_found", "no account \"%s\"",
				     job->account);
	else
		dun_http_reply_error(job->req, 500, "internal", "cannot explain %s: %s",
				     job->account, dun_err_str(e));
}

static void job_pay(struct admin_job *job, struct dun_engine_ctx *ctx)
{
	json_t *inv = NULL;
	char err[512] = "";
	enum dun_err e =
	    dun_pay_bad_debt(&ctx->engine, job->account, dun_clock_now(), &inv, err, sizeof err);
	switch (e) {
	case DUN_OK:
		/* The simulated provider's events for the new invoice, as Stripe would send them. */
		dun_shared_provider_deliver(job->svc->provider, NULL);
		dun_http_reply_json(job->req, 200, inv);
		return;
	case DUN_E_GUARD:
		dun_http_reply_error(job->req, 409, "guard", "%s", err);
		return;
	case DUN_E_NOT_FOUND:
		dun_http_reply_error(job->req, 404, "account_not_found", "%s", err);
		return;
	case DUN_E_PROVIDER:
	case DUN_E_PROVIDER_REJECTED:
	case DUN_E_TIMEOUT:
		dun_http_reply_error(job->req, 502, "provider_error", "%s", err);
		return;
	case DUN_E_INVALID:
	case DUN_E_TOO_BIG:
	case DUN_E_PARSE:
	case DUN_E_CONFIG:
	case DUN_E_STORE:
	case DUN_E_BUSY:
	case DUN_E_SCHEMA:
	case DUN_E_IO:
	case DUN_E_PLATFORM:
	case DUN_E_EMAIL:
	case DUN_E_CONFLICT:
	case DUN_E_SIGNATURE:
	case DUN_E_CORRUPT:
	case DUN_E_UNSUPPORTED:
	case DUN_E_UNAVAILABLE:
	case DUN_E_FENCED:
	case DUN_E_INCOMPLETE:
		break;
	}
	dun_http_reply_error(job->req, dun_err_is_retryable(e) ? 503 : 500, "internal", "%s",
			     err[0] ? err : dun_err_str(e));
}

static void job_events(struct admin_job *job, struct dun_engine_ctx *ctx)
{
	struct dun_inbox_counts c;
	if (dun_inbox_counts(ctx->db, &c) != DUN_OK) {
		dun_http_reply_error(job->req, 503, "store_unavailable", "cannot read the inbox");
		return;
	}
	struct dun_stmt *st = dun_db_stmt(
	    ctx->db, "SELECT id, account_id, kind, source, event_id, state, attempts, last_error,"
		     " not_before, created_at, updated_at FROM inbox"
		     " WHERE (?1 IS NULL OR state = ?1) AND (?2 IS NULL OR account_id = ?2)"
		     " ORDER BY id DESC LIMIT ?3");
	dun_stmt_bind_text_copy(st, 1, job->state[0] ? job->state : NULL);
	dun_stmt_bind_text_copy(st, 2, job->account[0] ? job->account : NULL);
	dun_stmt_bind_int64(st, 3, job->limit);
	json_t *arr = json_array();
	while (dun_stmt_row(st)) {
		json_t *row = json_object();
		json_object_set_new(row, "id", json_integer(dun_stmt_col_int64(st, 0)));
		json_object_set_new(row, "account_id", str_or_empty(st, 1));
		json_object_set_new(row, "kind", str_or_empty(st, 2));
		json_object_set_new(row, "source", str_or_empty(st, 3));
		json_object_set_new(row, "event_id", str_or_empty(st, 4));
		json_object_set_new(row, "state", str_or_empty(st, 5));
		json_object_set_new(row, "attempts", json_integer(dun_stmt_col_int64(st, 6)));
		json_object_set_new(row, "last_error", str_or_empty(st, 7));
		json_object_set_new(row, "not_before", json_integer(dun_stmt_col_int64(st, 8)));
		json_object_set_new(row, "created_at", json_integer(dun_stmt_col_int64(st, 9)));
		json_object_set_new(row, "updated_at", json_integer(dun_stmt_col_int64(st, 10)));
		json_array_append_new(arr, row);
	}
	dun_stmt_reset(st);
	dun_http_reply_json(job->req, 200,
			    json_pack("{s:{s:I, s:I, s:I, s:I, s:I}, s:o}", "counts", "received",
				      (json_int_t)c.received, "processing",
				      (json_int_t)c.processing, "done", (json_int_t)c.done,
				      "retrying", (json_int_t)c.retrying, "dead",
				      (json_int_t)c.dead, "events", arr));
}

static void job_retry(struct admin_job *job, struct dun_engine_ctx *ctx)
{
	struct dun_stmt *st = dun_db_stmt(ctx->db, "SELECT state FROM inbox WHERE id = ?1");
	dun_stmt_bind_int64(st, 1, job->id);
	char state[16] = "";
	bool found = dun_stmt_row(st);
	if (found)
		dun_stmt_col_copy(st, 0, state, sizeof state);
	dun_stmt_reset(st);
	if (!found) {
		dun_http_reply_error(job->req, 404, "trigger_not_found",
				     "no trigger %lld in the inbox", (long long)job->id);
		return;
	}
	int n = 0;
	enum dun_err e = DUN_OK;
	if (!strcmp(state, "dead") || !strcmp(state, "retrying"))
		e = dun_inbox_requeue(ctx->db, job->id, dun_clock_now(), &n);
	if (e != DUN_OK) {
		dun_http_reply_error(job->req, 503, "store_unavailable", "cannot requeue: %s",
				     dun_err_str(e));
		return;
	}
	if (n == 0) {
		dun_http_reply_error(job->req, 409, "not_retryable",
				     "trigger %lld is %s; only dead or retrying triggers can be "
				     "retried",
				     (long long)job->id, state);
		return;
	}
	dun_workers_wake(job->svc->workers);
	dun_http_reply_json(job->req, 200,
			    json_pack("{s:I, s:s, s:s}", "id", (json_int_t)job->id,
				      "previous_state", state, "state", "received"));
}

/* The settled result of a support recompute, read on the answering thread's connection. */
static json_t *settled_json(struct dun_db *db, const struct admin_job *job, const char *state)
{
	json_t *o = json_pack("{s:s, s:I, s:s}", "account_id", job->account, "trigger_id",
			      (json_int_t)job->trigger_id, "state", state);
	struct dun_stmt *st =
	    dun_db_stmt(db, "SELECT attempts, last_error FROM inbox WHERE id = ?1");
	dun_stmt_bind_int64(st, 1, job->trigger_id);
	if (dun_stmt_row(st)) {
		json_object_set_new(o, "attempts", json_integer(dun_stmt_col_int64(st, 0)));
		json_object_set_new(o, "last_error", str_or_empty(st, 1));
	}
	dun_stmt_reset(st);
	st = dun_db_stmt(db, "SELECT id, trigger_kind, at, mode, stage_from, stage_to, held,"
			     " skipped, n_planned, n_applied, outcome, error FROM decisions"
			     " WHERE account_id = ?1 ORDER BY id DESC LIMIT 1");
	dun_stmt_bind_text(st, 1, job->account);
	if (dun_stmt_row(st)) {
		json_t *d = json_object();
		json_object_set_new(d, "id", json_integer(dun_stmt_col_int64(st, 0)));
		json_object_set_new(d, "trigger_kind", str_or_empty(st, 1));
		json_object_set_new(d, "at", json_integer(dun_stmt_col_int64(st, 2)));
		json_object_set_new(d, "mode", str_or_empty(st, 3));
		json_object_set_new(d, "stage_from", str_or_empty(st, 4));
		json_object_set_new(d, "stage_to", str_or_empty(st, 5));
		json_object_set_new(d, "held", json_boolean(dun_stmt_col_int(st, 6)));
		json_object_set_new(d, "skipped", json_boolean(dun_stmt_col_int(st, 7)));
		json_object_set_new(d, "n_planned", json_integer(dun_stmt_col_int64(st, 8)));
		json_object_set_new(d, "n_applied", json_integer(dun_stmt_col_int64(st, 9)));
		json_object_set_new(d, "outcome", str_or_empty(st, 10));
		json_object_set_new(d, "error", str_or_empty(st, 11));
		json_object_set_new(o, "decision", d);
	}
	dun_stmt_reset(st);
	return o;
}

/* Answer a parked wait that has not settled (yet); the caller unlinked it. */
static void answer_pending(struct admin_job *job, const char *why)
{
	char waited[24];
	snprintf(waited, sizeof waited, "%lld", (long long)(dun_clock_mono_ms() - job->started_ms));
	json_t *o = json_pack("{s:s, s:I, s:s, s:I, s:s}", "account_id", job->account, "trigger_id",
			      (json_int_t)job->trigger_id, "state", "pending", "waited_ms",
			      (json_int_t)(dun_clock_mono_ms() - job->started_ms), "message", why);
	dun_http_log(job->req, "waited_ms", waited);
	dun_http_reply_json(job->req, 202, o);
	dun_http_resume(job->req);
}

static void job_recompute(struct admin_job *job, struct dun_engine_ctx *ctx)
{
	struct dun_service *svc = job->svc;
	struct dun_stmt *st = dun_db_stmt(ctx->db, "SELECT 1 FROM accounts WHERE id = ?1");
	dun_stmt_bind_text(st, 1, job->account);
	bool exists = dun_stmt_row(st);
	dun_stmt_reset(st);
	if (!exists) {
		dun_http_reply_error(job->req, 404, "account_not_found", "no account \"%s\"",
				     job->account);
		dun_http_resume(job->req);
		return;
	}
	/*
	 * Enqueue and park under the lock: the worker that settles this
	 * account takes the same lock before it looks for waiters, so it
	 * cannot finish unseen between the two.
	 */
	struct dun_admin *a = svc->admin;
	pthread_mutex_lock(&a->mu);
	bool inserted = false;
	enum dun_err e = dun_inbox_enqueue(ctx->db, job->account, "support_recompute", "admin", "",
					   NULL, 0, &inserted, &job->trigger_id);
	if (e != DUN_OK) {
		pthread_mutex_unlock(&a->mu);
		dun_http_reply_error(job->req, 503, "store_unavailable",
				     "cannot enqueue the recompute: %s", dun_err_str(e));
		dun_http_resume(job->req);
		return;
	}
	char tid[24];
	snprintf(tid, sizeof tid, "%lld", (long long)job->trigger_id);
	dun_http_log(job->req, "trigger_id", tid);
	if (job->wait_ms == 0) {
		pthread_mutex_unlock(&a->mu);
		dun_workers_wake(svc->workers);
		dun_http_reply_json(job->req, 202,
				    json_pack("{s:s, s:I, s:s}", "account_id", job->account,
					      "trigger_id", (json_int_t)job->trigger_id, "state",
					      "received"));
		dun_http_resume(job->req);
		return;
	}
	job->deadline_ms = job->started_ms + job->wait_ms;
	job->next_waiter = a->waiters;
	a->waiters = job;
	pthread_mutex_unlock(&a->mu);
	dun_workers_wake(svc->workers);
}

static void run_job(struct dun_lane_job *lj, struct dun_engine_ctx *ctx)
{
	struct admin_job *job = (struct admin_job *)lj;
	switch (job->kind) {
	case JOB_READYZ:
		job_readyz(job, ctx);
		break;
	case JOB_METRICS:
		job_metrics(job, ctx);
		break;
	case JOB_ACCOUNT:
		job_account(job, ctx);
		break;
	case JOB_PAY:
		job_pay(job, ctx);
		break;
	case JOB_EVENTS:
		job_events(job, ctx);
		break;
	case JOB_RETRY:
		job_retry(job, ctx);
		break;
	case JOB_RECOMPUTE:
		job_recompute(job, ctx); /* answers (and resumes) by itself, now or later */
		return;
	}
	dun_http_resume(job->req); /* last touch */
}

/* ---- waits ------------------------------------------------------------------------ */

void dun_admin_settled(void *arg, struct dun_db *db, const char *account_id)
{
	struct dun_admin *a = arg;
	pthread_mutex_lock(&a->mu);
	struct admin_job **pp = &a->waiters;
	while (*pp) {
		struct admin_job *job = *pp;
		if (strcmp(job->account, account_id) != 0) {
			pp = &job->next_waiter;
			continue;
		}
		struct dun_stmt *st = dun_db_stmt(db, "SELECT state FROM inbox WHERE id = ?1");
		dun_stmt_bind_int64(st, 1, job->trigger_id);
		char state[16] = "";
		if (dun_stmt_row(st))
			dun_stmt_col_copy(st, 0, state, sizeof state);
		dun_stmt_reset(st);
		/* Enqueued after this claim: the next pass of the account answers it. */
		if (!strcmp(state, "received") || !strcmp(state, "processing")) {
			pp = &job->next_waiter;
			continue;
		}
		*pp = job->next_waiter;
		dun_http_reply_json(job->req, 200,
				    settled_json(db, job, state[0] ? state : "gone"));
		dun_http_resume(job->req);
	}
	pthread_mutex_unlock(&a->mu);
}

void dun_admin_expire(struct dun_admin *a)
{
	int64_t now = dun_clock_mono_ms();
	pthread_mutex_lock(&a->mu);
	struct admin_job **pp = &a->waiters;
	while (*pp) {
		struct admin_job *job = *pp;
		if (job->deadline_ms > now) {
			pp = &job->next_waiter;
			continue;
		}
		*pp = job->next_waiter;
		answer_pending(job, "the recompute has not finished yet; it stays queued, and GET "
				    "/accounts/{id} shows its result when it has");
	}
	pthread_mutex_unlock(&a->mu);
}

void dun_admin_release_all(struct dun_admin *a)
{
	pthread_mutex_lock(&a->mu);
	while (a->waiters) {
		struct admin_job *job = a->waiters;
		a->waiters = job->next_waiter;
		answer_pending(job, "the service is stopping; the recompute stays queued and runs "
				    "when it is back");
	}
	pthread_mutex_unlock(&a->mu);
}

/* ---- handlers (on HTTP threads: validate, then hand over) ------------------------- */

void dun_admin_healthz(void *arg, struct dun_http_request *req)
{
	if (!admit(arg, req, false))
		return;
	dun_http_reply_json(req, 200, json_pack("{s:s}", "status", "ok"));
}

void dun_admin_readyz(void *arg, struct dun_http_request *req)
{
	if (admit(arg, req, false))
		submit(arg, req, dun_calloc(1, sizeof(struct admin_job)), JOB_READYZ);
}

void dun_admin_metrics(void *arg, struct dun_http_request *req)
{
	if (admit(arg, req, false))
		submit(arg, req, dun_calloc(1, sizeof(struct admin_job)), JOB_METRICS);
}

void dun_admin_account(void *arg, struct dun_http_request *req)
{
	struct admin_job tmp;
	if (!admit(arg, req, true) || !account_param(req, tmp.account))
		return;
	struct admin_job *job = dun_calloc(1, sizeof *job);
	memcpy(job->account, tmp.account, sizeof job->account);
	submit(arg, req, job, JOB_ACCOUNT);
}

void dun_admin_pay_bad_debt(void *arg, struct dun_http_request *req)
{
	struct admin_job tmp;
	if (!admit(arg, req, true) || !account_param(req, tmp.account))
		return;
	struct admin_job *job = dun_calloc(1, sizeof *job);
	memcpy(job->account, tmp.account, sizeof job->account);
	submit(arg, req, job, JOB_PAY);
}

void dun_admin_recompute(void *arg, struct dun_http_request *req)
{
	struct admin_job tmp;
	int64_t wait_s;
	if (!admit(arg, req, true) || !account_param(req, tmp.account) ||
	    !query_int(req, "wait", WAIT_DEFAULT_S, 0, WAIT_MAX_S, &wait_s))
		return;
	struct admin_job *job = dun_calloc(1, sizeof *job);
	memcpy(job->account, tmp.account, sizeof job->account);
	job->wait_ms = wait_s * 1000;
	job->started_ms = dun_clock_mono_ms();
	submit(arg, req, job, JOB_RECOMPUTE);
}

void dun_admin_events(void *arg, struct dun_http_request *req)
{
	if (!admit(arg, req, true))
		return;
	const char *state = dun_http_query(req, "state");
	const char *account = dun_http_query(req, "account");
	int64_t limit;
	if (state && strcmp(state, "received") && strcmp(state, "processing") &&
	    strcmp(state, "done") && strcmp(state, "retrying") && strcmp(state, "dead")) {
		dun_http_reply_error(req, 400, "invalid_parameter",
				     "state: received, processing, done, retrying or dead, not "
				     "\"%s\"",
				     state);
		return;
	}
	if (account && strlen(account) >= DUN_ID_MAX) {
		dun_http_reply_error(req, 400, "invalid_parameter",
				     "account: at most %d characters", DUN_ID_MAX - 1);
		return;
	}
	if (!query_int(req, "limit", EVENTS_LIMIT_DEFAULT, 1, EVENTS_LIMIT_MAX, &limit))
		return;
	struct admin_job *job = dun_calloc(1, sizeof *job);
	dun_strlcpy(job->state, state ? state : "", sizeof job->state);
	dun_strlcpy(job->account, account ? account : "", sizeof job->account);
	job->limit = limit;
	submit(arg, req, job, JOB_EVENTS);
}

void dun_admin_retry(void *arg, struct dun_http_request *req)
{
	if (!admit(arg, req, true))
		return;
	const char *s = dun_http_param(req, 0);
	char *end;
	errno = 0;
	long long id = strtoll(s, &end, 10);
	if (errno || end == s || *end || id <= 0) {
		dun_http_reply_error(req, 404, "trigger_not_found",
				     "\"%s\" is not an inbox id (a positive whole number)", s);
		return;
	}
	struct admin_job *job = dun_calloc(1, sizeof *job);
	job->id = id;
	submit(arg, req, job, JOB_RETRY);
}
