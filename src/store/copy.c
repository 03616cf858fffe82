/*
 * copy.c — moving a store from the embedded SQLite file to PostgreSQL, for
 * `dunning store copy`: the one place that holds two stores open at once.
 *
 * The source is a SQLite file at exactly this binary's schema version,
 * opened read-only and read inside one read transaction, so a consistent
 * snapshot is copied even if something still writes to it. The target is
 * a PostgreSQL database that holds no rows. Everything written to it
 * happens in one transaction: the schema by the migrations of schema.c
 * (the same statements `dunning init` runs), every table's rows by the
 * seam's bulk load (COPY FROM STDIN) with the secondary indexes built after
 * the rows (see defer_for_load), the identity columns moved past the copied
 * ids, and the verification. Only when every table's row
 * count and content checksum agree on both sides, and the caller's check
 * of both (copy.h) passes, is it committed; any
 * failure before rolls everything back, so a target is either untouched or
 * a complete copy.
 *
 * The tables are not listed here: they are the source's own tables (from
 * sqlite_schema, without SQLite's internal ones), and the target's, after
 * the migrations, must be the same set with the same columns, or nothing
 * is copied. A table added by a later migration is copied without a change
 * to this file.
 *
 * The checksum is ours: per row, 64-bit FNV-1a over each column's value as
 * text (length-prefixed; NULL distinct from ''), scrambled by a finalizer
 * and summed over the rows. A sum does not depend on row order, so the two
 * sides need no common ORDER BY (their collations differ), and it streams.
 */
#include "copy.h"
#include "db.h"
#include "driver.h"
#include "schema.h"
#include "util/mem.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MAX_COLUMNS   128
/* The target's tables are read back for their checksums this many rows at a time. */
#define SUM_FETCH_SQL "FETCH 10000 FROM dun_copy_sum"

/* A name we are willing to put between double quotes in SQL text. */
static bool plain_name(const char *s)
{
	if (!s || !s[0] || strlen(s) >= DUN_COPY_NAME_MAX)
		return false;
	for (const char *c = s; *c; c++)
		if (!((*c >= 'a' && *c <= 'z') || (*c >= '0' && *c <= '9') || *c == '_'))
			return false;
	return true;
}

/* A list of names, sorted. */
struct names {
	int n, cap;
	char (*v)[DUN_COPY_NAME_MAX];
};

static void names_add(struct names *l, const char *s)
{
	if (l->n == l->cap) {
		l->cap = l->cap ? l->cap * 2 : 32;
		l->v = dun_realloc(l->v, sizeof *l->v * (size_t)l->cap);
	}
	snprintf(l->v[l->n++], DUN_COPY_NAME_MAX, "%s", s);
}

static int cmp_name(const void *a, const void *b)
{
	return strcmp(a, b);
}

static bool names_has(const struct names *l, const char *s)
{
	for (int i = 0; i < l->n; i++)
		if (!strcmp(l->v[i], s))
			return true;
	return false;
}

/*
 * The names of the first column of sql's rows (with ?1 bound to arg when
 * given), sorted; a name that is not plain is DUN_E_CORRUPT.
 */
static enum dun_err read_names(struct dun_db *db, const char *sql, const char *arg,
			       struct names *out, char *err, size_t err_size)
{
	struct dun_stmt *st = NULL;
	enum dun_err e = dun_db_prepare(db, sql, &st);
	if (e != DUN_OK) {
		dun_store_set_err(err, err_size, "%s: %s", dun_db_path(db), dun_db_errmsg(db));
		return e;
	}
	if (arg)
		dun_stmt_bind_text(st, 1, arg);
	enum dun_step r;
	while ((r = dun_stmt_step(st)) == DUN_STEP_ROW) {
		const char *name = dun_stmt_col_text(st, 0);
		if (!plain_name(name)) {
			dun_store_set_err(err, err_size,
					  "%s: unexpected table or column name \"%s\"",
					  dun_db_path(db), name ? name : "");
			dun_stmt_finalize(st);
			return DUN_E_CORRUPT;
		}
		names_add(out, name);
	}
	if (r == DUN_STEP_FAILED) {
		e = dun_stmt_err(st);
		dun_store_set_err(err, err_size, "%s: %s", dun_db_path(db), dun_db_errmsg(db));
	}
	dun_stmt_finalize(st);
	if (out->n > 1)
		qsort(out->v, (size_t)out->n, sizeof *out->v, cmp_name);
	return e;
}

/* The source's tables: SQLite's own (sqlite_sequence, sqlite_stat1, ...) are not data. */
static const char SOURCE_TABLES[] = "SELECT name FROM sqlite_schema WHERE type = 'table'"
				    " AND name NOT LIKE 'sqlite\\_%' ESCAPE '\\'";
/* The target's tables in its current schema; dunning_schema is the migrations' record. */
static const char TARGET_TABLES[] =
    "SELECT table_name FROM information_schema.tables WHERE table_schema = current_schema()"
    " AND table_type = 'BASE TABLE'";
static const char TARGET_COLUMNS[] =
    "SELECT column_name FROM information_schema.columns WHERE table_schema = current_schema()"
    " AND table_name = ?1";
static const char TARGET_IDENTITIES[] =
    "SELECT table_name, column_name FROM information_schema.columns"
    " WHERE table_schema = current_schema() AND is_identity = 'YES'";

/*
 * Whether the target may receive the copy: no tables at all, or a dunning
 * schema whose tables hold no row. Runs inside the copy's transaction, so
 * nothing can fill it between the check and the copy.
 */
static enum dun_err check_empty(struct dun_db *to, int version, char *err, size_t err_size)
{
	struct names tables = {0};
	enum dun_err e = read_names(to, TARGET_TABLES, NULL, &tables, err, err_size);
	if (e != DUN_OK)
		goto free_tables;
	if (version == 0 && tables.n) {
		dun_store_set_err(
		    err, err_size,
		    "%s: the target is not empty: it holds %d tables that dunning did not "
		    "make (first: %s); copy into a new, empty database",
		    dun_db_path(to), tables.n, tables.v[0]);
		e = DUN_E_CONFIG;
		goto free_tables;
	}
	char with_rows[400] = "";
	int n_with_rows = 0;
	for (int i = 0; i < tables.n; i++) {
		if (!strcmp(tables.v[i], "dunning_schema"))
			continue;
		char sql[160];
		snprintf(sql, sizeof sql, "SELECT 1 FROM \"%s\" LIMIT 1", tables.v[i]);
		struct dun_stmt *st = NULL;
		e = dun_db_prepare(to, sql, &st);
		enum dun_step r = e == DUN_OK ? dun_stmt_step(st) : DUN_STEP_FAILED;
		if (r == DUN_STEP_FAILED) {
			e = st ? dun_stmt_err(st) : e;
			dun_store_set_err(err, err_size, "%s: %s", dun_db_path(to),
					  dun_db_errmsg(to));
			dun_stmt_finalize(st);
			goto free_tables;
		}
		dun_stmt_finalize(st);
		if (r == DUN_STEP_ROW) {
			size_t used = strlen(with_rows);
			if (n_with_rows < 8 && used + DUN_COPY_NAME_MAX + 3 < sizeof with_rows)
				snprintf(with_rows + used, sizeof with_rows - used, "%s%s",
					 n_with_rows ? ", " : "", tables.v[i]);
			n_with_rows++;
		}
	}
	if (n_with_rows) {
		dun_store_set_err(
		    err, err_size,
		    "%s: the target is not empty: %d dunning tables hold rows (%s%s); copy into "
		    "a new, empty database, not one that 'dunning init' or a service has "
		    "used",
		    dun_db_path(to), n_with_rows, with_rows, n_with_rows > 8 ? ", ..." : "");
		e = DUN_E_CONFIG;
	}
free_tables:
	free(tables.v);
	return e;
}

/* Bring the target's schema from version `from` to this binary's, in the open transaction. */
static enum dun_err migrate_in_transaction(struct dun_db *to, int from, char *err, size_t err_size)
{
	for (int m = from; m < dun_schema_count(); m++)
		for (const char *const *s = dun_schema_migration(m); *s; s++) {
			const char *sql = dun_schema_for_backend(*s, to->drv->name);
			if (!sql)
				continue;
			enum dun_err e = to->drv->exec_schema(to, sql, err, err_size);
			if (e != DUN_OK)
				return e;
		}
	if (from == dun_schema_count())
		return DUN_OK;
	return to->drv->set_schema_version(to, dun_schema_count(), err, err_size);
}

/* ---- checksums ------------------------------------------------------------- */

static uint64_t fnv1a(uint64_t h, const void *p, size_t n)
{
	const unsigned char *b = p;
	for (size_t i = 0; i < n; i++) {
		h ^= b[i];
		h *= 0x100000001b3ULL;
	}
	return h;
}

/* A finalizer (splitmix64's), so that sums of similar rows do not cancel out. */
static uint64_t scramble(uint64_t x)
{
	x ^= x >> 30;
	x *= 0xbf58476d1ce4e5b9ULL;
	x ^= x >> 27;
	x *= 0x94d049bb133111ebULL;
	x ^= x >> 31;
	return x;
}

/*
 * Column col of st's current row as the text both backends agree on: text
 * and integers as they are written, floating point with 17 digits. NULL
 * when the value is SQL NULL.
 */
static const char *value_text(struct dun_stmt *st, int col, char *num, size_t num_size, int *len)
{
	switch (dun_stmt_col_type(st, col)) {
	case DUN_COL_NULL:
		*len = 0;
		return NULL;
	case DUN_COL_FLOAT:
		*len = snprintf(num, num_size, "%.17g", dun_stmt_col_double(st, col));
		return num;
	case DUN_COL_INT:
	case DUN_COL_TEXT:
	case DUN_COL_BLOB:
		break;
	}
	*len = dun_stmt_col_bytes(st, col);
	const char *t = dun_stmt_col_text(st, col);
	return t ? t : "";
}

static uint64_t row_hash(struct dun_stmt *st, int ncols)
{
	uint64_t h = 0xcbf29ce484222325ULL;
	for (int c = 0; c < ncols; c++) {
		char num[40];
		int len;
		const char *v = value_text(st, c, num, sizeof num, &len);
		if (!v) {
			h = fnv1a(h, "N", 1);
			continue;
		}
		uint64_t n = (uint64_t)len;
		h = fnv1a(h, "V", 1);
		h = fnv1a(h, &n, sizeof n);
		h = fnv1a(h, v, (size_t)len);
	}
	return scramble(h);
}

/* "c1", "c2", ... of cols into out. */
static void column_list(const struct names *cols, char *out, size_t out_size)
{
	size_t o = 0;
	out[0] = '\0';
	for (int i = 0; i < cols->n && o < out_size; i++)
		o += (size_t)snprintf(out + o, out_size - o, "%s\"%s\"", i ? ", " : "", cols->v[i]);
}

/*
 * Count and checksum every row of table (columns cols) in db. The target's
 * are read through a cursor, 10,000 rows at a time: its driver holds a
 * statement's whole result in memory.
 */
static enum dun_err table_sum(struct dun_db *db, const char *table, const struct names *cols,
			      bool by_cursor, int64_t *rows, uint64_t *sum, char *err,
			      size_t err_size)
{
	char list[MAX_COLUMNS * (DUN_COPY_NAME_MAX + 4)];
	column_list(cols, list, sizeof list);
	char *sql = dun_malloc(strlen(list) + 128);
	sprintf(sql, "%sSELECT %s FROM \"%s\"",
		by_cursor ? "DECLARE dun_copy_sum NO SCROLL CURSOR FOR " : "", list, table);
	struct dun_stmt *st = NULL;
	enum dun_err e = by_cursor ? dun_db_exec(db, sql, NULL, 0) : DUN_OK;
	if (e == DUN_OK)
		e = dun_db_prepare(db, by_cursor ? SUM_FETCH_SQL : sql, &st);
	free(sql);
	*rows = 0;
	*sum = 0;
	if (e != DUN_OK) {
		dun_store_set_err(err, err_size, "%s: %s: %s", dun_db_path(db), table,
				  dun_db_errmsg(db));
		return e;
	}
	enum dun_step r;
	int64_t fetched;
	do {
		fetched = 0;
		while ((r = dun_stmt_step(st)) == DUN_STEP_ROW) {
			fetched++;
			*sum += row_hash(st, cols->n);
		}
		*rows += fetched;
		dun_stmt_reset(st);
	} while (by_cursor && r == DUN_STEP_DONE && fetched > 0);
	if (r == DUN_STEP_FAILED) {
		e = dun_stmt_err(st);
		dun_store_set_err(err, err_size, "%s: %s: %s", dun_db_path(db), table,
				  dun_db_errmsg(db));
	}
	dun_stmt_finalize(st);
	if (e == DUN_OK && by_cursor) {
		e = dun_db_exec(db, "CLOSE dun_copy_sum", NULL, 0);
		if (e != DUN_OK)
			dun_store_set_err(err, err_size, "%s: %s: %s", dun_db_path(db), table,
					  dun_db_errmsg(db));
	}
	return e;
}

/* ---- indexes, constraints and triggers during the load ------------------- */

/*
 * Into a schema the copy made itself, in its own transaction, the rows are
 * loaded without the tables' indexes and triggers: every index (secondary
 * ones, and those of primary key and unique constraints) is dropped before
 * and built again from its own definition after, in one sorted pass over
 * the loaded rows instead of an insertion per row (a load's time was mostly
 * there); the triggers, which keep derived columns such as account_id, are
 * disabled, as the copy brings those columns with the rows, and enabled
 * again. Nothing of this is visible outside the transaction, and a
 * duplicate key fails the rebuild of its constraint, so the copy.
 */
static const char TARGET_CONSTRAINTS[] =
    "SELECT c.relname, k.conname, pg_get_constraintdef(k.oid) FROM pg_constraint k"
    " JOIN pg_class c ON c.oid = k.conrelid JOIN pg_namespace n ON n.oid = c.relnamespace"
    " WHERE n.nspname = current_schema() AND k.contype IN ('p', 'u')"
    " ORDER BY c.relname, k.conname";
static const char TARGET_SECONDARY_INDEXES[] =
    "SELECT t.relname, c.relname, pg_get_indexdef(x.indexrelid) FROM pg_index x"
    " JOIN pg_class c ON c.oid = x.indexrelid JOIN pg_class t ON t.oid = x.indrelid"
    " JOIN pg_namespace n ON n.oid = t.relnamespace WHERE n.nspname = current_schema()"
    " AND NOT EXISTS (SELECT 1 FROM pg_constraint k WHERE k.conindid = x.indexrelid)"
    " ORDER BY c.relname";
static const char TARGET_TRIGGERS[] =
    "SELECT c.relname, t.tgname FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid"
    " JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = current_schema()"
    " AND NOT t.tgisinternal AND t.tgenabled <> 'D' ORDER BY c.relname, t.tgname";

/* The statements that put back what defer_for_load took away, in order. */
struct deferred {
	int n;
	char **sql;
};

static void deferred_free(struct deferred *d)
{
	for (int i = 0; i < d->n; i++)
		free(d->sql[i]);
	free(d->sql);
	memset(d, 0, sizeof *d);
}

static char *vformat(const char *fmt, va_list ap) __attribute__((format(printf, 1, 0)));

static char *vformat(const char *fmt, va_list ap)
{
	va_list again;
	va_copy(again, ap);
	int n = vsnprintf(NULL, 0, fmt, ap);
	char *out = dun_malloc((size_t)n + 1);
	vsnprintf(out, (size_t)n + 1, fmt, again);
	va_end(again);
	return out;
}

static void deferred_add(struct deferred *d, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

static void deferred_add(struct deferred *d, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	d->sql = dun_realloc(d->sql, sizeof *d->sql * (size_t)(d->n + 1));
	d->sql[d->n++] = vformat(fmt, ap);
	va_end(ap);
}

enum deferred_kind { DEFER_CONSTRAINT, DEFER_INDEX, DEFER_TRIGGER };

/*
 * For each row of sql (an object's table, its name, its definition): take
 * the object away now and note how to put it back after the load. An
 * object whose names are not plain is not ours: it stays as it is.
 */
static enum dun_err defer_each(struct dun_db *to, enum deferred_kind kind, const char *sql,
			       struct deferred *d, char *err, size_t err_size)
{
	struct deferred now = {0};
	struct dun_stmt *st = NULL;
	enum dun_err e = dun_db_prepare(to, sql, &st);
	while (e == DUN_OK && dun_stmt_row(st)) {
		const char *table = dun_stmt_col_text(st, 0), *name = dun_stmt_col_text(st, 1);
		const char *def = kind == DEFER_TRIGGER ? "" : dun_stmt_col_text(st, 2);
		if (!plain_name(table) || !plain_name(name) || !def)
			continue;
		switch (kind) {
		case DEFER_CONSTRAINT:
			deferred_add(&now, "ALTER TABLE \"%s\" DROP CONSTRAINT \"%s\"", table,
				     name);
			deferred_add(d, "ALTER TABLE \"%s\" ADD CONSTRAINT \"%s\" %s", table, name,
				     def);
			break;
		case DEFER_INDEX:
			deferred_add(&now, "DROP INDEX \"%s\"", name);
			deferred_add(d, "%s", def);
			break;
		case DEFER_TRIGGER:
			deferred_add(&now, "ALTER TABLE \"%s\" DISABLE TRIGGER \"%s\"", table,
				     name);
			deferred_add(d, "ALTER TABLE \"%s\" ENABLE TRIGGER \"%s\"", table, name);
			break;
		}
	}
	if (e == DUN_OK)
		e = dun_stmt_err(st);
	dun_stmt_finalize(st);
	if (e != DUN_OK)
		dun_store_set_err(err, err_size, "%s: %s", dun_db_path(to), dun_db_errmsg(to));
	for (int i = 0; e == DUN_OK && i < now.n; i++)
		e = dun_db_exec(to, now.sql[i], err, err_size);
	deferred_free(&now);
	return e;
}

/* Before the load: drop the indexes and constraints, disable the triggers. */
static enum dun_err defer_for_load(struct dun_db *to, struct deferred *d, char *err,
				   size_t err_size)
{
	enum dun_err e = defer_each(to, DEFER_CONSTRAINT, TARGET_CONSTRAINTS, d, err, err_size);
	if (e == DUN_OK)
		e = defer_each(to, DEFER_INDEX, TARGET_SECONDARY_INDEXES, d, err, err_size);
	if (e == DUN_OK)
		e = defer_each(to, DEFER_TRIGGER, TARGET_TRIGGERS, d, err, err_size);
	return e;
}

/* After the load: build the indexes and constraints again, enable the triggers. */
static enum dun_err restore_after_load(struct dun_db *to, const struct deferred *d, char *err,
				       size_t err_size)
{
	enum dun_err e = DUN_OK;
	for (int i = 0; e == DUN_OK && i < d->n; i++)
		e = dun_db_exec(to, d->sql[i], err, err_size);
	return e;
}

/* ---- the copy of one table ----------------------------------------------------- */

/*
 * Copy every row of table from the source to the target with the store's
 * bulk load (PostgreSQL's COPY FROM STDIN): each value as text (or NULL),
 * read by the target as the column's type.
 */
static enum dun_err copy_table(struct dun_db *from, struct dun_db *to, const char *table,
			       const struct names *cols, int64_t *copied, char *err,
			       size_t err_size)
{
	char list[MAX_COLUMNS * (DUN_COPY_NAME_MAX + 4)];
	column_list(cols, list, sizeof list);
	char *sql = dun_malloc(strlen(list) + 64);
	sprintf(sql, "SELECT %s FROM \"%s\"", list, table);
	struct dun_stmt *src = NULL;
	enum dun_err e = dun_db_prepare(from, sql, &src);
	free(sql);
	*copied = 0;
	if (e != DUN_OK) {
		dun_store_set_err(err, err_size, "%s: %s: %s", dun_db_path(from), table,
				  dun_db_errmsg(from));
		return e;
	}
	const char *names[MAX_COLUMNS];
	for (int c = 0; c < cols->n; c++)
		names[c] = cols->v[c];
	e = dun_db_load_begin(to, table, names, cols->n, err, err_size);
	if (e != DUN_OK) {
		dun_stmt_finalize(src);
		return e;
	}
	char num[MAX_COLUMNS][40];
	const char *values[MAX_COLUMNS];
	int lens[MAX_COLUMNS];
	int64_t sent = 0;
	enum dun_step r;
	while ((r = dun_stmt_step(src)) == DUN_STEP_ROW) {
		for (int c = 0; c < cols->n; c++)
			values[c] = value_text(src, c, num[c], sizeof num[c], &lens[c]);
		sent++;
		e = dun_db_load_row(to, values, lens);
		if (e != DUN_OK)
			break;
	}
	bool read_failed = r == DUN_STEP_FAILED;
	if (read_failed) {
		e = dun_stmt_err(src);
		dun_store_set_err(err, err_size, "%s: reading %s: %s", dun_db_path(from), table,
				  dun_db_errmsg(from));
	}
	char end_err[DUN_DB_ERRMSG_MAX] = "";
	enum dun_err ee = dun_db_load_end(to, e != DUN_OK, copied, end_err, sizeof end_err);
	if (e == DUN_OK && ee == DUN_OK && *copied != sent) {
		dun_store_set_err(end_err, sizeof end_err,
				  "%s: the server stored %lld rows of %lld sent", dun_db_path(to),
				  (long long)*copied, (long long)sent);
		ee = DUN_E_STORE;
	}
	if (!read_failed && ee != DUN_OK) {
		/* What the server said about the load (a failed row send says only that). */
		dun_store_set_err(err, err_size, "writing %s: %s", table, end_err);
		e = ee;
	}
	dun_stmt_finalize(src);
	return e;
}

/* ---- identities ------------------------------------------------------------- */

/*
 * Move every identity column's sequence of the target past the largest id
 * copied, and past the largest id SQLite ever gave out (its sqlite_sequence,
 * for AUTOINCREMENT tables whose newest rows were deleted), so the first
 * row written on PostgreSQL gets a fresh id that never was a row's before.
 */
static enum dun_err advance_identities(struct dun_db *from, struct dun_db *to, int *advanced,
				       char *err, size_t err_size)
{
	struct names tables = {0}, cols = {0};
	struct dun_stmt *st = NULL;
	enum dun_err e = dun_db_prepare(to, TARGET_IDENTITIES, &st);
	while (e == DUN_OK && dun_stmt_row(st)) {
		const char *t = dun_stmt_col_text(st, 0), *c = dun_stmt_col_text(st, 1);
		if (!plain_name(t) || !plain_name(c)) {
			dun_store_set_err(err, err_size, "%s: unexpected identity column %s.%s",
					  dun_db_path(to), t ? t : "", c ? c : "");
			e = DUN_E_STORE;
			break;
		}
		names_add(&tables, t);
		names_add(&cols, c);
	}
	if (e == DUN_OK)
		e = dun_stmt_err(st);
	dun_stmt_finalize(st);
	for (int i = 0; e == DUN_OK && i < tables.n; i++) {
		const char *table = tables.v[i], *col = cols.v[i];
		int64_t top = 0;
		char sql[256];
		st = NULL;
		snprintf(sql, sizeof sql, "SELECT COALESCE(MAX(\"%s\"), 0) FROM \"%s\"", col,
			 table);
		e = dun_db_prepare(to, sql, &st);
		if (e == DUN_OK && dun_stmt_row(st))
			top = dun_stmt_col_int64(st, 0);
		if (e == DUN_OK)
			e = dun_stmt_err(st);
		dun_stmt_finalize(st);
		if (e != DUN_OK)
			break;
		st = NULL;
		/* A source without AUTOINCREMENT tables has no sqlite_sequence: nothing to add. */
		if (dun_db_prepare(from, "SELECT seq FROM sqlite_sequence WHERE name = ?1", &st) ==
		    DUN_OK) {
			dun_stmt_bind_text(st, 1, table);
			if (dun_stmt_row(st) && dun_stmt_col_int64(st, 0) > top)
				top = dun_stmt_col_int64(st, 0);
		}
		dun_stmt_finalize(st);
		if (top <= 0)
			continue;
		st = NULL;
		e = dun_db_prepare(to, "SELECT setval(pg_get_serial_sequence(?1, ?2), ?3)", &st);
		if (e == DUN_OK) {
			dun_stmt_bind_text(st, 1, table);
			dun_stmt_bind_text(st, 2, col);
			dun_stmt_bind_int64(st, 3, top);
			e = dun_stmt_done(st);
		}
		dun_stmt_finalize(st);
		if (e == DUN_OK)
			(*advanced)++;
	}
	if (e != DUN_OK && err && !err[0])
		dun_store_set_err(err, err_size, "%s: advancing the identity columns: %s",
				  dun_db_path(to), dun_db_errmsg(to));
	free(tables.v);
	free(cols.v);
	return e;
}

/* ---- the copy --------------------------------------------------------------- */

/* The sets a and b differ: name the first name one has and the other lacks. */
static const char *first_difference(const struct names *a, const struct names *b)
{
	for (int i = 0; i < a->n; i++)
		if (!names_has(b, a->v[i]))
			return a->v[i];
	return NULL;
}

/* Copy and verify every table, in the open transactions of both. */
static enum dun_err copy_tables(struct dun_db *from, struct dun_db *to, const struct deferred *d,
				struct dun_copy_report *out, char *err, size_t err_size)
{
	struct names src = {0}, dst = {0}, scols = {0}, dcols = {0};
	enum dun_err e = read_names(from, SOURCE_TABLES, NULL, &src, err, err_size);
	if (e == DUN_OK)
		e = read_names(to, TARGET_TABLES, NULL, &dst, err, err_size);
	if (e != DUN_OK)
		goto free_names;
	/* The migrations' record is not a table of the source. */
	for (int i = 0; i < dst.n; i++)
		if (!strcmp(dst.v[i], "dunning_schema"))
			memmove(dst.v[i], dst.v[i + 1], sizeof *dst.v * (size_t)(dst.n-- - i - 1));
	const char *odd = first_difference(&src, &dst);
	if (odd || (odd = first_difference(&dst, &src))) {
		dun_store_set_err(
		    err, err_size,
		    "%s: table %s is %s; the source is not a database this dunning made",
		    dun_db_path(from), odd,
		    names_has(&src, odd) ? "not in this binary's schema" : "missing");
		e = DUN_E_CORRUPT;
		goto free_names;
	}
	out->tables = dun_calloc((size_t)(src.n ? src.n : 1), sizeof *out->tables);
	for (int i = 0; i < src.n; i++) {
		const char *table = src.v[i];
		struct dun_copy_table *t = &out->tables[out->n_tables++];
		snprintf(t->name, sizeof t->name, "%s", table);
		scols.n = dcols.n = 0;
		e = read_names(from, "SELECT name FROM pragma_table_info(?1)", table, &scols, err,
			       err_size);
		if (e == DUN_OK)
			e = read_names(to, TARGET_COLUMNS, table, &dcols, err, err_size);
		if (e != DUN_OK)
			goto free_names;
		odd = first_difference(&scols, &dcols);
		if (odd || (odd = first_difference(&dcols, &scols)) || !scols.n ||
		    scols.n > MAX_COLUMNS) {
			dun_store_set_err(
			    err, err_size,
			    "%s: the columns of table %s (%s) differ from this binary's schema; "
			    "the source is not a database this dunning made",
			    dun_db_path(from), table, odd ? odd : "none");
			e = DUN_E_CORRUPT;
			goto free_names;
		}
		int64_t copied = 0;
		e = copy_table(from, to, table, &scols, &copied, err, err_size);
		if (e != DUN_OK)
			goto free_names;
		out->rows += copied;
	}
	e = restore_after_load(to, d, err, err_size);
	if (e != DUN_OK)
		goto free_names;
	/*
	 * Summed once every table is copied and the indexes and triggers are
	 * back: where the triggers stayed on (a target whose schema was there
	 * before), the mirror's (schema migration 14) set a row's account_id
	 * from rows of other tables, so a table is only final when all of them
	 * are there.
	 */
	for (int i = 0; i < out->n_tables; i++) {
		struct dun_copy_table *t = &out->tables[i];
		scols.n = 0;
		e = read_names(from, "SELECT name FROM pragma_table_info(?1)", t->name, &scols, err,
			       err_size);
		if (e == DUN_OK)
			e = table_sum(from, t->name, &scols, false, &t->rows_from, &t->sum_from,
				      err, err_size);
		if (e == DUN_OK)
			e = table_sum(to, t->name, &scols, true, &t->rows_to, &t->sum_to, err,
				      err_size);
		if (e != DUN_OK)
			goto free_names;
	}
	e = advance_identities(from, to, &out->identities, err, err_size);
	if (e != DUN_OK)
		goto free_names;
	out->verified = true;
	for (int i = 0; i < out->n_tables; i++)
		if (out->tables[i].rows_from != out->tables[i].rows_to ||
		    out->tables[i].sum_from != out->tables[i].sum_to)
			out->verified = false;
	if (!out->verified) {
		dun_store_set_err(
		    err, err_size,
		    "%s: the copy differs from the source (see the table); nothing was "
		    "committed",
		    dun_db_path(to));
		e = DUN_E_GUARD;
	}
free_names:
	free(src.v);
	free(dst.v);
	free(scols.v);
	free(dcols.v);
	return e;
}

enum dun_err dun_store_copy(const char *from, const char *to, dun_copy_check_fn check, void *arg,
			    struct dun_copy_report *out, char *err, size_t err_size)
{
	memset(out, 0, sizeof *out);
	if (dun_db_is_url(from)) {
		dun_store_set_err(err, err_size, "--from: the source is a SQLite file, not a URL");
		return DUN_E_INVALID;
	}
	if (!dun_db_is_url(to)) {
		dun_store_set_err(
		    err, err_size,
		    "--to: \"%s\" is not a postgresql:// URL (the target is a PostgreSQL "
		    "database)",
		    to);
		return DUN_E_CONFIG;
	}
	struct dun_db *src = NULL, *dst = NULL;
	/* Read-only: a source of another schema version is refused, never migrated. */
	enum dun_err e = dun_db_open_as(from, DUN_DB_READONLY, &src, err, err_size);
	if (e != DUN_OK)
		return e;
	/* Not migrated yet: the migrations run inside the copy's transaction. */
	e = dun_db_open_nomigrate(to, &dst, err, err_size);
	if (e != DUN_OK)
		goto close_source;
	int version = dun_db_schema_version(dst);
	if (version < 0) {
		dun_store_set_err(err, err_size, "%s: cannot read the schema version: %s",
				  dun_db_path(dst), dun_db_errmsg(dst));
		e = DUN_E_STORE;
		goto close_target;
	}
	out->schema_version = dun_schema_count();
	/* One read transaction: every table is read from the same snapshot. */
	e = dun_db_exec(src, "BEGIN", err, err_size);
	if (e != DUN_OK)
		goto close_target;
	e = dun_db_begin(dst);
	if (e != DUN_OK) {
		dun_store_set_err(err, err_size, "%s: cannot begin: %s", dun_db_path(dst),
				  dun_db_errmsg(dst));
		goto end_read;
	}
	e = check_empty(dst, version, err, err_size);
	if (e == DUN_OK)
		e = migrate_in_transaction(dst, version, err, err_size);
	/* Only a schema made here and now: its tables are this transaction's own. */
	struct deferred deferred = {0};
	if (e == DUN_OK && version == 0)
		e = defer_for_load(dst, &deferred, err, err_size);
	if (e == DUN_OK)
		e = copy_tables(src, dst, &deferred, out, err, err_size);
	deferred_free(&deferred);
	if (e == DUN_OK && check)
		e = check(src, dst, arg, err, err_size);
	if (e == DUN_OK) {
		e = dun_db_commit(dst);
		if (e != DUN_OK)
			dun_store_set_err(err, err_size, "%s: commit: %s", dun_db_path(dst),
					  dun_db_errmsg(dst));
	} else {
		dun_db_rollback(dst);
	}
end_read:
	dun_db_rollback(src);
close_target:
	dun_db_close(dst);
close_source:
	dun_db_close(src);
	return e;
}

void dun_copy_report_free(struct dun_copy_report *r)
{
	free(r->tables);
	r->tables = NULL;
	r->n_tables = 0;
}
