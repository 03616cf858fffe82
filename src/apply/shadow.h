/*
 * shadow.h — EXECUTE's stand-in for observe mode: record, in the shadow
 * tables, what the plan would have done, instead of doing it.
 *
 * Every consequence of the plan is logged once per idempotency key in
 * shadow_consequences, with the time it would first have been applied
 * (the engine clock of the pass that planned it) and the decision behind
 * it; the shadow state (shadow_dunning, shadow_invoices,
 * shadow_subscriptions) moves as the real stores would have, so the next
 * pass decides against it (gather/shadow.h) and a consequence is never
 * planned twice. The shadow's next recheck is scheduled like a real one
 * (dun_inbox_enqueue_due_rechecks reads it). No real store is touched.
 */
#ifndef DUN_APPLY_SHADOW_H
#define DUN_APPLY_SHADOW_H

#include "core/plan.h"
#include "store/db.h"

/*
 * Record plan for account_id at now under decision_id, in one transaction
 * (its own, unless the caller has one open). *n_new gets how many
 * consequences were recorded for the first time.
 */
enum dun_err dun_shadow_record(struct dun_db *db, const char *account_id,
			       const struct dun_plan *plan, int64_t decision_id, int64_t now,
			       int *n_new);

/*
 * Drop from plan the "once" consequences (retries, emails, events, episodes)
 * the shadow already recorded: as the applier skips an applied key, the
 * shadow never does them twice. Shown plans then read like active ones.
 */
enum dun_err dun_shadow_filter_plan(struct dun_db *db, struct dun_plan *plan);

#endif
