/*
 * policy.c — EVALUATE: the dunning rules as one pure function.
 *
 * Given one account's snapshot, the policy and the current time, compute
 * what every store should say about the account, and why. The rules, most
 * severe first, first match wins:
 *
 *   bad_debt    an uncollectible invoice no paid consolidated invoice covers,
 *               or delinquent for bad_debt_after (the failing invoices are
 *               then marked uncollectible too);
 *   suspended   delinquent for suspended_after;
 *   restricted  delinquent for restricted_after;
 *   notified    any failing invoice;
 *   none        everything lifted.
 *
 * Upgrade invoices (billing_reason subscription_update by default) are
 * counted separately and capped at upgrade_max_stage, so an unpaid
 * proration never puts an account into bad debt. The in-flight guard holds
 * the current stage (never escalates) while a payment is processing (for at
 * most processing_max: past it the payment counts as failed) or a
 * consolidated invoice was created or paid within lifting_window.
 *
 * Payment retries belong to one owner (retry_owner): the engine, on the
 * retries schedule, or the provider (Stripe's Smart Retries), whose next
 * attempt the mirror carries; then no retry is planned here, and the
 * account is looked at again shortly after that attempt was due, so that
 * its outcome counts even when its webhook is lost.
 *
 * Everything here is a function of its arguments: no clock, no I/O, no
 * allocation. The reasons are the explanation `dunning explain` prints.
 */
#include "policy.h"
#include "text.h"

#include <string.h>

#define DAY 86400

static const char *const retry_owner_names[] = {
#define OWNER_NAME(name, str) [name] = str,
    DUN_RETRY_OWNER_LIST(OWNER_NAME)
#undef OWNER_NAME
};

const char *dun_retry_owner_name(enum dun_retry_owner v)
{
	return (unsigned)v < sizeof retry_owner_names / sizeof retry_owner_names[0]
		   ? retry_owner_names[v]
		   : "?";
}

bool dun_retry_owner_parse(const char *s, enum dun_retry_owner *out)
{
	for (size_t i = 0; i < sizeof retry_owner_names / sizeof retry_owner_names[0]; i++)
		if (strcmp(s, retry_owner_names[i]) == 0) {
			*out = (enum dun_retry_owner)i;
			return true;
		}
	return false;
}

static void add_decline(struct dun_policy *p, enum dun_decline_field f, const char *code,
			enum dun_decline_class cls, int64_t delay)
{
	if (p->n_declines >= DUN_DECLINE_RULES_MAX)
		return;
	struct dun_decline_rule *r = &p->declines[p->n_declines++];
	r->field = f;
	dun_strlcpy(r->code, code, sizeof r->code);
	r->cls = cls;
	r->min_delay_s = delay;
}

void dun_policy_defaults(struct dun_policy *p)
{
	memset(p, 0, sizeof *p);
	p->restricted_after_s = 7 * DAY;
	p->suspended_after_s = 14 * DAY;
	p->bad_debt_after_s = 30 * DAY;
	p->upgrade_reasons[0] = DUN_BILLING_SUBSCRIPTION_UPDATE;
	p->n_upgrade_reasons = 1;
	p->upgrade_max_stage = DUN_STAGE_RESTRICTED;
	p->retry_schedule_s[0] = 1 * DAY;
	p->retry_schedule_s[1] = 3 * DAY;
	p->retry_schedule_s[2] = 5 * DAY;
	p->retry_schedule_s[3] = 7 * DAY;
	p->n_retry_schedule = 4;
	p->max_attempts = 8;
	p->retry_owner = DUN_RETRY_OWNER_ENGINE;
	p->lifting_window_s = 24 * 3600;
	p->processing_max_s = 7 * DAY;
	p->processing_recheck_after_s = 3 * DAY;
	p->skip_segment[DUN_SEGMENT_ENTERPRISE] = true;
	p->skip_segment[DUN_SEGMENT_CONTRACT] = true;
	p->bad_debt_mark_uncollectible = true;
	p->bad_debt_cancel_subscriptions = true;
	p->bad_debt_ban = true;
	p->bad_debt_remove_resource_flags = true;
	p->entitlement[DUN_STAGE_NONE] = DUN_ENTITLEMENT_FULL;
	p->entitlement[DUN_STAGE_NOTIFIED] = DUN_ENTITLEMENT_FULL;
	p->entitlement[DUN_STAGE_RESTRICTED] = DUN_ENTITLEMENT_RESTRICTED;
	p->entitlement[DUN_STAGE_SUSPENDED] = DUN_ENTITLEMENT_SUSPENDED;
	p->entitlement[DUN_STAGE_BAD_DEBT] = DUN_ENTITLEMENT_SUSPENDED;
	p->decline_default = DUN_DECLINE_SOFT;

	const enum dun_decline_field A = DUN_DECLINE_FIELD_ADVICE_CODE;
	const enum dun_decline_field N = DUN_DECLINE_FIELD_NETWORK_ADVICE_CODE;
	const enum dun_decline_field D = DUN_DECLINE_FIELD_DECLINE_CODE;
	const enum dun_decline_class H = DUN_DECLINE_HARD, S = DUN_DECLINE_SOFT;
	add_decline(p, A, "do_not_try_again", H, 0);
	add_decline(p, A, "confirm_card_data", H, 0);
	add_decline(p, A, "try_again_later", S, 0);
	add_decline(p, N, "03", H, 0);
	add_decline(p, N, "21", H, 0);
	add_decline(p, N, "24", S, 3600);
	add_decline(p, N, "25", S, DAY);
	add_decline(p, N, "26", S, 2 * DAY);
	add_decline(p, N, "27", S, 4 * DAY);
	add_decline(p, N, "28", S, 6 * DAY);
	add_decline(p, N, "29", S, 8 * DAY);
	add_decline(p, N, "30", S, 10 * DAY);
	static const char *const hard[] = {
	    "incorrect_number",
	    "lost_card",
	    "pickup_card",
	    "stolen_card",
	    "revocation_of_authorization",
	    "revocation_of_all_authorizations",
	    "authentication_required",
	    "transaction_not_allowed",
	    "highest_risk_level",
	    "expired_card",
	    "invalid_account",
	    "card_not_supported",
	    "fraudulent",
	};
	for (size_t i = 0; i < sizeof hard / sizeof hard[0]; i++)
		add_decline(p, D, hard[i], H, 0);
	static const char *const soft[] = {
	    "insufficient_funds", "processing_error", "issuer_not_available",	"try_again_later",
	    "do_not_honor",	  "generic_decline",  "card_velocity_exceeded",
	};
	for (size_t i = 0; i < sizeof soft / sizeof soft[0]; i++)
		add_decline(p, D, soft[i], S, 0);
}

static bool rule_matches(const struct dun_decline_rule *r, const struct dun_attempt *a)
{
	const char *v = "";
	switch (r->field) {
	case DUN_DECLINE_FIELD_ADVICE_CODE:
		v = a->advice_code;
		break;
	case DUN_DECLINE_FIELD_NETWORK_ADVICE_CODE:
		v = a->network_advice_code;
		break;
	case DUN_DECLINE_FIELD_DECLINE_CODE:
		v = a->decline_code;
		break;
	}
	return v[0] && strcmp(v, r->code) == 0;
}

enum dun_decline_class dun_policy_classify(const struct dun_policy *p, const struct dun_attempt *a,
					   int64_t *min_delay_s)
{
	static const enum dun_decline_field order[] = {
	    DUN_DECLINE_FIELD_ADVICE_CODE,
	    DUN_DECLINE_FIELD_NETWORK_ADVICE_CODE,
	    DUN_DECLINE_FIELD_DECLINE_CODE,
	};
	if (min_delay_s)
		*min_delay_s = 0;
	for (size_t f = 0; f < sizeof order / sizeof order[0]; f++) {
		for (int i = 0; i < p->n_declines; i++) {
			const struct dun_decline_rule *r = &p->declines[i];
			if (r->field != order[f] || !rule_matches(r, a))
				continue;
			if (min_delay_s)
				*min_delay_s = r->min_delay_s;
			return r->cls;
		}
	}
	return p->decline_default;
}

void dun_email_key(char *out, size_t out_size, const char *account_id, enum dun_email_kind kind,
		   const char *scope)
{
	struct dun_text t;
	dun_text_init(&t, out, out_size);
	dun_text_key_part(&t, account_id);
	dun_text_str(&t, "/email/");
	dun_text_str(&t, dun_email_kind_name(kind));
	dun_text_str(&t, "/");
	dun_text_key_part(&t, scope);
}

static const struct dun_sent_email *find_sent(const struct dun_state *s, const char *key)
{
	for (int i = 0; i < s->n_sent_emails; i++)
		if (strcmp(s->sent_emails[i].key, key) == 0)
			return &s->sent_emails[i];
	return NULL;
}

bool dun_state_has_sent(const struct dun_state *s, const char *key)
{
	return find_sent(s, key) != NULL;
}

void dun_stage_email_scope(const struct dun_state *s, const struct dun_desired *d, char *out,
			   size_t out_size)
{
	struct dun_text t;
	dun_text_init(&t, out, out_size);
	if (d->stage_email_kind == DUN_EMAIL_BAD_DEBT) {
		/* Each entry into bad debt opens a bad-debt episode of its own. */
		dun_text_str(&t, "bd");
		dun_text_i64(&t, d->bad_debt_seq);
		return;
	}
	dun_text_str(&t, "ep");
	dun_text_i64(&t, d->episode);
	if (d->stage_email_kind == DUN_EMAIL_RESOLVED || d->stage == s->stage)
		return;
	/*
	 * Entering restricted or suspended. The first entry of the episode
	 * keeps the key earlier releases used ("epN"), so a database they
	 * wrote sends none of its emails again. A later entry (the account
	 * left the stage and came back) is told again, under a key naming the
	 * stage it comes from and since when: stable until the stage itself
	 * is written, so a retried plan reuses it, and new for every entry.
	 */
	char first[128];
	dun_email_key(first, sizeof first, s->account_id, d->stage_email_kind, out);
	const struct dun_sent_email *sent = find_sent(s, first);
	/*
	 * A later entry only if the first email is older than the stage the
	 * account is in now: it was told, then left the stage. An email queued
	 * during the current stage was queued by a plan that did not get as far
	 * as writing the stage (a crash, a failed write after it): the retried
	 * plan is the same entry, under the same key, and sends nothing again.
	 */
	if (!sent || sent->at >= s->stage_since)
		return;
	dun_text_str(&t, "/from-");
	dun_text_str(&t, dun_stage_name(s->stage));
	dun_text_str(&t, "@");
	dun_text_i64(&t, s->stage_since);
}

/* ---- reasons ----------------------------------------------------------- */

static struct dun_text *reason_begin(struct dun_desired *d, const char *rule, struct dun_text *t,
				     bool *overflow)
{
	if (d->n_reasons >= d->reasons_cap) {
		*overflow = true;
		return NULL;
	}
	struct dun_reason *r = &d->reasons[d->n_reasons++];
	dun_strlcpy(r->rule, rule, sizeof r->rule);
	dun_text_init(t, r->text, sizeof r->text);
	return t;
}

static void reason(struct dun_desired *d, bool *overflow, const char *rule, const char *a,
		   const char *b, const char *c)
{
	struct dun_text t;
	if (!reason_begin(d, rule, &t, overflow))
		return;
	dun_text_str(&t, a);
	if (b)
		dun_text_str(&t, b);
	if (c)
		dun_text_str(&t, c);
}

/* ---- per-invoice facts --------------------------------------------------- */

static bool is_upgrade(const struct dun_policy *p, enum dun_billing_reason br)
{
	for (int i = 0; i < p->n_upgrade_reasons; i++)
		if (p->upgrade_reasons[i] == br)
			return true;
	return false;
}

static const struct dun_attempt *last_failed(const struct dun_invoice *inv)
{
	const struct dun_attempt *last = NULL;
	for (int i = 0; i < inv->n_attempts; i++)
		if (inv->attempts[i].status == DUN_ATTEMPT_FAILED &&
		    (!last || inv->attempts[i].created_at >= last->created_at))
			last = &inv->attempts[i];
	return last;
}

/* Whether a payment in flight has been so for longer than the hold allows. */
static bool processing_expired(const struct dun_policy *p, const struct dun_attempt *a, int64_t now)
{
	return a->status == DUN_ATTEMPT_PROCESSING && p->processing_max_s > 0 &&
	       now - a->created_at >= p->processing_max_s;
}

/*
 * The first failed attempt's time; a payment in flight past processing_max
 * counts as failed at its creation ("escalate as if it had failed").
 */
static int64_t first_failed_at(const struct dun_policy *p, const struct dun_invoice *inv,
			       int64_t now)
{
	int64_t first = 0;
	for (int i = 0; i < inv->n_attempts; i++) {
		const struct dun_attempt *a = &inv->attempts[i];
		if ((a->status == DUN_ATTEMPT_FAILED || processing_expired(p, a, now)) &&
		    (!first || a->created_at < first))
			first = a->created_at;
	}
	return first;
}

bool dun_policy_payment_recheck_due(const struct dun_policy *p, const struct dun_invoice *inv,
				    int64_t now)
{
	if (inv->status != DUN_INVOICE_OPEN || p->processing_recheck_after_s <= 0)
		return false;
	for (int i = 0; i < inv->n_attempts; i++)
		if (inv->attempts[i].status == DUN_ATTEMPT_PROCESSING &&
		    now - inv->attempts[i].created_at >= p->processing_recheck_after_s)
			return true;
	return false;
}

bool dun_policy_provider_attempt_overdue(const struct dun_policy *p, const struct dun_invoice *inv,
					 int64_t now)
{
	return p->retry_owner == DUN_RETRY_OWNER_STRIPE && inv->status == DUN_INVOICE_OPEN &&
	       !inv->is_consolidated && inv->next_payment_attempt_at > 0 &&
	       now - inv->next_payment_attempt_at >= DUN_PROVIDER_ATTEMPT_GRACE_S;
}

/*
 * The oldest payment in flight that still holds the stage (0: none), and
 * whether one is in flight past processing_max.
 */
static int64_t processing_since(const struct dun_policy *p, const struct dun_invoice *inv,
				int64_t now, bool *expired)
{
	int64_t since = 0;
	*expired = false;
	for (int i = 0; i < inv->n_attempts; i++) {
		const struct dun_attempt *a = &inv->attempts[i];
		if (a->status != DUN_ATTEMPT_PROCESSING)
			continue;
		if (processing_expired(p, a, now))
			*expired = true;
		else if (!since || a->created_at < since)
			since = a->created_at > 0 ? a->created_at : 1;
	}
	return since;
}

/*
 * Why a bad-debt episode (bad_debt) or a dunning episode ends; the debt is
 * the invoices with a bad_debt_amount, or those that failed. Paid: the
 * customer paid, a consolidated
 * invoice or an original directly, since the account entered bad debt.
 * Written off: the merchant voided an original (or credited it in full,
 * which leaves it paid with nothing paid). Other: neither (the debt left
 * the account some other way, e.g. the invoice is gone from the mirror).
 */
static enum dun_exit_reason exit_reason(const struct dun_state *s,
					const struct dun_invoice_desired *inv_d, bool bad_debt,
					int64_t paid_consolidated_at, const char **how)
{
	if (paid_consolidated_at && paid_consolidated_at >= s->stage_since) {
		*how = " (the customer paid a consolidated invoice)";
		return DUN_EXIT_PAID;
	}
	bool written_off = false;
	for (int i = 0; i < s->n_invoices; i++) {
		const struct dun_invoice *inv = &s->invoices[i];
		if (inv->is_consolidated ||
		    (bad_debt ? !inv->meta_has_bad_debt_amount : !inv_d[i].first_failed_at))
			continue; /* not part of the debt */
		if (inv->status == DUN_INVOICE_PAID && inv->amount_paid_minor > 0 &&
		    inv->paid_at >= s->stage_since) {
			*how = " (the customer paid the original invoice)";
			return DUN_EXIT_PAID;
		}
		if (inv->status == DUN_INVOICE_VOID ||
		    (inv->status == DUN_INVOICE_PAID && inv->amount_paid_minor == 0))
			written_off = true;
	}
	if (written_off) {
		*how = " (voided or credited by the merchant)";
		return DUN_EXIT_WRITTEN_OFF;
	}
	*how = " (neither paid nor written off)";
	return DUN_EXIT_OTHER;
}

/*
 * Whether anything c (a consolidated invoice) covers is still owed: an
 * original that is open with an amount remaining or uncollectible and
 * not covered by a paid consolidated invoice. A covered original the
 * mirror does not know counts as owed: never void on a guess.
 */
static bool owes_any(const struct dun_state *s, const struct dun_invoice_desired *inv_d,
		     const struct dun_invoice *c)
{
	for (int k = 0; k < c->n_covers; k++) {
		int j = 0;
		while (j < s->n_invoices && strcmp(s->invoices[j].id, c->covers[k]) != 0)
			j++;
		if (j == s->n_invoices)
			return true;
		const struct dun_invoice *o = &s->invoices[j];
		if ((o->status == DUN_INVOICE_OPEN && o->amount_remaining_minor > 0) ||
		    inv_d[j].unresolved_uncollectible)
			return true;
	}
	return c->n_covers == 0; /* covering nothing known: leave it to a person */
}

/* Index of the paid consolidated invoice covering id, or -1. */
static int covering_paid(const struct dun_state *s, const char *id)
{
	for (int i = 0; i < s->n_invoices; i++) {
		const struct dun_invoice *c = &s->invoices[i];
		if (!c->is_consolidated || c->status != DUN_INVOICE_PAID)
			continue;
		for (int k = 0; k < c->n_covers; k++)
			if (strcmp(c->covers[k], id) == 0)
				return i;
	}
	return -1;
}

static enum dun_stage stage_for_days(const struct dun_policy *p, int64_t delinquent_s)
{
	if (delinquent_s >= p->bad_debt_after_s)
		return DUN_STAGE_BAD_DEBT;
	if (delinquent_s >= p->suspended_after_s)
		return DUN_STAGE_SUSPENDED;
	if (delinquent_s >= p->restricted_after_s)
		return DUN_STAGE_RESTRICTED;
	return DUN_STAGE_NOTIFIED;
}

/* The next stage boundary after now for a delinquency that began at since. */
static int64_t next_boundary(const struct dun_policy *p, int64_t since, int64_t now,
			     enum dun_stage cap)
{
	const int64_t bounds[] = {p->restricted_after_s, p->suspended_after_s, p->bad_debt_after_s};
	const enum dun_stage stages[] = {DUN_STAGE_RESTRICTED, DUN_STAGE_SUSPENDED,
					 DUN_STAGE_BAD_DEBT};
	for (int i = 0; i < 3; i++) {
		if (stages[i] > cap)
			break;
		if (since + bounds[i] > now)
			return since + bounds[i];
	}
	return 0;
}

static void min_time(int64_t *acc, int64_t t)
{
	if (t > 0 && (*acc == 0 || t < *acc))
		*acc = t;
}

static enum dun_stage max_stage(enum dun_stage a, enum dun_stage b)
{
	return a > b ? a : b;
}

static void set_since_reason(struct dun_desired *d, bool *of, const char *rule, const char *what,
			     const struct dun_invoice *inv, int64_t since, int64_t now)
{
	struct dun_text t;
	if (!reason_begin(d, rule, &t, of))
		return;
	dun_text_str(&t, what);
	dun_text_str(&t, " ");
	dun_text_str(&t, inv->id);
	dun_text_str(&t, " (");
	dun_text_money(&t, inv->amount_remaining_minor, inv->currency);
	dun_text_str(&t, ", ");
	dun_text_str(&t, dun_billing_reason_name(inv->billing_reason));
	dun_text_str(&t, ") delinquent for ");
	dun_text_duration(&t, now - since);
}

/* ---- EVALUATE ------------------------------------------------------------ */

enum dun_err dun_policy_evaluate(const struct dun_state *s, const struct dun_policy *p, int64_t now,
				 struct dun_desired *d)
{
	struct dun_invoice_desired *inv_d = d->invoices;
	struct dun_reason *reasons = d->reasons;
	int reasons_cap = d->reasons_cap;
	bool of = false;
	struct dun_text t;

	memset(d, 0, sizeof *d);
	d->invoices = inv_d;
	d->reasons = reasons;
	d->reasons_cap = reasons_cap;
	/* No invoices: inv_d may be NULL, and memset(NULL, 0, 0) is undefined. */
	if (s->n_invoices > 0)
		memset(inv_d, 0, sizeof *inv_d * (size_t)s->n_invoices);

	/* Skipped accounts: desired == current, so the plan is empty. */
	d->stage = d->computed_stage = s->stage;
	d->stage_since = s->stage_since;
	d->episode = s->episode;
	d->account_bad_debt = s->account_bad_debt;
	d->customer_bad_debt = s->customer_bad_debt;
	d->provider_meta_bad_debt = s->provider_meta_bad_debt;
	d->banned = s->banned;
	d->entitlement = s->entitlement;
	d->no_successful_payment = s->no_successful_payment;
	d->lifting_since = s->lifting_since;
	d->next_recheck_at = s->next_recheck_at;
	if (p->skip_segment[s->segment]) {
		d->skipped = true;
		reason(d, &of, "skip", "segment ", dun_segment_name(s->segment),
		       " is never touched by dunning");
		return of ? DUN_E_TOO_BIG : DUN_OK;
	}
	if (s->kill_switch) {
		d->skipped = true;
		reason(d, &of, "skip", "kill switch is on for this account", NULL, NULL);
		return of ? DUN_E_TOO_BIG : DUN_OK;
	}
	d->next_recheck_at = 0;

	/* Pass 1: per-invoice facts. */
	bool ever_paid = false, any_failed = false, processing = false;
	int64_t held_since = 0; /* the oldest payment in flight that holds */
	int64_t full_since = 0, upg_since = 0;
	const struct dun_invoice *full_oldest = NULL, *upg_oldest = NULL;
	const struct dun_invoice *uncollectible = NULL;
	int64_t lifting_since = 0;
	int64_t paid_consolidated_at = 0;
	for (int i = 0; i < s->n_invoices; i++) {
		const struct dun_invoice *inv = &s->invoices[i];
		struct dun_invoice_desired *id = &inv_d[i];
		if (inv->status == DUN_INVOICE_PAID && inv->amount_paid_minor > 0)
			ever_paid = true;
		if (inv->is_consolidated) {
			/* A consolidated invoice only matters for coverage and lifting. */
			int64_t mark = 0;
			if (inv->status == DUN_INVOICE_OPEN)
				mark = inv->created_at;
			else if (inv->status == DUN_INVOICE_PAID) {
				mark = inv->paid_at;
				if (inv->paid_at > paid_consolidated_at)
					paid_consolidated_at = inv->paid_at;
			}
			if (mark && now - mark < p->lifting_window_s &&
			    (!lifting_since || mark < lifting_since))
				lifting_since = mark;
			continue;
		}
		id->upgrade = is_upgrade(p, inv->billing_reason);
		id->first_failed_at = first_failed_at(p, inv, now);
		if (id->first_failed_at)
			any_failed = true;
		const struct dun_attempt *lf = last_failed(inv);
		id->hard_decline = lf && dun_policy_classify(p, lf, NULL) == DUN_DECLINE_HARD;
		bool expired = false;
		int64_t in_flight = processing_since(p, inv, now, &expired);
		id->processing = inv->status == DUN_INVOICE_OPEN && in_flight > 0;
		id->processing_expired = inv->status == DUN_INVOICE_OPEN && expired;
		if (id->processing_expired)
			reason(d, &of, "processing", "a payment of invoice ", inv->id,
			       " has been in flight longer than processing_max: counted as failed");
		if (id->processing) {
			processing = true;
			if (!held_since || in_flight < held_since)
				held_since = in_flight;
		}
		id->failing = inv->status == DUN_INVOICE_OPEN && inv->amount_remaining_minor > 0 &&
			      id->first_failed_at > 0;
		if (inv->status == DUN_INVOICE_UNCOLLECTIBLE) {
			id->covered_by_paid =
			    covering_paid(s, inv->id) >= 0 || inv->meta_bad_debt_paid;
			id->unresolved_uncollectible = !id->covered_by_paid;
		}
		if (!id->failing && !id->unresolved_uncollectible)
			continue;
		int64_t since = id->first_failed_at ? id->first_failed_at : inv->created_at;
		if (id->upgrade) {
			if (!upg_since || since < upg_since) {
				upg_since = since;
				upg_oldest = inv;
			}
		} else {
			if (!full_since || since < full_since) {
				full_since = since;
				full_oldest = inv;
			}
			if (id->unresolved_uncollectible && !uncollectible)
				uncollectible = inv;
		}
	}

	/* Pass 2: the stage the rules give. */
	enum dun_stage full = DUN_STAGE_NONE, upg = DUN_STAGE_NONE;
	bool by_days = false;
	if (uncollectible) {
		full = DUN_STAGE_BAD_DEBT;
		reason(d, &of, "bad_debt", "uncollectible invoice ", uncollectible->id,
		       " is not covered by a paid consolidated invoice");
	}
	if (full_since) {
		enum dun_stage by = stage_for_days(p, now - full_since);
		if (by == DUN_STAGE_BAD_DEBT)
			by_days = true;
		if (by > full) {
			full = by;
			set_since_reason(d, &of, dun_stage_name(by), "oldest failing invoice",
					 full_oldest, full_since, now);
			if (reason_begin(d, dun_stage_name(by), &t, &of)) {
				dun_text_str(&t, "thresholds: restricted ");
				dun_text_duration(&t, p->restricted_after_s);
				dun_text_str(&t, ", suspended ");
				dun_text_duration(&t, p->suspended_after_s);
				dun_text_str(&t, ", bad_debt ");
				dun_text_duration(&t, p->bad_debt_after_s);
			}
		}
	}
	if (upg_since) {
		upg = stage_for_days(p, now - upg_since);
		enum dun_stage cap = p->upgrade_max_stage;
		if (cap >= DUN_STAGE_BAD_DEBT)
			cap = DUN_STAGE_SUSPENDED;
		if (upg > cap) {
			if (reason_begin(d, "upgrade_cap", &t, &of)) {
				dun_text_str(&t, "upgrade invoice ");
				dun_text_str(&t, upg_oldest->id);
				dun_text_str(&t, " would reach ");
				dun_text_str(&t, dun_stage_name(upg));
				dun_text_str(&t, "; upgrades stop at ");
				dun_text_str(&t, dun_stage_name(cap));
			}
			upg = cap;
		}
		if (upg > full)
			set_since_reason(d, &of, dun_stage_name(upg), "upgrade invoice", upg_oldest,
					 upg_since, now);
	}
	d->computed_stage = max_stage(full, upg);
	if (full_since && upg_since)
		d->delinquent_since = full_since < upg_since ? full_since : upg_since;
	else
		d->delinquent_since = full_since ? full_since : upg_since;
	d->days_delinquent = d->delinquent_since ? (now - d->delinquent_since) / DAY : 0;
	if (d->computed_stage == DUN_STAGE_NONE)
		reason(d, &of, "none", "no failing or unresolved uncollectible invoice", NULL,
		       NULL);

	/* Pass 3: the in-flight guard never lets the stage rise. */
	d->lifting_since = lifting_since;
	if (lifting_since) /* lifting ends by itself when the window closes */
		min_time(&d->next_recheck_at, lifting_since + p->lifting_window_s);
	d->stage = d->computed_stage;
	if (d->computed_stage > s->stage && (processing || lifting_since)) {
		d->held = true;
		d->stage = s->stage;
		/* A payment in flight holds at most processing_max: look again
		 * then, and re-read it from the provider at recheck_after. */
		if (processing && p->processing_max_s > 0)
			min_time(&d->next_recheck_at, held_since + p->processing_max_s);
		if (processing && p->processing_recheck_after_s > 0 &&
		    held_since + p->processing_recheck_after_s > now)
			min_time(&d->next_recheck_at, held_since + p->processing_recheck_after_s);
		if (reason_begin(d, "held", &t, &of)) {
			dun_text_str(&t, "escalation to ");
			dun_text_str(&t, dun_stage_name(d->computed_stage));
			dun_text_str(&t, " held at ");
			dun_text_str(&t, dun_stage_name(s->stage));
			if (processing) {
				dun_text_str(&t, ": a payment is processing for ");
				dun_text_duration(&t, now - held_since);
				if (p->processing_max_s > 0) {
					dun_text_str(&t, " of at most ");
					dun_text_duration(&t, p->processing_max_s);
				}
			} else {
				dun_text_str(&t, ": lifting for ");
				dun_text_duration(&t, now - lifting_since);
				dun_text_str(&t, " of the ");
				dun_text_duration(&t, p->lifting_window_s);
				dun_text_str(&t, " window");
			}
		}
	}

	/* Episode and since. */
	d->episode = s->episode;
	d->stage_since = s->stage_since;
	if (d->stage != s->stage) {
		d->stage_since = now;
		if (s->stage == DUN_STAGE_NONE)
			d->episode = s->episode + 1;
	}

	/* Account-level facts that follow the stage. */
	bool bd = d->stage == DUN_STAGE_BAD_DEBT;
	d->account_bad_debt = d->customer_bad_debt = d->provider_meta_bad_debt = bd;
	d->banned = bd && p->bad_debt_ban;
	d->entitlement = p->entitlement[d->stage];
	d->remove_resource_flags = bd && p->bad_debt_remove_resource_flags && s->has_resource_flags;
	d->cancel_subscriptions = bd && p->bad_debt_cancel_subscriptions;
	d->no_successful_payment = any_failed && !ever_paid;
	d->open_bad_debt_episode = bd && !s->bad_debt_episode_open;
	d->bad_debt_seq = s->bad_debt_episode_open
			      ? (s->bad_debt_episodes > 0 ? s->bad_debt_episodes : 1)
			      : s->bad_debt_episodes + 1;
	d->close_bad_debt_episode = !bd && s->bad_debt_episode_open;
	if (d->close_bad_debt_episode) {
		const char *how = NULL;
		d->exit_reason = exit_reason(s, inv_d, true, paid_consolidated_at, &how);
		reason(d, &of, "lift", "bad debt ends: ", dun_exit_reason_name(d->exit_reason),
		       how);
	} else if (d->stage == DUN_STAGE_NONE && s->stage != DUN_STAGE_NONE) {
		/* A dunning episode ends: the resolved email says how. */
		const char *how = NULL;
		d->exit_reason = exit_reason(s, inv_d, false, paid_consolidated_at, &how);
	}
	/*
	 * An open consolidated invoice when nothing is owed any more (the
	 * originals were paid directly, voided or credited) would let the
	 * same debt be paid twice: it is voided in the same recompute.
	 */
	for (int i = 0; i < s->n_invoices; i++)
		if (s->invoices[i].is_consolidated && s->invoices[i].status == DUN_INVOICE_OPEN &&
		    !owes_any(s, inv_d, &s->invoices[i])) {
			inv_d[i].void_consolidated = true;
			reason(d, &of, "void_consolidated", "consolidated invoice ",
			       s->invoices[i].id, " is voided: nothing it covers is owed any more");
		}
	if (d->stage >= DUN_STAGE_RESTRICTED) {
		d->stage_email_kind = d->stage == DUN_STAGE_RESTRICTED	? DUN_EMAIL_RESTRICTED
				      : d->stage == DUN_STAGE_SUSPENDED ? DUN_EMAIL_SUSPENDED
									: DUN_EMAIL_BAD_DEBT;
		d->send_stage_email = true;
	} else if (d->stage == DUN_STAGE_NONE && s->stage != DUN_STAGE_NONE && s->episode > 0) {
		d->stage_email_kind = DUN_EMAIL_RESOLVED;
		d->send_stage_email = true;
	}
	if (d->send_stage_email) {
		char key[128];
		dun_stage_email_scope(s, d, d->stage_email_scope, sizeof d->stage_email_scope);
		dun_email_key(key, sizeof key, s->account_id, d->stage_email_kind,
			      d->stage_email_scope);
		if (dun_state_has_sent(s, key))
			d->send_stage_email = false;
	}

	/* Pass 4: per-invoice consequences, retries and the next recheck. */
	bool provider_retries = p->retry_owner == DUN_RETRY_OWNER_STRIPE;
	const struct dun_invoice *provider_next = NULL; /* its earliest next attempt */
	const struct dun_invoice *provider_done = NULL; /* failing, no attempt ahead */
	for (int i = 0; i < s->n_invoices; i++) {
		const struct dun_invoice *inv = &s->invoices[i];
		struct dun_invoice_desired *id = &inv_d[i];
		if (inv->is_consolidated)
			continue;
		if (bd && !id->upgrade) {
			id->mark_uncollectible =
			    by_days && id->failing && p->bad_debt_mark_uncollectible;
			if (id->mark_uncollectible || id->unresolved_uncollectible) {
				int64_t amt = inv->amount_remaining_minor;
				if (amt <= 0)
					amt = inv->amount_due_minor - inv->amount_paid_minor;
				id->bad_debt_amount_minor = amt;
				id->set_bad_debt_amount = !inv->meta_has_bad_debt_amount ||
							  inv->meta_bad_debt_amount_minor != amt;
			}
		}
		if (id->covered_by_paid) {
			id->mark_bad_debt_paid = !inv->meta_bad_debt_paid;
			id->close_document = !inv->has_doc || !inv->doc_closed;
			id->disable_paylinks = !inv->has_doc || inv->doc_paylinks_enabled;
		}
		if (!id->failing || id->mark_uncollectible)
			continue;
		/* Per-invoice notice while dunning below bad debt. */
		if (!bd && d->stage >= DUN_STAGE_NOTIFIED) {
			char key[128];
			id->notice_kind = id->hard_decline ? DUN_EMAIL_CARD_UPDATE_REQUIRED
							   : DUN_EMAIL_PAYMENT_FAILED;
			dun_email_key(key, sizeof key, s->account_id, id->notice_kind, inv->id);
			id->notice = !dun_state_has_sent(s, key);
		}
		/* No retry while a payment may still be in flight, however long. */
		if (id->processing || id->processing_expired)
			continue;
		if (provider_retries) {
			/*
			 * The provider retries. Its outcome arrives as a webhook;
			 * look again an hour after the attempt was due in case
			 * that webhook is lost (GATHER then reads the invoice:
			 * dun_policy_provider_attempt_overdue).
			 */
			int64_t next = inv->next_payment_attempt_at;
			id->next_retry_at = next;
			if (!next) {
				if (!provider_done)
					provider_done = inv;
				continue;
			}
			if (!provider_next || next < provider_next->next_payment_attempt_at)
				provider_next = inv;
			if (next + DUN_PROVIDER_ATTEMPT_GRACE_S > now)
				min_time(&d->next_recheck_at, next + DUN_PROVIDER_ATTEMPT_GRACE_S);
			continue;
		}
		/* Retries. */
		int made =
		    inv->attempt_count > inv->n_attempts ? inv->attempt_count : inv->n_attempts;
		if (made >= p->max_attempts)
			continue;
		const struct dun_attempt *lf = last_failed(inv);
		int64_t delay = 0;
		enum dun_decline_class cls = dun_policy_classify(p, lf, &delay);
		if (cls == DUN_DECLINE_HARD) {
			/* Only a card known to differ from the declined one is worth a try. */
			if (s->default_payment_method[0] && lf->payment_method[0] &&
			    strcmp(s->default_payment_method, lf->payment_method) != 0) {
				id->retry_due = true;
				id->retry_attempt = made + 1;
				id->next_retry_at = now;
			}
			continue;
		}
		int done = made - 1; /* retries already made after the first attempt */
		if (done < 0)
			done = 0;
		if (done >= p->n_retry_schedule)
			continue;
		/*
		 * Due on the schedule, but never sooner after the last attempt
		 * than the schedule's own spacing: an account looked at late
		 * catches up one retry at a time, not with a burst of charges.
		 */
		int64_t due = id->first_failed_at + p->retry_schedule_s[done];
		int64_t spacing =
		    p->retry_schedule_s[done] - (done > 0 ? p->retry_schedule_s[done - 1] : 0);
		if (lf->created_at + spacing > due)
			due = lf->created_at + spacing;
		if (lf->created_at + delay > due)
			due = lf->created_at + delay;
		id->next_retry_at = due;
		id->retry_attempt = made + 1;
		if (due <= now)
			id->retry_due = true;
		else
			min_time(&d->next_recheck_at, due);
	}

	if (provider_next && reason_begin(d, "retries", &t, &of)) {
		dun_text_str(&t, "Stripe owns payment retries: its next attempt of ");
		dun_text_str(&t, provider_next->id);
		if (provider_next->next_payment_attempt_at > now) {
			dun_text_str(&t, " in ");
			dun_text_duration(&t, provider_next->next_payment_attempt_at - now);
		} else {
			dun_text_str(&t, " was due ");
			dun_text_duration(&t, now - provider_next->next_payment_attempt_at);
			dun_text_str(&t, " ago");
		}
	} else if (provider_done) {
		reason(d, &of, "retries", "Stripe owns payment retries: none is scheduled for ",
		       provider_done->id, " (its retries ended, or the decline is not retried)");
	}

	/* The next stage boundary is when the outcome would change by itself. */
	if (!d->held && d->stage < DUN_STAGE_BAD_DEBT) {
		if (full_since)
			min_time(&d->next_recheck_at,
				 next_boundary(p, full_since, now, DUN_STAGE_BAD_DEBT));
		if (upg_since)
			min_time(&d->next_recheck_at,
				 next_boundary(p, upg_since, now, p->upgrade_max_stage));
	}
	if (d->next_recheck_at && reason_begin(d, "recheck", &t, &of)) {
		dun_text_str(&t, "next change possible in ");
		dun_text_duration(&t, d->next_recheck_at - now);
	}
	return of ? DUN_E_TOO_BIG : DUN_OK;
}
