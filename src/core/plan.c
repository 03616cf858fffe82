/*
 * plan.c — DELTA/DECIDE: compare the snapshot with the desired state and
 * emit the minimal ordered list of consequences (see plan.h for the order).
 *
 * Idempotency keys are built here, from the account, the consequence type,
 * the target, the value and the dunning episode, so the same intent always
 * gets the same key: the applier uses them to apply "once" consequences
 * (emails, retries, outcome events, episodes) at most once, and the Stripe
 * client derives its Idempotency-Key from them.
 */
#include "plan.h"
#include "text.h"

#include <string.h>

#define CONSEQ_NAME(name, str, store, once) \
	case name:                          \
		return str;
const char *dun_conseq_name(enum dun_conseq_type t)
{
	switch (t) {
		DUN_CONSEQ_LIST(CONSEQ_NAME)
	}
	return "?";
}
#undef CONSEQ_NAME

bool dun_conseq_parse(const char *s, enum dun_conseq_type *out)
{
#define CONSEQ_PARSE(name, str, store, once) \
	if (strcmp(s, str) == 0) {           \
		*out = name;                 \
		return true;                 \
	}
	DUN_CONSEQ_LIST(CONSEQ_PARSE)
#undef CONSEQ_PARSE
	return false;
}

enum dun_store dun_conseq_store(enum dun_conseq_type t)
{
	switch (t) {
#define CONSEQ_STORE(name, str, store, once) \
	case name:                           \
		return store;
		DUN_CONSEQ_LIST(CONSEQ_STORE)
#undef CONSEQ_STORE
	}
	return DUN_STORE_ENGINE;
}

bool dun_conseq_is_once(enum dun_conseq_type t)
{
	switch (t) {
#define CONSEQ_ONCE(name, str, store, once) \
	case name:                          \
		return once;
		DUN_CONSEQ_LIST(CONSEQ_ONCE)
#undef CONSEQ_ONCE
	}
	return false;
}

bool dun_conseq_is_destructive(enum dun_conseq_type t)
{
	return t == DUN_C_BAN || t == DUN_C_MARK_UNCOLLECTIBLE || t == DUN_C_CANCEL_SUBSCRIPTION ||
	       t == DUN_C_SET_ACCOUNT_BAD_DEBT;
}

const char *dun_store_name(enum dun_store s)
{
	switch (s) {
	case DUN_STORE_ENGINE:
		return "engine";
	case DUN_STORE_PROVIDER:
		return "provider";
	case DUN_STORE_PLATFORM:
		return "platform";
	case DUN_STORE_EMAIL:
		return "email";
	}
	return "?";
}

/* ---- building consequences ---------------------------------------------- */

struct builder {
	const struct dun_state *s;
	const struct dun_desired *d;
	struct dun_plan *plan;
	bool overflow;
};

static struct dun_consequence *add(struct builder *b, enum dun_conseq_type type, const char *target,
				   int64_t value)
{
	if (b->plan->n >= b->plan->cap) {
		b->overflow = true;
		return NULL;
	}
	struct dun_consequence *c = &b->plan->items[b->plan->n++];
	memset(c, 0, sizeof *c);
	c->type = type;
	dun_strlcpy(c->target, target, sizeof c->target);
	c->value = value;
	c->episode = b->d->episode;
	c->from = b->s->stage;
	/* Default key: account/type/target/value/epN. */
	struct dun_text t;
	dun_text_init(&t, c->key, sizeof c->key);
	dun_text_key_part(&t, b->s->account_id);
	dun_text_str(&t, "/");
	dun_text_str(&t, dun_conseq_name(type));
	if (strcmp(target, b->s->account_id) != 0) {
		dun_text_str(&t, "/");
		dun_text_key_part(&t, target);
	}
	dun_text_str(&t, "/");
	dun_text_i64(&t, value);
	dun_text_str(&t, "/ep");
	dun_text_i64(&t, b->d->episode);
	return c;
}

static void add_email(struct builder *b, enum dun_email_kind kind, const char *target,
		      const char *scope, bool cutover)
{
	struct dun_consequence *c = add(b, DUN_C_SEND_EMAIL, target, kind);
	if (!c)
		return;
	c->kind = kind;
	c->cutover = cutover;
	dun_email_key(c->key, sizeof c->key, b->s->account_id, kind, scope);
}

/*
 * Cutover: whether the stores already show the consequence of stage st
 * although the engine's own stage is below it. Someone else took the
 * account through that step (the legacy system, before the account left
 * observe mode), so its email is not sent now, back-dated; a per-invoice
 * payment notice counts as gone through once the stores show restricted.
 * Such emails are recorded in the email log (source "cutover"), not sent.
 * (An email the legacy sender recorded with `email record` is already in
 * the log under the same key, and is not planned at all.)
 */
static bool gone_through(const struct dun_state *s, enum dun_stage st)
{
	if (st <= s->stage)
		return false;
	switch (st) {
	case DUN_STAGE_NONE:
	case DUN_STAGE_NOTIFIED:
		return false;
	case DUN_STAGE_RESTRICTED:
		return s->entitlement != DUN_ENTITLEMENT_FULL || s->banned || s->account_bad_debt;
	case DUN_STAGE_SUSPENDED:
		return s->entitlement == DUN_ENTITLEMENT_SUSPENDED || s->banned ||
		       s->account_bad_debt;
	case DUN_STAGE_BAD_DEBT:
		return s->account_bad_debt || s->customer_bad_debt;
	}
	return false;
}

/*
 * Emails, each at most once per dedup key: the notices (per-invoice ones and
 * a stage email announcing a restriction), or, with lift, the email
 * announcing a lift (resolved).
 */
static void add_emails(struct builder *b, bool lift)
{
	const struct dun_state *s = b->s;
	const struct dun_desired *d = b->d;
	if (!lift)
		for (int i = 0; i < s->n_invoices; i++)
			if (d->invoices[i].notice)
				add_email(b, d->invoices[i].notice_kind, s->invoices[i].id,
					  s->invoices[i].id, gone_through(s, DUN_STAGE_RESTRICTED));
	if (!d->send_stage_email || (d->stage_email_kind == DUN_EMAIL_RESOLVED) != lift)
		return;
	add_email(b, d->stage_email_kind, s->account_id, d->stage_email_scope,
		  d->stage_email_kind != DUN_EMAIL_RESOLVED && gone_through(s, d->stage));
}

/* Bad-debt episode keys name the bad-debt episode, not the dunning one. */
static void episode_key(struct dun_consequence *c, int64_t seq)
{
	if (!c)
		return;
	char *slash = strrchr(c->key, '/');
	if (!slash)
		return;
	struct dun_text t;
	size_t keep = (size_t)(slash - c->key) + 1;
	dun_text_init(&t, slash + 1, sizeof c->key - keep);
	dun_text_str(&t, "bd");
	dun_text_i64(&t, seq);
}

static bool sub_is_live(enum dun_sub_status st)
{
	switch (st) {
	case DUN_SUB_TRIALING:
	case DUN_SUB_ACTIVE:
	case DUN_SUB_PAST_DUE:
	case DUN_SUB_UNPAID:
	case DUN_SUB_INCOMPLETE:
	case DUN_SUB_PAUSED:
		return true;
	case DUN_SUB_INCOMPLETE_EXPIRED:
	case DUN_SUB_CANCELED:
		return false;
	}
	return false;
}

enum dun_err dun_plan_decide(const struct dun_state *s, const struct dun_desired *d,
			     struct dun_plan *plan)
{
	struct builder b = {.s = s, .d = d, .plan = plan};
	if (d->skipped)
		return DUN_OK;
	const char *acct = s->account_id;

	/* 1. Provider-side invoice facts. */
	for (int i = 0; i < s->n_invoices; i++) {
		const struct dun_invoice_desired *id = &d->invoices[i];
		const char *inv = s->invoices[i].id;
		if (id->mark_uncollectible)
			add(&b, DUN_C_MARK_UNCOLLECTIBLE, inv, 1);
		if (id->set_bad_debt_amount)
			add(&b, DUN_C_SET_INVOICE_BAD_DEBT_AMOUNT, inv, id->bad_debt_amount_minor);
	}
	/* 2. The bad_debt flag in every store. */
	if (s->has_customer && s->provider_meta_bad_debt != d->provider_meta_bad_debt)
		add(&b, DUN_C_SET_PROVIDER_CUSTOMER_BAD_DEBT, s->customer_id,
		    d->provider_meta_bad_debt);
	if (s->has_customer && s->customer_bad_debt != d->customer_bad_debt)
		add(&b, DUN_C_SET_CUSTOMER_BAD_DEBT, s->customer_id, d->customer_bad_debt);
	if (s->account_bad_debt != d->account_bad_debt)
		add(&b, DUN_C_SET_ACCOUNT_BAD_DEBT, acct, d->account_bad_debt);
	/* The notices that announce a restriction are queued before the
	 * platform writes that enforce it: a plan interrupted in between leaves
	 * the customer told, never restricted without a word. */
	add_emails(&b, false);
	/* 3. The platform. */
	if (d->banned && !s->banned)
		add(&b, DUN_C_BAN, acct, 1);
	if (!d->banned && s->banned)
		add(&b, DUN_C_UNBAN, acct, 0);
	if (d->entitlement != s->entitlement)
		add(&b, DUN_C_SET_ENTITLEMENT, acct, d->entitlement);
	if (d->remove_resource_flags)
		add(&b, DUN_C_REMOVE_RESOURCE_FLAGS, acct, 1);
	/* 4. Subscriptions. */
	if (d->cancel_subscriptions)
		for (int i = 0; i < s->n_subscriptions; i++)
			if (sub_is_live(s->subscriptions[i].status))
				add(&b, DUN_C_CANCEL_SUBSCRIPTION, s->subscriptions[i].id, 1);
	/* 5. Lifting the originals a paid consolidated invoice covers. */
	for (int i = 0; i < s->n_invoices; i++) {
		const struct dun_invoice_desired *id = &d->invoices[i];
		const char *inv = s->invoices[i].id;
		if (id->mark_bad_debt_paid)
			add(&b, DUN_C_MARK_INVOICE_BAD_DEBT_PAID, inv, 1);
		if (id->close_document)
			add(&b, DUN_C_CLOSE_INVOICE_DOCUMENT, inv, 1);
		if (id->disable_paylinks)
			add(&b, DUN_C_DISABLE_PAYLINKS, inv, 1);
		if (id->void_consolidated) {
			/* Keyed as pay-bad-debt keys its voids: one void, whoever asks. */
			struct dun_consequence *c = add(&b, DUN_C_VOID_INVOICE, inv, 1);
			if (c) {
				struct dun_text t;
				dun_text_init(&t, c->key, sizeof c->key);
				dun_text_key_part(&t, acct);
				dun_text_str(&t, "/void_invoice/");
				dun_text_key_part(&t, inv);
			}
		}
	}
	/* 6. Payment retries: the key names the attempt, so each is made once. */
	for (int i = 0; i < s->n_invoices; i++) {
		const struct dun_invoice_desired *id = &d->invoices[i];
		if (!id->retry_due)
			continue;
		struct dun_consequence *c =
		    add(&b, DUN_C_RETRY_PAYMENT, s->invoices[i].id, id->retry_attempt);
		if (c) {
			struct dun_text t;
			dun_text_init(&t, c->key, sizeof c->key);
			dun_text_key_part(&t, acct);
			dun_text_str(&t, "/retry_payment/");
			dun_text_key_part(&t, s->invoices[i].id);
			dun_text_str(&t, "/attempt");
			dun_text_i64(&t, id->retry_attempt);
		}
	}
	if (s->no_successful_payment != d->no_successful_payment)
		add(&b, DUN_C_SET_NO_SUCCESSFUL_PAYMENT, acct, d->no_successful_payment);
	/* 7. The email that announces a lift (resolved) comes after the lift. */
	add_emails(&b, true);
	/* 8. Bookkeeping: episodes, the outcome event, the stage, the recheck. */
	if (d->open_bad_debt_episode)
		episode_key(add(&b, DUN_C_OPEN_BAD_DEBT_EPISODE, acct, d->bad_debt_seq),
			    d->bad_debt_seq);
	if (d->close_bad_debt_episode)
		episode_key(add(&b, DUN_C_CLOSE_BAD_DEBT_EPISODE, acct, d->exit_reason),
			    s->bad_debt_episodes > 0 ? s->bad_debt_episodes : 1);
	if (d->stage != s->stage) {
		struct dun_consequence *c = add(&b, DUN_C_EMIT_OUTCOME_EVENT, acct, d->stage);
		if (c) {
			/* Keyed by the transition: the old stage's since is stable
			 * until SET_STAGE lands, so a retried plan reuses the key. */
			struct dun_text t;
			dun_text_init(&t, c->key, sizeof c->key);
			dun_text_key_part(&t, acct);
			dun_text_str(&t, "/outcome/");
			dun_text_str(&t, dun_stage_name(s->stage));
			dun_text_str(&t, "@");
			dun_text_i64(&t, s->stage_since);
			dun_text_str(&t, "/");
			dun_text_str(&t, dun_stage_name(d->stage));
			c->at = d->stage_since;
		}
	}
	if (d->stage != s->stage || d->episode != s->episode ||
	    d->lifting_since != s->lifting_since) {
		struct dun_consequence *c = add(&b, DUN_C_SET_STAGE, acct, d->stage);
		if (c) {
			c->at = d->stage_since;
			c->lifting_since = d->lifting_since;
		}
	}
	if (d->next_recheck_at != s->next_recheck_at) {
		struct dun_consequence *c =
		    add(&b, DUN_C_SCHEDULE_RECHECK, acct, d->next_recheck_at);
		if (c)
			c->at = d->next_recheck_at;
	}
	return b.overflow ? DUN_E_TOO_BIG : DUN_OK;
}

size_t dun_conseq_format(const struct dun_consequence *c, char *out, size_t out_size)
{
	struct dun_text t;
	dun_text_init(&t, out, out_size);
	dun_text_str(&t, dun_conseq_name(c->type));
	dun_text_str(&t, " ");
	dun_text_str(&t, c->target);
	switch (c->type) {
	case DUN_C_SET_ENTITLEMENT:
		dun_text_str(&t, " ");
		dun_text_str(&t, dun_entitlement_name((enum dun_entitlement)c->value));
		break;
	case DUN_C_SET_STAGE:
	case DUN_C_EMIT_OUTCOME_EVENT:
		dun_text_str(&t, " ");
		dun_text_str(&t, dun_stage_name(c->from));
		dun_text_str(&t, "->");
		dun_text_str(&t, dun_stage_name((enum dun_stage)c->value));
		dun_text_str(&t, " ep");
		dun_text_i64(&t, c->episode);
		break;
	case DUN_C_SEND_EMAIL:
		dun_text_str(&t, " ");
		dun_text_str(&t, dun_email_kind_name(c->kind));
		if (c->cutover)
			dun_text_str(&t, " (cutover: recorded, not sent)");
		break;
	case DUN_C_CLOSE_BAD_DEBT_EPISODE:
		dun_text_str(&t, " ");
		dun_text_str(&t, dun_exit_reason_name((enum dun_exit_reason)c->value));
		break;
	case DUN_C_SCHEDULE_RECHECK:
		dun_text_str(&t, " at=");
		dun_text_i64(&t, c->at);
		break;
	case DUN_C_RETRY_PAYMENT:
		dun_text_str(&t, " attempt=");
		dun_text_i64(&t, c->value);
		break;
	case DUN_C_MARK_UNCOLLECTIBLE:
	case DUN_C_SET_INVOICE_BAD_DEBT_AMOUNT:
	case DUN_C_SET_PROVIDER_CUSTOMER_BAD_DEBT:
	case DUN_C_SET_CUSTOMER_BAD_DEBT:
	case DUN_C_SET_ACCOUNT_BAD_DEBT:
	case DUN_C_BAN:
	case DUN_C_UNBAN:
	case DUN_C_REMOVE_RESOURCE_FLAGS:
	case DUN_C_CANCEL_SUBSCRIPTION:
	case DUN_C_MARK_INVOICE_BAD_DEBT_PAID:
	case DUN_C_CLOSE_INVOICE_DOCUMENT:
	case DUN_C_DISABLE_PAYLINKS:
	case DUN_C_SET_NO_SUCCESSFUL_PAYMENT:
	case DUN_C_OPEN_BAD_DEBT_EPISODE:
	case DUN_C_VOID_INVOICE:
	case DUN_C_CREATE_CONSOLIDATED_INVOICE:
		dun_text_str(&t, " ");
		dun_text_i64(&t, c->value);
		break;
	}
	return t.len;
}
