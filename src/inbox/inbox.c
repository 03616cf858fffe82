/*
 * inbox.c — the durable inbox (see inbox.h).
 *
 * Design
 * ------
 * Every trigger — a webhook, a support button, a drift finding, a timer —
 * is a row here before anyone acts on it, so a failure is a state, never a
 * lost event. Triggers carry an account id; the worker's unit of work is an
 * account, not a trigger:
 *
 *   Coalescing.  Claiming an account moves ALL its ready triggers to
 *   processing at once; one recompute answers them all, because the
 *   pipeline reads full state and does not care which event woke it.
 *
 *   Serialization.  An account with any trigger in processing is not
 *   claimable, so two workers (threads or processes) never recompute the
 *   same account at once. The claim runs in a BEGIN IMMEDIATE transaction,
 *   which SQLite serializes across processes.
 *
 *   Leases.  Claiming an account also takes its claim (store/fence.h): a
 *   fencing token and an expiry lease_s ahead on the wall clock, renewed by
 *   every write the recompute makes. A worker that dies or stalls leaves
 *   its triggers in processing; once its claim expires the next claim takes
 *   them back (to retrying, due now) and the account can be claimed again,
 *   under a new token. The stalled worker's later writes are refused by the
 *   fence, so nothing is applied twice by two processes at once.
 *
 *   Retries.  A failed recompute moves the account's triggers to retrying
 *   with not_before = now + backoff (base × 2^(attempts-1), capped, ±20%
 *   jitter); after max_attempts, or for an error that cannot succeed on a
 *   retry, to dead. Dead triggers stay until someone runs `dunning retry`.
 *   A retry recomputes from fresh state; it never replays an old plan.
 */
#include "inbox.h"
#include "store/fence.h"
#include "util/clock.h"
#include "util/log.h"
#include "util/mem.h"

#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

void dun_inbox_config_defaults(struct dun_inbox_config *c)
{
	memset(c, 0, sizeof *c);
	c->max_attempts = 8;
	c->backoff_base_s = 30;
	c->backoff_max_s = 3600;
	c->lease_s = 300;
	c->batch_max = 64;
	c->batch_budget_us = 5000;
	c->batch_budget_concurrent_us = 50000;
}

void dun_inbox_worker_id(char *out, size_t out_size, const char *role)
{
	char host[128] = "localhost";
	gethostname(host, sizeof host - 1);
	host[sizeof host - 1] = '\0';
	snprintf(out, out_size, "%s@%s:%ld", role, host, (long)getpid());
}

/* Whether worker id names a process of this host that no longer runs. */
static bool owner_is_gone(const char *worker_id)
{
	const char *at = strrchr(worker_id, '@');
	const char *colon = strrchr(worker_id, ':');
	if (!at || !colon || colon < at)
		return false;
	char host[128] = "localhost", mine[128];
	gethostname(host, sizeof host - 1);
	host[sizeof host - 1] = '\0';
	size_t n = (size_t)(colon - at - 1);
	if (n >= sizeof mine)
		return false;
	memcpy(mine, at + 1, n);
	mine[n] = '\0';
	if (strcmp(mine, host) != 0)
		return false;
	char *end;
	long pid = strtol(colon + 1, &end, 10);
	if (*end || pid <= 0 || pid == (long)getpid())
		return false;
	return kill((pid_t)pid, 0) == -1 && errno == ESRCH;
}

enum dun_err dun_inbox_turn_take(struct dun_db *db, int n, int start, const char *owner,
				 int64_t lease_ms, int *turn)
{
	*turn = -1;
	if (n < 1)
		return DUN_E_INVALID;
	int64_t wall = dun_clock_wall_ms();
	/*
	 * The turns held now, in one read: a worker that finds them all held
	 * writes nothing. A holder that is a gone process of this host is
	 * expired first (an UPDATE that re-checks the owner).
	 */
	bool *held = dun_calloc((size_t)n, sizeof *held);
	char gone[8][192];
	int n_gone = 0;
	struct dun_stmt *st = dun_db_stmt(db, "SELECT turn, owner FROM fleet_turns"
					      " WHERE expires_ms >= ?1 AND owner <> ?2");
	dun_stmt_bind_int64(st, 1, wall);
	dun_stmt_bind_text(st, 2, owner);
	int rc;
	while ((rc = dun_stmt_step(st)) == DUN_STEP_ROW) {
		int64_t k = dun_stmt_col_int64(st, 0);
		const char *who = dun_stmt_col_text(st, 1);
		if (who && owner_is_gone(who) && n_gone < 8)
			dun_stmt_col_copy(st, 1, gone[n_gone++], sizeof gone[0]);
		else if (k >= 0 && k < n)
			held[k] = true;
	}
	enum dun_err e = rc == DUN_STEP_DONE ? DUN_OK : dun_stmt_err(st);
	dun_stmt_reset(st);
	for (int i = 0; i < n_gone && e == DUN_OK; i++) {
		st = dun_db_stmt(db, "UPDATE fleet_turns SET expires_ms = 0 WHERE owner = ?1");
		dun_stmt_bind_text(st, 1, gone[i]);
		e = dun_stmt_done(st);
	}
	if (start < 0)
		start = 0;
	for (int i = 0; i < n && e == DUN_OK && *turn < 0; i++) {
		int k = (start + i) % n;
		if (held[k])
			continue;
		/* Taken only if free, or already this owner's: one of two takers wins. */
		st =
		    dun_db_stmt(db, "INSERT INTO fleet_turns(turn, owner, expires_ms)"
				    " VALUES (?1, ?2, ?3) ON CONFLICT (turn) DO UPDATE SET"
				    " owner = excluded.owner, expires_ms = excluded.expires_ms"
				    " WHERE fleet_turns.expires_ms < ?4 OR fleet_turns.owner = ?2");
		dun_stmt_bind_int(st, 1, k);
		dun_stmt_bind_text(st, 2, owner);
		dun_stmt_bind_int64(st, 3, wall + lease_ms);
		dun_stmt_bind_int64(st, 4, wall);
		e = dun_stmt_done(st);
		if (e == DUN_OK && dun_db_changes(db) == 1)
			*turn = k;
	}
	free(held);
	return e;
}

enum dun_err dun_inbox_turn_keep(struct dun_db *db, int turn, const char *owner, int64_t lease_ms,
				 bool *kept)
{
	struct dun_stmt *st = dun_db_stmt(db, "UPDATE fleet_turns SET expires_ms = ?3"
					      " WHERE turn = ?1 AND owner = ?2");
	dun_stmt_bind_int(st, 1, turn);
	dun_stmt_bind_text(st, 2, owner);
	dun_stmt_bind_int64(st, 3, dun_clock_wall_ms() + lease_ms);
	enum dun_err e = dun_stmt_done(st);
	*kept = e == DUN_OK && dun_db_changes(db) == 1;
	return e;
}

enum dun_err dun_inbox_turn_give(struct dun_db *db, int turn, const char *owner)
{
	struct dun_stmt *st = dun_db_stmt(db, "UPDATE fleet_turns SET expires_ms = 0"
					      " WHERE turn = ?1 AND owner = ?2");
	dun_stmt_bind_int(st, 1, turn);
	dun_stmt_bind_text(st, 2, owner);
	return dun_stmt_done(st);
}

/*
 * Take back the claims of workers that died on this host. Here and in
 * take_back_expired, "state <> 'done'" is the predicate of the partial
 * index inbox_ready: without it SQLite scanned every trigger ever received,
 * on every claiming pass, inside the write lock.
 */
static enum dun_err reclaim_dead_owners(struct dun_db *db, int64_t now)
{
	char owners[16][160];
	int n = 0;
	struct dun_stmt *st = dun_db_stmt(db, "SELECT DISTINCT claimed_by FROM inbox"
					      " WHERE state <> 'done' AND state = 'processing'"
					      " LIMIT 16");
	while (n < 16 && dun_stmt_row(st))
		dun_stmt_col_copy(st, 0, owners[n++], sizeof owners[0]);
	dun_stmt_reset(st);
	for (int i = 0; i < n; i++) {
		if (!owner_is_gone(owners[i]))
			continue;
		st = dun_db_stmt(db, "UPDATE inbox SET state = 'retrying', not_before = ?2,"
				     " claimed_by = '', last_error = 'worker died', updated_at = ?2"
				     " WHERE state = 'processing' AND claimed_by = ?1");
		dun_stmt_bind_text(st, 1, owners[i]);
		dun_stmt_bind_int64(st, 2, now);
		enum dun_err e = dun_stmt_done(st);
		if (e != DUN_OK)
			return e;
		bool reclaimed = dun_db_changes(db) > 0; /* another claimer may have been first */
		st = dun_db_stmt(db, "UPDATE claims SET expires_ms = 0 WHERE owner = ?1");
		dun_stmt_bind_text(st, 1, owners[i]);
		e = dun_stmt_done(st);
		if (e != DUN_OK)
			return e;
		if (reclaimed)
			dun_log(DUN_LOG_WARN, "inbox.reclaimed", "worker", owners[i], "reason",
				"process gone", NULL);
	}
	return DUN_OK;
}

int64_t dun_inbox_backoff(const struct dun_inbox_config *cfg, int attempts, uint64_t seed)
{
	int64_t d = cfg->backoff_base_s;
	for (int i = 1; i < attempts && d < cfg->backoff_max_s; i++)
		d *= 2;
	if (d > cfg->backoff_max_s)
		d = cfg->backoff_max_s;
	/* ±20% jitter, deterministic in seed so tests can predict it */
	seed ^= seed >> 33;
	seed *= 0xff51afd7ed558ccdULL;
	seed ^= seed >> 33;
	int64_t span = d / 5;
	if (span > 0)
		d += (int64_t)(seed % (uint64_t)(2 * span + 1)) - span;
	return d > 0 ? d : 1;
}

/*
 * On SQLite, INSERT ... RETURNING collects its rows in a temporary B-tree
 * built on every execution, which cost about as much as the rest of the
 * insert on the webhook committer's path (callgrind: ~5 us per trigger);
 * there the insert reports itself through changes() and its id through the
 * store's last insert id, and only a trigger whose key was already queued
 * is read back through the dedup_key index. On PostgreSQL, RETURNING is
 * the cheaper of the two (one round trip instead of two), and a trigger
 * without a key can only be found by what the insert returns.
 */
enum dun_err dun_inbox_enqueue(struct dun_db *db, const char *account_id, const char *kind,
			       const char *source, const char *event_id, const char *dedup_key,
			       int64_t not_before, bool *inserted, int64_t *id_out)
{
	int64_t now = dun_clock_now();
	bool returning = !dun_db_has_last_insert_id(db);
	struct dun_stmt *st = dun_db_stmt(
	    db, returning ? "INSERT INTO inbox(account_id, kind, source, event_id, dedup_key,"
			    " not_before, created_at, updated_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6,"
			    " ?7, ?7) ON CONFLICT(dedup_key) DO NOTHING RETURNING id"
			  : "INSERT INTO inbox(account_id, kind, source, event_id, dedup_key,"
			    " not_before, created_at, updated_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6,"
			    " ?7, ?7) ON CONFLICT(dedup_key) DO NOTHING");
	dun_stmt_bind_text(st, 1, account_id);
	dun_stmt_bind_text(st, 2, kind);
	dun_stmt_bind_text(st, 3, source ? source : "");
	dun_stmt_bind_text(st, 4, event_id ? event_id : "");
	dun_stmt_bind_text_copy(st, 5, dedup_key);
	dun_stmt_bind_int64(st, 6, not_before);
	dun_stmt_bind_int64(st, 7, now);
	bool ins;
	int64_t id = 0;
	enum dun_err e;
	if (returning) {
		/* A row comes back only when the insert happened (no conflict). */
		ins = dun_stmt_row(st);
		id = ins ? dun_stmt_col_int64(st, 0) : 0;
		e = dun_stmt_err(st);
		dun_stmt_reset(st);
	} else {
		e = dun_stmt_done(st);
		ins = e == DUN_OK && dun_db_changes(db) > 0;
		if (ins)
			id = dun_db_last_insert_id(db);
	}
	if (e != DUN_OK)
		return e;
	if (ins && not_before <= now)
		dun_db_notify_inbox(db); /* idle workers of every process, at COMMIT */
	if (inserted)
		*inserted = ins;
	if (!id_out)
		return DUN_OK;
	if (id > 0) {
		*id_out = id;
		return DUN_OK;
	}
	st = dun_db_stmt(db, "SELECT id FROM inbox WHERE dedup_key = ?1");
	dun_stmt_bind_text_copy(st, 1, dedup_key);
	*id_out = dun_stmt_row(st) ? dun_stmt_col_int64(st, 0) : 0;
	e = dun_stmt_err(st);
	dun_stmt_reset(st);
	return ins ? e : DUN_OK;
}

static void read_item(struct dun_stmt *st, struct dun_inbox_item *it)
{
	memset(it, 0, sizeof *it);
	it->id = dun_stmt_col_int64(st, 0);
	dun_stmt_col_copy(st, 1, it->account_id, sizeof it->account_id);
	dun_stmt_col_copy(st, 2, it->kind, sizeof it->kind);
	dun_stmt_col_copy(st, 3, it->source, sizeof it->source);
	dun_stmt_col_copy(st, 4, it->event_id, sizeof it->event_id);
	dun_stmt_col_copy(st, 5, it->state, sizeof it->state);
	it->attempts = dun_stmt_col_int(st, 6);
	dun_stmt_col_copy(st, 7, it->last_error, sizeof it->last_error);
	it->not_before = dun_stmt_col_int64(st, 8);
	it->created_at = dun_stmt_col_int64(st, 9);
	it->updated_at = dun_stmt_col_int64(st, 10);
}

/*
 * Take back the triggers of claims that expired (wall clock): to retrying,
 * due now. Processing rows without a claim row (claimed by a release before
 * claims existed) are taken back once their claim time is a lease old.
 */
static enum dun_err take_back_expired(struct dun_db *db, const struct dun_inbox_config *cfg,
				      int64_t now)
{
	int64_t wall = dun_clock_wall_ms();
	struct dun_stmt *st = dun_db_stmt(
	    db, "UPDATE inbox SET state = 'retrying', not_before = ?1, claimed_by = '',"
		" last_error = 'lease expired', updated_at = ?1 WHERE state <> 'done' AND"
		" state = 'processing' AND"
		" (EXISTS (SELECT 1 FROM claims c WHERE c.account_id = inbox.account_id"
		"   AND c.expires_ms < ?2)"
		"  OR (NOT EXISTS (SELECT 1 FROM claims c WHERE c.account_id = inbox.account_id)"
		"   AND claimed_at < ?3))");
	dun_stmt_bind_int64(st, 1, now);
	dun_stmt_bind_int64(st, 2, wall);
	dun_stmt_bind_int64(st, 3, wall / 1000 - cfg->lease_s);
	enum dun_err e = dun_stmt_done(st);
	if (e == DUN_OK && dun_db_changes(db) > 0) {
		char n[24];
		snprintf(n, sizeof n, "%lld", (long long)dun_db_changes(db));
		dun_log(DUN_LOG_WARN, "inbox.lease_expired", "triggers", n, NULL);
	}
	return e;
}

/* Rows a claiming pass reads per account it may claim (accounts with several
 * ready triggers take several rows). */
#define CLAIM_READ_AHEAD	4
/*
 * Where claimers run beside each other and spread over what they read
 * (below), they read further: 8 workers of 4 processes reading the same
 * 64 oldest rows tried 3.6 account locks per account they got, and issued
 * 22-23 statements per account against 19 for one process; reading 16
 * rows per account to claim, about 20.
 */
#define CLAIM_READ_AHEAD_SPREAD 16

/*
 * One claiming pass, in a concurrent transaction (store/db.h): other
 * processes claim beside it (on SQLite the workers' drains claim inside
 * their first batch's transaction instead, dun_inbox_claim_in_tx, and this
 * pass serves the unbatched ones). Its COMMIT does not wait for the disk
 * (dun_db_begin_unsynced): a claim a crash of the machine loses leaves the
 * triggers ready, as if the pass had not run, and the work that follows
 * commits durably, taking the claim's log records with it. (On SQLite that
 * fsync was a third of the commits' time in a batched drain.) For each candidate account the pass first
 * tries a lock named after the account (dun_db_try_lock, PostgreSQL's
 * SKIP LOCKED at the account's grain: an account another claimer is taking
 * right now is passed by, never waited for), then takes the account's claim
 * by one conditional upsert (dun_fence_acquire), which is what decides: an
 * account someone else claimed since the candidates were read is skipped.
 * Only then are its triggers moved to processing. No claimer waits for
 * another, so two claimers cannot deadlock. (Locking the candidate rows
 * FOR UPDATE SKIP LOCKED did not do: a pass reads a few rows per account,
 * and a claimer holding an account's oldest row while another took the
 * same account through its next one made them wait for each other.)
 */
static enum dun_err claim_in_tx(struct dun_db *db, const struct dun_inbox_config *cfg,
				const char *worker_id, int64_t now, int max,
				struct dun_inbox_item *out, int *n_out, int *seen)
{
	*n_out = 0;
	*seen = 0;
	struct dun_inbox_item *cand = NULL;
	enum dun_err e = reclaim_dead_owners(db, now);
	if (e != DUN_OK)
		return e;
	e = take_back_expired(db, cfg, now);
	if (e != DUN_OK)
		return e;
	int64_t wall = dun_clock_wall_ms();
	/*
	 * Ready triggers of claimable accounts, oldest first, through the index
	 * of open triggers in id order (migration 17), so a pass reads about as
	 * many rows as it claims whatever the backlog; the first row of each
	 * account is its oldest ready trigger. (The earlier form picked each
	 * account's MIN(id) in SQL, which read and sorted the whole backlog on
	 * every pass.) "Ready" is written as the states it is not: with
	 * "state IN ('received', 'retrying')" SQLite searched inbox_ready by
	 * state and sorted every ready row by id, holding the write lock for
	 * tens of milliseconds with a backlog of 20,000.
	 */
	struct dun_stmt *st = dun_db_stmt(
	    db, "SELECT i.id, i.account_id, i.kind, i.source, i.event_id, i.state, i.attempts,"
		" i.last_error, i.not_before, i.created_at, i.updated_at FROM inbox i"
		" WHERE i.state <> 'done' AND i.state <> 'processing' AND i.state <> 'dead'"
		" AND i.not_before <= ?1"
		" AND NOT EXISTS (SELECT 1 FROM inbox p WHERE p.account_id = i.account_id"
		"  AND p.state = 'processing')"
		" AND NOT EXISTS (SELECT 1 FROM claims c WHERE c.account_id = i.account_id"
		"  AND c.expires_ms >= ?3)"
		" ORDER BY i.id LIMIT ?2");
	dun_stmt_bind_int64(st, 1, now);
	bool spread = dun_db_writes_concurrently(db);
	int ahead = spread ? CLAIM_READ_AHEAD_SPREAD : CLAIM_READ_AHEAD;
	dun_stmt_bind_int(st, 2, max * ahead);
	dun_stmt_bind_int64(st, 3, wall);
	/*
	 * Where claimers run beside each other (PostgreSQL), each one keeps
	 * every distinct account of the rows read and tries them from its own
	 * place in that list (a hash of its worker id): claimers that read the
	 * same oldest rows at the same moment then mostly try different
	 * accounts, instead of all trying the same first few and each getting
	 * a fraction of a claim. Where they take turns (SQLite), the oldest max
	 * accounts, in order.
	 */
	int room = spread ? max * ahead : max;
	cand = spread ? dun_calloc((size_t)room, sizeof *cand) : out;
	int n = 0, rc;
	while ((rc = dun_stmt_step(st)) == DUN_STEP_ROW) {
		if (n == room)
			continue; /* read to the end: the cursor is finished, not left open */
		const char *acct = dun_stmt_col_text(st, 1);
		bool dup = false;
		for (int k = 0; k < n && !dup; k++)
			dup = acct && !strcmp(cand[k].account_id, acct);
		if (!dup)
			read_item(st, &cand[n++]);
	}
	e = rc == DUN_STEP_FAILED ? dun_stmt_err(st) : DUN_OK;
	dun_stmt_reset(st);
	if (e != DUN_OK)
		goto done;
	*seen = n;
	int start = 0;
	if (spread && n > 0) {
		uint32_t h = 2166136261u;
		for (const char *c = worker_id; *c; c++)
			h = (h ^ (uint8_t)*c) * 16777619u;
		start = (int)(h % (uint32_t)n);
	}
	int kept = 0;
	for (int j = 0; j < n && kept < max; j++) {
		int i = (start + j) % n;
		char key[sizeof cand[i].account_id + 8];
		snprintf(key, sizeof key, "claim:%s", cand[i].account_id);
		bool mine = false;
		e = dun_db_try_lock(db, key, &mine);
		if (e != DUN_OK)
			goto done;
		if (!mine)
			continue; /* another claimer is taking it right now */
		struct dun_fence f;
		e = dun_fence_acquire(db, cand[i].account_id, worker_id, cfg->lease_s * 1000, &f);
		if (e == DUN_E_FENCED)
			continue; /* claimed by another process since the read */
		if (e != DUN_OK)
			goto done;
		/*
		 * OR FAIL: no statement journal (see COMPLETE_SQL). The ready
		 * states are 'received' and 'retrying', the two of the five the
		 * table's CHECK allows that sort at or after 'received' ('dead',
		 * 'done', 'processing' sort before): one range of inbox_account. Written
		 * as IN, SQLite built a temporary table of the two values at
		 * every execution (a tenth of the claim's time per account).
		 */
		st = dun_db_stmt(db, "UPDATE OR FAIL inbox SET state = 'processing',"
				     " claimed_by = ?2, claimed_at = ?3, updated_at = ?3"
				     " WHERE account_id = ?1 AND state >= 'received'"
				     " AND not_before <= ?3");
		dun_stmt_bind_text(st, 1, cand[i].account_id);
		dun_stmt_bind_text(st, 2, worker_id);
		dun_stmt_bind_int64(st, 3, now);
		e = dun_stmt_done(st);
		if (e != DUN_OK)
			goto done;
		cand[i].coalesced = dun_db_changes(db);
		if (cand[i].coalesced == 0) {
			/*
			 * Another process claimed, worked and released the account
			 * between the read and the claim (the read saw its triggers
			 * still ready): nothing is left to do; give the claim back.
			 */
			e = dun_fence_release(db, cand[i].account_id, worker_id);
			if (e != DUN_OK)
				goto done;
			continue;
		}
		cand[i].token = f.token;
		cand[i].coalesced = -cand[i].coalesced - 1; /* marked as claimed */
		kept++;
	}
	/* An account skipped last (someone else's claim) is not this pass's error. */
	e = DUN_OK;
	/* The claimed accounts in the order they were read: oldest first. */
	for (int i = 0, k = 0; i < n; i++) {
		if (cand[i].coalesced >= 0)
			continue;
		cand[i].coalesced = -cand[i].coalesced - 1;
		if (cand != out || k != i)
			out[k] = cand[i];
		k++;
	}
	*n_out = kept;
done:
	if (cand != out)
		free(cand);
	return e;
}

static enum dun_err claim_pass(struct dun_db *db, const struct dun_inbox_config *cfg,
			       const char *worker_id, int64_t now, int max,
			       struct dun_inbox_item *out, int *n_out, int *seen)
{
	*n_out = 0;
	*seen = 0;
	enum dun_err e = dun_db_begin_unsynced(db);
	if (e != DUN_OK)
		return e;
	e = claim_in_tx(db, cfg, worker_id, now, max, out, n_out, seen);
	if (e == DUN_OK)
		e = dun_db_commit(db);
	if (e != DUN_OK) {
		*n_out = 0;
		dun_db_rollback(db);
	}
	return e;
}

enum dun_err dun_inbox_claim_in_tx(struct dun_db *db, const struct dun_inbox_config *cfg,
				   const char *worker_id, int64_t now, int max,
				   struct dun_inbox_item *out, int *n_out)
{
	int seen = 0; /* *n_out is 0 on failure */
	return claim_in_tx(db, cfg, worker_id, now, max, out, n_out, &seen);
}

/*
 * An idle worker asks without the write lock first: on a fleet of replicas
 * polling one database, an empty inbox costs one indexed read per poll,
 * never a write transaction. "state <> 'done'" is the predicate of the
 * partial index inbox_ready (schema migration 15): SQLite uses a partial
 * index only for a query that repeats it, and without it this read scanned
 * every trigger ever received. A read that fails says "maybe": the claim
 * then reports the error.
 */
bool dun_inbox_maybe_ready(struct dun_db *db, int64_t now)
{
	struct dun_stmt *st = dun_db_stmt(
	    db, "SELECT 1 WHERE EXISTS (SELECT 1 FROM inbox WHERE state IN ('received', 'retrying')"
		" AND state <> 'done' AND not_before <= ?1)"
		" OR EXISTS (SELECT 1 FROM inbox WHERE state = 'processing' AND state <> 'done')");
	dun_stmt_bind_int64(st, 1, now);
	int rc = dun_stmt_step(st);
	dun_stmt_reset(st);
	return rc != DUN_STEP_DONE;
}

enum dun_err dun_inbox_claim(struct dun_db *db, const struct dun_inbox_config *cfg,
			     const char *worker_id, int64_t now, int max,
			     struct dun_inbox_item *out, int *n_out)
{
	*n_out = 0;
	if (!dun_inbox_maybe_ready(db, now))
		return DUN_OK;
	/*
	 * Two claimers on PostgreSQL can deadlock (taking back expired claims
	 * beside a claim of the same account): one of them is told to retry.
	 * Every account the pass saw may also have gone to others: look again.
	 */
	enum dun_err e = DUN_OK;
	for (int tries = 0; tries < 4; tries++) {
		int seen = 0;
		e = claim_pass(db, cfg, worker_id, now, max, out, n_out, &seen);
		if (e == DUN_OK && (*n_out > 0 || seen == 0))
			return DUN_OK;
		if (e != DUN_OK && e != DUN_E_BUSY)
			return e;
	}
	return e;
}

enum dun_err dun_inbox_claim_account(struct dun_db *db, const struct dun_inbox_config *cfg,
				     const char *worker_id, const char *account_id, int64_t now,
				     struct dun_inbox_item *out, int *n_out)
{
	*n_out = 0;
	enum dun_err e = dun_db_begin_unsynced(db);
	if (e != DUN_OK)
		return e;
	e = reclaim_dead_owners(db, now);
	if (e != DUN_OK) {
		dun_db_rollback(db);
		return e;
	}
	e = take_back_expired(db, cfg, now);
	bool busy = false;
	if (e == DUN_OK)
		e = dun_fence_held_by_other(db, account_id, "", &busy);
	if (e != DUN_OK || busy) {
		dun_db_rollback(db);
		return e;
	}
	struct dun_stmt *st;
	st = dun_db_stmt(
	    db, "SELECT id, account_id, kind, source, event_id, state, attempts,"
		" last_error, not_before, created_at, updated_at FROM inbox"
		" WHERE account_id = ?1 AND state IN ('received', 'retrying', 'processing')"
		" AND not_before <= ?2 ORDER BY id LIMIT 1");
	dun_stmt_bind_text(st, 1, account_id);
	dun_stmt_bind_int64(st, 2, now);
	bool found = dun_stmt_row(st);
	if (found)
		read_item(st, out);
	dun_stmt_reset(st);
	if (!found) {
		dun_db_rollback(db);
		return DUN_OK;
	}
	st = dun_db_stmt(db,
			 "UPDATE inbox SET state = 'processing', claimed_by = ?2,"
			 " claimed_at = ?3, updated_at = ?3 WHERE account_id = ?1 AND"
			 " state IN ('received', 'retrying', 'processing') AND not_before <= ?3");
	dun_stmt_bind_text(st, 1, account_id);
	dun_stmt_bind_text(st, 2, worker_id);
	dun_stmt_bind_int64(st, 3, now);
	e = dun_stmt_done(st);
	if (e == DUN_OK) {
		out->coalesced = dun_db_changes(db);
		struct dun_fence f;
		e = dun_fence_acquire(db, account_id, worker_id, cfg->lease_s * 1000, &f);
		out->token = f.token;
	}
	if (e == DUN_OK)
		e = dun_db_commit(db);
	if (e != DUN_OK) {
		dun_db_rollback(db);
		/* Claimed by another process since the check: busy, as above. */
		return e == DUN_E_FENCED ? DUN_OK : e;
	}
	*n_out = 1;
	return DUN_OK;
}

/*
 * Settle the claimed triggers of account_id under worker_id with sql (its
 * ?1 the account, ?2 the worker, ?3 now) and release the claim, in one
 * transaction.
 */
static enum dun_err settle_in_tx(struct dun_db *db, const char *sql, const char *worker_id,
				 const char *account_id, int64_t now)
{
	struct dun_stmt *st = dun_db_stmt(db, sql);
	dun_stmt_bind_text(st, 1, account_id);
	dun_stmt_bind_text(st, 2, worker_id);
	dun_stmt_bind_int64(st, 3, now);
	/* The triggers and the claim in one round trip (store/db.h). */
	struct dun_stmt *release = dun_fence_release_stmt(db, account_id, worker_id);
	struct dun_stmt *const both[] = {st, release};
	enum dun_err e = dun_db_pipeline(db, both, 2);
	if (e == DUN_OK)
		e = dun_stmt_done(st);
	if (e == DUN_OK)
		e = dun_stmt_done(release);
	return e;
}

static enum dun_err settle(struct dun_db *db, const char *sql, const char *worker_id,
			   const char *account_id, int64_t now)
{
	enum dun_err e = dun_db_begin_concurrent(db);
	if (e != DUN_OK)
		return e;
	e = settle_in_tx(db, sql, worker_id, account_id, now);
	if (e == DUN_OK)
		e = dun_db_commit(db);
	if (e != DUN_OK)
		dun_db_rollback(db);
	return e;
}

/*
 * "OR FAIL" (SQLite only; the PostgreSQL driver drops it): an UPDATE that
 * may change several rows and may fail a constraint (NOT NULL, the CHECK
 * on state) otherwise opens a statement journal, copying every page it
 * changes so it can undo its own earlier rows: about a fifth of the
 * statement. Every caller rolls back what a failed statement leaves (the
 * transaction or the account's savepoint), so nothing half done commits.
 */
#define COMPLETE_SQL                                                        \
	"UPDATE OR FAIL inbox SET state = 'done', attempts = attempts + 1," \
	" last_error = '', updated_at = ?3 WHERE account_id = ?1"           \
	" AND state = 'processing' AND claimed_by = ?2"

enum dun_err dun_inbox_complete_in_tx(struct dun_db *db, const char *worker_id,
				      const char *account_id, int64_t now)
{
	return settle_in_tx(db, COMPLETE_SQL, worker_id, account_id, now);
}

enum dun_err dun_inbox_complete(struct dun_db *db, const char *worker_id, const char *account_id,
				int64_t now)
{
	return settle(db, COMPLETE_SQL, worker_id, account_id, now);
}

enum dun_err dun_inbox_release(struct dun_db *db, const char *worker_id, const char *account_id,
			       int64_t now)
{
	return settle(db,
		      "UPDATE inbox SET state = 'retrying', not_before = ?3, claimed_by = '',"
		      " updated_at = ?3 WHERE account_id = ?1 AND state = 'processing'"
		      " AND claimed_by = ?2",
		      worker_id, account_id, now);
}

enum dun_err dun_inbox_fail(struct dun_db *db, const struct dun_inbox_config *cfg,
			    const char *worker_id, const char *account_id, int64_t now,
			    bool retryable, const char *error)
{
	enum dun_err e = dun_db_begin_concurrent(db);
	if (e != DUN_OK)
		return e;
	e = dun_inbox_fail_in_tx(db, cfg, worker_id, account_id, now, retryable, error);
	if (e == DUN_OK)
		e = dun_db_commit(db);
	if (e != DUN_OK)
		dun_db_rollback(db);
	return e;
}

enum dun_err dun_inbox_fail_in_tx(struct dun_db *db, const struct dun_inbox_config *cfg,
				  const char *worker_id, const char *account_id, int64_t now,
				  bool retryable, const char *error)
{
	enum dun_err e;
	/* attempts is shared by the coalesced triggers: use the largest. */
	struct dun_stmt *st = dun_db_stmt(db, "SELECT MAX(attempts), MIN(id) FROM inbox WHERE"
					      " account_id = ?1 AND state = 'processing' AND"
					      " claimed_by = ?2");
	dun_stmt_bind_text(st, 1, account_id);
	dun_stmt_bind_text(st, 2, worker_id);
	int attempts = 0;
	int64_t first = 0;
	if (dun_stmt_row(st)) {
		attempts = dun_stmt_col_int(st, 0) + 1;
		first = dun_stmt_col_int64(st, 1);
	}
	dun_stmt_reset(st);
	bool dead = !retryable || attempts >= cfg->max_attempts;
	int64_t delay =
	    dun_inbox_backoff(cfg, attempts, (uint64_t)first * 2654435761u + (uint64_t)attempts);
	st = dun_db_stmt(db, "UPDATE inbox SET state = ?3, attempts = ?4, last_error = ?5,"
			     " not_before = ?6, claimed_by = '', updated_at = ?7"
			     " WHERE account_id = ?1 AND state = 'processing' AND claimed_by = ?2");
	dun_stmt_bind_text(st, 1, account_id);
	dun_stmt_bind_text(st, 2, worker_id);
	dun_stmt_bind_text(st, 3, dead ? "dead" : "retrying");
	dun_stmt_bind_int(st, 4, attempts);
	dun_stmt_bind_text(st, 5, error);
	dun_stmt_bind_int64(st, 6, dead ? 0 : now + delay);
	dun_stmt_bind_int64(st, 7, now);
	e = dun_stmt_done(st);
	if (e == DUN_OK)
		e = dun_fence_release(db, account_id, worker_id);
	char a[16], d[24];
	snprintf(a, sizeof a, "%d", attempts);
	snprintf(d, sizeof d, "%lld", (long long)(dead ? 0 : delay));
	dun_log(dead ? DUN_LOG_ERROR : DUN_LOG_WARN, dead ? "inbox.dead" : "inbox.retrying",
		"account", account_id, "attempts", a, "retry_in_s", d, "error", error, NULL);
	return e;
}

enum dun_err dun_inbox_requeue(struct dun_db *db, int64_t id, int64_t now, int *n_out)
{
	struct dun_stmt *st;
	if (id) {
		st = dun_db_stmt(db, "UPDATE inbox SET state = 'received', not_before = ?2,"
				     " attempts = 0, updated_at = ?2 WHERE id = ?1 AND state IN"
				     " ('dead', 'retrying')");
		dun_stmt_bind_int64(st, 1, id);
	} else {
		st = dun_db_stmt(db,
				 "UPDATE inbox SET state = 'received', not_before = ?2,"
				 " attempts = 0, updated_at = ?2 WHERE state = 'dead' AND ?1 = 0");
		dun_stmt_bind_int64(st, 1, 0);
	}
	dun_stmt_bind_int64(st, 2, now);
	enum dun_err e = dun_stmt_done(st);
	if (n_out)
		*n_out = dun_db_changes(db);
	return e;
}

enum dun_err dun_inbox_enqueue_due_rechecks(struct dun_db *db, int64_t now, int *n_out)
{
	struct dun_stmt *st = dun_db_stmt(
	    db, "INSERT INTO inbox(account_id, kind, source, dedup_key, not_before, created_at,"
		" updated_at) SELECT account_id, 'recheck', 'timer',"
		" 'recheck:' || account_id || ':' || next_recheck_at, next_recheck_at, ?1, ?1"
		" FROM dunning WHERE next_recheck_at > 0 AND next_recheck_at <= ?1"
		" ON CONFLICT(dedup_key) DO NOTHING");
	dun_stmt_bind_int64(st, 1, now);
	enum dun_err e = dun_stmt_done(st);
	if (n_out)
		*n_out = dun_db_changes(db);
	if (e != DUN_OK)
		return e;
	/* Observe mode keeps its own rechecks, in its shadow (apply/shadow.h). */
	st = dun_db_stmt(
	    db, "INSERT INTO inbox(account_id, kind, source, dedup_key, not_before, created_at,"
		" updated_at) SELECT account_id, 'recheck', 'shadow',"
		" 'shadow-recheck:' || account_id || ':' || next_recheck_at, next_recheck_at,"
		" ?1, ?1 FROM shadow_dunning WHERE next_recheck_at > 0 AND next_recheck_at <= ?1"
		" ON CONFLICT(dedup_key) DO NOTHING");
	dun_stmt_bind_int64(st, 1, now);
	e = dun_stmt_done(st);
	if (n_out)
		*n_out += dun_db_changes(db);
	if (e == DUN_OK && n_out && *n_out > 0)
		dun_db_notify_inbox(db);
	return e;
}

enum dun_err dun_inbox_counts(struct dun_db *db, struct dun_inbox_counts *c)
{
	memset(c, 0, sizeof *c);
	struct dun_stmt *st = dun_db_stmt(db, "SELECT state, COUNT(*) FROM inbox GROUP BY state");
	int rc;
	while ((rc = dun_stmt_step(st)) == DUN_STEP_ROW) {
		const char *s = dun_stmt_col_text(st, 0);
		int64_t n = dun_stmt_col_int64(st, 1);
		if (!strcmp(s, "received"))
			c->received = n;
		else if (!strcmp(s, "processing"))
			c->processing = n;
		else if (!strcmp(s, "done"))
			c->done = n;
		else if (!strcmp(s, "retrying"))
			c->retrying = n;
		else if (!strcmp(s, "dead"))
			c->dead = n;
	}
	dun_stmt_reset(st);
	return rc == DUN_STEP_DONE ? DUN_OK : dun_stmt_err(st);
}
