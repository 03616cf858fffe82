/*
 * rollout.c — the per-account mode gate (see rollout.h). Every recompute
 * asks it, after DECIDE, whether the plan is applied (active) or only
 * recorded in the shadow (observe).
 */
#include "rollout.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

const char *dun_mode_name(enum dun_mode m)
{
	switch (m) {
	case DUN_MODE_OBSERVE:
		return "observe";
	case DUN_MODE_ACTIVE:
		return "active";
	}
	return "observe";
}

uint32_t dun_rollout_bucket(const char *account_id)
{
	uint64_t h = 14695981039346656037ULL;
	for (const char *p = account_id; *p; p++) {
		h ^= (unsigned char)*p;
		h *= 1099511628211ULL;
	}
	return (uint32_t)(h % 10000);
}

enum dun_err dun_rollout_load(struct dun_db *db, struct dun_rollout *r)
{
	char buf[64];
	bool found = false;
	/* Safe by default: no row is observe at 0%. */
	r->global_observe = true;
	r->percent = 0.0;
	r->mode_stored = false;
	enum dun_err e = dun_db_setting_get(db, "mode", buf, sizeof buf, &found);
	if (e != DUN_OK)
		return e;
	if (found) {
		r->mode_stored = true;
		r->global_observe = strcmp(buf, "active") != 0;
	}
	e = dun_db_setting_get(db, "rollout.percent", buf, sizeof buf, &found);
	if (e != DUN_OK)
		return e;
	if (found)
		r->percent = strtod(buf, NULL);
	return DUN_OK;
}

enum dun_mode dun_rollout_mode(struct dun_db *db, const struct dun_rollout *r,
			       const char *account_id, const char **why)
{
	char list[16] = "";
	if (!r->global_observe) { /* the list matters only then */
		struct dun_stmt *st =
		    dun_db_stmt(db, "SELECT list FROM rollout_list WHERE account_id = ?1");
		dun_stmt_bind_text(st, 1, account_id);
		if (dun_stmt_row(st))
			dun_stmt_col_copy(st, 0, list, sizeof list);
		dun_stmt_reset(st);
	}
	return dun_rollout_mode_of(r, account_id, list, why);
}

enum dun_mode dun_rollout_mode_of(const struct dun_rollout *r, const char *account_id,
				  const char *list, const char **why)
{
	const char *dummy;
	if (!why)
		why = &dummy;
	if (r->global_observe) {
		*why = "global mode is observe";
		return DUN_MODE_OBSERVE;
	}
	if (!strcmp(list, "allow")) {
		*why = "account is on the allow-list";
		return DUN_MODE_ACTIVE;
	}
	if (!strcmp(list, "deny")) {
		*why = "account is on the deny-list";
		return DUN_MODE_OBSERVE;
	}
	if ((double)dun_rollout_bucket(account_id) < r->percent * 100.0) {
		*why = "account is inside the rollout percentage";
		return DUN_MODE_ACTIVE;
	}
	*why = "account is outside the rollout percentage";
	return DUN_MODE_OBSERVE;
}

enum dun_err dun_rollout_init_defaults(struct dun_db *db)
{
	char buf[64];
	bool found = false;
	enum dun_err e = dun_db_setting_get(db, "mode", buf, sizeof buf, &found);
	if (e == DUN_OK && !found)
		e = dun_db_setting_set(db, "mode", "observe");
	if (e == DUN_OK)
		e = dun_db_setting_get(db, "rollout.percent", buf, sizeof buf, &found);
	if (e == DUN_OK && !found)
		e = dun_db_setting_set(db, "rollout.percent", "0");
	return e;
}

enum dun_err dun_rollout_check_expected(struct dun_db *db, const char *mode, double percent,
					char *err, size_t err_size)
{
	struct dun_rollout r;
	enum dun_err e = dun_rollout_load(db, &r);
	if (e != DUN_OK) {
		snprintf(err, err_size, "cannot read the rollout state: %s", dun_err_str(e));
		return e;
	}
	const char *stored = r.global_observe ? "observe" : "active";
	if (mode && mode[0] && strcmp(mode, stored) != 0) {
		snprintf(err, err_size,
			 "[rollout] mode = %s, but the database says %s; the database holds the "
			 "rollout: run 'dunning rollout mode %s' or change [rollout] to match",
			 mode, stored, mode);
		return DUN_E_CONFIG;
	}
	if (percent >= 0 && (percent - r.percent > 1e-9 || r.percent - percent > 1e-9)) {
		snprintf(err, err_size,
			 "[rollout] percent = %g, but the database says %g; the database holds the "
			 "rollout: run 'dunning rollout percent %g' or change [rollout] to match",
			 percent, r.percent, percent);
		return DUN_E_CONFIG;
	}
	return DUN_OK;
}

enum dun_err dun_rollout_gate_check(struct dun_db *db, int64_t now,
				    const struct dun_rollout_gate *g, int64_t *report_id, char *why,
				    size_t why_size)
{
	*report_id = 0;
	struct dun_stmt *st =
	    dun_db_stmt(db, "SELECT id, created_at, window_from, window_to, passed"
			    " FROM parity_reports ORDER BY id DESC LIMIT 1");
	int rc = dun_stmt_step(st);
	if (rc != DUN_STEP_ROW) {
		dun_stmt_reset(st);
		if (rc != DUN_STEP_DONE)
			return dun_stmt_err(st);
		snprintf(why, why_size, "no parity report yet: run 'dunning parity' first");
		return DUN_E_GUARD;
	}
	int64_t id = dun_stmt_col_int64(st, 0), created = dun_stmt_col_int64(st, 1),
		from = dun_stmt_col_int64(st, 2), to = dun_stmt_col_int64(st, 3);
	bool passed = dun_stmt_col_int(st, 4) != 0;
	dun_stmt_reset(st);
	if (!passed) {
		snprintf(why, why_size, "the last parity report (#%lld) is below its thresholds",
			 (long long)id);
		return DUN_E_GUARD;
	}
	if (now - created > g->max_age_s) {
		snprintf(why, why_size,
			 "the last parity report (#%lld) is %lld hours old; the gate accepts one "
			 "at most %lld hours old",
			 (long long)id, (long long)((now - created) / 3600),
			 (long long)(g->max_age_s / 3600));
		return DUN_E_GUARD;
	}
	if (to - from < g->window_s || to < now - g->max_age_s) {
		snprintf(why, why_size,
			 "the last parity report (#%lld) covers %.1f days ending %lld hours ago; "
			 "the gate needs the last %lld days",
			 (long long)id, (double)(to - from) / 86400.0,
			 (long long)((now - to) / 3600), (long long)(g->window_s / 86400));
		return DUN_E_GUARD;
	}
	*report_id = id;
	return DUN_OK;
}

enum dun_err dun_rollout_log(struct dun_db *db, int64_t now, const char *action, const char *value,
			     bool forced, int64_t report_id, const char *note)
{
	struct dun_stmt *st =
	    dun_db_stmt(db, "INSERT INTO rollout_log(at, action, value, forced,"
			    " parity_report, note) VALUES (?1, ?2, ?3, ?4, ?5, ?6)");
	dun_stmt_bind_int64(st, 1, now);
	dun_stmt_bind_text(st, 2, action);
	dun_stmt_bind_text(st, 3, value);
	dun_stmt_bind_int(st, 4, forced);
	dun_stmt_bind_int64(st, 5, report_id);
	dun_stmt_bind_text(st, 6, note ? note : "");
	return dun_stmt_done(st);
}

bool dun_rollout_all_active(struct dun_db *db, const struct dun_rollout *r)
{
	if (r->global_observe || r->percent < 100.0)
		return false;
	struct dun_stmt *st =
	    dun_db_stmt(db, "SELECT 1 FROM rollout_list WHERE list = 'deny' LIMIT 1");
	bool denied = dun_stmt_row(st);
	enum dun_err e = dun_stmt_err(st);
	dun_stmt_reset(st);
	return !denied && e == DUN_OK;
}
