/*
 * recompute.h — one trigger, one pass through the pipeline:
 * GATHER → EVALUATE → DECIDE → (rollout gate) → EXECUTE → decision log.
 *
 * A struct dun_engine holds the reusable buffers of one worker (snapshot,
 * desired state, plan) and the applier's seams. One engine per thread.
 */
#ifndef DUN_RECOMPUTE_H
#define DUN_RECOMPUTE_H

#include "apply/apply.h"
#include "apply/rollout.h"

#define DUN_REASONS_MAX 64

struct dun_engine {
	struct dun_db *db;
	const struct dun_policy *policy;
	struct dun_applier applier;
	struct dun_rollout rollout;
	struct dun_snapshot snap;
	struct dun_invoice_desired *inv_d;
	int inv_d_cap;
	struct dun_reason reasons[DUN_REASONS_MAX];
	struct dun_consequence *items;
	int items_cap;
	struct dun_desired desired;
	struct dun_plan plan;
	/* the HTTP platform's read connection (NULL until first used) */
	struct dun_platform_conn *platform_conn;
	/*
	 * Why GATHER could not read every store ("" when it could): the
	 * platform did not answer, or the provider refresh the mirror needed
	 * failed. The recompute then decides nothing (DUN_E_PLATFORM or
	 * DUN_E_INCOMPLETE, retryable) and the account is marked incomplete.
	 */
	char unread[512];
	/*
	 * Settling the trigger (worker.c), run inside the decision's own
	 * transaction when the recompute writes nothing else (an empty plan,
	 * observe mode): one commit instead of two. NULL: the caller settles.
	 */
	enum dun_err (*settle)(struct dun_db *db, void *arg);
	void *settle_arg;
	const char *unread_store; /* "platform" or "provider" */
	/* The account's rollout mode as the last evaluation read it, and why. */
	enum dun_mode mode;
	const char *mode_why;
};

/* Set up en over db with the given seams (all borrowed; they must outlive en). */
void dun_engine_init(struct dun_engine *en, struct dun_db *db, const struct dun_policy *policy,
		     struct dun_provider provider, struct dun_platform platform,
		     struct dun_mailer mailer, struct dun_renderer renderer);
void dun_engine_free(struct dun_engine *en);

/*
 * GATHER + EVALUATE + DECIDE for account_id at now. Afterwards en->snap,
 * en->desired and en->plan hold the result. Writes nothing but the
 * provider mirror, and that only when GATHER finds an open invoice whose
 * payment attempts the mirror lacks and refreshes it from the provider
 * (gather/refresh.h); otherwise it makes no provider call.
 */
enum dun_err dun_engine_evaluate(struct dun_engine *en, const char *account_id, int64_t now);

/*
 * EVALUATE + DECIDE at now on en->snap as it stands (filled by dun_gather()
 * or by a stream, see gather/stream.h), writing nothing. Afterwards
 * en->desired and en->plan hold the result.
 */
enum dun_err dun_engine_decide(struct dun_engine *en, int64_t now);

struct dun_recompute_result {
	int64_t decision_id; /* 0 for a dry run */
	enum dun_mode mode;
	const char *mode_why;
	bool dry_run;
	enum dun_stage from;
	enum dun_stage to;
	bool held;
	bool skipped;
	int n_planned;
	struct dun_apply_result apply;
	bool settled; /* en->settle ran and committed with the decision */
};

struct dun_trigger_ref {
	int64_t id;	  /* inbox id, 0 when none */
	const char *kind; /* payment_failed, support_recompute, recheck, ... */
};

/*
 * The whole pipeline for one account. With dry_run, nothing is written (not
 * even the decision log). Returns the applier's error when a consequence
 * failed (the decision is recorded as failed); DUN_E_NOT_FOUND for an
 * unknown account.
 */
enum dun_err dun_engine_recompute(struct dun_engine *en, const char *account_id,
				  const struct dun_trigger_ref *trigger, bool dry_run,
				  struct dun_recompute_result *out);

/*
 * The pass of dun_engine_recompute() for a worker's batch (inbox/worker.c):
 * the caller holds an open transaction and a savepoint of this account;
 * this checks and renews the claim (en->applier.fence) in it, gathers,
 * decides and, when the plan writes only to the engine DB
 * (dun_apply_plan_batchable), records the decision, applies the plan and
 * settles the trigger (en->settle) — all in the caller's transaction,
 * committing nothing. When the pass would need the network (an HTTP
 * platform to read, the provider's refresh of the mirror, a provider call
 * or a destructive consequence in the plan) nothing is decided and
 * *deferred is set: the caller rolls back to its savepoint and runs the
 * account through dun_engine_recompute() after the batch commits. On any
 * error (DUN_E_FENCED included) the caller rolls back to its savepoint:
 * what was written here is not to be kept. Borrows everything.
 */
enum dun_err dun_engine_recompute_batched(struct dun_engine *en, const char *account_id,
					  const struct dun_trigger_ref *trigger,
					  struct dun_recompute_result *out, bool *deferred);

/*
 * In the caller's transaction: a decision of the account last evaluated by
 * en, with outcome failed and the error text, nothing applied. For a
 * batched pass rolled back to its savepoint. *id_out gets its id.
 */
enum dun_err dun_engine_record_failure(struct dun_engine *en, const struct dun_trigger_ref *trigger,
				       enum dun_mode mode, const char *error, int64_t *id_out);

/* The recompute.done log line of a batched pass, once its batch committed. */
void dun_engine_log_done(const char *account_id, const struct dun_trigger_ref *trigger,
			 const struct dun_recompute_result *r);

/*
 * Apply an explicit request's plan (items, n) to the account evaluated last
 * by dun_engine_evaluate(), recording a decision with trigger kind. Refused
 * (DUN_E_GUARD) for an account in observe mode: observe writes nothing.
 */
enum dun_err dun_engine_apply_request(struct dun_engine *en, const struct dun_consequence *items,
				      int n, const char *kind, struct dun_recompute_result *out);

/* The plan and reasons of en as JSON (new references). */
json_t *dun_engine_plan_json(const struct dun_engine *en);
json_t *dun_engine_reasons_json(const struct dun_engine *en);

#endif
