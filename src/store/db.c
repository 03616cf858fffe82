/*
 * db.c — opening the engine's SQLite store, migrating it, and the helpers
 * every other module uses to talk to it (see db.h).
 *
 * Statements are prepared once per connection and cached by the address of
 * their SQL literal; the hot paths (gather, the drift scan, the inbox) run
 * the same few statements millions of times.
 */
#include "db.h"
#include "schema.h"
#include "util/mem.h"

#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define STMT_CACHE 128

struct dun_db {
	sqlite3 *h;
	char *path;
	struct {
		const char *sql;
		sqlite3_stmt *st;
	} cache[STMT_CACHE];
};

int dun_db_schema_latest(void)
{
	return dun_schema_count();
}

enum dun_err dun_db_err(int rc)
{
	switch (rc & 0xff) {
	case SQLITE_OK:
	case SQLITE_DONE:
	case SQLITE_ROW:
		return DUN_OK;
	case SQLITE_BUSY:
	case SQLITE_LOCKED:
		return DUN_E_BUSY;
	case SQLITE_CONSTRAINT:
		return DUN_E_CONFLICT;
	case SQLITE_NOTFOUND:
		return DUN_E_NOT_FOUND;
	case SQLITE_TOOBIG:
		return DUN_E_TOO_BIG;
	case SQLITE_IOERR:
	case SQLITE_FULL:
	case SQLITE_CANTOPEN:
		return DUN_E_IO;
	default:
		return DUN_E_STORE;
	}
}

__attribute__((format(printf, 3, 4))) static void set_err(char *err, size_t n, const char *fmt, ...)
{
	if (!err || !n)
		return;
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(err, n, fmt, ap);
	va_end(ap);
}

sqlite3 *dun_db_handle(struct dun_db *db)
{
	return db->h;
}

const char *dun_db_path(const struct dun_db *db)
{
	return db->path;
}

int dun_db_schema_version(struct dun_db *db)
{
	sqlite3_stmt *st = dun_db_stmt(db, "PRAGMA user_version");
	int v = -1;
	if (sqlite3_step(st) == SQLITE_ROW)
		v = sqlite3_column_int(st, 0);
	sqlite3_reset(st);
	return v;
}

enum dun_err dun_db_exec(struct dun_db *db, const char *sql, char *err, size_t err_size)
{
	char *msg = NULL;
	int rc = sqlite3_exec(db->h, sql, NULL, NULL, &msg);
	if (rc != SQLITE_OK) {
		set_err(err, err_size, "%s: %s", db->path, msg ? msg : sqlite3_errstr(rc));
		sqlite3_free(msg);
		return dun_db_err(rc);
	}
	return DUN_OK;
}

static enum dun_err migrate(struct dun_db *db, bool apply, char *err, size_t err_size)
{
	int have = dun_db_schema_version(db);
	int want = dun_schema_count();
	if (have > want) {
		if (err && err_size)
			snprintf(err, err_size,
				 "%s: schema version %d is newer than this binary (%d); "
				 "upgrade dunning",
				 db->path, have, want);
		return DUN_E_SCHEMA;
	}
	if (!apply || have == want)
		return DUN_OK;
	for (int m = have; m < want; m++) {
		enum dun_err e = dun_db_begin(db);
		if (e != DUN_OK) {
			set_err(err, err_size, "%s: cannot begin migration: %s", db->path,
				sqlite3_errmsg(db->h));
			return e;
		}
		for (const char *const *s = dun_schema_migration(m); *s; s++) {
			e = dun_db_exec(db, *s, err, err_size);
			if (e != DUN_OK) {
				dun_db_rollback(db);
				return e;
			}
		}
		char pragma[64];
		snprintf(pragma, sizeof pragma, "PRAGMA user_version = %d", m + 1);
		e = dun_db_exec(db, pragma, err, err_size);
		if (e == DUN_OK)
			e = dun_db_commit(db);
		if (e != DUN_OK) {
			dun_db_rollback(db);
			return e;
		}
	}
	return DUN_OK;
}

static enum dun_err open_db(const char *path, bool apply, struct dun_db **out, char *err,
			    size_t err_size)
{
	*out = NULL;
	struct dun_db *db = dun_calloc(1, sizeof *db);
	db->path = dun_strdup(path);
	int rc = sqlite3_open_v2(
	    path, &db->h, SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_NOMUTEX, NULL);
	if (rc != SQLITE_OK) {
		set_err(err, err_size, "%s: cannot open database: %s", path,
			db->h ? sqlite3_errmsg(db->h) : sqlite3_errstr(rc));
		dun_db_close(db);
		return DUN_E_IO;
	}
	sqlite3_busy_timeout(db->h, 10000);
	sqlite3_extended_result_codes(db->h, 1);
	/* Refuse files that are not SQLite databases with a clear message. */
	enum dun_err e = dun_db_exec(db, "PRAGMA journal_mode=WAL", err, err_size);
	if (e == DUN_OK)
		e = dun_db_exec(db,
				"PRAGMA synchronous=FULL; PRAGMA foreign_keys=OFF;"
				" PRAGMA cache_size=-16000; PRAGMA temp_store=MEMORY",
				err, err_size);
	if (e == DUN_OK)
		e = migrate(db, apply, err, err_size);
	if (e != DUN_OK) {
		dun_db_close(db);
		return e;
	}
	*out = db;
	return DUN_OK;
}

enum dun_err dun_db_open(const char *path, struct dun_db **out, char *err, size_t err_size)
{
	return open_db(path, true, out, err, err_size);
}

enum dun_err dun_db_open_nomigrate(const char *path, struct dun_db **out, char *err,
				   size_t err_size)
{
	return open_db(path, false, out, err, err_size);
}

void dun_db_close(struct dun_db *db)
{
	if (!db)
		return;
	for (int i = 0; i < STMT_CACHE; i++)
		if (db->cache[i].st)
			sqlite3_finalize(db->cache[i].st);
	if (db->h)
		sqlite3_close_v2(db->h);
	free(db->path);
	free(db);
}

sqlite3_stmt *dun_db_stmt(struct dun_db *db, const char *sql)
{
	uintptr_t h = (uintptr_t)sql;
	h ^= h >> 7;
	size_t i = (size_t)(h % STMT_CACHE);
	for (size_t probe = 0; probe < STMT_CACHE; probe++, i = (i + 1) % STMT_CACHE) {
		if (db->cache[i].sql == sql) {
			sqlite3_reset(db->cache[i].st);
			sqlite3_clear_bindings(db->cache[i].st);
			return db->cache[i].st;
		}
		if (!db->cache[i].sql)
			break;
	}
	sqlite3_stmt *st = NULL;
	int rc = sqlite3_prepare_v3(db->h, sql, -1, SQLITE_PREPARE_PERSISTENT, &st, NULL);
	if (rc != SQLITE_OK) {
		fprintf(stderr, "dunning: internal error preparing SQL: %s\n  %s\n",
			sqlite3_errmsg(db->h), sql);
		abort();
	}
	if (!db->cache[i].sql) {
		db->cache[i].sql = sql;
		db->cache[i].st = st;
		return st;
	}
	/* Cache full: extremely unlikely with a fixed set of literals. */
	fprintf(stderr, "dunning: internal error: statement cache full\n");
	abort();
}

enum dun_err dun_db_begin(struct dun_db *db)
{
	return dun_db_err(sqlite3_exec(db->h, "BEGIN IMMEDIATE", NULL, NULL, NULL));
}

enum dun_err dun_db_commit(struct dun_db *db)
{
	return dun_db_err(sqlite3_exec(db->h, "COMMIT", NULL, NULL, NULL));
}

void dun_db_rollback(struct dun_db *db)
{
	if (!sqlite3_get_autocommit(db->h))
		sqlite3_exec(db->h, "ROLLBACK", NULL, NULL, NULL);
}

enum dun_err dun_db_step_done(sqlite3_stmt *st)
{
	int rc = sqlite3_step(st);
	enum dun_err e = (rc == SQLITE_DONE || rc == SQLITE_ROW) ? DUN_OK : dun_db_err(rc);
	sqlite3_reset(st);
	return e;
}

enum dun_err dun_db_setting_get(struct dun_db *db, const char *key, char *out, size_t out_size,
				bool *found)
{
	sqlite3_stmt *st = dun_db_stmt(db, "SELECT value FROM settings WHERE key = ?1");
	sqlite3_bind_text(st, 1, key, -1, SQLITE_STATIC);
	int rc = sqlite3_step(st);
	*found = rc == SQLITE_ROW;
	if (*found)
		dun_db_col_text(st, 0, out, out_size);
	sqlite3_reset(st);
	return (rc == SQLITE_ROW || rc == SQLITE_DONE) ? DUN_OK : dun_db_err(rc);
}

enum dun_err dun_db_setting_set(struct dun_db *db, const char *key, const char *value)
{
	sqlite3_stmt *st =
	    dun_db_stmt(db, "INSERT INTO settings(key, value) VALUES (?1, ?2)"
			    " ON CONFLICT(key) DO UPDATE SET value = excluded.value");
	sqlite3_bind_text(st, 1, key, -1, SQLITE_STATIC);
	sqlite3_bind_text(st, 2, value, -1, SQLITE_STATIC);
	return dun_db_step_done(st);
}

void dun_db_bind_text(sqlite3_stmt *st, int idx, const char *s)
{
	if (s)
		sqlite3_bind_text(st, idx, s, -1, SQLITE_TRANSIENT);
	else
		sqlite3_bind_null(st, idx);
}

void dun_db_col_text(sqlite3_stmt *st, int col, char *out, size_t out_size)
{
	const unsigned char *t = sqlite3_column_text(st, col);
	if (!out_size)
		return;
	if (!t) {
		out[0] = '\0';
		return;
	}
	size_t n = (size_t)sqlite3_column_bytes(st, col);
	if (n >= out_size)
		n = out_size - 1;
	memcpy(out, t, n);
	out[n] = '\0';
}
