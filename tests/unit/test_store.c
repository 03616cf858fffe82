/*
 * test_store.c — unit tests of the SQLite store (src/store): migrations on a
 * fresh file, reopening, refusing a newer schema; and the provider mirror:
 * out-of-order versions, both invoice shapes, attempts that arrive before
 * their invoice, the split list of a consolidated invoice, and customers
 * that register accounts.
 *
 * Every test gets its own database file in a scratch directory.
 */
#include "check.h"
#include "testdb.h"

#include "core/model.h"
#include "gather/gather.h"
#include "store/db.h"
#include "store/mirror.h"
#include "store/schema.h"

#include <jansson.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

static char scratch[256];

static void db_path(char *out, size_t size, const char *name)
{
	snprintf(out, size, "%s/%s.db", scratch, name);
}

/* ---- migrations ------------------------------------------------------------ */

static void test_fresh_file_is_migrated(void)
{
	char path[512];
	db_path(path, sizeof path, "fresh");
	CHECK(access(path, F_OK) != 0);
	struct dun_db *db = testdb_open(path);
	CHECK(dun_db_schema_latest() >= 1);
	CHECK_INT(dun_db_schema_version(db), dun_db_schema_latest());
	CHECK_INT(testdb_int(db, "PRAGMA user_version", NULL), dun_db_schema_latest());
	CHECK_STR(dun_db_path(db), path);
	/* The tables every stage relies on exist. */
	static const char *const tables[] = {
	    "accounts",	   "customers",	      "dunning",    "platform",	  "invoice_docs",
	    "p_customers", "p_subscriptions", "p_invoices", "p_attempts", "inbox",
	    "events_raw",  "decisions",	      "applied",    "emails",	  "bad_debt_episodes",
	    "settings",	   "rollout_list",    "sim_objects"};
	for (size_t i = 0; i < sizeof tables / sizeof tables[0]; i++) {
		int64_t n = testdb_int(db,
				       "SELECT COUNT(*) FROM sqlite_master WHERE type = 'table'"
				       " AND name = ?1",
				       tables[i]);
		if (n != 1)
			CHECK_FAIL_AT("table %s missing after migration", tables[i]);
		else
			check_passed++;
	}
	char mode[32];
	CHECK_STR(testdb_text(db, "PRAGMA journal_mode", NULL, mode, sizeof mode), "wal");
	dun_db_close(db);
	testdb_unlink(path);
}

static void test_reopen_is_a_noop(void)
{
	char path[512];
	db_path(path, sizeof path, "reopen");
	struct dun_db *db = testdb_open(path);
	CHECK_INT(dun_db_setting_set(db, "marker", "kept"), DUN_OK);
	testdb_exec(db, "INSERT INTO accounts(id) VALUES ('acct_keep')");
	int64_t tables = testdb_int(db, "SELECT COUNT(*) FROM sqlite_master", NULL);
	dun_db_close(db);

	db = testdb_open(path);
	CHECK_INT(dun_db_schema_version(db), dun_db_schema_latest());
	CHECK_INT(testdb_int(db, "SELECT COUNT(*) FROM sqlite_master", NULL), tables);
	CHECK_INT(testdb_int(db, "SELECT COUNT(*) FROM accounts WHERE id = 'acct_keep'", NULL), 1);
	char v[32] = "";
	bool found = false;
	CHECK_INT(dun_db_setting_get(db, "marker", v, sizeof v, &found), DUN_OK);
	CHECK(found);
	CHECK_STR(v, "kept");
	dun_db_close(db);

	/* Opening without migrating sees the same, current schema. */
	char err[256] = "";
	CHECK_INT(dun_db_open_nomigrate(path, &db, err, sizeof err), DUN_OK);
	if (db) {
		CHECK_INT(dun_db_schema_version(db), dun_db_schema_latest());
		dun_db_close(db);
	}
	testdb_unlink(path);
}

/*
 * A database left at every older version by an older binary is brought to
 * the latest one, and keeps its rows.
 */
static void test_older_versions_are_migrated(void)
{
	CHECK_INT(dun_schema_count(), dun_db_schema_latest());
	CHECK(dun_schema_migration(-1) == NULL);
	CHECK(dun_schema_migration(dun_schema_count()) == NULL);
	for (int have = 1; have < dun_db_schema_latest(); have++) {
		char path[512], name[32];
		snprintf(name, sizeof name, "older-v%d", have);
		db_path(path, sizeof path, name);
		/* Build the older file by hand: the first `have` migrations only. */
		struct dun_db *old = NULL;
		char err[256] = "";
		CHECK_INT(dun_db_open_nomigrate(path, &old, err, sizeof err), DUN_OK);
		CHECK_INT(dun_db_begin(old), DUN_OK);
		for (int m = 0; m < have; m++)
			for (const char *const *sql = dun_schema_migration(m); sql && *sql; sql++) {
				const char *mine = dun_schema_for_backend(*sql, "sqlite");
				if (mine)
					testdb_exec(old, mine);
			}
		char pragma[64];
		snprintf(pragma, sizeof pragma, "PRAGMA user_version = %d", have);
		testdb_exec(old, pragma);
		testdb_exec(old,
			    "INSERT INTO accounts(id, segment) VALUES ('acct_old', 'contract')");
		CHECK_INT(dun_db_commit(old), DUN_OK);
		CHECK_INT(dun_db_schema_version(old), have);
		dun_db_close(old);

		struct dun_db *db = testdb_open(path);
		CHECK_INT(dun_db_schema_version(db), dun_db_schema_latest());
		char seg[32];
		CHECK_STR(testdb_text(db, "SELECT segment FROM accounts WHERE id = ?1", "acct_old",
				      seg, sizeof seg),
			  "contract");
		dun_db_close(db);
		testdb_unlink(path);
	}
}

/*
 * Migration 21 rebuilds the inbox with its CHECK as comparisons: the rows,
 * their ids and AUTOINCREMENT's high-water mark survive, the rule still
 * holds, and an insert no longer opens a temporary B-tree.
 */
static void test_inbox_rebuild_keeps_rows_and_ids(void)
{
	char path[512];
	db_path(path, sizeof path, "inbox-v20");
	struct dun_db *old = NULL;
	char err[256] = "";
	CHECK_INT(dun_db_open_nomigrate(path, &old, err, sizeof err), DUN_OK);
	CHECK_INT(dun_db_begin(old), DUN_OK);
	for (int m = 0; m < 20; m++)
		for (const char *const *sql = dun_schema_migration(m); sql && *sql; sql++) {
			const char *mine = dun_schema_for_backend(*sql, "sqlite");
			if (mine)
				testdb_exec(old, mine);
		}
	testdb_exec(old, "PRAGMA user_version = 20");
	testdb_exec(old, "INSERT INTO inbox(account_id, kind, dedup_key, state, created_at,"
			 " updated_at) VALUES ('acct_a', 'payment_failed', 'k1', 'done', 1, 1),"
			 " ('acct_a', 'payment_failed', 'k2', 'received', 2, 2),"
			 " ('acct_b', 'paid', 'k3', 'retrying', 3, 3)");
	/* The highest id gone: the next one must still be above it. */
	testdb_exec(old, "DELETE FROM inbox WHERE dedup_key = 'k3'");
	CHECK_INT(dun_db_commit(old), DUN_OK);
	dun_db_close(old);

	struct dun_db *db = testdb_open(path);
	CHECK_INT(dun_db_schema_version(db), dun_db_schema_latest());
	CHECK_INT(testdb_int(db, "SELECT COUNT(*) FROM inbox", NULL), 2);
	CHECK_INT(testdb_int(db, "SELECT id FROM inbox WHERE dedup_key = ?1", "k2"), 2);
	char state[32];
	CHECK_STR(testdb_text(db, "SELECT state FROM inbox WHERE dedup_key = ?1", "k1", state,
			      sizeof state),
		  "done");
	testdb_exec(db, "INSERT INTO inbox(account_id, kind, dedup_key, created_at, updated_at)"
			" VALUES ('acct_b', 'paid', 'k4', 4, 4)");
	CHECK_INT(testdb_int(db, "SELECT id FROM inbox WHERE dedup_key = ?1", "k4"), 4);
	CHECK_INT(testdb_int(db,
			     "SELECT COUNT(*) FROM sqlite_master WHERE tbl_name = 'inbox' AND"
			     " name IN ('inbox_account', 'inbox_ready', 'inbox_open')",
			     NULL),
		  3);
	/* The rule holds. */
	struct dun_stmt *st = dun_db_stmt(db, "UPDATE inbox SET state = 'lost' WHERE id = 2");
	CHECK(dun_stmt_done(st) != DUN_OK);
	/* And costs no temporary B-tree. */
	int64_t ephemeral = 0;
	st = dun_db_stmt(db, "EXPLAIN INSERT INTO inbox(account_id, kind, source, event_id,"
			     " dedup_key, not_before, created_at, updated_at) VALUES (?1, ?2, ?3,"
			     " ?4, ?5, ?6, ?7, ?7) ON CONFLICT(dedup_key) DO NOTHING");
	while (dun_stmt_row(st))
		if (!strcmp(dun_stmt_col_text(st, 1), "OpenEphemeral"))
			ephemeral++;
	dun_stmt_reset(st);
	CHECK_INT(ephemeral, 0);
	dun_db_close(db);
	testdb_unlink(path);
}

static void test_newer_schema_is_refused(void)
{
	char path[512];
	db_path(path, sizeof path, "newer");
	struct dun_db *db = testdb_open(path);
	char pragma[64];
	snprintf(pragma, sizeof pragma, "PRAGMA user_version = %d", dun_db_schema_latest() + 1);
	testdb_exec(db, pragma);
	dun_db_close(db);

	char err[512] = "";
	static int not_null;
	db = (struct dun_db *)(void *)&not_null; /* must be reset to NULL on failure */
	CHECK_INT(dun_db_open(path, &db, err, sizeof err), DUN_E_SCHEMA);
	CHECK(db == NULL);
	CHECK(strstr(err, path) != NULL);
	CHECK(strstr(err, "newer than this binary") != NULL);
	char want[64];
	snprintf(want, sizeof want, "version %d", dun_db_schema_latest() + 1);
	CHECK(strstr(err, want) != NULL);
	if (!strstr(err, want))
		fprintf(stderr, "  message was: %s\n", err);

	err[0] = '\0';
	CHECK_INT(dun_db_open_nomigrate(path, &db, err, sizeof err), DUN_E_SCHEMA);
	CHECK(db == NULL);
	CHECK(strstr(err, "newer than this binary") != NULL);
	CHECK(!dun_err_is_retryable(DUN_E_SCHEMA));

	/* The refusal touched nothing: the version is still the newer one. */
	err[0] = '\0';
	CHECK_INT(dun_db_open(path, &db, err, sizeof err), DUN_E_SCHEMA);
	CHECK(strstr(err, want) != NULL);
	testdb_unlink(path);
}

static void test_not_a_database_is_refused(void)
{
	char path[512];
	db_path(path, sizeof path, "garbage");
	FILE *f = fopen(path, "w");
	CHECK(f != NULL);
	if (!f)
		return;
	for (int i = 0; i < 64; i++)
		fputs("this is not an SQLite database file\n", f);
	fclose(f);
	struct dun_db *db = NULL;
	char err[512] = "";
	enum dun_err e = dun_db_open(path, &db, err, sizeof err);
	CHECK(e != DUN_OK);
	CHECK(db == NULL);
	CHECK(strstr(err, path) != NULL);
	testdb_unlink(path);
}

/* ---- the mirror ------------------------------------------------------------ */

/* Fold obj (taken) at version; returns the result, *applied gets the flag. */
static enum dun_err fold(struct dun_db *db, json_t *obj, int64_t version, bool *applied)
{
	char customer[DUN_ID_MAX] = "";
	char err[256] = "";
	bool dummy = false;
	enum dun_err e = dun_mirror_upsert(db, obj, version, customer, applied ? applied : &dummy,
					   err, sizeof err);
	if (e != DUN_OK)
		fprintf(stderr, "  mirror: %s\n", err);
	json_decref(obj);
	return e;
}

static json_t *invoice(const char *id, const char *status, int64_t remaining)
{
	return json_pack("{s:s, s:s, s:s, s:s, s:I, s:I, s:I, s:s, s:i, s:s, s:I, s:s, s:s}", "id",
			 id, "object", "invoice", "customer", "cus_1", "status", status,
			 "amount_due", (json_int_t)2000, "amount_paid",
			 (json_int_t)(2000 - remaining), "amount_remaining", (json_int_t)remaining,
			 "currency", "usd", "attempt_count", 1, "billing_reason",
			 "subscription_cycle", "created", (json_int_t)1000, "subscription", "sub_1",
			 "payment_intent", "pi_1");
}

static const char *inv_status(struct dun_db *db, const char *id, char *buf, size_t n)
{
	return testdb_text(db, "SELECT status FROM p_invoices WHERE id = ?1", id, buf, n);
}

static void test_versions_out_of_order(void)
{
	struct dun_db *db = testdb_open(":memory:");
	char st[32];
	bool applied = false;

	CHECK_INT(fold(db, invoice("in_v", "open", 2000), 200, &applied), DUN_OK);
	CHECK(applied);
	CHECK_STR(inv_status(db, "in_v", st, sizeof st), "open");

	/* An older payload never overwrites a newer one, whatever its status. */
	CHECK_INT(fold(db, invoice("in_v", "draft", 2000), 100, &applied), DUN_OK);
	CHECK(!applied);
	CHECK_STR(inv_status(db, "in_v", st, sizeof st), "open");
	CHECK_INT(fold(db, invoice("in_v", "paid", 0), 199, &applied), DUN_OK);
	CHECK(!applied);
	CHECK_STR(inv_status(db, "in_v", st, sizeof st), "open");
	CHECK_INT(testdb_int(db, "SELECT amount_remaining FROM p_invoices WHERE id = 'in_v'", NULL),
		  2000);

	/* A newer one always wins, even backwards in the lifecycle (a reopened draft). */
	CHECK_INT(fold(db, invoice("in_v", "draft", 2000), 300, &applied), DUN_OK);
	CHECK(applied);
	CHECK_STR(inv_status(db, "in_v", st, sizeof st), "draft");
	CHECK_INT(testdb_int(db, "SELECT version FROM p_invoices WHERE id = 'in_v'", NULL), 300);

	/* Same version: only forward, draft < open < uncollectible < paid. */
	CHECK_INT(fold(db, invoice("in_v", "open", 2000), 300, &applied), DUN_OK);
	CHECK(applied);
	CHECK_STR(inv_status(db, "in_v", st, sizeof st), "open");
	CHECK_INT(fold(db, invoice("in_v", "draft", 2000), 300, &applied), DUN_OK);
	CHECK(!applied);
	CHECK_STR(inv_status(db, "in_v", st, sizeof st), "open");
	CHECK_INT(fold(db, invoice("in_v", "uncollectible", 2000), 300, &applied), DUN_OK);
	CHECK(applied);
	CHECK_STR(inv_status(db, "in_v", st, sizeof st), "uncollectible");
	CHECK_INT(fold(db, invoice("in_v", "open", 2000), 300, &applied), DUN_OK);
	CHECK(!applied);
	CHECK_STR(inv_status(db, "in_v", st, sizeof st), "uncollectible");
	CHECK_INT(fold(db, invoice("in_v", "paid", 0), 300, &applied), DUN_OK);
	CHECK(applied);
	CHECK_STR(inv_status(db, "in_v", st, sizeof st), "paid");
	CHECK_INT(fold(db, invoice("in_v", "uncollectible", 2000), 300, &applied), DUN_OK);
	CHECK(!applied);
	CHECK_INT(fold(db, invoice("in_v", "open", 2000), 300, &applied), DUN_OK);
	CHECK(!applied);
	CHECK_STR(inv_status(db, "in_v", st, sizeof st), "paid");
	CHECK_INT(testdb_int(db, "SELECT amount_remaining FROM p_invoices WHERE id = 'in_v'", NULL),
		  0);

	/* Customers and subscriptions follow the version rule too. */
	json_t *sub = json_pack("{s:s, s:s, s:s, s:s}", "id", "sub_v", "object", "subscription",
				"customer", "cus_1", "status", "past_due");
	CHECK_INT(fold(db, sub, 500, &applied), DUN_OK);
	sub = json_pack("{s:s, s:s, s:s, s:s}", "id", "sub_v", "object", "subscription", "customer",
			"cus_1", "status", "active");
	CHECK_INT(fold(db, sub, 400, &applied), DUN_OK);
	CHECK(!applied);
	CHECK_STR(testdb_text(db, "SELECT status FROM p_subscriptions WHERE id = ?1", "sub_v", st,
			      sizeof st),
		  "past_due");
	/* On a tie only a cancellation wins: it is the one terminal status. */
	sub = json_pack("{s:s, s:s, s:s, s:s}", "id", "sub_v", "object", "subscription", "customer",
			"cus_1", "status", "active");
	CHECK_INT(fold(db, sub, 500, &applied), DUN_OK);
	CHECK(!applied);
	sub = json_pack("{s:s, s:s, s:s, s:s}", "id", "sub_v", "object", "subscription", "customer",
			"cus_1", "status", "canceled");
	CHECK_INT(fold(db, sub, 500, &applied), DUN_OK);
	CHECK(applied);
	CHECK_STR(testdb_text(db, "SELECT status FROM p_subscriptions WHERE id = ?1", "sub_v", st,
			      sizeof st),
		  "canceled");
	dun_db_close(db);
}

static void test_invoice_shapes(void)
{
	struct dun_db *db = testdb_open(":memory:");
	char buf[64];
	/* Before 2025-03-31: top-level subscription and payment_intent. */
	json_t *old =
	    json_pack("{s:s, s:s, s:s, s:s, s:s, s:s, s:I, s:I, s:s}", "id", "in_old", "object",
		      "invoice", "customer", "cus_1", "status", "open", "subscription", "sub_old",
		      "payment_intent", "pi_old", "amount_due", (json_int_t)1500,
		      "amount_remaining", (json_int_t)1500, "billing_reason", "subscription_cycle");
	CHECK_INT(fold(db, old, 10, NULL), DUN_OK);
	CHECK_STR(testdb_text(db, "SELECT subscription_id FROM p_invoices WHERE id = ?1", "in_old",
			      buf, sizeof buf),
		  "sub_old");
	CHECK_STR(testdb_text(db, "SELECT payment_intent FROM p_invoices WHERE id = ?1", "in_old",
			      buf, sizeof buf),
		  "pi_old");

	/* Expanded objects in place of ids are read by their id. */
	json_t *exp = json_pack("{s:s, s:s, s:{s:s}, s:s, s:{s:s}, s:{s:s}}", "id", "in_exp",
				"object", "invoice", "customer", "id", "cus_1", "status", "open",
				"subscription", "id", "sub_exp", "payment_intent", "id", "pi_exp");
	CHECK_INT(fold(db, exp, 10, NULL), DUN_OK);
	CHECK_STR(testdb_text(db,
			      "SELECT customer_id || '/' || subscription_id || '/' ||"
			      " payment_intent FROM p_invoices WHERE id = ?1",
			      "in_exp", buf, sizeof buf),
		  "cus_1/sub_exp/pi_exp");

	/* Basil (2025-03-31 on): parent.subscription_details, no payment_intent. */
	json_t *basil =
	    json_pack("{s:s, s:s, s:s, s:s, s:{s:s, s:{s:s}}, s:I, s:I}", "id", "in_new", "object",
		      "invoice", "customer", "cus_1", "status", "open", "parent", "type",
		      "subscription_details", "subscription_details", "subscription", "sub_new",
		      "amount_due", (json_int_t)900, "amount_remaining", (json_int_t)900);
	CHECK_INT(fold(db, basil, 10, NULL), DUN_OK);
	CHECK_STR(testdb_text(db, "SELECT subscription_id FROM p_invoices WHERE id = ?1", "in_new",
			      buf, sizeof buf),
		  "sub_new");
	CHECK_STR(testdb_text(db, "SELECT payment_intent FROM p_invoices WHERE id = ?1", "in_new",
			      buf, sizeof buf),
		  "");
	/* The basil charge names no invoice; the invoice_payment links them. */
	json_t *ch =
	    json_pack("{s:s, s:s, s:s, s:s, s:s, s:I, s:{s:s}}", "id", "ch_new", "object", "charge",
		      "customer", "cus_1", "payment_intent", "pi_new", "status", "failed",
		      "created", (json_int_t)20, "outcome", "reason", "insufficient_funds");
	CHECK_INT(fold(db, ch, 20, NULL), DUN_OK);
	CHECK_INT(
	    testdb_int(db, "SELECT invoice_id = '' FROM p_attempts WHERE id = 'ch_new'", NULL), 1);
	json_t *ip = json_pack("{s:s, s:s, s:s, s:{s:s, s:s}}", "id", "inpay_1", "object",
			       "invoice_payment", "invoice", "in_new", "payment", "type",
			       "payment_intent", "payment_intent", "pi_new");
	bool applied = false;
	CHECK_INT(fold(db, ip, 21, &applied), DUN_OK);
	CHECK(applied);
	CHECK_STR(testdb_text(db, "SELECT payment_intent FROM p_invoices WHERE id = ?1", "in_new",
			      buf, sizeof buf),
		  "pi_new");
	CHECK_STR(testdb_text(db, "SELECT invoice_id FROM p_attempts WHERE id = ?1", "ch_new", buf,
			      sizeof buf),
		  "in_new");
	CHECK_STR(testdb_text(db, "SELECT decline_code FROM p_attempts WHERE id = ?1", "ch_new",
			      buf, sizeof buf),
		  "insufficient_funds");

	/* An invoice without an id is malformed. */
	char err[256] = "";
	json_t *bad = json_pack("{s:s, s:s, s:s}", "customer", "cus_1", "object", "invoice",
				"status", "open");
	CHECK_INT(dun_mirror_upsert(db, bad, 10, NULL, NULL, err, sizeof err), DUN_E_PARSE);
	CHECK(strstr(err, "invoice") != NULL);
	json_decref(bad);
	/* Basil allows an invoice's customer and status to be null: tolerated, not folded. */
	bad = json_pack("{s:s, s:s, s:s, s:n}", "id", "in_bad", "object", "invoice", "status",
			"open", "customer");
	bool was = true;
	CHECK_INT(dun_mirror_upsert(db, bad, 10, NULL, &was, err, sizeof err), DUN_OK);
	CHECK(!was);
	json_decref(bad);
	bad = json_pack("{s:s, s:s, s:n, s:s}", "id", "in_bad", "object", "invoice", "status",
			"customer", "cus_1");
	CHECK_INT(dun_mirror_upsert(db, bad, 10, NULL, NULL, err, sizeof err), DUN_OK);
	json_decref(bad);
	CHECK_INT(testdb_int(db, "SELECT COUNT(*) FROM p_invoices WHERE id = 'in_bad'", NULL), 0);

	/* Objects the mirror does not know are accepted and ignored. */
	json_t *plan = json_pack("{s:s, s:s}", "id", "plan_1", "object", "plan");
	applied = true;
	CHECK_INT(fold(db, plan, 10, &applied), DUN_OK);
	CHECK(!applied);
	CHECK(!dun_mirror_knows("plan"));
	CHECK(dun_mirror_knows("invoice_payment"));
	dun_db_close(db);
}

static void test_charge_before_invoice(void)
{
	struct dun_db *db = testdb_open(":memory:");
	char buf[64];
	/* The charge arrives first and names only its payment intent. */
	json_t *ch =
	    json_pack("{s:s, s:s, s:s, s:s, s:s, s:I, s:s, s:s, s:{s:s, s:s, s:s}}", "id",
		      "ch_early", "object", "charge", "customer", "cus_1", "payment_intent",
		      "pi_early", "status", "failed", "created", (json_int_t)50, "payment_method",
		      "pm_9", "failure_code", "card_declined", "outcome", "reason", "do_not_honor",
		      "advice_code", "try_again_later", "network_advice_code", "24");
	CHECK_INT(fold(db, ch, 50, NULL), DUN_OK);
	CHECK_INT(
	    testdb_int(db, "SELECT invoice_id = '' FROM p_attempts WHERE id = 'ch_early'", NULL),
	    1);
	/* Then the invoice that owns that payment intent. */
	json_t *inv =
	    json_pack("{s:s, s:s, s:s, s:s, s:s, s:I, s:I}", "id", "in_late", "object", "invoice",
		      "customer", "cus_1", "status", "open", "payment_intent", "pi_early",
		      "amount_due", (json_int_t)700, "amount_remaining", (json_int_t)700);
	CHECK_INT(fold(db, inv, 51, NULL), DUN_OK);
	CHECK_STR(testdb_text(db, "SELECT invoice_id FROM p_attempts WHERE id = ?1", "ch_early",
			      buf, sizeof buf),
		  "in_late");
	CHECK_STR(testdb_text(db,
			      "SELECT status || '/' || decline_code || '/' || advice_code || '/' ||"
			      " network_advice_code || '/' || payment_method FROM p_attempts"
			      " WHERE id = ?1",
			      "ch_early", buf, sizeof buf),
		  "failed/do_not_honor/try_again_later/24/pm_9");

	/* A later charge on the same intent finds the invoice at once. */
	json_t *ch2 = json_pack("{s:s, s:s, s:s, s:s, s:s, s:I}", "id", "ch_next", "object",
				"charge", "customer", "cus_1", "payment_intent", "pi_early",
				"status", "succeeded", "created", (json_int_t)60);
	CHECK_INT(fold(db, ch2, 60, NULL), DUN_OK);
	CHECK_STR(testdb_text(db, "SELECT invoice_id FROM p_attempts WHERE id = ?1", "ch_next", buf,
			      sizeof buf),
		  "in_late");
	CHECK_STR(testdb_text(db, "SELECT status FROM p_attempts WHERE id = ?1", "ch_next", buf,
			      sizeof buf),
		  "succeeded");

	/* A processing payment intent is a marker attempt until it settles. */
	json_t *pi = json_pack("{s:s, s:s, s:s, s:s, s:s, s:I}", "id", "pi_early", "object",
			       "payment_intent", "customer", "cus_1", "invoice", "in_late",
			       "status", "processing", "created", (json_int_t)70);
	CHECK_INT(fold(db, pi, 70, NULL), DUN_OK);
	CHECK_INT(testdb_int(db,
			     "SELECT COUNT(*) FROM p_attempts WHERE id = 'pi_early:processing'"
			     " AND status = 'processing' AND invoice_id = 'in_late'",
			     NULL),
		  1);
	pi = json_pack("{s:s, s:s, s:s, s:s, s:s, s:I}", "id", "pi_early", "object",
		       "payment_intent", "customer", "cus_1", "invoice", "in_late", "status",
		       "succeeded", "created", (json_int_t)80);
	CHECK_INT(fold(db, pi, 80, NULL), DUN_OK);
	CHECK_INT(testdb_int(db, "SELECT COUNT(*) FROM p_attempts WHERE id = 'pi_early:processing'",
			     NULL),
		  0);
	dun_db_close(db);
}

static void test_consolidated_list_is_joined(void)
{
	struct dun_db *db = testdb_open(":memory:");
	json_t *inv =
	    json_pack("{s:s, s:s, s:s, s:s, s:I, s:I, s:{s:s, s:s, s:s, s:s}}", "id", "in_cons",
		      "object", "invoice", "customer", "cus_1", "status", "open", "amount_due",
		      (json_int_t)5000, "amount_remaining", (json_int_t)5000, "metadata",
		      "bad_debt_invoices", "in_a,in_b", "bad_debt_invoices_2", "in_c",
		      "bad_debt_invoices_3", "in_d,in_e", "bad_debt_amount", "5000");
	CHECK_INT(fold(db, inv, 10, NULL), DUN_OK);
	char buf[128];
	CHECK_STR(testdb_text(db, "SELECT meta_bad_debt_invoices FROM p_invoices WHERE id = ?1",
			      "in_cons", buf, sizeof buf),
		  "in_a,in_b,in_c,in_d,in_e");
	CHECK_INT(testdb_int(db, "SELECT meta_bad_debt_amount FROM p_invoices WHERE id = 'in_cons'",
			     NULL),
		  5000);

	/* A gap ends the list: _4 without _3 is not read. */
	inv = json_pack("{s:s, s:s, s:s, s:s, s:{s:s, s:s, s:s}}", "id", "in_gap", "object",
			"invoice", "customer", "cus_1", "status", "open", "metadata",
			"bad_debt_invoices", "in_x", "bad_debt_invoices_2", "in_y",
			"bad_debt_invoices_4", "in_z");
	CHECK_INT(fold(db, inv, 10, NULL), DUN_OK);
	CHECK_STR(testdb_text(db, "SELECT meta_bad_debt_invoices FROM p_invoices WHERE id = ?1",
			      "in_gap", buf, sizeof buf),
		  "in_x,in_y");

	/* An ordinary invoice has no list at all (NULL, not ""). */
	CHECK_INT(fold(db, invoice("in_plain", "open", 10), 10, NULL), DUN_OK);
	CHECK_INT(testdb_int(db,
			     "SELECT meta_bad_debt_invoices IS NULL FROM p_invoices"
			     " WHERE id = 'in_plain'",
			     NULL),
		  1);

	/* GATHER splits the joined list into the consolidated invoice's covers. */
	testdb_exec(db, "INSERT INTO accounts(id) VALUES ('acct_c');"
			" INSERT INTO customers(id, account_id) VALUES ('cus_1', 'acct_c')");
	struct dun_snapshot snap;
	dun_snapshot_init(&snap);
	CHECK_INT(dun_gather(db, "acct_c", &snap), DUN_OK);
	const struct dun_invoice *cons = NULL;
	for (int i = 0; i < snap.state.n_invoices; i++)
		if (!strcmp(snap.state.invoices[i].id, "in_cons"))
			cons = &snap.state.invoices[i];
	CHECK(cons != NULL);
	if (cons) {
		CHECK(cons->is_consolidated);
		CHECK_INT(cons->n_covers, 5);
		if (cons->n_covers == 5) {
			CHECK_STR(cons->covers[0], "in_a");
			CHECK_STR(cons->covers[2], "in_c");
			CHECK_STR(cons->covers[4], "in_e");
		}
		CHECK(cons->meta_has_bad_debt_amount);
		CHECK_INT(cons->meta_bad_debt_amount_minor, 5000);
	}
	dun_snapshot_free(&snap);
	dun_db_close(db);
}

static json_t *payment_intent(const char *status, int64_t created)
{
	return json_pack("{s:s, s:s, s:s, s:s, s:s, s:I}", "id", "pi_h", "object", "payment_intent",
			 "status", status, "invoice", "in_h", "customer", "cus_1", "created",
			 (json_int_t)created);
}

static json_t *charge(const char *id, const char *status, int64_t created)
{
	return json_pack("{s:s, s:s, s:s, s:s, s:s, s:s, s:I, s:s}", "id", id, "object", "charge",
			 "status", status, "invoice", "in_h", "customer", "cus_1", "payment_intent",
			 "pi_h", "created", (json_int_t)created, "failure_code", "card_declined");
}

/* A settled charge of a payment intent ends what said it was in flight. */
static void test_settled_charge_ends_processing(void)
{
	struct dun_db *db = testdb_open(":memory:");
	const char *q = "SELECT COUNT(*) FROM p_attempts WHERE status = 'processing'";
	bool applied = false;
	CHECK_INT(fold(db, payment_intent("processing", 100), 100, &applied), DUN_OK);
	CHECK(applied);
	CHECK_INT(testdb_int(db, q, NULL), 1);
	/* A pending charge is in flight too; its failure ends both. */
	CHECK_INT(fold(db, charge("ch_h1", "pending", 101), 101, NULL), DUN_OK);
	CHECK_INT(testdb_int(db, q, NULL), 2);
	CHECK_INT(fold(db, charge("ch_h1", "failed", 102), 200, &applied), DUN_OK);
	CHECK(applied);
	CHECK_INT(testdb_int(db, q, NULL), 0);
	/* The processing event, redelivered late (older than the failure), starts
	 * no hold again. */
	CHECK_INT(fold(db, payment_intent("processing", 100), 150, &applied), DUN_OK);
	CHECK(!applied);
	CHECK_INT(testdb_int(db, q, NULL), 0);
	/* A new debit of the same payment intent, later than the failure, does. */
	CHECK_INT(fold(db, payment_intent("processing", 300), 300, &applied), DUN_OK);
	CHECK_INT(testdb_int(db, q, NULL), 1);
	dun_db_close(db);
}

static void test_customer_registers_account(void)
{
	struct dun_db *db = testdb_open(":memory:");
	char buf[128];
	json_t *cus = json_pack("{s:s, s:s, s:s, s:s, s:I, s:{s:s}, s:{s:s}}", "id", "cus_reg",
				"object", "customer", "email", "ada@example.com", "name", "Ada",
				"created", (json_int_t)1234, "metadata", "account_id", "acct_reg",
				"invoice_settings", "default_payment_method", "pm_reg");
	char customer[DUN_ID_MAX] = "x";
	bool applied = false;
	char err[256] = "";
	CHECK_INT(dun_mirror_upsert(db, cus, 5, customer, &applied, err, sizeof err), DUN_OK);
	json_decref(cus);
	CHECK(applied);
	CHECK_STR(customer, "cus_reg");
	CHECK_STR(testdb_text(db,
			      "SELECT email || '|' || name || '|' || segment FROM accounts"
			      " WHERE id = ?1",
			      "acct_reg", buf, sizeof buf),
		  "ada@example.com|Ada|self_serve");
	CHECK_INT(testdb_int(db, "SELECT created_at FROM accounts WHERE id = 'acct_reg'", NULL),
		  1234);
	CHECK_STR(testdb_text(db, "SELECT account_id FROM customers WHERE id = ?1", "cus_reg", buf,
			      sizeof buf),
		  "acct_reg");
	CHECK_STR(testdb_text(db, "SELECT default_payment_method FROM p_customers WHERE id = ?1",
			      "cus_reg", buf, sizeof buf),
		  "pm_reg");
	char account[DUN_ID_MAX];
	CHECK_INT(dun_mirror_account_of(db, "cus_reg", account, sizeof account), DUN_OK);
	CHECK_STR(account, "acct_reg");

	/* Registering is bookkeeping only: an existing account keeps its settings. */
	testdb_exec(db, "UPDATE accounts SET segment = 'enterprise', kill_switch = 1"
			" WHERE id = 'acct_reg'");
	cus = json_pack("{s:s, s:s, s:s, s:{s:s, s:s}}", "id", "cus_reg", "object", "customer",
			"email", "new@example.com", "metadata", "account_id", "acct_reg",
			"bad_debt", "true");
	CHECK_INT(fold(db, cus, 6, &applied), DUN_OK);
	CHECK(applied);
	CHECK_STR(testdb_text(db,
			      "SELECT segment || '|' || kill_switch FROM accounts WHERE id = ?1",
			      "acct_reg", buf, sizeof buf),
		  "enterprise|1");
	CHECK_INT(
	    testdb_int(db, "SELECT meta_bad_debt FROM p_customers WHERE id = 'cus_reg'", NULL), 1);
	CHECK_INT(testdb_int(db, "SELECT COUNT(*) FROM customers", NULL), 1);

	/* A customer without account_id registers nobody. */
	cus = json_pack("{s:s, s:s, s:s}", "id", "cus_anon", "object", "customer", "email",
			"anon@example.com");
	CHECK_INT(fold(db, cus, 5, NULL), DUN_OK);
	CHECK_INT(testdb_int(db, "SELECT COUNT(*) FROM p_customers WHERE id = 'cus_anon'", NULL),
		  1);
	CHECK_INT(testdb_int(db, "SELECT COUNT(*) FROM customers WHERE id = 'cus_anon'", NULL), 0);
	CHECK_INT(testdb_int(db, "SELECT COUNT(*) FROM accounts", NULL), 1);
	CHECK_INT(dun_mirror_account_of(db, "cus_anon", account, sizeof account), DUN_E_NOT_FOUND);
	CHECK_STR(account, "");
	CHECK_INT(dun_mirror_account_of(db, "cus_nobody", account, sizeof account),
		  DUN_E_NOT_FOUND);

	/* A later update without the metadata does not unlink the account. */
	cus = json_pack("{s:s, s:s, s:s}", "id", "cus_reg", "object", "customer", "email",
			"ada@example.com");
	CHECK_INT(fold(db, cus, 7, NULL), DUN_OK);
	CHECK_STR(testdb_text(db, "SELECT account_id FROM p_customers WHERE id = ?1", "cus_reg",
			      buf, sizeof buf),
		  "acct_reg");
	dun_db_close(db);
}

/*
 * Invoices and attempts carry their customer's account (schema migration
 * 14) whatever order the mirror receives them in: an attempt before its
 * invoice, by invoice or by payment intent, an invoice before its customer
 * is linked, a relink, an unlink. Since migration 18 the mirror writes the
 * column itself; the triggers on customers move rows when a link changes.
 */
static json_t *charge_of(const char *id, const char *invoice, const char *pi)
{
	return json_pack("{s:s, s:s, s:s, s:s, s:s, s:s, s:I}", "id", id, "object", "charge",
			 "customer", "cus_1", "invoice", invoice, "payment_intent", pi, "status",
			 "failed", "created", (json_int_t)100);
}

static json_t *invoice_of(const char *id, const char *pi)
{
	return json_pack("{s:s, s:s, s:s, s:s, s:s, s:I, s:I}", "id", id, "object", "invoice",
			 "customer", "cus_1", "status", "open", "payment_intent", pi, "amount_due",
			 (json_int_t)700, "amount_remaining", (json_int_t)700);
}

static const char *account_of(struct dun_db *db, const char *table, const char *id, char *buf,
			      size_t n)
{
	char sql[96];
	snprintf(sql, sizeof sql, "SELECT account_id FROM %s WHERE id = ?1", table);
	return testdb_text(db, sql, id, buf, n);
}

static void test_mirror_rows_follow_their_account(void)
{
	struct dun_db *db = testdb_open(":memory:");
	char buf[64];
	/* Unlinked customer: an attempt before its invoice, then the invoice. */
	CHECK_INT(fold(db, charge_of("py_1", "in_1", ""), 10, NULL), DUN_OK);
	CHECK_INT(fold(db, charge_of("py_loose", "", ""), 10, NULL), DUN_OK);
	CHECK_STR(testdb_text(db, "SELECT invoice_id FROM p_attempts WHERE id = ?1", "py_loose",
			      buf, sizeof buf),
		  "");
	CHECK_INT(fold(db, invoice_of("in_1", ""), 11, NULL), DUN_OK);
	CHECK_STR(account_of(db, "p_invoices", "in_1", buf, sizeof buf), "");
	CHECK_STR(account_of(db, "p_attempts", "py_1", buf, sizeof buf), "");
	/* The customer is linked after its invoice arrived (a customer event
	 * naming its account): the invoice and its attempt follow. */
	json_t *cus = json_pack("{s:s, s:s, s:{s:s}}", "id", "cus_1", "object", "customer",
				"metadata", "account_id", "acct_1");
	CHECK_INT(fold(db, cus, 12, NULL), DUN_OK);
	CHECK_STR(account_of(db, "p_invoices", "in_1", buf, sizeof buf), "acct_1");
	CHECK_STR(account_of(db, "p_attempts", "py_1", buf, sizeof buf), "acct_1");
	CHECK_STR(account_of(db, "p_attempts", "py_loose", buf, sizeof buf), "");
	/* Written after the link: an attempt of a known invoice; an attempt
	 * before its invoice, named by invoice and by payment intent; an
	 * attempt that names its invoice in a later version. */
	CHECK_INT(fold(db, charge_of("py_2", "in_1", ""), 13, NULL), DUN_OK);
	CHECK_STR(account_of(db, "p_attempts", "py_2", buf, sizeof buf), "acct_1");
	CHECK_INT(fold(db, charge_of("py_3", "in_2", ""), 13, NULL), DUN_OK);
	CHECK_INT(fold(db, charge_of("py_4", "", "pi_2"), 13, NULL), DUN_OK);
	CHECK_INT(fold(db, charge_of("py_5", "", "pi_9"), 13, NULL), DUN_OK);
	CHECK_STR(account_of(db, "p_attempts", "py_3", buf, sizeof buf), "");
	CHECK_INT(fold(db, invoice_of("in_2", "pi_2"), 14, NULL), DUN_OK);
	CHECK_STR(account_of(db, "p_invoices", "in_2", buf, sizeof buf), "acct_1");
	CHECK_STR(account_of(db, "p_attempts", "py_3", buf, sizeof buf), "acct_1");
	CHECK_STR(
	    testdb_text(db, "SELECT invoice_id || '/' || account_id FROM p_attempts WHERE id = ?1",
			"py_4", buf, sizeof buf),
	    "in_2/acct_1");
	CHECK_STR(account_of(db, "p_attempts", "py_5", buf, sizeof buf), "");
	CHECK_INT(fold(db, charge_of("py_5", "in_2", "pi_9"), 15, NULL), DUN_OK);
	CHECK_STR(account_of(db, "p_attempts", "py_5", buf, sizeof buf), "acct_1");
	/* An invoice payment ties a payment intent to a known invoice. */
	CHECK_INT(fold(db, charge_of("py_6", "", "pi_3"), 15, NULL), DUN_OK);
	CHECK_INT(fold(db, invoice_of("in_3", ""), 15, NULL), DUN_OK);
	json_t *ip = json_pack("{s:s, s:s, s:s, s:{s:s, s:s}}", "id", "inpay_3", "object",
			       "invoice_payment", "invoice", "in_3", "payment", "type",
			       "payment_intent", "payment_intent", "pi_3");
	CHECK_INT(fold(db, ip, 16, NULL), DUN_OK);
	CHECK_STR(
	    testdb_text(db, "SELECT invoice_id || '/' || account_id FROM p_attempts WHERE id = ?1",
			"py_6", buf, sizeof buf),
	    "in_3/acct_1");
	/* Relinked (`dunning account set --customer`), then unlinked: documents move too. */
	testdb_exec(db, "INSERT INTO invoice_docs(invoice_id, closed, account_id)"
			" VALUES ('in_2', 1, 'acct_1')");
	testdb_exec(db, "UPDATE customers SET account_id = 'acct_2' WHERE id = 'cus_1'");
	CHECK_STR(testdb_text(db, "SELECT account_id FROM invoice_docs WHERE invoice_id = ?1",
			      "in_2", buf, sizeof buf),
		  "acct_2");
	CHECK_STR(testdb_text(db,
			      "SELECT (SELECT COUNT(*) FROM p_invoices WHERE account_id = ?1) ||"
			      " '/' || (SELECT COUNT(*) FROM p_attempts WHERE account_id = ?1)",
			      "acct_2", buf, sizeof buf),
		  "3/6");
	testdb_exec(db, "DELETE FROM customers WHERE id = 'cus_1'");
	CHECK_INT(testdb_int(db,
			     "SELECT (SELECT COUNT(*) FROM p_invoices WHERE account_id <> '') +"
			     " (SELECT COUNT(*) FROM p_attempts WHERE account_id <> '')",
			     NULL),
		  0);
	CHECK_INT(testdb_int(db, "SELECT COUNT(*) FROM invoice_docs WHERE account_id <> ''", NULL),
		  0);
	/*
	 * No trigger checks an insert of an invoice or attempt any more: the
	 * two left move an invoice's attempts and documents when its account
	 * changes.
	 */
	CHECK_INT(testdb_int(db,
			     "SELECT COUNT(*) FROM sqlite_master WHERE type = 'trigger' AND"
			     " tbl_name IN ('p_invoices', 'p_attempts')",
			     NULL),
		  2);
	CHECK_INT(testdb_int(db,
			     "SELECT COUNT(*) FROM sqlite_master WHERE type = 'trigger' AND"
			     " tbl_name IN ('p_invoices', 'p_attempts') AND sql LIKE '%INSERT ON%'",
			     NULL),
		  0);
	dun_db_close(db);
}

/*
 * Schema migration 23: no index of invoices by customer on SQLite; the
 * triggers on customers find a customer's invoices by the table's key
 * (old account, customer). A customer renamed takes its account with it:
 * its old id's invoices are unlinked, the new id's (unlinked until then)
 * linked. Invoices of other customers of the same account stay.
 */
static void test_customer_triggers_use_the_key(void)
{
	struct dun_db *db = testdb_open(":memory:");
	char buf[64];
	CHECK_INT(
	    testdb_int(db,
		       "SELECT COUNT(*) FROM sqlite_master WHERE name = 'p_invoices_customer_id'",
		       NULL),
	    0);
	testdb_exec(db, "INSERT INTO customers(id, account_id) VALUES ('cus_a', 'acct_1'),"
			" ('cus_b', 'acct_1')");
	json_t *a = json_pack("{s:s, s:s, s:s, s:s}", "id", "in_a", "object", "invoice", "customer",
			      "cus_a", "status", "open");
	json_t *b = json_pack("{s:s, s:s, s:s, s:s}", "id", "in_b", "object", "invoice", "customer",
			      "cus_b", "status", "open");
	json_t *c = json_pack("{s:s, s:s, s:s, s:s}", "id", "in_c", "object", "invoice", "customer",
			      "cus_c", "status", "open");
	CHECK_INT(fold(db, a, 10, NULL), DUN_OK);
	CHECK_INT(fold(db, b, 10, NULL), DUN_OK);
	CHECK_INT(fold(db, c, 10, NULL), DUN_OK);
	CHECK_STR(account_of(db, "p_invoices", "in_a", buf, sizeof buf), "acct_1");
	CHECK_STR(account_of(db, "p_invoices", "in_c", buf, sizeof buf), "");
	/* Renamed: cus_a's invoice is left without an account, cus_c's joins acct_1. */
	testdb_exec(db, "UPDATE customers SET id = 'cus_c' WHERE id = 'cus_a'");
	CHECK_STR(account_of(db, "p_invoices", "in_a", buf, sizeof buf), "");
	CHECK_STR(account_of(db, "p_invoices", "in_c", buf, sizeof buf), "acct_1");
	CHECK_STR(account_of(db, "p_invoices", "in_b", buf, sizeof buf), "acct_1");
	/* Relinked to another account, then a new customer row for cus_a. */
	testdb_exec(db, "UPDATE customers SET account_id = 'acct_2' WHERE id = 'cus_c'");
	CHECK_STR(account_of(db, "p_invoices", "in_c", buf, sizeof buf), "acct_2");
	CHECK_STR(account_of(db, "p_invoices", "in_b", buf, sizeof buf), "acct_1");
	testdb_exec(db, "INSERT INTO customers(id, account_id) VALUES ('cus_a', 'acct_3')");
	CHECK_STR(account_of(db, "p_invoices", "in_a", buf, sizeof buf), "acct_3");
	/* Unlinked: gone from its account, the others stay. */
	testdb_exec(db, "DELETE FROM customers WHERE id = 'cus_c'");
	CHECK_STR(account_of(db, "p_invoices", "in_c", buf, sizeof buf), "");
	CHECK_STR(account_of(db, "p_invoices", "in_a", buf, sizeof buf), "acct_3");
	/* Every invoice's account is its customer's, or '' without a customers row. */
	CHECK_INT(testdb_int(db,
			     "SELECT COUNT(*) FROM p_invoices i WHERE i.account_id <>"
			     " COALESCE((SELECT account_id FROM customers c WHERE c.id ="
			     " i.customer_id), '')",
			     NULL),
		  0);
	dun_db_close(db);
}

static json_t *subscription_of(const char *id, const char *customer)
{
	return json_pack("{s:s, s:s, s:s, s:s}", "id", id, "object", "subscription", "customer",
			 customer, "status", "active");
}

static const char *linked_of(struct dun_db *db, const char *id, char *buf, size_t n)
{
	return testdb_text(db, "SELECT linked_account_id FROM p_customers WHERE id = ?1", id, buf,
			   n);
}

/*
 * Schema migration 20: the provider's customers and subscriptions carry the
 * account their customers row links them to, whichever arrived first, and
 * follow it when the customer is relinked or unlinked.
 */
static void test_provider_customers_follow_their_account(void)
{
	struct dun_db *db = testdb_open(":memory:");
	char buf[64];
	/* A subscription before its customer is known. */
	CHECK_INT(fold(db, subscription_of("sub_1", "cus_1"), 10, NULL), DUN_OK);
	CHECK_STR(account_of(db, "p_subscriptions", "sub_1", buf, sizeof buf), "");
	/* The customer names its account: its row, then the link. */
	json_t *cus = json_pack("{s:s, s:s, s:{s:s}}", "id", "cus_1", "object", "customer",
				"metadata", "account_id", "acct_1");
	CHECK_INT(fold(db, cus, 11, NULL), DUN_OK);
	CHECK_STR(linked_of(db, "cus_1", buf, sizeof buf), "acct_1");
	CHECK_STR(account_of(db, "p_subscriptions", "sub_1", buf, sizeof buf), "acct_1");
	/* Written after the link: the mirror's INSERT takes it. */
	CHECK_INT(fold(db, subscription_of("sub_2", "cus_1"), 12, NULL), DUN_OK);
	CHECK_STR(account_of(db, "p_subscriptions", "sub_2", buf, sizeof buf), "acct_1");
	cus = json_pack("{s:s, s:s, s:s}", "id", "cus_1", "object", "customer", "email",
			"a@example.org");
	CHECK_INT(fold(db, cus, 13, NULL), DUN_OK);
	CHECK_STR(linked_of(db, "cus_1", buf, sizeof buf), "acct_1");
	/* Linked by hand before the provider's customer arrives. */
	testdb_exec(db, "INSERT INTO customers(id, account_id) VALUES ('cus_9', 'acct_9')");
	cus = json_pack("{s:s, s:s}", "id", "cus_9", "object", "customer");
	CHECK_INT(fold(db, cus, 14, NULL), DUN_OK);
	CHECK_STR(linked_of(db, "cus_9", buf, sizeof buf), "acct_9");
	CHECK_STR(testdb_text(db,
			      "SELECT COALESCE(account_id, 'none') FROM p_customers"
			      " WHERE id = ?1",
			      "cus_9", buf, sizeof buf),
		  "none");
	/* Relinked, then unlinked. */
	testdb_exec(db, "UPDATE customers SET account_id = 'acct_2' WHERE id = 'cus_1'");
	CHECK_STR(linked_of(db, "cus_1", buf, sizeof buf), "acct_2");
	CHECK_INT(testdb_int(db, "SELECT COUNT(*) FROM p_subscriptions WHERE account_id = 'acct_2'",
			     NULL),
		  2);
	CHECK_STR(testdb_text(db, "SELECT account_id FROM p_customers WHERE id = ?1", "cus_1", buf,
			      sizeof buf),
		  "acct_1");
	testdb_exec(db, "DELETE FROM customers WHERE id = 'cus_1'");
	CHECK_STR(linked_of(db, "cus_1", buf, sizeof buf), "");
	CHECK_INT(
	    testdb_int(db, "SELECT COUNT(*) FROM p_subscriptions WHERE account_id <> ''", NULL), 0);
	dun_db_close(db);
}

/* libpq's message keeps its own words; only copies of the password go. */
static void test_password_scrubbed_from_messages(void)
{
	static const struct {
		const char *url, *msg;
		size_t size; /* of the message's buffer */
		const char *want;
	} cases[] = {
	    {"postgresql://u:p@127.0.0.1:1/x",
	     "connection to server at \"127.0.0.1\", port 1 failed", 64,
	     "connection to server at \"127.0.0.1\", port 1 failed"},
	    {"postgresql://u:s%zz@h/x", "invalid percent-encoded token: \"s%zz\"", 64,
	     "invalid percent-encoded token: \"***\""},
	    {"postgresql://u:pw@h/x?a=pw", "bad URI \"postgresql://u:pw@h/x?a=pw\"", 64,
	     "bad URI \"postgresql://u:***@h/x?a=pw\""},
	    /* A mask longer than the password cuts the end, never overflows. */
	    {"postgresql://u:p@host/x", "at :p@host", 12, "at :***@hos"},
	    {"postgresql://u@h/x", "no password here", 64, "no password here"},
	};
	for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
		char msg[64];
		snprintf(msg, cases[i].size, "%s", cases[i].msg);
		dun_db_scrub_password(cases[i].url, msg, cases[i].size);
		CHECK_STR(msg, cases[i].want);
	}
}

/* ---- transactions ---------------------------------------------------------- */

static int synchronous(struct dun_db *db)
{
	struct dun_stmt *st = dun_db_stmt(db, "PRAGMA synchronous");
	int v = dun_stmt_row(st) ? dun_stmt_col_int(st, 0) : -1;
	dun_stmt_reset(st);
	return v;
}

static int64_t count_settings(struct dun_db *db, const char *key)
{
	struct dun_stmt *st = dun_db_stmt(db, "SELECT COUNT(*) FROM settings WHERE key = ?1");
	dun_stmt_bind_text(st, 1, key);
	int64_t n = dun_stmt_row(st) ? dun_stmt_col_int64(st, 0) : -1;
	dun_stmt_reset(st);
	return n;
}

/*
 * An unsynced transaction (claims) commits without its own fsync
 * (synchronous NORMAL, 1) and the connection is back to FULL (2) once it
 * ended, committed or rolled back; what it committed is there for another
 * connection. A relaxed connection (OFF, 0) stays relaxed.
 */
static void test_unsynced_transaction(void)
{
	char path[512];
	db_path(path, sizeof path, "unsynced");
	struct dun_db *db = testdb_open(path);
	struct dun_db *other = testdb_open(path);
	CHECK_INT(synchronous(db), 2);
	CHECK_INT(dun_db_begin_unsynced(db), DUN_OK);
	CHECK_INT(synchronous(db), 1);
	CHECK_INT(dun_db_setting_set(db, "unsynced.a", "1"), DUN_OK);
	CHECK_INT(dun_db_commit(db), DUN_OK);
	CHECK_INT(synchronous(db), 2);
	CHECK_INT(count_settings(other, "unsynced.a"), 1);

	CHECK_INT(dun_db_begin_unsynced(db), DUN_OK);
	CHECK_INT(dun_db_setting_set(db, "unsynced.b", "1"), DUN_OK);
	dun_db_rollback(db);
	CHECK_INT(synchronous(db), 2);
	CHECK_INT(count_settings(other, "unsynced.b"), 0);

	/* Ordinary transactions are untouched. */
	CHECK_INT(dun_db_begin_concurrent(db), DUN_OK);
	CHECK_INT(synchronous(db), 2);
	dun_db_rollback(db);

	dun_db_relax_durability(db);
	CHECK_INT(synchronous(db), 0);
	CHECK_INT(dun_db_begin_unsynced(db), DUN_OK);
	CHECK_INT(dun_db_commit(db), DUN_OK);
	CHECK_INT(synchronous(db), 0);
	dun_db_close(other);
	dun_db_close(db);
}

int main(void)
{
	testdb_mkdir(scratch, sizeof scratch);
	test_fresh_file_is_migrated();
	test_reopen_is_a_noop();
	test_older_versions_are_migrated();
	test_inbox_rebuild_keeps_rows_and_ids();
	test_newer_schema_is_refused();
	test_not_a_database_is_refused();
	test_versions_out_of_order();
	test_invoice_shapes();
	test_charge_before_invoice();
	test_consolidated_list_is_joined();
	test_customer_registers_account();
	test_settled_charge_ends_processing();
	test_mirror_rows_follow_their_account();
	test_customer_triggers_use_the_key();
	test_provider_customers_follow_their_account();
	test_password_scrubbed_from_messages();
	test_unsynced_transaction();
	rmdir(scratch);
	return CHECK_DONE();
}
