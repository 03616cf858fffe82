/*
 * scan.c — the drift scan (see scan.h).
 *
 * The scan walks accounts in id order through the same GATHER and EVALUATE
 * a recompute uses, so "drift" means exactly "a recompute would change
 * something the stores disagree on". Triggers for drifting accounts are
 * queued in batches of one transaction.
 */
#include "scan.h"
#include "inbox/inbox.h"

#include <stdio.h>
#include <string.h>

enum dun_err dun_scan_run(struct dun_engine *en, int64_t now, bool enqueue,
			  dun_scan_progress_fn progress, void *arg, struct dun_scan_result *out)
{
	memset(out, 0, sizeof *out);
	out->examples = json_array();
	char last[DUN_ID_MAX] = "";
	char ids[256][DUN_ID_MAX];
	for (;;) {
		/* Page through account ids so the read cursor never spans a write. */
		sqlite3_stmt *st = dun_db_stmt(en->db, "SELECT id FROM accounts WHERE id > ?1"
						       " ORDER BY id LIMIT 256");
		sqlite3_bind_text(st, 1, last, -1, SQLITE_STATIC);
		int n = 0;
		while (sqlite3_step(st) == SQLITE_ROW)
			dun_db_col_text(st, 0, ids[n++], DUN_ID_MAX);
		sqlite3_reset(st);
		if (!n)
			break;
		memcpy(last, ids[n - 1], DUN_ID_MAX);
		bool tx = false;
		for (int i = 0; i < n; i++) {
			enum dun_err e = dun_engine_evaluate(en, ids[i], now);
			if (e != DUN_OK) {
				if (tx)
					dun_db_rollback(en->db);
				return e;
			}
			out->accounts++;
			out->planned += en->plan.n;
			unsigned m = dun_drift_classify(&en->snap.state, &en->desired);
			if (progress && out->accounts % 10000 == 0)
				progress(out->accounts, arg);
			if (!m)
				continue;
			out->drifting++;
			json_t *classes = json_array();
			for (int c = 0; c < DUN_DRIFT__COUNT; c++)
				if (m & (1u << c)) {
					out->per_class[c]++;
					json_array_append_new(
					    classes,
					    json_string(dun_drift_name((enum dun_drift_class)c)));
				}
			if (json_array_size(out->examples) < 20)
				json_array_append_new(
				    out->examples,
				    json_pack("{s:s, s:o}", "account", ids[i], "classes", classes));
			else
				json_decref(classes);
			if (!enqueue)
				continue;
			if (!tx) {
				e = dun_db_begin(en->db);
				if (e != DUN_OK)
					return e;
				tx = true;
			}
			char key[128];
			snprintf(key, sizeof key, "drift:%.63s:%lld", ids[i], (long long)now);
			bool inserted = false;
			e = dun_inbox_enqueue(en->db, ids[i], "drift_detected", "scan", "", key, 0,
					      &inserted, NULL);
			if (e != DUN_OK) {
				dun_db_rollback(en->db);
				return e;
			}
			out->enqueued += inserted;
		}
		if (tx) {
			enum dun_err e = dun_db_commit(en->db);
			if (e != DUN_OK) {
				dun_db_rollback(en->db);
				return e;
			}
		}
	}
	return DUN_OK;
}
