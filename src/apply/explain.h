/*
 * explain.h — the explain trace of one account as JSON: the gathered state,
 * the rules that matched (with their numbers), the plan, and the history
 * (decisions, bad-debt episodes, emails, platform calls not yet delivered,
 * pending triggers). Used by `dunning explain` and GET /accounts/{id}.
 * Writes nothing.
 */
#ifndef DUN_EXPLAIN_H
#define DUN_EXPLAIN_H

#include "apply/recompute.h"

/*
 * Evaluate account_id at now with en and describe it. On success *out is a
 * new JSON object the caller decrefs. DUN_E_NOT_FOUND for an unknown account.
 */
enum dun_err dun_explain_json(struct dun_engine *en, const char *account_id, int64_t now,
			      json_t **out);

#endif
