/*
 * refresh.c — GATHER's targeted refresh (see refresh.h for when and why).
 *
 * It sits inside GATHER, between the first read of the local stores and
 * EVALUATE: the only place of the read side that may call the provider,
 * and only for the invoices the mirror demonstrably lacks attempts of, or
 * whose payment has been in flight long enough to ask about it again.
 * Everything it learns goes through the mirror (dun_mirror_upsert, the
 * same fold webhooks take), never straight into the snapshot, so the
 * second gather reads it exactly as it would read a webhook's payload.
 */
#include "refresh.h"
#include "core/text.h"
#include "store/mirror.h"
#include "util/clock.h"
#include "util/mem.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

bool dun_refresh_is_short(const struct dun_invoice *inv)
{
	bool open = inv->status == DUN_INVOICE_OPEN || inv->status == DUN_INVOICE_UNCOLLECTIBLE;
	return open && !inv->is_consolidated && inv->attempt_count > inv->n_attempts;
}

/* Fold every object of objs into db in one transaction; *n_out counts them. */
static enum dun_err fold_all(struct dun_db *db, json_t *objs, int *n_out, char *err,
			     size_t err_size)
{
	*n_out = 0;
	if (!json_is_array(objs)) {
		snprintf(err, err_size, "the provider's answer is not a list of objects");
		return DUN_E_PARSE;
	}
	/*
	 * One mirror writer (store/db.h), as a webhook batch is: beside the
	 * other workers' claimed work, not an exclusive transaction that every
	 * worker of every process would queue behind.
	 */
	enum dun_err e = dun_db_begin_mirror(db);
	if (e != DUN_OK) {
		snprintf(err, err_size, "cannot begin a transaction: %s", dun_db_errmsg(db));
		return e;
	}
	int64_t version = dun_clock_now();
	size_t i;
	json_t *obj;
	json_array_foreach(objs, i, obj)
	{
		e = dun_mirror_upsert(db, obj, version, NULL, NULL, err, err_size);
		if (e != DUN_OK)
			break;
		(*n_out)++;
	}
	if (e == DUN_OK) {
		e = dun_db_commit(db);
		if (e != DUN_OK)
			snprintf(err, err_size, "cannot commit: %s", dun_db_errmsg(db));
	}
	if (e != DUN_OK) {
		dun_db_rollback(db);
		*n_out = 0;
	}
	return e;
}

/*
 * Short, or (with a policy) a payment of it in flight long enough to read
 * again, or the provider's own retry of it due for a while with no news.
 */
static bool wanted(const struct dun_policy *policy, const struct dun_invoice *inv, int64_t now)
{
	return dun_refresh_is_short(inv) ||
	       (policy && !inv->is_consolidated &&
		(dun_policy_payment_recheck_due(policy, inv, now) ||
		 dun_policy_provider_attempt_overdue(policy, inv, now)));
}

bool dun_gather_refresh_wanted(struct dun_provider provider, const struct dun_policy *policy,
			       const struct dun_snapshot *snap, int64_t now)
{
	if (!provider.ops || !provider.ops->refresh_invoices)
		return false;
	for (int i = 0; i < snap->state.n_invoices; i++)
		if (wanted(policy, &snap->state.invoices[i], now))
			return true;
	return false;
}

enum dun_err dun_gather_refresh(struct dun_db *db, struct dun_provider provider,
				const struct dun_policy *policy, struct dun_snapshot *snap,
				struct dun_refresh_result *out)
{
	memset(out, 0, sizeof *out);
	const struct dun_state *s = &snap->state;
	if (!provider.ops || !provider.ops->refresh_invoices)
		return DUN_OK;
	int64_t now = dun_clock_now();
	int n = 0;
	for (int i = 0; i < s->n_invoices; i++)
		n += wanted(policy, &s->invoices[i], now);
	if (!n)
		return DUN_OK;
	/* The ids live in snap, which the provider call does not touch. */
	const char **ids = dun_calloc((size_t)n, sizeof *ids);
	n = 0;
	for (int i = 0; i < s->n_invoices; i++)
		if (wanted(policy, &s->invoices[i], now))
			ids[n++] = s->invoices[i].id;
	out->n_invoices = n;
	json_t *objs = NULL;
	out->refresh_err = provider.ops->refresh_invoices(provider.self, ids, n, &objs,
							  out->err_text, sizeof out->err_text);
	free(ids);
	if (out->refresh_err == DUN_OK)
		out->refresh_err =
		    fold_all(db, objs, &out->n_objects, out->err_text, sizeof out->err_text);
	json_decref(objs);
	if (out->refresh_err != DUN_OK)
		return DUN_OK;
	/* account_id is copied first: dun_gather() resets the state it lives in. */
	char account[DUN_ID_MAX];
	dun_strlcpy(account, s->account_id, sizeof account);
	return dun_gather(db, account, snap);
}
