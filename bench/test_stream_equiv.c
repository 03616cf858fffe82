/*
 * test_stream_equiv.c — the streaming GATHER (gather/stream.h) against the
 * per-account one (gather/gather.h), account by account.
 *
 * On a small generated database with the edge mix (bench/gen.h: several
 * customers per account, orphan rows, unknown names, over-long texts, empty
 * and over-full consolidated lists, ties between attempts, documents in any
 * state, emails in every state...) it checks that:
 *   - the stream returns every account once, in id order, also when it is
 *     paused every few accounts;
 *   - each streamed snapshot equals dun_gather()'s field by field (also
 *     with attempts the stream's merge must pass over or order: of another
 *     customer's invoices, of missing invoices, with equal times), and the
 *     desired state, reasons, plan and drift classes computed from the two
 *     are identical;
 *   - dun_scan_run() (streaming) counts exactly what the per-account scan it
 *     replaced counts, and queues one trigger per drifting account;
 *   - on the plain benchmark mix, the scan finds exactly the drift the
 *     generator planted;
 *   - SQLite runs every ordered read without sorting (a sort would hold the
 *     whole table in memory on a large store).
 */
#include "check.h"
#include "gen.h"
#include "pointwise.h"

#include "apply/local.h"
#include "apply/recompute.h"
#include "gather/stream.h"
#include "inbox/scan.h"
#include "provider/sim.h"

#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define NOW	    1772366400
#define MAX_REPORTS 20

static int reports;

/* Name the account once when a comparison of it failed. */
static void report(const char *account, int failed_before)
{
	if (check_failed > failed_before && reports++ < MAX_REPORTS)
		fprintf(stderr, "  ^ account %s\n", account);
}

static int cmp_key(const void *a, const void *b)
{
	return strcmp(((const struct dun_sent_email *)a)->key,
		      ((const struct dun_sent_email *)b)->key);
}

static void check_invoice(const struct dun_invoice *a, const struct dun_invoice *b)
{
	CHECK_STR(a->id, b->id);
	CHECK_STR(a->subscription_id, b->subscription_id);
	CHECK_INT(a->status, b->status);
	CHECK_INT(a->billing_reason, b->billing_reason);
	CHECK_INT(a->amount_due_minor, b->amount_due_minor);
	CHECK_INT(a->amount_paid_minor, b->amount_paid_minor);
	CHECK_INT(a->amount_remaining_minor, b->amount_remaining_minor);
	CHECK_STR(a->currency, b->currency);
	CHECK_INT(a->attempt_count, b->attempt_count);
	CHECK_INT(a->created_at, b->created_at);
	CHECK_INT(a->paid_at, b->paid_at);
	CHECK_STR(a->hosted_invoice_url, b->hosted_invoice_url);
	CHECK_INT(a->meta_has_bad_debt_amount, b->meta_has_bad_debt_amount);
	CHECK_INT(a->meta_bad_debt_amount_minor, b->meta_bad_debt_amount_minor);
	CHECK_INT(a->meta_bad_debt_paid, b->meta_bad_debt_paid);
	CHECK_INT(a->is_consolidated, b->is_consolidated);
	CHECK_INT(a->n_covers, b->n_covers);
	for (int k = 0; k < a->n_covers && k < b->n_covers; k++)
		CHECK_STR(a->covers[k], b->covers[k]);
	CHECK_INT(a->has_doc, b->has_doc);
	CHECK_INT(a->doc_closed, b->doc_closed);
	CHECK_INT(a->doc_paylinks_enabled, b->doc_paylinks_enabled);
	CHECK_INT(a->n_attempts, b->n_attempts);
	CHECK_INT(a->attempts == NULL, b->attempts == NULL);
	for (int k = 0; k < a->n_attempts && k < b->n_attempts; k++) {
		const struct dun_attempt *x = &a->attempts[k], *y = &b->attempts[k];
		CHECK_STR(x->id, y->id);
		CHECK_INT(x->created_at, y->created_at);
		CHECK_INT(x->status, y->status);
		CHECK_STR(x->payment_method, y->payment_method);
		CHECK_STR(x->decline_code, y->decline_code);
		CHECK_STR(x->advice_code, y->advice_code);
		CHECK_STR(x->network_advice_code, y->network_advice_code);
		/* Fields added later are caught here. */
		CHECK(memcmp(x, y, sizeof *x) == 0);
	}
	/*
	 * Whole-struct comparison, for fields added later: the covers' bytes
	 * past each id's end and past n_covers, and the pointers, aside.
	 */
	static struct dun_invoice ca, cb;
	ca = *a;
	cb = *b;
	memset(ca.covers, 0, sizeof ca.covers);
	memset(cb.covers, 0, sizeof cb.covers);
	for (int k = 0; k < a->n_covers; k++)
		strcpy(ca.covers[k], a->covers[k]);
	for (int k = 0; k < b->n_covers; k++)
		strcpy(cb.covers[k], b->covers[k]);
	ca.attempts = cb.attempts = NULL;
	CHECK(memcmp(&ca, &cb, sizeof ca) == 0);
}

/* a: streamed, b: gathered. */
static void check_snapshot(struct dun_snapshot *a, struct dun_snapshot *b)
{
	const struct dun_state *x = &a->state, *y = &b->state;
	CHECK_STR(x->account_id, y->account_id);
	CHECK_INT(x->segment, y->segment);
	CHECK_INT(x->kill_switch, y->kill_switch);
	CHECK_INT(x->account_bad_debt, y->account_bad_debt);
	CHECK_INT(x->no_successful_payment, y->no_successful_payment);
	CHECK_INT(x->has_customer, y->has_customer);
	CHECK_STR(x->customer_id, y->customer_id);
	CHECK_INT(x->customer_bad_debt, y->customer_bad_debt);
	CHECK_INT(x->provider_meta_bad_debt, y->provider_meta_bad_debt);
	CHECK_STR(x->default_payment_method, y->default_payment_method);
	CHECK_INT(x->banned, y->banned);
	CHECK_INT(x->entitlement, y->entitlement);
	CHECK_INT(x->has_resource_flags, y->has_resource_flags);
	CHECK_INT(x->stage, y->stage);
	CHECK_INT(x->stage_since, y->stage_since);
	CHECK_INT(x->episode, y->episode);
	CHECK_INT(x->lifting_since, y->lifting_since);
	CHECK_INT(x->next_recheck_at, y->next_recheck_at);
	CHECK_INT(x->bad_debt_episodes, y->bad_debt_episodes);
	CHECK_INT(x->bad_debt_episode_open, y->bad_debt_episode_open);
	CHECK_STR(a->email, b->email);
	CHECK_STR(a->name, b->name);
	CHECK_INT(x->n_subscriptions, y->n_subscriptions);
	for (int i = 0; i < x->n_subscriptions && i < y->n_subscriptions; i++) {
		CHECK_STR(x->subscriptions[i].id, y->subscriptions[i].id);
		CHECK_INT(x->subscriptions[i].status, y->subscriptions[i].status);
	}
	CHECK_INT(x->n_invoices, y->n_invoices);
	for (int i = 0; i < x->n_invoices && i < y->n_invoices; i++)
		check_invoice(&x->invoices[i], &y->invoices[i]);
	/* The email log is a set of keys: the order is not part of the contract. */
	CHECK_INT(x->n_sent_emails, y->n_sent_emails);
	if (x->n_sent_emails == y->n_sent_emails && x->n_sent_emails > 0) {
		qsort(a->emails, (size_t)x->n_sent_emails, sizeof *a->emails, cmp_key);
		qsort(b->emails, (size_t)y->n_sent_emails, sizeof *b->emails, cmp_key);
		for (int i = 0; i < x->n_sent_emails; i++)
			CHECK_STR(x->sent_emails[i].key, y->sent_emails[i].key);
	}
	/* Scalar fields added to the state later are caught here. */
	struct dun_state cx = *x, cy = *y;
	cx.subscriptions = cy.subscriptions = NULL;
	cx.invoices = cy.invoices = NULL;
	cx.sent_emails = cy.sent_emails = NULL;
	CHECK(memcmp(&cx, &cy, sizeof cx) == 0);
}

/* a: from the streamed snapshot, b: from the gathered one. */
static void check_decision(const struct dun_engine *a, const struct dun_engine *b, unsigned drift_a,
			   unsigned drift_b)
{
	CHECK_INT(drift_a, drift_b);
	struct dun_desired da = a->desired, db = b->desired;
	da.invoices = db.invoices = NULL;
	da.reasons = db.reasons = NULL;
	CHECK(memcmp(&da, &db, sizeof da) == 0);
	CHECK_INT(a->desired.stage, b->desired.stage);
	int n = a->snap.state.n_invoices;
	if (n == b->snap.state.n_invoices && n > 0)
		CHECK(memcmp(a->desired.invoices, b->desired.invoices,
			     sizeof *a->desired.invoices * (size_t)n) == 0);
	CHECK_INT(a->desired.n_reasons, b->desired.n_reasons);
	for (int i = 0; i < a->desired.n_reasons && i < b->desired.n_reasons; i++) {
		CHECK_STR(a->desired.reasons[i].rule, b->desired.reasons[i].rule);
		CHECK_STR(a->desired.reasons[i].text, b->desired.reasons[i].text);
	}
	CHECK_INT(a->plan.n, b->plan.n);
	for (int i = 0; i < a->plan.n && i < b->plan.n; i++) {
		char la[DUN_KEY_MAX + 64], lb[DUN_KEY_MAX + 64];
		dun_conseq_format(&a->plan.items[i], la, sizeof la);
		dun_conseq_format(&b->plan.items[i], lb, sizeof lb);
		CHECK_STR(la, lb);
		CHECK_STR(a->plan.items[i].key, b->plan.items[i].key);
		CHECK(memcmp(&a->plan.items[i], &b->plan.items[i], sizeof a->plan.items[i]) == 0);
	}
}

static int64_t scalar(struct dun_db *db, const char *sql)
{
	struct dun_stmt *st = NULL;
	int64_t v = -1;
	if (dun_db_prepare(db, sql, &st) == DUN_OK && dun_stmt_row(st))
		v = dun_stmt_col_int64(st, 0);
	dun_stmt_finalize(st);
	return v;
}

/* Every ordered read runs without a sort. */
static void check_plans(struct dun_db *db)
{
	for (int q = 0; q <= DUN_STREAM__COUNT; q++) {
		char sql[4096];
		snprintf(sql, sizeof sql, "EXPLAIN QUERY PLAN %s",
			 q < DUN_STREAM__COUNT ? dun_stream_sql(q) : dun_stream_range_sql());
		struct dun_stmt *st = NULL;
		CHECK_INT(dun_db_prepare(db, sql, &st), DUN_OK);
		bool sorts = false;
		while (st && dun_stmt_row(st)) {
			const char *detail = dun_stmt_col_text(st, 3);
			if (detail && strstr(detail, "TEMP B-TREE")) {
				fprintf(stderr, "stream query %d sorts: %s\n", q, detail);
				sorts = true;
			}
		}
		dun_stmt_finalize(st);
		CHECK(!sorts);
	}
}

/*
 * Attempts the stream must merge with care (it reads them apart from the
 * invoices, by (account, invoice id, created, id)), added to the edge mix:
 * on accounts with two customers, an invoice of the second customer whose id
 * falls between the first customer's, with attempts; attempts of invoices the
 * account does not have, before, between and after its invoices' ids, and one
 * whose invoice id is what a state keeps of an over-long id; attempts with
 * equal created times, written in the opposite order of their ids; and
 * documents of the second customer's invoice, of a missing one, of an
 * over-long id and of what a state keeps of it.
 */
static void add_odd_attempts(struct dun_db *db)
{
	static const char *const stmts[] = {
	    "CREATE TEMP TABLE odd AS SELECT c.account_id AS acct, MIN(c.id) AS cus1,"
	    " MAX(c.id) AS cus2, (SELECT MIN(i.id) FROM p_invoices i"
	    " WHERE i.account_id = c.account_id AND i.customer_id = MIN(c.id)) AS inv1"
	    " FROM customers c"
	    " JOIN accounts a ON a.id = c.account_id GROUP BY c.account_id"
	    " HAVING COUNT(*) = 2 AND inv1 IS NOT NULL ORDER BY c.account_id LIMIT 60",
	    /* The second customer's invoice, between the first one's. */
	    "INSERT INTO p_invoices(account_id, customer_id, id, status, currency, amount_due,"
	    " amount_remaining, created) SELECT acct, cus2, inv1 || '_x2', 'open', 'usd', 700,"
	    " 700, 1772000000 FROM odd",
	    "INSERT INTO p_attempts(account_id, invoice_id, created, id, status, decline_code)"
	    " SELECT acct, inv1 || '_x2', 1772000100, 'py_' || acct || '_x2b', 'failed',"
	    " 'do_not_honor' FROM odd",
	    "INSERT INTO p_attempts(account_id, invoice_id, created, id, status, decline_code)"
	    " SELECT acct, inv1 || '_x2', 1772000100, 'py_' || acct || '_x2a', 'failed',"
	    " 'generic_decline' FROM odd",
	    /* Invoices the account does not have: between, before, after. */
	    "INSERT INTO p_attempts(account_id, invoice_id, created, id, status)"
	    " SELECT acct, inv1 || '_gone', 1772000200, 'py_' || acct || '_g1', 'failed'"
	    " FROM odd",
	    "INSERT INTO p_attempts(account_id, invoice_id, created, id, status)"
	    " SELECT acct, 'in_', 1772000200, 'py_' || acct || '_g0', 'succeeded' FROM odd",
	    "INSERT INTO p_attempts(account_id, invoice_id, created, id, status)"
	    " SELECT acct, 'zz_gone', 1772000200, 'py_' || acct || '_g2', 'failed' FROM odd",
	    "INSERT INTO p_attempts(account_id, invoice_id, created, id, status)"
	    " SELECT acct, '', 1772000200, 'py_' || acct || '_g3', 'failed' FROM odd",
	    /* Ties on the first customer's first invoice, written in reverse. */
	    "INSERT INTO p_attempts(account_id, invoice_id, created, id, status, decline_code)"
	    " SELECT acct, inv1, 1772000300, 'py_' || acct || '_t2', 'failed', 'expired_card'"
	    " FROM odd",
	    "INSERT INTO p_attempts(account_id, invoice_id, created, id, status, decline_code)"
	    " SELECT acct, inv1, 1772000300, 'py_' || acct || '_t1', 'failed', 'lost_card'"
	    " FROM odd",
	    /* What a state keeps of an over-long invoice id, as an invoice of none. */
	    "INSERT INTO p_attempts(account_id, invoice_id, created, id, status)"
	    " SELECT account_id, substr(id, 1, 63), 1772000400, 'py_' || id || '_cut',"
	    " 'failed' FROM p_invoices WHERE length(id) >= 64 AND account_id <> ''",
	    /* Documents the stream merges the same way (schema migration 19). */
	    "INSERT OR IGNORE INTO invoice_docs(invoice_id, closed, paylinks_enabled, account_id)"
	    " SELECT inv1 || '_x2', 1, 0, acct FROM odd",
	    "INSERT OR IGNORE INTO invoice_docs(invoice_id, closed, paylinks_enabled, account_id)"
	    " SELECT inv1 || '_gone', 1, 0, acct FROM odd",
	    "INSERT OR IGNORE INTO invoice_docs(invoice_id, closed, paylinks_enabled, account_id)"
	    " SELECT id, 1, 0, account_id FROM p_invoices WHERE length(id) >= 64"
	    " AND account_id <> ''",
	    "INSERT OR IGNORE INTO invoice_docs(invoice_id, closed, paylinks_enabled, account_id)"
	    " SELECT substr(id, 1, 63), 0, 1, account_id FROM p_invoices WHERE length(id) >= 64"
	    " AND account_id <> ''",
	    "DROP TABLE odd",
	};
	for (size_t i = 0; i < sizeof stmts / sizeof stmts[0]; i++) {
		char err[256] = "";
		enum dun_err e = dun_db_exec(db, stmts[i], err, sizeof err);
		if (e != DUN_OK)
			fprintf(stderr, "odd attempts: %s\n", err);
		CHECK_INT(e, DUN_OK);
	}
	/* The cases are there: a vacuous test would pass too. */
	CHECK(scalar(db, "SELECT COUNT(*) FROM p_invoices WHERE id LIKE '%\\_x2' ESCAPE '\\'") >=
	      20);
	CHECK(scalar(db, "SELECT COUNT(*) FROM p_attempts WHERE id LIKE '%\\_cut' ESCAPE '\\'") >
	      0);
}

/* Both GATHERs over every account, and what the core makes of them. */
static void check_accounts(struct dun_db *db, struct dun_engine *streamed,
			   struct dun_engine *pointwise)
{
	struct dun_stream stream;
	char err[256] = "";
	if (dun_stream_init(&stream, db, err, sizeof err) != DUN_OK) {
		CHECK_FAIL_AT("dun_stream_init: %s", err);
		return;
	}
	int64_t n = 0;
	char prev[DUN_ID_MAX] = "";
	for (;;) {
		bool got = false;
		enum dun_err e = dun_stream_next(&stream, &streamed->snap, &got);
		CHECK_INT(e, DUN_OK);
		if (e != DUN_OK || !got)
			break;
		n++;
		/* Pausing at odd places must not lose or repeat an account. */
		if (n % 97 == 0 || n % 101 == 1)
			dun_stream_pause(&stream);
		const char *id = streamed->snap.state.account_id;
		int before = check_failed;
		CHECK(strcmp(prev, id) < 0);
		memcpy(prev, id, sizeof prev);
		CHECK_INT(dun_gather(db, id, &pointwise->snap), DUN_OK);
		check_snapshot(&streamed->snap, &pointwise->snap);
		CHECK_INT(dun_engine_decide(streamed, NOW), DUN_OK);
		CHECK_INT(dun_engine_decide(pointwise, NOW), DUN_OK);
		check_decision(streamed, pointwise,
			       dun_drift_classify(&streamed->snap.state, &streamed->desired),
			       dun_drift_classify(&pointwise->snap.state, &pointwise->desired));
		report(id, before);
	}
	dun_stream_free(&stream);
	CHECK_INT(n, scalar(db, "SELECT COUNT(*) FROM accounts"));
}

static void check_scan(struct dun_engine *en)
{
	struct dun_scan_result a, b;
	CHECK_INT(dun_scan_run(en, NOW, false, NULL, NULL, &a), DUN_OK);
	CHECK_INT(dun_bench_pointwise_scan(en, NOW, &b), DUN_OK);
	CHECK_INT(a.accounts, b.accounts);
	CHECK_INT(a.drifting, b.drifting);
	CHECK_INT(a.planned, b.planned);
	for (int c = 0; c < DUN_DRIFT__COUNT; c++)
		CHECK_INT(a.per_class[c], b.per_class[c]);
	CHECK(a.drifting > 0);
	CHECK_INT(json_array_size(a.examples), a.drifting < 20 ? a.drifting : 20);
	json_decref(a.examples);

	/* With enqueue: one trigger per drifting account, queued between windows. */
	CHECK_INT(dun_scan_run(en, NOW, true, NULL, NULL, &a), DUN_OK);
	CHECK_INT(a.drifting, b.drifting);
	CHECK_INT(a.enqueued, b.drifting);
	CHECK_INT(scalar(en->db, "SELECT COUNT(*) FROM inbox WHERE kind = 'drift_detected'"),
		  b.drifting);
	json_decref(a.examples);
	printf("edge mix: %lld accounts, %lld drifting, %lld planned\n", (long long)b.accounts,
	       (long long)b.drifting, (long long)b.planned);
}

static struct dun_db *generate(const char *path, int64_t accounts, bool edge,
			       struct dun_bench_gen_counts *counts)
{
	struct dun_bench_gen_config cfg = {
	    .path = path, .accounts = accounts, .now = NOW, .seed = 7, .edge = edge, .quiet = true};
	char err[512] = "";
	enum dun_err e = dun_bench_gen_run(&cfg, counts, err, sizeof err);
	if (e != DUN_OK) {
		fprintf(stderr, "generate %s: %s\n", path, err);
		return NULL;
	}
	struct dun_db *db = NULL;
	if (dun_db_open(path, &db, err, sizeof err) != DUN_OK)
		fprintf(stderr, "open %s: %s\n", path, err);
	return db;
}

static void engine(struct dun_engine *en, struct dun_db *db, const struct dun_policy *p,
		   struct dun_sim *sim)
{
	struct dun_renderer none = {0};
	/* Writes on: in observe mode the scan would judge the (empty) shadow. */
	dun_db_setting_set(db, "mode", "active");
	dun_db_setting_set(db, "rollout.percent", "100");
	dun_engine_init(en, db, p, dun_sim_provider(sim), dun_local_platform(db), dun_log_mailer(),
			none);
}

static void remove_db(const char *path)
{
	const char *const suffixes[] = {"", "-wal", "-shm"};
	for (size_t i = 0; i < sizeof suffixes / sizeof suffixes[0]; i++) {
		char p[600];
		snprintf(p, sizeof p, "%s%s", path, suffixes[i]);
		unlink(p);
	}
}

int main(void)
{
	char dir[] = "/tmp/dunning-stream-equiv-XXXXXX";
	if (!mkdtemp(dir)) {
		perror("mkdtemp");
		return 1;
	}
	char edge_path[300], plain_path[300];
	snprintf(edge_path, sizeof edge_path, "%s/edge.db", dir);
	snprintf(plain_path, sizeof plain_path, "%s/plain.db", dir);
	struct dun_policy policy;
	dun_policy_defaults(&policy);

	struct dun_bench_gen_counts counts;
	struct dun_db *db = generate(edge_path, 3000, true, &counts);
	CHECK(db != NULL);
	if (db) {
		struct dun_sim *sim = dun_sim_new(db, 1);
		struct dun_engine streamed, pointwise;
		engine(&streamed, db, &policy, sim);
		engine(&pointwise, db, &policy, sim);
		check_plans(db);
		add_odd_attempts(db);
		check_accounts(db, &streamed, &pointwise);
		check_scan(&streamed);
		dun_engine_free(&streamed);
		dun_engine_free(&pointwise);
		dun_sim_destroy(sim);
		dun_db_close(db);
	}

	/* The plain mix drifts exactly where the generator planted drift. */
	db = generate(plain_path, 5000, false, &counts);
	CHECK(db != NULL);
	if (db) {
		struct dun_sim *sim = dun_sim_new(db, 1);
		struct dun_engine en;
		engine(&en, db, &policy, sim);
		struct dun_scan_result r;
		CHECK_INT(dun_scan_run(&en, NOW, false, NULL, NULL, &r), DUN_OK);
		CHECK_INT(r.accounts, 5000);
		/*
		 * The generator plants drift in the stores; it does not set the
		 * engine's timers, so other accounts would plan a recheck: those
		 * drift as `other` (a non-empty plan is drift) and nothing else.
		 */
		CHECK_INT(r.drifting, counts.planted + r.per_class[DUN_DRIFT_OTHER]);
		for (int c = 0; c <= DUN_DRIFT_STAGE; c++)
			CHECK_INT(r.per_class[c], counts.expect[c]);
		json_decref(r.examples);
		printf("plain mix: %lld accounts, %lld drifting (%lld planted)\n",
		       (long long)r.accounts, (long long)r.drifting, (long long)counts.planted);
		dun_engine_free(&en);
		dun_sim_destroy(sim);
		dun_db_close(db);
	}

	remove_db(edge_path);
	remove_db(plain_path);
	rmdir(dir);
	return CHECK_DONE();
}
