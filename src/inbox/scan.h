/*
 * scan.h — the drift scan: every account evaluated against the policy,
 * counted per drift class (core/drift.h), optionally with a drift_detected
 * trigger queued for each drifting account. Reads only, unless enqueue.
 */
#ifndef DUN_SCAN_H
#define DUN_SCAN_H

#include "apply/recompute.h"
#include "core/drift.h"

/*
 * An account in observe mode drifts when its shadow disagrees with the
 * policy (the engine has not yet caught up with what it would do); how far
 * its real stores are from the policy is counted apart, as information:
 * those are the legacy system's business until cutover, never repaired.
 */
struct dun_scan_result {
	int64_t accounts;
	int64_t drifting; /* active: real stores; observe: the shadow */
	int64_t per_class[DUN_DRIFT__COUNT];
	int64_t observe_accounts;
	int64_t observe_real_drifting; /* information only */
	int64_t observe_real_per_class[DUN_DRIFT__COUNT];
	int64_t planned;  /* consequences a recompute of every account would plan */
	int64_t enqueued; /* drift_detected triggers queued */
	/* accounts with a platform restriction for another reason than
	 * non-payment: not dunning's, reported, never repaired */
	int64_t kept_accounts;
	int64_t platform_requests; /* reads of an HTTP platform made by the scan */
	char error[512];	   /* why the scan failed, when it did */
	json_t *examples;	   /* up to 20 drifting accounts with their classes (new ref) */
};

/* Called every 10,000 accounts with the number done so far (may be NULL). */
typedef void (*dun_scan_progress_fn)(int64_t done, void *arg);

enum dun_err dun_scan_run(struct dun_engine *en, int64_t now, bool enqueue,
			  dun_scan_progress_fn progress, void *arg, struct dun_scan_result *out);

#endif
