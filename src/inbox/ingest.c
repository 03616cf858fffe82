/*
 * ingest.c — provider events into the engine (see ingest.h).
 *
 * Order of work, all inside one transaction so an event is either wholly
 * recorded or not at all:
 *   1. parse and validate the envelope (id, type, created, data.object);
 *   2. look the id up among the stored raw events — a second delivery of the
 *      same id stops here as a duplicate (Stripe delivers at least once);
 *   3. fold data.object into the mirror, versioned by the event's created
 *      time, so a late, older delivery never overwrites newer state;
 *   4. find the account (customer metadata account_id, through the mirror);
 *   5. enqueue a trigger for the types dunning reacts to. The trigger's
 *      dedup key is type + object id + created, which also absorbs two
 *      distinct events Stripe may create for one change;
 *   6. store the raw event under its id, with its account and outcome (one
 *      insert, once both are known).
 * Unknown types are stored and acknowledged but start nothing. So is every
 * well-formed event dunning cannot act on, each with its reason as the
 * outcome (counted in /metrics): an object without an id (invoice.upcoming
 * describes an invoice that does not exist yet), an invoice whose customer
 * or status is null (basil allows both). Refusing them would only make
 * Stripe deliver them again for three days and, in the end, disable the
 * endpoint. An invoice_payment names no customer: it is mapped through
 * its invoice.
 */
#include "ingest.h"
#include "core/model.h"
#include "core/text.h"
#include "inbox/inbox.h"
#include "store/mirror.h"
#include "util/clock.h"

#include <jansson.h>
#include <stdio.h>
#include <string.h>

static const struct {
	const char *type;
	const char *kind;
} kinds[] = {
    {"invoice.payment_failed", "payment_failed"},
    {"invoice.marked_uncollectible", "marked_uncollectible"},
    {"invoice.paid", "paid"},
    {"invoice.payment_succeeded", "paid"},
    {"invoice.voided", "invoice_changed"},
    {"invoice.updated", "invoice_changed"},
    {"invoice.finalized", "invoice_changed"},
    {"invoice.created", "invoice_changed"},
    {"invoice_payment.paid", "paid"},
    {"charge.failed", "payment_failed"},
    {"charge.succeeded", "paid"},
    {"charge.pending", "payment_processing"},
    {"payment_intent.processing", "payment_processing"},
    {"payment_intent.payment_failed", "payment_failed"},
    {"payment_intent.succeeded", "paid"},
    {"customer.updated", "customer_changed"},
    {"customer.created", "customer_changed"},
    {"customer.subscription.updated", "subscription_changed"},
    {"customer.subscription.deleted", "subscription_changed"},
    {"customer.subscription.created", "subscription_changed"},
};

const char *dun_ingest_trigger_kind(const char *type, bool consolidated)
{
	for (size_t i = 0; i < sizeof kinds / sizeof kinds[0]; i++)
		if (!strcmp(kinds[i].type, type)) {
			if (consolidated && !strcmp(kinds[i].kind, "paid"))
				return "bad_debt_paid";
			return kinds[i].kind;
		}
	return NULL;
}

static void say(char *err, size_t n, const char *msg, const char *detail)
{
	if (err && n)
		snprintf(err, n, "%s%s", msg, detail ? detail : "");
}

/*
 * Whether the event id is stored already. Inside the caller's write
 * transaction the answer stays true until its end: on SQLite no other
 * writer runs, and on PostgreSQL a delivery stored meanwhile by another
 * connection makes store() find the conflict instead.
 */
static bool is_stored(struct dun_db *db, const char *id, enum dun_err *e)
{
	struct dun_stmt *st = dun_db_stmt(db, "SELECT 1 FROM events_raw WHERE id = ?1");
	dun_stmt_bind_text(st, 1, id);
	bool found = dun_stmt_row(st);
	*e = dun_stmt_err(st);
	dun_stmt_reset(st);
	return found;
}

/*
 * Store the raw event with its account and outcome, once they are known:
 * one insert, where an insert and then an update of the same row cost two
 * statements (and two B-tree writes) per event in the serial path.
 */
static enum dun_err store(struct dun_db *db, const struct dun_ingest_result *res,
			  const char *object_id, int64_t version, const char *body, size_t len,
			  char *err, size_t err_size)
{
	struct dun_stmt *st = dun_db_stmt(
	    db, "INSERT INTO events_raw(id, type, object_id, created, received_at, account_id,"
		" outcome, body) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)"
		" ON CONFLICT(id) DO NOTHING");
	dun_stmt_bind_text(st, 1, res->event_id);
	dun_stmt_bind_text(st, 2, res->type);
	dun_stmt_bind_text(st, 3, object_id ? object_id : "");
	dun_stmt_bind_int64(st, 4, version);
	dun_stmt_bind_int64(st, 5, dun_clock_now());
	dun_stmt_bind_text(st, 6, res->account_id);
	dun_stmt_bind_text(st, 7, res->outcome);
	dun_stmt_bind_textn(st, 8, body, (int)len);
	enum dun_err e = dun_stmt_done(st);
	if (e != DUN_OK) {
		say(err, err_size, "cannot store event: ", dun_db_errmsg(db));
		return e;
	}
	if (dun_db_changes(db) == 0) {
		/* Another connection stored the same delivery since is_stored(): what
		 * this one wrote is rolled back, the sender delivers it again and hears
		 * "duplicate". */
		say(err, err_size, "event stored meanwhile by another connection: ", res->event_id);
		return DUN_E_CONFLICT;
	}
	return DUN_OK;
}

enum dun_err dun_ingest_parse(const char *body, size_t len, json_t **ev_out, char *err,
			      size_t err_size)
{
	json_error_t jerr;
	*ev_out = json_loadb(body, len, JSON_REJECT_DUPLICATES, &jerr);
	if (*ev_out)
		return DUN_OK;
	if (err && err_size)
		snprintf(err, err_size, "malformed JSON at line %d column %d: %s", jerr.line,
			 jerr.column, jerr.text);
	return DUN_E_PARSE;
}

enum dun_err dun_ingest_event_in_tx(struct dun_db *db, const char *body, size_t len,
				    struct dun_ingest_result *res, char *err, size_t err_size)
{
	json_t *ev = NULL;
	enum dun_err e = dun_ingest_parse(body, len, &ev, err, err_size);
	if (e != DUN_OK) {
		memset(res, 0, sizeof *res);
		res->outcome = "rejected";
		return e;
	}
	e = dun_ingest_parsed_in_tx(db, ev, body, len, res, err, err_size);
	json_decref(ev);
	return e;
}

enum dun_err dun_ingest_parsed_in_tx(struct dun_db *db, json_t *ev, const char *body, size_t len,
				     struct dun_ingest_result *res, char *err, size_t err_size)
{
	memset(res, 0, sizeof *res);
	res->outcome = "rejected";
	enum dun_err e = DUN_E_PARSE;
	json_t *id = json_object_get(ev, "id");
	json_t *type = json_object_get(ev, "type");
	json_t *created = json_object_get(ev, "created");
	json_t *data = json_object_get(ev, "data");
	json_t *obj = json_is_object(data) ? json_object_get(data, "object") : NULL;
	if (!json_is_object(ev)) {
		say(err, err_size, "event is not a JSON object", NULL);
		goto out;
	}
	if (!json_is_string(id) || !json_string_length(id) || json_string_length(id) >= 96) {
		say(err, err_size, "event has no valid \"id\"", NULL);
		goto out;
	}
	if (!json_is_string(type) || !json_string_length(type) || json_string_length(type) >= 64) {
		say(err, err_size, "event has no valid \"type\": ", json_string_value(id));
		goto out;
	}
	if (!json_is_integer(created)) {
		say(err, err_size, "event has no integer \"created\": ", json_string_value(id));
		goto out;
	}
	if (!json_is_object(obj)) {
		say(err, err_size, "event has no \"data.object\": ", json_string_value(id));
		goto out;
	}
	dun_strlcpy(res->event_id, json_string_value(id), sizeof res->event_id);
	dun_strlcpy(res->type, json_string_value(type), sizeof res->type);
	const char *object_id = json_string_value(json_object_get(obj, "id"));
	int64_t version = (int64_t)json_integer_value(created);
	const char *ignored = NULL;
	const char *otype = json_string_value(json_object_get(obj, "object"));
	if (!object_id || !object_id[0]) {
		ignored = "ignored_no_id";
	} else if (otype && !strcmp(otype, "invoice")) {
		json_t *cus = json_object_get(obj, "customer");
		json_t *status = json_object_get(obj, "status");
		if (!json_is_string(cus) && !json_is_object(cus))
			ignored = "ignored_no_customer";
		else if (!json_is_string(status))
			ignored = "ignored_no_status";
	}

	if (is_stored(db, res->event_id, &e)) {
		res->duplicate = true;
		res->outcome = "duplicate";
		goto out;
	}
	if (e != DUN_OK) {
		say(err, err_size, "cannot read events: ", dun_db_errmsg(db));
		goto out;
	}

	if (ignored) {
		res->outcome = ignored;
		goto stored;
	}
	char customer[DUN_ID_MAX];
	bool applied = false;
	e = dun_mirror_upsert(db, obj, version, customer, &applied, err, err_size);
	if (e != DUN_OK)
		goto out;
	res->stale = !applied && otype && dun_mirror_knows(otype);
	const char *md_list = NULL;
	json_t *md = json_object_get(obj, "metadata");
	if (json_is_object(md))
		md_list = json_string_value(json_object_get(md, "bad_debt_invoices"));
	const char *kind = dun_ingest_trigger_kind(res->type, md_list && md_list[0]);
	if (!kind) {
		res->outcome = "ignored_type";
		goto stored;
	}
	if (!customer[0] || dun_mirror_account_of(db, customer, res->account_id,
						  sizeof res->account_id) != DUN_OK) {
		res->account_id[0] = '\0';
		res->outcome = "unmapped";
		goto stored;
	}
	char dedup[256];
	snprintf(dedup, sizeof dedup, "%s:%s:%lld", res->type, object_id ? object_id : "",
		 (long long)version);
	bool inserted = false;
	e = dun_inbox_enqueue(db, res->account_id, kind, "provider", res->event_id, dedup, 0,
			      &inserted, &res->trigger_id);
	if (e != DUN_OK)
		goto out;
	res->triggered = true;
	res->outcome = inserted ? "triggered" : "coalesced";
stored:
	e = store(db, res, object_id, version, body, len, err, err_size);
	if (e != DUN_OK)
		res->triggered = false;
out:
	return e;
}

enum dun_err dun_ingest_event(struct dun_db *db, const char *body, size_t len,
			      struct dun_ingest_result *res, char *err, size_t err_size)
{
	enum dun_err e = dun_db_begin(db);
	if (e != DUN_OK) {
		say(err, err_size, "cannot begin transaction: ", dun_db_errmsg(db));
		return e;
	}
	e = dun_ingest_event_in_tx(db, body, len, res, err, err_size);
	if (e != DUN_OK) {
		dun_db_rollback(db);
		return e;
	}
	e = dun_db_commit(db);
	if (e != DUN_OK) {
		say(err, err_size, "cannot commit: ", dun_db_errmsg(db));
		dun_db_rollback(db);
	}
	return e;
}
