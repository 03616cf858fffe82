/*
 * scans.c — recording drift scans (see scans.h). It sits after the scan
 * (src/inbox/scan.c), which only counts: `dunning scan` hands its result
 * here, and the readers (/metrics, the panel, reports) take the last row.
 * A scan is two tables: one row per scan, one row per scan and class, so a
 * class added later needs no migration.
 */
#include "scans.h"

#include <string.h>

enum dun_err dun_scans_record(struct dun_db *db, int64_t at, const struct dun_scan_result *r,
			      int64_t *id)
{
	enum dun_err e = dun_db_begin(db);
	if (e != DUN_OK)
		return e;
	struct dun_stmt *st = dun_db_stmt(
	    db, "INSERT INTO drift_scans(at, accounts, drifting, observe_accounts,"
		" observe_real_drifting, planned, enqueued) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)"
		" RETURNING id");
	dun_stmt_bind_int64(st, 1, at);
	dun_stmt_bind_int64(st, 2, r->accounts);
	dun_stmt_bind_int64(st, 3, r->drifting);
	dun_stmt_bind_int64(st, 4, r->observe_accounts);
	dun_stmt_bind_int64(st, 5, r->observe_real_drifting);
	dun_stmt_bind_int64(st, 6, r->planned);
	dun_stmt_bind_int64(st, 7, r->enqueued);
	int64_t scan_id = 0;
	if (dun_stmt_row(st))
		scan_id = dun_stmt_col_int64(st, 0);
	else
		e = dun_stmt_err(st);
	dun_stmt_reset(st);
	for (int c = 0; e == DUN_OK && c < DUN_DRIFT__COUNT; c++) {
		st = dun_db_stmt(db, "INSERT INTO drift_scan_classes(scan_id, class, accounts,"
				     " observe_real) VALUES (?1, ?2, ?3, ?4)");
		dun_stmt_bind_int64(st, 1, scan_id);
		dun_stmt_bind_text(st, 2, dun_drift_name((enum dun_drift_class)c));
		dun_stmt_bind_int64(st, 3, r->per_class[c]);
		dun_stmt_bind_int64(st, 4, r->observe_real_per_class[c]);
		e = dun_stmt_done(st);
	}
	if (e != DUN_OK) {
		dun_db_rollback(db);
		return e;
	}
	e = dun_db_commit(db);
	if (e == DUN_OK && id)
		*id = scan_id;
	return e;
}

enum dun_err dun_scans_last(struct dun_db *db, struct dun_scan_record *out)
{
	memset(out, 0, sizeof *out);
	struct dun_stmt *st = dun_db_stmt(
	    db, "SELECT id, at, accounts, drifting, observe_accounts, observe_real_drifting,"
		" planned, enqueued FROM drift_scans ORDER BY id DESC LIMIT 1");
	if (dun_stmt_row(st)) {
		out->found = true;
		out->id = dun_stmt_col_int64(st, 0);
		out->at = dun_stmt_col_int64(st, 1);
		out->accounts = dun_stmt_col_int64(st, 2);
		out->drifting = dun_stmt_col_int64(st, 3);
		out->observe_accounts = dun_stmt_col_int64(st, 4);
		out->observe_real_drifting = dun_stmt_col_int64(st, 5);
		out->planned = dun_stmt_col_int64(st, 6);
		out->enqueued = dun_stmt_col_int64(st, 7);
	}
	enum dun_err e = dun_stmt_err(st);
	dun_stmt_reset(st);
	if (e != DUN_OK || !out->found)
		return e;
	st = dun_db_stmt(db, "SELECT class, accounts, observe_real FROM drift_scan_classes"
			     " WHERE scan_id = ?1");
	dun_stmt_bind_int64(st, 1, out->id);
	while (dun_stmt_row(st)) {
		const char *name = dun_stmt_col_text(st, 0);
		for (int c = 0; c < DUN_DRIFT__COUNT; c++)
			if (name && !strcmp(name, dun_drift_name((enum dun_drift_class)c))) {
				out->per_class[c] = dun_stmt_col_int64(st, 1);
				out->observe_real[c] = dun_stmt_col_int64(st, 2);
			}
	}
	e = dun_stmt_err(st);
	dun_stmt_reset(st);
	return e;
}
