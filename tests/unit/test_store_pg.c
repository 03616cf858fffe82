/*
 * test_store_pg.c — what the store seam does on a real PostgreSQL that the
 * SQLite unit tests cannot show: dun_db_pipeline's pipeline.
 *
 * Needs a database: DUNNING_TEST_PG_URL names an empty one (the integration
 * suite's throwaway cluster makes it, tests/integration/test_postgres.py),
 * and DUNNING_TEST_PG_COPY_URL a second one for dun_store_copy's check.
 * Without it the binary skips (exit 77), so `meson test` stays runnable
 * anywhere.
 */
#include "check.h"
#include "store/copy.h"
#include "store/db.h"
#include "store/schema.h"

#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static struct dun_db *open_or_die(const char *url)
{
	struct dun_db *db = NULL;
	char err[512];
	if (dun_db_open(url, &db, err, sizeof err) != DUN_OK) {
		fprintf(stderr, "cannot open the test database: %s\n", err);
		exit(2);
	}
	return db;
}

/* All rows of st, as "a|b;" per row of its first two columns. */
static void rows_of(struct dun_stmt *st, char *out, size_t n)
{
	out[0] = '\0';
	size_t len = 0;
	while (dun_stmt_row(st) && len < n)
		len += (size_t)snprintf(out + len, n - len, "%s|%s;",
					dun_stmt_col_text(st, 0) ? dun_stmt_col_text(st, 0) : "-",
					dun_stmt_col_count(st) > 1 && dun_stmt_col_text(st, 1)
					    ? dun_stmt_col_text(st, 1)
					    : "-");
	CHECK_INT(dun_stmt_err(st), DUN_OK);
	dun_stmt_reset(st);
}

static const char SQL_MANY[] = "SELECT key, value FROM settings WHERE key LIKE ?1 ORDER BY key";
static const char SQL_ONE[] = "SELECT value, key FROM settings WHERE key = ?1";
static const char SQL_DIV[] = "SELECT 10 / ?1, 'x'";
static const char SQL_NONE[] = "SELECT key, value FROM settings WHERE key = 'absent'";

/* Stepped after a pipeline, in any order, each gives what it gives alone. */
static void test_pipeline_gives_the_same_rows(struct dun_db *db, bool in_tx)
{
	if (in_tx)
		CHECK_INT(dun_db_begin_concurrent(db), DUN_OK);
	char alone[3][256], together[3][256];
	for (int round = 0; round < 2; round++) {
		struct dun_stmt *a = dun_db_stmt(db, SQL_MANY);
		dun_stmt_bind_text(a, 1, "t.%");
		struct dun_stmt *b = dun_db_stmt(db, SQL_ONE);
		dun_stmt_bind_text(b, 1, "t.b");
		struct dun_stmt *c = dun_db_stmt(db, SQL_NONE);
		char(*out)[256] = round ? together : alone;
		if (round) {
			struct dun_stmt *const all[] = {a, b, c};
			CHECK_INT(dun_db_pipeline(db, all, 3), DUN_OK);
		}
		/* The last one first: the results wait for their steps. */
		rows_of(c, out[2], sizeof out[2]);
		rows_of(a, out[0], sizeof out[0]);
		rows_of(b, out[1], sizeof out[1]);
	}
	CHECK_STR(alone[0], "t.a|1;t.b|2;t.c|3;");
	for (int i = 0; i < 3; i++)
		CHECK_STR(together[i], alone[i]);
	if (in_tx)
		CHECK_INT(dun_db_commit(db), DUN_OK);
}

/*
 * A statement the server fails: its error comes back, the ones before it
 * keep their rows, the one after did not run (a step runs it: outside a
 * transaction it then gives its rows), and the connection goes on.
 */
static void test_pipeline_reports_the_first_failure(struct dun_db *db, bool in_tx)
{
	if (in_tx)
		CHECK_INT(dun_db_begin_concurrent(db), DUN_OK);
	struct dun_stmt *a = dun_db_stmt(db, SQL_ONE);
	dun_stmt_bind_text(a, 1, "t.a");
	struct dun_stmt *bad = dun_db_stmt(db, SQL_DIV);
	dun_stmt_bind_int(bad, 1, 0);
	/* The same literal again would be the same statement: another one. */
	struct dun_stmt *c =
	    dun_db_stmt(db, "SELECT value, key FROM settings WHERE key = ?1 AND 1 = 1");
	dun_stmt_bind_text(c, 1, "t.c");
	struct dun_stmt *const all[] = {a, bad, c};
	enum dun_err e = dun_db_pipeline(db, all, 3);
	CHECK(e != DUN_OK);
	CHECK(e != DUN_E_IO);
	CHECK(strstr(dun_db_errmsg(db), "division by zero") != NULL);
	char got[256];
	rows_of(a, got, sizeof got);
	CHECK_STR(got, "1|t.a;");
	if (in_tx) {
		dun_db_rollback(db);
	} else {
		rows_of(c, got, sizeof got);
		CHECK_STR(got, "3|t.c;");
	}
	/* The connection is out of pipeline mode and usable. */
	struct dun_stmt *d = dun_db_stmt(db, SQL_ONE);
	dun_stmt_bind_text(d, 1, "t.b");
	rows_of(d, got, sizeof got);
	CHECK_STR(got, "2|t.b;");
}

/*
 * The connection is cut before a pipeline: nothing is reported by the
 * pipeline itself; the steps meet the loss, reconnect (outside a
 * transaction) and give their rows.
 */
static void test_pipeline_after_a_lost_connection(struct dun_db *db, const char *url)
{
	struct dun_db *killer = open_or_die(url);
	struct dun_stmt *pid = dun_db_stmt(db, "SELECT pg_backend_pid(), 'x'");
	CHECK(dun_stmt_row(pid));
	int64_t backend = dun_stmt_col_int64(pid, 0);
	dun_stmt_reset(pid);
	struct dun_stmt *k =
	    dun_db_stmt(killer, "SELECT pg_terminate_backend(CAST(?1 AS integer))");
	dun_stmt_bind_int64(k, 1, backend);
	CHECK(dun_stmt_row(k));
	dun_stmt_reset(k);
	dun_db_close(killer);

	struct dun_stmt *a = dun_db_stmt(db, SQL_ONE);
	dun_stmt_bind_text(a, 1, "t.a");
	struct dun_stmt *b = dun_db_stmt(db, SQL_MANY);
	dun_stmt_bind_text(b, 1, "t.%");
	struct dun_stmt *const all[] = {a, b};
	CHECK_INT(dun_db_pipeline(db, all, 2), DUN_OK);
	char got[256];
	rows_of(a, got, sizeof got);
	CHECK_STR(got, "1|t.a;");
	rows_of(b, got, sizeof got);
	CHECK_STR(got, "t.a|1;t.b|2;t.c|3;");
}

/*
 * Writes in a pipeline, inside a transaction: each step returns its own
 * result and dun_db_changes() after it that statement's count; an INSERT's
 * RETURNING row is there to step.
 */
static void test_pipeline_of_writes(struct dun_db *db)
{
	CHECK_INT(dun_db_begin_concurrent(db), DUN_OK);
	struct dun_stmt *two = dun_db_stmt(db, "UPDATE settings SET value = value || 'x'"
					       " WHERE key IN ('t.a', 't.b')");
	struct dun_stmt *none = dun_db_stmt(db, "UPDATE settings SET value = 'y'"
						" WHERE key = 'absent'");
	struct dun_stmt *ins = dun_db_stmt(db, "INSERT INTO settings(key, value)"
					       " VALUES (?1, ?2) RETURNING value");
	dun_stmt_bind_text(ins, 1, "t.d");
	dun_stmt_bind_text(ins, 2, "4");
	struct dun_stmt *const all[] = {two, none, ins};
	CHECK_INT(dun_db_pipeline(db, all, 3), DUN_OK);
	CHECK_INT(dun_stmt_done(two), DUN_OK);
	CHECK_INT(dun_db_changes(db), 2);
	CHECK_INT(dun_stmt_done(none), DUN_OK);
	CHECK_INT(dun_db_changes(db), 0);
	CHECK(dun_stmt_row(ins));
	CHECK_STR(dun_stmt_col_text(ins, 0), "4");
	dun_stmt_reset(ins);
	dun_db_rollback(db);
	char got[256];
	struct dun_stmt *a = dun_db_stmt(db, SQL_MANY);
	dun_stmt_bind_text(a, 1, "t.%");
	rows_of(a, got, sizeof got);
	CHECK_STR(got, "t.a|1;t.b|2;t.c|3;");
}

static void show_sync(struct dun_db *db, char *out, size_t size)
{
	struct dun_stmt *st = dun_db_stmt(db, "SHOW synchronous_commit");
	snprintf(out, size, "%s", dun_stmt_row(st) ? dun_stmt_col_text(st, 0) : "?");
	dun_stmt_reset(st);
}

/*
 * An unsynced transaction (claims) runs with synchronous_commit off, and
 * only it: the setting is back once it ended, committed or rolled back, and
 * what it committed is there.
 */
static void test_unsynced_transaction(struct dun_db *db)
{
	char got[64];
	show_sync(db, got, sizeof got);
	CHECK_STR(got, "on");
	CHECK_INT(dun_db_begin_unsynced(db), DUN_OK);
	show_sync(db, got, sizeof got);
	CHECK_STR(got, "off");
	CHECK_INT(dun_db_setting_set(db, "t.unsynced", "1"), DUN_OK);
	CHECK_INT(dun_db_commit(db), DUN_OK);
	show_sync(db, got, sizeof got);
	CHECK_STR(got, "on");
	CHECK_INT(dun_db_begin_unsynced(db), DUN_OK);
	dun_db_rollback(db);
	show_sync(db, got, sizeof got);
	CHECK_STR(got, "on");
	CHECK_INT(dun_db_begin_concurrent(db), DUN_OK);
	show_sync(db, got, sizeof got);
	CHECK_STR(got, "on");
	dun_db_rollback(db);
	struct dun_stmt *st =
	    dun_db_stmt(db, "SELECT value FROM settings WHERE key = 't.unsynced'");
	CHECK(dun_stmt_row(st));
	CHECK_STR(dun_stmt_col_text(st, 0), "1");
	dun_stmt_reset(st);
	struct dun_stmt *del = dun_db_stmt(db, "DELETE FROM settings WHERE key = 't.unsynced'");
	CHECK_INT(dun_stmt_done(del), DUN_OK);
}

/* What dun_store_copy's check saw, and what it answers. */
struct copy_check {
	int calls;
	long long rows_seen;
	enum dun_err answer;
};

static enum dun_err check_copy(struct dun_db *from, struct dun_db *to, void *arg, char *err,
			       size_t err_size)
{
	(void)from;
	struct copy_check *c = arg;
	c->calls++;
	struct dun_stmt *st = dun_db_stmt(to, "SELECT count(*) FROM settings WHERE key = 't.copy'");
	c->rows_seen = dun_stmt_row(st) ? (long long)dun_stmt_col_int64(st, 0) : -1;
	dun_stmt_reset(st);
	if (c->answer != DUN_OK)
		snprintf(err, err_size, "refused by the test");
	return c->answer;
}

/*
 * The caller's check runs once, inside the copy's transaction (it sees the
 * copied rows), and decides: refused, the target stays without a schema;
 * passed, the copy is committed.
 */
static void test_copy_check_decides_the_commit(const char *url)
{
	char dir[] = "/tmp/dunning-test-copy-XXXXXX";
	CHECK(mkdtemp(dir) != NULL);
	char file[sizeof dir + 16];
	snprintf(file, sizeof file, "%s/src.db", dir);
	struct dun_db *src = open_or_die(file);
	CHECK_INT(dun_db_setting_set(src, "t.copy", "1"), DUN_OK);
	dun_db_close(src);

	struct copy_check c = {.answer = DUN_E_GUARD};
	struct dun_copy_report r;
	char err[1024] = "";
	CHECK_INT(dun_store_copy(file, url, check_copy, &c, &r, err, sizeof err), DUN_E_GUARD);
	dun_copy_report_free(&r);
	CHECK_INT(c.calls, 1);
	CHECK_INT(c.rows_seen, 1);
	CHECK(strstr(err, "refused by the test") != NULL);
	struct dun_db *dst = NULL;
	CHECK_INT(dun_db_open_nomigrate(url, &dst, err, sizeof err), DUN_OK);
	CHECK_INT(dun_db_schema_version(dst), 0);
	dun_db_close(dst);

	c = (struct copy_check){.answer = DUN_OK};
	CHECK_INT(dun_store_copy(file, url, check_copy, &c, &r, err, sizeof err), DUN_OK);
	CHECK(r.verified);
	dun_copy_report_free(&r);
	CHECK_INT(c.calls, 1);
	CHECK_INT(c.rows_seen, 1);
	dst = open_or_die(url);
	CHECK_INT(dun_db_schema_version(dst), dun_schema_count());
	char v[16] = "";
	bool found = false;
	CHECK_INT(dun_db_setting_get(dst, "t.copy", v, sizeof v, &found), DUN_OK);
	CHECK(found);
	CHECK_STR(v, "1");
	dun_db_close(dst);
	unlink(file);
	char side[sizeof file + 8];
	snprintf(side, sizeof side, "%s-wal", file);
	unlink(side);
	snprintf(side, sizeof side, "%s-shm", file);
	unlink(side);
	rmdir(dir);
}

int main(void)
{
	const char *url = getenv("DUNNING_TEST_PG_URL");
	if (!url || !*url) {
		printf("DUNNING_TEST_PG_URL is not set: skipped\n");
		return 77;
	}
	struct dun_db *db = open_or_die(url);
	CHECK_INT(dun_db_setting_set(db, "t.a", "1"), DUN_OK);
	CHECK_INT(dun_db_setting_set(db, "t.b", "2"), DUN_OK);
	CHECK_INT(dun_db_setting_set(db, "t.c", "3"), DUN_OK);

	test_pipeline_gives_the_same_rows(db, false);
	test_pipeline_gives_the_same_rows(db, true);
	test_pipeline_reports_the_first_failure(db, false);
	test_pipeline_reports_the_first_failure(db, true);
	test_pipeline_of_writes(db);
	test_unsynced_transaction(db);
	test_pipeline_after_a_lost_connection(db, url);
	dun_db_close(db);
	const char *copy_url = getenv("DUNNING_TEST_PG_COPY_URL");
	if (copy_url && *copy_url)
		test_copy_check_decides_the_commit(copy_url);
	else
		printf("DUNNING_TEST_PG_COPY_URL is not set: the copy's check not tested\n");
	return CHECK_DONE();
}
