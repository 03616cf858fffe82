/*
 * rollout.c — the per-account mode gate (see rollout.h).
 */
#include "rollout.h"

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
	r->global_observe = false;
	r->percent = 100.0;
	enum dun_err e = dun_db_setting_get(db, "mode", buf, sizeof buf, &found);
	if (e != DUN_OK)
		return e;
	if (found && strcmp(buf, "observe") == 0)
		r->global_observe = true;
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
	const char *dummy;
	if (!why)
		why = &dummy;
	if (r->global_observe) {
		*why = "global mode is observe";
		return DUN_MODE_OBSERVE;
	}
	sqlite3_stmt *st = dun_db_stmt(db, "SELECT list FROM rollout_list WHERE account_id = ?1");
	sqlite3_bind_text(st, 1, account_id, -1, SQLITE_STATIC);
	char list[16] = "";
	if (sqlite3_step(st) == SQLITE_ROW)
		dun_db_col_text(st, 0, list, sizeof list);
	sqlite3_reset(st);
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
