/*
 * apply.h — EXECUTE: the one applier.
 *
 * Every write the engine makes to any store goes through dun_apply_plan().
 * See apply.c for the design essay (keys, once-semantics, crash windows).
 */
#ifndef DUN_APPLY_H
#define DUN_APPLY_H

#include "apply/effects.h"
#include "core/plan.h"
#include "core/policy.h"
#include "gather/gather.h"
#include "provider/provider.h"
#include "store/db.h"
#include "store/fence.h"

/* Renders one email; subject and body are heap strings the caller frees. */
struct dun_email_ctx {
	enum dun_email_kind kind;
	const struct dun_snapshot *snap;
	const struct dun_desired *desired;
	const struct dun_policy *policy;
	const char *invoice_id; /* the invoice a per-invoice notice is about, or "" */
	int64_t now;
};

struct dun_renderer_ops {
	enum dun_err (*render)(void *self, const struct dun_email_ctx *ctx, char **subject,
			       char **body, char *err, size_t err_size);
};

struct dun_renderer {
	const struct dun_renderer_ops *ops;
	void *self;
};

struct dun_applier {
	struct dun_db *db; /* borrowed */
	struct dun_provider provider;
	struct dun_platform platform;
	struct dun_mailer mailer;
	struct dun_renderer renderer;
	const struct dun_policy *policy;
	/*
	 * The claim the plan is applied under (store/fence.h), borrowed; NULL
	 * or token 0 applies unfenced (single-process tools). Every write
	 * checks it: DUN_E_FENCED once another worker has taken the account.
	 */
	const struct dun_fence *fence;
	/*
	 * Set by a worker's batch (inbox/worker.c): the caller holds the
	 * transaction, under a savepoint of the account, and checked the fence
	 * in it. Engine-DB consequences (and the simulated provider's calls)
	 * then write in that transaction, with no commit and no fence check
	 * of their own; on failure the caller
	 * rolls back to its savepoint. Only plans dun_apply_plan_batchable()
	 * accepts may be applied this way.
	 */
	bool in_batch;
};

struct dun_apply_result {
	int n_applied;
	int n_skipped; /* "once" consequences whose key was already applied */
	int n_failed;
	enum dun_err error;
	char error_text[512];
	int failed_index; /* index in the plan of the failed consequence, or -1 */
	bool fresh_read;  /* the provider was re-read (before a destructive consequence) */
};

/*
 * Apply plan for the account in snap, recording each consequence's outcome
 * under decision_id. Stops at the first failure (later consequences may
 * depend on it; the retry recomputes from fresh state). Borrows everything.
 */
enum dun_err dun_apply_plan(struct dun_applier *ap, const struct dun_snapshot *snap,
			    const struct dun_desired *d, const struct dun_plan *plan,
			    int64_t decision_id, struct dun_apply_result *res);

/*
 * Whether plan can be applied inside a worker's batch transaction without
 * any network call: every consequence writes only to the engine DB (engine
 * tables, the email outbox, a platform whose writes are queued in the
 * engine DB), and none is a provider call or destructive (those re-read
 * the provider first) — unless the provider is the simulated one on the
 * engine's own connection (dun_provider.local_db), whose calls are writes
 * of that transaction too. Borrows ap and plan.
 */
bool dun_apply_plan_batchable(const struct dun_applier *ap, const struct dun_plan *plan);

#endif
