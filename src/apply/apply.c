/*
 * apply.c — EXECUTE: the one applier.
 *
 * Design
 * ------
 * The applier is the only code in the project that writes to a store. It
 * takes a plan computed by the pure core and applies its consequences in
 * order, recording each one's outcome in the `applied` table under its
 * idempotency key and the decision that planned it.
 *
 * Two kinds of consequences (see DUN_CONSEQ_LIST in core/plan.h):
 *
 *   setters  (flags, entitlement, ban, metadata, documents, stage, recheck)
 *            are applied whenever planned. They set a value, so applying one
 *            twice is harmless, and the plan only contains them when the
 *            store disagrees with the desired state. They are NOT skipped by
 *            key: if someone flips a flag back, the next recompute repairs it.
 *   once     (emails, payment retries, outcome events, episode open/close)
 *            are applied at most once per key, ever. The key names the
 *            intent precisely (account, kind, invoice or episode, attempt
 *            number), so a retried or duplicated plan finds the key already
 *            applied and skips it.
 *
 * Engine-store writes and their `applied` record share one transaction.
 * So do platform writes whenever the platform writes only to the engine DB
 * (dun_platform_ops.in_engine_db): the local platform's table, and the HTTP
 * platform, whose operation queues the call in platform_outbox and sets the
 * engine's view in the platform table (platform_http.c). For the HTTP
 * platform "queued" is "applied": the intent commits with its decision or
 * not at all, the call is delivered later by the outbox sender in order per
 * account, and a slow or dead platform never blocks a recompute. Each call's
 * Idempotency-Key is the consequence key plus the decision id.
 *
 * Provider writes cannot share the transaction: the effect happens, then
 * the record is written. A crash between the two leaves the effect
 * unrecorded; the next recompute reads the new state (the mirror is updated
 * from the provider's reply in the same step) and plans nothing, or plans
 * the same setter again, which is harmless. For the provider the consequence
 * key is also the Idempotency-Key: setters append the decision id (a later
 * drift repair must really be sent again), once-consequences use the bare
 * key so a repeat returns the first answer instead of charging twice.
 *
 * Emails go through an outbox, like the platform calls: the message is
 * rendered from the snapshot and queued in the email log (`emails`, state
 * `pending`) in the transaction of its `applied` record, under its dedup
 * key — once per key, ever. The email sender (email_sender.c) delivers it
 * later, in queue order per account, with retries and backoff, so an SMTP
 * outage never blocks a stage change; the plan queues a stage notice before
 * the platform writes that enforce it. Exactly-once delivery (the claim,
 * the stable Message-ID, the legacy sender) lives in email_log.c and the
 * sender; docs/email.md, "Exactly once", has the details.
 *
 * Outcome events are rows of outcome_events written in the transaction of
 * their record, with their final payload and a stable id; the events sender
 * delivers them (events_sender.c).
 *
 * Destructive consequences (ban, mark uncollectible, cancel, the account
 * bad_debt flag) first re-read the customer's invoices fresh from the
 * provider; if any invoice the plan was based on has been paid meanwhile,
 * the plan is abandoned with DUN_E_CONFLICT and the trigger retried — the
 * retry recomputes from the fresh state and lifts instead of banning.
 *
 * Every write is fenced by the claim the plan is applied under (ap->fence,
 * store/fence.h): an engine-DB write checks and renews the claim inside its
 * own transaction; a provider call renews it just before going out. Once
 * another worker has taken the account the plan stops with DUN_E_FENCED and
 * nothing more of it lands.
 *
 * Failure stops the plan: later consequences may depend on earlier ones
 * (the stage is written last). The inbox retries the trigger with backoff,
 * and the retry recomputes; an old plan is never replayed.
 */
#include "apply.h"
#include "apply/email/smtp.h"
#include "apply/email_log.h"
#include "apply/events_sender.h"
#include "core/text.h"
#include "store/mirror.h"
#include "util/clock.h"
#include "util/log.h"
#include "util/mem.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define ERR_MAX 256

static bool already_applied(struct dun_db *db, const char *key)
{
	struct dun_stmt *st =
	    dun_db_stmt(db, "SELECT 1 FROM applied WHERE key = ?1 AND outcome = 'applied'");
	dun_stmt_bind_text(st, 1, key);
	bool found = dun_stmt_row(st);
	dun_stmt_reset(st);
	return found;
}

static enum dun_err record(struct dun_db *db, const char *account, const struct dun_consequence *c,
			   int64_t decision_id, enum dun_err e, const char *err)
{
	struct dun_stmt *st = dun_db_stmt(
	    db, "INSERT INTO applied(key, account_id, type, decision_id, at, outcome, error)"
		" VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7) ON CONFLICT(key) DO UPDATE SET"
		" decision_id = excluded.decision_id, at = excluded.at,"
		" outcome = excluded.outcome, error = excluded.error");
	dun_stmt_bind_text(st, 1, c->key);
	dun_stmt_bind_text(st, 2, account);
	dun_stmt_bind_text(st, 3, dun_conseq_name(c->type));
	dun_stmt_bind_int64(st, 4, decision_id);
	dun_stmt_bind_int64(st, 5, dun_clock_now());
	dun_stmt_bind_text(st, 6, e == DUN_OK ? "applied" : "failed");
	dun_stmt_bind_text(st, 7, e == DUN_OK ? "" : err);
	return dun_stmt_done(st);
}

/* Fold a provider reply into the mirror. Takes obj. */
/*
 * Fold a provider's reply into the mirror, in the caller's transaction,
 * under the mirror writers' lock (store/db.h). In a worker's batch the lock
 * is only tried: waiting for it there, with the batch's other rows locked,
 * could deadlock with a webhook batch; busy, the account runs alone after
 * the batch instead (inbox/worker.c).
 */
static enum dun_err fold(struct dun_db *db, json_t *obj, bool in_batch, char *err)
{
	if (!obj)
		return DUN_OK;
	enum dun_err e = dun_db_lock_mirror(db, !in_batch);
	if (e == DUN_OK)
		e = dun_mirror_upsert(db, obj, dun_clock_now(), NULL, NULL, err, ERR_MAX);
	else
		snprintf(err, ERR_MAX, "mirror: %s", dun_db_errmsg(db));
	json_decref(obj);
	return e;
}

/* ---- the fresh re-read before destructive consequences ------------------- */

static enum dun_err recheck_fresh(struct dun_applier *ap, const struct dun_snapshot *snap,
				  char *err)
{
	const struct dun_state *s = &snap->state;
	if (!s->has_customer || !ap->provider.ops->list_invoices)
		return DUN_OK;
	json_t *list = NULL;
	enum dun_err e =
	    ap->provider.ops->list_invoices(ap->provider.self, s->customer_id, &list, err, ERR_MAX);
	if (e != DUN_OK)
		return e;
	/* What was read goes into the mirror as one mirror writer (store/db.h). */
	bool own_tx = !dun_db_in_transaction(ap->db);
	e = own_tx ? dun_db_begin_mirror(ap->db) : dun_db_lock_mirror(ap->db, !ap->in_batch);
	if (e != DUN_OK) {
		snprintf(err, ERR_MAX, "mirror: %s", dun_db_errmsg(ap->db));
		json_decref(list);
		return e;
	}
	enum dun_err result = DUN_OK;
	size_t i;
	json_t *inv;
	json_array_foreach(list, i, inv)
	{
		const char *id = json_string_value(json_object_get(inv, "id"));
		const char *status = json_string_value(json_object_get(inv, "status"));
		if (!id || !status)
			continue;
		for (int k = 0; k < s->n_invoices; k++) {
			if (strcmp(s->invoices[k].id, id) != 0)
				continue;
			if (!strcmp(status, "paid") && s->invoices[k].status != DUN_INVOICE_PAID) {
				snprintf(err, ERR_MAX,
					 "invoice %s was paid since the state was read; recompute",
					 id);
				result = DUN_E_CONFLICT;
			}
		}
		enum dun_err fe =
		    dun_mirror_upsert(ap->db, inv, dun_clock_now(), NULL, NULL, err, ERR_MAX);
		if (fe != DUN_OK && result == DUN_OK)
			result = fe;
	}
	json_decref(list);
	if (own_tx) {
		/* The read is kept even when it shows a conflict: the retry decides on it. */
		e = dun_db_commit(ap->db);
		if (e != DUN_OK) {
			dun_db_rollback(ap->db);
			if (result == DUN_OK) {
				snprintf(err, ERR_MAX, "mirror: %s", dun_db_errmsg(ap->db));
				result = e;
			}
		}
	}
	return result;
}

/* ---- engine-store writes --------------------------------------------------- */

static enum dun_err exec_bind(struct dun_db *db, const char *sql, const char *a, const char *b,
			      int64_t x, int64_t y)
{
	struct dun_stmt *st = dun_db_stmt(db, sql);
	int n = dun_stmt_param_count(st);
	if (n >= 1)
		dun_stmt_bind_text_copy(st, 1, a);
	if (n >= 2)
		dun_stmt_bind_text_copy(st, 2, b);
	if (n >= 3)
		dun_stmt_bind_int64(st, 3, x);
	if (n >= 4)
		dun_stmt_bind_int64(st, 4, y);
	return dun_stmt_done(st);
}

/*
 * The products a bad-debt episode involves: those of the customer's
 * subscriptions in the mirror (p_subscriptions.products), comma-separated,
 * each once; "" when the mirror knows none.
 */
static char *episode_products(struct dun_db *db, const struct dun_state *s)
{
	size_t cap = 1, len = 0;
	char *out = dun_malloc(cap);
	out[0] = '\0';
	struct dun_stmt *st =
	    dun_db_stmt(db, "SELECT products FROM p_subscriptions"
			    " WHERE customer_id = ?1 AND products <> '' ORDER BY id");
	dun_stmt_bind_text(st, 1, s->customer_id);
	while (dun_stmt_row(st)) {
		const char *list = dun_stmt_col_text(st, 0);
		for (const char *q = list; q && *q;) {
			const char *end = strchr(q, ',');
			size_t n = end ? (size_t)(end - q) : strlen(q);
			if (n && !dun_list_has(out, q, n)) {
				out = dun_realloc(out, cap += n + 1);
				if (len)
					out[len++] = ',';
				memcpy(out + len, q, n);
				len += n;
				out[len] = '\0';
			}
			q = end ? end + 1 : q + n;
		}
	}
	dun_stmt_reset(st);
	return out;
}

static const char *first_reason(const struct dun_desired *d, const char *rule)
{
	for (int i = 0; i < d->n_reasons; i++)
		if (!strcmp(d->reasons[i].rule, rule))
			return d->reasons[i].text;
	return "";
}

static enum dun_err engine_write(struct dun_applier *ap, const struct dun_snapshot *snap,
				 const struct dun_desired *d, const struct dun_consequence *c)
{
	struct dun_db *db = ap->db;
	const char *acct = snap->state.account_id;
	int64_t now = dun_clock_now();
	switch (c->type) {
	case DUN_C_SET_CUSTOMER_BAD_DEBT:
		return exec_bind(db, "UPDATE customers SET bad_debt = ?3 WHERE id = ?1", c->target,
				 NULL, c->value, 0);
	case DUN_C_SET_ACCOUNT_BAD_DEBT:
		return exec_bind(db, "UPDATE accounts SET bad_debt = ?3 WHERE id = ?1", acct, NULL,
				 c->value, 0);
	case DUN_C_SET_NO_SUCCESSFUL_PAYMENT:
		return exec_bind(db,
				 "UPDATE accounts SET no_successful_payment = ?3"
				 " WHERE id = ?1",
				 acct, NULL, c->value, 0);
	case DUN_C_CLOSE_INVOICE_DOCUMENT:
		return exec_bind(
		    db,
		    "INSERT INTO invoice_docs(invoice_id, closed, updated_at,"
		    " account_id) VALUES (?1, 1, ?3, COALESCE((SELECT account_id"
		    " FROM p_invoices WHERE id = ?1), '')) ON CONFLICT(invoice_id) DO UPDATE SET"
		    " closed = 1, updated_at = ?3",
		    c->target, NULL, now, 0);
	case DUN_C_DISABLE_PAYLINKS:
		return exec_bind(
		    db,
		    "INSERT INTO invoice_docs(invoice_id, paylinks_enabled, updated_at,"
		    " account_id) VALUES (?1, 0, ?3, COALESCE((SELECT account_id"
		    " FROM p_invoices WHERE id = ?1), '')) ON CONFLICT(invoice_id) DO UPDATE SET"
		    " paylinks_enabled = 0, updated_at = ?3",
		    c->target, NULL, now, 0);
	case DUN_C_OPEN_BAD_DEBT_EPISODE: {
		int64_t amount = 0;
		for (int i = 0; i < snap->state.n_invoices; i++)
			amount += d->invoices[i].bad_debt_amount_minor;
		char *products = episode_products(db, &snap->state);
		struct dun_stmt *st = dun_db_stmt(
		    db, "INSERT INTO bad_debt_episodes(account_id, episode,"
			" entered_at, reason, products, amount_minor) VALUES (?1, ?2, ?3, ?4,"
			" ?5, ?6) ON CONFLICT DO NOTHING");
		dun_stmt_bind_text(st, 1, acct);
		dun_stmt_bind_int64(st, 2, c->value); /* the bad-debt episode number */
		dun_stmt_bind_int64(st, 3, now);
		dun_stmt_bind_text(st, 4, first_reason(d, "bad_debt"));
		dun_stmt_bind_text(st, 5, products);
		dun_stmt_bind_int64(st, 6, amount);
		enum dun_err e = dun_stmt_done(st);
		free(products);
		return e;
	}
	case DUN_C_CLOSE_BAD_DEBT_EPISODE:
		return exec_bind(db,
				 "UPDATE bad_debt_episodes SET exited_at = ?3, exit_reason = ?2"
				 " WHERE account_id = ?1 AND exited_at = 0",
				 acct, dun_exit_reason_name((enum dun_exit_reason)c->value), now,
				 0);
	case DUN_C_EMIT_OUTCOME_EVENT: {
		const char *type =
		    c->value == DUN_STAGE_NONE ? "dunning.lifted" : "dunning.stage_changed";
		/* The payload is final here: the sender posts these bytes on every
		 * attempt, to every endpoint (schema: docs/events.md). */
		char id[DUN_EVENT_ID_SIZE];
		dun_event_id(c->key, id);
		json_t *payload = json_pack(
		    "{s:s, s:s, s:i, s:s, s:I, s:s, s:s, s:s, s:s, s:I, s:s}", "id", id, "object",
		    "event", "version", DUN_EVENT_SCHEMA_VERSION, "type", type, "created",
		    (json_int_t)now, "key", c->key, "account_id", acct, "from_stage",
		    dun_stage_name(c->from), "to_stage", dun_stage_name((enum dun_stage)c->value),
		    "episode", (json_int_t)c->episode, "entitlement",
		    dun_entitlement_name(d->entitlement));
		/* An episode that ends says how: paid, written_off or other. */
		if (d->exit_reason != DUN_EXIT_NONE)
			json_object_set_new(payload, "exit_reason",
					    json_string(dun_exit_reason_name(d->exit_reason)));
		char *text = json_dumps(payload, JSON_COMPACT | JSON_SORT_KEYS);
		json_decref(payload);
		struct dun_stmt *st = dun_db_stmt(
		    db, "INSERT INTO outcome_events(key, account_id, type, payload,"
			" created_at) VALUES (?1, ?2, ?3, ?4, ?5) ON CONFLICT DO NOTHING");
		dun_stmt_bind_text(st, 1, c->key);
		dun_stmt_bind_text(st, 2, acct);
		dun_stmt_bind_text(st, 3, type);
		dun_stmt_bind_text(st, 4, text);
		dun_stmt_bind_int64(st, 5, now);
		enum dun_err e = dun_stmt_done(st);
		free(text);
		return e;
	}
	case DUN_C_SET_STAGE: {
		struct dun_stmt *st = dun_db_stmt(
		    db, "INSERT INTO dunning(account_id, stage, since, episode, lifting_since,"
			" updated_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6) ON CONFLICT(account_id)"
			" DO UPDATE SET stage = excluded.stage, since = excluded.since,"
			" episode = excluded.episode, lifting_since = excluded.lifting_since,"
			" updated_at = excluded.updated_at");
		dun_stmt_bind_text(st, 1, acct);
		dun_stmt_bind_text(st, 2, dun_stage_name((enum dun_stage)c->value));
		dun_stmt_bind_int64(st, 3, c->at);
		dun_stmt_bind_int64(st, 4, c->episode);
		dun_stmt_bind_int64(st, 5, c->lifting_since);
		dun_stmt_bind_int64(st, 6, now);
		return dun_stmt_done(st);
	}
	case DUN_C_SCHEDULE_RECHECK:
		return exec_bind(db,
				 "INSERT INTO dunning(account_id, next_recheck_at, updated_at)"
				 " VALUES (?1, ?3, ?4) ON CONFLICT(account_id) DO UPDATE SET"
				 " next_recheck_at = ?3, updated_at = ?4",
				 acct, NULL, c->at, now);
	case DUN_C_MARK_UNCOLLECTIBLE:
	case DUN_C_SET_INVOICE_BAD_DEBT_AMOUNT:
	case DUN_C_SET_PROVIDER_CUSTOMER_BAD_DEBT:
	case DUN_C_BAN:
	case DUN_C_UNBAN:
	case DUN_C_SET_ENTITLEMENT:
	case DUN_C_REMOVE_RESOURCE_FLAGS:
	case DUN_C_CANCEL_SUBSCRIPTION:
	case DUN_C_MARK_INVOICE_BAD_DEBT_PAID:
	case DUN_C_RETRY_PAYMENT:
	case DUN_C_SEND_EMAIL:
	case DUN_C_VOID_INVOICE:
	case DUN_C_CREATE_CONSOLIDATED_INVOICE:
		break;
	}
	return DUN_E_INVALID;
}

/* ---- external writes --------------------------------------------------------- */

/*
 * The consolidated bad-debt invoice lists the account's unresolved
 * uncollectible invoices (upgrades excluded: they never make bad debt).
 */
static enum dun_err create_consolidated(struct dun_applier *ap, const struct dun_snapshot *snap,
					const struct dun_desired *d, const char *idem, json_t **obj,
					char *err)
{
	const struct dun_state *s = &snap->state;
	int n = 0;
	const char **ids = dun_calloc((size_t)(s->n_invoices + 1), sizeof *ids);
	int64_t *amounts = dun_calloc((size_t)(s->n_invoices + 1), sizeof *amounts);
	const char *currency = "usd";
	for (int i = 0; i < s->n_invoices; i++) {
		if (!d->invoices[i].unresolved_uncollectible || d->invoices[i].upgrade)
			continue;
		const struct dun_invoice *inv = &s->invoices[i];
		ids[n] = inv->id;
		amounts[n] = inv->amount_remaining_minor > 0
				 ? inv->amount_remaining_minor
				 : inv->amount_due_minor - inv->amount_paid_minor;
		currency = inv->currency;
		n++;
	}
	enum dun_err e = DUN_E_GUARD;
	if (n == 0)
		snprintf(err, ERR_MAX, "no unresolved uncollectible invoice to consolidate");
	else {
		struct dun_consolidated_req req = {.customer_id = s->customer_id,
						   .currency = currency,
						   .n_originals = n,
						   .original_ids = ids,
						   .original_amounts_minor = amounts,
						   .days_until_due = 30};
		e = ap->provider.ops->create_consolidated(ap->provider.self, &req, idem, obj, err,
							  ERR_MAX);
	}
	free(ids);
	free(amounts);
	return e;
}

/* The provider call of c; *reply gets the object Stripe answered with (to fold). */
static enum dun_err provider_write(struct dun_applier *ap, const struct dun_snapshot *snap,
				   const struct dun_desired *d, const struct dun_consequence *c,
				   int64_t decision_id, json_t **reply, char *err)
{
	const struct dun_provider_ops *ops = ap->provider.ops;
	void *self = ap->provider.self;
	char idem[DUN_KEY_MAX + 32];
	if (dun_conseq_is_once(c->type))
		snprintf(idem, sizeof idem, "%s", c->key);
	else
		snprintf(idem, sizeof idem, "%s/d%" PRId64, c->key, decision_id);
	json_t *obj = NULL;
	enum dun_err e = DUN_E_INVALID;
	char value[32];
	switch (c->type) {
	case DUN_C_MARK_UNCOLLECTIBLE:
		e = ops->mark_uncollectible(self, c->target, idem, &obj, err, ERR_MAX);
		break;
	case DUN_C_SET_INVOICE_BAD_DEBT_AMOUNT:
		snprintf(value, sizeof value, "%" PRId64, c->value);
		e = ops->set_invoice_metadata(self, c->target, "bad_debt_amount", value, idem, &obj,
					      err, ERR_MAX);
		break;
	case DUN_C_SET_PROVIDER_CUSTOMER_BAD_DEBT:
		e = ops->set_customer_metadata(self, c->target, "bad_debt",
					       c->value ? "true" : "false", idem, &obj, err,
					       ERR_MAX);
		break;
	case DUN_C_CANCEL_SUBSCRIPTION:
		e = ops->cancel_subscription(self, c->target, idem, &obj, err, ERR_MAX);
		break;
	case DUN_C_MARK_INVOICE_BAD_DEBT_PAID:
		e = ops->set_invoice_metadata(self, c->target, "bad_debt_paid", "true", idem, &obj,
					      err, ERR_MAX);
		break;
	case DUN_C_RETRY_PAYMENT:
		e = ops->pay_invoice(self, c->target, idem, &obj, err, ERR_MAX);
		break;
	case DUN_C_VOID_INVOICE:
		e = ops->void_invoice(self, c->target, idem, &obj, err, ERR_MAX);
		break;
	case DUN_C_CREATE_CONSOLIDATED_INVOICE:
		e = create_consolidated(ap, snap, d, idem, &obj, err);
		break;
	case DUN_C_SET_CUSTOMER_BAD_DEBT:
	case DUN_C_SET_ACCOUNT_BAD_DEBT:
	case DUN_C_BAN:
	case DUN_C_UNBAN:
	case DUN_C_SET_ENTITLEMENT:
	case DUN_C_REMOVE_RESOURCE_FLAGS:
	case DUN_C_CLOSE_INVOICE_DOCUMENT:
	case DUN_C_DISABLE_PAYLINKS:
	case DUN_C_SET_NO_SUCCESSFUL_PAYMENT:
	case DUN_C_SEND_EMAIL:
	case DUN_C_OPEN_BAD_DEBT_EPISODE:
	case DUN_C_CLOSE_BAD_DEBT_EPISODE:
	case DUN_C_EMIT_OUTCOME_EVENT:
	case DUN_C_SET_STAGE:
	case DUN_C_SCHEDULE_RECHECK:
		break;
	}
	if (e != DUN_OK) {
		json_decref(obj);
		return e;
	}
	*reply = obj;
	return DUN_OK;
}

/*
 * After a provider call: fold its reply into the mirror and record it, in one
 * transaction under the claim. A worker that lost the account while the call
 * was on the wire folds nothing: its reply may be older than what the new
 * owner has written since (the new owner's call under the same key replays
 * the same effect, so the record is the new owner's to make).
 */
static enum dun_err provider_settle(struct dun_applier *ap, const char *acct,
				    const struct dun_consequence *c, int64_t decision_id,
				    json_t *reply, char *err)
{
	if (ap->in_batch) {
		/* The simulated provider in a worker's batch: all of it in the caller's transaction. */
		enum dun_err e = fold(ap->db, reply, true, err);
		return e == DUN_OK ? record(ap->db, acct, c, decision_id, DUN_OK, "") : e;
	}
	enum dun_err e = dun_fence_begin(ap->db, ap->fence);
	if (e != DUN_OK) {
		json_decref(reply);
		if (e == DUN_E_FENCED)
			snprintf(err, ERR_MAX, "%s (after its call went out)", dun_err_str(e));
		else
			snprintf(err, ERR_MAX, "begin: %s", dun_db_errmsg(ap->db));
		return e;
	}
	e = fold(ap->db, reply, false, err);
	if (e == DUN_OK)
		e = record(ap->db, acct, c, decision_id, DUN_OK, "");
	if (e == DUN_OK)
		e = dun_db_commit(ap->db);
	if (e != DUN_OK)
		dun_db_rollback(ap->db);
	return e;
}

static enum dun_err platform_write(struct dun_applier *ap, const struct dun_consequence *c,
				   int64_t decision_id, char *err)
{
	char idem[DUN_KEY_MAX + 32];
	snprintf(idem, sizeof idem, "%s/d%" PRId64, c->key, decision_id);
	const struct dun_platform_ops *ops = ap->platform.ops;
	switch (c->type) {
	case DUN_C_BAN:
		return ops->ban(ap->platform.self, c->target, true, idem, decision_id, err,
				ERR_MAX);
	case DUN_C_UNBAN:
		return ops->ban(ap->platform.self, c->target, false, idem, decision_id, err,
				ERR_MAX);
	case DUN_C_SET_ENTITLEMENT:
		return ops->set_entitlement(ap->platform.self, c->target,
					    (enum dun_entitlement)c->value, idem, decision_id, err,
					    ERR_MAX);
	case DUN_C_REMOVE_RESOURCE_FLAGS:
		return ops->remove_resource_flags(ap->platform.self, c->target, idem, decision_id,
						  err, ERR_MAX);
	case DUN_C_MARK_UNCOLLECTIBLE:
	case DUN_C_SET_INVOICE_BAD_DEBT_AMOUNT:
	case DUN_C_SET_PROVIDER_CUSTOMER_BAD_DEBT:
	case DUN_C_SET_CUSTOMER_BAD_DEBT:
	case DUN_C_SET_ACCOUNT_BAD_DEBT:
	case DUN_C_CANCEL_SUBSCRIPTION:
	case DUN_C_MARK_INVOICE_BAD_DEBT_PAID:
	case DUN_C_CLOSE_INVOICE_DOCUMENT:
	case DUN_C_DISABLE_PAYLINKS:
	case DUN_C_RETRY_PAYMENT:
	case DUN_C_SET_NO_SUCCESSFUL_PAYMENT:
	case DUN_C_SEND_EMAIL:
	case DUN_C_OPEN_BAD_DEBT_EPISODE:
	case DUN_C_CLOSE_BAD_DEBT_EPISODE:
	case DUN_C_EMIT_OUTCOME_EVENT:
	case DUN_C_SET_STAGE:
	case DUN_C_SCHEDULE_RECHECK:
	case DUN_C_VOID_INVOICE:
	case DUN_C_CREATE_CONSOLIDATED_INVOICE:
		break;
	}
	return DUN_E_INVALID;
}

/*
 * The Message-ID of an email: "<dunning.<key>@<domain of the sender>>"
 * (dun_smtp_message_id), so two installations with the same account ids
 * never share one. Without a sender address the domain is dunning.local.
 */
static enum dun_err message_id_for(const struct dun_applier *ap, const char *key, char *out,
				   size_t out_size, char *err)
{
	const char *from = ap->mailer.from && strchr(ap->mailer.from, '@')
			       ? ap->mailer.from
			       : "dunning@dunning.local";
	char bare[DUN_EMAIL_MESSAGE_ID_MAX];
	enum dun_err e = dun_smtp_message_id(key, from, bare, sizeof bare);
	if (e != DUN_OK) {
		snprintf(err, ERR_MAX, "no Message-ID for key %s: %s", key, dun_err_str(e));
		return e;
	}
	snprintf(out, out_size, "<%.250s>", bare);
	return DUN_OK;
}

/*
 * Whether the engine itself applied an escalation (entitlement, ban, bad-debt
 * flag) of account_id in dunning episode ep. A cutover email (plan.h) is
 * recorded unsent only when it did not: stores showing the engine's own
 * half-applied plan are not the legacy system's steps, and its emails go.
 */
static bool engine_escalated(struct dun_db *db, const char *account_id, int64_t ep)
{
	char pattern[32];
	snprintf(pattern, sizeof pattern, "%%/ep%lld", (long long)ep);
	struct dun_stmt *st =
	    dun_db_stmt(db, "SELECT 1 FROM applied WHERE account_id = ?1 AND type IN"
			    " ('set_entitlement', 'ban', 'set_account_bad_debt')"
			    " AND key LIKE ?2 LIMIT 1");
	dun_stmt_bind_text(st, 1, account_id);
	dun_stmt_bind_text_copy(st, 2, pattern);
	bool found = dun_stmt_row(st);
	dun_stmt_reset(st);
	return found;
}

/*
 * Queue the email (email_log.c): render it now, with the snapshot and the
 * decision that planned it, and write it to the email log as `pending`,
 * inside the transaction that records it as applied. The email sender
 * (email_sender.c) delivers it later; an SMTP outage never fails a plan.
 * *skipped is set when the key had already been sent (by a legacy system).
 */
static enum dun_err queue_email(struct dun_applier *ap, const struct dun_snapshot *snap,
				const struct dun_desired *d, const struct dun_consequence *c,
				bool *skipped, char *err)
{
	if (c->cutover && !engine_escalated(ap->db, snap->state.account_id, c->episode)) {
		/* Gone through before the engine took over: recorded, never sent. */
		struct dun_email_intent rec = {
		    .key = c->key,
		    .account_id = snap->state.account_id,
		    .kind = dun_email_kind_name(c->kind),
		    .invoice_id = strcmp(c->target, snap->state.account_id) ? c->target : "",
		    .to = snap->email,
		    .source = "cutover"};
		bool was_sent = false;
		*skipped = true;
		return dun_email_record_sent(ap->db, &rec, dun_clock_now(), &was_sent);
	}
	struct dun_email_ctx ctx = {
	    .kind = c->kind,
	    .snap = snap,
	    .desired = d,
	    .policy = ap->policy,
	    .invoice_id = strcmp(c->target, snap->state.account_id) ? c->target : "",
	    .now = dun_clock_now(),
	};
	char message_id[DUN_EMAIL_MESSAGE_ID_MAX];
	enum dun_err e = message_id_for(ap, c->key, message_id, sizeof message_id, err);
	if (e != DUN_OK)
		return e;
	char *subject = NULL, *body = NULL;
	e = ap->renderer.ops->render(ap->renderer.self, &ctx, &subject, &body, err, ERR_MAX);
	if (e != DUN_OK)
		return e;
	struct dun_email_intent in = {.key = c->key,
				      .account_id = snap->state.account_id,
				      .kind = dun_email_kind_name(c->kind),
				      .invoice_id = ctx.invoice_id,
				      .to = snap->email,
				      .subject = subject,
				      .body = body,
				      .message_id = message_id,
				      .source = "engine"};
	e = dun_email_queue(ap->db, &in, ctx.now, skipped);
	if (e != DUN_OK)
		snprintf(err, ERR_MAX, "queueing %s: %s", c->key, dun_db_errmsg(ap->db));
	free(subject);
	free(body);
	return e;
}

/* ---- the loop ---------------------------------------------------------------- */

/*
 * A consequence whose write lands in the engine DB (the engine's own tables,
 * the local platform table, the HTTP platform's outbox) commits in one
 * transaction with its `applied` record: both or neither.
 */
static enum dun_err in_transaction(struct dun_applier *ap, const struct dun_snapshot *snap,
				   const struct dun_desired *d, const struct dun_consequence *c,
				   int64_t decision_id, char *err)
{
	/* In a worker's batch the caller holds the transaction and checked the fence. */
	enum dun_err e = ap->in_batch ? DUN_OK : dun_fence_begin(ap->db, ap->fence);
	if (e != DUN_OK) {
		if (e == DUN_E_FENCED)
			snprintf(err, ERR_MAX, "%s", dun_err_str(e));
		else
			snprintf(err, ERR_MAX, "begin: %s", dun_db_errmsg(ap->db));
		return e;
	}
	bool skipped = false;
	if (dun_conseq_store(c->type) == DUN_STORE_PLATFORM)
		e = platform_write(ap, c, decision_id, err);
	else if (dun_conseq_store(c->type) == DUN_STORE_EMAIL)
		e = queue_email(ap, snap, d, c, &skipped, err);
	else
		e = engine_write(ap, snap, d, c);
	if (e == DUN_OK)
		e = record(ap->db, snap->state.account_id, c, decision_id, DUN_OK, "");
	if (e == DUN_OK && !ap->in_batch)
		e = dun_db_commit(ap->db);
	if (e != DUN_OK) {
		if (!err[0])
			snprintf(err, ERR_MAX, "%s: %s", dun_conseq_name(c->type),
				 dun_db_errmsg(ap->db));
		if (!ap->in_batch)
			dun_db_rollback(ap->db);
	}
	return e;
}

static enum dun_err apply_one(struct dun_applier *ap, const struct dun_snapshot *snap,
			      const struct dun_desired *d, const struct dun_consequence *c,
			      int64_t decision_id, bool *skipped, char *err)
{
	const char *acct = snap->state.account_id;
	enum dun_err e = DUN_E_INVALID;
	*skipped = false;
	switch (dun_conseq_store(c->type)) {
	case DUN_STORE_ENGINE:
		return in_transaction(ap, snap, d, c, decision_id, err);
	case DUN_STORE_PROVIDER:
		/* Renewed just before the call: no takeover for a lease from here.
		 * (In a batch the claim was checked in the same transaction.) */
		e = ap->in_batch ? DUN_OK : dun_fence_renew(ap->db, ap->fence);
		if (e != DUN_OK)
			return e;
		json_t *reply = NULL;
		e = provider_write(ap, snap, d, c, decision_id, &reply, err);
		if (e == DUN_OK)
			return provider_settle(ap, acct, c, decision_id, reply, err);
		break;
	case DUN_STORE_PLATFORM:
		if (ap->platform.ops->in_engine_db)
			return in_transaction(ap, snap, d, c, decision_id, err);
		e = dun_fence_renew(ap->db, ap->fence);
		if (e != DUN_OK)
			return e;
		e = platform_write(ap, c, decision_id, err);
		break;
	case DUN_STORE_EMAIL:
		return in_transaction(ap, snap, d, c, decision_id, err);
	}
	enum dun_err re = record(ap->db, acct, c, decision_id, e, err);
	return e != DUN_OK ? e : re;
}

bool dun_apply_plan_batchable(const struct dun_applier *ap, const struct dun_plan *plan)
{
	/* The simulated provider on the engine's own connection: no network. */
	bool local_provider = ap->provider.local_db && ap->provider.local_db == ap->db;
	for (int i = 0; i < plan->n; i++) {
		enum dun_conseq_type t = plan->items[i].type;
		if (dun_conseq_is_destructive(t) && !local_provider)
			return false;
		switch (dun_conseq_store(t)) {
		case DUN_STORE_ENGINE:
		case DUN_STORE_EMAIL:
			break;
		case DUN_STORE_PLATFORM:
			if (!ap->platform.ops->in_engine_db)
				return false;
			break;
		case DUN_STORE_PROVIDER:
			if (!local_provider)
				return false;
			break;
		}
	}
	return true;
}

enum dun_err dun_apply_plan(struct dun_applier *ap, const struct dun_snapshot *snap,
			    const struct dun_desired *d, const struct dun_plan *plan,
			    int64_t decision_id, struct dun_apply_result *res)
{
	memset(res, 0, sizeof *res);
	res->failed_index = -1;
	bool fresh_checked = false;
	const char *acct = snap->state.account_id;
	for (int i = 0; i < plan->n; i++) {
		const struct dun_consequence *c = &plan->items[i];
		char err[ERR_MAX] = "";
		if (dun_conseq_is_once(c->type) && already_applied(ap->db, c->key)) {
			res->n_skipped++;
			continue;
		}
		enum dun_err e = DUN_OK;
		if (dun_conseq_is_destructive(c->type) && !fresh_checked) {
			fresh_checked = true;
			res->fresh_read = true;
			e = recheck_fresh(ap, snap, err);
		}
		bool skipped = false;
		if (e == DUN_OK)
			e = apply_one(ap, snap, d, c, decision_id, &skipped, err);
		char line[DUN_KEY_MAX + 64];
		dun_conseq_format(c, line, sizeof line);
		if (e != DUN_OK) {
			res->n_failed++;
			res->error = e;
			res->failed_index = i;
			snprintf(res->error_text, sizeof res->error_text, "%.200s: %.300s", line,
				 err[0] ? err : dun_err_str(e));
			dun_log(DUN_LOG_WARN, "apply.failed", "account", acct, "consequence", line,
				"key", c->key, "error", res->error_text, NULL);
			return e;
		}
		if (skipped) {
			res->n_skipped++;
			continue;
		}
		res->n_applied++;
		dun_log(DUN_LOG_DEBUG, "apply.done", "account", acct, "consequence", line, "key",
			c->key, NULL);
	}
	return DUN_OK;
}
