/*
 * scan.h — the drift scan: every account evaluated against the policy,
 * counted per drift class (core/drift.h), optionally with a drift_detected
 * trigger queued for each drifting account. Reads only, unless enqueue.
 */
#ifndef DUN_SCAN_H
#define DUN_SCAN_H

#include "apply/recompute.h"
#include "core/drift.h"

struct dun_scan_result {
	int64_t accounts;
	int64_t drifting;
	int64_t per_class[DUN_DRIFT__COUNT];
	int64_t planned;  /* consequences a recompute of every account would plan */
	int64_t enqueued; /* drift_detected triggers queued */
	json_t *examples; /* up to 20 drifting accounts with their classes (new ref) */
};

/* Called every 10,000 accounts with the number done so far (may be NULL). */
typedef void (*dun_scan_progress_fn)(int64_t done, void *arg);

enum dun_err dun_scan_run(struct dun_engine *en, int64_t now, bool enqueue,
			  dun_scan_progress_fn progress, void *arg, struct dun_scan_result *out);

#endif
