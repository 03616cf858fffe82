/*
 * testdb.h — helpers the store, inbox and applier unit tests share: a
 * scratch directory for database files, and one-value SQL queries so a
 * test can assert on what landed in a table without a statement dance.
 *
 * Header-only (static functions): each test binary includes it once.
 */
#ifndef DUN_TESTDB_H
#define DUN_TESTDB_H

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "check.h"
#include "store/db.h"

/*
 * A fresh scratch directory (under $TMPDIR or /tmp); the path is written to
 * dir (at least 256 bytes). Aborts when none can be made: the test could
 * not run at all.
 */
static inline void testdb_mkdir(char *dir, size_t size)
{
	const char *base = getenv("TMPDIR");
	snprintf(dir, size, "%s/dunning-unit-XXXXXX", base && base[0] ? base : "/tmp");
	if (!mkdtemp(dir)) {
		perror("mkdtemp");
		abort();
	}
}

/* Remove a database file with its WAL and shared-memory companions. */
static inline void testdb_unlink(const char *path)
{
	static const char *const suffix[] = {"", "-wal", "-shm", "-journal"};
	for (size_t i = 0; i < sizeof suffix / sizeof suffix[0]; i++) {
		char p[512];
		snprintf(p, sizeof p, "%s%s", path, suffix[i]);
		unlink(p);
	}
}

/* Open (and migrate) the database at path; aborts the test binary on failure. */
static inline struct dun_db *testdb_open(const char *path)
{
	struct dun_db *db = NULL;
	char err[512] = "";
	enum dun_err e = dun_db_open(path, &db, err, sizeof err);
	if (e != DUN_OK) {
		fprintf(stderr, "cannot open %s: %s\n", path, err);
		abort();
	}
	return db;
}

/*
 * Turn writes on (rollout active at 100%): a new database observes and
 * writes nothing, and the tests of the applier need it to write.
 */
static inline void testdb_writes_on(struct dun_db *db)
{
	if (dun_db_setting_set(db, "mode", "active") != DUN_OK ||
	    dun_db_setting_set(db, "rollout.percent", "100") != DUN_OK) {
		fprintf(stderr, "cannot turn writes on\n");
		abort();
	}
}

/*
 * The first column of the first row of sql (with an optional text
 * parameter ?1) as an integer; -1 when there is no row. sql may be any
 * string: it is prepared each time, not cached.
 */
static inline int64_t testdb_int(struct dun_db *db, const char *sql, const char *arg)
{
	struct dun_stmt *st = NULL;
	if (dun_db_prepare(db, sql, &st) != DUN_OK) {
		CHECK_FAIL_AT("cannot prepare \"%s\": %s", sql, dun_db_errmsg(db));
		return -1;
	}
	if (arg)
		dun_stmt_bind_text_copy(st, 1, arg);
	int64_t v = -1;
	if (dun_stmt_row(st))
		v = dun_stmt_col_int64(st, 0);
	dun_stmt_finalize(st);
	return v;
}

/* The same as testdb_int for a text column, copied into out ("" when no row or NULL). */
static inline const char *testdb_text(struct dun_db *db, const char *sql, const char *arg,
				      char *out, size_t size)
{
	struct dun_stmt *st = NULL;
	out[0] = '\0';
	if (dun_db_prepare(db, sql, &st) != DUN_OK) {
		CHECK_FAIL_AT("cannot prepare \"%s\": %s", sql, dun_db_errmsg(db));
		return out;
	}
	if (arg)
		dun_stmt_bind_text_copy(st, 1, arg);
	if (dun_stmt_row(st) && dun_stmt_col_text(st, 0))
		snprintf(out, size, "%s", dun_stmt_col_text(st, 0));
	dun_stmt_finalize(st);
	return out;
}

/* Run sql (no results) or fail the check. */
static inline void testdb_exec(struct dun_db *db, const char *sql)
{
	char msg[512] = "";
	if (dun_db_exec(db, sql, msg, sizeof msg) != DUN_OK)
		CHECK_FAIL_AT("\"%s\": %s", sql, msg[0] ? msg : "?");
}

#endif
