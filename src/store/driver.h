/*
 * driver.h — what a backend of the store seam provides (private to src/store).
 *
 * db.c holds what every backend shares (the statement cache, migrations,
 * settings, the public wrappers of db.h); a driver holds only what differs:
 * how to connect, prepare, bind, step, read columns and report errors.
 * A driver embeds struct dun_stmt at the start of its own statement struct
 * and keeps its connection in dun_db.conn.
 */
#ifndef DUN_STORE_DRIVER_H
#define DUN_STORE_DRIVER_H

#include "db.h"

#define DUN_DB_STMT_CACHE 256
#define DUN_DB_ERRMSG_MAX 512

/* Format a message into err (n bytes; nothing when err is NULL or n is 0). */
__attribute__((format(printf, 3, 4))) void dun_store_set_err(char *err, size_t n, const char *fmt,
							     ...);

struct dun_stmt {
	struct dun_db *db;
	enum dun_err err; /* of the last step */
};

struct dun_db_driver {
	const char *name;
	/* Whether concurrent transactions really run beside each other. */
	bool concurrent_writes;
	/* Connect to target; on failure say why in err (db->conn stays NULL). */
	enum dun_err (*open)(struct dun_db *db, const char *target, char *err, size_t err_size);
	void (*close)(struct dun_db *db);
	/* Session settings applied after open (journal mode, timeouts, ...). */
	enum dun_err (*configure)(struct dun_db *db, char *err, size_t err_size);
	enum dun_err (*exec)(struct dun_db *db, const char *sql, char *err, size_t err_size);
	/* Run one statement of schema.c (written in SQLite's dialect). */
	enum dun_err (*exec_schema)(struct dun_db *db, const char *sql, char *err, size_t err_size);
	/* persistent: the statement will be reused many times (cached). */
	enum dun_err (*prepare)(struct dun_db *db, const char *sql, bool persistent,
				struct dun_stmt **out);
	void (*finalize)(struct dun_stmt *st);
	/* Reset to run again, keeping the bindings; clear also clears them. */
	void (*reset)(struct dun_stmt *st);
	void (*clear)(struct dun_stmt *st);
	void (*bind_text)(struct dun_stmt *st, int idx, const char *s, int len, bool copy);
	void (*bind_int64)(struct dun_stmt *st, int idx, int64_t v);
	void (*bind_double)(struct dun_stmt *st, int idx, double v);
	void (*bind_null)(struct dun_stmt *st, int idx);
	int (*param_count)(struct dun_stmt *st);
	/* dun_db_pipeline, or NULL where a step costs no round trip. */
	enum dun_err (*pipeline)(struct dun_db *db, struct dun_stmt *const *st, int n);
	/* Sets st->err on failure. */
	enum dun_step (*step)(struct dun_stmt *st);
	int64_t (*col_int64)(struct dun_stmt *st, int col);
	double (*col_double)(struct dun_stmt *st, int col);
	const char *(*col_text)(struct dun_stmt *st, int col);
	int (*col_bytes)(struct dun_stmt *st, int col);
	enum dun_col_type (*col_type)(struct dun_stmt *st, int col);
	int (*col_count)(struct dun_stmt *st);
	const char *(*col_name)(struct dun_stmt *st, int col);
	int64_t (*changes)(struct dun_db *db);
	/* NULL where an insert's id can only be read through RETURNING. */
	int64_t (*last_insert_id)(struct dun_db *db);
	const char *(*errmsg)(struct dun_db *db);
	bool (*in_transaction)(struct dun_db *db);
	/*
	 * Open a write transaction, commit, roll back. An exclusive one is
	 * serialized with every other write transaction; a concurrent one only
	 * with the exclusive ones (see dun_db_begin_concurrent in db.h).
	 * unsynced: its COMMIT need not wait for the disk
	 * (dun_db_begin_unsynced); the driver restores its durability when
	 * the transaction ends, committed or rolled back.
	 */
	enum dun_err (*begin)(struct dun_db *db, bool concurrent, bool unsynced);
	enum dun_err (*commit)(struct dun_db *db);
	/* In the open transaction: the mirror writers' lock (dun_db_lock_mirror). */
	enum dun_err (*lock_mirror)(struct dun_db *db, bool wait);
	/* In the open transaction: try a lock named key (dun_db_try_lock). */
	enum dun_err (*try_lock)(struct dun_db *db, const char *key, bool *got);
	void (*rollback)(struct dun_db *db);
	/* Read and write the applied schema version. */
	int (*schema_version)(struct dun_db *db);
	enum dun_err (*set_schema_version)(struct dun_db *db, int version, char *err,
					   size_t err_size);
	void (*busy_fine)(struct dun_db *db);
	int64_t (*cache_misses)(struct dun_db *db);
	/*
	 * Wake-ups across processes, or NULL where one process is the norm
	 * (SQLite): notify_inbox tells every listener at the next COMMIT (at once
	 * outside a transaction); listen_inbox subscribes this connection;
	 * wait_inbox waits up to timeout_ms for a notification: 1 woken (or the
	 * connection was re-established and notifications may have been missed),
	 * 0 none, -1 the connection is down.
	 */
	void (*notify_inbox)(struct dun_db *db);
	enum dun_err (*listen_inbox)(struct dun_db *db, char *err, size_t err_size);
	int (*wait_inbox)(struct dun_db *db, int timeout_ms);
	/* Statements of dun_db_relax_durability / _checkpoint_manual / _checkpoint, or NULL. */
	const char *relax_durability_sql;
	const char *checkpoint_manual_sql;
	const char *checkpoint_sql;
	/* dun_db_set_cache_kb's statement, completed by the KiB, or NULL. */
	const char *cache_kb_sql;
	/* dun_db_map_file's statement, completed by the bytes, or NULL. */
	const char *map_file_sql;
	/* Or dun_db_set_cache_kb itself, where it is more than one statement. */
	void (*set_cache_kb)(struct dun_db *db, int kb);
	/*
	 * A bulk load into one table (dun_db_load_begin in db.h), or NULL where
	 * the backend has none: load_begin starts it, load_row sends one row,
	 * load_end finishes it (also after a failed load_row, to end the load;
	 * abandon: the rows sent are not stored and the load fails).
	 */
	enum dun_err (*load_begin)(struct dun_db *db, const char *table, const char *const *cols,
				   int ncols, char *err, size_t err_size);
	enum dun_err (*load_row)(struct dun_db *db, const char *const *values, const int *lens);
	enum dun_err (*load_end)(struct dun_db *db, bool abandon, int64_t *rows, char *err,
				 size_t err_size);
};

struct dun_db {
	const struct dun_db_driver *drv;
	void *conn;
	char *path;
	enum dun_db_access access; /* how open and configure treat the file */
	bool mirror_held;	   /* the mirror writers' lock, in the open transaction */
	bool relaxed;		   /* dun_db_relax_durability: nothing is synced anyway */
	bool unsynced;		   /* the open transaction's COMMIT does not sync (SQLite) */
	struct {
		const char *sql;
		struct dun_stmt *st;
	} cache[DUN_DB_STMT_CACHE];
};

extern const struct dun_db_driver dun_db_driver_sqlite;
extern const struct dun_db_driver dun_db_driver_pg;

/* Whether dun_db_stop_retrying() was called (db.c): drivers give up reconnecting. */
bool dun_db_retrying_stopped(void);

#endif
