/*
 * db.c — the store seam's shared half: opening a store through its driver,
 * migrating it, the statement cache, transactions, savepoints, settings and
 * the thin wrappers every other module calls (see db.h).
 *
 * Statements are prepared once per connection and cached by the address of
 * their SQL literal; the hot paths (gather, the drift scan, the inbox) run
 * the same few statements millions of times. What differs between backends
 * lives in a driver (driver.h); this file never names one backend's API.
 */
#include "db.h"
#include "driver.h"
#include "schema.h"
#include "util/mem.h"

#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

int dun_db_schema_latest(void)
{
	return dun_schema_count();
}

void dun_store_set_err(char *err, size_t n, const char *fmt, ...)
{
	if (!err || !n)
		return;
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(err, n, fmt, ap);
	va_end(ap);
}

bool dun_db_is_url(const char *location)
{
	return location &&
	       (!strncmp(location, "postgresql://", 13) || !strncmp(location, "postgres://", 11));
}

/* Drop the password of a URL in place (for messages and dun_db_path). */
static void redact_url(char *url)
{
	char *auth = strstr(url, "://");
	if (!auth)
		return;
	auth += 3;
	char *at = strchr(auth, '@');
	char *slash = strchr(auth, '/');
	if (!at || (slash && slash < at))
		return;
	char *colon = memchr(auth, ':', (size_t)(at - auth));
	if (colon)
		memmove(colon, at, strlen(at) + 1);
}

/*
 * Replace the n bytes at hit by "***" in msg (a string in a buffer of size
 * bytes), cutting the end of msg if the mask is longer than what it hides.
 * Returns where to search on, or NULL when nothing is left after the mask.
 */
static char *mask_at(char *msg, size_t size, char *hit, size_t n)
{
	size_t at = (size_t)(hit - msg);
	if (at + 3 >= size) {
		*hit = '\0';
		return NULL;
	}
	size_t tail = strlen(hit + n);
	if (tail > size - 1 - at - 3)
		tail = size - 1 - at - 3;
	memmove(hit + 3, hit + n, tail);
	hit[3 + tail] = '\0';
	memcpy(hit, "***", 3);
	return hit + 3;
}

void dun_db_scrub_password(const char *url, char *msg, size_t msg_size)
{
	const char *auth = url ? strstr(url, "://") : NULL;
	if (!auth || !msg || !msg_size)
		return;
	auth += 3;
	size_t authority = strcspn(auth, "/?#");
	const char *at = NULL;
	for (const char *c = auth; c < auth + authority; c++)
		if (*c == '@')
			at = c;
	const char *colon = at ? memchr(auth, ':', (size_t)(at - auth)) : NULL;
	if (!colon || at - colon - 1 <= 0)
		return;
	size_t n = (size_t)(at - colon - 1);
	char *pw = dun_malloc(n + 3);
	memcpy(pw + 1, colon + 1, n);
	/* The URL's own form ":password@", as in a URL quoted whole. */
	pw[0] = ':';
	pw[n + 1] = '@';
	pw[n + 2] = '\0';
	for (char *hit = msg; hit && (hit = strstr(hit, pw));)
		hit = mask_at(msg, msg_size, hit + 1, n);
	/* A quoted token that is exactly the password ("invalid percent-encoded token: \"...\""). */
	pw[0] = '"';
	pw[n + 1] = '"';
	for (char *hit = msg; hit && (hit = strstr(hit, pw));)
		hit = mask_at(msg, msg_size, hit + 1, n);
	free(pw);
}

void dun_db_redact(const char *location, char *out, size_t out_size)
{
	if (!out_size)
		return;
	snprintf(out, out_size, "%s", location ? location : "");
	if (dun_db_is_url(out))
		redact_url(out);
}

const char *dun_db_path(const struct dun_db *db)
{
	return db->path;
}

int dun_db_schema_version(struct dun_db *db)
{
	return db->drv->schema_version(db);
}

enum dun_err dun_db_exec(struct dun_db *db, const char *sql, char *err, size_t err_size)
{
	return db->drv->exec(db, sql, err, err_size);
}

static enum dun_err migrate(struct dun_db *db, bool apply, char *err, size_t err_size)
{
	int have = dun_db_schema_version(db);
	int want = dun_schema_count();
	if (have < 0) {
		dun_store_set_err(err, err_size, "%s: cannot read the schema version: %s", db->path,
				  dun_db_errmsg(db));
		return DUN_E_STORE;
	}
	if (have > want) {
		dun_store_set_err(err, err_size,
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
			dun_store_set_err(err, err_size, "%s: cannot begin migration: %s", db->path,
					  dun_db_errmsg(db));
			return e;
		}
		/* Another process may have migrated while we waited for the lock. */
		int now = dun_db_schema_version(db);
		if (now > m) {
			dun_db_rollback(db);
			if (now > want) {
				dun_store_set_err(
				    err, err_size,
				    "%s: schema version %d is newer than this binary (%d); "
				    "upgrade dunning",
				    db->path, now, want);
				return DUN_E_SCHEMA;
			}
			m = now - 1;
			continue;
		}
		for (const char *const *s = dun_schema_migration(m); *s; s++) {
			const char *sql = dun_schema_for_backend(*s, db->drv->name);
			if (!sql)
				continue;
			e = db->drv->exec_schema(db, sql, err, err_size);
			if (e != DUN_OK) {
				dun_db_rollback(db);
				return e;
			}
		}
		e = db->drv->set_schema_version(db, m + 1, err, err_size);
		if (e == DUN_OK)
			e = dun_db_commit(db);
		if (e != DUN_OK) {
			dun_db_rollback(db);
			return e;
		}
	}
	return DUN_OK;
}

/*
 * Create path as an empty file only its owner may read and write, before
 * SQLite opens it: SQLite creates a new database with the default mode
 * (0644 under the usual umask) and gives the -wal and -shm files the
 * database file's mode, and these files hold customer emails and raw
 * webhook bodies. An empty file is a valid new database to SQLite.
 */
static enum dun_err create_private(const char *path, char *err, size_t err_size)
{
	int fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
	if (fd < 0 && errno == EEXIST)
		return DUN_OK; /* created by someone else meanwhile: theirs */
	if (fd < 0) {
		dun_store_set_err(err, err_size, "%s: cannot create the database: %s", path,
				  strerror(errno));
		return DUN_E_IO;
	}
	close(fd);
	return DUN_OK;
}

/* Whether path names a file on disk (not ":memory:", "" or a file: URI). */
static bool is_plain_file(const char *path)
{
	return path[0] && strcmp(path, ":memory:") != 0 && strncmp(path, "file:", 5) != 0;
}

/* A missing file is refused unless how may create it; a new one is made 0600. */
static enum dun_err check_file(const char *path, enum dun_db_access how, char *err, size_t err_size)
{
	if (!is_plain_file(path))
		return DUN_OK;
	struct stat sb;
	if (stat(path, &sb) == 0) {
		if (S_ISREG(sb.st_mode))
			return DUN_OK;
		dun_store_set_err(err, err_size, "%s: not a database file", path);
		return DUN_E_CORRUPT;
	}
	if (errno != ENOENT) {
		dun_store_set_err(err, err_size, "%s: %s", path, strerror(errno));
		return DUN_E_IO;
	}
	if (how != DUN_DB_CREATE) {
		dun_store_set_err(err, err_size, "%s: no database there", path);
		return DUN_E_NOT_FOUND;
	}
	return create_private(path, err, err_size);
}

static enum dun_err open_db(const char *path, enum dun_db_access how, bool apply,
			    struct dun_db **out, char *err, size_t err_size)
{
	*out = NULL;
	/* A PostgreSQL URL names no file. */
	enum dun_err e = dun_db_is_url(path) ? DUN_OK : check_file(path, how, err, err_size);
	if (e != DUN_OK)
		return e;
	struct dun_db *db = dun_calloc(1, sizeof *db);
	db->drv = dun_db_is_url(path) ? &dun_db_driver_pg : &dun_db_driver_sqlite;
	db->path = dun_strdup(path);
	db->access = how;
	if (db->drv == &dun_db_driver_pg)
		redact_url(db->path);
	e = db->drv->open(db, path, err, err_size);
	if (e == DUN_OK)
		e = db->drv->configure(db, err, err_size);
	/* An empty PostgreSQL database is what a missing file is to SQLite. */
	if (e == DUN_OK && how != DUN_DB_CREATE && dun_db_is_url(path) &&
	    dun_db_schema_version(db) == 0) {
		dun_store_set_err(err, err_size,
				  "%s: no dunning database there (run 'dunning init')", db->path);
		e = DUN_E_NOT_FOUND;
	}
	/* A file without a dunning schema, opened only to be read, is not ours. */
	bool foreign = false;
	if (e == DUN_OK && how == DUN_DB_READONLY && !dun_db_is_url(path) &&
	    dun_db_schema_version(db) == 0) {
		dun_store_set_err(err, err_size,
				  "%s: not a dunning database (it holds no dunning schema)", path);
		e = DUN_E_CORRUPT;
		foreign = true;
	}
	if (e == DUN_OK)
		e = migrate(db, apply && how != DUN_DB_READONLY, err, err_size);
	if (e == DUN_OK && how == DUN_DB_READONLY &&
	    dun_db_schema_version(db) != dun_schema_count()) {
		dun_store_set_err(
		    err, err_size,
		    "%s: schema version %d is older than this binary's (%d) and a read-only "
		    "command does not migrate; run 'dunning init' first",
		    db->path, dun_db_schema_version(db), dun_schema_count());
		e = DUN_E_SCHEMA;
	}
	if (e == DUN_OK) {
		*out = db;
		return DUN_OK;
	}
	if (e == DUN_E_CORRUPT && !foreign)
		dun_store_set_err(
		    err, err_size,
		    "%s: the file is not a dunning database, or it is corrupt (restore it "
		    "from a backup)",
		    path);
	dun_db_close(db);
	return e;
}

enum dun_err dun_db_open(const char *path, struct dun_db **out, char *err, size_t err_size)
{
	return open_db(path, DUN_DB_CREATE, true, out, err, err_size);
}

enum dun_err dun_db_open_as(const char *path, enum dun_db_access how, struct dun_db **out,
			    char *err, size_t err_size)
{
	return open_db(path, how, true, out, err, err_size);
}

enum dun_err dun_db_open_nomigrate(const char *path, struct dun_db **out, char *err,
				   size_t err_size)
{
	return open_db(path, DUN_DB_CREATE, false, out, err, err_size);
}

void dun_db_close(struct dun_db *db)
{
	if (!db)
		return;
	for (int i = 0; i < DUN_DB_STMT_CACHE; i++)
		if (db->cache[i].st)
			db->drv->finalize(db->cache[i].st);
	if (db->conn)
		db->drv->close(db);
	free(db->path);
	free(db);
}

struct dun_stmt *dun_db_stmt(struct dun_db *db, const char *sql)
{
	uintptr_t h = (uintptr_t)sql;
	h ^= h >> 7;
	size_t i = (size_t)(h % DUN_DB_STMT_CACHE);
	for (size_t probe = 0; probe < DUN_DB_STMT_CACHE;
	     probe++, i = (i + 1) % DUN_DB_STMT_CACHE) {
		if (db->cache[i].sql == sql) {
			struct dun_stmt *st = db->cache[i].st;
			db->drv->clear(st);
			st->err = DUN_OK;
			return st;
		}
		if (!db->cache[i].sql)
			break;
	}
	struct dun_stmt *st = NULL;
	if (db->drv->prepare(db, sql, true, &st) != DUN_OK) {
		fprintf(stderr, "dunning: internal error preparing SQL: %s\n  %s\n",
			dun_db_errmsg(db), sql);
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

enum dun_err dun_db_pipeline(struct dun_db *db, struct dun_stmt *const *st, int n)
{
	return db->drv->pipeline && n > 1 ? db->drv->pipeline(db, st, n) : DUN_OK;
}

enum dun_err dun_db_prepare(struct dun_db *db, const char *sql, struct dun_stmt **out)
{
	return db->drv->prepare(db, sql, false, out);
}

void dun_stmt_finalize(struct dun_stmt *st)
{
	if (st)
		st->db->drv->finalize(st);
}

const char *dun_db_errmsg(struct dun_db *db)
{
	return db->drv->errmsg(db);
}

int64_t dun_db_changes(struct dun_db *db)
{
	return db->drv->changes(db);
}

bool dun_db_has_last_insert_id(const struct dun_db *db)
{
	return db->drv->last_insert_id != NULL;
}

int64_t dun_db_last_insert_id(struct dun_db *db)
{
	return db->drv->last_insert_id ? db->drv->last_insert_id(db) : 0;
}

enum dun_err dun_db_begin(struct dun_db *db)
{
	db->mirror_held = false;
	return db->drv->begin(db, false, false);
}

enum dun_err dun_db_begin_concurrent(struct dun_db *db)
{
	db->mirror_held = false;
	return db->drv->begin(db, true, false);
}

enum dun_err dun_db_begin_unsynced(struct dun_db *db)
{
	db->mirror_held = false;
	return db->drv->begin(db, true, !db->relaxed);
}

enum dun_err dun_db_lock_mirror(struct dun_db *db, bool wait)
{
	enum dun_err e = db->drv->lock_mirror(db, wait);
	if (e == DUN_OK)
		db->mirror_held = true;
	return e;
}

bool dun_db_writes_concurrently(const struct dun_db *db)
{
	return db->drv->concurrent_writes;
}

bool dun_db_holds_mirror(const struct dun_db *db)
{
	return db->drv->concurrent_writes && db->mirror_held;
}

static atomic_bool retrying_stopped;

void dun_db_stop_retrying(void)
{
	atomic_store(&retrying_stopped, true);
}

bool dun_db_retrying_stopped(void)
{
	return atomic_load(&retrying_stopped);
}

enum dun_err dun_db_try_lock(struct dun_db *db, const char *key, bool *got)
{
	return db->drv->try_lock(db, key, got);
}

enum dun_err dun_db_begin_mirror(struct dun_db *db)
{
	enum dun_err e = dun_db_begin_concurrent(db);
	if (e != DUN_OK)
		return e;
	e = dun_db_lock_mirror(db, true);
	if (e != DUN_OK)
		dun_db_rollback(db);
	return e;
}

enum dun_err dun_db_commit(struct dun_db *db)
{
	enum dun_err e = db->drv->commit(db);
	if (e == DUN_OK)
		db->mirror_held = false;
	return e;
}

void dun_db_rollback(struct dun_db *db)
{
	db->mirror_held = false;
	db->drv->rollback(db);
}

bool dun_db_in_transaction(struct dun_db *db)
{
	return db->drv->in_transaction(db);
}

static enum dun_err savepoint_sql(struct dun_db *db, const char *verb, const char *name)
{
	char sql[128];
	int n = snprintf(sql, sizeof sql, "%s %s", verb, name);
	if (n < 0 || (size_t)n >= sizeof sql)
		return DUN_E_INVALID;
	return db->drv->exec(db, sql, NULL, 0);
}

enum dun_err dun_db_savepoint(struct dun_db *db, const char *name)
{
	return savepoint_sql(db, "SAVEPOINT", name);
}

enum dun_err dun_db_release(struct dun_db *db, const char *name)
{
	return savepoint_sql(db, "RELEASE SAVEPOINT", name);
}

enum dun_err dun_db_rollback_to(struct dun_db *db, const char *name)
{
	return savepoint_sql(db, "ROLLBACK TO SAVEPOINT", name);
}

void dun_db_relax_durability(struct dun_db *db)
{
	db->relaxed = true;
	if (db->drv->relax_durability_sql)
		db->drv->exec(db, db->drv->relax_durability_sql, NULL, 0);
}

void dun_db_checkpoint_manual(struct dun_db *db)
{
	if (db->drv->checkpoint_manual_sql)
		db->drv->exec(db, db->drv->checkpoint_manual_sql, NULL, 0);
}

void dun_db_checkpoint(struct dun_db *db)
{
	if (db->drv->checkpoint_sql)
		db->drv->exec(db, db->drv->checkpoint_sql, NULL, 0);
}

enum dun_err dun_db_load_begin(struct dun_db *db, const char *table, const char *const *cols,
			       int ncols, char *err, size_t err_size)
{
	if (!db->drv->load_begin) {
		dun_store_set_err(err, err_size, "%s: no bulk load on %s", db->path, db->drv->name);
		return DUN_E_INVALID;
	}
	return db->drv->load_begin(db, table, cols, ncols, err, err_size);
}

enum dun_err dun_db_load_row(struct dun_db *db, const char *const *values, const int *lens)
{
	return db->drv->load_row ? db->drv->load_row(db, values, lens) : DUN_E_INVALID;
}

enum dun_err dun_db_load_end(struct dun_db *db, bool abandon, int64_t *rows, char *err,
			     size_t err_size)
{
	if (!db->drv->load_end)
		return DUN_E_INVALID;
	return db->drv->load_end(db, abandon, rows, err, err_size);
}

void dun_db_set_cache_kb(struct dun_db *db, int kb)
{
	if (kb > 0 && db->drv->set_cache_kb)
		db->drv->set_cache_kb(db, kb);
	if (!db->drv->cache_kb_sql || kb <= 0)
		return;
	char sql[64];
	snprintf(sql, sizeof sql, "%s%d", db->drv->cache_kb_sql, kb);
	db->drv->exec(db, sql, NULL, 0);
}

void dun_db_map_file(struct dun_db *db, int mb)
{
	if (!db->drv->map_file_sql || mb < 0)
		return;
	char sql[64];
	snprintf(sql, sizeof sql, "%s%lld", db->drv->map_file_sql, (long long)mb << 20);
	db->drv->exec(db, sql, NULL, 0);
}

int64_t dun_db_cache_misses(struct dun_db *db)
{
	return db->drv->cache_misses(db);
}

void dun_db_notify_inbox(struct dun_db *db)
{
	if (db->drv->notify_inbox)
		db->drv->notify_inbox(db);
}

bool dun_db_can_listen(const struct dun_db *db)
{
	return db->drv->listen_inbox != NULL;
}

enum dun_err dun_db_listen_inbox(struct dun_db *db, char *err, size_t err_size)
{
	if (!db->drv->listen_inbox) {
		dun_store_set_err(err, err_size, "%s cannot listen for notifications",
				  db->drv->name);
		return DUN_E_UNSUPPORTED;
	}
	return db->drv->listen_inbox(db, err, err_size);
}

int dun_db_wait_inbox(struct dun_db *db, int timeout_ms)
{
	return db->drv->wait_inbox ? db->drv->wait_inbox(db, timeout_ms) : -1;
}

void dun_db_busy_fine(struct dun_db *db)
{
	db->drv->busy_fine(db);
}

enum dun_err dun_db_setting_get(struct dun_db *db, const char *key, char *out, size_t out_size,
				bool *found)
{
	struct dun_stmt *st = dun_db_stmt(db, "SELECT value FROM settings WHERE key = ?1");
	dun_stmt_bind_text(st, 1, key);
	enum dun_step r = dun_stmt_step(st);
	*found = r == DUN_STEP_ROW;
	if (*found)
		dun_stmt_col_copy(st, 0, out, out_size);
	dun_stmt_reset(st);
	return r == DUN_STEP_FAILED ? dun_stmt_err(st) : DUN_OK;
}

enum dun_err dun_db_setting_set(struct dun_db *db, const char *key, const char *value)
{
	struct dun_stmt *st =
	    dun_db_stmt(db, "INSERT INTO settings(key, value) VALUES (?1, ?2)"
			    " ON CONFLICT(key) DO UPDATE SET value = excluded.value");
	dun_stmt_bind_text(st, 1, key);
	dun_stmt_bind_text(st, 2, value);
	return dun_stmt_done(st);
}

/* ---- statements ------------------------------------------------------------ */

void dun_stmt_bind_text(struct dun_stmt *st, int idx, const char *s)
{
	st->db->drv->bind_text(st, idx, s, -1, false);
}

void dun_stmt_bind_textn(struct dun_stmt *st, int idx, const char *s, int len)
{
	st->db->drv->bind_text(st, idx, s, len, false);
}

void dun_stmt_bind_text_copy(struct dun_stmt *st, int idx, const char *s)
{
	st->db->drv->bind_text(st, idx, s, -1, true);
}

void dun_stmt_bind_int64(struct dun_stmt *st, int idx, int64_t v)
{
	st->db->drv->bind_int64(st, idx, v);
}

void dun_stmt_bind_int(struct dun_stmt *st, int idx, int v)
{
	st->db->drv->bind_int64(st, idx, v);
}

void dun_stmt_bind_double(struct dun_stmt *st, int idx, double v)
{
	st->db->drv->bind_double(st, idx, v);
}

void dun_stmt_bind_null(struct dun_stmt *st, int idx)
{
	st->db->drv->bind_null(st, idx);
}

int dun_stmt_param_count(struct dun_stmt *st)
{
	return st->db->drv->param_count(st);
}

enum dun_step dun_stmt_step(struct dun_stmt *st)
{
	st->err = DUN_OK;
	return st->db->drv->step(st);
}

bool dun_stmt_row(struct dun_stmt *st)
{
	return dun_stmt_step(st) == DUN_STEP_ROW;
}

enum dun_err dun_stmt_done(struct dun_stmt *st)
{
	enum dun_step r = dun_stmt_step(st);
	enum dun_err e = r == DUN_STEP_FAILED ? st->err : DUN_OK;
	st->db->drv->reset(st);
	return e;
}

void dun_stmt_reset(struct dun_stmt *st)
{
	st->db->drv->reset(st);
}

void dun_stmt_clear(struct dun_stmt *st)
{
	st->db->drv->clear(st);
}

enum dun_err dun_stmt_err(const struct dun_stmt *st)
{
	return st->err;
}

int64_t dun_stmt_col_int64(struct dun_stmt *st, int col)
{
	return st->db->drv->col_int64(st, col);
}

int dun_stmt_col_int(struct dun_stmt *st, int col)
{
	return (int)st->db->drv->col_int64(st, col);
}

double dun_stmt_col_double(struct dun_stmt *st, int col)
{
	return st->db->drv->col_double(st, col);
}

const char *dun_stmt_col_text(struct dun_stmt *st, int col)
{
	return st->db->drv->col_text(st, col);
}

int dun_stmt_col_bytes(struct dun_stmt *st, int col)
{
	return st->db->drv->col_bytes(st, col);
}

enum dun_col_type dun_stmt_col_type(struct dun_stmt *st, int col)
{
	return st->db->drv->col_type(st, col);
}

bool dun_stmt_col_is_null(struct dun_stmt *st, int col)
{
	return st->db->drv->col_type(st, col) == DUN_COL_NULL;
}

int dun_stmt_col_count(struct dun_stmt *st)
{
	return st->db->drv->col_count(st);
}

const char *dun_stmt_col_name(struct dun_stmt *st, int col)
{
	return st->db->drv->col_name(st, col);
}

void dun_stmt_col_copy(struct dun_stmt *st, int col, char *out, size_t out_size)
{
	if (!out_size)
		return;
	const char *t = dun_stmt_col_text(st, col);
	if (!t) {
		out[0] = '\0';
		return;
	}
	size_t n = (size_t)dun_stmt_col_bytes(st, col);
	if (n >= out_size)
		n = out_size - 1;
	memcpy(out, t, n);
	out[n] = '\0';
}
