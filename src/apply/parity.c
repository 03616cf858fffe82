/*
 * parity.c — the parity report (see parity.h). It reads the shadow that
 * observe mode recorded (apply/shadow.h) and the engine's decisions and
 * triggers, and writes one row: the report the rollout gate reads.
 */
#include "parity.h"
#include "util/clock.h"
#include "util/mem.h"

#include <stdlib.h>
#include <string.h>

enum dun_err dun_parity_load_shadow(struct dun_db *db, int64_t from, int64_t to,
				    struct dun_parity_list *out)
{
	struct dun_stmt *st = dun_db_stmt(
	    db, "SELECT sc.account_id, sc.at, sc.type, sc.target, sc.value, sc.kind,"
		" (SELECT b.value FROM shadow_consequences b WHERE b.account_id = sc.account_id"
		"  AND b.type = 'set_invoice_bad_debt_amount' AND b.target = sc.target"
		"  ORDER BY b.id DESC LIMIT 1)"
		" FROM shadow_consequences sc WHERE sc.at >= ?1 AND sc.at <= ?2"
		" AND sc.type IN ('set_account_bad_debt', 'ban', 'unban', 'set_entitlement',"
		" 'cancel_subscription', 'send_email', 'mark_uncollectible', 'retry_payment')"
		" ORDER BY sc.id");
	dun_stmt_bind_int64(st, 1, from);
	dun_stmt_bind_int64(st, 2, to);
	int rc;
	while ((rc = dun_stmt_step(st)) == DUN_STEP_ROW) {
		struct dun_parity_item *it = dun_parity_list_add(out);
		dun_stmt_col_copy(st, 0, it->account, sizeof it->account);
		it->at = dun_stmt_col_int64(st, 1);
		const char *type = dun_stmt_col_text(st, 2);
		char target[DUN_ID_MAX];
		dun_stmt_col_copy(st, 3, target, sizeof target);
		int64_t value = dun_stmt_col_int64(st, 4);
		if (!strcmp(type, "set_account_bad_debt")) {
			it->action = value ? DUN_PA_BAD_DEBT_SET : DUN_PA_BAD_DEBT_CLEARED;
		} else if (!strcmp(type, "ban")) {
			it->action = DUN_PA_BAN;
		} else if (!strcmp(type, "unban")) {
			it->action = DUN_PA_UNBAN;
		} else if (!strcmp(type, "set_entitlement")) {
			it->action = DUN_PA_ENTITLEMENT;
			snprintf(it->detail, sizeof it->detail, "%s",
				 dun_entitlement_name((enum dun_entitlement)value));
		} else if (!strcmp(type, "cancel_subscription")) {
			it->action = DUN_PA_SUBSCRIPTION_CANCEL;
			memcpy(it->target, target, sizeof it->target);
		} else if (!strcmp(type, "send_email")) {
			it->action = DUN_PA_EMAIL;
			dun_stmt_col_copy(st, 5, it->detail, sizeof it->detail);
			if (!strcmp(it->detail, "payment_failed") ||
			    !strcmp(it->detail, "card_update_required"))
				memcpy(it->target, target, sizeof it->target);
		} else if (!strcmp(type, "mark_uncollectible")) {
			it->action = DUN_PA_INVOICE_UNCOLLECTIBLE;
			memcpy(it->target, target, sizeof it->target);
			it->has_amount = !dun_stmt_col_is_null(st, 6);
			it->amount = dun_stmt_col_int64(st, 6);
		} else {
			it->action = DUN_PA_RETRY;
			memcpy(it->target, target, sizeof it->target);
			snprintf(it->detail, sizeof it->detail, "%lld", (long long)value);
		}
	}
	dun_stmt_reset(st);
	return rc == DUN_STEP_DONE ? DUN_OK : dun_stmt_err(st);
}

/* Order: the match key (account, action, detail, target), then time. */
static int cmp_item(const void *a, const void *b)
{
	const struct dun_parity_item *x = a, *y = b;
	int c = strcmp(x->account, y->account);
	if (!c)
		c = (int)x->action - (int)y->action;
	if (!c)
		c = strcmp(x->detail, y->detail);
	if (!c)
		c = strcmp(x->target, y->target);
	if (!c)
		c = x->at < y->at ? -1 : x->at > y->at;
	if (!c)
		c = x->line - y->line;
	return c;
}

static int cmp_key(const struct dun_parity_item *x, const struct dun_parity_item *y)
{
	int c = strcmp(x->account, y->account);
	if (!c)
		c = (int)x->action - (int)y->action;
	if (!c)
		c = strcmp(x->detail, y->detail);
	if (!c)
		c = strcmp(x->target, y->target);
	return c;
}

/* Greedy pairing within each key, in time order (optimal for one tolerance). */
static void pair_up(struct dun_parity_list *l, struct dun_parity_list *e, int64_t tol)
{
	qsort(l->items, (size_t)l->n, sizeof *l->items, cmp_item);
	qsort(e->items, (size_t)e->n, sizeof *e->items, cmp_item);
	int j = 0;
	for (int i = 0; i < l->n; i++) {
		struct dun_parity_item *li = &l->items[i];
		while (j < e->n && cmp_key(&e->items[j], li) < 0)
			j++;
		for (int k = j; k < e->n && cmp_key(&e->items[k], li) == 0; k++) {
			struct dun_parity_item *ek = &e->items[k];
			if (ek->match >= 0 || ek->at < li->at - tol)
				continue;
			if (ek->at <= li->at + tol) {
				ek->match = i;
				li->match = k;
			}
			break;
		}
	}
}

static json_t *item_json(const struct dun_parity_item *it, const char *what)
{
	char t[32];
	dun_clock_format(it->at, t, sizeof t);
	json_t *o = json_pack("{s:s, s:s, s:s, s:s, s:s, s:s}", "account", it->account, "mismatch",
			      what, "action", dun_parity_action_name(it->action), "detail",
			      it->detail, "target", it->target, "at", t);
	if (it->line)
		json_object_set_new(o, "line", json_integer(it->line));
	return o;
}

static bool in_window(const struct dun_parity_item *it, const struct dun_parity_opts *o)
{
	return it->at >= o->from && it->at <= o->to;
}

/* Whether the engine has decided on account at or before t. */
static bool engine_saw(struct dun_db *db, const char *account, int64_t t)
{
	struct dun_stmt *st =
	    dun_db_stmt(db, "SELECT 1 FROM decisions WHERE account_id = ?1 AND at <= ?2 LIMIT 1");
	dun_stmt_bind_text(st, 1, account);
	dun_stmt_bind_int64(st, 2, t);
	bool seen = dun_stmt_row(st);
	dun_stmt_reset(st);
	return seen;
}

static int cmp_str(const void *a, const void *b)
{
	return strcmp((const char *)a, (const char *)b);
}

/* Accounts the legacy side acted on in the window, sorted, unique. */
static int legacy_accounts(const struct dun_parity_list *l, const struct dun_parity_opts *o,
			   char (**out)[DUN_ID_MAX])
{
	char(*acc)[DUN_ID_MAX] = dun_malloc(sizeof *acc * (size_t)(l->n + 1));
	int n = 0;
	for (int i = 0; i < l->n; i++)
		if (in_window(&l->items[i], o))
			memcpy(acc[n++], l->items[i].account, DUN_ID_MAX);
	qsort(acc, (size_t)n, sizeof *acc, cmp_str);
	int u = 0;
	for (int i = 0; i < n; i++)
		if (!u || strcmp(acc[u - 1], acc[i]))
			memcpy(acc[u++], acc[i], DUN_ID_MAX);
	*out = acc;
	return u;
}

static bool has_account(char (*acc)[DUN_ID_MAX], int n, const char *a)
{
	return bsearch(a, acc, (size_t)n, sizeof *acc, cmp_str) != NULL;
}

enum dun_err dun_parity_run(struct dun_db *db, struct dun_parity_list *legacy,
			    const struct dun_parity_opts *o, json_t **report, char *err,
			    size_t err_size)
{
	*report = NULL;
	struct dun_parity_list eng = {0};
	enum dun_err e =
	    dun_parity_load_shadow(db, o->from - o->tolerance_s, o->to + o->tolerance_s, &eng);
	if (e != DUN_OK) {
		dun_parity_list_free(&eng);
		snprintf(err, err_size, "reading the shadow: %s", dun_err_str(e));
		return e;
	}
	if (o->actions) {
		/* Compare only what the legacy side can do at all. */
		int kept = 0;
		for (int i = 0; i < eng.n; i++)
			if (o->actions & (1u << eng.items[i].action))
				eng.items[kept++] = eng.items[i];
		eng.n = kept;
	}
	int n_leg_in = 0, n_eng_in = 0;
	for (int i = 0; i < legacy->n; i++)
		n_leg_in += in_window(&legacy->items[i], o);
	for (int i = 0; i < eng.n; i++)
		n_eng_in += in_window(&eng.items[i], o);
	if (!n_leg_in && !n_eng_in) {
		dun_parity_list_free(&eng);
		snprintf(err, err_size,
			 "no action in the window on either side (legacy: %d lines in all; the "
			 "engine's shadow: none): nothing to compare",
			 legacy->n);
		return DUN_E_NOT_FOUND;
	}
	pair_up(legacy, &eng, o->tolerance_s);

	int64_t matched[DUN_PARITY_ACTION__COUNT] = {0}, only_l[DUN_PARITY_ACTION__COUNT] = {0},
		only_e[DUN_PARITY_ACTION__COUNT] = {0}, dt_sum[DUN_PARITY_ACTION__COUNT] = {0},
		dt_max[DUN_PARITY_ACTION__COUNT] = {0};
	int64_t amounts = 0, amounts_ok = 0;
	json_t *mism = json_array();
	for (int i = 0; i < legacy->n; i++) {
		struct dun_parity_item *li = &legacy->items[i];
		if (!in_window(li, o))
			continue;
		if (li->match < 0) {
			only_l[li->action]++;
			json_array_append_new(mism, item_json(li, "only_legacy"));
			continue;
		}
		const struct dun_parity_item *ei = &eng.items[li->match];
		matched[li->action]++;
		int64_t dt = ei->at - li->at;
		dt_sum[li->action] += dt;
		if ((dt < 0 ? -dt : dt) >
		    (dt_max[li->action] < 0 ? -dt_max[li->action] : dt_max[li->action]))
			dt_max[li->action] = dt;
		if (li->action == DUN_PA_INVOICE_UNCOLLECTIBLE) {
			amounts++;
			if (ei->has_amount && ei->amount == li->amount) {
				amounts_ok++;
			} else {
				json_t *m = item_json(li, "amount");
				json_object_set_new(m, "legacy_amount", json_integer(li->amount));
				json_object_set_new(m, "engine_amount",
						    ei->has_amount ? json_integer(ei->amount)
								   : json_null());
				json_array_append_new(mism, m);
			}
		}
	}
	for (int i = 0; i < eng.n; i++) {
		const struct dun_parity_item *ei = &eng.items[i];
		if (ei->match < 0 && in_window(ei, o)) {
			only_e[ei->action]++;
			json_array_append_new(mism, item_json(ei, "only_engine"));
		}
	}
	int64_t total_m = 0, total_l = 0, total_e = 0;
	json_t *per = json_array();
	for (int a = 0; a < DUN_PARITY_ACTION__COUNT; a++) {
		total_m += matched[a];
		total_l += only_l[a];
		total_e += only_e[a];
		if (!matched[a] && !only_l[a] && !only_e[a])
			continue;
		json_array_append_new(
		    per, json_pack("{s:s, s:I, s:I, s:I, s:I, s:I}", "action",
				   dun_parity_action_name((enum dun_parity_action)a), "matched",
				   (json_int_t)matched[a], "only_legacy", (json_int_t)only_l[a],
				   "only_engine", (json_int_t)only_e[a], "mean_delay_s",
				   (json_int_t)(matched[a] ? dt_sum[a] / matched[a] : 0),
				   "max_delay_s", (json_int_t)dt_max[a]));
	}

	/* Coverage and skip filters, over the accounts the legacy side acted on. */
	char(*acc)[DUN_ID_MAX] = NULL;
	int n_acc = legacy_accounts(legacy, o, &acc);
	int64_t seen = 0;
	for (int i = 0; i < n_acc; i++) {
		if (engine_saw(db, acc[i], o->to)) {
			seen++;
		} else {
			json_array_append_new(
			    mism, json_pack("{s:s, s:s}", "account", acc[i], "mismatch", "unseen"));
		}
	}
	int64_t filters = 0, filters_ok = 0;
	struct dun_stmt *st = dun_db_stmt(
	    db,
	    "SELECT d.account_id FROM decisions d WHERE d.id = (SELECT MAX(x.id) FROM decisions x"
	    " WHERE x.account_id = d.account_id AND x.at <= ?1) AND d.skipped = 1"
	    " ORDER BY d.account_id");
	dun_stmt_bind_int64(st, 1, o->to);
	int rc;
	while ((rc = dun_stmt_step(st)) == DUN_STEP_ROW) {
		const char *a = dun_stmt_col_text(st, 0);
		filters++;
		if (!has_account(acc, n_acc, a))
			filters_ok++;
		else
			json_array_append_new(
			    mism, json_pack("{s:s, s:s}", "account", a, "mismatch", "filter"));
	}
	dun_stmt_reset(st);
	free(acc);
	if (rc != DUN_STEP_DONE) {
		dun_parity_list_free(&eng);
		json_decref(mism);
		json_decref(per);
		snprintf(err, err_size, "reading decisions: %s", dun_err_str(dun_stmt_err(st)));
		return dun_stmt_err(st);
	}
	/* Errors: failed decisions, and triggers retrying or dead, in the window. */
	int64_t errors = 0;
	st = dun_db_stmt(db, "SELECT account_id, 'failed decision' FROM decisions"
			     " WHERE outcome = 'failed' AND at >= ?1 AND at <= ?2"
			     " UNION ALL SELECT account_id, state || ' trigger' FROM inbox"
			     " WHERE state IN ('retrying', 'dead') AND updated_at >= ?1"
			     " AND updated_at <= ?2 ORDER BY 1");
	dun_stmt_bind_int64(st, 1, o->from);
	dun_stmt_bind_int64(st, 2, o->to);
	while ((rc = dun_stmt_step(st)) == DUN_STEP_ROW) {
		errors++;
		json_array_append_new(mism, json_pack("{s:s, s:s, s:s}", "account",
						      dun_stmt_col_text(st, 0), "mismatch", "error",
						      "detail", dun_stmt_col_text(st, 1)));
	}
	dun_stmt_reset(st);
	dun_parity_list_free(&eng);

	int64_t all = total_m + total_l + total_e;
	double match_pct = all ? 100.0 * (double)total_m / (double)all : 100.0;
	double cov_pct = n_acc ? 100.0 * (double)seen / (double)n_acc : 100.0;
	int64_t amount_mm = amounts - amounts_ok, filter_mm = filters - filters_ok;
	json_t *failed = json_array();
	if (match_pct + 1e-9 < o->min_match_percent)
		json_array_append_new(failed, json_string("match"));
	if (cov_pct + 1e-9 < o->min_coverage_percent)
		json_array_append_new(failed, json_string("coverage"));
	if (amount_mm > o->max_amount_mismatches)
		json_array_append_new(failed, json_string("amounts"));
	if (filter_mm > o->max_filter_mismatches)
		json_array_append_new(failed, json_string("filters"));
	if (errors > o->max_errors)
		json_array_append_new(failed, json_string("errors"));
	char from[32], to[32];
	dun_clock_format(o->from, from, sizeof from);
	dun_clock_format(o->to, to, sizeof to);
	*report = json_pack(
	    "{s:s, s:s, s:s, s:I, s:b, s:o, s:o,"
	    " s:{s:I, s:I, s:I, s:f},"
	    " s:{s:I, s:I}, s:{s:I, s:I, s:f}, s:{s:I, s:I}, s:I,"
	    " s:{s:f, s:f, s:I, s:I, s:I}, s:o}",
	    "source", o->source, "from", from, "to", to, "tolerance_s", (json_int_t)o->tolerance_s,
	    "passed", json_array_size(failed) == 0, "failed", failed, "actions", per, "total",
	    "matched", (json_int_t)total_m, "only_legacy", (json_int_t)total_l, "only_engine",
	    (json_int_t)total_e, "match_percent", match_pct, "amounts", "compared",
	    (json_int_t)amounts, "match", (json_int_t)amounts_ok, "coverage", "legacy_accounts",
	    (json_int_t)n_acc, "seen", (json_int_t)seen, "percent", cov_pct, "filters", "checked",
	    (json_int_t)filters, "agree", (json_int_t)filters_ok, "errors", (json_int_t)errors,
	    "thresholds", "min_match_percent", o->min_match_percent, "min_coverage_percent",
	    o->min_coverage_percent, "max_amount_mismatches", (json_int_t)o->max_amount_mismatches,
	    "max_filter_mismatches", (json_int_t)o->max_filter_mismatches, "max_errors",
	    (json_int_t)o->max_errors, "mismatches", mism);
	return *report ? DUN_OK : DUN_E_INVALID;
}

/* The account of a Stripe customer, from the mirror; "" when unmapped. */
static void account_of(struct dun_db *db, const char *customer, char *out, size_t size)
{
	out[0] = '\0';
	struct dun_stmt *st = dun_db_stmt(db, "SELECT account_id FROM customers WHERE id = ?1"
					      " UNION ALL SELECT account_id FROM p_customers"
					      " WHERE id = ?1 AND account_id IS NOT NULL");
	dun_stmt_bind_text(st, 1, customer);
	if (dun_stmt_row(st))
		dun_stmt_col_copy(st, 0, out, size);
	dun_stmt_reset(st);
}

static void stripe_action(struct dun_db *db, json_t *ev, int64_t from, int64_t to,
			  struct dun_parity_list *out)
{
	const char *type = json_string_value(json_object_get(ev, "type"));
	json_t *obj = json_object_get(json_object_get(ev, "data"), "object");
	json_int_t created = json_integer_value(json_object_get(ev, "created"));
	const char *id = json_string_value(json_object_get(obj, "id"));
	const char *customer = json_string_value(json_object_get(obj, "customer"));
	if (!type || !id || !customer || created < from || created > to)
		return;
	struct dun_parity_item it;
	memset(&it, 0, sizeof it);
	it.match = -1;
	it.at = created;
	if (!strcmp(type, "invoice.marked_uncollectible")) {
		it.action = DUN_PA_INVOICE_UNCOLLECTIBLE;
		it.has_amount = true;
		it.amount = json_integer_value(json_object_get(obj, "amount_remaining"));
	} else if (!strcmp(type, "customer.subscription.deleted")) {
		it.action = DUN_PA_SUBSCRIPTION_CANCEL;
	} else if (!strcmp(type, "invoice.payment_failed")) {
		json_int_t n = json_integer_value(json_object_get(obj, "attempt_count"));
		if (n < 2)
			return; /* the first attempt is the failure itself, not a retry */
		it.action = DUN_PA_RETRY;
		snprintf(it.detail, sizeof it.detail, "%lld", (long long)n);
	} else {
		return;
	}
	snprintf(it.target, sizeof it.target, "%s", id);
	account_of(db, customer, it.account, sizeof it.account);
	if (!it.account[0])
		return; /* not one of ours */
	*dun_parity_list_add(out) = it;
}

enum dun_err dun_parity_stripe_actions(struct dun_db *db, json_t *api_events, int64_t from,
				       int64_t to, struct dun_parity_list *out, int64_t *n_events)
{
	*n_events = 0;
	json_t *seen = json_object();
	size_t i;
	json_t *ev;
	json_array_foreach(api_events, i, ev)
	{
		const char *id = json_string_value(json_object_get(ev, "id"));
		if (id)
			json_object_set_new(seen, id, json_true());
		stripe_action(db, ev, from, to, out);
		++*n_events;
	}
	struct dun_stmt *st = dun_db_stmt(
	    db, "SELECT id, body FROM events_raw WHERE created >= ?1 AND created <= ?2 AND type IN"
		" ('invoice.marked_uncollectible', 'customer.subscription.deleted',"
		" 'invoice.payment_failed') ORDER BY created, id");
	dun_stmt_bind_int64(st, 1, from);
	dun_stmt_bind_int64(st, 2, to);
	int rc;
	while ((rc = dun_stmt_step(st)) == DUN_STEP_ROW) {
		const char *id = dun_stmt_col_text(st, 0);
		const char *body = dun_stmt_col_text(st, 1);
		if (!id || json_object_get(seen, id) || !body)
			continue;
		json_t *e = json_loads(body, 0, NULL);
		if (e) {
			stripe_action(db, e, from, to, out);
			json_decref(e);
			++*n_events;
		}
	}
	enum dun_err e = rc == DUN_STEP_DONE ? DUN_OK : dun_stmt_err(st);
	dun_stmt_reset(st);
	json_decref(seen);
	return e;
}

enum dun_err dun_parity_record(struct dun_db *db, int64_t now, const struct dun_parity_opts *o,
			       json_t *report, int64_t *id_out)
{
	char *summary = json_dumps(report, JSON_COMPACT);
	struct dun_stmt *st = dun_db_stmt(db, "INSERT INTO parity_reports(created_at, window_from,"
					      " window_to, source, passed, summary)"
					      " VALUES (?1, ?2, ?3, ?4, ?5, ?6) RETURNING id");
	dun_stmt_bind_int64(st, 1, now);
	dun_stmt_bind_int64(st, 2, o->from);
	dun_stmt_bind_int64(st, 3, o->to);
	dun_stmt_bind_text(st, 4, o->source);
	dun_stmt_bind_int(st, 5, json_is_true(json_object_get(report, "passed")));
	dun_stmt_bind_text(st, 6, summary ? summary : "{}");
	enum dun_err e = DUN_OK;
	*id_out = 0;
	if (dun_stmt_row(st))
		*id_out = dun_stmt_col_int64(st, 0);
	else
		e = dun_stmt_err(st);
	dun_stmt_reset(st);
	free(summary);
	return e;
}
