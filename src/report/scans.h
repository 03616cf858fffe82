/*
 * scans.h — the recorded drift scans: each scan that could write leaves
 * its count per class behind, so /metrics, the panel and `dunning report`
 * show the last one and its age without scanning again.
 */
#ifndef DUN_REPORT_SCANS_H
#define DUN_REPORT_SCANS_H

#include <stdbool.h>
#include <stdint.h>

#include "core/drift.h"
#include "inbox/scan.h"
#include "store/db.h"
#include "util/err.h"

/*
 * Record r, a scan finished at `at` (the engine's clock), in its own
 * transaction. *id (may be NULL) receives the scan's id.
 */
enum dun_err dun_scans_record(struct dun_db *db, int64_t at, const struct dun_scan_result *r,
			      int64_t *id);

/* The last recorded scan. Classes this binary does not know are left out. */
struct dun_scan_record {
	bool found; /* false: no scan was ever recorded (the rest is zero) */
	int64_t id;
	int64_t at;
	int64_t accounts;
	int64_t drifting;
	int64_t observe_accounts;
	int64_t observe_real_drifting;
	int64_t planned;
	int64_t enqueued;
	int64_t per_class[DUN_DRIFT__COUNT];
	int64_t observe_real[DUN_DRIFT__COUNT];
};

enum dun_err dun_scans_last(struct dun_db *db, struct dun_scan_record *out);

#endif
