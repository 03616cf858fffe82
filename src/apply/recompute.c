/*
 * recompute.c — the pipeline driver (see recompute.h).
 *
 * Every trigger, whatever its kind, ends here and does the same thing: read
 * everything, compute the truth, apply the difference. The decision log
 * records each pass (mode, stages, reasons, plan, outcome) before and after
 * the applier runs, so a crash mid-plan leaves a decision marked `applying`
 * that the next pass supersedes.
 */
#include "recompute.h"
#include "apply/shadow.h"
#include "gather/refresh.h"
#include "gather/shadow.h"
#include "util/clock.h"
#include "util/log.h"
#include "util/mem.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

void dun_engine_init(struct dun_engine *en, struct dun_db *db, const struct dun_policy *policy,
		     struct dun_provider provider, struct dun_platform platform,
		     struct dun_mailer mailer, struct dun_renderer renderer)
{
	memset(en, 0, sizeof *en);
	en->db = db;
	en->policy = policy;
	en->applier.db = db;
	en->applier.provider = provider;
	en->applier.platform = platform;
	en->applier.mailer = mailer;
	en->applier.renderer = renderer;
	en->applier.policy = policy;
	dun_snapshot_init(&en->snap);
	dun_rollout_load(db, &en->rollout);
}

void dun_engine_free(struct dun_engine *en)
{
	dun_snapshot_free(&en->snap);
	dun_platform_conn_free(en->platform_conn);
	free(en->inv_d);
	free(en->items);
	memset(en, 0, sizeof *en);
}

/*
 * The end of GATHER: when the mirror lacks payment attempts of an open
 * invoice (or a payment has been in flight too long), read them from the
 * provider and gather again (gather/refresh.h). A failed refresh fails the
 * pass as retryable (DUN_E_INCOMPLETE): the mirror is known to lag, and a
 * decision on it could skip a retry, a notice or a restriction the real
 * state calls for. Nothing is decided; the trigger retries with backoff and
 * the account is marked incomplete for the drift scan.
 */
static enum dun_err gather_refresh(struct dun_engine *en)
{
	struct dun_refresh_result r;
	enum dun_err e =
	    dun_gather_refresh(en->db, en->applier.provider, en->policy, &en->snap, &r);
	if (!r.n_invoices)
		return e;
	const char *account = en->snap.state.account_id;
	char invoices[16], objects[16];
	snprintf(invoices, sizeof invoices, "%d", r.n_invoices);
	snprintf(objects, sizeof objects, "%d", r.n_objects);
	if (r.refresh_err != DUN_OK) {
		dun_log(DUN_LOG_WARN, "gather.refresh_failed", "account", account, "invoices",
			invoices, "code", dun_err_name(r.refresh_err), "error",
			r.err_text[0] ? r.err_text : dun_err_str(r.refresh_err), NULL);
		snprintf(
		    en->unread, sizeof en->unread,
		    "provider: refreshing %s invoice(s) whose attempts the mirror lacks: %.400s",
		    invoices, r.err_text[0] ? r.err_text : dun_err_str(r.refresh_err));
		en->unread_store = "provider";
		return e != DUN_OK ? e : DUN_E_INCOMPLETE;
	}
	dun_log(DUN_LOG_INFO, "gather.refreshed", "account", account, "invoices", invoices,
		"objects", objects, NULL);
	return e;
}

/*
 * GATHER's read of the platform (gather/platform_read.h). The local
 * platform is two tables of the engine DB. An HTTP platform was asked when
 * the pass began (platform_begin) and is collected here; when it could not
 * be read the pass fails as retryable and decides nothing: a snapshot
 * without the platform's real state is known to be incomplete.
 */
static void platform_begin(struct dun_engine *en, const char *account_id)
{
	en->unread[0] = '\0';
	en->unread_store = "";
	const struct dun_platform_reader *r = en->applier.platform.reader;
	if (!r)
		return;
	if (!en->platform_conn)
		en->platform_conn = dun_platform_conn_new(r);
	dun_platform_read_begin(en->platform_conn, account_id);
}

static enum dun_err platform_end(struct dun_engine *en)
{
	if (!en->applier.platform.reader)
		return dun_platform_read_local(en->db, &en->snap);
	enum dun_err e = dun_platform_read_end(en->platform_conn, en->db, &en->snap, en->unread,
					       sizeof en->unread);
	if (e != DUN_OK) {
		if (!en->unread[0])
			snprintf(en->unread, sizeof en->unread,
				 "platform: reading the pending calls: %s", dun_err_str(e));
		dun_log(DUN_LOG_WARN, "gather.platform_unreadable", "account",
			en->snap.state.account_id, "error", en->unread, NULL);
		en->unread_store = "platform";
		return DUN_E_PLATFORM;
	}
	return DUN_OK;
}

/*
 * GATHER + EVALUATE + DECIDE. With refresh_wanted (a worker's batch, which
 * must not wait on the network inside its transaction) a mirror that needs
 * the provider's refresh is not refreshed: *refresh_wanted is set and the
 * pass stops there, deciding nothing.
 */
static enum dun_err evaluate(struct dun_engine *en, const char *account_id, int64_t now,
			     bool *refresh_wanted)
{
	platform_begin(en, account_id);
	enum dun_err e = dun_gather(en->db, account_id, &en->snap);
	if (e == DUN_OK && refresh_wanted) {
		*refresh_wanted =
		    dun_gather_refresh_wanted(en->applier.provider, en->policy, &en->snap, now);
		if (*refresh_wanted)
			return DUN_OK;
	} else if (e == DUN_OK) {
		e = gather_refresh(en);
	}
	if (e == DUN_OK)
		e = platform_end(en);
	/* Observe mode decides against the shadow, not the real stores. */
	if (e == DUN_OK)
		en->mode = dun_rollout_mode_of(&en->rollout, account_id, en->snap.rollout_list,
					       &en->mode_why);
	bool observe = e == DUN_OK && en->mode == DUN_MODE_OBSERVE;
	if (observe)
		e = dun_shadow_overlay(en->db, &en->snap);
	if (e == DUN_OK)
		e = dun_engine_decide(en, now);
	if (e == DUN_OK && observe)
		e = dun_shadow_filter_plan(en->db, &en->plan);
	return e;
}

enum dun_err dun_engine_evaluate(struct dun_engine *en, const char *account_id, int64_t now)
{
	return evaluate(en, account_id, now, NULL);
}

enum dun_err dun_engine_decide(struct dun_engine *en, int64_t now)
{
	enum dun_err e;
	const struct dun_state *s = &en->snap.state;
	if (s->n_invoices > en->inv_d_cap) {
		en->inv_d_cap = s->n_invoices * 2;
		en->inv_d = dun_realloc(en->inv_d, sizeof *en->inv_d * (size_t)en->inv_d_cap);
	}
	en->desired.invoices = en->inv_d;
	en->desired.reasons = en->reasons;
	en->desired.reasons_cap = DUN_REASONS_MAX;
	e = dun_policy_evaluate(s, en->policy, now, &en->desired);
	if (e != DUN_OK && e != DUN_E_TOO_BIG)
		return e;
	if (!en->items) {
		en->items_cap = 64;
		en->items = dun_malloc(sizeof *en->items * (size_t)en->items_cap);
	}
	for (;;) {
		en->plan.items = en->items;
		en->plan.cap = en->items_cap;
		en->plan.n = 0;
		e = dun_plan_decide(s, &en->desired, &en->plan);
		if (e != DUN_E_TOO_BIG)
			return e;
		en->items_cap *= 2;
		en->items = dun_realloc(en->items, sizeof *en->items * (size_t)en->items_cap);
	}
}

json_t *dun_engine_plan_json(const struct dun_engine *en)
{
	json_t *arr = json_array();
	for (int i = 0; i < en->plan.n; i++) {
		const struct dun_consequence *c = &en->plan.items[i];
		char line[DUN_KEY_MAX + 64];
		dun_conseq_format(c, line, sizeof line);
		json_array_append_new(
		    arr, json_pack("{s:s, s:s, s:s, s:I, s:s, s:s}", "type",
				   dun_conseq_name(c->type), "store",
				   dun_store_name(dun_conseq_store(c->type)), "target", c->target,
				   "value", (json_int_t)c->value, "key", c->key, "text", line));
	}
	return arr;
}

json_t *dun_engine_reasons_json(const struct dun_engine *en)
{
	json_t *arr = json_array();
	for (int i = 0; i < en->desired.n_reasons; i++)
		json_array_append_new(arr,
				      json_pack("{s:s, s:s}", "rule", en->desired.reasons[i].rule,
						"text", en->desired.reasons[i].text));
	return arr;
}

static enum dun_err record_decision(struct dun_engine *en, const struct dun_trigger_ref *t,
				    enum dun_mode mode, const char *outcome, int64_t *id_out)
{
	/* An empty list is written as such: most passes plan nothing. */
	char *plan_s = NULL, *reasons_s = NULL;
	if (en->plan.n) {
		json_t *plan = dun_engine_plan_json(en);
		plan_s = json_dumps(plan, JSON_COMPACT);
		json_decref(plan);
	}
	if (en->desired.n_reasons) {
		json_t *reasons = dun_engine_reasons_json(en);
		reasons_s = json_dumps(reasons, JSON_COMPACT);
		json_decref(reasons);
	}
	/* The id without RETURNING where the store can say it (store/db.h). */
	bool returning = !dun_db_has_last_insert_id(en->db);
	struct dun_stmt *st = dun_db_stmt(
	    en->db, returning
			? "INSERT INTO decisions(account_id, trigger_id, trigger_kind, at, mode,"
			  " stage_from, stage_to, held, skipped, n_planned, outcome, reasons, plan)"
			  " VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13)"
			  " RETURNING id"
			: "INSERT INTO decisions(account_id, trigger_id, trigger_kind, at, mode,"
			  " stage_from, stage_to, held, skipped, n_planned, outcome, reasons, plan)"
			  " VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13)");
	dun_stmt_bind_text(st, 1, en->snap.state.account_id);
	dun_stmt_bind_int64(st, 2, t ? t->id : 0);
	dun_stmt_bind_text(st, 3, t && t->kind ? t->kind : "");
	dun_stmt_bind_int64(st, 4, dun_clock_now());
	dun_stmt_bind_text(st, 5, dun_mode_name(mode));
	dun_stmt_bind_text(st, 6, dun_stage_name(en->snap.state.stage));
	dun_stmt_bind_text(st, 7, dun_stage_name(en->desired.computed_stage));
	dun_stmt_bind_int(st, 8, en->desired.held);
	dun_stmt_bind_int(st, 9, en->desired.skipped);
	dun_stmt_bind_int(st, 10, en->plan.n);
	dun_stmt_bind_text(st, 11, outcome);
	dun_stmt_bind_text(st, 12, reasons_s ? reasons_s : "[]");
	dun_stmt_bind_text(st, 13, plan_s ? plan_s : "[]");
	*id_out = 0;
	enum dun_err e = DUN_OK;
	if (!returning) {
		e = dun_stmt_done(st);
		if (e == DUN_OK)
			*id_out = dun_db_last_insert_id(en->db);
	} else if (dun_stmt_row(st)) {
		*id_out = dun_stmt_col_int64(st, 0);
		dun_stmt_reset(st);
	} else {
		e = dun_stmt_err(st);
		dun_stmt_reset(st);
	}
	free(plan_s);
	free(reasons_s);
	/*
	 * A pass that decided read every store: the account is no longer
	 * incomplete. GATHER said whether it was marked (most accounts never
	 * are: no statement for them); a failed pass may not have read
	 * everything and leaves the mark.
	 */
	if (e == DUN_OK && en->snap.incomplete_marked && strcmp(outcome, "failed") != 0) {
		st = dun_db_stmt(en->db, "DELETE FROM incomplete_accounts WHERE account_id = ?1");
		dun_stmt_bind_text(st, 1, en->snap.state.account_id);
		e = dun_stmt_done(st);
	}
	return e;
}

/*
 * Mark account_id incomplete (GATHER could not read every store): kept
 * since the first failure, with the latest reason, until a pass reads
 * everything. Failing to write the mark fails nothing: the trigger is
 * retrying anyway, with the reason in its last_error.
 */
static void mark_incomplete(struct dun_engine *en, const char *account_id)
{
	int64_t now = dun_clock_now();
	struct dun_stmt *st = dun_db_stmt(
	    en->db,
	    "INSERT INTO incomplete_accounts(account_id, store, reason, since, last_at)"
	    " VALUES (?1, ?2, ?3, ?4, ?4) ON CONFLICT (account_id) DO UPDATE SET"
	    " store = excluded.store, reason = excluded.reason, last_at = excluded.last_at");
	dun_stmt_bind_text(st, 1, account_id);
	dun_stmt_bind_text(st, 2,
			   en->unread_store && en->unread_store[0] ? en->unread_store : "provider");
	dun_stmt_bind_text(st, 3, en->unread);
	dun_stmt_bind_int64(st, 4, now);
	enum dun_err e = dun_stmt_done(st);
	if (e != DUN_OK)
		dun_log(DUN_LOG_WARN, "recompute.mark_incomplete_failed", "account", account_id,
			"error", dun_err_str(e), NULL);
}

/* record_decision() under the claim: nothing is recorded by a worker that lost it. */
static enum dun_err record_decision_fenced(struct dun_engine *en, const struct dun_trigger_ref *t,
					   enum dun_mode mode, const char *outcome, int64_t *id_out,
					   bool *settled)
{
	*id_out = 0;
	enum dun_err e = dun_fence_begin(en->db, en->applier.fence);
	if (e != DUN_OK)
		return e;
	e = record_decision(en, t, mode, outcome, id_out);
	if (e == DUN_OK && settled && en->settle) {
		e = en->settle(en->db, en->settle_arg);
		*settled = e == DUN_OK;
	}
	if (e == DUN_OK)
		e = dun_db_commit(en->db);
	if (e != DUN_OK && settled)
		*settled = false;
	if (e != DUN_OK) {
		dun_db_rollback(en->db);
		*id_out = 0;
	}
	return e;
}

static enum dun_err finish_decision(struct dun_engine *en, int64_t id, const char *outcome,
				    int n_applied, const char *error)
{
	struct dun_stmt *st =
	    dun_db_stmt(en->db, "UPDATE decisions SET outcome = ?2, n_applied = ?3,"
				" error = ?4 WHERE id = ?1");
	dun_stmt_bind_int64(st, 1, id);
	dun_stmt_bind_text(st, 2, outcome);
	dun_stmt_bind_int(st, 3, n_applied);
	dun_stmt_bind_text(st, 4, error);
	return dun_stmt_done(st);
}

/*
 * What the evaluation decided, into the result (before anything is
 * applied), with the mode it decided in: read once per pass.
 */
static void describe(struct dun_engine *en, struct dun_recompute_result *out)
{
	out->from = en->snap.state.stage;
	out->to = en->desired.stage;
	out->held = en->desired.held;
	out->skipped = en->desired.skipped;
	out->n_planned = en->plan.n;
	out->mode = en->mode;
	out->mode_why = en->mode_why;
}

enum dun_err dun_engine_recompute(struct dun_engine *en, const char *account_id,
				  const struct dun_trigger_ref *trigger, bool dry_run,
				  struct dun_recompute_result *out)
{
	memset(out, 0, sizeof *out);
	out->dry_run = dry_run;
	int64_t now = dun_clock_now();
	enum dun_err e = dun_engine_evaluate(en, account_id, now);
	if (e != DUN_OK) {
		if (en->unread[0]) {
			snprintf(out->apply.error_text, sizeof out->apply.error_text, "%s",
				 en->unread);
			if (!dry_run)
				mark_incomplete(en, account_id);
		}
		return e;
	}
	describe(en, out);
	if (dry_run)
		return DUN_OK;
	const char *kind = trigger && trigger->kind ? trigger->kind : "";
	if (out->mode == DUN_MODE_OBSERVE) {
		/* The decision and its shadow land together, or neither does. */
		int n_new = 0;
		e = dun_fence_begin(en->db, en->applier.fence);
		if (e == DUN_OK)
			e = record_decision(en, trigger, out->mode, "observed", &out->decision_id);
		if (e == DUN_OK)
			e = dun_shadow_record(en->db, account_id, &en->plan, out->decision_id,
					      dun_clock_now(), &n_new);
		if (e == DUN_OK && en->settle) {
			e = en->settle(en->db, en->settle_arg);
			out->settled = e == DUN_OK;
		}
		if (e == DUN_OK)
			e = dun_db_commit(en->db);
		if (e != DUN_OK) {
			dun_db_rollback(en->db);
			out->decision_id = 0;
			out->settled = false;
			n_new = 0;
		}
		char shadowed[16];
		snprintf(shadowed, sizeof shadowed, "%d", n_new);
		dun_log(DUN_LOG_INFO, "recompute.done", "account", account_id, "trigger", kind,
			"mode", "observe", "outcome", "observed", "stage", dun_stage_name(out->to),
			"shadow_new", shadowed, NULL);
		return e;
	}
	if (en->plan.n == 0) {
		const char *outcome = "noop";
		e = record_decision_fenced(en, trigger, out->mode, outcome, &out->decision_id,
					   &out->settled);
		dun_log(DUN_LOG_INFO, "recompute.done", "account", account_id, "trigger", kind,
			"mode", dun_mode_name(out->mode), "outcome", outcome, "stage",
			dun_stage_name(out->to), NULL);
		return e;
	}
	e = record_decision_fenced(en, trigger, out->mode, "applying", &out->decision_id, NULL);
	if (e != DUN_OK)
		return e;
	e = dun_apply_plan(&en->applier, &en->snap, &en->desired, &en->plan, out->decision_id,
			   &out->apply);
	const char *outcome = e == DUN_OK ? "applied" : "failed";
	enum dun_err fe = finish_decision(en, out->decision_id, outcome, out->apply.n_applied,
					  out->apply.error_text);
	char planned[16], applied[16];
	snprintf(planned, sizeof planned, "%d", en->plan.n);
	snprintf(applied, sizeof applied, "%d", out->apply.n_applied);
	dun_log(e == DUN_OK ? DUN_LOG_INFO : DUN_LOG_WARN, "recompute.done", "account", account_id,
		"trigger", kind, "mode", "active", "outcome", outcome, "from",
		dun_stage_name(out->from), "to", dun_stage_name(out->to), "planned", planned,
		"applied", applied, "error", out->apply.error_text, NULL);
	return e != DUN_OK ? e : fe;
}

enum dun_err dun_engine_apply_request(struct dun_engine *en, const struct dun_consequence *items,
				      int n, const char *kind, struct dun_recompute_result *out)
{
	memset(out, 0, sizeof *out);
	const char *account_id = en->snap.state.account_id;
	out->mode =
	    dun_rollout_mode_of(&en->rollout, account_id, en->snap.rollout_list, &out->mode_why);
	if (out->mode == DUN_MODE_OBSERVE) {
		snprintf(out->apply.error_text, sizeof out->apply.error_text,
			 "account %s is in observe mode (%s): nothing is written", account_id,
			 out->mode_why);
		return DUN_E_GUARD;
	}
	if (n > en->items_cap) {
		en->items_cap = n;
		en->items = dun_realloc(en->items, sizeof *en->items * (size_t)n);
	}
	memcpy(en->items, items, sizeof *items * (size_t)n);
	en->plan.items = en->items;
	en->plan.cap = en->items_cap;
	en->plan.n = n;
	out->n_planned = n;
	out->from = out->to = en->snap.state.stage;
	struct dun_trigger_ref t = {.id = 0, .kind = kind};
	enum dun_err e =
	    record_decision_fenced(en, &t, out->mode, "applying", &out->decision_id, NULL);
	if (e != DUN_OK)
		return e;
	e = dun_apply_plan(&en->applier, &en->snap, &en->desired, &en->plan, out->decision_id,
			   &out->apply);
	enum dun_err fe = finish_decision(en, out->decision_id, e == DUN_OK ? "applied" : "failed",
					  out->apply.n_applied, out->apply.error_text);
	dun_log(e == DUN_OK ? DUN_LOG_INFO : DUN_LOG_WARN, "request.done", "account", account_id,
		"request", kind, "outcome", e == DUN_OK ? "applied" : "failed", "error",
		out->apply.error_text, NULL);
	return e != DUN_OK ? e : fe;
}

/*
 * The batched pass (see recompute.h and the design in inbox/worker.c). Every
 * write below lands in the caller's transaction, under the caller's
 * savepoint of this account, after the fence check that opens it; nothing
 * here commits or rolls back.
 */
enum dun_err dun_engine_recompute_batched(struct dun_engine *en, const char *account_id,
					  const struct dun_trigger_ref *trigger,
					  struct dun_recompute_result *out, bool *deferred)
{
	memset(out, 0, sizeof *out);
	*deferred = false;
	if (en->applier.platform.reader) {
		/* An HTTP platform is read over the network: not in a batch. */
		*deferred = true;
		return DUN_OK;
	}
	enum dun_err e = dun_fence_check(en->db, en->applier.fence);
	if (e != DUN_OK)
		return e;
	int64_t now = dun_clock_now();
	bool refresh_wanted = false;
	e = evaluate(en, account_id, now, &refresh_wanted);
	if (e != DUN_OK || refresh_wanted) {
		*deferred = refresh_wanted;
		return e;
	}
	describe(en, out);
	if (out->mode == DUN_MODE_ACTIVE && en->plan.n &&
	    !dun_apply_plan_batchable(&en->applier, &en->plan)) {
		*deferred = true;
		return DUN_OK;
	}
	if (out->mode == DUN_MODE_OBSERVE) {
		int n_new = 0;
		e = record_decision(en, trigger, out->mode, "observed", &out->decision_id);
		if (e == DUN_OK)
			e = dun_shadow_record(en->db, account_id, &en->plan, out->decision_id,
					      dun_clock_now(), &n_new);
	} else if (en->plan.n == 0) {
		e = record_decision(en, trigger, out->mode, "noop", &out->decision_id);
	} else {
		e = record_decision(en, trigger, out->mode, "applying", &out->decision_id);
		if (e == DUN_OK) {
			en->applier.in_batch = true;
			e = dun_apply_plan(&en->applier, &en->snap, &en->desired, &en->plan,
					   out->decision_id, &out->apply);
			en->applier.in_batch = false;
		}
		if (e == DUN_OK)
			e = finish_decision(en, out->decision_id, "applied", out->apply.n_applied,
					    "");
	}
	if (e == DUN_OK && en->settle) {
		e = en->settle(en->db, en->settle_arg);
		out->settled = e == DUN_OK;
	}
	if (e != DUN_OK) {
		out->decision_id = 0;
		out->settled = false;
	}
	return e;
}

enum dun_err dun_engine_record_failure(struct dun_engine *en, const struct dun_trigger_ref *trigger,
				       enum dun_mode mode, const char *error, int64_t *id_out)
{
	enum dun_err e = record_decision(en, trigger, mode, "failed", id_out);
	if (e == DUN_OK)
		e = finish_decision(en, *id_out, "failed", 0, error);
	return e;
}

void dun_engine_log_done(const char *account_id, const struct dun_trigger_ref *trigger,
			 const struct dun_recompute_result *r)
{
	const char *kind = trigger && trigger->kind ? trigger->kind : "";
	const char *outcome = r->mode == DUN_MODE_OBSERVE ? "observed"
			      : r->n_planned == 0	  ? "noop"
							  : "applied";
	char planned[16], applied[16];
	snprintf(planned, sizeof planned, "%d", r->n_planned);
	snprintf(applied, sizeof applied, "%d", r->apply.n_applied);
	dun_log(DUN_LOG_INFO, "recompute.done", "account", account_id, "trigger", kind, "mode",
		dun_mode_name(r->mode), "outcome", outcome, "from", dun_stage_name(r->from), "to",
		dun_stage_name(r->to), "planned", planned, "applied", applied, "batched", "1",
		NULL);
}
