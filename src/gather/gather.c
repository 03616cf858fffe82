/*
 * gather.c — GATHER for the SQLite store: one account's rows from the
 * engine tables, the local platform table, the invoice documents and the
 * provider mirror, folded into a struct dun_state (see gather.h).
 *
 * An account has one provider customer here (the first, by id, when the
 * mirror knows several); its subscriptions, invoices and payment attempts
 * are read with one query each, ordered by id, and attempts are attached to
 * their invoice by a merge walk.
 *
 * Invoices and attempts carry their customer's account (schema migration
 * 14 keeps the column by triggers; the drift scan relies on it too), and
 * their tables are clustered on it: the invoices are read as one range of
 * (account, customer) and the attempts as one range of the account, in
 * (invoice id, created, id) order, with no search of a secondary index per
 * row and no sort. Attempts of invoices the customer does not have (another
 * customer's, or none) fall between them in the walk and are passed over,
 * as the scan passes them over (gather/stream.c).
 */
#include "gather.h"
#include "core/text.h"
#include "util/mem.h"

#include <stdlib.h>
#include <string.h>

void dun_snapshot_init(struct dun_snapshot *snap)
{
	memset(snap, 0, sizeof *snap);
	dun_state_init(&snap->state);
}

void dun_snapshot_free(struct dun_snapshot *snap)
{
	free(snap->invoices);
	free(snap->attempts);
	free(snap->subs);
	free(snap->emails);
	memset(snap, 0, sizeof *snap);
}

#define GROW(ptr, cap, n)                                                          \
	do {                                                                       \
		if ((n) >= (cap)) {                                                \
			(cap) = (cap) ? (cap)*2 : 16;                              \
			(ptr) = dun_realloc((ptr), sizeof *(ptr) * (size_t)(cap)); \
		}                                                                  \
	} while (0)

static enum dun_err step_err(const struct dun_stmt *st, int rc)
{
	return rc == DUN_STEP_DONE ? DUN_OK : dun_stmt_err(st);
}

void dun_gather_split_covers(struct dun_invoice *inv, const char *list)
{
	inv->is_consolidated = true;
	inv->n_covers = 0;
	while (*list && inv->n_covers < DUN_COVERS_MAX) {
		const char *comma = strchr(list, ',');
		size_t n = comma ? (size_t)(comma - list) : strlen(list);
		while (n && *list == ' ') {
			list++;
			n--;
		}
		if (n && n < DUN_ID_MAX) {
			memcpy(inv->covers[inv->n_covers], list, n);
			inv->covers[inv->n_covers][n] = '\0';
			inv->n_covers++;
		}
		if (!comma)
			break;
		list = comma + 1;
	}
}

enum dun_err dun_gather(struct dun_db *db, const char *account_id, struct dun_snapshot *snap)
{
	struct dun_state *s = &snap->state;
	dun_state_init(s);
	snap->email[0] = snap->name[0] = '\0';
	dun_strlcpy(s->account_id, account_id, sizeof s->account_id);
	int rc;

	/*
	 * The reads that need only the account are bound first and sent
	 * together (one round trip on PostgreSQL, store/db.h), then stepped in
	 * turn; the subscriptions and invoices, which need its customer, are a
	 * second such group.
	 *
	 * The account's own rows, one of each table at most, in one read: the
	 * account, its local platform row (also what dun_platform_read_local()
	 * needs of it), its dunning row, its bad-debt episodes (counted), its
	 * rollout list row, whether it is marked incomplete, and its first
	 * customer (by id) with that customer's mirror row. One
	 * statement instead of three: on SQLite a statement's own cost (reset,
	 * bind, the program's start) was a fifth of an empty recompute.
	 */
	struct dun_stmt *st_account = dun_db_stmt(
	    db, "SELECT a.segment, a.bad_debt, a.no_successful_payment, a.kill_switch, a.email,"
		" a.name, p.account_id, p.banned, p.entitlement, p.resource_flags, p.placed_by,"
		" d.account_id, d.stage, d.since, d.episode, d.lifting_since, d.next_recheck_at,"
		" (SELECT COUNT(*) FROM bad_debt_episodes e WHERE e.account_id = a.id),"
		" (SELECT COUNT(*) FROM bad_debt_episodes e WHERE e.account_id = a.id"
		"  AND e.exited_at = 0),"
		" c.id, c.bad_debt, COALESCE(pc.meta_bad_debt, 0),"
		" COALESCE(pc.default_payment_method, ''), COALESCE(pc.email, ''),"
		" COALESCE(pc.name, ''),"
		" (SELECT r.list FROM rollout_list r WHERE r.account_id = a.id),"
		" EXISTS (SELECT 1 FROM incomplete_accounts m WHERE m.account_id = a.id)"
		" FROM accounts a LEFT JOIN platform p ON p.account_id = a.id"
		" LEFT JOIN dunning d ON d.account_id = a.id"
		" LEFT JOIN customers c ON c.id = (SELECT c1.id FROM customers c1"
		"  WHERE c1.account_id = a.id ORDER BY c1.id LIMIT 1)"
		" LEFT JOIN p_customers pc ON pc.id = c.id WHERE a.id = ?1");
	dun_stmt_bind_text(st_account, 1, account_id);
	/* Emails taken care of: sent, queued, being sent or given up (dead) —
	 * all but a `failed` row without its text (a legacy system gave back a
	 * claim it made before the engine queued the email): that one is
	 * planned, and so queued, again. */
	struct dun_stmt *st_emails =
	    dun_db_stmt(db, "SELECT key, created_at FROM emails WHERE account_id = ?1"
			    " AND (state <> 'failed' OR body <> '')");
	dun_stmt_bind_text(st_emails, 1, account_id);
	/* Attempts, ordered like the invoices, attached by a merge walk below. */
	struct dun_stmt *st_attempts =
	    dun_db_stmt(db, "SELECT invoice_id, id, created, status, payment_method, decline_code,"
			    " advice_code, network_advice_code FROM p_attempts"
			    " WHERE account_id = ?1 ORDER BY invoice_id, created, id");
	dun_stmt_bind_text(st_attempts, 1, account_id);
	struct dun_stmt *const by_account[] = {st_account, st_emails, st_attempts};
	enum dun_err e = dun_db_pipeline(db, by_account, 3);
	if (e != DUN_OK)
		return e;

	struct dun_stmt *st = st_account;
	rc = dun_stmt_step(st);
	if (rc != DUN_STEP_ROW) {
		dun_stmt_reset(st);
		return rc == DUN_STEP_DONE ? DUN_E_NOT_FOUND : dun_stmt_err(st);
	}
	dun_segment_parse(dun_stmt_col_text(st, 0), &s->segment);
	s->account_bad_debt = dun_stmt_col_int(st, 1);
	s->no_successful_payment = dun_stmt_col_int(st, 2);
	s->kill_switch = dun_stmt_col_int(st, 3);
	dun_stmt_col_copy(st, 4, snap->email, sizeof snap->email);
	dun_stmt_col_copy(st, 5, snap->name, sizeof snap->name);
	snap->local_placed_by[0] = '\0';
	snap->local_resource_flags = 0;
	if (!dun_stmt_col_is_null(st, 6)) {
		s->banned = dun_stmt_col_int(st, 7);
		dun_entitlement_parse(dun_stmt_col_text(st, 8), &s->entitlement);
		snap->local_resource_flags = dun_stmt_col_int64(st, 9);
		s->has_resource_flags = snap->local_resource_flags != 0;
		dun_stmt_col_copy(st, 10, snap->local_placed_by, sizeof snap->local_placed_by);
	}
	if (!dun_stmt_col_is_null(st, 11)) {
		dun_stage_parse(dun_stmt_col_text(st, 12), &s->stage);
		s->stage_since = dun_stmt_col_int64(st, 13);
		s->episode = dun_stmt_col_int64(st, 14);
		s->lifting_since = dun_stmt_col_int64(st, 15);
		s->next_recheck_at = dun_stmt_col_int64(st, 16);
	}
	dun_stmt_col_copy(st, 25, snap->rollout_list, sizeof snap->rollout_list);
	snap->incomplete_marked = dun_stmt_col_int(st, 26) != 0;
	s->bad_debt_episodes = dun_stmt_col_int64(st, 17);
	s->bad_debt_episode_open = dun_stmt_col_int64(st, 18) > 0;
	if (!dun_stmt_col_is_null(st, 19)) {
		s->has_customer = true;
		dun_stmt_col_copy(st, 19, s->customer_id, sizeof s->customer_id);
		s->customer_bad_debt = dun_stmt_col_int(st, 20);
		s->provider_meta_bad_debt = dun_stmt_col_int(st, 21);
		dun_stmt_col_copy(st, 22, s->default_payment_method,
				  sizeof s->default_payment_method);
		if (!snap->email[0])
			dun_stmt_col_copy(st, 23, snap->email, sizeof snap->email);
		if (!snap->name[0])
			dun_stmt_col_copy(st, 24, snap->name, sizeof snap->name);
	}
	dun_stmt_reset(st);

	int n = 0;
	st = st_emails;
	while ((rc = dun_stmt_step(st)) == DUN_STEP_ROW) {
		GROW(snap->emails, snap->emails_cap, n);
		dun_stmt_col_copy(st, 0, snap->emails[n].key, sizeof snap->emails[n].key);
		snap->emails[n].at = dun_stmt_col_int64(st, 1);
		n++;
	}
	dun_stmt_reset(st);
	if (rc != DUN_STEP_DONE)
		return step_err(st, rc);
	s->sent_emails = snap->emails;
	s->n_sent_emails = n;

	if (!s->has_customer)
		return DUN_OK;

	struct dun_stmt *st_subs = dun_db_stmt(
	    db, "SELECT id, status FROM p_subscriptions WHERE customer_id = ?1 ORDER BY id");
	dun_stmt_bind_text(st_subs, 1, s->customer_id);
	struct dun_stmt *st_invoices = dun_db_stmt(
	    db, "SELECT i.id, i.subscription_id, i.status, i.billing_reason, i.amount_due,"
		" i.amount_paid, i.amount_remaining, i.currency, i.attempt_count, i.created,"
		" i.paid_at, i.hosted_invoice_url, i.meta_bad_debt_amount,"
		" i.meta_bad_debt_paid, i.meta_bad_debt_invoices, d.closed,"
		" d.paylinks_enabled, i.next_payment_attempt FROM p_invoices i"
		" LEFT JOIN invoice_docs d ON d.invoice_id = i.id"
		" WHERE i.account_id = ?1 AND i.customer_id = ?2 ORDER BY i.id");
	dun_stmt_bind_text(st_invoices, 1, account_id);
	dun_stmt_bind_text(st_invoices, 2, s->customer_id);
	struct dun_stmt *const by_customer[] = {st_subs, st_invoices};
	e = dun_db_pipeline(db, by_customer, 2);
	if (e != DUN_OK)
		return e;

	n = 0;
	st = st_subs;
	while ((rc = dun_stmt_step(st)) == DUN_STEP_ROW) {
		GROW(snap->subs, snap->subs_cap, n);
		struct dun_subscription *sub = &snap->subs[n];
		dun_stmt_col_copy(st, 0, sub->id, sizeof sub->id);
		sub->status = DUN_SUB_ACTIVE;
		dun_sub_status_parse(dun_stmt_col_text(st, 1), &sub->status);
		n++;
	}
	dun_stmt_reset(st);
	if (rc != DUN_STEP_DONE)
		return step_err(st, rc);
	s->subscriptions = snap->subs;
	s->n_subscriptions = n;

	/*
	 * Only an invoice whose whole id fits in the state takes attempts: a
	 * kept prefix of a longer id must not match the attempts of another
	 * invoice that happens to be named by that prefix (the stream does the
	 * same, gather/stream.c).
	 */
	bool *attach = NULL;
	int attach_cap = 0;
	n = 0;
	st = st_invoices;
	while ((rc = dun_stmt_step(st)) == DUN_STEP_ROW) {
		GROW(snap->invoices, snap->invoices_cap, n);
		struct dun_invoice *inv = &snap->invoices[n];
		memset(inv, 0, sizeof *inv);
		GROW(attach, attach_cap, n);
		attach[n] = dun_stmt_col_bytes(st, 0) < DUN_ID_MAX;
		dun_stmt_col_copy(st, 0, inv->id, sizeof inv->id);
		dun_stmt_col_copy(st, 1, inv->subscription_id, sizeof inv->subscription_id);
		inv->status = DUN_INVOICE_OPEN;
		dun_invoice_status_parse(dun_stmt_col_text(st, 2), &inv->status);
		inv->billing_reason = dun_billing_reason_from(dun_stmt_col_text(st, 3));
		inv->amount_due_minor = dun_stmt_col_int64(st, 4);
		inv->amount_paid_minor = dun_stmt_col_int64(st, 5);
		inv->amount_remaining_minor = dun_stmt_col_int64(st, 6);
		dun_stmt_col_copy(st, 7, inv->currency, sizeof inv->currency);
		inv->attempt_count = dun_stmt_col_int(st, 8);
		inv->created_at = dun_stmt_col_int64(st, 9);
		inv->paid_at = dun_stmt_col_int64(st, 10);
		dun_stmt_col_copy(st, 11, inv->hosted_invoice_url, sizeof inv->hosted_invoice_url);
		inv->meta_has_bad_debt_amount = !dun_stmt_col_is_null(st, 12);
		inv->meta_bad_debt_amount_minor = dun_stmt_col_int64(st, 12);
		inv->meta_bad_debt_paid = dun_stmt_col_int(st, 13);
		if (!dun_stmt_col_is_null(st, 14))
			dun_gather_split_covers(inv, dun_stmt_col_text(st, 14));
		inv->has_doc = !dun_stmt_col_is_null(st, 15);
		inv->doc_closed = inv->has_doc && dun_stmt_col_int(st, 15);
		inv->doc_paylinks_enabled = !inv->has_doc || dun_stmt_col_int(st, 16);
		inv->next_payment_attempt_at = dun_stmt_col_int64(st, 17);
		n++;
	}
	dun_stmt_reset(st);
	if (rc != DUN_STEP_DONE) {
		free(attach);
		return step_err(st, rc);
	}
	s->invoices = snap->invoices;
	s->n_invoices = n;

	int na = 0, cur = 0;
	st = st_attempts;
	int *first = dun_calloc((size_t)(n ? n : 1), sizeof *first);
	int *count = dun_calloc((size_t)(n ? n : 1), sizeof *count);
	while ((rc = dun_stmt_step(st)) == DUN_STEP_ROW) {
		const char *inv_id = dun_stmt_col_text(st, 0);
		while (cur < n && strcmp(snap->invoices[cur].id, inv_id) < 0)
			cur++;
		if (cur >= n || !attach[cur] || strcmp(snap->invoices[cur].id, inv_id) != 0)
			continue;
		GROW(snap->attempts, snap->attempts_cap, na);
		struct dun_attempt *a = &snap->attempts[na];
		memset(a, 0, sizeof *a);
		dun_stmt_col_copy(st, 1, a->id, sizeof a->id);
		a->created_at = dun_stmt_col_int64(st, 2);
		a->status = DUN_ATTEMPT_FAILED;
		dun_attempt_status_parse(dun_stmt_col_text(st, 3), &a->status);
		dun_stmt_col_copy(st, 4, a->payment_method, sizeof a->payment_method);
		dun_stmt_col_copy(st, 5, a->decline_code, sizeof a->decline_code);
		dun_stmt_col_copy(st, 6, a->advice_code, sizeof a->advice_code);
		dun_stmt_col_copy(st, 7, a->network_advice_code, sizeof a->network_advice_code);
		if (!count[cur])
			first[cur] = na;
		count[cur]++;
		na++;
	}
	dun_stmt_reset(st);
	/* Pointers are set after the array stopped moving. */
	for (int i = 0; i < n; i++) {
		snap->invoices[i].attempts = count[i] ? &snap->attempts[first[i]] : NULL;
		snap->invoices[i].n_attempts = count[i];
	}
	free(first);
	free(count);
	free(attach);
	return step_err(st, rc);
}
