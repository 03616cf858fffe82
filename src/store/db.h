/*
 * db.h — the engine's SQLite store: opening, migrations, statements,
 * transactions and the small settings table.
 *
 * One struct dun_db per thread (SQLite connections are not shared across
 * threads here). WAL mode, synchronous=FULL by default, a busy timeout so
 * concurrent processes (a CLI next to `dunning serve`) wait instead of
 * failing.
 */
#ifndef DUN_DB_H
#define DUN_DB_H

#include <sqlite3.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "util/err.h"

/* The schema version this binary writes; see schema.c. */
int dun_db_schema_latest(void);

struct dun_db;

/*
 * Open (creating if missing) the database at path and migrate it to the
 * latest schema. Refuses a database whose schema is newer than this binary
 * (DUN_E_SCHEMA). On failure *out is NULL and err says why.
 */
enum dun_err dun_db_open(const char *path, struct dun_db **out, char *err, size_t err_size);
/* Open without migrating (for `dunning init --check`); still refuses newer schemas. */
enum dun_err dun_db_open_nomigrate(const char *path, struct dun_db **out, char *err,
				   size_t err_size);
void dun_db_close(struct dun_db *db);
sqlite3 *dun_db_handle(struct dun_db *db);
const char *dun_db_path(const struct dun_db *db);
int dun_db_schema_version(struct dun_db *db);

/*
 * A cached prepared statement for sql, reset and with bindings cleared.
 * sql must be a string literal (the cache is keyed by its address). The
 * statement stays owned by db. Aborts the process on a malformed literal:
 * that is a programming error, not bad input.
 */
sqlite3_stmt *dun_db_stmt(struct dun_db *db, const char *sql);

/* Map a SQLite result code to the project's error enum. */
enum dun_err dun_db_err(int rc);

/* Run sql (no results). err may be NULL. */
enum dun_err dun_db_exec(struct dun_db *db, const char *sql, char *err, size_t err_size);

/* BEGIN IMMEDIATE / COMMIT / ROLLBACK. Nesting is not supported. */
enum dun_err dun_db_begin(struct dun_db *db);
enum dun_err dun_db_commit(struct dun_db *db);
void dun_db_rollback(struct dun_db *db);

/* Step a statement expected to finish (INSERT/UPDATE/DELETE). */
enum dun_err dun_db_step_done(sqlite3_stmt *st);

/* Settings: small key/value pairs (mode, rollout percentage, ...). */
enum dun_err dun_db_setting_get(struct dun_db *db, const char *key, char *out, size_t out_size,
				bool *found);
enum dun_err dun_db_setting_set(struct dun_db *db, const char *key, const char *value);

/* Convenience binders: NULL text binds NULL. */
void dun_db_bind_text(sqlite3_stmt *st, int idx, const char *s);
/* Copy a text column into out (empty string for NULL). */
void dun_db_col_text(sqlite3_stmt *st, int col, char *out, size_t out_size);

#endif
