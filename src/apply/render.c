/*
 * render.c — what an email says, decided from the state (see render.h).
 *
 * Rules that keep the wording true:
 *   - a link is only given to an invoice that is still open (never paid or
 *     void); the bad-debt notice links the open consolidated invoice, if
 *     there is one;
 *   - retries_left counts the automatic attempts still scheduled, 0 after a
 *     hard decline or when the schedule is used up, so the last notice
 *     promises no further retry; when Stripe owns the retries it is 1 while
 *     Stripe has its next attempt scheduled and 0 otherwise, and
 *     retries_counted is false (Stripe does not say how many follow);
 *   - the next consequence is named with its date only when the policy will
 *     really take it (an upgrade-only delinquency stops at its cap).
 */
#include "render.h"
#include "util/mem.h"

#include <stdlib.h>
#include <string.h>

static const struct dun_invoice *find_invoice(const struct dun_state *s, const char *id)
{
	for (int i = 0; i < s->n_invoices; i++)
		if (!strcmp(s->invoices[i].id, id))
			return &s->invoices[i];
	return NULL;
}

static int retries_left(const struct dun_policy *p, const struct dun_invoice *inv,
			const struct dun_invoice_desired *id)
{
	if (!inv || !id || inv->status != DUN_INVOICE_OPEN || id->mark_uncollectible)
		return 0;
	if (p->retry_owner == DUN_RETRY_OWNER_STRIPE)
		return inv->next_payment_attempt_at > 0 ? 1 : 0;
	if (id->hard_decline)
		return 0;
	int made = inv->attempt_count > inv->n_attempts ? inv->attempt_count : inv->n_attempts;
	int done = made > 0 ? made - 1 : 0;
	int by_schedule = p->n_retry_schedule - done;
	int by_cap = p->max_attempts - made;
	int left = by_schedule < by_cap ? by_schedule : by_cap;
	return left > 0 ? left : 0;
}

/* The next stage the policy will really reach, and when; 0 when none. */
static int64_t next_action(const struct dun_email_ctx *ctx, const char **what)
{
	const struct dun_desired *d = ctx->desired;
	const struct dun_policy *p = ctx->policy;
	const struct dun_state *s = &ctx->snap->state;
	*what = "";
	if (!d->delinquent_since)
		return 0;
	bool only_upgrades = true;
	for (int i = 0; i < s->n_invoices; i++)
		if ((d->invoices[i].failing || d->invoices[i].unresolved_uncollectible) &&
		    !d->invoices[i].upgrade)
			only_upgrades = false;
	enum dun_stage cap = only_upgrades ? p->upgrade_max_stage : DUN_STAGE_BAD_DEBT;
	struct {
		enum dun_stage stage;
		int64_t after;
		const char *what;
	} steps[] = {
	    {DUN_STAGE_RESTRICTED, p->restricted_after_s,
	     "some features of your account will be restricted"},
	    {DUN_STAGE_SUSPENDED, p->suspended_after_s, "your account will be suspended"},
	    {DUN_STAGE_BAD_DEBT, p->bad_debt_after_s,
	     "your subscription will be canceled and the balance recorded as bad debt"},
	};
	for (size_t i = 0; i < sizeof steps / sizeof steps[0]; i++) {
		if (steps[i].stage > cap)
			break;
		if (steps[i].stage > d->stage && d->delinquent_since + steps[i].after > ctx->now) {
			*what = steps[i].what;
			return d->delinquent_since + steps[i].after;
		}
	}
	return 0;
}

/* r->pay_bad_debt_url with "{account}" replaced by the account id, into out. */
static const char *pay_bad_debt_link(const struct dun_template_renderer *r, const char *account,
				     char *out, size_t out_size)
{
	const char *tmpl = r ? r->pay_bad_debt_url : NULL;
	if (!tmpl || !tmpl[0] || !out_size)
		return "";
	size_t o = 0;
	for (const char *p = tmpl; *p && o + 1 < out_size;) {
		if (!strncmp(p, "{account}", 9)) {
			for (const char *a = account; *a && o + 1 < out_size; a++) {
				/* account ids are [A-Za-z0-9_-]; anything else is left out */
				bool safe = (*a >= 'a' && *a <= 'z') || (*a >= 'A' && *a <= 'Z') ||
					    (*a >= '0' && *a <= '9') || *a == '_' || *a == '-';
				if (safe)
					out[o++] = *a;
			}
			p += 9;
		} else {
			out[o++] = *p++;
		}
	}
	out[o] = '\0';
	return out;
}

void dun_render_vars(const struct dun_email_ctx *ctx, const struct dun_template_renderer *r,
		     struct dun_email_vars *v, struct dun_email_invoice *invoices, char *url,
		     size_t url_size)
{
	const char *support_email = r ? r->support_email : NULL;
	const struct dun_state *s = &ctx->snap->state;
	const struct dun_desired *d = ctx->desired;
	memset(v, 0, sizeof *v);
	v->account_id = s->account_id;
	v->customer_name = ctx->snap->name;
	v->support_email = support_email ? support_email : "";
	v->currency = "usd";
	v->pay_url = "";
	v->next_action = "";
	v->exit_reason = "";
	v->voided_invoice = "";
	v->invoices = invoices;
	if (ctx->kind == DUN_EMAIL_RESOLVED) {
		v->exit_reason = dun_exit_reason_name(d->exit_reason);
		/*
		 * The consolidated invoice voided in this recompute, or by an
		 * earlier try of it (the void landed, the email did not).
		 */
		for (int i = 0; i < s->n_invoices; i++) {
			const struct dun_invoice *inv = &s->invoices[i];
			if (inv->is_consolidated && (d->invoices[i].void_consolidated ||
						     (inv->status == DUN_INVOICE_VOID &&
						      inv->created_at >= s->stage_since)))
				v->voided_invoice = inv->id;
		}
	}
	int n = 0;
	const struct dun_invoice *subject_inv = NULL;
	const struct dun_invoice_desired *subject_d = NULL;
	for (int i = 0; i < s->n_invoices; i++) {
		const struct dun_invoice *inv = &s->invoices[i];
		const struct dun_invoice_desired *id = &d->invoices[i];
		bool listed;
		if (ctx->invoice_id[0])
			listed = !strcmp(inv->id, ctx->invoice_id);
		else if (ctx->kind == DUN_EMAIL_RESOLVED)
			listed = id->covered_by_paid;
		else
			listed =
			    id->failing || id->unresolved_uncollectible || id->mark_uncollectible;
		if (!listed)
			continue;
		int64_t amt = inv->amount_remaining_minor > 0
				  ? inv->amount_remaining_minor
				  : inv->amount_due_minor - inv->amount_paid_minor;
		invoices[n].id = inv->id;
		invoices[n].amount_minor = amt;
		invoices[n].currency = inv->currency;
		invoices[n].issued_at = inv->created_at;
		n++;
		if (ctx->kind != DUN_EMAIL_RESOLVED)
			v->amount_due_minor += amt;
		v->currency = inv->currency;
		if (!subject_inv || inv->created_at < subject_inv->created_at) {
			subject_inv = inv;
			subject_d = id;
		}
	}
	v->n_invoices = n;
	if (ctx->kind == DUN_EMAIL_BAD_DEBT) {
		/*
		 * Link the open consolidated invoice, when one exists; otherwise
		 * the user's pay-bad-debt page, which makes one on demand.
		 */
		for (int i = 0; i < s->n_invoices; i++)
			if (s->invoices[i].is_consolidated &&
			    s->invoices[i].status == DUN_INVOICE_OPEN)
				v->pay_url = s->invoices[i].hosted_invoice_url;
		if (!v->pay_url[0])
			v->pay_url = pay_bad_debt_link(r, s->account_id, url, url_size);
	} else if (ctx->kind != DUN_EMAIL_RESOLVED && subject_inv &&
		   subject_inv->status == DUN_INVOICE_OPEN && !subject_d->mark_uncollectible) {
		v->pay_url = subject_inv->hosted_invoice_url;
	}
	if (ctx->invoice_id[0])
		v->retries_left =
		    retries_left(ctx->policy, find_invoice(s, ctx->invoice_id), subject_d);
	v->retries_counted = ctx->policy->retry_owner == DUN_RETRY_OWNER_ENGINE;
	if (ctx->kind != DUN_EMAIL_RESOLVED && ctx->kind != DUN_EMAIL_BAD_DEBT)
		v->next_action_at = next_action(ctx, &v->next_action);
}

static enum dun_err render(void *self, const struct dun_email_ctx *ctx, char **subject, char **body,
			   char *err, size_t err_size)
{
	struct dun_template_renderer *r = self;
	int cap = ctx->snap->state.n_invoices > 0 ? ctx->snap->state.n_invoices : 1;
	struct dun_email_invoice *invoices = dun_calloc((size_t)cap, sizeof *invoices);
	struct dun_email_vars vars;
	char url[1024];
	dun_render_vars(ctx, r, &vars, invoices, url, sizeof url);
	enum dun_err e = dun_template_render(dun_template_set_get(r->templates, ctx->kind), &vars,
					     subject, body);
	free(invoices);
	(void)err;
	(void)err_size;
	return e;
}

static const struct dun_renderer_ops template_renderer_ops = {.render = render};

struct dun_renderer dun_template_renderer(struct dun_template_renderer *r)
{
	struct dun_renderer out = {.ops = &template_renderer_ops, .self = r};
	return out;
}
