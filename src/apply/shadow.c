/*
 * shadow.c — observe mode's applier (see shadow.h). It sits where EXECUTE
 * sits in the pipeline, after the rollout gate said "observe", and writes
 * only the shadow tables.
 */
#include "shadow.h"

#include <string.h>

static enum dun_err set_dunning_int(struct dun_db *db, const char *account_id, const char *sql,
				    int64_t value, int64_t now)
{
	struct dun_stmt *st = dun_db_stmt(db, sql);
	dun_stmt_bind_text(st, 1, account_id);
	dun_stmt_bind_int64(st, 2, value);
	dun_stmt_bind_int64(st, 3, now);
	return dun_stmt_done(st);
}

#define SET(col) "UPDATE shadow_dunning SET " col " = ?2, updated_at = ?3 WHERE account_id = ?1"

static enum dun_err invoice_row(struct dun_db *db, const char *account_id, const char *invoice)
{
	struct dun_stmt *st =
	    dun_db_stmt(db, "INSERT INTO shadow_invoices(invoice_id, account_id)"
			    " VALUES (?1, ?2) ON CONFLICT(invoice_id) DO NOTHING");
	dun_stmt_bind_text(st, 1, invoice);
	dun_stmt_bind_text(st, 2, account_id);
	return dun_stmt_done(st);
}

static enum dun_err set_invoice(struct dun_db *db, const char *account_id, const char *sql,
				const char *invoice, int64_t value)
{
	enum dun_err e = invoice_row(db, account_id, invoice);
	if (e != DUN_OK)
		return e;
	struct dun_stmt *st = dun_db_stmt(db, sql);
	dun_stmt_bind_text(st, 1, invoice);
	dun_stmt_bind_int64(st, 2, value);
	return dun_stmt_done(st);
}

#define SET_INV(col) "UPDATE shadow_invoices SET " col " WHERE invoice_id = ?1"

/* Move the shadow state as applying c to the real stores would have. */
static enum dun_err move_state(struct dun_db *db, const char *acct, const struct dun_consequence *c,
			       int64_t now)
{
	struct dun_stmt *st;
	switch (c->type) {
	case DUN_C_SET_ACCOUNT_BAD_DEBT:
		return set_dunning_int(db, acct, SET("account_bad_debt"), c->value, now);
	case DUN_C_SET_CUSTOMER_BAD_DEBT:
		return set_dunning_int(db, acct, SET("customer_bad_debt"), c->value, now);
	case DUN_C_SET_PROVIDER_CUSTOMER_BAD_DEBT:
		return set_dunning_int(db, acct, SET("provider_meta_bad_debt"), c->value, now);
	case DUN_C_BAN:
		return set_dunning_int(db, acct, SET("banned"), 1, now);
	case DUN_C_UNBAN:
		return set_dunning_int(db, acct, SET("banned"), 0, now);
	case DUN_C_SET_ENTITLEMENT:
		st = dun_db_stmt(db, "UPDATE shadow_dunning SET entitlement = ?2, updated_at = ?3"
				     " WHERE account_id = ?1");
		dun_stmt_bind_text(st, 1, acct);
		dun_stmt_bind_text(st, 2, dun_entitlement_name((enum dun_entitlement)c->value));
		dun_stmt_bind_int64(st, 3, now);
		return dun_stmt_done(st);
	case DUN_C_REMOVE_RESOURCE_FLAGS:
		return set_dunning_int(db, acct, SET("flags_removed"), 1, now);
	case DUN_C_SET_NO_SUCCESSFUL_PAYMENT:
		return set_dunning_int(db, acct, SET("no_successful_payment"), c->value, now);
	case DUN_C_OPEN_BAD_DEBT_EPISODE:
		st = dun_db_stmt(db, "UPDATE shadow_dunning SET bad_debt_episodes = ?2,"
				     " bad_debt_episode_open = 1, updated_at = ?3"
				     " WHERE account_id = ?1");
		dun_stmt_bind_text(st, 1, acct);
		dun_stmt_bind_int64(st, 2, c->value);
		dun_stmt_bind_int64(st, 3, now);
		return dun_stmt_done(st);
	case DUN_C_CLOSE_BAD_DEBT_EPISODE:
		return set_dunning_int(db, acct, SET("bad_debt_episode_open"), 0, now);
	case DUN_C_SET_STAGE:
		st = dun_db_stmt(db,
				 "UPDATE shadow_dunning SET stage = ?2, since = ?3, episode = ?4,"
				 " lifting_since = ?5, updated_at = ?6 WHERE account_id = ?1");
		dun_stmt_bind_text(st, 1, acct);
		dun_stmt_bind_text(st, 2, dun_stage_name((enum dun_stage)c->value));
		dun_stmt_bind_int64(st, 3, c->at);
		dun_stmt_bind_int64(st, 4, c->episode);
		dun_stmt_bind_int64(st, 5, c->lifting_since);
		dun_stmt_bind_int64(st, 6, now);
		return dun_stmt_done(st);
	case DUN_C_SCHEDULE_RECHECK:
		return set_dunning_int(db, acct, SET("next_recheck_at"), c->value, now);
	case DUN_C_MARK_UNCOLLECTIBLE:
		return set_invoice(db, acct, SET_INV("uncollectible = ?2"), c->target, 1);
	case DUN_C_SET_INVOICE_BAD_DEBT_AMOUNT:
		return set_invoice(db, acct,
				   SET_INV("has_bad_debt_amount = 1, bad_debt_amount = ?2"),
				   c->target, c->value);
	case DUN_C_MARK_INVOICE_BAD_DEBT_PAID:
		return set_invoice(db, acct, SET_INV("bad_debt_paid = ?2"), c->target, 1);
	case DUN_C_CLOSE_INVOICE_DOCUMENT:
		return set_invoice(db, acct, SET_INV("doc_closed = ?2"), c->target, 1);
	case DUN_C_DISABLE_PAYLINKS:
		return set_invoice(db, acct, SET_INV("paylinks_disabled = ?2"), c->target, 1);
	case DUN_C_CANCEL_SUBSCRIPTION:
		st = dun_db_stmt(db, "INSERT INTO shadow_subscriptions(subscription_id, account_id,"
				     " canceled) VALUES (?1, ?2, 1) ON CONFLICT(subscription_id)"
				     " DO UPDATE SET canceled = 1");
		dun_stmt_bind_text(st, 1, c->target);
		dun_stmt_bind_text(st, 2, acct);
		return dun_stmt_done(st);
	case DUN_C_RETRY_PAYMENT:
	case DUN_C_SEND_EMAIL:
	case DUN_C_EMIT_OUTCOME_EVENT:
	case DUN_C_VOID_INVOICE:
	case DUN_C_CREATE_CONSOLIDATED_INVOICE:
		return DUN_OK; /* the log row is all there is of them */
	}
	return DUN_OK;
}

static enum dun_err record_all(struct dun_db *db, const char *acct, const struct dun_plan *plan,
			       int64_t decision_id, int64_t now, int *n_new)
{
	struct dun_stmt *st =
	    dun_db_stmt(db, "INSERT INTO shadow_dunning(account_id, updated_at)"
			    " VALUES (?1, ?2) ON CONFLICT(account_id) DO NOTHING");
	dun_stmt_bind_text(st, 1, acct);
	dun_stmt_bind_int64(st, 2, now);
	enum dun_err e = dun_stmt_done(st);
	for (int i = 0; i < plan->n && e == DUN_OK; i++) {
		const struct dun_consequence *c = &plan->items[i];
		st =
		    dun_db_stmt(db, "INSERT INTO shadow_consequences(account_id, key, type, target,"
				    " value, kind, at, decision_id) VALUES (?1, ?2, ?3, ?4, ?5, ?6,"
				    " ?7, ?8) ON CONFLICT(key) DO NOTHING");
		dun_stmt_bind_text(st, 1, acct);
		dun_stmt_bind_text(st, 2, c->key);
		dun_stmt_bind_text(st, 3, dun_conseq_name(c->type));
		dun_stmt_bind_text(st, 4, c->target);
		dun_stmt_bind_int64(st, 5, c->value);
		dun_stmt_bind_text(st, 6,
				   c->type == DUN_C_SEND_EMAIL ? dun_email_kind_name(c->kind) : "");
		dun_stmt_bind_int64(st, 7, now);
		dun_stmt_bind_int64(st, 8, decision_id);
		e = dun_stmt_done(st);
		if (e == DUN_OK)
			*n_new += dun_db_changes(db) > 0;
		if (e == DUN_OK)
			e = move_state(db, acct, c, now);
	}
	return e;
}

enum dun_err dun_shadow_record(struct dun_db *db, const char *account_id,
			       const struct dun_plan *plan, int64_t decision_id, int64_t now,
			       int *n_new)
{
	*n_new = 0;
	bool own_tx = !dun_db_in_transaction(db);
	enum dun_err e = own_tx ? dun_db_begin(db) : DUN_OK;
	if (e != DUN_OK)
		return e;
	e = record_all(db, account_id, plan, decision_id, now, n_new);
	if (!own_tx)
		return e;
	if (e == DUN_OK)
		return dun_db_commit(db);
	dun_db_rollback(db);
	return e;
}

enum dun_err dun_shadow_filter_plan(struct dun_db *db, struct dun_plan *plan)
{
	int kept = 0;
	for (int i = 0; i < plan->n; i++) {
		const struct dun_consequence *c = &plan->items[i];
		bool seen = false;
		if (dun_conseq_is_once(c->type)) {
			struct dun_stmt *st =
			    dun_db_stmt(db, "SELECT 1 FROM shadow_consequences WHERE key = ?1");
			dun_stmt_bind_text(st, 1, c->key);
			int rc = dun_stmt_step(st);
			dun_stmt_reset(st);
			if (rc != DUN_STEP_ROW && rc != DUN_STEP_DONE)
				return dun_stmt_err(st);
			seen = rc == DUN_STEP_ROW;
		}
		if (!seen)
			plan->items[kept++] = *c;
	}
	plan->n = kept;
	return DUN_OK;
}
