/*
 * mirror.c — folding Stripe-format objects into the provider mirror
 * (see mirror.h for the versioning rule).
 *
 * The mirror also registers accounts: a customer whose metadata carries
 * `account_id` creates the engine's accounts/customers rows for it if they
 * do not exist yet. That is bookkeeping of who is who, not a dunning
 * decision, so it happens here and not in the applier.
 */
#include "mirror.h"
#include "core/model.h"
#include "core/text.h"
#include "util/mem.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const char *jstr(json_t *o, const char *k)
{
	json_t *v = json_object_get(o, k);
	return json_is_string(v) ? json_string_value(v) : "";
}

static int64_t jint(json_t *o, const char *k)
{
	json_t *v = json_object_get(o, k);
	return json_is_integer(v) ? (int64_t)json_integer_value(v) : 0;
}

/* A field that is either an id string or an expanded object with an id. */
static const char *jid(json_t *o, const char *k)
{
	json_t *v = json_object_get(o, k);
	if (json_is_string(v))
		return json_string_value(v);
	if (json_is_object(v))
		return jstr(v, "id");
	return "";
}

bool dun_mirror_knows(const char *t)
{
	return !strcmp(t, "customer") || !strcmp(t, "subscription") || !strcmp(t, "invoice") ||
	       !strcmp(t, "charge") || !strcmp(t, "payment_intent") ||
	       !strcmp(t, "invoice_payment");
}

static int status_rank(const char *s)
{
	if (!strcmp(s, "draft"))
		return 0;
	if (!strcmp(s, "open"))
		return 1;
	if (!strcmp(s, "uncollectible"))
		return 2;
	return 3; /* paid, void: terminal */
}

static void fail(char *err, size_t n, const char *what, const char *id)
{
	if (err && n)
		snprintf(err, n, "%s %s: malformed or missing field", what, id);
}

enum dun_err dun_mirror_account_of(struct dun_db *db, const char *customer_id, char *account,
				   size_t account_size)
{
	struct dun_stmt *st = dun_db_stmt(db, "SELECT account_id FROM customers WHERE id = ?1");
	dun_stmt_bind_text(st, 1, customer_id);
	enum dun_err e = DUN_E_NOT_FOUND;
	account[0] = '\0';
	if (dun_stmt_row(st)) {
		dun_stmt_col_copy(st, 0, account, account_size);
		e = account[0] ? DUN_OK : DUN_E_NOT_FOUND;
	}
	dun_stmt_reset(st);
	return e;
}

/*
 * The account of a customer, '' when it is linked to none: the account_id
 * an invoice of that customer is stored with (schema migration 18: the
 * writers set it, no trigger does).
 */
static enum dun_err linked_account(struct dun_db *db, const char *customer_id, char **account)
{
	struct dun_stmt *st = dun_db_stmt(db, "SELECT account_id FROM customers WHERE id = ?1");
	dun_stmt_bind_text(st, 1, customer_id);
	*account = dun_strdup(dun_stmt_row(st) ? dun_stmt_col_text(st, 0) : "");
	enum dun_err e = dun_stmt_err(st);
	dun_stmt_reset(st);
	return e;
}

static enum dun_err upsert_customer(struct dun_db *db, json_t *o, int64_t version, bool *applied)
{
	const char *id = jstr(o, "id");
	json_t *md = json_object_get(o, "metadata");
	const char *account = json_is_object(md) ? jstr(md, "account_id") : "";
	const char *bad = json_is_object(md) ? jstr(md, "bad_debt") : "";
	const char *pm = "";
	json_t *inv_settings = json_object_get(o, "invoice_settings");
	if (json_is_object(inv_settings))
		pm = jid(inv_settings, "default_payment_method");
	if (!pm[0])
		pm = jid(o, "default_source");
	char *mdtext = json_is_object(md) ? json_dumps(md, JSON_COMPACT | JSON_SORT_KEYS) : NULL;
	struct dun_stmt *st = dun_db_stmt(
	    db, "INSERT INTO p_customers(id, account_id, email, name, default_payment_method,"
		" meta_bad_debt, metadata, version, linked_account_id) VALUES (?1, NULLIF(?2, ''),"
		" ?3, ?4, ?5, ?6, ?7, ?8,"
		" COALESCE((SELECT account_id FROM customers WHERE id = ?1), ''))"
		" ON CONFLICT(id) DO UPDATE SET account_id = COALESCE(excluded.account_id,"
		" p_customers.account_id), email = excluded.email, name = excluded.name,"
		" default_payment_method = excluded.default_payment_method,"
		" meta_bad_debt = excluded.meta_bad_debt, metadata = excluded.metadata,"
		" version = excluded.version WHERE excluded.version >= p_customers.version");
	dun_stmt_bind_text(st, 1, id);
	dun_stmt_bind_text(st, 2, account);
	dun_stmt_bind_text(st, 3, jstr(o, "email"));
	dun_stmt_bind_text(st, 4, jstr(o, "name"));
	dun_stmt_bind_text(st, 5, pm);
	dun_stmt_bind_int(st, 6, strcmp(bad, "true") == 0);
	dun_stmt_bind_text(st, 7, mdtext ? mdtext : "{}");
	dun_stmt_bind_int64(st, 8, version);
	enum dun_err e = dun_stmt_done(st);
	*applied = e == DUN_OK && dun_db_changes(db) > 0;
	free(mdtext);
	if (e != DUN_OK || !account[0])
		return e;
	/* Register the account and the customer link. */
	st = dun_db_stmt(db, "INSERT INTO accounts(id, email, name, created_at)"
			     " VALUES (?1, ?2, ?3, ?4) ON CONFLICT DO NOTHING");
	dun_stmt_bind_text(st, 1, account);
	dun_stmt_bind_text(st, 2, jstr(o, "email"));
	dun_stmt_bind_text(st, 3, jstr(o, "name"));
	dun_stmt_bind_int64(st, 4, jint(o, "created"));
	e = dun_stmt_done(st);
	if (e != DUN_OK)
		return e;
	st = dun_db_stmt(db, "INSERT INTO customers(id, account_id) VALUES (?1, ?2)"
			     " ON CONFLICT DO NOTHING");
	dun_stmt_bind_text(st, 1, id);
	dun_stmt_bind_text(st, 2, account);
	return dun_stmt_done(st);
}

/*
 * The products of a subscription's items (items.data[].price.product, an id
 * or an expanded product; plan.product in older shapes), comma-separated,
 * each once, in item order. NULL when the object lists no items (an event
 * that leaves them out keeps what the mirror has).
 */
static char *subscription_products(json_t *o)
{
	json_t *data = json_object_get(json_object_get(o, "items"), "data");
	if (!json_is_array(data))
		return NULL;
	size_t cap = 1;
	char *out = dun_malloc(cap);
	out[0] = '\0';
	size_t len = 0, i;
	json_t *item;
	json_array_foreach(data, i, item)
	{
		json_t *price = json_object_get(item, "price");
		if (!json_is_object(price))
			price = json_object_get(item, "plan");
		const char *p = jid(price, "product");
		size_t n = strlen(p);
		if (!n || strchr(p, ','))
			continue;
		if (dun_list_has(out, p, n))
			continue;
		out = dun_realloc(out, cap += n + 1);
		if (len)
			out[len++] = ',';
		memcpy(out + len, p, n + 1);
		len += n;
	}
	return out;
}

static enum dun_err upsert_subscription(struct dun_db *db, json_t *o, int64_t version,
					bool *applied)
{
	char *products = subscription_products(o);
	struct dun_stmt *st = dun_db_stmt(
	    db, "INSERT INTO p_subscriptions(id, customer_id, status, version, products,"
		" account_id) VALUES (?1, ?2, ?3, ?4, COALESCE(?5, ''),"
		" COALESCE((SELECT account_id FROM customers WHERE id = ?2), ''))"
		" ON CONFLICT(id) DO UPDATE SET"
		" status = excluded.status, version = excluded.version,"
		" products = COALESCE(?5, p_subscriptions.products)"
		" WHERE excluded.version > p_subscriptions.version"
		" OR (excluded.version = p_subscriptions.version AND"
		" excluded.status = 'canceled')");
	dun_stmt_bind_text(st, 1, jstr(o, "id"));
	dun_stmt_bind_text(st, 2, jid(o, "customer"));
	dun_stmt_bind_text(st, 3, jstr(o, "status"));
	dun_stmt_bind_int64(st, 4, version);
	dun_stmt_bind_text(st, 5, products); /* NULL binds NULL: keep what is known */
	enum dun_err e = dun_stmt_done(st);
	*applied = e == DUN_OK && dun_db_changes(db) > 0;
	free(products);
	return e;
}

/*
 * bad_debt_invoices may not fit one 500-character metadata value, so the
 * list continues in bad_debt_invoices_2, _3, ... ; join them with commas.
 */
static char *covers_list(json_t *md)
{
	const char *first = jstr(md, "bad_debt_invoices");
	if (!first[0])
		return NULL;
	size_t cap = strlen(first) + 1, len = 0;
	char *out = malloc(cap);
	if (!out)
		return NULL;
	memcpy(out, first, cap);
	len = cap - 1;
	for (int i = 2; i < 100; i++) {
		char key[40];
		snprintf(key, sizeof key, "bad_debt_invoices_%d", i);
		const char *more = jstr(md, key);
		if (!more[0])
			break;
		size_t m = strlen(more);
		char *grown = realloc(out, len + m + 2);
		if (!grown)
			break;
		out = grown;
		out[len++] = ',';
		memcpy(out + len, more, m + 1);
		len += m;
	}
	return out;
}

/*
 * Whether the probe sql (one or two text parameters) finds a row. The
 * updates of p_attempts below change columns of its primary key, so SQLite
 * runs them in two passes through a temporary B-tree, built on every
 * execution even when no row matches; on the webhook path almost none
 * does, and an index probe first costs a fraction of that. A failed probe
 * answers true: the update then runs and reports the error itself.
 */
static bool any_attempt(struct dun_db *db, const char *sql, const char *p1, const char *p2)
{
	struct dun_stmt *st = dun_db_stmt(db, sql);
	dun_stmt_bind_text(st, 1, p1);
	if (p2)
		dun_stmt_bind_text(st, 2, p2);
	bool found = dun_stmt_row(st);
	bool failed = dun_stmt_err(st) != DUN_OK;
	dun_stmt_reset(st);
	return found || failed;
}

static enum dun_err upsert_invoice(struct dun_db *db, json_t *o, int64_t version, bool *applied,
				   char *err, size_t err_size)
{
	const char *id = jstr(o, "id");
	const char *status = jstr(o, "status");
	const char *customer = jid(o, "customer");
	if (!id[0]) {
		fail(err, err_size, "invoice", id);
		return DUN_E_PARSE;
	}
	*applied = false;
	if (!customer[0] || !status[0])
		return DUN_OK; /* basil allows both to be null: nothing dunning could act on */
	/* Subscription: old shape top-level, new shape under parent. */
	const char *sub = jid(o, "subscription");
	json_t *parent = json_object_get(o, "parent");
	if (!sub[0] && json_is_object(parent)) {
		json_t *sd = json_object_get(parent, "subscription_details");
		if (json_is_object(sd))
			sub = jid(sd, "subscription");
	}
	const char *pi = jid(o, "payment_intent");
	int64_t paid_at = 0;
	json_t *tr = json_object_get(o, "status_transitions");
	if (json_is_object(tr))
		paid_at = jint(tr, "paid_at");
	json_t *md = json_object_get(o, "metadata");
	bool has_amt = false, bd_paid = false;
	int64_t amt = 0;
	char *covers = NULL;
	if (json_is_object(md)) {
		const char *a = jstr(md, "bad_debt_amount");
		if (a[0]) {
			char *end;
			long long v = strtoll(a, &end, 10);
			if (*end == '\0') {
				has_amt = true;
				amt = v;
			}
		}
		bd_paid = strcmp(jstr(md, "bad_debt_paid"), "true") == 0;
		covers = covers_list(md);
	}
	char *account = NULL;
	enum dun_err e = linked_account(db, customer, &account);
	if (e != DUN_OK) {
		free(account);
		free(covers);
		return e;
	}
	char *mdtext = json_is_object(md) ? json_dumps(md, JSON_COMPACT | JSON_SORT_KEYS) : NULL;

	/* The version rule, decided in SQL against the stored row. An update
	 * keeps the stored customer_id, so the stored account_id stays its
	 * customer's (the triggers on customers move it on a relink). */
	struct dun_stmt *st = dun_db_stmt(
	    db,
	    "INSERT INTO p_invoices(id, customer_id, subscription_id, status, amount_due,"
	    " amount_paid, amount_remaining, currency, attempt_count, billing_reason,"
	    " collection_method, created, paid_at, hosted_invoice_url, payment_intent,"
	    " meta_bad_debt_amount, meta_bad_debt_paid, meta_bad_debt_invoices, metadata,"
	    " version, next_payment_attempt, account_id) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8,"
	    " ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18, ?19, ?20, ?22, ?23)"
	    " ON CONFLICT(id) DO UPDATE SET subscription_id = excluded.subscription_id,"
	    " status = excluded.status, amount_due = excluded.amount_due,"
	    " amount_paid = excluded.amount_paid,"
	    " amount_remaining = excluded.amount_remaining, currency = excluded.currency,"
	    " attempt_count = excluded.attempt_count,"
	    " billing_reason = excluded.billing_reason,"
	    " collection_method = excluded.collection_method, created = excluded.created,"
	    " paid_at = excluded.paid_at, hosted_invoice_url = excluded.hosted_invoice_url,"
	    " payment_intent = CASE WHEN excluded.payment_intent <> '' THEN"
	    " excluded.payment_intent ELSE p_invoices.payment_intent END,"
	    " meta_bad_debt_amount = excluded.meta_bad_debt_amount,"
	    " meta_bad_debt_paid = excluded.meta_bad_debt_paid,"
	    " meta_bad_debt_invoices = excluded.meta_bad_debt_invoices,"
	    " metadata = excluded.metadata, version = excluded.version,"
	    " next_payment_attempt = excluded.next_payment_attempt"
	    " WHERE excluded.version > p_invoices.version"
	    " OR (excluded.version = p_invoices.version AND ?21 >="
	    " (CASE p_invoices.status WHEN 'draft' THEN 0 WHEN 'open' THEN 1 WHEN 'uncollectible'"
	    " THEN 2 ELSE 3 END))");
	dun_stmt_bind_text(st, 1, id);
	dun_stmt_bind_text(st, 2, customer);
	dun_stmt_bind_text(st, 3, sub);
	dun_stmt_bind_text(st, 4, status);
	dun_stmt_bind_int64(st, 5, jint(o, "amount_due"));
	dun_stmt_bind_int64(st, 6, jint(o, "amount_paid"));
	dun_stmt_bind_int64(st, 7, jint(o, "amount_remaining"));
	dun_stmt_bind_text(st, 8, jstr(o, "currency")[0] ? jstr(o, "currency") : "usd");
	dun_stmt_bind_int64(st, 9, jint(o, "attempt_count"));
	dun_stmt_bind_text(st, 10, jstr(o, "billing_reason"));
	dun_stmt_bind_text(st, 11,
			   jstr(o, "collection_method")[0] ? jstr(o, "collection_method")
							   : "charge_automatically");
	dun_stmt_bind_int64(st, 12, jint(o, "created"));
	dun_stmt_bind_int64(st, 13, paid_at);
	dun_stmt_bind_text(st, 14, jstr(o, "hosted_invoice_url"));
	dun_stmt_bind_text(st, 15, pi);
	if (has_amt)
		dun_stmt_bind_int64(st, 16, amt);
	else
		dun_stmt_bind_null(st, 16);
	dun_stmt_bind_int(st, 17, bd_paid);
	dun_stmt_bind_text_copy(st, 18, covers);
	dun_stmt_bind_text(st, 19, mdtext ? mdtext : "{}");
	dun_stmt_bind_int64(st, 20, version);
	dun_stmt_bind_int(st, 21, status_rank(status));
	/* Stripe's own next try (Smart Retries); null when it will not try. */
	dun_stmt_bind_int64(st, 22, jint(o, "next_payment_attempt"));
	dun_stmt_bind_text(st, 23, account);
	e = dun_stmt_done(st);
	*applied = e == DUN_OK && dun_db_changes(db) > 0;
	free(covers);
	free(mdtext);
	/* Attempts that arrived before their invoice were stored with no
	 * account (their invoice was unknown): they take the invoice's. With
	 * no account there is nothing to hand on. */
	if (e == DUN_OK && account[0] &&
	    any_attempt(db,
			"SELECT 1 FROM p_attempts WHERE invoice_id = ?1 AND account_id <> ?2"
			" LIMIT 1",
			id, account)) {
		st = dun_db_stmt(db, "UPDATE p_attempts SET account_id = ?2"
				     " WHERE invoice_id = ?1 AND account_id <> ?2");
		dun_stmt_bind_text(st, 1, id);
		dun_stmt_bind_text(st, 2, account);
		e = dun_stmt_done(st);
	}
	/* Attempts that arrived before the invoice told us its payment intent. */
	if (e == DUN_OK && pi[0] &&
	    any_attempt(db,
			"SELECT 1 FROM p_attempts WHERE payment_intent = ?1 AND"
			" payment_intent <> '' AND invoice_id = '' LIMIT 1",
			pi, NULL)) {
		st = dun_db_stmt(db, "UPDATE p_attempts SET invoice_id = ?1, account_id = ?3"
				     " WHERE payment_intent = ?2 AND payment_intent <> ''"
				     " AND invoice_id = ''");
		dun_stmt_bind_text(st, 1, id);
		dun_stmt_bind_text(st, 2, pi);
		dun_stmt_bind_text(st, 3, account);
		e = dun_stmt_done(st);
	}
	free(account);
	return e;
}

/*
 * Every lookup by payment intent repeats "payment_intent <> ''", the
 * predicate of the partial indexes p_invoices_pi and p_attempts_pi: SQLite
 * only uses a partial index when the query implies its predicate, and
 * "payment_intent = ?1" alone does not (the parameter might be ''), so
 * without it each of these statements read the whole table.
 */
static void invoice_of_pi(struct dun_db *db, const char *pi, char *out, size_t n)
{
	out[0] = '\0';
	if (!pi[0])
		return;
	struct dun_stmt *st =
	    dun_db_stmt(db, "SELECT id FROM p_invoices WHERE payment_intent = ?1 AND"
			    " payment_intent <> ''");
	dun_stmt_bind_text(st, 1, pi);
	if (dun_stmt_row(st))
		dun_stmt_col_copy(st, 0, out, n);
	dun_stmt_reset(st);
}

static enum dun_err put_attempt(struct dun_db *db, const char *id, const char *invoice,
				const char *pi, int64_t created, const char *status, const char *pm,
				const char *decline, const char *advice, const char *network_advice,
				int64_t version, bool *applied)
{
	char inv[DUN_ID_MAX];
	if (invoice[0])
		dun_strlcpy(inv, invoice, sizeof inv);
	else
		invoice_of_pi(db, pi, inv, sizeof inv);
	struct dun_stmt *st = dun_db_stmt(
	    db, "INSERT INTO p_attempts(id, invoice_id, payment_intent, created, status,"
		" payment_method, decline_code, advice_code, network_advice_code, version,"
		" account_id) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10,"
		" COALESCE((SELECT account_id FROM p_invoices WHERE id = ?2), ''))"
		" ON CONFLICT(id) DO UPDATE SET invoice_id = CASE WHEN excluded.invoice_id <> ''"
		" THEN excluded.invoice_id ELSE p_attempts.invoice_id END,"
		" account_id = CASE WHEN excluded.invoice_id <> '' THEN excluded.account_id"
		" ELSE p_attempts.account_id END, status = excluded.status,"
		" payment_method = excluded.payment_method,"
		" decline_code = excluded.decline_code, advice_code = excluded.advice_code,"
		" network_advice_code = excluded.network_advice_code,"
		" version = excluded.version WHERE excluded.version >= p_attempts.version");
	dun_stmt_bind_text(st, 1, id);
	dun_stmt_bind_text(st, 2, inv);
	dun_stmt_bind_text(st, 3, pi);
	dun_stmt_bind_int64(st, 4, created);
	dun_stmt_bind_text(st, 5, status);
	dun_stmt_bind_text(st, 6, pm);
	dun_stmt_bind_text(st, 7, decline);
	dun_stmt_bind_text(st, 8, advice);
	dun_stmt_bind_text(st, 9, network_advice);
	dun_stmt_bind_int64(st, 10, version);
	enum dun_err e = dun_stmt_done(st);
	*applied = e == DUN_OK && dun_db_changes(db) > 0;
	return e;
}

static enum dun_err upsert_charge(struct dun_db *db, json_t *o, int64_t version, bool *applied)
{
	const char *status = jstr(o, "status");
	const char *st = !strcmp(status, "succeeded") ? "succeeded"
			 : !strcmp(status, "failed")  ? "failed"
						      : "processing";
	json_t *outcome = json_object_get(o, "outcome");
	const char *decline = "", *advice = "", *net = "";
	if (json_is_object(outcome)) {
		decline = jstr(outcome, "reason");
		advice = jstr(outcome, "advice_code");
		net = jstr(outcome, "network_advice_code");
	}
	if (!decline[0])
		decline = jstr(o, "failure_code");
	if (!strcmp(st, "succeeded"))
		decline = "";
	const char *pi = jid(o, "payment_intent");
	enum dun_err e =
	    put_attempt(db, jstr(o, "id"), jid(o, "invoice"), pi, jint(o, "created"), st,
			jid(o, "payment_method"), decline, advice, net, version, applied);
	if (e != DUN_OK || !strcmp(st, "processing") || !pi[0])
		return e;
	/* A charge that failed or succeeded settles its payment intent: what
	 * said that payment was in flight (the payment intent's processing
	 * marker, an earlier pending charge) no longer holds, whether or not
	 * the payment intent's own webhook ever arrives. */
	struct dun_stmt *del = dun_db_stmt(
	    db, "DELETE FROM p_attempts WHERE payment_intent = ?1 AND payment_intent <> '' AND"
		" status = 'processing' AND id <> ?2 AND version <= ?3");
	dun_stmt_bind_text(del, 1, pi);
	dun_stmt_bind_text(del, 2, jstr(o, "id"));
	dun_stmt_bind_int64(del, 3, version);
	e = dun_stmt_done(del);
	if (e == DUN_OK && dun_db_changes(db) > 0)
		*applied = true;
	return e;
}

static enum dun_err upsert_payment_intent(struct dun_db *db, json_t *o, int64_t version,
					  bool *applied)
{
	const char *pi = jstr(o, "id");
	const char *status = jstr(o, "status");
	char marker[DUN_ID_MAX + 16];
	snprintf(marker, sizeof marker, "%s:processing", pi);
	*applied = false;
	if (!strcmp(status, "processing")) {
		/* A processing event older than a settled charge of the same
		 * payment intent (events arrive out of order) starts no hold. */
		struct dun_stmt *q =
		    dun_db_stmt(db, "SELECT 1 FROM p_attempts WHERE payment_intent = ?1 AND"
				    " payment_intent <> '' AND"
				    " status IN ('failed', 'succeeded') AND version >= ?2");
		dun_stmt_bind_text(q, 1, pi);
		dun_stmt_bind_int64(q, 2, version);
		bool settled = dun_stmt_row(q);
		enum dun_err qe = dun_stmt_err(q);
		dun_stmt_reset(q);
		if (qe != DUN_OK || settled)
			return qe;
		return put_attempt(db, marker, jid(o, "invoice"), pi, jint(o, "created"),
				   "processing", jid(o, "payment_method"), "", "", "", version,
				   applied);
	}
	/* The payment is no longer in flight: drop the marker. */
	struct dun_stmt *st =
	    dun_db_stmt(db, "DELETE FROM p_attempts WHERE id = ?1 AND version <= ?2");
	dun_stmt_bind_text(st, 1, marker);
	dun_stmt_bind_int64(st, 2, version);
	enum dun_err e = dun_stmt_done(st);
	if (e != DUN_OK)
		return e;
	*applied = dun_db_changes(db) > 0;
	json_t *lpe = json_object_get(o, "last_payment_error");
	if (!json_is_object(lpe))
		return DUN_OK;
	const char *charge = jid(lpe, "charge");
	if (!charge[0])
		charge = jid(o, "latest_charge");
	if (!charge[0])
		return DUN_OK;
	const char *decline = jstr(lpe, "decline_code");
	if (!decline[0])
		decline = jstr(lpe, "code");
	json_t *pm = json_object_get(lpe, "payment_method");
	bool a2 = false;
	e = put_attempt(db, charge, jid(o, "invoice"), pi, jint(o, "created"), "failed",
			json_is_object(pm) ? jstr(pm, "id") : jid(o, "payment_method"), decline,
			jstr(lpe, "advice_code"), jstr(lpe, "network_advice_code"), version, &a2);
	*applied = *applied || a2;
	return e;
}

static enum dun_err upsert_invoice_payment(struct dun_db *db, json_t *o, int64_t version,
					   bool *applied)
{
	const char *inv = jid(o, "invoice");
	json_t *pay = json_object_get(o, "payment");
	const char *pi = json_is_object(pay) ? jid(pay, "payment_intent") : "";
	*applied = false;
	if (!inv[0] || !pi[0])
		return DUN_OK;
	struct dun_stmt *st = dun_db_stmt(db, "UPDATE p_invoices SET payment_intent = ?2"
					      " WHERE id = ?1 AND payment_intent = ''");
	dun_stmt_bind_text(st, 1, inv);
	dun_stmt_bind_text(st, 2, pi);
	enum dun_err e = dun_stmt_done(st);
	if (e != DUN_OK)
		return e;
	st = dun_db_stmt(db,
			 "UPDATE p_attempts SET invoice_id = ?1, account_id ="
			 " COALESCE((SELECT account_id FROM p_invoices WHERE id = ?1), '')"
			 " WHERE payment_intent = ?2 AND payment_intent <> '' AND invoice_id = ''");
	dun_stmt_bind_text(st, 1, inv);
	dun_stmt_bind_text(st, 2, pi);
	e = dun_stmt_done(st);
	*applied = e == DUN_OK && dun_db_changes(db) > 0;
	return e;
}

enum dun_err dun_mirror_upsert(struct dun_db *db, json_t *obj, int64_t version, char *customer_out,
			       bool *applied, char *err, size_t err_size)
{
	bool dummy;
	if (!applied)
		applied = &dummy;
	*applied = false;
	if (customer_out)
		customer_out[0] = '\0';
	if (!json_is_object(obj)) {
		if (err && err_size)
			snprintf(err, err_size, "event data.object is not an object");
		return DUN_E_PARSE;
	}
	const char *type = jstr(obj, "object");
	const char *id = jstr(obj, "id");
	if (!dun_mirror_knows(type))
		return DUN_OK;
	if (!id[0] && strcmp(type, "invoice_payment") != 0) {
		fail(err, err_size, type, "(no id)");
		return DUN_E_PARSE;
	}
	const char *customer = !strcmp(type, "customer") ? id : jid(obj, "customer");
	if (customer_out)
		dun_strlcpy(customer_out, customer, DUN_ID_MAX);
	if (customer_out && !strcmp(type, "invoice_payment")) {
		/* An invoice payment names no customer: its invoice does. */
		struct dun_stmt *st =
		    dun_db_stmt(db, "SELECT customer_id FROM p_invoices WHERE id = ?1");
		dun_stmt_bind_text(st, 1, jid(obj, "invoice"));
		if (dun_stmt_row(st))
			dun_stmt_col_copy(st, 0, customer_out, DUN_ID_MAX);
		enum dun_err e = dun_stmt_err(st);
		dun_stmt_reset(st);
		if (e != DUN_OK)
			return e;
	}
	if (!strcmp(type, "customer"))
		return upsert_customer(db, obj, version, applied);
	if (!strcmp(type, "subscription"))
		return upsert_subscription(db, obj, version, applied);
	if (!strcmp(type, "invoice"))
		return upsert_invoice(db, obj, version, applied, err, err_size);
	if (!strcmp(type, "charge"))
		return upsert_charge(db, obj, version, applied);
	if (!strcmp(type, "payment_intent"))
		return upsert_payment_intent(db, obj, version, applied);
	return upsert_invoice_payment(db, obj, version, applied);
}
