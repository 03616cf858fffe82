/*
 * run_golden.c — the golden cases of the pure core, one JSON file per case.
 *
 * Each file in the cases directory describes one account at one moment
 * (state, now, policy) and what the core must make of it (stage, plan lines,
 * reasons, next recheck); tests/golden/README.md documents the format. The
 * runner builds a struct dun_state from the JSON, runs EVALUATE and DECIDE
 * exactly as the engine does, and compares the plan line by line, in order,
 * as dun_conseq_format() renders it.
 *
 * Every case also checks the promise at the heart of DESIGN.md: a plan,
 * once applied, leaves nothing to do. The runner applies the plan to its
 * in-memory state (what each consequence would change in its store, see
 * apply_one()), evaluates and decides again at the same instant, and
 * requires an empty second plan. A payment retry is applied as a new
 * attempt in flight (status processing) on the invoice, which is what the
 * provider reports right after the applier asked for the retry. Like the
 * real applier, the simulation applies a "once" consequence (email, retry,
 * outcome event, episode open/close) at most once per idempotency key; a
 * case can list the keys already applied in its past.
 *
 * A case marked "known_bug" describes behaviour believed wrong in the core:
 * its failure is counted as a known bug, not as a failure, and its passing
 * is a failure (the mark must then be removed), so the list stays honest.
 *
 * JSON is read here, in the test, with jansson; the core never sees it.
 *
 * Usage: run_golden CASES_DIR [NAME_SUBSTRING...]
 */
#include "config/policy_file.h"
#include "core/plan.h"
#include "core/policy.h"
#include "core/text.h"
#include "util/clock.h"

#include <dirent.h>
#include <jansson.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define INVOICES_MAX 32
#define ATTEMPTS_MAX 40
#define SUBS_MAX     16
#define SENT_MAX     128
#define REASONS_MAX  64
#define PLAN_MAX     256
#define LINE_MAX_LEN 256
#define MSG_MAX	     512
#define EXPECT_MAX   128

/* The account the case describes; the state's arrays point in here. */
struct world {
	struct dun_state s;
	struct dun_subscription subs[SUBS_MAX];
	struct dun_invoice inv[INVOICES_MAX];
	struct dun_attempt att[INVOICES_MAX][ATTEMPTS_MAX];
	struct dun_sent_email sent[SENT_MAX];
	/* the applier's log of "once" consequences already applied (runner-only) */
	int n_once;
	char once[SENT_MAX][DUN_KEY_MAX];
};

/* One case being read: where we are in the file, and the first error. */
struct reader {
	const char *file;
	int64_t now;
	bool failed;
	char msg[MSG_MAX];
};

__attribute__((format(printf, 3, 4))) static bool bad(struct reader *r, const char *path,
						      const char *fmt, ...)
{
	if (r->failed)
		return false;
	r->failed = true;
	int n = snprintf(r->msg, sizeof r->msg, "%s: ", path);
	if (n < 0 || (size_t)n >= sizeof r->msg)
		return false;
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(r->msg + n, sizeof r->msg - (size_t)n, fmt, ap);
	va_end(ap);
	return false;
}

/* ---- scalar values ------------------------------------------------------- */

static bool get_bool(struct reader *r, const char *path, json_t *v, bool *out)
{
	if (!json_is_boolean(v))
		return bad(r, path, "expected true or false");
	*out = json_is_true(v);
	return true;
}

static bool get_i64(struct reader *r, const char *path, json_t *v, int64_t *out)
{
	if (!json_is_integer(v))
		return bad(r, path, "expected an integer");
	*out = (int64_t)json_integer_value(v);
	return true;
}

static bool get_int(struct reader *r, const char *path, json_t *v, int *out)
{
	int64_t x = 0;
	if (!get_i64(r, path, v, &x))
		return false;
	if (x < 0 || x > 1000000)
		return bad(r, path, "out of range");
	*out = (int)x;
	return true;
}

static bool get_str(struct reader *r, const char *path, json_t *v, char *out, size_t size)
{
	if (!json_is_string(v))
		return bad(r, path, "expected a string");
	const char *s = json_string_value(v);
	if (strlen(s) >= size)
		return bad(r, path, "longer than %zu characters", size - 1);
	memcpy(out, s, strlen(s) + 1);
	return true;
}

/*
 * A time: unix seconds, "YYYY-MM-DD[THH:MM:SSZ]", "now", or "now-10d" /
 * "now+1h" (a policy-file duration before or after the case's now).
 */
static bool time_expr(const char *s, int64_t now, int64_t *out)
{
	if (strncmp(s, "now", 3) == 0) {
		int64_t d = 0;
		if (s[3] == '\0') {
			*out = now;
			return true;
		}
		if ((s[3] != '-' && s[3] != '+') || !dun_policy_file_parse_duration(s + 4, &d))
			return false;
		*out = s[3] == '-' ? now - d : now + d;
		return true;
	}
	return dun_clock_parse(s, out);
}

static bool get_time(struct reader *r, const char *path, json_t *v, int64_t *out)
{
	if (json_is_integer(v))
		return get_i64(r, path, v, out);
	if (!json_is_string(v) || !time_expr(json_string_value(v), r->now, out))
		return bad(r, path,
			   "expected a time: unix seconds, \"2026-03-01T00:00:00Z\", \"now\", "
			   "\"now-10d\" or \"now+1h\"");
	return true;
}

#define GET_ENUM(r, path, v, parse, out)                         \
	(json_is_string(v) && parse(json_string_value(v), (out)) \
	     ? true                                              \
	     : bad((r), (path), "unknown value %s",              \
		   json_is_string(v) ? json_string_value(v) : "(not a string)"))

static bool billing_reason_parse(const char *s, enum dun_billing_reason *out)
{
	for (int i = 0; i < DUN_BILLING_REASON__COUNT; i++)
		if (strcmp(dun_billing_reason_name((enum dun_billing_reason)i), s) == 0) {
			*out = (enum dun_billing_reason)i;
			return true;
		}
	return false;
}

static bool is_object(struct reader *r, const char *path, json_t *v)
{
	return json_is_object(v) ? true : bad(r, path, "expected an object");
}

static bool is_array(struct reader *r, const char *path, json_t *v, size_t max)
{
	if (!json_is_array(v))
		return bad(r, path, "expected an array");
	if (json_array_size(v) > max)
		return bad(r, path, "more than %zu entries", max);
	return true;
}

/* ---- the state ----------------------------------------------------------- */

static bool read_account(struct reader *r, json_t *o, struct dun_state *s)
{
	const char *k;
	json_t *v;
	char p[128];
	if (!is_object(r, "state.account", o))
		return false;
	json_object_foreach(o, k, v)
	{
		snprintf(p, sizeof p, "state.account.%s", k);
		bool ok;
		if (strcmp(k, "id") == 0)
			ok = get_str(r, p, v, s->account_id, sizeof s->account_id);
		else if (strcmp(k, "segment") == 0)
			ok = GET_ENUM(r, p, v, dun_segment_parse, &s->segment);
		else if (strcmp(k, "kill_switch") == 0)
			ok = get_bool(r, p, v, &s->kill_switch);
		else if (strcmp(k, "bad_debt") == 0)
			ok = get_bool(r, p, v, &s->account_bad_debt);
		else if (strcmp(k, "no_successful_payment") == 0)
			ok = get_bool(r, p, v, &s->no_successful_payment);
		else
			ok = bad(r, p, "unknown key");
		if (!ok)
			return false;
	}
	return true;
}

static bool read_customer(struct reader *r, json_t *o, struct dun_state *s)
{
	const char *k;
	json_t *v;
	char p[128];
	if (json_is_null(o)) {
		s->has_customer = false;
		s->customer_id[0] = '\0';
		s->default_payment_method[0] = '\0';
		return true;
	}
	if (!is_object(r, "state.customer", o))
		return false;
	json_object_foreach(o, k, v)
	{
		snprintf(p, sizeof p, "state.customer.%s", k);
		bool ok;
		if (strcmp(k, "id") == 0)
			ok = get_str(r, p, v, s->customer_id, sizeof s->customer_id);
		else if (strcmp(k, "bad_debt") == 0)
			ok = get_bool(r, p, v, &s->customer_bad_debt);
		else if (strcmp(k, "provider_meta_bad_debt") == 0)
			ok = get_bool(r, p, v, &s->provider_meta_bad_debt);
		else if (strcmp(k, "default_payment_method") == 0)
			ok = get_str(r, p, v, s->default_payment_method,
				     sizeof s->default_payment_method);
		else
			ok = bad(r, p, "unknown key");
		if (!ok)
			return false;
	}
	return true;
}

static bool read_platform(struct reader *r, json_t *o, struct dun_state *s)
{
	const char *k;
	json_t *v;
	char p[128];
	if (!is_object(r, "state.platform", o))
		return false;
	json_object_foreach(o, k, v)
	{
		snprintf(p, sizeof p, "state.platform.%s", k);
		bool ok;
		if (strcmp(k, "banned") == 0)
			ok = get_bool(r, p, v, &s->banned);
		else if (strcmp(k, "entitlement") == 0)
			ok = GET_ENUM(r, p, v, dun_entitlement_parse, &s->entitlement);
		else if (strcmp(k, "has_resource_flags") == 0)
			ok = get_bool(r, p, v, &s->has_resource_flags);
		else
			ok = bad(r, p, "unknown key");
		if (!ok)
			return false;
	}
	return true;
}

static bool read_dunning(struct reader *r, json_t *o, struct dun_state *s)
{
	const char *k;
	json_t *v;
	char p[128];
	if (!is_object(r, "state.dunning", o))
		return false;
	json_object_foreach(o, k, v)
	{
		snprintf(p, sizeof p, "state.dunning.%s", k);
		bool ok;
		if (strcmp(k, "stage") == 0)
			ok = GET_ENUM(r, p, v, dun_stage_parse, &s->stage);
		else if (strcmp(k, "stage_since") == 0)
			ok = get_time(r, p, v, &s->stage_since);
		else if (strcmp(k, "episode") == 0)
			ok = get_i64(r, p, v, &s->episode);
		else if (strcmp(k, "lifting_since") == 0)
			ok = get_time(r, p, v, &s->lifting_since);
		else if (strcmp(k, "next_recheck_at") == 0)
			ok = get_time(r, p, v, &s->next_recheck_at);
		else if (strcmp(k, "bad_debt_episodes") == 0)
			ok = get_i64(r, p, v, &s->bad_debt_episodes);
		else if (strcmp(k, "bad_debt_episode_open") == 0)
			ok = get_bool(r, p, v, &s->bad_debt_episode_open);
		else
			ok = bad(r, p, "unknown key");
		if (!ok)
			return false;
	}
	return true;
}

static bool read_subscriptions(struct reader *r, json_t *a, struct world *w)
{
	char p[128];
	if (!is_array(r, "state.subscriptions", a, SUBS_MAX))
		return false;
	for (size_t i = 0; i < json_array_size(a); i++) {
		json_t *o = json_array_get(a, i), *v;
		const char *k;
		struct dun_subscription *sub = &w->subs[i];
		snprintf(p, sizeof p, "state.subscriptions[%zu]", i);
		if (!is_object(r, p, o))
			return false;
		snprintf(sub->id, sizeof sub->id, "sub_%zu", i + 1);
		sub->status = DUN_SUB_ACTIVE;
		json_object_foreach(o, k, v)
		{
			snprintf(p, sizeof p, "state.subscriptions[%zu].%s", i, k);
			bool ok;
			if (strcmp(k, "id") == 0)
				ok = get_str(r, p, v, sub->id, sizeof sub->id);
			else if (strcmp(k, "status") == 0)
				ok = GET_ENUM(r, p, v, dun_sub_status_parse, &sub->status);
			else
				ok = bad(r, p, "unknown key");
			if (!ok)
				return false;
		}
	}
	w->s.n_subscriptions = (int)json_array_size(a);
	return true;
}

static bool read_attempt(struct reader *r, const char *base, json_t *o, struct dun_attempt *at,
			 const char *invoice_id, size_t n)
{
	const char *k;
	json_t *v;
	char p[256];
	bool have_time = false;
	if (!is_object(r, base, o))
		return false;
	snprintf(at->id, sizeof at->id, "py_%s_%zu", invoice_id, n + 1);
	at->status = DUN_ATTEMPT_FAILED;
	snprintf(at->payment_method, sizeof at->payment_method, "pm_1");
	json_object_foreach(o, k, v)
	{
		snprintf(p, sizeof p, "%s.%s", base, k);
		bool ok;
		if (strcmp(k, "id") == 0)
			ok = get_str(r, p, v, at->id, sizeof at->id);
		else if (strcmp(k, "created_at") == 0)
			ok = have_time = get_time(r, p, v, &at->created_at);
		else if (strcmp(k, "status") == 0)
			ok = GET_ENUM(r, p, v, dun_attempt_status_parse, &at->status);
		else if (strcmp(k, "payment_method") == 0)
			ok = get_str(r, p, v, at->payment_method, sizeof at->payment_method);
		else if (strcmp(k, "decline_code") == 0)
			ok = get_str(r, p, v, at->decline_code, sizeof at->decline_code);
		else if (strcmp(k, "advice_code") == 0)
			ok = get_str(r, p, v, at->advice_code, sizeof at->advice_code);
		else if (strcmp(k, "network_advice_code") == 0)
			ok = get_str(r, p, v, at->network_advice_code,
				     sizeof at->network_advice_code);
		else
			ok = bad(r, p, "unknown key");
		if (!ok)
			return false;
	}
	if (!have_time)
		return bad(r, base, "created_at is required");
	return true;
}

/* Which invoice fields the case gave, so the rest can get defaults. */
struct invoice_given {
	bool amount_paid, amount_remaining, attempt_count, created_at, paid_at;
};

static bool read_invoice_key(struct reader *r, const char *p, const char *k, json_t *v,
			     struct dun_invoice *inv, struct invoice_given *g)
{
	if (strcmp(k, "id") == 0)
		return get_str(r, p, v, inv->id, sizeof inv->id);
	if (strcmp(k, "subscription_id") == 0)
		return get_str(r, p, v, inv->subscription_id, sizeof inv->subscription_id);
	if (strcmp(k, "status") == 0)
		return GET_ENUM(r, p, v, dun_invoice_status_parse, &inv->status);
	if (strcmp(k, "billing_reason") == 0)
		return GET_ENUM(r, p, v, billing_reason_parse, &inv->billing_reason);
	if (strcmp(k, "amount_due_minor") == 0)
		return get_i64(r, p, v, &inv->amount_due_minor);
	if (strcmp(k, "amount_paid_minor") == 0)
		return g->amount_paid = get_i64(r, p, v, &inv->amount_paid_minor);
	if (strcmp(k, "amount_remaining_minor") == 0)
		return g->amount_remaining = get_i64(r, p, v, &inv->amount_remaining_minor);
	if (strcmp(k, "currency") == 0)
		return get_str(r, p, v, inv->currency, sizeof inv->currency);
	if (strcmp(k, "attempt_count") == 0)
		return g->attempt_count = get_int(r, p, v, &inv->attempt_count);
	if (strcmp(k, "next_payment_attempt_at") == 0)
		return get_time(r, p, v, &inv->next_payment_attempt_at);
	if (strcmp(k, "created_at") == 0)
		return g->created_at = get_time(r, p, v, &inv->created_at);
	if (strcmp(k, "paid_at") == 0)
		return g->paid_at = get_time(r, p, v, &inv->paid_at);
	if (strcmp(k, "hosted_invoice_url") == 0)
		return get_str(r, p, v, inv->hosted_invoice_url, sizeof inv->hosted_invoice_url);
	if (strcmp(k, "meta_bad_debt_amount_minor") == 0)
		return inv->meta_has_bad_debt_amount =
			   get_i64(r, p, v, &inv->meta_bad_debt_amount_minor);
	if (strcmp(k, "meta_bad_debt_paid") == 0)
		return get_bool(r, p, v, &inv->meta_bad_debt_paid);
	if (strcmp(k, "is_consolidated") == 0)
		return get_bool(r, p, v, &inv->is_consolidated);
	if (strcmp(k, "covers") == 0) {
		if (!is_array(r, p, v, DUN_COVERS_MAX))
			return false;
		for (size_t i = 0; i < json_array_size(v); i++)
			if (!get_str(r, p, json_array_get(v, i), inv->covers[i],
				     sizeof inv->covers[i]))
				return false;
		inv->n_covers = (int)json_array_size(v);
		return true;
	}
	if (strcmp(k, "has_doc") == 0)
		return get_bool(r, p, v, &inv->has_doc);
	if (strcmp(k, "doc_closed") == 0)
		return get_bool(r, p, v, &inv->doc_closed);
	if (strcmp(k, "doc_paylinks_enabled") == 0)
		return get_bool(r, p, v, &inv->doc_paylinks_enabled);
	if (strcmp(k, "attempts") == 0)
		return true; /* read after the id is known */
	return bad(r, p, "unknown key");
}

static bool read_invoices(struct reader *r, json_t *a, struct world *w)
{
	char p[160];
	if (!is_array(r, "state.invoices", a, INVOICES_MAX))
		return false;
	for (size_t i = 0; i < json_array_size(a); i++) {
		json_t *o = json_array_get(a, i), *v;
		const char *k;
		struct dun_invoice *inv = &w->inv[i];
		struct invoice_given g = {false, false, false, false, false};
		snprintf(p, sizeof p, "state.invoices[%zu]", i);
		if (!is_object(r, p, o))
			return false;
		snprintf(inv->id, sizeof inv->id, "in_%zu", i + 1);
		inv->status = DUN_INVOICE_OPEN;
		inv->billing_reason = DUN_BILLING_SUBSCRIPTION_CYCLE;
		inv->amount_due_minor = 2000;
		snprintf(inv->currency, sizeof inv->currency, "usd");
		inv->has_doc = true;
		inv->doc_paylinks_enabled = true;
		json_object_foreach(o, k, v)
		{
			snprintf(p, sizeof p, "state.invoices[%zu].%s", i, k);
			if (!read_invoice_key(r, p, k, v, inv, &g))
				return false;
		}
		/* Attempts, oldest first. */
		json_t *atts = json_object_get(o, "attempts");
		if (atts) {
			snprintf(p, sizeof p, "state.invoices[%zu].attempts", i);
			if (!is_array(r, p, atts, ATTEMPTS_MAX - 4))
				return false;
			for (size_t n = 0; n < json_array_size(atts); n++) {
				snprintf(p, sizeof p, "state.invoices[%zu].attempts[%zu]", i, n);
				if (!read_attempt(r, p, json_array_get(atts, n), &w->att[i][n],
						  inv->id, n))
					return false;
			}
			inv->n_attempts = (int)json_array_size(atts);
		}
		inv->attempts = w->att[i];
		/* Defaults that follow from the other fields. */
		if (!g.amount_paid)
			inv->amount_paid_minor =
			    inv->status == DUN_INVOICE_PAID ? inv->amount_due_minor : 0;
		if (!g.amount_remaining)
			inv->amount_remaining_minor =
			    (inv->status == DUN_INVOICE_OPEN ||
			     inv->status == DUN_INVOICE_UNCOLLECTIBLE)
				? inv->amount_due_minor - inv->amount_paid_minor
				: 0;
		if (!g.attempt_count)
			inv->attempt_count = inv->n_attempts;
		if (!g.created_at)
			inv->created_at = inv->n_attempts ? inv->attempts[0].created_at : r->now;
		if (!g.paid_at && inv->status == DUN_INVOICE_PAID)
			inv->paid_at = inv->created_at;
	}
	w->s.n_invoices = (int)json_array_size(a);
	return true;
}

/* Keys of once-consequences the applier has already applied. */
static bool read_once_keys(struct reader *r, json_t *a, struct world *w)
{
	char p[64];
	if (!is_array(r, "state.once_keys_applied", a, SENT_MAX / 2))
		return false;
	for (size_t i = 0; i < json_array_size(a); i++) {
		snprintf(p, sizeof p, "state.once_keys_applied[%zu]", i);
		if (!get_str(r, p, json_array_get(a, i), w->once[i], sizeof w->once[i]))
			return false;
	}
	w->n_once = (int)json_array_size(a);
	return true;
}

/*
 * An email log key; a short "kind/scope" means "<account>/email/kind/scope".
 * Either the key alone (queued at time 0, before any stage) or an object
 * {"key": ..., "at": time} saying when it was queued.
 */
static bool read_sent(struct reader *r, json_t *a, struct world *w)
{
	char p[64];
	if (!is_array(r, "state.sent_emails", a, SENT_MAX / 2))
		return false;
	for (size_t i = 0; i < json_array_size(a); i++) {
		char key[128];
		json_t *v = json_array_get(a, i);
		w->sent[i].at = 0;
		snprintf(p, sizeof p, "state.sent_emails[%zu]", i);
		if (json_is_object(v)) {
			char tp[80];
			if (json_object_size(v) != 2)
				return bad(r, p, "expected {\"key\": ..., \"at\": time}");
			snprintf(tp, sizeof tp, "%s.at", p);
			if (!get_time(r, tp, json_object_get(v, "at"), &w->sent[i].at))
				return false;
			snprintf(tp, sizeof tp, "%s.key", p);
			if (!get_str(r, tp, json_object_get(v, "key"), key, sizeof key))
				return false;
		} else if (!get_str(r, p, v, key, sizeof key)) {
			return false;
		}
		if (strstr(key, "/email/"))
			snprintf(w->sent[i].key, sizeof w->sent[i].key, "%s", key);
		else if (snprintf(w->sent[i].key, sizeof w->sent[i].key, "%s/email/%s",
				  w->s.account_id, key) >= (int)sizeof w->sent[i].key)
			return bad(r, p, "too long");
	}
	w->s.n_sent_emails = (int)json_array_size(a);
	return true;
}

static bool read_state(struct reader *r, json_t *o, struct world *w)
{
	struct dun_state *s = &w->s;
	dun_state_init(s);
	snprintf(s->account_id, sizeof s->account_id, "acct_1");
	s->has_customer = true;
	snprintf(s->customer_id, sizeof s->customer_id, "cus_1");
	snprintf(s->default_payment_method, sizeof s->default_payment_method, "pm_1");
	s->subscriptions = w->subs;
	s->invoices = w->inv;
	s->sent_emails = w->sent;
	if (!is_object(r, "state", o))
		return false;
	/* The account first: other defaults (email keys) use its id. */
	json_t *v = json_object_get(o, "account");
	if (v && !read_account(r, v, s))
		return false;
	const char *k;
	json_object_foreach(o, k, v)
	{
		bool ok;
		if (strcmp(k, "account") == 0)
			ok = true;
		else if (strcmp(k, "customer") == 0)
			ok = read_customer(r, v, s);
		else if (strcmp(k, "platform") == 0)
			ok = read_platform(r, v, s);
		else if (strcmp(k, "dunning") == 0)
			ok = read_dunning(r, v, s);
		else if (strcmp(k, "subscriptions") == 0)
			ok = read_subscriptions(r, v, w);
		else if (strcmp(k, "invoices") == 0)
			ok = read_invoices(r, v, w);
		else if (strcmp(k, "sent_emails") == 0)
			ok = read_sent(r, v, w);
		else if (strcmp(k, "once_keys_applied") == 0)
			ok = read_once_keys(r, v, w);
		else {
			char p[80];
			snprintf(p, sizeof p, "state.%s", k);
			ok = bad(r, p, "unknown key");
		}
		if (!ok)
			return false;
	}
	return true;
}

/* ---- the policy ---------------------------------------------------------- */

static bool append(char *buf, size_t size, size_t *len, const char *s)
{
	size_t n = strlen(s);
	if (*len + n + 1 > size)
		return false;
	memcpy(buf + *len, s, n + 1);
	*len += n;
	return true;
}

static bool ini_value(json_t *v, char *out, size_t size)
{
	if (json_is_string(v))
		return (size_t)snprintf(out, size, "%s", json_string_value(v)) < size;
	if (json_is_integer(v))
		return (size_t)snprintf(out, size, "%lld", (long long)json_integer_value(v)) < size;
	if (json_is_boolean(v))
		return (size_t)snprintf(out, size, "%s", json_is_true(v) ? "true" : "false") < size;
	return false;
}

/*
 * "policy": a policy file path (relative to the cases directory), or inline
 * overrides shaped like the file: {"section": {"key": value}}. The inline
 * form is turned into policy file text and loaded by the real loader, so a
 * case cannot set a policy the file format could not express.
 */
static bool read_policy(struct reader *r, json_t *v, const char *dir, struct dun_policy *p)
{
	char err[512];
	if (!v || json_is_null(v)) {
		dun_policy_defaults(p);
		return true;
	}
	if (json_is_string(v)) {
		char path[1024];
		snprintf(path, sizeof path, "%s/%s", dir, json_string_value(v));
		if (dun_policy_file_load(path, p, err, sizeof err) != DUN_OK)
			return bad(r, "policy", "%s", err);
		return true;
	}
	if (!json_is_object(v))
		return bad(r, "policy", "expected a file name or an object of sections");
	char text[8192], item[256];
	size_t len = 0;
	const char *section, *key;
	json_t *keys, *val;
	text[0] = '\0';
	json_object_foreach(v, section, keys)
	{
		if (!json_is_object(keys))
			return bad(r, "policy", "[%s] must be an object of keys", section);
		snprintf(item, sizeof item, "[%s]\n", section);
		if (!append(text, sizeof text, &len, item))
			return bad(r, "policy", "too long");
		json_object_foreach(keys, key, val)
		{
			char value[1024];
			if (json_is_array(val)) {
				size_t vl = 0;
				value[0] = '\0';
				if (json_array_size(val) == 0)
					append(value, sizeof value, &vl, "none");
				for (size_t i = 0; i < json_array_size(val); i++) {
					if (!ini_value(json_array_get(val, i), item, sizeof item) ||
					    (i && !append(value, sizeof value, &vl, ", ")) ||
					    !append(value, sizeof value, &vl, item))
						return bad(r, "policy", "[%s] %s: bad list",
							   section, key);
				}
			} else if (!ini_value(val, value, sizeof value))
				return bad(r, "policy",
					   "[%s] %s: expected a string, number, "
					   "boolean or list",
					   section, key);
			if (!append(text, sizeof text, &len, key) ||
			    !append(text, sizeof text, &len, " = ") ||
			    !append(text, sizeof text, &len, value) ||
			    !append(text, sizeof text, &len, "\n"))
				return bad(r, "policy", "too long");
		}
	}
	char name[300];
	snprintf(name, sizeof name, "%s policy", r->file);
	if (dun_policy_file_load_string(text, name, p, err, sizeof err) != DUN_OK)
		return bad(r, "policy", "%s", err);
	return true;
}

/* ---- expectations -------------------------------------------------------- */

struct expect {
	enum dun_stage stage;
	bool has_computed_stage;
	enum dun_stage computed_stage;
	bool has_held, held;
	bool has_skipped, skipped;
	bool has_next_recheck;
	int64_t next_recheck_at;
	int n_plan;
	char plan[EXPECT_MAX][LINE_MAX_LEN];
	int n_reasons;
	char reasons[EXPECT_MAX][LINE_MAX_LEN];
	char known_bug[2048];
};

/* Replace each "{now}", "{now-3d}", "{now+6d}" in s by its unix seconds. */
static bool expand(struct reader *r, const char *path, const char *s, char *out, size_t size)
{
	size_t len = 0;
	out[0] = '\0';
	while (*s) {
		const char *open = strchr(s, '{');
		if (!open)
			return append(out, size, &len, s) ? true : bad(r, path, "too long");
		const char *close = strchr(open, '}');
		if (!close)
			return bad(r, path, "'{' without '}'");
		char expr[64], num[32];
		size_t n = (size_t)(open - s);
		if (len + n + 1 > size)
			return bad(r, path, "too long");
		memcpy(out + len, s, n);
		len += n;
		out[len] = '\0';
		n = (size_t)(close - open - 1);
		if (n >= sizeof expr)
			return bad(r, path, "bad time in {}");
		memcpy(expr, open + 1, n);
		expr[n] = '\0';
		int64_t t;
		if (!time_expr(expr, r->now, &t))
			return bad(r, path, "bad time {%s}", expr);
		snprintf(num, sizeof num, "%lld", (long long)t);
		if (!append(out, size, &len, num))
			return bad(r, path, "too long");
		s = close + 1;
	}
	return true;
}

static bool read_lines(struct reader *r, const char *path, json_t *a, char (*out)[LINE_MAX_LEN],
		       int *n)
{
	if (!is_array(r, path, a, EXPECT_MAX))
		return false;
	for (size_t i = 0; i < json_array_size(a); i++) {
		json_t *v = json_array_get(a, i);
		if (!json_is_string(v))
			return bad(r, path, "entry %zu is not a string", i);
		if (!expand(r, path, json_string_value(v), out[i], LINE_MAX_LEN))
			return false;
	}
	*n = (int)json_array_size(a);
	return true;
}

static bool read_expect(struct reader *r, json_t *o, struct expect *e)
{
	const char *k;
	json_t *v;
	bool have_stage = false, have_plan = false;
	if (!is_object(r, "expect", o))
		return false;
	json_object_foreach(o, k, v)
	{
		char p[80];
		snprintf(p, sizeof p, "expect.%s", k);
		bool ok;
		if (strcmp(k, "stage") == 0)
			ok = have_stage = GET_ENUM(r, p, v, dun_stage_parse, &e->stage);
		else if (strcmp(k, "computed_stage") == 0)
			ok = e->has_computed_stage =
			    GET_ENUM(r, p, v, dun_stage_parse, &e->computed_stage);
		else if (strcmp(k, "held") == 0)
			ok = e->has_held = get_bool(r, p, v, &e->held);
		else if (strcmp(k, "skipped") == 0)
			ok = e->has_skipped = get_bool(r, p, v, &e->skipped);
		else if (strcmp(k, "next_recheck_at") == 0)
			ok = e->has_next_recheck = get_time(r, p, v, &e->next_recheck_at);
		else if (strcmp(k, "plan") == 0)
			ok = have_plan = read_lines(r, p, v, e->plan, &e->n_plan);
		else if (strcmp(k, "reasons") == 0)
			ok = read_lines(r, p, v, e->reasons, &e->n_reasons);
		else
			ok = bad(r, p, "unknown key");
		if (!ok)
			return false;
	}
	if (!have_stage)
		return bad(r, "expect", "stage is required");
	if (!have_plan)
		return bad(r, "expect", "plan is required (use [] for an empty plan)");
	return true;
}

/* ---- running ------------------------------------------------------------- */

struct run {
	struct dun_invoice_desired inv_d[INVOICES_MAX];
	struct dun_reason reasons[REASONS_MAX];
	struct dun_desired d;
	struct dun_consequence items[PLAN_MAX];
	struct dun_plan plan;
	char lines[PLAN_MAX][LINE_MAX_LEN];
	enum dun_err eval_rc, decide_rc;
};

static void run_core(const struct world *w, const struct dun_policy *p, int64_t now,
		     struct run *out)
{
	memset(&out->d, 0, sizeof out->d);
	out->d.invoices = out->inv_d;
	out->d.reasons = out->reasons;
	out->d.reasons_cap = REASONS_MAX;
	out->eval_rc = dun_policy_evaluate(&w->s, p, now, &out->d);
	out->plan.items = out->items;
	out->plan.n = 0;
	out->plan.cap = PLAN_MAX;
	out->decide_rc = dun_plan_decide(&w->s, &out->d, &out->plan);
	for (int i = 0; i < out->plan.n; i++)
		dun_conseq_format(&out->items[i], out->lines[i], LINE_MAX_LEN);
}

static struct dun_invoice *find_invoice(struct world *w, const char *id, int *index)
{
	for (int i = 0; i < w->s.n_invoices; i++)
		if (strcmp(w->inv[i].id, id) == 0) {
			*index = i;
			return &w->inv[i];
		}
	return NULL;
}

/*
 * Apply one consequence to the in-memory stores, as the applier would.
 * Returns false (with a message) when the consequence names something the
 * state does not hold.
 */
static bool apply_one(struct world *w, const struct dun_consequence *c, int64_t now, char *msg,
		      size_t msg_size)
{
	struct dun_state *s = &w->s;
	int idx = -1;
	struct dun_invoice *inv = NULL;
	switch (c->type) {
	case DUN_C_MARK_UNCOLLECTIBLE:
	case DUN_C_SET_INVOICE_BAD_DEBT_AMOUNT:
	case DUN_C_MARK_INVOICE_BAD_DEBT_PAID:
	case DUN_C_CLOSE_INVOICE_DOCUMENT:
	case DUN_C_DISABLE_PAYLINKS:
	case DUN_C_RETRY_PAYMENT:
	case DUN_C_VOID_INVOICE:
		inv = find_invoice(w, c->target, &idx);
		if (!inv) {
			snprintf(msg, msg_size, "%s names unknown invoice %s",
				 dun_conseq_name(c->type), c->target);
			return false;
		}
		break;
	case DUN_C_SET_PROVIDER_CUSTOMER_BAD_DEBT:
	case DUN_C_SET_CUSTOMER_BAD_DEBT:
	case DUN_C_SET_ACCOUNT_BAD_DEBT:
	case DUN_C_BAN:
	case DUN_C_UNBAN:
	case DUN_C_SET_ENTITLEMENT:
	case DUN_C_REMOVE_RESOURCE_FLAGS:
	case DUN_C_CANCEL_SUBSCRIPTION:
	case DUN_C_SET_NO_SUCCESSFUL_PAYMENT:
	case DUN_C_SEND_EMAIL:
	case DUN_C_OPEN_BAD_DEBT_EPISODE:
	case DUN_C_CLOSE_BAD_DEBT_EPISODE:
	case DUN_C_EMIT_OUTCOME_EVENT:
	case DUN_C_SET_STAGE:
	case DUN_C_SCHEDULE_RECHECK:
		break;
	case DUN_C_CREATE_CONSOLIDATED_INVOICE:
		/* Only the pay-bad-debt request builds it; the policy never does. */
		snprintf(msg, msg_size, "the policy planned %s, which only pay-bad-debt may",
			 dun_conseq_name(c->type));
		return false;
	}
	switch (c->type) {
	case DUN_C_MARK_UNCOLLECTIBLE:
		inv->status = DUN_INVOICE_UNCOLLECTIBLE;
		break;
	case DUN_C_SET_INVOICE_BAD_DEBT_AMOUNT:
		inv->meta_has_bad_debt_amount = true;
		inv->meta_bad_debt_amount_minor = c->value;
		break;
	case DUN_C_SET_PROVIDER_CUSTOMER_BAD_DEBT:
		s->provider_meta_bad_debt = c->value != 0;
		break;
	case DUN_C_SET_CUSTOMER_BAD_DEBT:
		s->customer_bad_debt = c->value != 0;
		break;
	case DUN_C_SET_ACCOUNT_BAD_DEBT:
		s->account_bad_debt = c->value != 0;
		break;
	case DUN_C_BAN:
		s->banned = true;
		break;
	case DUN_C_UNBAN:
		s->banned = false;
		break;
	case DUN_C_SET_ENTITLEMENT:
		s->entitlement = (enum dun_entitlement)c->value;
		break;
	case DUN_C_REMOVE_RESOURCE_FLAGS:
		s->has_resource_flags = false;
		break;
	case DUN_C_CANCEL_SUBSCRIPTION: {
		bool found = false;
		for (int i = 0; i < s->n_subscriptions; i++)
			if (strcmp(w->subs[i].id, c->target) == 0) {
				w->subs[i].status = DUN_SUB_CANCELED;
				found = true;
			}
		if (!found) {
			snprintf(msg, msg_size, "cancel_subscription names unknown subscription %s",
				 c->target);
			return false;
		}
		break;
	}
	case DUN_C_MARK_INVOICE_BAD_DEBT_PAID:
		inv->meta_bad_debt_paid = true;
		break;
	case DUN_C_CLOSE_INVOICE_DOCUMENT:
		inv->has_doc = true;
		inv->doc_closed = true;
		break;
	case DUN_C_DISABLE_PAYLINKS:
		inv->has_doc = true;
		inv->doc_paylinks_enabled = false;
		break;
	case DUN_C_RETRY_PAYMENT: {
		/* The provider now reports the retry in flight. */
		if (inv->n_attempts >= ATTEMPTS_MAX) {
			snprintf(msg, msg_size, "too many attempts on %s", inv->id);
			return false;
		}
		struct dun_attempt *a = &w->att[idx][inv->n_attempts];
		memset(a, 0, sizeof *a);
		snprintf(a->id, sizeof a->id, "py_retry_%lld", (long long)c->value);
		a->created_at = now;
		a->status = DUN_ATTEMPT_PROCESSING;
		snprintf(a->payment_method, sizeof a->payment_method, "%s",
			 s->default_payment_method);
		inv->n_attempts++;
		if (inv->attempt_count < (int)c->value)
			inv->attempt_count = (int)c->value;
		break;
	}
	case DUN_C_SET_NO_SUCCESSFUL_PAYMENT:
		s->no_successful_payment = c->value != 0;
		break;
	case DUN_C_SEND_EMAIL:
		if (s->n_sent_emails >= SENT_MAX) {
			snprintf(msg, msg_size, "too many emails");
			return false;
		}
		snprintf(w->sent[s->n_sent_emails++].key, sizeof w->sent[0].key, "%.127s", c->key);
		break;
	case DUN_C_OPEN_BAD_DEBT_EPISODE:
		s->bad_debt_episode_open = true;
		s->bad_debt_episodes = c->value;
		break;
	case DUN_C_CLOSE_BAD_DEBT_EPISODE:
		s->bad_debt_episode_open = false;
		break;
	case DUN_C_EMIT_OUTCOME_EVENT:
		break; /* an event, not a state */
	case DUN_C_SET_STAGE:
		s->stage = (enum dun_stage)c->value;
		s->stage_since = c->at;
		s->episode = c->episode;
		s->lifting_since = c->lifting_since;
		break;
	case DUN_C_SCHEDULE_RECHECK:
		s->next_recheck_at = c->at;
		break;
	case DUN_C_VOID_INVOICE:
		inv->status = DUN_INVOICE_VOID;
		inv->amount_remaining_minor = 0;
		break;
	case DUN_C_CREATE_CONSOLIDATED_INVOICE:
		break; /* refused above */
	}
	return true;
}

static void print_lines(const char *title, char (*lines)[LINE_MAX_LEN], int n,
			char (*other)[LINE_MAX_LEN], int n_other)
{
	printf("    %s (%d):\n", title, n);
	for (int i = 0; i < n; i++) {
		bool same = i < n_other && strcmp(lines[i], other[i]) == 0;
		printf("      %s %s\n", same ? " " : "*", lines[i]);
	}
}

static void print_reasons(const struct dun_desired *d)
{
	printf("    reasons:\n");
	for (int i = 0; i < d->n_reasons; i++)
		printf("      %s: %s\n", d->reasons[i].rule, d->reasons[i].text);
}

/* Compare; print what differs. Returns the number of differences. */
static int compare(struct expect *e, struct run *got, int64_t now)
{
	int diffs = 0;
	const struct dun_desired *d = &got->d;
	if (got->eval_rc != DUN_OK || got->decide_rc != DUN_OK) {
		printf("    evaluate: %s, decide: %s\n", dun_err_name(got->eval_rc),
		       dun_err_name(got->decide_rc));
		diffs++;
	}
	if (d->stage != e->stage) {
		printf("    stage: expected %s, got %s\n", dun_stage_name(e->stage),
		       dun_stage_name(d->stage));
		diffs++;
	}
	if (e->has_computed_stage && d->computed_stage != e->computed_stage) {
		printf("    computed_stage: expected %s, got %s\n",
		       dun_stage_name(e->computed_stage), dun_stage_name(d->computed_stage));
		diffs++;
	}
	if (e->has_held && d->held != e->held) {
		printf("    held: expected %s, got %s\n", e->held ? "true" : "false",
		       d->held ? "true" : "false");
		diffs++;
	}
	if (e->has_skipped && d->skipped != e->skipped) {
		printf("    skipped: expected %s, got %s\n", e->skipped ? "true" : "false",
		       d->skipped ? "true" : "false");
		diffs++;
	}
	if (e->has_next_recheck && d->next_recheck_at != e->next_recheck_at) {
		printf("    next_recheck_at: expected %lld (now%+lld), got %lld (now%+lld)\n",
		       (long long)e->next_recheck_at, (long long)(e->next_recheck_at - now),
		       (long long)d->next_recheck_at, (long long)(d->next_recheck_at - now));
		diffs++;
	}
	bool plan_same = got->plan.n == e->n_plan;
	for (int i = 0; plan_same && i < e->n_plan; i++)
		plan_same = strcmp(e->plan[i], got->lines[i]) == 0;
	if (!plan_same) {
		printf("    plan differs (* marks the lines that differ):\n");
		print_lines("expected", e->plan, e->n_plan, got->lines, got->plan.n);
		print_lines("actual", got->lines, got->plan.n, e->plan, e->n_plan);
		diffs++;
	}
	bool reasons_ok = true;
	for (int i = 0; i < e->n_reasons; i++) {
		bool found = false;
		for (int k = 0; k < d->n_reasons && !found; k++) {
			char line[DUN_REASON_RULE_MAX + DUN_REASON_TEXT_MAX + 4];
			snprintf(line, sizeof line, "%s: %s", d->reasons[k].rule,
				 d->reasons[k].text);
			found = strstr(line, e->reasons[i]) != NULL;
		}
		if (!found) {
			printf("    no reason contains \"%s\"\n", e->reasons[i]);
			reasons_ok = false;
			diffs++;
		}
	}
	if (!reasons_ok || diffs)
		print_reasons(d);
	return diffs;
}

/* Apply the plan, decide again at the same instant, require nothing to do. */
static int check_idempotent(struct world *w, const struct dun_policy *p, int64_t now,
			    const struct run *first, struct run *second)
{
	char msg[MSG_MAX];
	for (int i = 0; i < first->plan.n; i++) {
		const struct dun_consequence *c = &first->items[i];
		/* Like the applier: a once-consequence is applied once per key, ever. */
		if (dun_conseq_is_once(c->type)) {
			bool seen = false;
			for (int k = 0; k < w->n_once && !seen; k++)
				seen = strcmp(w->once[k], c->key) == 0;
			if (seen)
				continue;
			if (w->n_once >= SENT_MAX) {
				printf("    applying the plan: too many once keys\n");
				return 1;
			}
			snprintf(w->once[w->n_once++], sizeof w->once[0], "%s", c->key);
		}
		if (!apply_one(w, c, now, msg, sizeof msg)) {
			printf("    applying the plan: %s\n", msg);
			return 1;
		}
	}
	run_core(w, p, now, second);
	if (second->plan.n == 0 && second->eval_rc == DUN_OK && second->decide_rc == DUN_OK)
		return 0;
	printf("    not idempotent: after applying the plan, a second run plans:\n");
	for (int i = 0; i < second->plan.n; i++)
		printf("        %s\n", second->lines[i]);
	print_reasons(&second->d);
	return 1;
}

enum outcome { PASSED, FAILED, KNOWN_BUG, BUG_FIXED };

static enum outcome run_case(const char *dir, const char *name)
{
	char path[1024];
	snprintf(path, sizeof path, "%s/%s", dir, name);
	struct reader r = {.file = name};
	json_error_t jerr;
	struct world *w = calloc(1, sizeof *w);
	struct expect *e = calloc(1, sizeof *e);
	struct run *first = calloc(1, sizeof *first), *second = calloc(1, sizeof *second);
	struct dun_policy *policy = calloc(1, sizeof *policy);
	json_t *root = NULL;
	enum outcome result = FAILED;
	if (!w || !e || !first || !second || !policy) {
		printf("FAIL %s: out of memory\n", name);
		goto free_all;
	}
	root = json_load_file(path, JSON_REJECT_DUPLICATES, &jerr);
	if (!root) {
		printf("FAIL %s: line %d: %s\n", name, jerr.line, jerr.text);
		goto free_all;
	}
	/* now first: every time in the case may be relative to it. */
	json_t *now = json_object_get(root, "now");
	if (!now) {
		printf("FAIL %s: now is required\n", name);
		goto free_all;
	}
	r.now = 0;
	if (!get_time(&r, "now", now, &r.now)) {
		printf("FAIL %s: %s\n", name, r.msg);
		goto free_all;
	}
	const char *k;
	json_t *v;
	bool have_desc = false, have_state = false, have_expect = false;
	json_object_foreach(root, k, v)
	{
		if (strcmp(k, "description") == 0)
			have_desc = json_is_string(v) || bad(&r, k, "expected a string");
		else if (strcmp(k, "now") == 0) {
			/* read above */
		} else if (strcmp(k, "policy") == 0)
			read_policy(&r, v, dir, policy);
		else if (strcmp(k, "state") == 0)
			have_state = read_state(&r, v, w);
		else if (strcmp(k, "expect") == 0)
			have_expect = read_expect(&r, v, e);
		else if (strcmp(k, "known_bug") == 0) {
			if (!json_is_string(v) || !json_string_length(v))
				bad(&r, k, "expected an explanation");
			else
				snprintf(e->known_bug, sizeof e->known_bug, "%s",
					 json_string_value(v));
		} else
			bad(&r, k, "unknown key");
		if (r.failed)
			break;
	}
	if (!r.failed && !json_object_get(root, "policy"))
		dun_policy_defaults(policy);
	if (!r.failed && (!have_desc || !have_state || !have_expect))
		bad(&r, "case", "description, state and expect are required");
	if (r.failed) {
		printf("FAIL %s: malformed case: %s\n", name, r.msg);
		goto free_all;
	}

	printf("---- %s: %s\n", name, json_string_value(json_object_get(root, "description")));
	run_core(w, policy, r.now, first);
	int diffs = compare(e, first, r.now);
	diffs += check_idempotent(w, policy, r.now, first, second);
	if (e->known_bug[0]) {
		if (diffs) {
			printf("KNOWN BUG %s: %s\n", name, e->known_bug);
			result = KNOWN_BUG;
		} else {
			printf("FAIL %s: marked known_bug but passes; remove the mark\n", name);
			result = BUG_FIXED;
		}
	} else if (diffs) {
		printf("FAIL %s\n", name);
	} else {
		printf("ok %s\n", name);
		result = PASSED;
	}

free_all:
	json_decref(root);
	free(policy);
	free(second);
	free(first);
	free(e);
	free(w);
	return result;
}

static int by_name(const void *a, const void *b)
{
	return strcmp(*(const char *const *)a, *(const char *const *)b);
}

static bool wanted(const char *name, int argc, char **argv)
{
	if (argc <= 2)
		return true;
	for (int i = 2; i < argc; i++)
		if (strstr(name, argv[i]))
			return true;
	return false;
}

int main(int argc, char **argv)
{
	if (argc < 2) {
		fprintf(stderr, "usage: %s CASES_DIR [NAME_SUBSTRING...]\n", argv[0]);
		return 2;
	}
	DIR *dir = opendir(argv[1]);
	if (!dir) {
		perror(argv[1]);
		return 2;
	}
	char **names = NULL;
	size_t n = 0, cap = 0;
	struct dirent *de;
	while ((de = readdir(dir))) {
		size_t len = strlen(de->d_name);
		if (len < 6 || strcmp(de->d_name + len - 5, ".json") != 0)
			continue;
		if (n == cap) {
			cap = cap ? cap * 2 : 64;
			char **grown = realloc(names, cap * sizeof *names);
			if (!grown)
				abort();
			names = grown;
		}
		names[n] = strdup(de->d_name);
		if (!names[n])
			abort();
		n++;
	}
	closedir(dir);
	qsort(names, n, sizeof *names, by_name);

	int passed = 0, failed = 0, known = 0;
	for (size_t i = 0; i < n; i++) {
		if (wanted(names[i], argc, argv)) {
			switch (run_case(argv[1], names[i])) {
			case PASSED:
				passed++;
				break;
			case FAILED:
			case BUG_FIXED:
				failed++;
				break;
			case KNOWN_BUG:
				known++;
				break;
			}
		}
		free(names[i]);
	}
	free(names);
	if (passed + failed + known == 0) {
		printf("no cases found in %s\n", argv[1]);
		return 1;
	}
	printf("%d passed, %d failed, %d known bugs (expected failures)\n", passed, failed, known);
	return failed ? 1 : 0;
}
