/*
 * fuzz_event.c — fuzz target for the Stripe event parser and ingest.
 *
 * POST /webhooks/stripe hands every verified body to dun_ingest_event():
 * JSON parsing, envelope validation, the mirror's folding of both invoice
 * shapes, the account mapping and the trigger's dedup key. A signature only
 * proves who sent the bytes, not that they are well formed, so this parser
 * sees whatever Stripe (or a holder of the secret) sends.
 *
 * An input is up to 16 events separated by newlines, ingested in order into
 * an empty in-memory database (so a customer.created line can make the next
 * lines' triggers map to an account). The database is created once and
 * emptied before every input: migrating a new one per input would make the
 * fuzzer a hundred times slower. Besides running under the sanitizers,
 * each event checks what must always hold: only DUN_OK or DUN_E_PARSE comes
 * back; the error text is terminated; a refused event writes nothing; an
 * accepted one is stored under its id, and ingesting it again is a
 * duplicate that changes nothing.
 *
 * The first ingest of each event goes the webhook's way: parsed into an
 * arena (inbox/json_arena.h, the allocator installed for the whole run),
 * then stored from the parsed tree; the second the CLI's, from the bytes.
 */
#include "fuzz_target.h"
#include "inbox/ingest.h"
#include "inbox/json_arena.h"
#include "store/db.h"

#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#define EVENTS_MAX 16

static void require(bool cond)
{
	if (!cond)
		abort();
}

static int64_t count(struct dun_db *db, const char *sql)
{
	struct dun_stmt *st = dun_db_stmt(db, sql);
	require(dun_stmt_row(st));
	int64_t n = dun_stmt_col_int64(st, 0);
	dun_stmt_reset(st);
	return n;
}

static int64_t rows(struct dun_db *db)
{
	return count(db, "SELECT (SELECT COUNT(*) FROM events_raw) + (SELECT COUNT(*) FROM inbox)"
			 " + (SELECT COUNT(*) FROM p_customers) + (SELECT COUNT(*) FROM p_invoices)"
			 " + (SELECT COUNT(*) FROM p_attempts) + (SELECT COUNT(*) FROM"
			 " p_subscriptions) + (SELECT COUNT(*) FROM accounts)");
}

static bool stored(struct dun_db *db, const char *id)
{
	struct dun_stmt *st = dun_db_stmt(db, "SELECT 1 FROM events_raw WHERE id = ?1");
	dun_stmt_bind_text(st, 1, id);
	bool found = dun_stmt_row(st);
	dun_stmt_reset(st);
	return found;
}

/* As the webhook handler and the committer do it. */
static enum dun_err ingest_in_arena(struct dun_db *db, const char *body, size_t size,
				    struct dun_ingest_result *res, char *err, size_t err_size)
{
	struct dun_json_arena *a = dun_json_arena_take();
	require(a != NULL);
	json_t *ev = NULL;
	dun_json_arena_enter(a);
	enum dun_err e = dun_ingest_parse(body, size, &ev, err, err_size);
	dun_json_arena_leave();
	if (e == DUN_OK) {
		require(dun_db_begin(db) == DUN_OK);
		e = dun_ingest_parsed_in_tx(db, ev, body, size, res, err, err_size);
		if (e == DUN_OK)
			require(dun_db_commit(db) == DUN_OK);
		else
			dun_db_rollback(db);
	}
	json_decref(ev);
	dun_json_arena_give_back(a);
	return e;
}

static void one(struct dun_db *db, const uint8_t *data, size_t size)
{
	/* An exact-size copy, so a read past the event's end is caught. */
	char *body = malloc(size ? size : 1);
	require(body != NULL);
	memcpy(body, data, size);
	struct dun_ingest_result res;
	char err[256];
	memset(err, 'x', sizeof err);
	int64_t before = rows(db);
	enum dun_err e = ingest_in_arena(db, body, size, &res, err, sizeof err);
	require(e == DUN_OK || e == DUN_E_PARSE);
	if (e == DUN_E_PARSE) {
		require(memchr(err, '\0', sizeof err) != NULL);
		require(rows(db) == before);
	} else {
		require(res.event_id[0] != '\0');
		require(stored(db, res.event_id));
		require(res.outcome != NULL);
		struct dun_ingest_result again;
		int64_t after = rows(db);
		require(dun_ingest_event(db, body, size, &again, err, sizeof err) == DUN_OK);
		require(again.duplicate && !again.triggered);
		require(rows(db) == after);
	}
	free(body);
}

/* Every table ingest writes (events, inbox, mirror, account registration). */
static const char *const wipe =
    "DELETE FROM events_raw; DELETE FROM inbox; DELETE FROM p_customers;"
    " DELETE FROM p_subscriptions; DELETE FROM p_invoices; DELETE FROM p_attempts;"
    " DELETE FROM accounts; DELETE FROM customers";

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	static struct dun_db *db;
	char err[256];
	if (!db) {
		dun_json_arena_install(); /* before any other jansson call */
		require(dun_db_open(":memory:", &db, err, sizeof err) == DUN_OK);
	}
	require(dun_db_exec(db, wipe, err, sizeof err) == DUN_OK);
	const uint8_t *p = data, *end = data + size;
	for (int n = 0; n < EVENTS_MAX && p <= end; n++) {
		const uint8_t *nl = memchr(p, '\n', (size_t)(end - p));
		const uint8_t *stop = nl ? nl : end;
		one(db, p, (size_t)(stop - p));
		if (!nl)
			break;
		p = nl + 1;
	}
	return 0;
}
