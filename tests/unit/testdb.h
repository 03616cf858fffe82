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

#include <sqlite3.h>

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
	sqlite3_stmt *st = NULL;
	if (sqlite3_prepare_v2(dun_db_handle(db), sql, -1, &st, NULL) != SQLITE_OK) {
		CHECK_FAIL_AT("cannot prepare \"%s\": %s", sql, sqlite3_errmsg(dun_db_handle(db)));
		return -1;
	}
	if (arg)
		sqlite3_bind_text(st, 1, arg, -1, SQLITE_TRANSIENT);
	int64_t v = -1;
	if (sqlite3_step(st) == SQLITE_ROW)
		v = sqlite3_column_int64(st, 0);
	sqlite3_finalize(st);
	return v;
}

/* The same as testdb_int for a text column, copied into out ("" when no row or NULL). */
static inline const char *testdb_text(struct dun_db *db, const char *sql, const char *arg,
				      char *out, size_t size)
{
	sqlite3_stmt *st = NULL;
	out[0] = '\0';
	if (sqlite3_prepare_v2(dun_db_handle(db), sql, -1, &st, NULL) != SQLITE_OK) {
		CHECK_FAIL_AT("cannot prepare \"%s\": %s", sql, sqlite3_errmsg(dun_db_handle(db)));
		return out;
	}
	if (arg)
		sqlite3_bind_text(st, 1, arg, -1, SQLITE_TRANSIENT);
	if (sqlite3_step(st) == SQLITE_ROW && sqlite3_column_text(st, 0))
		snprintf(out, size, "%s", (const char *)sqlite3_column_text(st, 0));
	sqlite3_finalize(st);
	return out;
}

/* Run sql (no results) or fail the check. */
static inline void testdb_exec(struct dun_db *db, const char *sql)
{
	char *msg = NULL;
	if (sqlite3_exec(dun_db_handle(db), sql, NULL, NULL, &msg) != SQLITE_OK) {
		CHECK_FAIL_AT("\"%s\": %s", sql, msg ? msg : "?");
		sqlite3_free(msg);
	}
}

#endif
