/*
 * stream.c — the streaming GATHER of the drift scan (see stream.h).
 *
 * Eleven ordered reads, each a single pass over its table (or a covering
 * index) in account id order, none of them joined or sorted (the keys of
 * schema migrations 14, 19 and 20; bench/test_stream_equiv.c checks the
 * plans):
 *
 *   accounts        one row per account: drives the walk
 *   customers       by (account, customer id); the first row of an account
 *                   is its customer, as in dun_gather()
 *   provider        p_customers by (linked account, customer id): merged
 *   customers       with the account's customer by its whole id
 *   platform,       at most one row per account
 *   dunning
 *   episodes        grouped per account (count, open)
 *   emails          the ones taken care of (as gather.c), in queue order
 *   subscriptions   by (account, customer id, id): those of the account's
 *                   customer
 *   invoices        by (account, customer id, invoice id)
 *   documents       by (account, invoice id): merged with the invoices of
 *                   the account's customer by invoice id
 *   attempts        by (account, invoice id, created, id): merged with the
 *                   invoices of the account's customer by invoice id, as
 *                   dun_gather() merges them (the same order, within an
 *                   invoice, that it attaches them in)
 *
 * For each account row, every other read is advanced past rows of smaller
 * account ids (rows whose account does not exist are skipped) and consumes
 * the rows equal to it; rows of other customers than the account's first
 * are passed over. The decoding of every column mirrors dun_gather(),
 * accessor for accessor (dun_stmt_col_int where it truncates, the same
 * defaults for unknown names), so the two agree on every field.
 *
 * Every ORDER BY is a prefix of the key or index the read walks, so no
 * read needs a sort.
 */
#include "stream.h"
#include "core/text.h"
#include "util/mem.h"

#include <stddef.h>
#include <stdlib.h>
#include <string.h>

static const char *const sql[DUN_STREAM__COUNT] = {
    [DUN_STREAM_ACCOUNTS] = "SELECT id, segment, bad_debt, no_successful_payment, kill_switch,"
			    " email, name FROM accounts WHERE id > ?1 AND id <= ?2 ORDER BY id",
    /*
     * The account's customer is its first customers row; the provider's
     * customer comes from a read of its own, p_customers walked by the
     * account its customers row links it to (schema migration 20) and
     * merged by customer id (read_provider_customer): no search per account.
     */
    [DUN_STREAM_CUSTOMERS] = "SELECT account_id, id, bad_debt FROM customers"
			     " WHERE account_id > ?1 AND account_id <= ?2 ORDER BY account_id, id",
    [DUN_STREAM_PROVIDER_CUSTOMERS] =
	"SELECT linked_account_id, id, meta_bad_debt, default_payment_method, email, name"
	" FROM p_customers WHERE linked_account_id > ?1 AND linked_account_id <= ?2"
	" ORDER BY linked_account_id, id",
    [DUN_STREAM_PLATFORM] = "SELECT account_id, banned, entitlement, resource_flags FROM platform"
			    " WHERE account_id > ?1 AND account_id <= ?2 ORDER BY account_id",
    [DUN_STREAM_DUNNING] = "SELECT account_id, stage, since, episode, lifting_since,"
			   " next_recheck_at FROM dunning WHERE account_id > ?1"
			   " AND account_id <= ?2 ORDER BY account_id",
    [DUN_STREAM_EPISODES] =
	"SELECT account_id, COUNT(*), COALESCE(SUM(CASE WHEN exited_at = 0 THEN 1 ELSE 0 END), 0)"
	" FROM bad_debt_episodes WHERE account_id > ?1 AND account_id <= ?2 GROUP BY account_id"
	" ORDER BY account_id",
    [DUN_STREAM_EMAILS] = "SELECT account_id, key, created_at FROM emails WHERE account_id > ?1"
			  " AND account_id <= ?2 AND (state <> 'failed' OR body <> '')"
			  " ORDER BY account_id, id",
    /* Subscriptions carry their customer's account (schema migration 20). */
    [DUN_STREAM_SUBSCRIPTIONS] = "SELECT account_id, customer_id, id, status FROM p_subscriptions"
				 " WHERE account_id > ?1 AND account_id <= ?2"
				 " ORDER BY account_id, customer_id, id",
    /*
     * Invoices and attempts carry their customer's account (schema
     * migration 14) and are stored in this order: no join with customers.
     * The attempts are a read of their own, merged with the invoices of
     * the account's customer in the stream (read_attempts): no search of
     * p_attempts per invoice.
     */
    [DUN_STREAM_INVOICES] =
	"SELECT i.account_id, i.customer_id, i.id, i.subscription_id, i.status,"
	" i.billing_reason, i.amount_due, i.amount_paid, i.amount_remaining, i.currency,"
	" i.attempt_count, i.created, i.paid_at, i.hosted_invoice_url, i.meta_bad_debt_amount,"
	" i.meta_bad_debt_paid, i.meta_bad_debt_invoices, i.next_payment_attempt FROM p_invoices i"
	" WHERE i.account_id > ?1 AND i.account_id <= ?2"
	" ORDER BY i.account_id, i.customer_id, i.id",
    /* Documents carry their invoice's account too (schema migration 19). */
    [DUN_STREAM_DOCS] = "SELECT account_id, invoice_id, closed, paylinks_enabled FROM invoice_docs"
			" WHERE account_id > ?1 AND account_id <= ?2"
			" ORDER BY account_id, invoice_id",
    [DUN_STREAM_ATTEMPTS] =
	"SELECT account_id, invoice_id, id, created, status, payment_method, decline_code,"
	" advice_code, network_advice_code FROM p_attempts"
	" WHERE account_id > ?1 AND account_id <= ?2"
	" ORDER BY account_id, invoice_id, created, id",
};

/*
 * The last account of the range that starts after ?1: the stream reads at
 * most DUN_STREAM_RANGE accounts per execution of its queries. SQLite steps
 * a query lazily and would not need it; PostgreSQL's driver fetches a
 * query's whole result when it runs, so without a bound every window would
 * fetch the rest of every table.
 */
static const char range_sql[] = "SELECT MAX(id) FROM (SELECT id FROM accounts WHERE id > ?1"
				" ORDER BY id LIMIT ?2) r";

/* Columns of DUN_STREAM_INVOICES. */
enum {
	INV_CUSTOMER = 1,
	INV_ID,
	INV_SUB,
	INV_STATUS,
	INV_REASON,
	INV_DUE,
	INV_PAID,
	INV_REMAINING,
	INV_CURRENCY,
	INV_ATTEMPT_COUNT,
	INV_CREATED,
	INV_PAID_AT,
	INV_URL,
	INV_BD_AMOUNT,
	INV_BD_PAID,
	INV_COVERS,
	INV_NEXT_ATTEMPT,
};

/* Columns of DUN_STREAM_DOCS (the invoice's is the one merge_invoice reads). */
enum {
	DOC_INVOICE = 1,
	DOC_CLOSED,
	DOC_PAYLINKS,
};

/* Columns of DUN_STREAM_ATTEMPTS (the invoice's too). */
enum {
	ATT_INVOICE = 1,
	ATT_ID,
	ATT_CREATED,
	ATT_STATUS,
	ATT_PM,
	ATT_DECLINE,
	ATT_ADVICE,
	ATT_NETWORK,
};

const char *dun_stream_sql(enum dun_stream_query q)
{
	return sql[q];
}

const char *dun_stream_range_sql(void)
{
	return range_sql;
}

enum dun_err dun_stream_init(struct dun_stream *s, struct dun_db *db, char *err, size_t err_size)
{
	memset(s, 0, sizeof *s);
	s->db = db;
	dun_db_set_cache_kb(db, DUN_STREAM_CACHE_KB);
	for (int q = 0; q <= DUN_STREAM__COUNT; q++) {
		const char *text = q < DUN_STREAM__COUNT ? sql[q] : range_sql;
		int rc = dun_db_prepare(db, text, q < DUN_STREAM__COUNT ? &s->st[q] : &s->range);
		if (rc != DUN_OK) {
			if (err && err_size)
				dun_strlcpy(err, dun_db_errmsg(db), err_size);
			dun_stream_free(s);
			return DUN_E_STORE;
		}
	}
	return DUN_OK;
}

void dun_stream_free(struct dun_stream *s)
{
	if (s->db)
		dun_db_set_cache_kb(s->db, DUN_DB_CACHE_KB);
	for (int q = 0; q < DUN_STREAM__COUNT; q++)
		dun_stmt_finalize(s->st[q]);
	dun_stmt_finalize(s->range);
	free(s->last);
	free(s->hi);
	free(s->inv_first);
	free(s->inv_attach);
	free(s->inv_id);
	free(s->ids);
	free(s->customer);
	memset(s, 0, sizeof *s);
}

void dun_stream_pause(struct dun_stream *s)
{
	for (int q = 0; q < DUN_STREAM__COUNT; q++)
		dun_stmt_reset(s->st[q]);
	s->open = false;
}

#define GROW(ptr, cap, n)                                                          \
	do {                                                                       \
		if ((n) >= (cap)) {                                                \
			(cap) = (cap) ? (cap)*2 : 16;                              \
			(ptr) = dun_realloc((ptr), sizeof *(ptr) * (size_t)(cap)); \
		}                                                                  \
	} while (0)

static enum dun_err step(struct dun_stream *s, int q)
{
	int rc = dun_stmt_step(s->st[q]);
	s->key[q] = NULL;
	if (rc == DUN_STEP_ROW) {
		const char *key = dun_stmt_col_text(s->st[q], 0);
		s->key[q] = key ? key : "";
	}
	return rc == DUN_STEP_ROW || rc == DUN_STEP_DONE ? DUN_OK : dun_stmt_err(s->st[q]);
}

/*
 * Open the reads over the next range: the accounts after the last one
 * returned, up to DUN_STREAM_RANGE of them. s->done when none is left.
 */
static enum dun_err open_window(struct dun_stream *s)
{
	dun_stmt_reset(s->range);
	dun_stmt_bind_text_copy(s->range, 1, s->last ? s->last : "");
	dun_stmt_bind_int64(s->range, 2, DUN_STREAM_RANGE);
	int rc = dun_stmt_step(s->range);
	if (rc != DUN_STEP_ROW) {
		enum dun_err e = dun_stmt_err(s->range);
		dun_stmt_reset(s->range);
		return e != DUN_OK ? e : DUN_E_STORE;
	}
	s->done = dun_stmt_col_is_null(s->range, 0);
	if (!s->done) {
		const char *hi = dun_stmt_col_text(s->range, 0);
		size_t n = strlen(hi) + 1;
		if (n > s->hi_cap) {
			s->hi_cap = n < 64 ? 64 : n * 2;
			s->hi = dun_realloc(s->hi, s->hi_cap);
		}
		memcpy(s->hi, hi, n);
	}
	dun_stmt_reset(s->range);
	for (int q = 0; q < DUN_STREAM__COUNT; q++) {
		dun_stmt_reset(s->st[q]);
		s->key[q] = NULL;
		if (s->done)
			continue;
		dun_stmt_bind_text_copy(s->st[q], 1, s->last ? s->last : "");
		dun_stmt_bind_text_copy(s->st[q], 2, s->hi);
		enum dun_err e = step(s, q);
		if (e != DUN_OK)
			return e;
	}
	s->open = true;
	return DUN_OK;
}

/*
 * Advance read q past the rows of accounts before id; *at tells whether its
 * current row belongs to id.
 */
static enum dun_err seek(struct dun_stream *s, int q, const char *id, bool *at)
{
	*at = false;
	while (s->key[q]) {
		int c = strcmp(s->key[q], id);
		if (c >= 0) {
			*at = c == 0;
			return DUN_OK;
		}
		enum dun_err e = step(s, q);
		if (e != DUN_OK)
			return e;
	}
	return DUN_OK;
}

/* Whether read q's current row still belongs to id. */
static bool still(const struct dun_stream *s, int q, const char *id)
{
	return s->key[q] && strcmp(s->key[q], id) == 0;
}

/* Whether read q's current row is of the account's customer (column 1). */
static bool of_customer(const struct dun_stream *s, int q, const struct dun_state *st)
{
	return st->has_customer && strcmp(dun_stmt_col_text(s->st[q], 1), st->customer_id) == 0;
}

static void remember_last(struct dun_stream *s, const char *id)
{
	size_t n = strlen(id) + 1;
	if (n > s->last_cap) {
		s->last_cap = n < 64 ? 64 : n * 2;
		s->last = dun_realloc(s->last, s->last_cap);
	}
	memcpy(s->last, id, n);
}

static void read_account(struct dun_stream *s, struct dun_snapshot *snap)
{
	struct dun_stmt *st = s->st[DUN_STREAM_ACCOUNTS];
	struct dun_state *state = &snap->state;
	dun_state_init(state);
	snap->email[0] = snap->name[0] = '\0';
	dun_strlcpy(state->account_id, s->last, sizeof state->account_id);
	dun_segment_parse(dun_stmt_col_text(st, 1), &state->segment);
	state->account_bad_debt = dun_stmt_col_int(st, 2);
	state->no_successful_payment = dun_stmt_col_int(st, 3);
	state->kill_switch = dun_stmt_col_int(st, 4);
	dun_stmt_col_copy(st, 5, snap->email, sizeof snap->email);
	dun_stmt_col_copy(st, 6, snap->name, sizeof snap->name);
}

static enum dun_err read_customer(struct dun_stream *s, struct dun_snapshot *snap)
{
	const int q = DUN_STREAM_CUSTOMERS;
	struct dun_state *state = &snap->state;
	bool at;
	enum dun_err e = seek(s, q, s->last, &at);
	if (e != DUN_OK || !at)
		return e;
	struct dun_stmt *st = s->st[q];
	state->has_customer = true;
	dun_stmt_col_copy(st, 1, state->customer_id, sizeof state->customer_id);
	/* The whole id, for the provider's customer (dun_gather() joins by it). */
	const char *id = dun_stmt_col_text(st, 1);
	size_t n = (id ? strlen(id) : 0) + 1;
	if (n > s->customer_cap) {
		s->customer_cap = n < 64 ? 64 : n * 2;
		s->customer = dun_realloc(s->customer, s->customer_cap);
	}
	memcpy(s->customer, id ? id : "", n);
	state->customer_bad_debt = dun_stmt_col_int(st, 2);
	/* Only the first customer (by id) counts; pass over the others. */
	while (e == DUN_OK && still(s, q, s->last))
		e = step(s, q);
	return e;
}

/*
 * The provider's customer of the account's customer, among the p_customers
 * rows linked to the account (by id): what dun_gather() joins, with the
 * same defaults (0 and '') when there is none. The others are passed over.
 */
static enum dun_err read_provider_customer(struct dun_stream *s, struct dun_snapshot *snap)
{
	const int q = DUN_STREAM_PROVIDER_CUSTOMERS;
	struct dun_state *state = &snap->state;
	bool at;
	enum dun_err e = seek(s, q, s->last, &at);
	bool found = !state->has_customer;
	for (; e == DUN_OK && at; at = still(s, q, s->last)) {
		struct dun_stmt *st = s->st[q];
		if (!found) {
			const char *id = dun_stmt_col_text(st, 1);
			int c = strcmp(id ? id : "", s->customer);
			if (c == 0) {
				state->provider_meta_bad_debt = dun_stmt_col_int(st, 2);
				dun_stmt_col_copy(st, 3, state->default_payment_method,
						  sizeof state->default_payment_method);
				if (!snap->email[0])
					dun_stmt_col_copy(st, 4, snap->email, sizeof snap->email);
				if (!snap->name[0])
					dun_stmt_col_copy(st, 5, snap->name, sizeof snap->name);
			}
			found = c >= 0;
		}
		e = step(s, q);
	}
	return e;
}

static enum dun_err read_platform(struct dun_stream *s, struct dun_state *state)
{
	const int q = DUN_STREAM_PLATFORM;
	bool at;
	enum dun_err e = seek(s, q, s->last, &at);
	if (e != DUN_OK || !at)
		return e;
	struct dun_stmt *st = s->st[q];
	state->banned = dun_stmt_col_int(st, 1);
	dun_entitlement_parse(dun_stmt_col_text(st, 2), &state->entitlement);
	state->has_resource_flags = dun_stmt_col_int64(st, 3) != 0;
	return step(s, q);
}

static enum dun_err read_dunning(struct dun_stream *s, struct dun_state *state)
{
	const int q = DUN_STREAM_DUNNING;
	bool at;
	enum dun_err e = seek(s, q, s->last, &at);
	if (e != DUN_OK || !at)
		return e;
	struct dun_stmt *st = s->st[q];
	dun_stage_parse(dun_stmt_col_text(st, 1), &state->stage);
	state->stage_since = dun_stmt_col_int64(st, 2);
	state->episode = dun_stmt_col_int64(st, 3);
	state->lifting_since = dun_stmt_col_int64(st, 4);
	state->next_recheck_at = dun_stmt_col_int64(st, 5);
	return step(s, q);
}

static enum dun_err read_episodes(struct dun_stream *s, struct dun_state *state)
{
	const int q = DUN_STREAM_EPISODES;
	bool at;
	enum dun_err e = seek(s, q, s->last, &at);
	if (e != DUN_OK || !at)
		return e;
	struct dun_stmt *st = s->st[q];
	state->bad_debt_episodes = dun_stmt_col_int64(st, 1);
	state->bad_debt_episode_open = dun_stmt_col_int64(st, 2) > 0;
	return step(s, q);
}

static enum dun_err read_emails(struct dun_stream *s, struct dun_snapshot *snap)
{
	const int q = DUN_STREAM_EMAILS;
	int n = 0;
	bool at;
	enum dun_err e = seek(s, q, s->last, &at);
	for (; e == DUN_OK && at; at = still(s, q, s->last)) {
		GROW(snap->emails, snap->emails_cap, n);
		dun_stmt_col_copy(s->st[q], 1, snap->emails[n].key, sizeof snap->emails[n].key);
		snap->emails[n].at = dun_stmt_col_int64(s->st[q], 2);
		n++;
		e = step(s, q);
	}
	snap->state.sent_emails = snap->emails;
	snap->state.n_sent_emails = n;
	return e;
}

static enum dun_err read_subscriptions(struct dun_stream *s, struct dun_snapshot *snap)
{
	const int q = DUN_STREAM_SUBSCRIPTIONS;
	struct dun_state *state = &snap->state;
	int n = 0;
	bool at;
	enum dun_err e = seek(s, q, s->last, &at);
	for (; e == DUN_OK && at; at = still(s, q, s->last)) {
		struct dun_stmt *st = s->st[q];
		if (of_customer(s, q, state)) {
			GROW(snap->subs, snap->subs_cap, n);
			struct dun_subscription *sub = &snap->subs[n];
			dun_stmt_col_copy(st, 2, sub->id, sizeof sub->id);
			sub->status = DUN_SUB_ACTIVE;
			dun_sub_status_parse(dun_stmt_col_text(st, 3), &sub->status);
			n++;
		}
		e = step(s, q);
	}
	if (state->has_customer) {
		state->subscriptions = snap->subs;
		state->n_subscriptions = n;
	}
	return e;
}

/* Zero an invoice but its covers: only the first n_covers of them are ever read. */
static void invoice_clear(struct dun_invoice *inv)
{
	const size_t covers = offsetof(struct dun_invoice, covers);
	const size_t after = covers + sizeof inv->covers;
	memset(inv, 0, covers);
	memset((char *)inv + after, 0, sizeof *inv - after);
}

/* The invoice's id is read once by read_invoices (id, len): as dun_stmt_col_copy would. */
static void read_invoice_row(struct dun_stmt *st, const char *id, size_t len,
			     struct dun_invoice *inv)
{
	invoice_clear(inv);
	size_t kept = len < sizeof inv->id ? len : sizeof inv->id - 1;
	memcpy(inv->id, id, kept);
	inv->id[kept] = '\0';
	dun_stmt_col_copy(st, INV_SUB, inv->subscription_id, sizeof inv->subscription_id);
	inv->status = DUN_INVOICE_OPEN;
	dun_invoice_status_parse(dun_stmt_col_text(st, INV_STATUS), &inv->status);
	inv->billing_reason = dun_billing_reason_from(dun_stmt_col_text(st, INV_REASON));
	inv->amount_due_minor = dun_stmt_col_int64(st, INV_DUE);
	inv->amount_paid_minor = dun_stmt_col_int64(st, INV_PAID);
	inv->amount_remaining_minor = dun_stmt_col_int64(st, INV_REMAINING);
	dun_stmt_col_copy(st, INV_CURRENCY, inv->currency, sizeof inv->currency);
	inv->attempt_count = dun_stmt_col_int(st, INV_ATTEMPT_COUNT);
	inv->next_payment_attempt_at = dun_stmt_col_int64(st, INV_NEXT_ATTEMPT);
	inv->created_at = dun_stmt_col_int64(st, INV_CREATED);
	inv->paid_at = dun_stmt_col_int64(st, INV_PAID_AT);
	dun_stmt_col_copy(st, INV_URL, inv->hosted_invoice_url, sizeof inv->hosted_invoice_url);
	inv->meta_has_bad_debt_amount = !dun_stmt_col_is_null(st, INV_BD_AMOUNT);
	inv->meta_bad_debt_amount_minor = dun_stmt_col_int64(st, INV_BD_AMOUNT);
	inv->meta_bad_debt_paid = dun_stmt_col_int(st, INV_BD_PAID);
	if (!dun_stmt_col_is_null(st, INV_COVERS))
		dun_gather_split_covers(inv, dun_stmt_col_text(st, INV_COVERS));
	/* No document until read_docs finds one. */
	inv->doc_paylinks_enabled = true;
}

static void read_attempt_row(struct dun_stmt *st, struct dun_attempt *a)
{
	memset(a, 0, sizeof *a);
	dun_stmt_col_copy(st, ATT_ID, a->id, sizeof a->id);
	a->created_at = dun_stmt_col_int64(st, ATT_CREATED);
	a->status = DUN_ATTEMPT_FAILED;
	dun_attempt_status_parse(dun_stmt_col_text(st, ATT_STATUS), &a->status);
	dun_stmt_col_copy(st, ATT_PM, a->payment_method, sizeof a->payment_method);
	dun_stmt_col_copy(st, ATT_DECLINE, a->decline_code, sizeof a->decline_code);
	dun_stmt_col_copy(st, ATT_ADVICE, a->advice_code, sizeof a->advice_code);
	dun_stmt_col_copy(st, ATT_NETWORK, a->network_advice_code, sizeof a->network_advice_code);
}

/*
 * The invoices of the account's customer, one row each, in id order. Which
 * of them may take attempts is kept in s->inv_attach: dun_gather() matches
 * attempts to the invoice id it kept, so an id too long to keep gets none
 * there; nor here.
 */
static enum dun_err read_invoices(struct dun_stream *s, struct dun_snapshot *snap)
{
	const int q = DUN_STREAM_INVOICES;
	struct dun_state *state = &snap->state;
	int n = 0;
	size_t ids = 0;
	bool at;
	enum dun_err e = seek(s, q, s->last, &at);
	for (; e == DUN_OK && at; at = still(s, q, s->last)) {
		struct dun_stmt *st = s->st[q];
		if (of_customer(s, q, state)) {
			GROW(snap->invoices, snap->invoices_cap, n);
			GROW(s->inv_attach, s->inv_attach_cap, n);
			GROW(s->inv_first, s->inv_first_cap, n);
			GROW(s->inv_id, s->inv_id_cap, n);
			const char *id = dun_stmt_col_text(st, INV_ID);
			size_t len = id ? (size_t)dun_stmt_col_bytes(st, INV_ID) : 0;
			if (!id)
				id = "";
			read_invoice_row(st, id, len, &snap->invoices[n]);
			s->inv_attach[n] = len < DUN_ID_MAX;
			if (ids + len + 1 > s->ids_cap) {
				s->ids_cap = (ids + len + 1) * 2;
				s->ids = dun_realloc(s->ids, s->ids_cap);
			}
			memcpy(s->ids + ids, id, len);
			s->ids[ids + len] = '\0';
			s->inv_id[n] = ids;
			ids += len + 1;
			n++;
		}
		e = step(s, q);
	}
	if (e != DUN_OK || !state->has_customer)
		return e;
	state->invoices = snap->invoices;
	state->n_invoices = n;
	return DUN_OK;
}

/*
 * The merge of a read ordered by invoice id (column 1) with the account's
 * invoices (read_invoices, by whole id): advance *cur past the invoices
 * before the current row's, and return the index of the invoice it belongs
 * to, or -1 when the account has no such invoice (the row falls between
 * two of them, or after the last).
 */
static int merge_invoice(const struct dun_stream *s, int q, int n, int *cur)
{
	const char *inv_id = dun_stmt_col_text(s->st[q], 1);
	if (!inv_id)
		inv_id = "";
	int c = 0;
	while (*cur < n && (c = strcmp(s->ids + s->inv_id[*cur], inv_id)) < 0)
		(*cur)++;
	return *cur < n && c == 0 ? *cur : -1;
}

/*
 * The account's invoice documents, by invoice id, merged with its
 * customer's invoices (by id) as dun_gather() joins them: by the whole
 * invoice id. Documents of other invoices are passed over.
 */
static enum dun_err read_docs(struct dun_stream *s, struct dun_snapshot *snap)
{
	const int q = DUN_STREAM_DOCS;
	struct dun_state *state = &snap->state;
	const int n = state->has_customer ? state->n_invoices : 0;
	int cur = 0;
	bool at;
	enum dun_err e = seek(s, q, s->last, &at);
	for (; e == DUN_OK && at; at = still(s, q, s->last)) {
		struct dun_stmt *st = s->st[q];
		int i = cur < n ? merge_invoice(s, q, n, &cur) : -1;
		if (i >= 0) {
			struct dun_invoice *inv = &snap->invoices[i];
			inv->has_doc = true;
			inv->doc_closed = dun_stmt_col_int(st, DOC_CLOSED);
			inv->doc_paylinks_enabled = dun_stmt_col_int(st, DOC_PAYLINKS);
		}
		e = step(s, q);
	}
	return e;
}

/*
 * The account's attempts, by (invoice id, created, id), merged with its
 * customer's invoices (read_invoices, by id) as dun_gather() merges them:
 * attempts of another customer's invoices, or of no invoice the account has,
 * fall between them and are passed over. Each invoice's attempts end up
 * adjacent, in (created, id) order.
 */
static enum dun_err read_attempts(struct dun_stream *s, struct dun_snapshot *snap)
{
	const int q = DUN_STREAM_ATTEMPTS;
	struct dun_state *state = &snap->state;
	const int n = state->has_customer ? state->n_invoices : 0;
	int cur = 0, na = 0;
	bool at;
	enum dun_err e = seek(s, q, s->last, &at);
	for (; e == DUN_OK && at; at = still(s, q, s->last)) {
		int i = cur < n ? merge_invoice(s, q, n, &cur) : -1;
		if (i >= 0 && s->inv_attach[i]) {
			struct dun_invoice *inv = &snap->invoices[i];
			GROW(snap->attempts, snap->attempts_cap, na);
			read_attempt_row(s->st[q], &snap->attempts[na]);
			if (!inv->n_attempts)
				s->inv_first[i] = na;
			inv->n_attempts++;
			na++;
		}
		e = step(s, q);
	}
	if (e != DUN_OK)
		return e;
	/* Pointers are set once the array stopped moving. */
	for (int i = 0; i < n; i++) {
		struct dun_invoice *inv = &snap->invoices[i];
		inv->attempts = inv->n_attempts ? &snap->attempts[s->inv_first[i]] : NULL;
	}
	return DUN_OK;
}

enum dun_err dun_stream_next(struct dun_stream *s, struct dun_snapshot *snap, bool *got)
{
	*got = false;
	enum dun_err e = DUN_OK;
	for (;;) {
		if (!s->open && (e = open_window(s)) != DUN_OK)
			return e;
		if (s->done)
			return DUN_OK;
		if (s->key[DUN_STREAM_ACCOUNTS])
			break;
		/* This range is read: the next one starts after its last account. */
		s->open = false;
	}
	remember_last(s, s->key[DUN_STREAM_ACCOUNTS]);
	read_account(s, snap);
	struct dun_state *state = &snap->state;
	if ((e = read_customer(s, snap)) != DUN_OK ||
	    (e = read_provider_customer(s, snap)) != DUN_OK ||
	    (e = read_platform(s, state)) != DUN_OK || (e = read_dunning(s, state)) != DUN_OK ||
	    (e = read_episodes(s, state)) != DUN_OK || (e = read_emails(s, snap)) != DUN_OK ||
	    (e = read_subscriptions(s, snap)) != DUN_OK || (e = read_invoices(s, snap)) != DUN_OK ||
	    (e = read_docs(s, snap)) != DUN_OK || (e = read_attempts(s, snap)) != DUN_OK)
		return e;
	if ((e = step(s, DUN_STREAM_ACCOUNTS)) != DUN_OK)
		return e;
	*got = true;
	return DUN_OK;
}
