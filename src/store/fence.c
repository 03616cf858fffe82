/*
 * fence.c — claims and fencing tokens (see fence.h).
 *
 * A check and the writes after it in one transaction cannot interleave with
 * a takeover. On SQLite write transactions are serialized outright. On
 * PostgreSQL fenced work runs in concurrent transactions (db.h), and the
 * claim's row decides: the check is an UPDATE of that row, which holds its
 * lock to COMMIT, and a takeover is an upsert of the same row, which waits
 * for that lock and then re-reads the row (READ COMMITTED re-checks the
 * upsert's WHERE on the newest version). So the takeover commits before the
 * check (the check finds another token and fails) or after the writes (they
 * landed under a claim that was still held, and the check pushed its
 * expiry, so the takeover finds it live and backs off).
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
	/*
	 * The claim as last committed, read without a lock. A live claim of
	 * someone else: back off at once, without touching its row. (The
	 * upsert below locks the row it conflicts with even when its WHERE
	 * keeps it, until this transaction ends; a claimer that read an
	 * account as a candidate just before another process took it would
	 * hold that lock over the rest of its pass, and the owner's batch,
	 * renewing its claim, would wait for it.) Only a claim that looks free
	 * or expired goes on to the upsert, which then waits for the row and
	 * re-checks it (see the top) — including that its token is still the
	 * one read here, so the new token is known without RETURNING (which
	 * on SQLite builds a temporary table per statement): one more than
	 * the token read, or 1 for a first claim. Any other claim that landed
	 * in between makes the upsert change nothing: fenced.
	 */
	int64_t wall = dun_clock_wall_ms();
	int64_t seen = 0;
	struct dun_stmt *st = dun_db_stmt(db, "SELECT owner, token, expires_ms FROM claims"
					      " WHERE account_id = ?1");
	dun_stmt_bind_text(st, 1, account_id);
	int rc = dun_stmt_step(st);
	bool held = false;
	if (rc == DUN_STEP_ROW) {
		const char *who = dun_stmt_col_text(st, 0);
		seen = dun_stmt_col_int64(st, 1);
		held = dun_stmt_col_int64(st, 2) >= wall && strcmp(who ? who : "", owner) != 0;
	}
	enum dun_err e = rc == DUN_STEP_FAILED ? dun_stmt_err(st) : DUN_OK;
	dun_stmt_reset(st);
	if (e != DUN_OK)
		return e;
	if (held)
		return DUN_E_FENCED;
	st = dun_db_stmt(
	    db, "INSERT INTO claims(account_id, owner, token, expires_ms) VALUES (?1, ?2, 1, ?3)"
		" ON CONFLICT (account_id) DO UPDATE SET owner = excluded.owner,"
		" token = claims.token + 1, expires_ms = excluded.expires_ms"
		" WHERE (claims.expires_ms < ?4 OR claims.owner = ?2) AND claims.token = ?5");
	dun_stmt_bind_text(st, 1, account_id);
	dun_stmt_bind_text(st, 2, owner);
	dun_stmt_bind_int64(st, 3, wall + lease_ms);
	dun_stmt_bind_int64(st, 4, wall);
	dun_stmt_bind_int64(st, 5, seen);
	e = dun_stmt_done(st);
	if (e != DUN_OK)
		return e;
	/* Nothing changed: the WHERE kept a claim someone else holds or just took. */
	if (dun_db_changes(db) != 1)
		return DUN_E_FENCED;
	out->token = seen + 1;
	return DUN_OK;
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
	int64_t wall = dun_clock_wall_ms();
	if (!dun_db_writes_concurrently(db)) {
		/*
		 * SQLite: the caller's transaction holds the file (BEGIN
		 * IMMEDIATE), so nobody can take the claim before its COMMIT and
		 * a read decides. The row is rewritten only once less than half
		 * the lease is left: every account's check wrote it before, and
		 * its settle writes it again (the release) in the same batch.
		 */
		struct dun_stmt *rd =
		    dun_db_stmt(db, "SELECT expires_ms FROM claims WHERE"
				    " account_id = ?1 AND owner = ?2 AND token = ?3");
		dun_stmt_bind_text(rd, 1, f->account_id);
		dun_stmt_bind_text(rd, 2, f->owner);
		dun_stmt_bind_int64(rd, 3, f->token);
		bool mine = dun_stmt_row(rd);
		int64_t expires = mine ? dun_stmt_col_int64(rd, 0) : 0;
		enum dun_err re = dun_stmt_err(rd);
		dun_stmt_reset(rd);
		if (re != DUN_OK)
			return re;
		if (!mine)
			return DUN_E_FENCED;
		if (expires - wall >= f->lease_ms / 2)
			return DUN_OK;
	}
	struct dun_stmt *st = dun_db_stmt(
	    db, "UPDATE claims SET expires_ms = CASE WHEN expires_ms < ?4 THEN ?4"
		" ELSE expires_ms END WHERE account_id = ?1 AND owner = ?2 AND token = ?3");
	dun_stmt_bind_text(st, 1, f->account_id);
	dun_stmt_bind_text(st, 2, f->owner);
	dun_stmt_bind_int64(st, 3, f->token);
	dun_stmt_bind_int64(st, 4, wall + f->lease_ms);
	enum dun_err e = dun_stmt_done(st);
	if (e == DUN_OK && dun_db_changes(db) != 1)
		e = DUN_E_FENCED;
	return e;
}

enum dun_err dun_fence_begin(struct dun_db *db, const struct dun_fence *f)
{
	bool claimed = f && f->token != 0;
	enum dun_err e = claimed ? dun_db_begin_concurrent(db) : dun_db_begin(db);
	if (e != DUN_OK)
		return e;
	e = dun_fence_check(db, f);
	if (e != DUN_OK)
		dun_db_rollback(db);
	return e;
}

enum dun_err dun_fence_renew(struct dun_db *db, const struct dun_fence *f)
{
	if (!f || f->token == 0)
		return DUN_OK;
	enum dun_err e = dun_fence_begin(db, f);
	if (e != DUN_OK)
		return e;
	e = dun_db_commit(db);
	if (e != DUN_OK)
		dun_db_rollback(db);
	return e;
}

struct dun_stmt *dun_fence_release_stmt(struct dun_db *db, const char *account_id,
					const char *owner)
{
	struct dun_stmt *st = dun_db_stmt(db, "UPDATE claims SET expires_ms = 0"
					      " WHERE account_id = ?1 AND owner = ?2");
	dun_stmt_bind_text(st, 1, account_id);
	dun_stmt_bind_text(st, 2, owner);
	return st;
}

enum dun_err dun_fence_release(struct dun_db *db, const char *account_id, const char *owner)
{
	return dun_stmt_done(dun_fence_release_stmt(db, account_id, owner));
}
