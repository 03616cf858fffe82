/*
 * driver_pg.c — the PostgreSQL backend of the store seam (libpq), chosen
 * when the store is a postgresql:// URL.
 *
 * It sits under db.c beside driver_sqlite.c and hides what differs:
 *   - SQL is written with ?N parameters; they become $N here (outside
 *     string literals and quoted names). The identifier rowid, which the
 *     drift scan uses only as an ORDER BY tie-breaker, becomes ctid.
 *     SQLite's "UPDATE OR FAIL" (see inbox.c) becomes a plain UPDATE.
 *   - Statements are prepared once per connection, when first run, with
 *     the types of the first binds (integers as int8, so an INSERT ...
 *     SELECT ?2 into a bigint column works); a later run with other bind
 *     types prepares again. Values travel as text; getters parse text.
 *   - Schema statements are written for SQLite (schema.c) and translated
 *     once here: INTEGER becomes BIGINT (SQLite integers are 64-bit),
 *     INTEGER PRIMARY KEY [AUTOINCREMENT] an identity column, REAL double
 *     precision, BLOB bytea. The applied version is kept in a table.
 *   - A write transaction takes one store-wide advisory lock: an exclusive
 *     one (dun_db_begin) in exclusive mode, so it is serialized with every
 *     other write transaction exactly as SQLite's BEGIN IMMEDIATE
 *     serializes them; a concurrent one (dun_db_begin_concurrent) in
 *     shared mode, so concurrent ones run side by side, settled by row
 *     locks at READ COMMITTED, and wait only for exclusive ones.
 *   - Errors map once: serialization failure and deadlock (40001, 40P01)
 *     and lock timeouts (55P03) are DUN_E_BUSY; unique and other integrity
 *     violations DUN_E_CONFLICT; a lost connection DUN_E_IO. A lost
 *     connection is re-established with backoff; a statement outside a
 *     transaction is then run again once, while a transaction in progress
 *     is lost: everything up to dun_db_rollback() fails (retryable), and
 *     nothing after the loss can commit half of it.
 *   - COMMIT of a transaction PostgreSQL already aborted (a statement in it
 *     failed) is reported as a failure, never as success.
 */
#include "driver.h"
#include "util/mem.h"

#include <ctype.h>
#include <errno.h>
#include <poll.h>
#include <libpq-fe.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

/* Type OIDs of the PostgreSQL catalog (stable across versions). */
#define OID_BOOL    16
#define OID_BYTEA   17
#define OID_INT8    20
#define OID_INT2    21
#define OID_INT4    23
#define OID_TEXT    25
#define OID_FLOAT4  700
#define OID_FLOAT8  701
#define OID_NUMERIC 1700

/* The advisory lock key every write transaction takes ("dunning" in hex-ish). */
#define WRITE_LOCK_KEY	 "4242001"
/* The mirror writers' advisory lock (dun_db_lock_mirror). */
#define MIRROR_LOCK_KEY	 "4242002"
/* The first half of the two-key advisory locks named by dun_db_try_lock. */
#define NAMED_LOCK_CLASS "4242003"

#define RECONNECT_TRIES 8

struct pg_conn {
	PGconn *c;
	char *conninfo;
	char errmsg[DUN_DB_ERRMSG_MAX];
	int64_t changes;
	int generation; /* bumped by every reconnect: prepared statements are gone */
	int next_name;
	bool in_tx;
	bool tx_lost;	     /* the connection dropped inside the open transaction */
	bool notify_pending; /* NOTIFY the inbox channel with the next COMMIT */
	bool listening;	     /* this connection LISTENs on the inbox channel */
	bool ordered_reads;  /* the planner settings of pg_set_cache_kb are on */
	/* A bulk load in progress (pg_load_begin): rows not yet sent. */
	bool loading;
	bool load_failed; /* a send failed: the server has ended the COPY */
	int load_cols;
	char *load_buf;
	size_t load_len, load_cap;
};

/* The channel new triggers are announced on (dun_db_notify_inbox). */
#define INBOX_CHANNEL "dunning_inbox"

enum bind_kind { BIND_NONE, BIND_TEXT, BIND_INT, BIND_DOUBLE };

struct pg_param {
	enum bind_kind kind;
	const char *value; /* NULL for SQL NULL */
	char *owned;	   /* a copy, when the bind asked for one */
	int len;	   /* -1: NUL-terminated */
	char num[32];
};

struct pg_stmt {
	struct dun_stmt base;
	char *sql;   /* translated: $N parameters */
	int nparams; /* highest parameter number */
	bool *used;  /* per parameter: whether the SQL refers to it */
	/* Text and NULL parameters are declared text: the server could not infer them. */
	bool declare_text;
	struct pg_param *params;
	char name[24];
	int prepared_gen; /* generation it was prepared in, -1: not prepared */
	Oid *types;	  /* the parameter types it was prepared with */
	PGresult *res;
	int row; /* the current row, -1 before the first */
	bool executed;
	bool piped; /* run by pg_pipeline, not stepped yet: its count is in res */
};

static struct pg_conn *pc(struct dun_db *db)
{
	return db->conn;
}

static struct pg_stmt *ps(struct dun_stmt *st)
{
	return (struct pg_stmt *)st;
}

static void note_error(struct pg_conn *p, const char *msg)
{
	snprintf(p->errmsg, sizeof p->errmsg, "%s", msg ? msg : "unknown error");
	size_t n = strlen(p->errmsg);
	while (n && (p->errmsg[n - 1] == '\n' || p->errmsg[n - 1] == ' '))
		p->errmsg[--n] = '\0';
}

static enum dun_err map_sqlstate(const char *state)
{
	if (!state || strlen(state) != 5)
		return DUN_E_STORE;
	if (!strcmp(state, "40001") || !strcmp(state, "40P01") || !strcmp(state, "55P03") ||
	    !strcmp(state, "57014"))
		return DUN_E_BUSY;
	if (!strncmp(state, "23", 2))
		return DUN_E_CONFLICT;
	if (!strncmp(state, "08", 2) || !strcmp(state, "57P01") || !strcmp(state, "57P02") ||
	    !strcmp(state, "57P03") || !strncmp(state, "53", 2) || !strncmp(state, "58", 2))
		return DUN_E_IO;
	if (!strcmp(state, "54000"))
		return DUN_E_TOO_BIG;
	if (!strcmp(state, "42P01") || !strcmp(state, "42703"))
		return DUN_E_STORE;
	return DUN_E_STORE;
}

/* Whether the connection itself is gone (as opposed to a statement failing). */
static bool conn_lost(struct pg_conn *p)
{
	return PQstatus(p->c) == CONNECTION_BAD;
}

/*
 * The drift scan's reads (stream.c) on PostgreSQL: a range of accounts at a
 * time, in the order of the covering indexes of schema migration 14. Left to
 * itself the planner hashes a whole table (invoice_docs, p_subscriptions)
 * once per range, sorts the range's rows (spilling to disk at the default
 * work_mem) and starts parallel workers for each execution; without hash
 * and merge joins and without a full sort it walks the indexes in order: a
 * nested loop of index(-only) scans, and an incremental sort where an order
 * comes from an inner table (an invoice's attempts by created, id: rows of
 * one invoice at a time). Disabled plans stay possible (they only cost
 * more), so any other statement of the connection still runs; JIT is off
 * because such a cost would otherwise make it compile every execution.
 */
static const char ORDERED_READS_ON[] =
    "SET enable_hashjoin = off; SET enable_mergejoin = off; SET enable_sort = off;"
    " SET max_parallel_workers_per_gather = 0; SET jit = off";
static const char ORDERED_READS_OFF[] =
    "RESET enable_hashjoin; RESET enable_mergejoin; RESET enable_sort;"
    " RESET max_parallel_workers_per_gather; RESET jit";

static void sleep_ms(long ms)
{
	struct timespec ts = {.tv_sec = ms / 1000, .tv_nsec = (ms % 1000) * 1000000L};
	nanosleep(&ts, NULL);
}

/* Re-establish a lost connection, with backoff (about 6 s in all; not once
 * the process stops retrying, dun_db_stop_retrying). */
static bool reconnect(struct pg_conn *p)
{
	long wait_ms = 25;
	for (int i = 0; i < RECONNECT_TRIES && !dun_db_retrying_stopped(); i++) {
		PQreset(p->c);
		if (PQstatus(p->c) == CONNECTION_OK) {
			p->generation++;
			if (p->in_tx)
				p->tx_lost = true;
			PQclear(PQexec(p->c, "SET lock_timeout = '10s'"));
			if (p->ordered_reads)
				PQclear(PQexec(p->c, ORDERED_READS_ON));
			return true;
		}
		sleep_ms(wait_ms);
		wait_ms *= 2;
	}
	note_error(p, PQerrorMessage(p->c));
	return false;
}

/* The result of a command run with PQexec; maps failures. */
static enum dun_err check_result(struct pg_conn *p, PGresult *r)
{
	ExecStatusType s = r ? PQresultStatus(r) : PGRES_FATAL_ERROR;
	if (s == PGRES_COMMAND_OK || s == PGRES_TUPLES_OK || s == PGRES_EMPTY_QUERY)
		return DUN_OK;
	if (!r || conn_lost(p)) {
		note_error(p, PQerrorMessage(p->c));
		return DUN_E_IO;
	}
	note_error(p, PQresultErrorMessage(r));
	return map_sqlstate(PQresultErrorField(r, PG_DIAG_SQLSTATE));
}

static enum dun_err pg_open(struct dun_db *db, const char *url, char *err, size_t err_size)
{
	struct pg_conn *p = dun_calloc(1, sizeof *p);
	p->conninfo = dun_strdup(url);
	p->c = PQconnectdb(url);
	char shown[512];
	dun_db_redact(url, shown, sizeof shown);
	if (!p->c || PQstatus(p->c) != CONNECTION_OK) {
		char msg[DUN_DB_ERRMSG_MAX];
		snprintf(msg, sizeof msg, "%s", p->c ? PQerrorMessage(p->c) : "out of memory");
		size_t n = strlen(msg);
		while (n && (msg[n - 1] == '\n' || msg[n - 1] == ' ' || msg[n - 1] == '\t'))
			msg[--n] = '\0';
		for (char *c = msg; *c; c++)
			if (*c == '\n' || *c == '\t')
				*c = ' ';
		dun_db_scrub_password(url, msg, sizeof msg);
		/*
		 * What a person must fix (the URL, the password, the database
		 * name) is a configuration error; a server that does not answer
		 * may come back, so that is retryable.
		 */
		bool config = !p->c || PQconnectionNeedsPassword(p->c) || strstr(msg, "invalid") ||
			      strstr(msg, "authentication failed") ||
			      strstr(msg, "does not exist") || strstr(msg, "missing \"=\"") ||
			      strstr(msg, "no password supplied") || strstr(msg, "URI") ||
			      strstr(msg, "could not translate host name");
		dun_store_set_err(err, err_size, "%s: cannot connect to PostgreSQL: %s", shown,
				  msg);
		PQfinish(p->c);
		free(p->conninfo);
		free(p);
		return config ? DUN_E_CONFIG : DUN_E_UNAVAILABLE;
	}
	db->conn = p;
	return DUN_OK;
}

static void pg_close(struct dun_db *db)
{
	struct pg_conn *p = pc(db);
	if (!p)
		return;
	free(p->load_buf);
	PQfinish(p->c);
	free(p->conninfo);
	free(p);
	db->conn = NULL;
}

static enum dun_err pg_exec(struct dun_db *db, const char *sql, char *err, size_t err_size)
{
	struct pg_conn *p = pc(db);
	if (p->tx_lost) {
		note_error(p, "the connection to PostgreSQL was lost inside this transaction");
		dun_store_set_err(err, err_size, "%s: %s", db->path, p->errmsg);
		return DUN_E_IO;
	}
	PGresult *r = PQexec(p->c, sql);
	if (!r && conn_lost(p) && !p->in_tx && reconnect(p))
		r = PQexec(p->c, sql);
	enum dun_err e = check_result(p, r);
	if (e == DUN_E_IO && conn_lost(p))
		reconnect(p);
	if (e != DUN_OK)
		dun_store_set_err(err, err_size, "%s: %s", db->path, p->errmsg);
	PQclear(r);
	return e;
}

static enum dun_err pg_configure(struct dun_db *db, char *err, size_t err_size)
{
	/*
	 * A lock held by another writer is waited for as SQLite's busy
	 * timeout waits; notices (e.g. "relation exists, skipping") stay
	 * off the terminal.
	 */
	return pg_exec(db,
		       "SET lock_timeout = '10s'; SET client_min_messages = warning;"
		       " SET TIME ZONE 'UTC'",
		       err, err_size);
}

/* ---- SQL translation --------------------------------------------------------- */

/*
 * ?N -> $N, bare ? -> the next number, rowid -> ctid, a leading
 * "UPDATE OR FAIL " -> "UPDATE " (SQLite's conflict clause, which spares
 * it a statement journal; a PostgreSQL statement is atomic anyway);
 * *nparams gets the highest N and *used (allocated) which numbers appear.
 */
static char *translate(const char *sql, int *nparams, bool **used)
{
	static const char or_fail[] = "UPDATE OR FAIL ";
	if (strncmp(sql, or_fail, sizeof or_fail - 1) == 0) {
		char *plain = dun_asprintf("UPDATE %s", sql + sizeof or_fail - 1);
		char *out = translate(plain, nparams, used);
		free(plain);
		return out;
	}
	bool *seen = dun_calloc(strlen(sql) + 1, sizeof *seen);
	size_t n = strlen(sql);
	char *out = dun_malloc(n * 2 + 16);
	size_t o = 0;
	int next = 0, high = 0;
	for (size_t i = 0; i < n;) {
		char c = sql[i];
		if (c == '\'' || c == '"') {
			out[o++] = sql[i++];
			while (i < n) {
				out[o++] = sql[i];
				if (sql[i++] == c) {
					if (i < n && sql[i] == c) {
						out[o++] = sql[i++];
						continue;
					}
					break;
				}
			}
			continue;
		}
		if (c == '?') {
			i++;
			int num = 0;
			if (i < n && isdigit((unsigned char)sql[i])) {
				while (i < n && isdigit((unsigned char)sql[i]))
					num = num * 10 + (sql[i++] - '0');
			} else {
				num = ++next;
			}
			if (num > high)
				high = num;
			if (num >= 1 && (size_t)num <= strlen(sql))
				seen[num - 1] = true;
			o += (size_t)sprintf(out + o, "$%d", num);
			continue;
		}
		if ((c == 'r' || c == 'R') && strncasecmp(sql + i, "rowid", 5) == 0 &&
		    (i == 0 || !(isalnum((unsigned char)sql[i - 1]) || sql[i - 1] == '_')) &&
		    !(isalnum((unsigned char)sql[i + 5]) || sql[i + 5] == '_')) {
			memcpy(out + o, "ctid", 4);
			o += 4;
			i += 5;
			continue;
		}
		out[o++] = sql[i++];
	}
	out[o] = '\0';
	*nparams = high;
	*used = seen;
	return out;
}

/* Replace every case-insensitive whole-word occurrence of from by to. */
static char *replace_word(char *s, const char *from, const char *to)
{
	size_t fl = strlen(from), tl = strlen(to);
	size_t cap = strlen(s) + 1;
	for (size_t i = 0; s[i];) {
		bool word_start = i == 0 || !(isalnum((unsigned char)s[i - 1]) || s[i - 1] == '_');
		if (word_start && strncasecmp(s + i, from, fl) == 0 &&
		    !(isalnum((unsigned char)s[i + fl]) || s[i + fl] == '_')) {
			size_t rest = strlen(s + i + fl);
			if (tl > fl) {
				cap += tl - fl;
				s = dun_realloc(s, cap);
			}
			memmove(s + i + tl, s + i + fl, rest + 1);
			memcpy(s + i, to, tl);
			i += tl;
			continue;
		}
		i++;
	}
	return s;
}

/* A schema statement of schema.c (written for SQLite) in PostgreSQL's words. */
static char *translate_ddl(const char *sql)
{
	char *s = dun_strdup(sql);
	s = replace_word(s, "INTEGER PRIMARY KEY AUTOINCREMENT", "@IDENTITY@");
	s = replace_word(s, "INTEGER PRIMARY KEY", "@IDENTITY@");
	s = replace_word(s, "INTEGER", "BIGINT");
	s = replace_word(s, "REAL", "DOUBLE PRECISION");
	s = replace_word(s, "BLOB", "BYTEA");
	s = replace_word(s, "WITHOUT ROWID", "");
	/* replace_word does not see @ as a word character, which is fine here. */
	char *at;
	while ((at = strstr(s, "@IDENTITY@"))) {
		const char *id = "BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY";
		size_t rest = strlen(at + 10);
		size_t off = (size_t)(at - s);
		s = dun_realloc(s, strlen(s) + strlen(id) + 1);
		at = s + off;
		memmove(at + strlen(id), at + 10, rest + 1);
		memcpy(at, id, strlen(id));
	}
	return s;
}

static enum dun_err pg_exec_schema(struct dun_db *db, const char *sql, char *err, size_t err_size)
{
	char *t = translate_ddl(sql);
	enum dun_err e = pg_exec(db, t, err, err_size);
	free(t);
	return e;
}

/* ---- statements -------------------------------------------------------------- */

static enum dun_err pg_prepare(struct dun_db *db, const char *sql, bool persistent,
			       struct dun_stmt **out)
{
	(void)persistent;
	struct pg_conn *p = pc(db);
	*out = NULL;
	struct pg_stmt *s = dun_calloc(1, sizeof *s);
	s->base.db = db;
	s->sql = translate(sql, &s->nparams, &s->used);
	s->params = dun_calloc((size_t)(s->nparams ? s->nparams : 1), sizeof *s->params);
	s->types = dun_calloc((size_t)(s->nparams ? s->nparams : 1), sizeof *s->types);
	s->prepared_gen = -1;
	s->row = -1;
	snprintf(s->name, sizeof s->name, "dun_%d", ++p->next_name);
	*out = &s->base;
	return DUN_OK;
}

static void clear_result(struct pg_stmt *s)
{
	PQclear(s->res);
	s->res = NULL;
	s->row = -1;
	s->executed = false;
	s->piped = false;
}

static void clear_params(struct pg_stmt *s)
{
	for (int i = 0; i < s->nparams; i++) {
		free(s->params[i].owned);
		memset(&s->params[i], 0, sizeof s->params[i]);
	}
}

static void pg_finalize(struct dun_stmt *st)
{
	struct pg_stmt *s = ps(st);
	struct pg_conn *p = pc(st->db);
	clear_result(s);
	clear_params(s);
	if (s->prepared_gen >= 0 && p && s->prepared_gen == p->generation &&
	    PQstatus(p->c) == CONNECTION_OK && !p->in_tx) {
		char sql[64];
		snprintf(sql, sizeof sql, "DEALLOCATE %s", s->name);
		PQclear(PQexec(p->c, sql));
	}
	free(s->sql);
	free(s->params);
	free(s->types);
	free(s->used);
	free(s);
}

static void pg_reset(struct dun_stmt *st)
{
	clear_result(ps(st));
}

static void pg_clear(struct dun_stmt *st)
{
	clear_result(ps(st));
	clear_params(ps(st));
}

static struct pg_param *param(struct dun_stmt *st, int idx)
{
	struct pg_stmt *s = ps(st);
	if (idx < 1 || idx > s->nparams)
		return NULL;
	struct pg_param *pp = &s->params[idx - 1];
	free(pp->owned);
	memset(pp, 0, sizeof *pp);
	return pp;
}

static void pg_bind_text(struct dun_stmt *st, int idx, const char *v, int len, bool copy)
{
	struct pg_param *pp = param(st, idx);
	if (!pp)
		return;
	pp->kind = BIND_TEXT;
	if (!v)
		return;
	if (copy || len >= 0) {
		size_t n = len >= 0 ? (size_t)len : strlen(v);
		pp->owned = dun_malloc(n + 1);
		memcpy(pp->owned, v, n);
		pp->owned[n] = '\0';
		pp->value = pp->owned;
	} else {
		pp->value = v;
	}
}

static void pg_bind_int64(struct dun_stmt *st, int idx, int64_t v)
{
	struct pg_param *pp = param(st, idx);
	if (!pp)
		return;
	pp->kind = BIND_INT;
	snprintf(pp->num, sizeof pp->num, "%lld", (long long)v);
	pp->value = pp->num;
}

static void pg_bind_double(struct dun_stmt *st, int idx, double v)
{
	struct pg_param *pp = param(st, idx);
	if (!pp)
		return;
	pp->kind = BIND_DOUBLE;
	snprintf(pp->num, sizeof pp->num, "%.17g", v);
	pp->value = pp->num;
}

static void pg_bind_null(struct dun_stmt *st, int idx)
{
	struct pg_param *pp = param(st, idx);
	if (pp)
		pp->kind = BIND_NONE;
}

static int pg_param_count(struct dun_stmt *st)
{
	return ps(st)->nparams;
}

static Oid type_of(const struct pg_stmt *s, int i)
{
	const struct pg_param *pp = &s->params[i];
	/* A number the SQL skips still needs a type; text takes any value. */
	if (!s->used[i])
		return OID_TEXT;
	switch (pp->kind) {
	case BIND_INT:
		return OID_INT8;
	case BIND_DOUBLE:
		return OID_FLOAT8;
	case BIND_TEXT:
	case BIND_NONE:
		return s->declare_text ? OID_TEXT : 0;
	}
	return 0;
}

/* Prepare s on the current connection, with the types of its current binds. */
static enum dun_err ensure_prepared(struct pg_stmt *s, struct pg_conn *p)
{
	bool same = s->prepared_gen == p->generation;
	for (int i = 0; same && i < s->nparams; i++)
		if (type_of(s, i) != s->types[i])
			same = false;
	if (same)
		return DUN_OK;
	if (s->prepared_gen == p->generation) {
		char sql[64];
		snprintf(sql, sizeof sql, "DEALLOCATE %s", s->name);
		PQclear(PQexec(p->c, sql));
	}
	for (int i = 0; i < s->nparams; i++)
		s->types[i] = type_of(s, i);
	PGresult *r = PQprepare(p->c, s->name, s->sql, s->nparams, s->types);
	enum dun_err e = check_result(p, r);
	const char *state = r ? PQresultErrorField(r, PG_DIAG_SQLSTATE) : NULL;
	if (e != DUN_OK && state && (!strcmp(state, "42P18") || !strcmp(state, "42P08")) &&
	    !s->declare_text) {
		/*
		 * "could not determine data type" (e.g. ?1 IS NULL): say text,
		 * as SQLite would take it. Inside a transaction the failed
		 * PREPARE did not abort anything: it is a protocol message.
		 */
		PQclear(r);
		s->declare_text = true;
		for (int i = 0; i < s->nparams; i++)
			s->types[i] = type_of(s, i);
		r = PQprepare(p->c, s->name, s->sql, s->nparams, s->types);
		e = check_result(p, r);
	}
	PQclear(r);
	if (e == DUN_OK)
		s->prepared_gen = p->generation;
	else
		s->prepared_gen = -1;
	return e;
}

static enum dun_err execute(struct pg_stmt *s, struct pg_conn *p)
{
	enum dun_err e = ensure_prepared(s, p);
	if (e != DUN_OK)
		return e;
	const char **values = dun_calloc((size_t)(s->nparams ? s->nparams : 1), sizeof *values);
	for (int i = 0; i < s->nparams; i++)
		values[i] = s->params[i].value;
	s->res = PQexecPrepared(p->c, s->name, s->nparams, values, NULL, NULL, 0);
	free(values);
	e = check_result(p, s->res);
	if (e != DUN_OK) {
		PQclear(s->res);
		s->res = NULL;
		return e;
	}
	const char *tuples = PQcmdTuples(s->res);
	p->changes = tuples && tuples[0] ? strtoll(tuples, NULL, 10) : 0;
	return DUN_OK;
}

static enum dun_step pg_step(struct dun_stmt *st)
{
	struct pg_stmt *s = ps(st);
	struct pg_conn *p = pc(st->db);
	if (!s->executed) {
		if (p->tx_lost) {
			note_error(p, "the connection to PostgreSQL was lost inside this "
				      "transaction");
			st->err = DUN_E_IO;
			return DUN_STEP_FAILED;
		}
		enum dun_err e = execute(s, p);
		if (e == DUN_E_IO && conn_lost(p)) {
			bool was_in_tx = p->in_tx;
			if (reconnect(p) && !was_in_tx)
				e = execute(s, p);
		}
		if (e != DUN_OK) {
			st->err = e;
			return DUN_STEP_FAILED;
		}
		s->executed = true;
		s->row = -1;
	} else if (s->piped) {
		/* Run by pg_pipeline: its count becomes the connection's now. */
		const char *tuples = PQcmdTuples(s->res);
		p->changes = tuples && tuples[0] ? strtoll(tuples, NULL, 10) : 0;
	}
	s->piped = false;
	if (!s->res || PQresultStatus(s->res) != PGRES_TUPLES_OK)
		return DUN_STEP_DONE;
	if (s->row + 1 >= PQntuples(s->res)) {
		s->row = PQntuples(s->res);
		return DUN_STEP_DONE;
	}
	s->row++;
	return DUN_STEP_ROW;
}

/*
 * dun_db_pipeline: every statement is prepared first (a round trip the
 * first time a connection sees it, as for a step), then all are sent in
 * pipeline mode with one Sync and their results read back in order: one
 * round trip for all of them. Each keeps its result, whose count becomes
 * the connection's at the statement's first step. A statement the server failed is reported and
 * the ones after it (PGRES_PIPELINE_ABORTED) are left unexecuted. A lost
 * connection leaves every statement unexecuted: its first step meets the
 * loss and reconnects as it would have alone (PQreset also ends pipeline
 * mode).
 */
static enum dun_err pg_pipeline(struct dun_db *db, struct dun_stmt *const *sts, int n)
{
	struct pg_conn *p = pc(db);
	if (p->tx_lost || p->loading || PQstatus(p->c) != CONNECTION_OK)
		return DUN_OK; /* the steps say what is wrong */
	for (int i = 0; i < n; i++) {
		struct pg_stmt *s = ps(sts[i]);
		if (s->executed)
			return DUN_E_INVALID;
		enum dun_err e = ensure_prepared(s, p);
		if (e != DUN_OK)
			return conn_lost(p) ? DUN_OK : e;
	}
	if (!PQenterPipelineMode(p->c))
		return DUN_OK;
	int sent = 0;
	for (; sent < n; sent++) {
		struct pg_stmt *s = ps(sts[sent]);
		const char **values =
		    dun_calloc((size_t)(s->nparams ? s->nparams : 1), sizeof *values);
		for (int i = 0; i < s->nparams; i++)
			values[i] = s->params[i].value;
		int ok = PQsendQueryPrepared(p->c, s->name, s->nparams, values, NULL, NULL, 0);
		free(values);
		if (!ok)
			break;
	}
	enum dun_err first = DUN_OK;
	bool lost = !PQpipelineSync(p->c);
	for (int i = 0; i < sent && !lost; i++) {
		struct pg_stmt *s = ps(sts[i]);
		PGresult *r = PQgetResult(p->c);
		ExecStatusType t = r ? PQresultStatus(r) : PGRES_FATAL_ERROR;
		if (t == PGRES_TUPLES_OK || t == PGRES_COMMAND_OK) {
			s->res = r;
			s->executed = true;
			s->piped = true;
			s->row = -1;
		} else if (t == PGRES_PIPELINE_ABORTED) {
			PQclear(r);
		} else {
			enum dun_err e = check_result(p, r);
			PQclear(r);
			/* 57P01 and the like: the server is ending the connection. */
			if (e == DUN_E_IO || conn_lost(p))
				lost = true;
			else if (first == DUN_OK)
				first = e;
		}
		/* Each result is followed by a NULL that ends it. */
		while (!lost && (r = PQgetResult(p->c)) != NULL)
			PQclear(r);
	}
	if (!lost) {
		PGresult *r = PQgetResult(p->c); /* the Sync's */
		lost = !r || PQresultStatus(r) != PGRES_PIPELINE_SYNC;
		PQclear(r);
	}
	if (lost || sent < n || !PQexitPipelineMode(p->c)) {
		/* Nothing of it is trusted: the steps run the statements again. */
		for (int i = 0; i < n; i++)
			clear_result(ps(sts[i]));
		if (!conn_lost(p) && PQpipelineStatus(p->c) != PQ_PIPELINE_OFF) {
			PGresult *r;
			while ((r = PQgetResult(p->c)) != NULL)
				PQclear(r);
			/* Still in pipeline mode: a new connection, as after a loss. */
			if (!PQexitPipelineMode(p->c))
				reconnect(p);
		}
		return first;
	}
	return first;
}

static bool has_value(struct pg_stmt *s, int col)
{
	return s->res && s->row >= 0 && s->row < PQntuples(s->res) && col >= 0 &&
	       col < PQnfields(s->res) && !PQgetisnull(s->res, s->row, col);
}

static int64_t pg_col_int64(struct dun_stmt *st, int col)
{
	struct pg_stmt *s = ps(st);
	if (!has_value(s, col))
		return 0;
	const char *v = PQgetvalue(s->res, s->row, col);
	if (PQftype(s->res, col) == OID_BOOL)
		return v[0] == 't';
	if (PQftype(s->res, col) == OID_FLOAT8 || PQftype(s->res, col) == OID_FLOAT4)
		return (int64_t)strtod(v, NULL);
	return strtoll(v, NULL, 10);
}

static double pg_col_double(struct dun_stmt *st, int col)
{
	struct pg_stmt *s = ps(st);
	if (!has_value(s, col))
		return 0;
	const char *v = PQgetvalue(s->res, s->row, col);
	if (PQftype(s->res, col) == OID_BOOL)
		return v[0] == 't';
	return strtod(v, NULL);
}

static const char *pg_col_text(struct dun_stmt *st, int col)
{
	struct pg_stmt *s = ps(st);
	if (!has_value(s, col))
		return NULL;
	const char *v = PQgetvalue(s->res, s->row, col);
	if (PQftype(s->res, col) == OID_BOOL)
		return v[0] == 't' ? "1" : "0";
	return v;
}

static int pg_col_bytes(struct dun_stmt *st, int col)
{
	struct pg_stmt *s = ps(st);
	if (!has_value(s, col))
		return 0;
	if (PQftype(s->res, col) == OID_BOOL)
		return 1;
	return PQgetlength(s->res, s->row, col);
}

static enum dun_col_type pg_col_type(struct dun_stmt *st, int col)
{
	struct pg_stmt *s = ps(st);
	if (!has_value(s, col))
		return DUN_COL_NULL;
	switch (PQftype(s->res, col)) {
	case OID_BOOL:
	case OID_INT2:
	case OID_INT4:
	case OID_INT8:
		return DUN_COL_INT;
	case OID_NUMERIC:
		/* SUM() of integers is numeric: integral values read as integers. */
		return strchr(PQgetvalue(s->res, s->row, col), '.') ? DUN_COL_FLOAT : DUN_COL_INT;
	case OID_FLOAT4:
	case OID_FLOAT8:
		return DUN_COL_FLOAT;
	case OID_BYTEA:
		return DUN_COL_BLOB;
	default:
		return DUN_COL_TEXT;
	}
}

static int pg_col_count(struct dun_stmt *st)
{
	struct pg_stmt *s = ps(st);
	return s->res ? PQnfields(s->res) : 0;
}

static const char *pg_col_name(struct dun_stmt *st, int col)
{
	struct pg_stmt *s = ps(st);
	const char *n = s->res ? PQfname(s->res, col) : NULL;
	return n ? n : "";
}

static int64_t pg_changes(struct dun_db *db)
{
	return pc(db)->changes;
}

static const char *pg_errmsg(struct dun_db *db)
{
	struct pg_conn *p = pc(db);
	return p->errmsg[0] ? p->errmsg : "not an error";
}

static bool pg_in_transaction(struct dun_db *db)
{
	struct pg_conn *p = pc(db);
	return p->in_tx || PQtransactionStatus(p->c) != PQTRANS_IDLE;
}

static enum dun_err pg_begin(struct dun_db *db, bool concurrent, bool unsynced)
{
	struct pg_conn *p = pc(db);
	p->tx_lost = false;
	p->in_tx = false;
	/* SET LOCAL lasts to the end of the transaction, however it ends. */
	const char *sql = !concurrent ? "BEGIN; SELECT pg_advisory_xact_lock(" WRITE_LOCK_KEY ")"
			  : unsynced  ? "BEGIN; SET LOCAL synchronous_commit = off;"
					" SELECT pg_advisory_xact_lock_shared(" WRITE_LOCK_KEY ")"
				      : "BEGIN; SELECT pg_advisory_xact_lock_shared(" WRITE_LOCK_KEY
				       ")";
	enum dun_err e = pg_exec(db, sql, NULL, 0);
	if (e == DUN_OK) {
		p->in_tx = true;
	} else if (PQtransactionStatus(p->c) != PQTRANS_IDLE) {
		PQclear(PQexec(p->c, "ROLLBACK"));
	}
	return e;
}

static enum dun_err pg_lock_mirror(struct dun_db *db, bool wait)
{
	struct pg_conn *p = pc(db);
	if (!p->in_tx)
		return DUN_E_INVALID;
	if (wait)
		return pg_exec(db, "SELECT pg_advisory_xact_lock(" MIRROR_LOCK_KEY ")", NULL, 0);
	if (p->tx_lost) {
		note_error(p, "the connection to PostgreSQL was lost inside this transaction");
		return DUN_E_IO;
	}
	PGresult *r = PQexec(p->c, "SELECT pg_try_advisory_xact_lock(" MIRROR_LOCK_KEY ")");
	enum dun_err e = check_result(p, r);
	if (e == DUN_OK && strcmp(PQgetvalue(r, 0, 0), "t") != 0) {
		note_error(p, "another transaction is writing the mirror");
		e = DUN_E_BUSY;
	}
	PQclear(r);
	if (e == DUN_E_IO && conn_lost(p))
		reconnect(p);
	return e;
}

static enum dun_err pg_try_lock(struct dun_db *db, const char *key, bool *got)
{
	struct pg_conn *p = pc(db);
	*got = false;
	if (!p->in_tx)
		return DUN_E_INVALID;
	if (p->tx_lost) {
		note_error(p, "the connection to PostgreSQL was lost inside this transaction");
		return DUN_E_IO;
	}
	const char *values[1] = {key};
	PGresult *r = PQexecParams(
	    p->c, "SELECT pg_try_advisory_xact_lock(" NAMED_LOCK_CLASS ", hashtext($1))", 1, NULL,
	    values, NULL, NULL, 0);
	enum dun_err e = check_result(p, r);
	if (e == DUN_OK)
		*got = !strcmp(PQgetvalue(r, 0, 0), "t");
	PQclear(r);
	if (e == DUN_E_IO && conn_lost(p))
		reconnect(p);
	return e;
}

static enum dun_err pg_commit(struct dun_db *db)
{
	struct pg_conn *p = pc(db);
	if (p->tx_lost) {
		note_error(p, "the connection to PostgreSQL was lost inside this transaction;"
			      " nothing of it was committed");
		p->tx_lost = false;
		p->in_tx = false;
		return DUN_E_IO;
	}
	/* The notification rides in the COMMIT's round trip; PostgreSQL sends it
	 * to the listeners only if the transaction commits. */
	bool notify = p->notify_pending;
	p->notify_pending = false;
	PGresult *r = PQexec(p->c, notify ? "NOTIFY " INBOX_CHANNEL "; COMMIT" : "COMMIT");
	enum dun_err e = check_result(p, r);
	if (e != DUN_OK && !conn_lost(p) && PQtransactionStatus(p->c) != PQTRANS_IDLE)
		PQclear(PQexec(p->c, "ROLLBACK")); /* the NOTIFY failed: COMMIT never ran */
	/* COMMIT of an aborted transaction "succeeds" with the tag ROLLBACK. */
	if (e == DUN_OK && !strcmp(PQcmdStatus(r), "ROLLBACK")) {
		note_error(p, "the transaction was aborted by an earlier error and rolled back");
		e = DUN_E_STORE;
	}
	PQclear(r);
	if (e == DUN_E_IO && conn_lost(p))
		reconnect(p);
	p->in_tx = false;
	p->tx_lost = false;
	return e;
}

static void pg_rollback(struct dun_db *db)
{
	struct pg_conn *p = pc(db);
	p->notify_pending = false;
	if (!p->tx_lost && PQtransactionStatus(p->c) != PQTRANS_IDLE)
		PQclear(PQexec(p->c, "ROLLBACK"));
	p->in_tx = false;
	p->tx_lost = false;
}

static void pg_notify_inbox(struct dun_db *db)
{
	struct pg_conn *p = pc(db);
	if (pg_in_transaction(db))
		p->notify_pending = true;
	else
		PQclear(PQexec(p->c, "NOTIFY " INBOX_CHANNEL)); /* a wake-up: best effort */
}

static enum dun_err pg_listen_inbox(struct dun_db *db, char *err, size_t err_size)
{
	struct pg_conn *p = pc(db);
	PGresult *r = PQexec(p->c, "LISTEN " INBOX_CHANNEL);
	enum dun_err e = check_result(p, r);
	PQclear(r);
	if (e != DUN_OK) {
		snprintf(err, err_size, "LISTEN: %s", p->errmsg);
		return e;
	}
	p->listening = true;
	return DUN_OK;
}

/* Take every notification already received; true if there was one. */
static bool drain_notifies(struct pg_conn *p)
{
	bool any = false;
	PGnotify *n;
	while ((n = PQnotifies(p->c)) != NULL) {
		any = true;
		PQfreemem(n);
	}
	return any;
}

static int pg_wait_inbox(struct dun_db *db, int timeout_ms)
{
	struct pg_conn *p = pc(db);
	if (conn_lost(p)) {
		/* Back with LISTEN again; what was sent meanwhile is lost: say woken. */
		if (!reconnect(p))
			return -1;
		char err[DUN_DB_ERRMSG_MAX + 16]; /* "LISTEN: " and the driver's message */
		p->listening = false;
		return pg_listen_inbox(db, err, sizeof err) == DUN_OK ? 1 : -1;
	}
	if (!PQconsumeInput(p->c))
		return conn_lost(p) ? pg_wait_inbox(db, 0) : -1;
	if (drain_notifies(p))
		return 1;
	struct pollfd pfd = {.fd = PQsocket(p->c), .events = POLLIN};
	if (pfd.fd < 0)
		return -1;
	int rc = poll(&pfd, 1, timeout_ms);
	if (rc <= 0)
		return rc < 0 && errno != EINTR ? -1 : 0;
	if (!PQconsumeInput(p->c)) {
		note_error(p, PQerrorMessage(p->c));
		return -1;
	}
	return drain_notifies(p) ? 1 : 0;
}

/* ---- bulk load ------------------------------------------------------------- */

/*
 * COPY FROM STDIN in text format: a row is its values separated by tabs and
 * ended by a newline; NULL is \N; a backslash, tab, newline or carriage
 * return inside a value is written as \\, \t, \n, \r. Every value is
 * sent as text and read as its column's type, as the binds of a statement
 * are. The schema has no bytea column (BLOB): a value for one would be
 * read in bytea's own text form. Rows are gathered into about LOAD_CHUNK
 * bytes per message.
 */
#define LOAD_CHUNK (256 * 1024)

static bool load_flush(struct pg_conn *p)
{
	if (p->load_len && !p->load_failed &&
	    PQputCopyData(p->c, p->load_buf, (int)p->load_len) != 1) {
		note_error(p, PQerrorMessage(p->c));
		p->load_failed = true;
	}
	p->load_len = 0;
	return !p->load_failed;
}

static enum dun_err pg_load_begin(struct dun_db *db, const char *table, const char *const *cols,
				  int ncols, char *err, size_t err_size)
{
	struct pg_conn *p = pc(db);
	if (p->loading || ncols < 1) {
		note_error(p, p->loading ? "a bulk load is already in progress" : "no columns");
		dun_store_set_err(err, err_size, "%s: %s", db->path, p->errmsg);
		return DUN_E_INVALID;
	}
	if (p->tx_lost) {
		note_error(p, "the connection to PostgreSQL was lost inside this transaction");
		dun_store_set_err(err, err_size, "%s: %s", db->path, p->errmsg);
		return DUN_E_IO;
	}
	size_t cap = strlen(table) + 48;
	for (int i = 0; i < ncols; i++)
		cap += strlen(cols[i]) + 4;
	char *sql = dun_malloc(cap);
	size_t o = (size_t)snprintf(sql, cap, "COPY \"%s\" (", table);
	for (int i = 0; i < ncols; i++)
		o += (size_t)snprintf(sql + o, cap - o, "%s\"%s\"", i ? ", " : "", cols[i]);
	snprintf(sql + o, cap - o, ") FROM STDIN");
	PGresult *r = PQexec(p->c, sql);
	free(sql);
	enum dun_err e = DUN_OK;
	if (!r || PQresultStatus(r) != PGRES_COPY_IN) {
		e = check_result(p, r);
		if (e == DUN_OK) {
			note_error(p, "the server did not start the COPY");
			e = DUN_E_STORE;
		}
		PQclear(r);
		if (e == DUN_E_IO && conn_lost(p))
			reconnect(p);
		dun_store_set_err(err, err_size, "%s: %s", db->path, p->errmsg);
		return e;
	}
	PQclear(r);
	p->loading = true;
	p->load_failed = false;
	p->load_cols = ncols;
	p->load_len = 0;
	if (!p->load_buf) {
		p->load_cap = LOAD_CHUNK * 2;
		p->load_buf = dun_malloc(p->load_cap);
	}
	return DUN_OK;
}

static enum dun_err pg_load_row(struct dun_db *db, const char *const *values, const int *lens)
{
	struct pg_conn *p = pc(db);
	if (!p->loading)
		return DUN_E_INVALID;
	if (p->load_failed)
		return DUN_E_STORE;
	for (int c = 0; c < p->load_cols; c++) {
		size_t n = values[c] ? (size_t)lens[c] : 0;
		/* Every byte escaped at worst, the separator, \N. */
		size_t need = p->load_len + 2 * n + 4;
		if (need > p->load_cap) {
			while (need > p->load_cap)
				p->load_cap *= 2;
			p->load_buf = dun_realloc(p->load_buf, p->load_cap);
		}
		char *o = p->load_buf + p->load_len;
		if (!values[c]) {
			*o++ = '\\';
			*o++ = 'N';
		} else {
			const char *v = values[c];
			for (size_t i = 0; i < n; i++) {
				char ch = v[i];
				switch (ch) {
				case '\\':
					*o++ = '\\';
					*o++ = '\\';
					break;
				case '\t':
					*o++ = '\\';
					*o++ = 't';
					break;
				case '\n':
					*o++ = '\\';
					*o++ = 'n';
					break;
				case '\r':
					*o++ = '\\';
					*o++ = 'r';
					break;
				default:
					*o++ = ch;
				}
			}
		}
		*o++ = c + 1 < p->load_cols ? '\t' : '\n';
		p->load_len = (size_t)(o - p->load_buf);
	}
	if (p->load_len >= LOAD_CHUNK && !load_flush(p))
		return conn_lost(p) ? DUN_E_IO : DUN_E_STORE;
	return DUN_OK;
}

static enum dun_err pg_load_end(struct dun_db *db, bool abandon, int64_t *rows, char *err,
				size_t err_size)
{
	struct pg_conn *p = pc(db);
	if (rows)
		*rows = 0;
	if (!p->loading)
		return DUN_E_INVALID;
	p->loading = false;
	if (!abandon)
		load_flush(p);
	p->load_len = 0;
	enum dun_err e = DUN_OK;
	/* After a failed send the COPY may be over already; end it in any case. */
	if (PQputCopyEnd(p->c, abandon ? "the load was abandoned" : NULL) != 1 && !p->load_failed) {
		note_error(p, PQerrorMessage(p->c));
		e = conn_lost(p) ? DUN_E_IO : DUN_E_STORE;
	}
	bool reported = false;
	PGresult *r;
	while ((r = PQgetResult(p->c))) {
		if (!reported) {
			reported = true;
			enum dun_err re = check_result(p, r);
			if (re == DUN_OK && rows) {
				const char *t = PQcmdTuples(r);
				*rows = t && t[0] ? strtoll(t, NULL, 10) : 0;
			}
			if (re != DUN_OK)
				e = re;
		}
		PQclear(r);
	}
	if (!reported && e == DUN_OK) {
		note_error(p, PQerrorMessage(p->c));
		e = DUN_E_IO;
	}
	if (e == DUN_OK && (abandon || p->load_failed)) {
		note_error(p, abandon ? "the load was abandoned" : "the load failed");
		e = DUN_E_STORE;
	}
	p->load_failed = false;
	if (e == DUN_E_IO && conn_lost(p))
		reconnect(p);
	if (e != DUN_OK)
		dun_store_set_err(err, err_size, "%s: %s", db->path, p->errmsg);
	return e;
}

static int pg_schema_version(struct dun_db *db)
{
	struct pg_conn *p = pc(db);
	PGresult *r = PQexec(p->c, "SELECT to_regclass('dunning_schema') IS NOT NULL");
	int v = -1;
	if (check_result(p, r) == DUN_OK && PQntuples(r) == 1) {
		if (PQgetvalue(r, 0, 0)[0] != 't') {
			v = 0;
		} else {
			PQclear(r);
			r = PQexec(p->c, "SELECT COALESCE(MAX(version), 0) FROM dunning_schema");
			if (check_result(p, r) == DUN_OK && PQntuples(r) == 1)
				v = atoi(PQgetvalue(r, 0, 0));
		}
	}
	PQclear(r);
	return v;
}

static enum dun_err pg_set_schema_version(struct dun_db *db, int version, char *err,
					  size_t err_size)
{
	char sql[256];
	snprintf(sql, sizeof sql,
		 "CREATE TABLE IF NOT EXISTS dunning_schema (version BIGINT NOT NULL);"
		 " DELETE FROM dunning_schema; INSERT INTO dunning_schema(version) VALUES (%d)",
		 version);
	return pg_exec(db, sql, err, err_size);
}

static void pg_busy_fine(struct dun_db *db)
{
	(void)db; /* PostgreSQL queues lock waiters itself. */
}

/* The cache is the server's: a bigger one asks for ordered reads (db.h). */
static void pg_set_cache_kb(struct dun_db *db, int kb)
{
	struct pg_conn *p = pc(db);
	bool on = kb > DUN_DB_CACHE_KB;
	if (on == p->ordered_reads)
		return;
	if (pg_exec(db, on ? ORDERED_READS_ON : ORDERED_READS_OFF, NULL, 0) == DUN_OK)
		p->ordered_reads = on;
}

static int64_t pg_cache_misses(struct dun_db *db)
{
	(void)db;
	return -1;
}

const struct dun_db_driver dun_db_driver_pg = {
    .name = "postgresql",
    .concurrent_writes = true,
    .open = pg_open,
    .close = pg_close,
    .configure = pg_configure,
    .exec = pg_exec,
    .exec_schema = pg_exec_schema,
    .prepare = pg_prepare,
    .finalize = pg_finalize,
    .reset = pg_reset,
    .clear = pg_clear,
    .bind_text = pg_bind_text,
    .bind_int64 = pg_bind_int64,
    .bind_double = pg_bind_double,
    .bind_null = pg_bind_null,
    .param_count = pg_param_count,
    .pipeline = pg_pipeline,
    .step = pg_step,
    .col_int64 = pg_col_int64,
    .col_double = pg_col_double,
    .col_text = pg_col_text,
    .col_bytes = pg_col_bytes,
    .col_type = pg_col_type,
    .col_count = pg_col_count,
    .col_name = pg_col_name,
    .changes = pg_changes,
    .errmsg = pg_errmsg,
    .in_transaction = pg_in_transaction,
    .begin = pg_begin,
    .commit = pg_commit,
    .lock_mirror = pg_lock_mirror,
    .try_lock = pg_try_lock,
    .rollback = pg_rollback,
    .schema_version = pg_schema_version,
    .set_schema_version = pg_set_schema_version,
    .busy_fine = pg_busy_fine,
    .cache_misses = pg_cache_misses,
    .notify_inbox = pg_notify_inbox,
    .listen_inbox = pg_listen_inbox,
    .wait_inbox = pg_wait_inbox,
    .relax_durability_sql = "SET synchronous_commit = off",
    .checkpoint_manual_sql = NULL,
    .checkpoint_sql = NULL,
    .set_cache_kb = pg_set_cache_kb,
    .load_begin = pg_load_begin,
    .load_row = pg_load_row,
    .load_end = pg_load_end,
};
