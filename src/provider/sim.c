/*
 * sim.c — the simulated payment provider (see sim.h).
 *
 * It keeps Stripe-shaped objects as JSON in sim_objects and behaves like the
 * parts of Stripe dunning depends on: invoices move draft/open → paid |
 * uncollectible | void and refuse illegal moves, charges fail with the
 * customer's card's decline code, metadata updates merge (an empty value
 * deletes the key), a repeated idempotency key returns the first answer.
 * Every change queues a Stripe-format event in sim_events. Objects use the
 * pre-2025-03-31 invoice shape (top-level subscription and payment_intent,
 * charge.invoice); the mirror accepts both shapes.
 *
 * The simulated provider writes through its own statements, outside the
 * engine's transactions: like a real provider, what it did stays done even
 * if the engine's bookkeeping of it fails afterwards.
 */
#include "sim.h"
#include "core/model.h"
#include "core/text.h"
#include "util/clock.h"
#include "util/log.h"
#include "util/mem.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

struct dun_sim {
	struct dun_db *db;
	uint64_t seed;
	int64_t next_id; /* only for ids made while the store is unavailable */
};

static const char API_VERSION[] = "2024-06-20";

/*
 * A new object id. The counter lives in the database and is advanced in one
 * statement, so several simulators on one file (worker threads, a CLI next
 * to the service) never hand out the same id.
 */
static void new_id(struct dun_sim *sim, const char *prefix, char *out, size_t n)
{
	struct dun_stmt *st =
	    dun_db_stmt(sim->db, "INSERT INTO settings(key, value) VALUES ('sim.next_id', '2')"
				 " ON CONFLICT(key) DO UPDATE"
				 " SET value = CAST(CAST(settings.value AS BIGINT) + 1 AS TEXT)"
				 " RETURNING CAST(value AS BIGINT) - 1");
	int64_t v = 0;
	if (dun_stmt_row(st))
		v = dun_stmt_col_int64(st, 0);
	while (dun_stmt_row(st))
		;
	dun_stmt_reset(st);
	if (v <= 0) {
		/* The store is unavailable: an id from the process is still unique. */
		dun_log(DUN_LOG_WARN, "sim.id_fallback", "error", dun_db_errmsg(sim->db), NULL);
		snprintf(out, n, "%s_sim%ldp%" PRId64, prefix, (long)getpid(), ++sim->next_id);
		return;
	}
	snprintf(out, n, "%s_sim%06" PRId64, prefix, v);
}

struct dun_sim *dun_sim_new(struct dun_db *db, uint64_t seed)
{
	struct dun_sim *sim = dun_calloc(1, sizeof *sim);
	sim->db = db;
	sim->seed = seed;
	return sim;
}

void dun_sim_destroy(struct dun_sim *sim)
{
	free(sim);
}

/* ---- object storage ------------------------------------------------------ */

/*
 * An object learnt from a webhook is stored as a reference to the stored
 * event that carried it, "event:<event id>", not as a copy: the committer
 * learns inside its serial transaction, where serialising the object again
 * and writing a second copy of it (as many WAL bytes as the event itself)
 * cost more than the rest of the event's ingestion. events_raw keeps every
 * event, so the reference stays valid; the simulator's own changes to such
 * an object (save()) replace it with a full copy.
 */
static const char LEARNT_PREFIX[] = "event:";

/* The object a sim_objects body holds or refers to (new reference), or NULL. */
static json_t *parse_body(struct dun_sim *sim, const char *body)
{
	if (strncmp(body, LEARNT_PREFIX, sizeof LEARNT_PREFIX - 1) != 0)
		return json_loads(body, 0, NULL);
	char event_id[128];
	dun_strlcpy(event_id, body + sizeof LEARNT_PREFIX - 1, sizeof event_id);
	struct dun_stmt *st = dun_db_stmt(sim->db, "SELECT body FROM events_raw WHERE id = ?1");
	dun_stmt_bind_text(st, 1, event_id);
	json_t *o = NULL;
	if (dun_stmt_row(st)) {
		json_t *ev = json_loads(dun_stmt_col_text(st, 0), 0, NULL);
		o = json_object_get(json_object_get(ev, "data"), "object");
		if (!json_is_object(o))
			o = NULL;
		json_incref(o);
		json_decref(ev);
	}
	dun_stmt_reset(st);
	return o;
}

static json_t *load(struct dun_sim *sim, const char *id, char *behavior, size_t bsize)
{
	struct dun_stmt *st =
	    dun_db_stmt(sim->db, "SELECT body, behavior FROM sim_objects WHERE id = ?1");
	dun_stmt_bind_text(st, 1, id);
	json_t *o = NULL;
	if (dun_stmt_row(st)) {
		o = parse_body(sim, dun_stmt_col_text(st, 0));
		if (behavior)
			dun_stmt_col_copy(st, 1, behavior, bsize);
	}
	dun_stmt_reset(st);
	return o;
}

/* Store o; with event_id, as a reference to that stored event (see LEARNT_PREFIX). */
static enum dun_err save_as(struct dun_sim *sim, json_t *o, const char *behavior,
			    const char *event_id)
{
	char *body;
	if (event_id) {
		size_t n = sizeof LEARNT_PREFIX + strlen(event_id);
		body = dun_malloc(n);
		snprintf(body, n, "%s%s", LEARNT_PREFIX, event_id);
	} else {
		body = json_dumps(o, JSON_COMPACT);
	}
	if (!body)
		dun_oom();
	const char *type = json_string_value(json_object_get(o, "object"));
	const char *cus = json_string_value(json_object_get(o, "customer"));
	if (!strcmp(type, "customer"))
		cus = json_string_value(json_object_get(o, "id"));
	struct dun_stmt *st = dun_db_stmt(
	    sim->db, "INSERT INTO sim_objects(id, type, customer_id, behavior, body)"
		     " VALUES (?1, ?2, ?3, COALESCE(?4, ''), ?5) ON CONFLICT(id) DO UPDATE SET"
		     " body = excluded.body, behavior = COALESCE(?4, sim_objects.behavior)");
	dun_stmt_bind_text(st, 1, json_string_value(json_object_get(o, "id")));
	dun_stmt_bind_text(st, 2, type);
	dun_stmt_bind_text(st, 3, cus ? cus : "");
	dun_stmt_bind_text_copy(st, 4, behavior);
	dun_stmt_bind_text(st, 5, body);
	enum dun_err e = dun_stmt_done(st);
	free(body);
	return e;
}

static enum dun_err save(struct dun_sim *sim, json_t *o, const char *behavior)
{
	return save_as(sim, o, behavior, NULL);
}

static void emit(struct dun_sim *sim, const char *type, json_t *o)
{
	char id[64];
	new_id(sim, "evt", id, sizeof id);
	json_t *ev = json_pack("{s:s, s:s, s:s, s:I, s:s, s:b, s:{s:O}}", "id", id, "object",
			       "event", "type", type, "created", (json_int_t)dun_clock_now(),
			       "api_version", API_VERSION, "livemode", 0, "data", "object", o);
	char *body = json_dumps(ev, JSON_COMPACT);
	json_decref(ev);
	struct dun_stmt *st = dun_db_stmt(sim->db, "INSERT INTO sim_events(body) VALUES (?1)");
	dun_stmt_bind_text(st, 1, body);
	dun_stmt_done(st);
	free(body);
}

static int by_seq(const void *a, const void *b)
{
	int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
	return (x > y) - (x < y);
}

enum dun_err dun_sim_has_events(struct dun_sim *sim, bool *queued)
{
	struct dun_stmt *st =
	    dun_db_stmt(sim->db, "SELECT EXISTS (SELECT 1 FROM sim_events WHERE delivered = 0)");
	*queued = dun_stmt_row(st) && dun_stmt_col_int(st, 0) != 0;
	enum dun_err e = dun_stmt_err(st);
	dun_stmt_reset(st);
	return e;
}

enum dun_err dun_sim_take_events_in_tx(struct dun_sim *sim, int max, json_t **out)
{
	/*
	 * Taken and marked in one statement, by seq: with recomputes of several
	 * processes committing side by side, an event with a lower seq may
	 * commit after a higher one was read, so "everything up to the last seq
	 * read" could mark one that was never taken.
	 */
	struct dun_stmt *st = dun_db_stmt(
	    sim->db, "UPDATE sim_events SET delivered = 1 WHERE seq IN (SELECT seq FROM"
		     " sim_events WHERE delivered = 0 ORDER BY seq LIMIT ?1) AND delivered = 0"
		     " RETURNING seq, body");
	dun_stmt_bind_int(st, 1, max);
	struct taken {
		int64_t seq;
		char *body;
	} *t = dun_calloc((size_t)(max > 0 ? max : 1), sizeof *t);
	int n = 0;
	while (dun_stmt_row(st))
		if (n < max) {
			t[n].seq = dun_stmt_col_int64(st, 0);
			const char *b = dun_stmt_col_text(st, 1);
			t[n++].body = dun_strdup(b ? b : "");
		}
	enum dun_err e = dun_stmt_err(st);
	dun_stmt_reset(st);
	/* RETURNING gives no order: the events go out in the order they happened. */
	qsort(t, (size_t)n, sizeof *t, by_seq);
	json_t *arr = json_array();
	for (int i = 0; i < n; i++) {
		json_t *ev = json_loads(t[i].body, 0, NULL);
		if (ev)
			json_array_append_new(arr, ev);
		free(t[i].body);
	}
	free(t);
	*out = arr;
	return e;
}

json_t *dun_sim_take_events(struct dun_sim *sim, int max)
{
	json_t *arr = NULL;
	dun_sim_take_events_in_tx(sim, max, &arr);
	return arr;
}

/* ---- idempotency ------------------------------------------------------------ */

static json_t *idem_get(struct dun_sim *sim, const char *key)
{
	if (!key || !key[0])
		return NULL;
	char id[DUN_ID_MAX + 200];
	snprintf(id, sizeof id, "idem:%s", key);
	json_t *rec = load(sim, id, NULL, 0);
	if (!rec)
		return NULL;
	json_t *resp = json_incref(json_object_get(rec, "response"));
	json_decref(rec);
	return resp;
}

static void idem_put(struct dun_sim *sim, const char *key, json_t *resp)
{
	if (!key || !key[0])
		return;
	char id[DUN_ID_MAX + 200];
	snprintf(id, sizeof id, "idem:%s", key);
	json_t *rec = json_pack("{s:s, s:s, s:O}", "id", id, "object", "idempotency_record",
				"response", resp);
	save(sim, rec, NULL);
	json_decref(rec);
}

/* ---- helpers -------------------------------------------------------------- */

static void set_err(char *err, size_t n, const char *msg, const char *id)
{
	if (err && n)
		snprintf(err, n, "%s: %s", id, msg);
}

static const char *sget(json_t *o, const char *k)
{
	const char *v = json_string_value(json_object_get(o, k));
	return v ? v : "";
}

static uint64_t mix(uint64_t h, const char *s)
{
	for (; *s; s++) {
		h ^= (unsigned char)*s;
		h *= 1099511628211ULL;
	}
	return h;
}

/* Parse "code@pct,advice=x,network=y". */
struct card {
	bool ok;
	char code[DUN_CODE_MAX];
	int success_pct;
	char advice[DUN_CODE_MAX];
	char network[DUN_CODE_MAX];
	char upgrades[DUN_CODE_MAX]; /* upgrade invoices fail with this code */
};

static void parse_behavior(const char *b, struct card *c)
{
	memset(c, 0, sizeof *c);
	if (b[0] == '=') /* a card learnt from ingested events (dun_sim_observe) */
		b++;
	if (!b[0] || !strcmp(b, "ok")) {
		c->ok = true;
		return;
	}
	if (!strncmp(b, "ok,upgrades=", 12)) {
		c->ok = true;
		dun_strlcpy(c->upgrades, b + 12, sizeof c->upgrades);
		return;
	}
	char buf[256];
	dun_strlcpy(buf, b, sizeof buf);
	char *save_ptr = NULL;
	for (char *tok = strtok_r(buf, ",", &save_ptr); tok; tok = strtok_r(NULL, ",", &save_ptr)) {
		if (!strncmp(tok, "advice=", 7))
			dun_strlcpy(c->advice, tok + 7, sizeof c->advice);
		else if (!strncmp(tok, "network=", 8))
			dun_strlcpy(c->network, tok + 8, sizeof c->network);
		else {
			char *at = strchr(tok, '@');
			if (at) {
				*at = '\0';
				c->success_pct = atoi(at + 1);
			}
			dun_strlcpy(c->code, tok, sizeof c->code);
		}
	}
}

/*
 * Charge invoice inv (an open invoice object, modified in place) with the
 * customer's card; queue the events; save the invoice.
 */
static enum dun_err charge(struct dun_sim *sim, json_t *inv, bool force_success)
{
	const char *cus_id = sget(inv, "customer");
	char behavior[256] = "";
	json_t *cus = load(sim, cus_id, behavior, sizeof behavior);
	if (!cus)
		return DUN_E_NOT_FOUND;
	const char *pm = sget(json_object_get(cus, "invoice_settings"), "default_payment_method");
	struct card card;
	parse_behavior(behavior, &card);
	int64_t attempt = json_integer_value(json_object_get(inv, "attempt_count")) + 1;
	bool ok = force_success || card.ok;
	if (!force_success && card.upgrades[0] &&
	    !strcmp(sget(inv, "billing_reason"), "subscription_update")) {
		ok = false;
		dun_strlcpy(card.code, card.upgrades, sizeof card.code);
	}
	if (!ok && card.success_pct > 0) {
		char num[32];
		snprintf(num, sizeof num, "%" PRId64, attempt);
		uint64_t h = mix(mix(sim->seed ^ 14695981039346656037ULL, sget(inv, "id")), num);
		ok = (int)(h % 100) < card.success_pct;
	}
	int64_t now = dun_clock_now();
	char ch_id[64];
	new_id(sim, "ch", ch_id, sizeof ch_id);
	json_t *ch =
	    json_pack("{s:s, s:s, s:s, s:s, s:s, s:I, s:I, s:s, s:s}", "id", ch_id, "object",
		      "charge", "customer", cus_id, "invoice", sget(inv, "id"), "payment_intent",
		      sget(inv, "payment_intent"), "created", (json_int_t)now, "amount",
		      json_integer_value(json_object_get(inv, "amount_remaining")), "status",
		      ok ? "succeeded" : "failed", "payment_method", pm);
	if (!ok) {
		json_object_set_new(ch, "failure_code",
				    json_string(strcmp(card.code, "expired_card") &&
							strcmp(card.code, "incorrect_number")
						    ? "card_declined"
						    : card.code));
		json_t *outcome =
		    json_pack("{s:s, s:s}", "type", "issuer_declined", "reason", card.code);
		if (card.advice[0])
			json_object_set_new(outcome, "advice_code", json_string(card.advice));
		if (card.network[0])
			json_object_set_new(outcome, "network_advice_code",
					    json_string(card.network));
		json_object_set_new(ch, "outcome", outcome);
	}
	save(sim, ch, NULL);
	json_object_set_new(inv, "attempt_count", json_integer(attempt));
	json_object_set_new(inv, "attempted", json_true());
	if (ok) {
		json_int_t due = json_integer_value(json_object_get(inv, "amount_due"));
		json_object_set_new(inv, "status", json_string("paid"));
		json_object_set_new(inv, "amount_paid", json_integer(due));
		json_object_set_new(inv, "amount_remaining", json_integer(0));
		json_object_set_new(inv, "status_transitions",
				    json_pack("{s:I}", "paid_at", (json_int_t)now));
		json_object_set_new(inv, "next_payment_attempt", json_null());
	}
	save(sim, inv, NULL);
	emit(sim, ok ? "charge.succeeded" : "charge.failed", ch);
	emit(sim, ok ? "invoice.paid" : "invoice.payment_failed", inv);
	json_decref(ch);
	/* The subscription follows its latest invoice. */
	const char *sub_id = sget(inv, "subscription");
	json_t *sub = sub_id[0] ? load(sim, sub_id, NULL, 0) : NULL;
	if (sub && strcmp(sget(sub, "status"), "canceled") != 0) {
		const char *want = ok ? "active" : "past_due";
		if (strcmp(sget(sub, "status"), want) != 0) {
			json_object_set_new(sub, "status", json_string(want));
			save(sim, sub, NULL);
			emit(sim, "customer.subscription.updated", sub);
		}
	}
	json_decref(sub);
	json_decref(cus);
	return DUN_OK;
}

/* ---- learning lazily, in commit order --------------------------------------- */

/*
 * Learning. The simulator must know the customers, subscriptions,
 * invoices and charges that webhooks describe before it acts on them, but
 * learning them as each webhook is stored put an upsert (and, for a
 * customer, a read) into the committer's serial transaction: about an
 * eighth of an event's cost on the path Stripe waits on. Where commits are
 * serial (SQLite: one writer holds the file), the order of events_raw's
 * rowids is the order of commits, so the simulator learns afterwards
 * instead: it keeps how far it has read (sim_learnt, schema migration 22)
 * and, before any operation that reads its objects, learns the events
 * stored after that mark, oldest first, in transactions of at most
 * LEARN_CHUNK events that also move the mark. Learning in the order of
 * storage gives exactly what learning at storage gave. The service also
 * learns in the background when no webhook batch waits
 * (dun_sim_learn_pending), so an operation rarely finds much to do.
 *
 * A failure to learn (the store refuses a write) leaves the mark where it
 * was and fails the operation as the store's error, retryable: the
 * simulator never acts on a world it knows it has not finished reading.
 *
 * Where commits run side by side (PostgreSQL, several replicas), no order
 * of ids is the order of commits, so a mark could pass an event committed
 * late: there the committer learns each event in its own transaction
 * (dun_sim_observe_in_tx) and this is a no-op.
 */
#define LEARN_CHUNK 256

bool dun_sim_learns_lazily(const struct dun_db *db)
{
	return !dun_db_writes_concurrently(db);
}

struct pending {
	char id[128];
	char *body;
};

/* Learn up to LEARN_CHUNK stored events after the mark; *n how many were read. */
static enum dun_err learn_chunk(struct dun_db *db, int *n)
{
	*n = 0;
	struct dun_stmt *st = dun_db_stmt(db, "SELECT seq FROM sim_learnt WHERE id = 1");
	int64_t mark = dun_stmt_row(st) ? dun_stmt_col_int64(st, 0) : 0;
	enum dun_err e = dun_stmt_err(st);
	dun_stmt_reset(st);
	if (e != DUN_OK)
		return e;
	st = dun_db_stmt(db, "SELECT seq, id, body FROM events_raw_in_order WHERE seq > ?1"
			     " ORDER BY seq LIMIT ?2");
	dun_stmt_bind_int64(st, 1, mark);
	dun_stmt_bind_int(st, 2, LEARN_CHUNK);
	/* Read first, learn after: the learning runs statements of its own. */
	struct pending *ev = dun_calloc(LEARN_CHUNK, sizeof *ev);
	int64_t last = mark;
	while (*n < LEARN_CHUNK && dun_stmt_row(st)) {
		last = dun_stmt_col_int64(st, 0);
		dun_stmt_col_copy(st, 1, ev[*n].id, sizeof ev[*n].id);
		ev[*n].body = dun_strdup(dun_stmt_col_text(st, 2));
		(*n)++;
	}
	e = dun_stmt_err(st);
	dun_stmt_reset(st);
	for (int i = 0; e == DUN_OK && i < *n; i++) {
		json_t *event = json_loads(ev[i].body, 0, NULL);
		json_t *obj = json_object_get(json_object_get(event, "data"), "object");
		if (json_is_object(obj))
			e = dun_sim_observe_in_tx(db, ev[i].id, obj);
		json_decref(event);
	}
	for (int i = 0; i < *n; i++)
		free(ev[i].body);
	free(ev);
	if (e == DUN_OK && *n > 0) {
		st = dun_db_stmt(db, "INSERT INTO sim_learnt(id, seq) VALUES (1, ?1)"
				     " ON CONFLICT(id) DO UPDATE SET seq = excluded.seq");
		dun_stmt_bind_int64(st, 1, last);
		e = dun_stmt_done(st);
	}
	return e;
}

enum dun_err dun_sim_learn_pending(struct dun_db *db, bool (*stop)(void *), void *stop_arg,
				   int64_t *learnt)
{
	if (learnt)
		*learnt = 0;
	if (!dun_sim_learns_lazily(db))
		return DUN_OK;
	/* The common case, nothing new, costs one read and no write lock. */
	struct dun_stmt *st =
	    dun_db_stmt(db, "SELECT EXISTS (SELECT 1 FROM events_raw_in_order"
			    " WHERE seq > COALESCE((SELECT seq FROM sim_learnt WHERE id = 1), 0))");
	bool any = dun_stmt_row(st) && dun_stmt_col_int(st, 0) != 0;
	enum dun_err e = dun_stmt_err(st);
	dun_stmt_reset(st);
	if (e != DUN_OK || !any)
		return e;
	bool own = !dun_db_in_transaction(db);
	for (;;) {
		if (own && (e = dun_db_begin(db)) != DUN_OK)
			return e;
		int n = 0;
		e = learn_chunk(db, &n);
		if (own && e == DUN_OK)
			e = dun_db_commit(db);
		if (e != DUN_OK) {
			if (own)
				dun_db_rollback(db);
			return e;
		}
		if (learnt)
			*learnt += n;
		if (n < LEARN_CHUNK || (stop && stop(stop_arg)))
			return DUN_OK;
	}
}

/* Before an operation that reads the simulator's objects. */
static enum dun_err learnt_all(struct dun_sim *sim, char *err, size_t es)
{
	enum dun_err e = dun_sim_learn_pending(sim->db, NULL, NULL, NULL);
	if (e != DUN_OK && err && es)
		snprintf(err, es, "the simulated provider cannot learn the stored webhooks: %s",
			 dun_db_errmsg(sim->db));
	return e;
}

#define LEARNT_ALL_OR_RETURN(sim, err, es)                             \
	do {                                                           \
		enum dun_err learn_e = learnt_all((sim), (err), (es)); \
		if (learn_e != DUN_OK)                                 \
			return learn_e;                                \
	} while (0)

/* ---- world operations --------------------------------------------------------- */

enum dun_err dun_sim_create_customer(struct dun_sim *sim, const char *account_id, const char *email,
				     const char *name, const char *behavior, char *customer_id_out)
{
	char id[64], pm[64];
	new_id(sim, "cus", id, sizeof id);
	new_id(sim, "pm", pm, sizeof pm);
	json_t *o = json_pack("{s:s, s:s, s:s, s:s, s:I, s:{s:s}, s:{s:s}}", "id", id, "object",
			      "customer", "email", email, "name", name, "created",
			      (json_int_t)dun_clock_now(), "metadata", "account_id", account_id,
			      "invoice_settings", "default_payment_method", pm);
	enum dun_err e = save(sim, o, behavior);
	if (e == DUN_OK)
		emit(sim, "customer.created", o);
	json_decref(o);
	if (customer_id_out)
		dun_strlcpy(customer_id_out, id, DUN_ID_MAX);
	return e;
}

enum dun_err dun_sim_create_subscription(struct dun_sim *sim, const char *customer_id,
					 char *subscription_id_out)
{
	char id[64];
	new_id(sim, "sub", id, sizeof id);
	/* One item, the simulator's one product. */
	json_t *items = json_pack("{s:s, s:[{s:{s:s, s:s}}]}", "object", "list", "data", "price",
				  "id", "price_sim_monthly", "product", "prod_sim_standard");
	json_t *o = json_pack("{s:s, s:s, s:s, s:s, s:I, s:o}", "id", id, "object", "subscription",
			      "customer", customer_id, "status", "active", "created",
			      (json_int_t)dun_clock_now(), "items", items);
	enum dun_err e = save(sim, o, NULL);
	if (e == DUN_OK)
		emit(sim, "customer.subscription.created", o);
	json_decref(o);
	if (subscription_id_out)
		dun_strlcpy(subscription_id_out, id, DUN_ID_MAX);
	return e;
}

static json_t *new_invoice(struct dun_sim *sim, const char *customer_id, const char *sub_id,
			   int64_t amount, const char *reason, const char *collection)
{
	char id[64], pi[64], url[160];
	new_id(sim, "in", id, sizeof id);
	new_id(sim, "pi", pi, sizeof pi);
	snprintf(url, sizeof url, "https://invoice.sim.invalid/i/%s", id);
	return json_pack("{s:s, s:s, s:s, s:s, s:s, s:I, s:I, s:I, s:s, s:i, s:b, s:s, s:s,"
			 " s:I, s:s, s:s, s:{}, s:{}}",
			 "id", id, "object", "invoice", "customer", customer_id, "subscription",
			 sub_id, "status", "open", "amount_due", (json_int_t)amount, "amount_paid",
			 (json_int_t)0, "amount_remaining", (json_int_t)amount, "currency", "usd",
			 "attempt_count", 0, "attempted", 0, "billing_reason", reason,
			 "collection_method", collection, "created", (json_int_t)dun_clock_now(),
			 "hosted_invoice_url", url, "payment_intent", pi, "metadata",
			 "status_transitions");
}

enum dun_err dun_sim_bill(struct dun_sim *sim, const char *customer_id, const char *subscription_id,
			  int64_t amount_minor, const char *billing_reason, char *invoice_id_out)
{
	LEARNT_ALL_OR_RETURN(sim, NULL, 0);
	json_t *inv = new_invoice(sim, customer_id, subscription_id ? subscription_id : "",
				  amount_minor, billing_reason, "charge_automatically");
	if (invoice_id_out)
		dun_strlcpy(invoice_id_out, sget(inv, "id"), DUN_ID_MAX);
	save(sim, inv, NULL);
	emit(sim, "invoice.finalized", inv);
	enum dun_err e = charge(sim, inv, false);
	json_decref(inv);
	return e;
}

enum dun_err dun_sim_update_card(struct dun_sim *sim, const char *customer_id, const char *behavior)
{
	LEARNT_ALL_OR_RETURN(sim, NULL, 0);
	json_t *cus = load(sim, customer_id, NULL, 0);
	if (!cus)
		return DUN_E_NOT_FOUND;
	char pm[64];
	new_id(sim, "pm", pm, sizeof pm);
	json_object_set_new(cus, "invoice_settings",
			    json_pack("{s:s}", "default_payment_method", pm));
	enum dun_err e = save(sim, cus, behavior);
	if (e == DUN_OK)
		emit(sim, "customer.updated", cus);
	json_decref(cus);
	return e;
}

enum dun_err dun_sim_pay_out_of_band(struct dun_sim *sim, const char *invoice_id)
{
	LEARNT_ALL_OR_RETURN(sim, NULL, 0);
	json_t *inv = load(sim, invoice_id, NULL, 0);
	if (!inv)
		return DUN_E_NOT_FOUND;
	enum dun_err e = DUN_E_PROVIDER_REJECTED;
	if (!strcmp(sget(inv, "status"), "open"))
		e = charge(sim, inv, true);
	json_decref(inv);
	return e;
}

/* ---- provider operations ------------------------------------------------------- */

static enum dun_err op_set_meta(struct dun_sim *sim, const char *id, const char *type,
				const char *event, const char *key, const char *value,
				const char *idem, json_t **out, char *err, size_t es)
{
	*out = idem_get(sim, idem);
	if (*out)
		return DUN_OK;
	LEARNT_ALL_OR_RETURN(sim, err, es);
	json_t *o = load(sim, id, NULL, 0);
	if (!o || strcmp(sget(o, "object"), type) != 0) {
		json_decref(o);
		set_err(err, es, "no such object", id);
		return DUN_E_PROVIDER_REJECTED;
	}
	json_t *md = json_object_get(o, "metadata");
	if (!json_is_object(md)) {
		md = json_object();
		json_object_set_new(o, "metadata", md);
	}
	if (value[0])
		json_object_set_new(md, key, json_string(value));
	else
		json_object_del(md, key);
	save(sim, o, NULL);
	emit(sim, event, o);
	idem_put(sim, idem, o);
	*out = o;
	return DUN_OK;
}

static enum dun_err sim_set_customer_metadata(void *self, const char *customer_id, const char *key,
					      const char *value, const char *idem, json_t **out,
					      char *err, size_t es)
{
	return op_set_meta(self, customer_id, "customer", "customer.updated", key, value, idem, out,
			   err, es);
}

static enum dun_err sim_set_invoice_metadata(void *self, const char *invoice_id, const char *key,
					     const char *value, const char *idem, json_t **out,
					     char *err, size_t es)
{
	return op_set_meta(self, invoice_id, "invoice", "invoice.updated", key, value, idem, out,
			   err, es);
}

/* Move an invoice from one of the allowed statuses to `to`. */
static enum dun_err transition(struct dun_sim *sim, const char *invoice_id, const char *from1,
			       const char *from2, const char *to, const char *event,
			       const char *idem, json_t **out, char *err, size_t es)
{
	*out = idem_get(sim, idem);
	if (*out)
		return DUN_OK;
	LEARNT_ALL_OR_RETURN(sim, err, es);
	json_t *inv = load(sim, invoice_id, NULL, 0);
	if (!inv) {
		set_err(err, es, "no such invoice", invoice_id);
		return DUN_E_PROVIDER_REJECTED;
	}
	const char *st = sget(inv, "status");
	if (strcmp(st, from1) != 0 && (!from2 || strcmp(st, from2) != 0)) {
		if (err && es)
			snprintf(err, es, "%s: cannot move an invoice from %s to %s", invoice_id,
				 st, to);
		json_decref(inv);
		return DUN_E_PROVIDER_REJECTED;
	}
	json_object_set_new(inv, "status", json_string(to));
	save(sim, inv, NULL);
	emit(sim, event, inv);
	idem_put(sim, idem, inv);
	*out = inv;
	return DUN_OK;
}

static enum dun_err sim_mark_uncollectible(void *self, const char *invoice_id, const char *idem,
					   json_t **out, char *err, size_t es)
{
	return transition(self, invoice_id, "open", NULL, "uncollectible",
			  "invoice.marked_uncollectible", idem, out, err, es);
}

static enum dun_err sim_void_invoice(void *self, const char *invoice_id, const char *idem,
				     json_t **out, char *err, size_t es)
{
	return transition(self, invoice_id, "open", "uncollectible", "void", "invoice.voided", idem,
			  out, err, es);
}

static enum dun_err sim_cancel_subscription(void *self, const char *sub_id, const char *idem,
					    json_t **out, char *err, size_t es)
{
	struct dun_sim *sim = self;
	*out = idem_get(sim, idem);
	if (*out)
		return DUN_OK;
	LEARNT_ALL_OR_RETURN(sim, err, es);
	json_t *sub = load(sim, sub_id, NULL, 0);
	if (!sub) {
		set_err(err, es, "no such subscription", sub_id);
		return DUN_E_PROVIDER_REJECTED;
	}
	if (strcmp(sget(sub, "status"), "canceled") != 0) {
		json_object_set_new(sub, "status", json_string("canceled"));
		json_object_set_new(sub, "canceled_at", json_integer(dun_clock_now()));
		save(sim, sub, NULL);
		emit(sim, "customer.subscription.deleted", sub);
	}
	idem_put(sim, idem, sub);
	*out = sub;
	return DUN_OK;
}

static enum dun_err sim_pay_invoice(void *self, const char *invoice_id, const char *idem,
				    json_t **out, char *err, size_t es)
{
	struct dun_sim *sim = self;
	*out = idem_get(sim, idem);
	if (*out)
		return DUN_OK;
	LEARNT_ALL_OR_RETURN(sim, err, es);
	json_t *inv = load(sim, invoice_id, NULL, 0);
	if (!inv) {
		set_err(err, es, "no such invoice", invoice_id);
		return DUN_E_PROVIDER_REJECTED;
	}
	if (strcmp(sget(inv, "status"), "open") != 0) {
		set_err(err, es, "invoice is not open", invoice_id);
		json_decref(inv);
		return DUN_E_PROVIDER_REJECTED;
	}
	enum dun_err e = charge(sim, inv, false);
	if (e != DUN_OK) {
		json_decref(inv);
		return e;
	}
	idem_put(sim, idem, inv);
	*out = inv;
	return DUN_OK;
}

static enum dun_err sim_create_consolidated(void *self, const struct dun_consolidated_req *req,
					    const char *idem, json_t **out, char *err, size_t es)
{
	struct dun_sim *sim = self;
	*out = idem_get(sim, idem);
	if (*out)
		return DUN_OK;
	LEARNT_ALL_OR_RETURN(sim, err, es);
	int64_t total = 0;
	for (int i = 0; i < req->n_originals; i++)
		total += req->original_amounts_minor[i];
	json_t *inv = new_invoice(sim, req->customer_id, "", total, "manual", "send_invoice");
	json_object_set_new(inv, "currency", json_string(req->currency));
	json_object_set_new(inv, "due_date",
			    json_integer(dun_clock_now() + (int64_t)req->days_until_due * 86400));
	/* The list of originals, in values of at most 500 characters. */
	json_t *md = json_object_get(inv, "metadata");
	char value[501];
	size_t len = 0;
	int part = 1;
	value[0] = '\0';
	for (int i = 0; i <= req->n_originals; i++) {
		const char *id = i < req->n_originals ? req->original_ids[i] : NULL;
		size_t n = id ? strlen(id) : 0;
		if (!id || len + n + (len ? 1 : 0) > 500) {
			char key[40];
			if (part == 1)
				snprintf(key, sizeof key, "bad_debt_invoices");
			else
				snprintf(key, sizeof key, "bad_debt_invoices_%d", part);
			if (len)
				json_object_set_new(md, key, json_string(value));
			part++;
			len = 0;
			value[0] = '\0';
		}
		if (id) {
			if (len)
				value[len++] = ',';
			memcpy(value + len, id, n + 1);
			len += n;
		}
	}
	save(sim, inv, NULL);
	emit(sim, "invoice.created", inv);
	emit(sim, "invoice.finalized", inv);
	idem_put(sim, idem, inv);
	(void)err;
	(void)es;
	*out = inv;
	return DUN_OK;
}

static enum dun_err sim_list_invoices(void *self, const char *customer_id, json_t **out, char *err,
				      size_t es)
{
	struct dun_sim *sim = self;
	*out = NULL;
	LEARNT_ALL_OR_RETURN(sim, err, es);
	json_t *arr = json_array();
	struct dun_stmt *st =
	    dun_db_stmt(sim->db, "SELECT body FROM sim_objects WHERE"
				 " customer_id = ?1 AND type = 'invoice' ORDER BY id");
	dun_stmt_bind_text(st, 1, customer_id);
	while (dun_stmt_row(st)) {
		json_t *o = parse_body(sim, dun_stmt_col_text(st, 0));
		if (o)
			json_array_append_new(arr, o);
	}
	dun_stmt_reset(st);
	(void)err;
	(void)es;
	*out = arr;
	return DUN_OK;
}

static void sim_destroy_op(void *self)
{
	(void)self; /* the sim is owned by whoever created it */
}

static const struct dun_provider_ops sim_ops = {
    .name = "simulated",
    .set_customer_metadata = sim_set_customer_metadata,
    .set_invoice_metadata = sim_set_invoice_metadata,
    .mark_uncollectible = sim_mark_uncollectible,
    .void_invoice = sim_void_invoice,
    .cancel_subscription = sim_cancel_subscription,
    .pay_invoice = sim_pay_invoice,
    .create_consolidated = sim_create_consolidated,
    .list_invoices = sim_list_invoices,
    /*
     * No targeted refresh: every attempt the simulator makes is a charge
     * that names its invoice (the pre-basil shape) in the same event
     * stream that raises attempt_count, so the mirror never lacks one.
     */
    .refresh_invoices = NULL,
    .destroy = sim_destroy_op,
};

struct dun_provider dun_sim_provider(struct dun_sim *sim)
{
	struct dun_provider p = {.ops = &sim_ops, .self = sim, .local_db = sim->db};
	return p;
}

/* ---- objects learnt from ingested events ------------------------------------- */

static bool is_own_id(const char *id)
{
	return strstr(id, "_sim") != NULL;
}

/*
 * Learn obj through db. Kept to what the webhook committer can afford inside
 * its transaction (it runs once per new webhook, in the serial path): one
 * upsert of the object, plus one read for a customer (has its card changed?)
 * and one conditional update for a charge (the card's learnt behaviour).
 */
enum dun_err dun_sim_observe_in_tx(struct dun_db *db, const char *event_id, json_t *obj)
{
	struct dun_sim view = {.db = db};
	struct dun_sim *sim = &view;
	const char *type = sget(obj, "object");
	const char *id = sget(obj, "id");
	if (!id[0] || is_own_id(id))
		return DUN_OK; /* the simulator's own objects: it is their source of truth */
	if (strcmp(type, "customer") && strcmp(type, "subscription") && strcmp(type, "invoice") &&
	    strcmp(type, "charge"))
		return DUN_OK;
	const char *set_behavior = NULL;
	if (!strcmp(type, "customer")) {
		/* A new card on file is a card that works, until a charge says otherwise. */
		json_t *known = load(sim, id, NULL, 0);
		const char *pm =
		    sget(json_object_get(obj, "invoice_settings"), "default_payment_method");
		const char *old = known ? sget(json_object_get(known, "invoice_settings"),
					       "default_payment_method")
					: "";
		if (!known || strcmp(pm, old) != 0)
			set_behavior = "=ok";
		json_decref(known);
	}
	enum dun_err e = save_as(sim, obj, set_behavior, event_id);
	if (e != DUN_OK || strcmp(type, "charge") != 0)
		return e;
	/*
	 * The card keeps doing what its last charge did, unless the simulator
	 * was told about the card explicitly (a behaviour not starting with '=').
	 */
	const char *cus_id = sget(obj, "customer");
	if (!cus_id[0])
		return DUN_OK;
	char learnt[256];
	if (!strcmp(sget(obj, "status"), "succeeded")) {
		snprintf(learnt, sizeof learnt, "=ok");
	} else {
		json_t *outcome = json_object_get(obj, "outcome");
		const char *code = sget(outcome, "reason");
		if (!code[0])
			code = sget(obj, "failure_code");
		if (!code[0])
			code = "generic_decline";
		int n = snprintf(learnt, sizeof learnt, "=%s", code);
		const char *advice = sget(outcome, "advice_code");
		const char *network = sget(outcome, "network_advice_code");
		if (advice[0] && n > 0 && (size_t)n < sizeof learnt)
			n += snprintf(learnt + n, sizeof learnt - (size_t)n, ",advice=%s", advice);
		if (network[0] && n > 0 && (size_t)n < sizeof learnt)
			snprintf(learnt + n, sizeof learnt - (size_t)n, ",network=%s", network);
	}
	struct dun_stmt *st =
	    dun_db_stmt(sim->db, "UPDATE sim_objects SET behavior = ?2 WHERE id = ?1"
				 " AND (behavior = '' OR substr(behavior, 1, 1) = '=')");
	dun_stmt_bind_text(st, 1, cus_id);
	dun_stmt_bind_text(st, 2, learnt);
	return dun_stmt_done(st);
}

void dun_sim_observe(struct dun_sim *sim, json_t *obj)
{
	dun_sim_observe_in_tx(sim->db, NULL, obj);
}
