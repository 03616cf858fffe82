/*
 * shadow.c — the shadow view of one account for observe mode (see
 * shadow.h). It runs after GATHER (or the streaming GATHER of the drift
 * scan) and before EVALUATE, on the snapshot those built.
 */
#include "shadow.h"
#include "util/mem.h"

#include <string.h>

static enum dun_err read_dunning(struct dun_db *db, struct dun_state *s)
{
	/* No row: the engine has not acted on this account in its shadow yet. */
	s->account_bad_debt = false;
	s->customer_bad_debt = false;
	s->provider_meta_bad_debt = false;
	s->banned = false;
	s->entitlement = DUN_ENTITLEMENT_FULL;
	s->no_successful_payment = false;
	s->stage = DUN_STAGE_NONE;
	s->stage_since = 0;
	s->episode = 0;
	s->lifting_since = 0;
	s->next_recheck_at = 0;
	s->bad_debt_episodes = 0;
	s->bad_debt_episode_open = false;
	struct dun_stmt *st = dun_db_stmt(
	    db, "SELECT stage, since, episode, lifting_since, next_recheck_at, bad_debt_episodes,"
		" bad_debt_episode_open, account_bad_debt, customer_bad_debt,"
		" provider_meta_bad_debt, banned, entitlement, flags_removed,"
		" no_successful_payment FROM shadow_dunning WHERE account_id = ?1");
	dun_stmt_bind_text(st, 1, s->account_id);
	int rc = dun_stmt_step(st);
	if (rc == DUN_STEP_ROW) {
		dun_stage_parse(dun_stmt_col_text(st, 0), &s->stage);
		s->stage_since = dun_stmt_col_int64(st, 1);
		s->episode = dun_stmt_col_int64(st, 2);
		s->lifting_since = dun_stmt_col_int64(st, 3);
		s->next_recheck_at = dun_stmt_col_int64(st, 4);
		s->bad_debt_episodes = dun_stmt_col_int64(st, 5);
		s->bad_debt_episode_open = dun_stmt_col_int(st, 6) != 0;
		s->account_bad_debt = dun_stmt_col_int(st, 7) != 0;
		s->customer_bad_debt = dun_stmt_col_int(st, 8) != 0;
		s->provider_meta_bad_debt = dun_stmt_col_int(st, 9) != 0;
		s->banned = dun_stmt_col_int(st, 10) != 0;
		dun_entitlement_parse(dun_stmt_col_text(st, 11), &s->entitlement);
		if (dun_stmt_col_int(st, 12))
			s->has_resource_flags = false;
		s->no_successful_payment = dun_stmt_col_int(st, 13) != 0;
	}
	dun_stmt_reset(st);
	return rc == DUN_STEP_ROW || rc == DUN_STEP_DONE ? DUN_OK : dun_stmt_err(st);
}

static enum dun_err read_invoices(struct dun_db *db, struct dun_snapshot *snap)
{
	struct dun_state *s = &snap->state;
	for (int i = 0; i < s->n_invoices; i++) {
		struct dun_invoice *inv = &snap->invoices[i];
		bool uncollectible = false, has_amount = false, paid = false, closed = false,
		     disabled = false;
		int64_t amount = 0;
		struct dun_stmt *st = dun_db_stmt(
		    db,
		    "SELECT uncollectible, has_bad_debt_amount, bad_debt_amount, bad_debt_paid,"
		    " doc_closed, paylinks_disabled FROM shadow_invoices WHERE invoice_id = ?1");
		dun_stmt_bind_text(st, 1, inv->id);
		int rc = dun_stmt_step(st);
		if (rc == DUN_STEP_ROW) {
			uncollectible = dun_stmt_col_int(st, 0) != 0;
			has_amount = dun_stmt_col_int(st, 1) != 0;
			amount = dun_stmt_col_int64(st, 2);
			paid = dun_stmt_col_int(st, 3) != 0;
			closed = dun_stmt_col_int(st, 4) != 0;
			disabled = dun_stmt_col_int(st, 5) != 0;
		}
		dun_stmt_reset(st);
		if (rc != DUN_STEP_ROW && rc != DUN_STEP_DONE)
			return dun_stmt_err(st);
		/* Marked uncollectible by someone else (the legacy system, or the
		 * provider's own dunning): in the shadow it is still open. */
		if (inv->status == DUN_INVOICE_UNCOLLECTIBLE && !uncollectible)
			inv->status = DUN_INVOICE_OPEN;
		else if (inv->status == DUN_INVOICE_OPEN && uncollectible)
			inv->status = DUN_INVOICE_UNCOLLECTIBLE;
		inv->meta_has_bad_debt_amount = has_amount;
		inv->meta_bad_debt_amount_minor = amount;
		inv->meta_bad_debt_paid = paid;
		if (inv->has_doc) {
			inv->doc_closed = closed;
			inv->doc_paylinks_enabled = !disabled;
		}
	}
	return DUN_OK;
}

static enum dun_err read_subscriptions(struct dun_db *db, struct dun_snapshot *snap)
{
	struct dun_state *s = &snap->state;
	for (int i = 0; i < s->n_subscriptions; i++) {
		struct dun_subscription *sub = &snap->subs[i];
		struct dun_stmt *st = dun_db_stmt(db, "SELECT canceled FROM shadow_subscriptions"
						      " WHERE subscription_id = ?1");
		dun_stmt_bind_text(st, 1, sub->id);
		int rc = dun_stmt_step(st);
		bool canceled = rc == DUN_STEP_ROW && dun_stmt_col_int(st, 0) != 0;
		dun_stmt_reset(st);
		if (rc != DUN_STEP_ROW && rc != DUN_STEP_DONE)
			return dun_stmt_err(st);
		/* Cancelled by someone else: in the shadow it still runs, unpaid. */
		if (sub->status == DUN_SUB_CANCELED && !canceled)
			sub->status = DUN_SUB_PAST_DUE;
		else if (canceled)
			sub->status = DUN_SUB_CANCELED;
	}
	return DUN_OK;
}

/* The shadow's email log replaces the real one: the keys it would have sent. */
static enum dun_err read_emails(struct dun_db *db, struct dun_snapshot *snap)
{
	struct dun_state *s = &snap->state;
	int n = 0;
	struct dun_stmt *st = dun_db_stmt(db, "SELECT key, at FROM shadow_consequences"
					      " WHERE account_id = ?1 AND type = 'send_email'"
					      " ORDER BY id");
	dun_stmt_bind_text(st, 1, s->account_id);
	int rc;
	while ((rc = dun_stmt_step(st)) == DUN_STEP_ROW) {
		if (n == snap->emails_cap) {
			snap->emails_cap = snap->emails_cap ? snap->emails_cap * 2 : 16;
			snap->emails = dun_realloc(snap->emails,
						   sizeof *snap->emails * (size_t)snap->emails_cap);
		}
		dun_stmt_col_copy(st, 0, snap->emails[n].key, sizeof snap->emails[n].key);
		snap->emails[n].at = dun_stmt_col_int64(st, 1);
		n++;
	}
	dun_stmt_reset(st);
	s->sent_emails = snap->emails;
	s->n_sent_emails = n;
	return rc == DUN_STEP_DONE ? DUN_OK : dun_stmt_err(st);
}

enum dun_err dun_shadow_overlay(struct dun_db *db, struct dun_snapshot *snap)
{
	enum dun_err e = read_dunning(db, &snap->state);
	if (e == DUN_OK)
		e = read_invoices(db, snap);
	if (e == DUN_OK)
		e = read_subscriptions(db, snap);
	if (e == DUN_OK)
		e = read_emails(db, snap);
	return e;
}
