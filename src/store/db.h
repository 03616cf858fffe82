/*
 * db.h — the store seam: the one door through which the engine talks SQL.
 *
 * Everything outside src/store/ reaches its database through this header:
 * opening and migrating, cached prepared statements, binds, stepping rows,
 * column getters, transactions and savepoints. Below it sits one driver per
 * backend (driver_sqlite.c today), chosen when the store is opened. No
 * SQLite type leaks through here, so callers cannot come to depend on one
 * backend; the test command checks that no file outside src/store/ uses a
 * SQLite or libpq symbol.
 *
 * One struct dun_db per thread: a connection is never shared between
 * threads. Errors of the backend (busy, lock or serialization failure,
 * constraint, I/O) are mapped once, in the driver, into enum dun_err; a
 * "busy" failure is DUN_E_BUSY, which is retryable.
 *
 * Parameters are written ?1, ?2, ... in SQL text, and SQL text is kept
 * portable between the backends.
 */
#ifndef DUN_DB_H
#define DUN_DB_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "util/err.h"

/* The schema version this binary writes; see schema.c. */
int dun_db_schema_latest(void);

struct dun_db;
struct dun_stmt;

/* What one step of a statement produced. */
enum dun_step {
	DUN_STEP_ROW,	 /* a row is available through the column getters */
	DUN_STEP_DONE,	 /* the statement ran to completion */
	DUN_STEP_FAILED, /* an error: dun_stmt_err() says which, dun_db_errmsg() says why */
};

/* The storage class of a column value in the current row. */
enum dun_col_type {
	DUN_COL_NULL,
	DUN_COL_INT,
	DUN_COL_FLOAT,
	DUN_COL_TEXT,
	DUN_COL_BLOB,
};

/*
 * Whether location names a PostgreSQL database (a postgresql:// or
 * postgres:// URL) rather than a SQLite file.
 */
bool dun_db_is_url(const char *location);
/* location as it may be shown or logged: a URL without its password. */
void dun_db_redact(const char *location, char *out, size_t out_size);
/*
 * Mask url's password where a message (libpq's) repeats it: as the URL's
 * ":password@" or as a quoted token equal to it. Other text is left alone,
 * so a short password does not mangle words that happen to contain it.
 * msg is a string in a buffer of msg_size bytes; a longer mask cuts its end.
 */
void dun_db_scrub_password(const char *url, char *msg, size_t msg_size);

/*
 * Open (creating if missing) the database at path and migrate it to the
 * latest schema. path is a SQLite file, or a postgresql:// URL (libpq's
 * connection URI: user, password, host, port, database, parameters). Refuses a database whose schema is newer than this binary
 * (DUN_E_SCHEMA). On failure *out is NULL and err says why.
 */
enum dun_err dun_db_open(const char *path, struct dun_db **out, char *err, size_t err_size);
/* How dun_db_open_as() may treat the file. */
enum dun_db_access {
	DUN_DB_CREATE,	 /* create it (mode 0600) when missing; migrate */
	DUN_DB_EXISTING, /* it must exist (DUN_E_NOT_FOUND otherwise); migrate */
	DUN_DB_READONLY, /* it must exist; opened read-only, never migrated: a
			    schema other than this binary's is DUN_E_SCHEMA */
};

/*
 * Open the database at path as `how` says. A new file is created with mode
 * 0600 before SQLite sees it (the -wal and -shm files inherit that mode).
 * A file that is not a database, or is corrupt, is DUN_E_CORRUPT. On
 * failure *out is NULL and err says why. dun_db_open() is DUN_DB_CREATE.
 */
enum dun_err dun_db_open_as(const char *path, enum dun_db_access how, struct dun_db **out,
			    char *err, size_t err_size);
/* Open without migrating (for `dunning init --check`); still refuses newer schemas. */
enum dun_err dun_db_open_nomigrate(const char *path, struct dun_db **out, char *err,
				   size_t err_size);
/* Close db and every statement it owns; NULL is a no-op. */
void dun_db_close(struct dun_db *db);
/* The path (or URL, without its password) db was opened with; lives as long as db. */
const char *dun_db_path(const struct dun_db *db);
/* The schema version of the open database, -1 when it cannot be read. */
int dun_db_schema_version(struct dun_db *db);

/*
 * A cached prepared statement for sql, reset and with bindings cleared.
 * sql must be a string literal (the cache is keyed by its address). The
 * statement stays owned by db. Aborts the process on a malformed literal:
 * that is a programming error, not bad input.
 */
struct dun_stmt *dun_db_stmt(struct dun_db *db, const char *sql);

/*
 * Prepare sql (any string, copied) as a statement of its own, not cached.
 * The caller finalizes it with dun_stmt_finalize() before closing db. On
 * failure *out is NULL and dun_db_errmsg() says why.
 */
enum dun_err dun_db_prepare(struct dun_db *db, const char *sql, struct dun_stmt **out);
/* Free a statement from dun_db_prepare(); NULL is a no-op. */
void dun_stmt_finalize(struct dun_stmt *st);

/* Run sql, which may hold several statements (no results). err may be NULL. */
enum dun_err dun_db_exec(struct dun_db *db, const char *sql, char *err, size_t err_size);

/* The message of the last failure on db; valid until the next call on db. */
const char *dun_db_errmsg(struct dun_db *db);
/* Rows changed by the last INSERT/UPDATE/DELETE on db. */
int64_t dun_db_changes(struct dun_db *db);
/*
 * Whether the id of a row an INSERT just made on db can be read back
 * without RETURNING (SQLite: its rowid), and that id. On SQLite, RETURNING
 * gathers its rows in a temporary B-tree built on every execution; on
 * PostgreSQL it is the one way, in the insert's own round trip. So an
 * insert that needs its id asks this first.
 */
bool dun_db_has_last_insert_id(const struct dun_db *db);
int64_t dun_db_last_insert_id(struct dun_db *db);

/*
 * Transactions. dun_db_begin() starts an exclusive write transaction: no
 * other write transaction of any process runs beside it (SQLite takes the
 * write lock up front, so a busy database fails here, not in the middle;
 * PostgreSQL takes one store-wide lock in exclusive mode). Nesting is done
 * with savepoints, not with begin.
 *
 * dun_db_begin_concurrent() starts a write transaction that may run beside
 * other concurrent ones, in other processes and on other hosts; it is still
 * serialized with every exclusive one. Use it only where row locks settle
 * every conflict: each write touches rows the caller's claim covers (an
 * account's fence, store/fence.h), or is a single statement that is
 * atomic on its own (an upsert, an UPDATE whose WHERE re-checks the state
 * it changes, checked by dun_db_changes()), and no reader elsewhere walks a
 * table by increasing id as if ids committed in order. PostgreSQL runs it at
 * READ COMMITTED with the store-wide lock in shared mode; a deadlock between
 * two of them is DUN_E_BUSY (retry). On SQLite, where one writer holds the
 * whole file, it is exactly dun_db_begin().
 */
enum dun_err dun_db_begin(struct dun_db *db);
enum dun_err dun_db_begin_concurrent(struct dun_db *db);
/*
 * A concurrent transaction whose COMMIT does not wait for the disk. A crash
 * of the process never loses it; a crash of the machine (or of the
 * PostgreSQL server) may, and then loses nothing committed before it, only
 * it and what committed after it without a sync: both backends write their
 * log in order, and the next ordinary COMMIT makes it durable too. Only for
 * writes whose loss is harmless: taking claims (lost, the triggers are
 * ready again and whoever claims next gets a token of its own; the old
 * owner's fenced writes are refused). SQLite: synchronous=NORMAL for this
 * transaction; PostgreSQL: synchronous_commit off for it (SET LOCAL, sent
 * with the BEGIN).
 */
enum dun_err dun_db_begin_unsynced(struct dun_db *db);

/*
 * The mirror writers' lock. Storing an invoice derives its account from the
 * customer's mapping, an attempt its invoice from the payment intent
 * (schema migration 14): two such writes at READ COMMITTED could each miss
 * the other's uncommitted row. So every concurrent transaction that writes
 * the provider mirror (p_* tables, customers' mapping) takes this lock
 * before its first mirror write and holds it to COMMIT: mirror writers run
 * one at a time, beside the claimed work that does not touch the mirror.
 * dun_db_lock_mirror() takes it in the open transaction (wait false: try
 * once, DUN_E_BUSY when another holds it); dun_db_begin_mirror() begins a
 * concurrent transaction holding it (storing webhooks). On SQLite a write
 * transaction already holds the file: both are plain transactions.
 */
enum dun_err dun_db_lock_mirror(struct dun_db *db, bool wait);
enum dun_err dun_db_begin_mirror(struct dun_db *db);
/*
 * Whether concurrent transactions (dun_db_begin_concurrent) really run
 * beside each other on this store (PostgreSQL), rather than one at a time
 * (SQLite). dun_db_holds_mirror: whether the open transaction holds the
 * mirror writers' lock on such a store (never on SQLite, where every write
 * transaction holds the whole file anyway): whoever else writes the mirror
 * waits for this transaction's COMMIT.
 */
bool dun_db_writes_concurrently(const struct dun_db *db);
bool dun_db_holds_mirror(const struct dun_db *db);

/*
 * In the open transaction, try once to take a lock named key, held to the
 * end of the transaction; *got says whether it was taken (never waits). Two
 * transactions of any processes asking for the same key: one gets it. On
 * SQLite, where the write transaction holds the file, always taken.
 */
enum dun_err dun_db_try_lock(struct dun_db *db, const char *key, bool *got);

/*
 * From now on, in the whole process, a lost connection is not re-established
 * with backoff any more: statements fail at once (DUN_E_IO). For a service
 * that is stopping, so it does not spend its stop waiting for a database
 * that is down.
 */
void dun_db_stop_retrying(void);
enum dun_err dun_db_commit(struct dun_db *db);
/* Roll back the open transaction, if any. */
void dun_db_rollback(struct dun_db *db);
/* Whether a transaction is open on db. */
bool dun_db_in_transaction(struct dun_db *db);
/* SAVEPOINT name / RELEASE name / ROLLBACK TO name; name is a plain identifier. */
enum dun_err dun_db_savepoint(struct dun_db *db, const char *name);
enum dun_err dun_db_release(struct dun_db *db, const char *name);
enum dun_err dun_db_rollback_to(struct dun_db *db, const char *name);

/*
 * Wait for a busy database in fine steps (0.1 ms at first, about 10 s in
 * all) rather than the driver's default backoff: for the service, where
 * many short transactions of a few threads contend.
 */
void dun_db_busy_fine(struct dun_db *db);

/*
 * Give up durability for speed: a crash may lose the last transactions
 * (never corrupt the store). Only for throwaway databases (demo, simulate).
 */
void dun_db_relax_durability(struct dun_db *db);
/*
 * Checkpoints. dun_db_checkpoint_manual() stops the connection from
 * checkpointing after its own commits (so a hot writer never pays for it);
 * dun_db_checkpoint() runs a checkpoint that never blocks writers. Both do
 * nothing on a backend without a write-ahead log of its own to manage.
 */
void dun_db_checkpoint_manual(struct dun_db *db);
void dun_db_checkpoint(struct dun_db *db);

/*
 * The connection's page cache, in KiB (DUN_DB_CACHE_KB when opened: the
 * SQLite driver's configure sets the same figure). On a backend whose cache
 * is the server's (PostgreSQL) a cache above DUN_DB_CACHE_KB says instead
 * that the connection is about to make long reads in index order (the
 * drift scan's stream, which asks for one): the planner is told to walk
 * indexes rather than hash, sort or start parallel workers, until the
 * cache is set back to DUN_DB_CACHE_KB or less.
 */
#define DUN_DB_CACHE_KB 16000
void dun_db_set_cache_kb(struct dun_db *db, int kb);

/*
 * Read the file through a memory map of up to mb MiB shared by every
 * connection of the process (SQLite's mmap_size; nothing on PostgreSQL,
 * whose cache is the server's): a page comes from the OS page cache
 * without a system call or a copy, where the connection's own cache
 * (DUN_DB_CACHE_KB) would read it again once the working set outgrows it.
 * For the connections that recompute (a worker pass touches a dozen pages
 * of several tables per account). Not for the drift scan: a mapped page it
 * touched counts in the process's resident size. An I/O error on a mapped
 * page ends the process (SIGBUS) instead of failing a statement.
 */
void dun_db_map_file(struct dun_db *db, int mb);
/* What the service's workers map: address space, not memory. */
#define DUN_DB_WORKER_MAP_MB 1024

/*
 * A bulk load of rows into one table, in the open transaction: faster than
 * INSERTs (PostgreSQL's COPY FROM STDIN); DUN_E_INVALID on a backend without
 * one (SQLite). table and cols are plain names (lower case, digits, _).
 * dun_db_load_row sends one row of ncols values: values[i] NULL is SQL NULL,
 * otherwise lens[i] bytes of text, read as the column's type (no NUL byte).
 * Rows are buffered: a row the server rejects is reported by a later
 * dun_db_load_row or by dun_db_load_end, which must end every load that
 * began, also after a failure (then it fails too) and when the caller gives
 * up (abandon: nothing of it is stored, and it fails). *rows (may be NULL)
 * gets the rows the server stored. A failed load leaves the transaction
 * aborted: roll it back.
 */
enum dun_err dun_db_load_begin(struct dun_db *db, const char *table, const char *const *cols,
			       int ncols, char *err, size_t err_size);
enum dun_err dun_db_load_row(struct dun_db *db, const char *const *values, const int *lens);
enum dun_err dun_db_load_end(struct dun_db *db, bool abandon, int64_t *rows, char *err,
			     size_t err_size);

/* Pages the store had to read from disk since the last call; -1 where unknown. */
int64_t dun_db_cache_misses(struct dun_db *db);

/*
 * New triggers, told across processes (PostgreSQL's LISTEN/NOTIFY on one
 * channel; nothing on SQLite, where the service's own threads wake each
 * other). dun_db_notify_inbox: whoever listens is woken when the current
 * transaction commits (at once outside one); it costs no round trip of
 * its own. dun_db_listen_inbox: false where the store cannot listen.
 * dun_db_wait_inbox: 1 woken (or reconnected: something may have been
 * missed), 0 timed out, -1 the connection is down (retried next call).
 */
void dun_db_notify_inbox(struct dun_db *db);
bool dun_db_can_listen(const struct dun_db *db);
enum dun_err dun_db_listen_inbox(struct dun_db *db, char *err, size_t err_size);
int dun_db_wait_inbox(struct dun_db *db, int timeout_ms);

/* Settings: small key/value pairs (mode, rollout percentage, ...). */
enum dun_err dun_db_setting_get(struct dun_db *db, const char *key, char *out, size_t out_size,
				bool *found);
enum dun_err dun_db_setting_set(struct dun_db *db, const char *key, const char *value);

/*
 * Binds. Parameter indexes start at 1. Text is borrowed: s must stay valid
 * until the statement is reset (by dun_stmt_reset(), dun_stmt_done() or the
 * next dun_db_stmt() of the same SQL) and not stepped again — use the _copy form for a buffer
 * that changes before that. NULL text binds SQL NULL.
 */
void dun_stmt_bind_text(struct dun_stmt *st, int idx, const char *s);
void dun_stmt_bind_textn(struct dun_stmt *st, int idx, const char *s, int len);
void dun_stmt_bind_text_copy(struct dun_stmt *st, int idx, const char *s);
void dun_stmt_bind_int64(struct dun_stmt *st, int idx, int64_t v);
void dun_stmt_bind_int(struct dun_stmt *st, int idx, int v);
void dun_stmt_bind_double(struct dun_stmt *st, int idx, double v);
void dun_stmt_bind_null(struct dun_stmt *st, int idx);
/* The number of parameters of the statement. */
int dun_stmt_param_count(struct dun_stmt *st);

/*
 * Run the statements st[0..n-1], each bound and not yet stepped, together:
 * on PostgreSQL in one round trip (libpq's pipeline mode) instead of one
 * each; on SQLite, where a step costs no round trip, nothing happens here.
 * Each is then stepped as usual and gives the rows it would have given
 * alone; dun_db_changes() after a statement's step gives that statement's
 * own count. Returns the first failure (dun_db_errmsg() says why); the
 * statements after it did not run: the caller gives up as it would after
 * that statement's failed step. The binds of one must not depend on
 * another's rows. Reads may be stepped in any order. Statements that write
 * go only inside a transaction (a connection lost after the server ran
 * them is then a lost transaction, never a write run twice) and are
 * stepped in the order given, before any other statement: on SQLite they
 * run at their steps.
 */
enum dun_err dun_db_pipeline(struct dun_db *db, struct dun_stmt *const *st, int n);

/*
 * Stepping. dun_stmt_step() returns what one step produced; after
 * DUN_STEP_FAILED, dun_stmt_err() gives the error. dun_stmt_row() is the
 * loop form: true while there is a row. dun_stmt_done() runs a statement
 * expected to produce no rows (INSERT/UPDATE/DELETE), resets it and returns
 * its error. dun_stmt_reset() ends a statement early (so it can run again,
 * with the same bindings); dun_stmt_clear() also clears the bindings.
 */
enum dun_step dun_stmt_step(struct dun_stmt *st);
bool dun_stmt_row(struct dun_stmt *st);
enum dun_err dun_stmt_done(struct dun_stmt *st);
void dun_stmt_reset(struct dun_stmt *st);
void dun_stmt_clear(struct dun_stmt *st);
/* The error of the last step: DUN_OK after a row or completion. */
enum dun_err dun_stmt_err(const struct dun_stmt *st);

/*
 * Column getters of the current row, columns from 0. Text is NUL-terminated
 * (NULL for SQL NULL) and lives until the next step or reset.
 */
int64_t dun_stmt_col_int64(struct dun_stmt *st, int col);
int dun_stmt_col_int(struct dun_stmt *st, int col);
double dun_stmt_col_double(struct dun_stmt *st, int col);
const char *dun_stmt_col_text(struct dun_stmt *st, int col);
/* The length in bytes of the text of a column. */
int dun_stmt_col_bytes(struct dun_stmt *st, int col);
enum dun_col_type dun_stmt_col_type(struct dun_stmt *st, int col);
bool dun_stmt_col_is_null(struct dun_stmt *st, int col);
int dun_stmt_col_count(struct dun_stmt *st);
/* The name of a result column; lives as long as the statement. */
const char *dun_stmt_col_name(struct dun_stmt *st, int col);
/* Copy a text column into out (empty string for NULL). */
void dun_stmt_col_copy(struct dun_stmt *st, int col, char *out, size_t out_size);

#endif
