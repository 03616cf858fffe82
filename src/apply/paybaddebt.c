/*
 * paybaddebt.c — the guarded pay-bad-debt request (see paybaddebt.h).
 *
 * It is its own path, separate from regular collection: it never retries a
 * card and never touches ordinary invoices. Its writes (void a stale
 * consolidated invoice, create the new one) are a plan executed by the one
 * applier, recorded as a decision of kind pay_bad_debt. The creation's key
 * names the exact set of originals, so asking twice returns the same
 * invoice even if the first answer was lost.
 */
#include "paybaddebt.h"
#include "core/text.h"
#include "util/mem.h"

#include "util/log.h"

#include <inttypes.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static bool covers_exactly(const struct dun_state *s, const struct dun_desired *d,
			   const struct dun_invoice *c)
{
	int want = 0;
	for (int i = 0; i < s->n_invoices; i++) {
		if (!d->invoices[i].unresolved_uncollectible || d->invoices[i].upgrade)
			continue;
		want++;
		bool found = false;
		for (int k = 0; k < c->n_covers && !found; k++)
			found = !strcmp(c->covers[k], s->invoices[i].id);
		if (!found)
			return false;
	}
	return want == c->n_covers;
}

static json_t *describe(const struct dun_invoice *inv, bool created)
{
	json_t *covers = json_array();
	for (int k = 0; k < inv->n_covers; k++)
		json_array_append_new(covers, json_string(inv->covers[k]));
	return json_pack("{s:s, s:s, s:I, s:s, s:s, s:o, s:b}", "id", inv->id, "status",
			 dun_invoice_status_name(inv->status), "amount_due",
			 (json_int_t)inv->amount_due_minor, "currency", inv->currency,
			 "hosted_invoice_url", inv->hosted_invoice_url, "covers", covers, "created",
			 created);
}

static const struct dun_invoice *find_open_consolidated(const struct dun_state *s,
							const struct dun_desired *d, bool exact)
{
	for (int i = 0; i < s->n_invoices; i++) {
		const struct dun_invoice *inv = &s->invoices[i];
		if (inv->is_consolidated && inv->status == DUN_INVOICE_OPEN &&
		    covers_exactly(s, d, inv) == exact)
			return inv;
	}
	return NULL;
}

static enum dun_err pay_claimed(struct dun_engine *en, const char *account_id, int64_t now,
				json_t **invoice_out, char *err, size_t err_size)
{
	enum dun_err e = dun_engine_evaluate(en, account_id, now);
	if (e == DUN_E_NOT_FOUND) {
		snprintf(err, err_size, "no account \"%s\"", account_id);
		return e;
	}
	if (e != DUN_OK) {
		snprintf(err, err_size, "%s", dun_err_str(e));
		return e;
	}
	const struct dun_state *s = &en->snap.state;
	const struct dun_desired *d = &en->desired;
	if (d->skipped) {
		snprintf(err, err_size, "account %s is not handled by dunning (%s)", account_id,
			 d->n_reasons ? d->reasons[0].text : "skipped");
		return DUN_E_GUARD;
	}
	bool unresolved = false;
	for (int i = 0; i < s->n_invoices; i++)
		if (d->invoices[i].unresolved_uncollectible && !d->invoices[i].upgrade)
			unresolved = true;
	if (s->stage != DUN_STAGE_BAD_DEBT && d->computed_stage != DUN_STAGE_BAD_DEBT) {
		snprintf(err, err_size, "account %s is not in bad debt (stage %s)", account_id,
			 dun_stage_name(s->stage));
		return DUN_E_GUARD;
	}
	if (!unresolved) {
		snprintf(err, err_size,
			 "account %s has no uncollectible invoice to pay yet (its failing invoices "
			 "are marked uncollectible by the next recompute)",
			 account_id);
		return DUN_E_GUARD;
	}
	const struct dun_invoice *current = find_open_consolidated(s, d, true);
	if (current) {
		*invoice_out = describe(current, false);
		return DUN_OK;
	}
	/* Void stale consolidated invoices, then create one for the current set. */
	int cap = s->n_invoices + 1, n = 0;
	struct dun_consequence *items = dun_calloc((size_t)cap, sizeof *items);
	uint64_t h = 14695981039346656037ULL;
	for (int i = 0; i < s->n_invoices; i++) {
		const struct dun_invoice *inv = &s->invoices[i];
		if (inv->is_consolidated && inv->status == DUN_INVOICE_OPEN) {
			struct dun_consequence *c = &items[n++];
			c->type = DUN_C_VOID_INVOICE;
			dun_strlcpy(c->target, inv->id, sizeof c->target);
			c->value = 1;
			c->episode = s->episode;
			struct dun_text t;
			dun_text_init(&t, c->key, sizeof c->key);
			dun_text_key_part(&t, account_id);
			dun_text_str(&t, "/void_invoice/");
			dun_text_key_part(&t, inv->id);
		}
		if (d->invoices[i].unresolved_uncollectible && !d->invoices[i].upgrade)
			for (const char *p = inv->id; *p; p++) {
				h ^= (unsigned char)*p;
				h *= 1099511628211ULL;
			}
	}
	struct dun_consequence *c = &items[n++];
	c->type = DUN_C_CREATE_CONSOLIDATED_INVOICE;
	dun_strlcpy(c->target, account_id, sizeof c->target);
	c->value = 1;
	c->episode = s->episode;
	char hash[24];
	snprintf(hash, sizeof hash, "%016" PRIx64, h);
	struct dun_text t;
	dun_text_init(&t, c->key, sizeof c->key);
	dun_text_key_part(&t, account_id);
	dun_text_str(&t, "/create_consolidated_invoice/");
	dun_text_str(&t, hash);
	struct dun_recompute_result r;
	e = dun_engine_apply_request(en, items, n, "pay_bad_debt", &r);
	free(items);
	if (e != DUN_OK) {
		snprintf(err, err_size, "%s",
			 r.apply.error_text[0] ? r.apply.error_text : dun_err_str(e));
		return e;
	}
	/* Read back what the applier folded into the mirror. */
	e = dun_engine_evaluate(en, account_id, now);
	if (e != DUN_OK) {
		snprintf(err, err_size, "%s", dun_err_str(e));
		return e;
	}
	current = find_open_consolidated(&en->snap.state, &en->desired, true);
	if (!current) {
		snprintf(err, err_size, "the provider did not return the consolidated invoice");
		return DUN_E_PROVIDER;
	}
	*invoice_out = describe(current, true);
	return DUN_OK;
}

/* Claims held by pay-bad-debt requests: renewed by each write, so a short lease is enough. */
#define PAY_LEASE_MS 60000
#define PAY_WAIT_MS  5000

/*
 * The request works the account under a claim of its own, like a worker:
 * refused (busy, try again) while a worker or another request holds the
 * account, and every write fenced by it.
 */
enum dun_err dun_pay_bad_debt(struct dun_engine *en, const char *account_id, int64_t now,
			      json_t **invoice_out, char *err, size_t err_size)
{
	static atomic_long seq;
	*invoice_out = NULL;
	char owner[DUN_FENCE_OWNER_MAX];
	snprintf(owner, sizeof owner, "pay-bad-debt:%ld:%ld", (long)getpid(),
		 atomic_fetch_add(&seq, 1));
	struct dun_fence f;
	bool busy = false;
	enum dun_err e = DUN_OK;
	/* A worker's recompute takes a moment: wait up to PAY_WAIT_MS for it. */
	for (int64_t waited = 0;; waited += 50) {
		e = dun_db_begin_concurrent(en->db);
		if (e == DUN_OK) {
			e = dun_fence_acquire(en->db, account_id, owner, PAY_LEASE_MS, &f);
			busy = e == DUN_E_FENCED; /* a worker holds it */
			if (busy)
				e = DUN_OK;
		}
		if (e == DUN_OK && !busy)
			e = dun_db_commit(en->db);
		if (e != DUN_OK || busy)
			dun_db_rollback(en->db);
		if (e != DUN_OK || !busy || waited >= PAY_WAIT_MS)
			break;
		struct timespec ts = {0, 50 * 1000000L};
		nanosleep(&ts, NULL);
	}
	if (e != DUN_OK || busy) {
		if (e == DUN_OK) {
			snprintf(err, err_size,
				 "%s is being processed by a worker right now; try again shortly",
				 account_id);
			return DUN_E_BUSY;
		}
		snprintf(err, err_size, "cannot claim %s: %s", account_id, dun_err_str(e));
		return e;
	}
	en->applier.fence = &f;
	e = pay_claimed(en, account_id, now, invoice_out, err, err_size);
	en->applier.fence = NULL;
	enum dun_err re = dun_fence_release(en->db, account_id, owner);
	if (e == DUN_OK && re != DUN_OK) /* the claim runs out by itself */
		dun_log(DUN_LOG_WARN, "pay_bad_debt.release_failed", "account", account_id, "error",
			dun_err_str(re), NULL);
	return e;
}
