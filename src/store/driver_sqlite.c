/*
 * driver_sqlite.c — the SQLite backend of the store seam, the embedded
 * default: one database file, opened in WAL mode with synchronous=FULL.
 *
 * It sits under db.c and is the only file of the engine (with the other
 * drivers) that calls SQLite. SQLite result codes are mapped here, once,
 * into enum dun_err. A busy timeout makes a CLI next to `dunning serve`
 * wait for the write lock instead of failing; the service asks for a
 * finer-grained wait (dun_db_busy_fine).
 */
#include "driver.h"
#include "util/mem.h"

#include <sqlite3.h>
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

struct sqlite_stmt {
	struct dun_stmt base;
	sqlite3_stmt *h;
};

static sqlite3 *conn(struct dun_db *db)
{
	return db->conn;
}

static sqlite3_stmt *handle(struct dun_stmt *st)
{
	return ((struct sqlite_stmt *)st)->h;
}

static enum dun_err map_rc(int rc)
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
	case SQLITE_READONLY:
		return DUN_E_IO;
	case SQLITE_CORRUPT:
	case SQLITE_NOTADB:
		return DUN_E_CORRUPT;
	default:
		return DUN_E_STORE;
	}
}

/* Whether path names a file on disk (not ":memory:", "" or a file: URI). */
static bool is_plain_file(const char *path)
{
	return path[0] && strcmp(path, ":memory:") != 0 && strncmp(path, "file:", 5) != 0;
}

static enum dun_err sq_open(struct dun_db *db, const char *path, char *err, size_t err_size)
{
	int flags = SQLITE_OPEN_NOMUTEX;
	switch (db->access) {
	case DUN_DB_CREATE:
		flags |= SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE;
		break;
	case DUN_DB_EXISTING:
		flags |= SQLITE_OPEN_READWRITE;
		break;
	case DUN_DB_READONLY:
		flags |= SQLITE_OPEN_READONLY;
		break;
	}
	bool ro = db->access == DUN_DB_READONLY;
	sqlite3 *h = NULL;
	int rc = sqlite3_open_v2(path, &h, flags, NULL);
	/* SQLite opens lazily: a read shows whether the file can be read. */
	if (rc == SQLITE_OK && ro)
		rc = sqlite3_exec(h, "SELECT count(*) FROM sqlite_schema", NULL, NULL, NULL);
	if (rc != SQLITE_OK && ro && is_plain_file(path) && !strpbrk(path, "?#%")) {
		/*
		 * Reading a WAL database needs its -shm file; on a read-only
		 * directory it cannot be created. When there is no -wal file
		 * either, no connection has the database open and the file
		 * is complete: read it as immutable.
		 */
		char wal[4200];
		struct stat sb;
		snprintf(wal, sizeof wal, "%s-wal", path);
		if (stat(wal, &sb) != 0 && errno == ENOENT) {
			sqlite3_close_v2(h);
			h = NULL;
			char *uri = sqlite3_mprintf("file:%s?immutable=1", path);
			if (!uri)
				dun_oom();
			rc = sqlite3_open_v2(uri, &h, flags | SQLITE_OPEN_URI, NULL);
			sqlite3_free(uri);
			if (rc == SQLITE_OK)
				rc = sqlite3_exec(h, "SELECT count(*) FROM sqlite_schema", NULL,
						  NULL, NULL);
		}
	}
	if (rc != SQLITE_OK) {
		dun_store_set_err(err, err_size, "%s: cannot open database: %s", path,
				  h ? sqlite3_errmsg(h) : sqlite3_errstr(rc));
		if (h)
			sqlite3_close_v2(h);
		enum dun_err e = map_rc(rc);
		return e == DUN_OK ? DUN_E_IO : e;
	}
	db->conn = h;
	sqlite3_busy_timeout(h, 10000);
	sqlite3_extended_result_codes(h, 1);
	return DUN_OK;
}

static void sq_close(struct dun_db *db)
{
	if (db->conn)
		sqlite3_close_v2(conn(db));
	db->conn = NULL;
}

static enum dun_err sq_exec(struct dun_db *db, const char *sql, char *err, size_t err_size)
{
	char *msg = NULL;
	int rc = sqlite3_exec(conn(db), sql, NULL, NULL, &msg);
	if (rc != SQLITE_OK) {
		dun_store_set_err(err, err_size, "%s: %s", db->path,
				  msg ? msg : sqlite3_errstr(rc));
		sqlite3_free(msg);
		return map_rc(rc);
	}
	return DUN_OK;
}

static enum dun_err sq_configure(struct dun_db *db, char *err, size_t err_size)
{
	/*
	 * The first statement refuses a file that is not a SQLite database. A
	 * read-only connection cannot set the journal mode (a write); it reads
	 * the file as it is.
	 */
	enum dun_err e = db->access == DUN_DB_READONLY
			     ? sq_exec(db, "SELECT count(*) FROM sqlite_schema", err, err_size)
			     : sq_exec(db, "PRAGMA journal_mode=WAL", err, err_size);
	if (e == DUN_E_IO && db->access != DUN_DB_READONLY && is_plain_file(db->path) && err &&
	    err_size) {
		size_t n = strlen(err);
		snprintf(err + n, err_size - n,
			 " (this command writes: are the file and its directory writable?)");
	}
	if (e == DUN_OK)
		e = sq_exec(db,
			    "PRAGMA synchronous=FULL; PRAGMA foreign_keys=OFF;"
			    " PRAGMA cache_size=-16000; PRAGMA temp_store=MEMORY",
			    err, err_size);
	return e;
}

static enum dun_err sq_prepare(struct dun_db *db, const char *sql, bool persistent,
			       struct dun_stmt **out)
{
	*out = NULL;
	sqlite3_stmt *h = NULL;
	int rc = sqlite3_prepare_v3(conn(db), sql, -1, persistent ? SQLITE_PREPARE_PERSISTENT : 0,
				    &h, NULL);
	if (rc != SQLITE_OK)
		return map_rc(rc);
	if (!h) /* empty SQL */
		return DUN_E_INVALID;
	struct sqlite_stmt *s = dun_calloc(1, sizeof *s);
	s->base.db = db;
	s->h = h;
	*out = &s->base;
	return DUN_OK;
}

static void sq_finalize(struct dun_stmt *st)
{
	sqlite3_finalize(handle(st));
	free(st);
}

static void sq_reset(struct dun_stmt *st)
{
	sqlite3_reset(handle(st));
}

static void sq_clear(struct dun_stmt *st)
{
	sqlite3_reset(handle(st));
	sqlite3_clear_bindings(handle(st));
}

static void sq_bind_text(struct dun_stmt *st, int idx, const char *s, int len, bool copy)
{
	if (s)
		sqlite3_bind_text(handle(st), idx, s, len, copy ? SQLITE_TRANSIENT : SQLITE_STATIC);
	else
		sqlite3_bind_null(handle(st), idx);
}

static void sq_bind_int64(struct dun_stmt *st, int idx, int64_t v)
{
	sqlite3_bind_int64(handle(st), idx, v);
}

static void sq_bind_double(struct dun_stmt *st, int idx, double v)
{
	sqlite3_bind_double(handle(st), idx, v);
}

static void sq_bind_null(struct dun_stmt *st, int idx)
{
	sqlite3_bind_null(handle(st), idx);
}

static int sq_param_count(struct dun_stmt *st)
{
	return sqlite3_bind_parameter_count(handle(st));
}

static enum dun_step sq_step(struct dun_stmt *st)
{
	int rc = sqlite3_step(handle(st));
	if (rc == SQLITE_ROW)
		return DUN_STEP_ROW;
	if (rc == SQLITE_DONE)
		return DUN_STEP_DONE;
	st->err = map_rc(rc);
	if (st->err == DUN_OK)
		st->err = DUN_E_STORE;
	return DUN_STEP_FAILED;
}

static int64_t sq_col_int64(struct dun_stmt *st, int col)
{
	return sqlite3_column_int64(handle(st), col);
}

static double sq_col_double(struct dun_stmt *st, int col)
{
	return sqlite3_column_double(handle(st), col);
}

static const char *sq_col_text(struct dun_stmt *st, int col)
{
	return (const char *)sqlite3_column_text(handle(st), col);
}

static int sq_col_bytes(struct dun_stmt *st, int col)
{
	return sqlite3_column_bytes(handle(st), col);
}

static enum dun_col_type sq_col_type(struct dun_stmt *st, int col)
{
	switch (sqlite3_column_type(handle(st), col)) {
	case SQLITE_INTEGER:
		return DUN_COL_INT;
	case SQLITE_FLOAT:
		return DUN_COL_FLOAT;
	case SQLITE_TEXT:
		return DUN_COL_TEXT;
	case SQLITE_BLOB:
		return DUN_COL_BLOB;
	default:
		return DUN_COL_NULL;
	}
}

static int sq_col_count(struct dun_stmt *st)
{
	return sqlite3_column_count(handle(st));
}

static const char *sq_col_name(struct dun_stmt *st, int col)
{
	const char *n = sqlite3_column_name(handle(st), col);
	return n ? n : "";
}

static int64_t sq_changes(struct dun_db *db)
{
	return sqlite3_changes(conn(db));
}

static int64_t sq_last_insert_id(struct dun_db *db)
{
	return sqlite3_last_insert_rowid(conn(db));
}

static const char *sq_errmsg(struct dun_db *db)
{
	return sqlite3_errmsg(conn(db));
}

static bool sq_in_transaction(struct dun_db *db)
{
	return !sqlite3_get_autocommit(conn(db));
}

/* One writer at a time holds the whole file: both kinds are exclusive. */
/* Back to the connection's durability once an unsynced transaction ended. */
static void sq_resync(struct dun_db *db)
{
	if (db->unsynced && !sq_in_transaction(db)) {
		db->unsynced = false;
		sq_exec(db, "PRAGMA synchronous=FULL", NULL, 0);
	}
}

static enum dun_err sq_begin(struct dun_db *db, bool concurrent, bool unsynced)
{
	(void)concurrent;
	/*
	 * In WAL mode, NORMAL writes the transaction's frames without an
	 * fsync; the next FULL commit's fsync of the same log covers them.
	 * The setting is read when a transaction commits: set before BEGIN,
	 * restored after COMMIT or ROLLBACK.
	 */
	if (unsynced && !db->unsynced) {
		enum dun_err e = sq_exec(db, "PRAGMA synchronous=NORMAL", NULL, 0);
		if (e != DUN_OK)
			return e;
		db->unsynced = true;
	}
	enum dun_err e = sq_exec(db, "BEGIN IMMEDIATE", NULL, 0);
	if (e != DUN_OK)
		sq_resync(db);
	return e;
}

/* The write transaction already holds the whole file. */
static enum dun_err sq_lock_mirror(struct dun_db *db, bool wait)
{
	(void)wait;
	return sq_in_transaction(db) ? DUN_OK : DUN_E_INVALID;
}

static enum dun_err sq_try_lock(struct dun_db *db, const char *key, bool *got)
{
	(void)key;
	*got = sq_in_transaction(db);
	return *got ? DUN_OK : DUN_E_INVALID;
}

static enum dun_err sq_commit(struct dun_db *db)
{
	enum dun_err e = sq_exec(db, "COMMIT", NULL, 0);
	sq_resync(db);
	return e;
}

static void sq_rollback(struct dun_db *db)
{
	if (sq_in_transaction(db))
		sq_exec(db, "ROLLBACK", NULL, 0);
	sq_resync(db);
}

static int sq_schema_version(struct dun_db *db)
{
	sqlite3_stmt *h = NULL;
	int v = -1;
	if (sqlite3_prepare_v2(conn(db), "PRAGMA user_version", -1, &h, NULL) == SQLITE_OK &&
	    sqlite3_step(h) == SQLITE_ROW)
		v = sqlite3_column_int(h, 0);
	sqlite3_finalize(h);
	return v;
}

static enum dun_err sq_set_schema_version(struct dun_db *db, int version, char *err,
					  size_t err_size)
{
	char pragma[64];
	snprintf(pragma, sizeof pragma, "PRAGMA user_version = %d", version);
	return sq_exec(db, pragma, err, err_size);
}

/* 100 waits of 0.1 ms, then waits of 1 ms: about 10 s before SQLITE_BUSY. */
#define BUSY_FINE_WAITS	 100
#define BUSY_TOTAL_WAITS (BUSY_FINE_WAITS + 10000)

static int busy_wait(void *arg, int count)
{
	(void)arg;
	if (count >= BUSY_TOTAL_WAITS)
		return 0;
	struct timespec ts = {.tv_sec = 0, .tv_nsec = count < BUSY_FINE_WAITS ? 100000 : 1000000};
	nanosleep(&ts, NULL);
	return 1;
}

static void sq_busy_fine(struct dun_db *db)
{
	sqlite3_busy_handler(conn(db), busy_wait, NULL);
}

static int64_t sq_cache_misses(struct dun_db *db)
{
	int cur = 0, hi = 0;
	sqlite3_db_status(conn(db), SQLITE_DBSTATUS_CACHE_MISS, &cur, &hi, 1);
	return cur;
}

const struct dun_db_driver dun_db_driver_sqlite = {
    .name = "sqlite",
    .open = sq_open,
    .close = sq_close,
    .configure = sq_configure,
    .exec = sq_exec,
    .exec_schema = sq_exec,
    .prepare = sq_prepare,
    .finalize = sq_finalize,
    .reset = sq_reset,
    .clear = sq_clear,
    .bind_text = sq_bind_text,
    .bind_int64 = sq_bind_int64,
    .bind_double = sq_bind_double,
    .bind_null = sq_bind_null,
    .param_count = sq_param_count,
    .step = sq_step,
    .col_int64 = sq_col_int64,
    .col_double = sq_col_double,
    .col_text = sq_col_text,
    .col_bytes = sq_col_bytes,
    .col_type = sq_col_type,
    .col_count = sq_col_count,
    .col_name = sq_col_name,
    .changes = sq_changes,
    .last_insert_id = sq_last_insert_id,
    .errmsg = sq_errmsg,
    .in_transaction = sq_in_transaction,
    .begin = sq_begin,
    .commit = sq_commit,
    .lock_mirror = sq_lock_mirror,
    .try_lock = sq_try_lock,
    .rollback = sq_rollback,
    .schema_version = sq_schema_version,
    .set_schema_version = sq_set_schema_version,
    .busy_fine = sq_busy_fine,
    .cache_misses = sq_cache_misses,
    .relax_durability_sql = "PRAGMA synchronous=OFF",
    .checkpoint_manual_sql = "PRAGMA wal_autocheckpoint=0",
    .checkpoint_sql = "PRAGMA wal_checkpoint(PASSIVE)",
    .cache_kb_sql = "PRAGMA cache_size=-",
    .map_file_sql = "PRAGMA mmap_size=",
};
