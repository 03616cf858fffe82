/*
 * fence.c — claims and fencing tokens (see fence.h).
 *
 * Both backends serialise write transactions (SQLite: BEGIN IMMEDIATE;
 * PostgreSQL: one advisory lock per write transaction, driver_pg.c), so a
 * check and the write after it in one transaction cannot interleave with a
 * takeover: the takeover commits before the check (the check fails) or after
 * the write (the writes landed under a claim that was still held).
 */
#include "fence.h"
#include "util/clock.h"

#include <stdio.h>
#include <string.h>

enum dun_err dun_fence_acquire(struct dun_db *db, const char *account_id, const char *owner,
			       int64_t lease_ms, struct dun_fence *out)
{
	memset(out, 0, sizeof *out);
	snprintf(out->account_id, sizeof out->account_id, "%s", account_id);
	snprintf(out->owner, sizeof out->owner, "%s", owner);
	out->lease_ms = lease_ms;
	struct dun_stmt *st = dun_db_stmt(
	    db, "INSERT INTO claims(account_id, owner, token, expires_ms) VALUES (?1, ?2, 1, ?3)"
		" ON CONFLICT (account_id) DO UPDATE SET owner = excluded.owner,"
		" token = claims.token + 1, expires_ms = excluded.expires_ms");
	dun_stmt_bind_text(st, 1, account_id);
	dun_stmt_bind_text(st, 2, owner);
	dun_stmt_bind_int64(st, 3, dun_clock_wall_ms() + lease_ms);
	enum dun_err e = dun_stmt_done(st);
	if (e != DUN_OK)
		return e;
	st = dun_db_stmt(db, "SELECT token FROM claims WHERE account_id = ?1");
	dun_stmt_bind_text(st, 1, account_id);
	if (dun_stmt_row(st))
		out->token = dun_stmt_col_int64(st, 0);
	else
		e = dun_stmt_err(st);
	dun_stmt_reset(st);
	if (e == DUN_OK && out->token <= 0)
		e = DUN_E_STORE;
	return e;
}

enum dun_err dun_fence_held_by_other(struct dun_db *db, const char *account_id, const char *owner,
				     bool *held)
{
	struct dun_stmt *st = dun_db_stmt(db, "SELECT 1 FROM claims WHERE account_id = ?1"
					      " AND owner <> ?2 AND expires_ms >= ?3");
	dun_stmt_bind_text(st, 1, account_id);
	dun_stmt_bind_text(st, 2, owner);
	dun_stmt_bind_int64(st, 3, dun_clock_wall_ms());
	int rc = dun_stmt_step(st);
	*held = rc == DUN_STEP_ROW;
	enum dun_err e = rc == DUN_STEP_FAILED ? dun_stmt_err(st) : DUN_OK;
	dun_stmt_reset(st);
	return e;
}

enum dun_err dun_fence_check(struct dun_db *db, const struct dun_fence *f)
{
	if (!f || f->token == 0)
		return DUN_OK;
	struct dun_stmt *st = dun_db_stmt(
	    db, "UPDATE claims SET expires_ms = CASE WHEN expires_ms < ?4 THEN ?4"
		" ELSE expires_ms END WHERE account_id = ?1 AND owner = ?2 AND token = ?3");
	dun_stmt_bind_text(st, 1, f->account_id);
	dun_stmt_bind_text(st, 2, f->owner);
	dun_stmt_bind_int64(st, 3, f->token);
	dun_stmt_bind_int64(st, 4, dun_clock_wall_ms() + f->lease_ms);
	enum dun_err e = dun_stmt_done(st);
	if (e == DUN_OK && dun_db_changes(db) != 1)
		e = DUN_E_FENCED;
	return e;
}

enum dun_err dun_fence_renew(struct dun_db *db, const struct dun_fence *f)
{
	if (!f || f->token == 0)
		return DUN_OK;
	enum dun_err e = dun_db_begin(db);
	if (e != DUN_OK)
		return e;
	e = dun_fence_check(db, f);
	if (e == DUN_OK)
		e = dun_db_commit(db);
	if (e != DUN_OK)
		dun_db_rollback(db);
	return e;
}

enum dun_err dun_fence_release(struct dun_db *db, const char *account_id, const char *owner)
{
	struct dun_stmt *st = dun_db_stmt(db, "UPDATE claims SET expires_ms = 0"
					      " WHERE account_id = ?1 AND owner = ?2");
	dun_stmt_bind_text(st, 1, account_id);
	dun_stmt_bind_text(st, 2, owner);
	return dun_stmt_done(st);
}
