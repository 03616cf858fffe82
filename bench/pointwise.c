/*
 * pointwise.c — the per-account drift scan kept as a reference (see
 * pointwise.h).
 */
#include "pointwise.h"

#include <string.h>

enum dun_err dun_bench_pointwise_scan(struct dun_engine *en, int64_t now,
				      struct dun_scan_result *out)
{
	memset(out, 0, sizeof *out);
	char last[DUN_ID_MAX] = "";
	char ids[256][DUN_ID_MAX];
	struct dun_stmt *st = NULL;
	if (dun_db_prepare(en->db, "SELECT id FROM accounts WHERE id > ?1 ORDER BY id LIMIT 256",
			   &st) != DUN_OK)
		return DUN_E_STORE;
	enum dun_err e = DUN_OK;
	while (e == DUN_OK) {
		int n = 0;
		dun_stmt_bind_text_copy(st, 1, last);
		while (dun_stmt_row(st))
			dun_stmt_col_copy(st, 0, ids[n++], DUN_ID_MAX);
		dun_stmt_reset(st);
		if (!n)
			break;
		memcpy(last, ids[n - 1], DUN_ID_MAX);
		for (int i = 0; i < n && e == DUN_OK; i++) {
			e = dun_gather(en->db, ids[i], &en->snap);
			if (e == DUN_OK)
				e = dun_engine_decide(en, now);
			if (e != DUN_OK)
				break;
			out->accounts++;
			out->planned += en->plan.n;
			unsigned m =
			    dun_drift_classify_plan(&en->snap.state, &en->desired, &en->plan);
			out->drifting += m != 0;
			for (int c = 0; c < DUN_DRIFT__COUNT; c++)
				out->per_class[c] += (m >> c) & 1u;
		}
	}
	dun_stmt_finalize(st);
	return e;
}
