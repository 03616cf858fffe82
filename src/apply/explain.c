/*
 * explain.c — building the explain trace (see explain.h). For an account in
 * observe mode the state shown is the shadow DECIDE compared against
 * (view "shadow"), with the real stores beside it ("real") and the
 * shadow's log of what it would have done ("shadow_consequences").
 */
#include "explain.h"

#include <string.h>

static json_t *jbool(bool b)
{
	return json_boolean(b);
}

static json_t *attempts_json(const struct dun_policy *p, const struct dun_invoice *inv)
{
	json_t *arr = json_array();
	for (int k = 0; k < inv->n_attempts; k++) {
		const struct dun_attempt *a = &inv->attempts[k];
		int64_t delay = 0;
		const char *cls = "";
		if (a->status == DUN_ATTEMPT_FAILED)
			cls =
			    dun_policy_classify(p, a, &delay) == DUN_DECLINE_HARD ? "hard" : "soft";
		json_array_append_new(
		    arr, json_pack("{s:s, s:I, s:s, s:s, s:s, s:s, s:s, s:s}", "id", a->id,
				   "created", (json_int_t)a->created_at, "status",
				   dun_attempt_status_name(a->status), "payment_method",
				   a->payment_method, "decline_code", a->decline_code,
				   "advice_code", a->advice_code, "network_advice_code",
				   a->network_advice_code, "decline_class", cls));
	}
	return arr;
}

static json_t *rows(struct dun_db *db, const char *sql, const char *account_id)
{
	json_t *arr = json_array();
	struct dun_stmt *st = dun_db_stmt(db, sql);
	dun_stmt_bind_text(st, 1, account_id);
	while (dun_stmt_row(st)) {
		json_t *row = json_object();
		for (int c = 0; c < dun_stmt_col_count(st); c++) {
			const char *name = dun_stmt_col_name(st, c);
			switch (dun_stmt_col_type(st, c)) {
			case DUN_COL_INT:
				json_object_set_new(row, name,
						    json_integer(dun_stmt_col_int64(st, c)));
				break;
			case DUN_COL_NULL:
				json_object_set_new(row, name, json_null());
				break;
			case DUN_COL_FLOAT:
			case DUN_COL_TEXT:
			case DUN_COL_BLOB: {
				const char *t = dun_stmt_col_text(st, c);
				json_t *parsed = NULL;
				/* reasons and plan are stored as JSON text */
				if (t && (t[0] == '[' || t[0] == '{'))
					parsed = json_loads(t, 0, NULL);
				json_object_set_new(row, name,
						    parsed ? parsed : json_string(t ? t : ""));
				break;
			}
			}
		}
		json_array_append_new(arr, row);
	}
	dun_stmt_reset(st);
	return arr;
}

enum dun_err dun_explain_json(struct dun_engine *en, const char *account_id, int64_t now,
			      json_t **out)
{
	*out = NULL;
	enum dun_err e = dun_engine_evaluate(en, account_id, now);
	if (e != DUN_OK)
		return e;
	const struct dun_state *s = &en->snap.state;
	const struct dun_desired *d = &en->desired;
	const char *why = "";
	enum dun_mode mode = dun_rollout_mode(en->db, &en->rollout, account_id, &why);

	json_t *o = json_object();
	json_object_set_new(o, "account",
			    json_pack("{s:s, s:s, s:o, s:o, s:o, s:s, s:s}", "id", s->account_id,
				      "segment", dun_segment_name(s->segment), "kill_switch",
				      jbool(s->kill_switch), "bad_debt", jbool(s->account_bad_debt),
				      "no_successful_payment", jbool(s->no_successful_payment),
				      "email", en->snap.email, "name", en->snap.name));
	json_object_set_new(
	    o, "customer",
	    s->has_customer ? json_pack("{s:s, s:o, s:o, s:s}", "id", s->customer_id, "bad_debt",
					jbool(s->customer_bad_debt), "provider_metadata_bad_debt",
					jbool(s->provider_meta_bad_debt), "default_payment_method",
					s->default_payment_method)
			    : json_null());
	json_object_set_new(o, "platform",
			    json_pack("{s:o, s:s, s:o}", "banned", jbool(s->banned), "entitlement",
				      dun_entitlement_name(s->entitlement), "resource_flags",
				      jbool(s->has_resource_flags)));
	/* Who owns what on the platform: dunning's part above; the rest kept. */
	const struct dun_platform_view *pv = &en->snap.platform;
	json_t *kept = json_array();
	for (int i = 0; i < pv->n_kept; i++) {
		const struct dun_kept_restriction *k = &pv->kept[i];
		json_t *r = json_pack("{s:s, s:s, s:s}", "type", k->kind, "reason", k->reason,
				      "placed_by", k->placed_by);
		if (!strcmp(k->kind, "entitlement"))
			json_object_set_new(r, "level",
					    json_string(dun_entitlement_name(k->level)));
		json_array_append_new(kept, r);
	}
	json_object_set_new(o, "platform_owners",
			    json_pack("{s:s, s:s, s:o, s:i, s:i}", "dunning_reason",
				      DUN_PLATFORM_OWN_REASON, "placed_by", pv->placed_by, "kept",
				      kept, "kept_total", pv->n_others, "pending_applied",
				      pv->n_pending));
	json_object_set_new(o, "dunning",
			    json_pack("{s:s, s:I, s:I, s:I, s:I, s:o}", "stage",
				      dun_stage_name(s->stage), "since", (json_int_t)s->stage_since,
				      "episode", (json_int_t)s->episode, "lifting_since",
				      (json_int_t)s->lifting_since, "next_recheck_at",
				      (json_int_t)s->next_recheck_at, "bad_debt_episode_open",
				      jbool(s->bad_debt_episode_open)));
	json_t *subs = json_array();
	for (int i = 0; i < s->n_subscriptions; i++)
		json_array_append_new(
		    subs, json_pack("{s:s, s:s}", "id", s->subscriptions[i].id, "status",
				    dun_sub_status_name(s->subscriptions[i].status)));
	json_object_set_new(o, "subscriptions", subs);
	json_t *invs = json_array();
	for (int i = 0; i < s->n_invoices; i++) {
		const struct dun_invoice *inv = &s->invoices[i];
		const struct dun_invoice_desired *id = &d->invoices[i];
		json_t *covers = json_array();
		for (int k = 0; k < inv->n_covers; k++)
			json_array_append_new(covers, json_string(inv->covers[k]));
		json_t *j = json_pack(
		    "{s:s, s:s, s:s, s:I, s:I, s:s, s:i, s:I, s:o, s:o, s:o, s:o, s:o, s:o,"
		    " s:o, s:I, s:o, s:o, s:s}",
		    "id", inv->id, "status", dun_invoice_status_name(inv->status), "billing_reason",
		    dun_billing_reason_name(inv->billing_reason), "amount_due",
		    (json_int_t)inv->amount_due_minor, "amount_remaining",
		    (json_int_t)inv->amount_remaining_minor, "currency", inv->currency,
		    "attempt_count", inv->attempt_count, "created", (json_int_t)inv->created_at,
		    "consolidated", jbool(inv->is_consolidated), "covers", covers, "failing",
		    jbool(id->failing), "upgrade", jbool(id->upgrade), "unresolved_uncollectible",
		    jbool(id->unresolved_uncollectible), "covered_by_paid",
		    jbool(id->covered_by_paid), "hard_decline", jbool(id->hard_decline),
		    "next_retry_at", (json_int_t)id->next_retry_at, "document_closed",
		    jbool(inv->has_doc && inv->doc_closed), "paylinks_enabled",
		    jbool(inv->doc_paylinks_enabled), "display",
		    inv->status == DUN_INVOICE_PAID		       ? "Paid"
		    : (inv->meta_bad_debt_paid || id->covered_by_paid) ? "Paid"
		    : inv->status == DUN_INVOICE_VOID		       ? "Resolved"
						      : dun_invoice_status_name(inv->status));
		json_object_set_new(j, "processing", jbool(id->processing));
		json_object_set_new(j, "processing_expired", jbool(id->processing_expired));
		/* Stripe's own next try of it (0: none). */
		json_object_set_new(j, "next_payment_attempt",
				    json_integer((json_int_t)inv->next_payment_attempt_at));
		json_object_set_new(j, "attempts", attempts_json(en->policy, inv));
		json_array_append_new(invs, j);
	}
	json_object_set_new(o, "invoices", invs);
	json_object_set_new(o, "evaluation",
			    json_pack("{s:I, s:s, s:s, s:o, s:o, s:I, s:I, s:I, s:s, s:s}", "now",
				      (json_int_t)now, "stage", dun_stage_name(d->stage),
				      "computed_stage", dun_stage_name(d->computed_stage), "held",
				      jbool(d->held), "skipped", jbool(d->skipped),
				      "days_delinquent", (json_int_t)d->days_delinquent,
				      "delinquent_since", (json_int_t)d->delinquent_since,
				      "next_recheck_at", (json_int_t)d->next_recheck_at, "mode",
				      dun_mode_name(mode), "mode_why", why));
	json_object_set_new(json_object_get(o, "evaluation"), "retries_owner",
			    json_string(dun_retry_owner_name(en->policy->retry_owner)));
	json_object_set_new(o, "view", json_string(mode == DUN_MODE_OBSERVE ? "shadow" : "real"));
	if (mode == DUN_MODE_OBSERVE) {
		json_t *real = json_object();
		json_t *r = rows(en->db,
				 "SELECT stage, since, episode, lifting_since, next_recheck_at"
				 " FROM dunning WHERE account_id = ?1",
				 account_id);
		json_object_set(real, "dunning",
				json_array_size(r) ? json_array_get(r, 0)
						   : json_pack("{s:s}", "stage", "none"));
		json_decref(r);
		r = rows(en->db,
			 "SELECT banned, entitlement, resource_flags FROM platform"
			 " WHERE account_id = ?1",
			 account_id);
		json_t *pl = json_array_size(r)
				 ? json_incref(json_array_get(r, 0))
				 : json_pack("{s:i, s:s}", "banned", 0, "entitlement", "full");
		json_decref(r);
		json_object_set_new(
		    pl, "banned", json_boolean(json_integer_value(json_object_get(pl, "banned"))));
		json_object_set_new(real, "platform", pl);
		r = rows(en->db, "SELECT bad_debt FROM accounts WHERE id = ?1", account_id);
		json_object_set_new(real, "account_bad_debt",
				    json_boolean(json_integer_value(
					json_object_get(json_array_get(r, 0), "bad_debt"))));
		json_decref(r);
		json_object_set_new(o, "real", real);
	}
	json_object_set_new(o, "shadow_consequences",
			    rows(en->db,
				 "SELECT at, type, target, value, kind, key, decision_id"
				 " FROM shadow_consequences WHERE account_id = ?1 ORDER BY id",
				 account_id));
	json_object_set_new(o, "reasons", dun_engine_reasons_json(en));
	json_object_set_new(o, "plan", dun_engine_plan_json(en));
	json_object_set_new(o, "decisions",
			    rows(en->db,
				 "SELECT id, at, trigger_kind, mode, stage_from, stage_to, held,"
				 " skipped, n_planned, n_applied, outcome, error, reasons, plan"
				 " FROM decisions WHERE account_id = ?1 ORDER BY id DESC LIMIT 20",
				 account_id));
	json_object_set_new(o, "bad_debt_episodes",
			    rows(en->db,
				 "SELECT episode, entered_at, reason, products, amount_minor,"
				 " exited_at, exit_reason FROM bad_debt_episodes"
				 " WHERE account_id = ?1 ORDER BY episode",
				 account_id));
	json_object_set_new(
	    o, "emails",
	    rows(en->db,
		 "SELECT key, kind, invoice_id, state, message_id, attempts,"
		 " last_error, created_at, sent_at FROM emails WHERE account_id = ?1"
		 " ORDER BY created_at, key",
		 account_id));
	/* The platform calls still on their way (HTTP platform): the platform
	 * table above is the engine's view, these may not have arrived yet. */
	json_object_set_new(
	    o, "platform_outbox",
	    rows(en->db,
		 "SELECT id, op, value, state, attempts, last_status, last_error,"
		 " not_before, created_at FROM platform_outbox WHERE account_id = ?1"
		 " AND state <> 'sent' ORDER BY id",
		 account_id));
	json_object_set_new(o, "pending_triggers",
			    rows(en->db,
				 "SELECT id, kind, source, state, attempts, last_error, not_before"
				 " FROM inbox WHERE account_id = ?1 AND state <> 'done'"
				 " ORDER BY id",
				 account_id));
	*out = o;
	return DUN_OK;
}
