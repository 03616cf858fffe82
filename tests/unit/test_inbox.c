/*
 * test_inbox.c — unit tests of the durable inbox (src/inbox/inbox.c):
 * dedup keys, claims that coalesce an account's triggers and serialize
 * accounts across workers, completion, retries with capped and jittered
 * backoff, dead letters, leases taken back, requeueing, and the timer that
 * turns due rechecks into triggers once per (account, time).
 *
 * The clock is fixed (dun_clock_set) so every time in the table is known.
 */
#include "check.h"
#include "testdb.h"

#include "inbox/inbox.h"
#include "store/fence.h"
#include "inbox/ingest.h"
#include "inbox/json_arena.h"
#include "util/clock.h"
#include "util/log.h"

#include <stdlib.h>
#include <string.h>

#define T0 1767225600 /* 2026-01-01T00:00:00Z */

static struct dun_db *fresh(void)
{
	dun_clock_set(T0);
	return testdb_open(":memory:");
}

static int64_t enqueue(struct dun_db *db, const char *account, const char *kind, const char *key)
{
	int64_t id = 0;
	bool inserted = false;
	CHECK_INT(dun_inbox_enqueue(db, account, kind, "test", "", key, 0, &inserted, &id), DUN_OK);
	CHECK(id > 0);
	return id;
}

static int64_t count_state(struct dun_db *db, const char *account, const char *state)
{
	char sql[160];
	snprintf(sql, sizeof sql,
		 "SELECT COUNT(*) FROM inbox WHERE account_id = ?1 AND state = '%s'", state);
	return testdb_int(db, sql, account);
}

static void test_enqueue_dedup(void)
{
	struct dun_db *db = fresh();
	bool inserted = false;
	int64_t id1 = 0, id2 = 0;
	CHECK_INT(dun_inbox_enqueue(db, "acct_1", "payment_failed", "provider", "evt_1", "k1", 0,
				    &inserted, &id1),
		  DUN_OK);
	CHECK(inserted);
	CHECK(id1 > 0);
	CHECK_INT(dun_inbox_enqueue(db, "acct_1", "payment_failed", "provider", "evt_1b", "k1", 0,
				    &inserted, &id2),
		  DUN_OK);
	CHECK(!inserted);
	CHECK_INT(id2, id1);
	CHECK_INT(testdb_int(db, "SELECT COUNT(*) FROM inbox", NULL), 1);
	char buf[64];
	/* The first delivery is what is kept. */
	CHECK_STR(testdb_text(db, "SELECT event_id FROM inbox WHERE dedup_key = ?1", "k1", buf,
			      sizeof buf),
		  "evt_1");
	CHECK_STR(
	    testdb_text(db, "SELECT state FROM inbox WHERE dedup_key = ?1", "k1", buf, sizeof buf),
	    "received");
	CHECK_INT(testdb_int(db, "SELECT created_at FROM inbox WHERE dedup_key = 'k1'", NULL), T0);

	/* Without a key every enqueue is a new trigger. */
	int64_t a = enqueue(db, "acct_1", "support_recompute", NULL);
	int64_t b = enqueue(db, "acct_1", "support_recompute", NULL);
	CHECK(a != b);
	CHECK_INT(testdb_int(db, "SELECT COUNT(*) FROM inbox", NULL), 3);
	/* NULL out-parameters are allowed. */
	CHECK_INT(dun_inbox_enqueue(db, "acct_2", "recheck", NULL, NULL, "k2", 0, NULL, NULL),
		  DUN_OK);
	CHECK_INT(testdb_int(db, "SELECT COUNT(*) FROM inbox", NULL), 4);

	struct dun_inbox_counts c;
	CHECK_INT(dun_inbox_counts(db, &c), DUN_OK);
	CHECK_INT(c.received, 4);
	CHECK_INT(c.processing + c.done + c.retrying + c.dead, 0);
	dun_db_close(db);
}

static void test_claim_coalesces_and_serializes(void)
{
	struct dun_db *db = fresh();
	struct dun_inbox_config cfg;
	dun_inbox_config_defaults(&cfg);
	int64_t a1 = enqueue(db, "acct_a", "payment_failed", "a1");
	enqueue(db, "acct_a", "invoice_changed", "a2");
	enqueue(db, "acct_a", "customer_changed", "a3");
	int64_t b1 = enqueue(db, "acct_b", "payment_failed", "b1");
	/* A trigger that is not due yet is left alone. */
	bool ins;
	CHECK_INT(
	    dun_inbox_enqueue(db, "acct_c", "recheck", "timer", "", "c1", T0 + 3600, &ins, NULL),
	    DUN_OK);

	struct dun_inbox_item items[8];
	int n = 0;
	CHECK_INT(dun_inbox_claim(db, &cfg, "w1", T0, 8, items, &n), DUN_OK);
	CHECK_INT(n, 2);
	if (n == 2) {
		CHECK_STR(items[0].account_id, "acct_a");
		CHECK_INT(items[0].id, a1); /* the oldest trigger stands for the claim */
		CHECK_STR(items[0].kind, "payment_failed");
		CHECK_INT(items[0].coalesced, 3);
		CHECK_STR(items[1].account_id, "acct_b");
		CHECK_INT(items[1].id, b1);
		CHECK_INT(items[1].coalesced, 1);
	}
	CHECK_INT(count_state(db, "acct_a", "processing"), 3);
	CHECK_INT(count_state(db, "acct_c", "received"), 1);
	char buf[32];
	CHECK_STR(testdb_text(db, "SELECT DISTINCT claimed_by FROM inbox WHERE account_id = ?1",
			      "acct_a", buf, sizeof buf),
		  "w1");

	/* A new trigger for a processing account: no second worker may take it. */
	int64_t a4 = enqueue(db, "acct_a", "paid", "a4");
	CHECK_INT(dun_inbox_claim(db, &cfg, "w2", T0 + 1, 8, items, &n), DUN_OK);
	CHECK_INT(n, 0);
	CHECK_INT(dun_inbox_claim_account(db, &cfg, "w2", "acct_a", T0 + 1, items, &n), DUN_OK);
	CHECK_INT(n, 0);
	CHECK_INT(count_state(db, "acct_a", "received"), 1);

	/* Completing by the wrong worker changes nothing. */
	CHECK_INT(dun_inbox_complete(db, "w2", "acct_a", T0 + 2), DUN_OK);
	CHECK_INT(count_state(db, "acct_a", "processing"), 3);

	/* w1 completes: its three are done, the one that came later is not. */
	CHECK_INT(dun_inbox_complete(db, "w1", "acct_a", T0 + 2), DUN_OK);
	CHECK_INT(count_state(db, "acct_a", "done"), 3);
	CHECK_INT(count_state(db, "acct_a", "received"), 1);
	CHECK_INT(testdb_int(db, "SELECT MIN(attempts) FROM inbox WHERE state = 'done'", NULL), 1);

	/* Now the late trigger is claimable, by anyone. */
	CHECK_INT(dun_inbox_claim(db, &cfg, "w2", T0 + 3, 8, items, &n), DUN_OK);
	CHECK_INT(n, 1);
	if (n == 1) {
		CHECK_STR(items[0].account_id, "acct_a");
		CHECK_INT(items[0].id, a4);
		CHECK_INT(items[0].coalesced, 1);
	}
	CHECK_INT(dun_inbox_complete(db, "w2", "acct_a", T0 + 3), DUN_OK);
	CHECK_INT(dun_inbox_complete(db, "w1", "acct_b", T0 + 3), DUN_OK);

	/* max bounds the number of accounts claimed. */
	enqueue(db, "acct_x", "recheck", NULL);
	enqueue(db, "acct_y", "recheck", NULL);
	enqueue(db, "acct_z", "recheck", NULL);
	CHECK_INT(dun_inbox_claim(db, &cfg, "w3", T0 + 4, 2, items, &n), DUN_OK);
	CHECK_INT(n, 2);
	CHECK_INT(count_state(db, "acct_z", "received"), 1);

	/* The recheck of acct_c becomes claimable when it is due. */
	CHECK_INT(dun_inbox_claim_account(db, &cfg, "w4", "acct_c", T0 + 3599, items, &n), DUN_OK);
	CHECK_INT(n, 0);
	CHECK_INT(dun_inbox_claim_account(db, &cfg, "w4", "acct_c", T0 + 3600, items, &n), DUN_OK);
	CHECK_INT(n, 1);
	if (n == 1)
		CHECK_STR(items[0].kind, "recheck");
	dun_db_close(db);
}

static int64_t not_before_of(struct dun_db *db, int64_t id)
{
	char sid[32];
	snprintf(sid, sizeof sid, "%lld", (long long)id);
	return testdb_int(db, "SELECT not_before FROM inbox WHERE id = CAST(?1 AS INTEGER)", sid);
}

static const char *state_of(struct dun_db *db, int64_t id, char *buf, size_t n)
{
	char sid[32];
	snprintf(sid, sizeof sid, "%lld", (long long)id);
	return testdb_text(db, "SELECT state FROM inbox WHERE id = CAST(?1 AS INTEGER)", sid, buf,
			   n);
}

/* The nominal delay before attempt n: base·2^(n-1), capped. */
static int64_t nominal(const struct dun_inbox_config *cfg, int n)
{
	int64_t d = cfg->backoff_base_s;
	for (int i = 1; i < n; i++) {
		d *= 2;
		if (d >= cfg->backoff_max_s)
			break;
	}
	return d < cfg->backoff_max_s ? d : cfg->backoff_max_s;
}

static void check_in_band(const struct dun_inbox_config *cfg, int attempts, int64_t delay)
{
	int64_t nom = nominal(cfg, attempts);
	/* [0.8, 1.2] × nominal, in integer arithmetic */
	if (delay * 10 >= nom * 8 && delay * 10 <= nom * 12) {
		check_passed++;
		return;
	}
	CHECK_FAIL_AT("attempt %d: delay %lld outside [0.8, 1.2] x %lld", attempts,
		      (long long)delay, (long long)nom);
}

static void test_backoff_band(void)
{
	struct dun_inbox_config cfg;
	dun_inbox_config_defaults(&cfg);
	CHECK_INT(cfg.backoff_base_s, 30);
	CHECK_INT(cfg.backoff_max_s, 3600);
	CHECK_INT(cfg.max_attempts, 8);
	CHECK_INT(cfg.lease_s, 300);
	bool varies = false;
	for (int n = 1; n <= 12; n++) {
		int64_t first = dun_inbox_backoff(&cfg, n, 0);
		for (uint64_t seed = 0; seed < 200; seed++) {
			int64_t d = dun_inbox_backoff(&cfg, n, seed * 2654435761u + 17);
			check_in_band(&cfg, n, d);
			varies = varies || d != first;
		}
		/* Deterministic in its seed. */
		CHECK_INT(dun_inbox_backoff(&cfg, n, 99), dun_inbox_backoff(&cfg, n, 99));
	}
	CHECK(varies); /* there is jitter */
	/* Past the cap the delay stays within 20% of the cap. */
	CHECK(dun_inbox_backoff(&cfg, 30, 5) <= cfg.backoff_max_s * 12 / 10);
	CHECK(dun_inbox_backoff(&cfg, 30, 5) >= cfg.backoff_max_s * 8 / 10);
}

static void test_fail_retry_then_dead(void)
{
	struct dun_db *db = fresh();
	struct dun_inbox_config cfg;
	dun_inbox_config_defaults(&cfg);
	cfg.max_attempts = 4;
	cfg.backoff_base_s = 30;
	cfg.backoff_max_s = 100; /* attempt 3 is capped (120 -> 100) */
	int64_t id = enqueue(db, "acct_r", "payment_failed", "r1");
	int64_t id2 = enqueue(db, "acct_r", "invoice_changed", "r2");
	struct dun_inbox_item it[4];
	int n = 0;
	int64_t now = T0;
	char buf[256];
	for (int attempt = 1; attempt <= 3; attempt++) {
		CHECK_INT(dun_inbox_claim(db, &cfg, "w", now, 4, it, &n), DUN_OK);
		CHECK_INT(n, 1);
		if (n != 1)
			break;
		CHECK_INT(it[0].attempts, attempt - 1);
		CHECK_INT(dun_inbox_fail(db, &cfg, "w", "acct_r", now, true, "provider timed out"),
			  DUN_OK);
		CHECK_STR(state_of(db, id, buf, sizeof buf), "retrying");
		CHECK_STR(state_of(db, id2, buf, sizeof buf), "retrying");
		CHECK_INT(testdb_int(db, "SELECT attempts FROM inbox WHERE dedup_key = 'r1'", NULL),
			  attempt);
		CHECK_STR(testdb_text(db, "SELECT last_error FROM inbox WHERE dedup_key = ?1", "r1",
				      buf, sizeof buf),
			  "provider timed out");
		int64_t nb = not_before_of(db, id);
		CHECK_INT(not_before_of(db, id2), nb); /* coalesced triggers move together */
		check_in_band(&cfg, attempt, nb - now);
		/* Not claimable before its time, claimable at it. */
		CHECK_INT(dun_inbox_claim(db, &cfg, "w", nb - 1, 4, it, &n), DUN_OK);
		CHECK_INT(n, 0);
		now = nb;
	}
	/* The fourth failure reaches max_attempts: dead, not retried. */
	CHECK_INT(dun_inbox_claim(db, &cfg, "w", now, 4, it, &n), DUN_OK);
	CHECK_INT(n, 1);
	CHECK_INT(dun_inbox_fail(db, &cfg, "w", "acct_r", now, true, "still timing out"), DUN_OK);
	CHECK_STR(state_of(db, id, buf, sizeof buf), "dead");
	CHECK_STR(state_of(db, id2, buf, sizeof buf), "dead");
	CHECK_INT(testdb_int(db, "SELECT attempts FROM inbox WHERE dedup_key = 'r1'", NULL), 4);
	CHECK_INT(not_before_of(db, id), 0);
	CHECK_INT(dun_inbox_claim(db, &cfg, "w", now + 86400 * 30, 4, it, &n), DUN_OK);
	CHECK_INT(n, 0);

	/* A terminal error is dead at once, on the first attempt. */
	int64_t t = enqueue(db, "acct_t", "payment_failed", "t1");
	CHECK_INT(dun_inbox_claim(db, &cfg, "w", now, 4, it, &n), DUN_OK);
	CHECK_INT(n, 1);
	CHECK_INT(dun_inbox_fail(db, &cfg, "w", "acct_t", now, false, "no such account"), DUN_OK);
	CHECK_STR(state_of(db, t, buf, sizeof buf), "dead");
	CHECK_INT(testdb_int(db, "SELECT attempts FROM inbox WHERE dedup_key = 't1'", NULL), 1);

	struct dun_inbox_counts c;
	CHECK_INT(dun_inbox_counts(db, &c), DUN_OK);
	CHECK_INT(c.dead, 3);

	/* Requeue all dead: back to received, due now, attempts reset. */
	int moved = 0;
	CHECK_INT(dun_inbox_requeue(db, 0, now + 10, &moved), DUN_OK);
	CHECK_INT(moved, 3);
	CHECK_STR(state_of(db, id, buf, sizeof buf), "received");
	CHECK_INT(not_before_of(db, id), now + 10);
	CHECK_INT(testdb_int(db, "SELECT MAX(attempts) FROM inbox", NULL), 0);
	CHECK_INT(dun_inbox_claim(db, &cfg, "w", now + 10, 4, it, &n), DUN_OK);
	CHECK_INT(n, 2);
	dun_db_close(db);
}

static void test_requeue_by_id(void)
{
	struct dun_db *db = fresh();
	struct dun_inbox_config cfg;
	dun_inbox_config_defaults(&cfg);
	int64_t id = enqueue(db, "acct_q", "payment_failed", "q1");
	struct dun_inbox_item it[2];
	int n = 0, moved = -1;
	char buf[32];
	CHECK_INT(dun_inbox_claim(db, &cfg, "w", T0, 2, it, &n), DUN_OK);
	CHECK_INT(dun_inbox_fail(db, &cfg, "w", "acct_q", T0, true, "busy"), DUN_OK);
	CHECK_STR(state_of(db, id, buf, sizeof buf), "retrying");
	/* A named retrying trigger may be pulled forward. */
	CHECK_INT(dun_inbox_requeue(db, id, T0 + 1, &moved), DUN_OK);
	CHECK_INT(moved, 1);
	CHECK_STR(state_of(db, id, buf, sizeof buf), "received");
	CHECK_INT(not_before_of(db, id), T0 + 1);
	/* ... but "all" means the dead only, and a done trigger is never requeued. */
	CHECK_INT(dun_inbox_claim(db, &cfg, "w", T0 + 1, 2, it, &n), DUN_OK);
	CHECK_INT(dun_inbox_complete(db, "w", "acct_q", T0 + 1), DUN_OK);
	CHECK_INT(dun_inbox_requeue(db, id, T0 + 2, &moved), DUN_OK);
	CHECK_INT(moved, 0);
	CHECK_STR(state_of(db, id, buf, sizeof buf), "done");
	CHECK_INT(dun_inbox_requeue(db, 0, T0 + 2, &moved), DUN_OK);
	CHECK_INT(moved, 0);
	CHECK_INT(dun_inbox_requeue(db, 987654, T0 + 2, &moved), DUN_OK);
	CHECK_INT(moved, 0);
	dun_db_close(db);
}

static void test_expired_lease_taken_back(void)
{
	struct dun_db *db = fresh();
	struct dun_inbox_config cfg;
	dun_inbox_config_defaults(&cfg);
	cfg.lease_s = 300;
	int64_t id = enqueue(db, "acct_l", "payment_failed", "l1");
	struct dun_inbox_item it[2];
	int n = 0;
	char buf[64];
	CHECK_INT(dun_inbox_claim(db, &cfg, "dead-worker", T0, 2, it, &n), DUN_OK);
	CHECK_INT(n, 1);
	int64_t first_token = it[0].token;
	CHECK(first_token > 0);
	/* Within the lease the account stays with its worker — whatever the
	 * settable clock says: leases are timed by the wall clock. */
	CHECK_INT(dun_inbox_claim(db, &cfg, "w2", T0 + 100000, 2, it, &n), DUN_OK);
	CHECK_INT(n, 0);
	CHECK_INT(dun_inbox_claim_account(db, &cfg, "w2", "acct_l", T0 + 100000, it, &n), DUN_OK);
	CHECK_INT(n, 0);
	/* Once the claim ran out (not renewed for a lease), the next claim takes
	 * it back and hands it out again under a new token. */
	testdb_exec(db, "UPDATE claims SET expires_ms = 1 WHERE account_id = 'acct_l'");
	CHECK_INT(dun_inbox_claim(db, &cfg, "w2", T0 + 1, 2, it, &n), DUN_OK);
	CHECK_INT(n, 1);
	if (n == 1) {
		CHECK_INT(it[0].id, id);
		CHECK_STR(it[0].last_error, "lease expired");
		CHECK_INT(it[0].token, first_token + 1);
	}
	CHECK_STR(state_of(db, id, buf, sizeof buf), "processing");
	CHECK_STR(testdb_text(db, "SELECT claimed_by FROM inbox WHERE dedup_key = ?1", "l1", buf,
			      sizeof buf),
		  "w2");
	/* The old claim's writes are fenced off; the new one's pass. */
	struct dun_fence old = {"acct_l", "dead-worker", first_token, 300000};
	struct dun_fence cur = {"acct_l", "w2", first_token + 1, 300000};
	CHECK_INT(dun_fence_renew(db, &old), DUN_E_FENCED);
	CHECK_INT(dun_fence_renew(db, &cur), DUN_OK);
	/* The worker that lost its lease can no longer settle the trigger. */
	CHECK_INT(dun_inbox_complete(db, "dead-worker", "acct_l", T0 + 302), DUN_OK);
	CHECK_STR(state_of(db, id, buf, sizeof buf), "processing");
	CHECK_INT(dun_inbox_fail(db, &cfg, "dead-worker", "acct_l", T0 + 302, true, "late"),
		  DUN_OK);
	CHECK_STR(state_of(db, id, buf, sizeof buf), "processing");
	CHECK_INT(dun_inbox_complete(db, "w2", "acct_l", T0 + 302), DUN_OK);
	CHECK_STR(state_of(db, id, buf, sizeof buf), "done");
	/* Settling released the claim. */
	CHECK_INT(testdb_int(db, "SELECT expires_ms FROM claims WHERE account_id = ?1", "acct_l"),
		  0);

	/* The single-account claim (the CLI's recompute) also takes back a stale lease. */
	int64_t id2 = enqueue(db, "acct_m", "payment_failed", "m1");
	CHECK_INT(dun_inbox_claim(db, &cfg, "gone", T0 + 400, 2, it, &n), DUN_OK);
	CHECK_INT(n, 1);
	testdb_exec(db, "UPDATE claims SET expires_ms = 1 WHERE account_id = 'acct_m'");
	CHECK_INT(dun_inbox_claim_account(db, &cfg, "cli", "acct_m", T0 + 401, it, &n), DUN_OK);
	CHECK_INT(n, 1);
	CHECK_STR(testdb_text(db, "SELECT claimed_by FROM inbox WHERE dedup_key = ?1", "m1", buf,
			      sizeof buf),
		  "cli");
	CHECK_INT(it[0].id, id2);
	dun_db_close(db);
}

static void test_due_rechecks_once(void)
{
	struct dun_db *db = fresh();
	testdb_exec(db, "INSERT INTO dunning(account_id, stage, next_recheck_at) VALUES"
			" ('acct_due', 'notified', 1767225000),"
			" ('acct_now', 'notified', 1767225600),"
			" ('acct_later', 'notified', 1767229200),"
			" ('acct_none', 'none', 0)");
	int n = -1;
	CHECK_INT(dun_inbox_enqueue_due_rechecks(db, T0, &n), DUN_OK);
	CHECK_INT(n, 2);
	CHECK_INT(
	    testdb_int(db,
		       "SELECT COUNT(*) FROM inbox WHERE kind = 'recheck' AND source = 'timer'"
		       " AND state = 'received'",
		       NULL),
	    2);
	CHECK_INT(testdb_int(db, "SELECT not_before FROM inbox WHERE account_id = ?1", "acct_due"),
		  1767225000);
	CHECK_INT(testdb_int(db, "SELECT COUNT(*) FROM inbox WHERE account_id = ?1", "acct_later"),
		  0);
	/* Again at the same or a later time: nothing new for the same (account, time). */
	CHECK_INT(dun_inbox_enqueue_due_rechecks(db, T0, &n), DUN_OK);
	CHECK_INT(n, 0);
	CHECK_INT(dun_inbox_enqueue_due_rechecks(db, T0 + 60, &n), DUN_OK);
	CHECK_INT(n, 0);
	/* Even once done, the same recheck time never comes back. */
	testdb_exec(db, "UPDATE inbox SET state = 'done'");
	CHECK_INT(dun_inbox_enqueue_due_rechecks(db, T0 + 120, &n), DUN_OK);
	CHECK_INT(n, 0);
	/* A new recheck time for the account is a new trigger. */
	testdb_exec(db, "UPDATE dunning SET next_recheck_at = 1767225700"
			" WHERE account_id = 'acct_due'");
	CHECK_INT(dun_inbox_enqueue_due_rechecks(db, T0 + 120, &n), DUN_OK);
	CHECK_INT(n, 1);
	CHECK_INT(dun_inbox_enqueue_due_rechecks(db, T0 + 3600, &n), DUN_OK);
	CHECK_INT(n, 1); /* acct_later is due now */
	CHECK_INT(testdb_int(db, "SELECT COUNT(*) FROM inbox WHERE account_id = ?1", "acct_due"),
		  2);
	CHECK_INT(testdb_int(db, "SELECT COUNT(*) FROM inbox WHERE account_id = ?1", "acct_none"),
		  0);
	dun_db_close(db);
}

/* ---- ingest: one event in, all or nothing ------------------------------------ */

static enum dun_err ingest(struct dun_db *db, const char *body, struct dun_ingest_result *r,
			   char *err, size_t err_size)
{
	return dun_ingest_event(db, body, strlen(body), r, err, err_size);
}

static void test_ingest_event(void)
{
	struct dun_db *db = fresh();
	struct dun_ingest_result r;
	char err[256];
	static const char customer[] =
	    "{\"id\":\"evt_c\",\"type\":\"customer.created\",\"created\":100,\"data\":{\"object\":"
	    "{\"id\":\"cus_1\",\"object\":\"customer\",\"metadata\":{\"account_id\":\"acct_i\"}}}}";
	CHECK_INT(ingest(db, customer, &r, err, sizeof err), DUN_OK);
	CHECK_STR(r.account_id, "acct_i");
	CHECK_STR(r.outcome, "triggered");
	CHECK(r.triggered && !r.duplicate);
	CHECK_INT(ingest(db, customer, &r, err, sizeof err), DUN_OK);
	CHECK(r.duplicate);
	CHECK_STR(r.outcome, "duplicate");
	CHECK_INT(testdb_int(db, "SELECT COUNT(*) FROM inbox", NULL), 1);

	/* Two events for one change (same type, object and time) are one trigger. */
	static const char failed1[] =
	    "{\"id\":\"evt_f1\",\"type\":\"invoice.payment_failed\",\"created\":200,\"data\":"
	    "{\"object\":{\"id\":\"in_1\",\"object\":\"invoice\",\"customer\":\"cus_1\","
	    "\"status\":\"open\"}}}";
	static const char failed2[] =
	    "{\"id\":\"evt_f2\",\"type\":\"invoice.payment_failed\",\"created\":200,\"data\":"
	    "{\"object\":{\"id\":\"in_1\",\"object\":\"invoice\",\"customer\":\"cus_1\","
	    "\"status\":\"open\"}}}";
	CHECK_INT(ingest(db, failed1, &r, err, sizeof err), DUN_OK);
	CHECK_STR(r.outcome, "triggered");
	int64_t first = r.trigger_id;
	CHECK_INT(ingest(db, failed2, &r, err, sizeof err), DUN_OK);
	CHECK_STR(r.outcome, "coalesced");
	CHECK_INT(r.trigger_id, first);
	char kind[32];
	CHECK_STR(testdb_text(db, "SELECT kind FROM inbox WHERE id = (SELECT MAX(id) FROM inbox)",
			      NULL, kind, sizeof kind),
		  "payment_failed");

	/*
	 * Well-formed events dunning cannot act on are stored and acknowledged
	 * with their reason: an invoice with a null customer or status (basil
	 * allows both), an object without an id (invoice.upcoming).
	 */
	static const char no_customer[] =
	    "{\"id\":\"evt_nc\",\"type\":\"invoice.paid\",\"created\":300,\"data\":"
	    "{\"object\":{\"id\":\"in_2\",\"object\":\"invoice\",\"status\":\"paid\","
	    "\"customer\":null}}}";
	static const char no_status[] =
	    "{\"id\":\"evt_ns\",\"type\":\"invoice.updated\",\"created\":300,\"data\":"
	    "{\"object\":{\"id\":\"in_2\",\"object\":\"invoice\",\"status\":null,"
	    "\"customer\":\"cus_1\"}}}";
	static const char upcoming[] =
	    "{\"id\":\"evt_up\",\"type\":\"invoice.upcoming\",\"created\":300,\"data\":"
	    "{\"object\":{\"object\":\"invoice\",\"status\":\"draft\",\"customer\":\"cus_1\"}}}";
	CHECK_INT(ingest(db, no_customer, &r, err, sizeof err), DUN_OK);
	CHECK_STR(r.outcome, "ignored_no_customer");
	CHECK_INT(ingest(db, no_status, &r, err, sizeof err), DUN_OK);
	CHECK_STR(r.outcome, "ignored_no_status");
	CHECK_INT(ingest(db, upcoming, &r, err, sizeof err), DUN_OK);
	CHECK_STR(r.outcome, "ignored_no_id");
	CHECK(!r.triggered);
	CHECK_INT(ingest(db, upcoming, &r, err, sizeof err), DUN_OK);
	CHECK_STR(r.outcome, "duplicate");
	CHECK_INT(testdb_int(db, "SELECT COUNT(*) FROM p_invoices WHERE id = 'in_2'", NULL), 0);

	/* Malformed: nothing at all is written, not even the raw event. */
	int64_t raw = testdb_int(db, "SELECT COUNT(*) FROM events_raw", NULL);
	static const char *const bad[] = {
	    "not json",
	    "[1, 2]",
	    "{\"type\":\"invoice.paid\",\"created\":1,\"data\":{\"object\":{}}}",
	    "{\"id\":\"evt_t\",\"created\":1,\"data\":{\"object\":{}}}",
	    "{\"id\":\"evt_t\",\"type\":\"invoice.paid\",\"created\":\"1\",\"data\":{\"object\":{}}"
	    "}",
	    "{\"id\":\"evt_t\",\"type\":\"invoice.paid\",\"created\":1,\"data\":{}}",
	    "{\"id\":\"evt_t\",\"id\":\"evt_u\",\"type\":\"invoice.paid\",\"created\":1,"
	    "\"data\":{\"object\":{}}}",
	};
	for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
		err[0] = '\0';
		CHECK_INT(ingest(db, bad[i], &r, err, sizeof err), DUN_E_PARSE);
		CHECK(err[0] != '\0');
	}
	CHECK_INT(testdb_int(db, "SELECT COUNT(*) FROM events_raw", NULL), raw);

	/* Which events start which triggers. */
	CHECK_STR(dun_ingest_trigger_kind("invoice.payment_failed", false), "payment_failed");
	CHECK_STR(dun_ingest_trigger_kind("invoice.marked_uncollectible", false),
		  "marked_uncollectible");
	CHECK_STR(dun_ingest_trigger_kind("invoice.paid", false), "paid");
	CHECK_STR(dun_ingest_trigger_kind("invoice.paid", true), "bad_debt_paid");
	CHECK_STR(dun_ingest_trigger_kind("charge.failed", false), "payment_failed");
	CHECK(dun_ingest_trigger_kind("plan.created", false) == NULL);
	CHECK(dun_ingest_trigger_kind("", false) == NULL);
	dun_db_close(db);
}

/*
 * On SQLite the fence check reads the claim (the transaction holds the
 * file) and writes it only once less than half the lease is left; a claim
 * taken over, or released and taken again, is refused either way.
 */
static void test_fence_check_reads_on_sqlite(void)
{
	struct dun_db *db = fresh();
	struct dun_fence f;
	CHECK_INT(dun_db_begin(db), DUN_OK);
	CHECK_INT(dun_fence_acquire(db, "acct_f", "w1", 300000, &f), DUN_OK);
	CHECK_INT(dun_db_commit(db), DUN_OK);
	testdb_exec(db,
		    "UPDATE claims SET expires_ms = expires_ms - 1000 WHERE account_id = 'acct_f'");
	int64_t before =
	    testdb_int(db, "SELECT expires_ms FROM claims WHERE account_id = ?1", "acct_f");
	/* Most of the lease left: passes, nothing written. */
	CHECK_INT(dun_fence_renew(db, &f), DUN_OK);
	CHECK(testdb_int(db, "SELECT expires_ms FROM claims WHERE account_id = ?1", "acct_f") ==
	      before);
	/* Less than half left: renewed to a full lease. */
	testdb_exec(db, "UPDATE claims SET expires_ms = expires_ms - 200000"
			" WHERE account_id = 'acct_f'");
	CHECK_INT(dun_fence_renew(db, &f), DUN_OK);
	CHECK(testdb_int(db, "SELECT expires_ms FROM claims WHERE account_id = ?1", "acct_f") >
	      before);
	/* Released, then taken by another worker: the old fence is refused. */
	CHECK_INT(dun_fence_release(db, "acct_f", "w1"), DUN_OK);
	struct dun_fence g;
	CHECK_INT(dun_db_begin(db), DUN_OK);
	CHECK_INT(dun_fence_acquire(db, "acct_f", "w2", 300000, &g), DUN_OK);
	CHECK_INT(dun_db_commit(db), DUN_OK);
	CHECK_INT(dun_fence_renew(db, &f), DUN_E_FENCED);
	CHECK_INT(dun_fence_renew(db, &g), DUN_OK);
	dun_db_close(db);
}

/*
 * A webhook's parse in an arena: the tree is the same as from malloc, its
 * values come from the arena until it is full and from malloc after, and
 * allocations outside it (json_dumps, freed with free()) are malloc's.
 * The allocator is installed for the whole program, so every other test
 * here runs on its malloc side.
 */
static void test_json_arena(void)
{
	static const char body[] =
	    "{\"id\":\"evt_1\",\"type\":\"invoice.payment_failed\",\"created\":1700000000,"
	    "\"data\":{\"object\":{\"id\":\"in_1\",\"customer\":\"cus_1\","
	    "\"amount_due\":4900,\"lines\":{\"data\":[{\"id\":\"il_1\"}]}}}}";
	struct dun_json_arena *a = dun_json_arena_take();
	CHECK(a != NULL);
	dun_json_arena_enter(a);
	json_t *ev = NULL;
	char err[256];
	CHECK_INT(dun_ingest_parse(body, sizeof body - 1, &ev, err, sizeof err), DUN_OK);
	dun_json_arena_leave();
	CHECK(dun_json_arena_used(a) > 0);
	CHECK_INT((int)dun_json_arena_spilled(a), 0);
	CHECK_STR(json_string_value(json_object_get(
		      json_object_get(json_object_get(ev, "data"), "object"), "customer")),
		  "cus_1");
	/* Outside the arena: malloc's, and json_dumps's string is freed with free(). */
	char *dumped = json_dumps(ev, JSON_COMPACT);
	CHECK(dumped && strstr(dumped, "\"amount_due\":4900"));
	free(dumped);
	json_decref(ev);
	dun_json_arena_give_back(a);

	/* A tree larger than an arena: the rest spills to malloc, the tree is whole. */
	json_t *big = json_object();
	for (int i = 0; i < 2000; i++) {
		char k[32];
		snprintf(k, sizeof k, "field_%d", i);
		json_object_set_new(big, k, json_integer(i));
	}
	json_object_set_new(big, "id", json_string("evt_big"));
	char *big_body = json_dumps(big, JSON_COMPACT);
	json_decref(big);
	a = dun_json_arena_take();
	dun_json_arena_enter(a);
	CHECK_INT(dun_ingest_parse(big_body, strlen(big_body), &ev, err, sizeof err), DUN_OK);
	dun_json_arena_leave();
	CHECK(dun_json_arena_spilled(a) > 0);
	CHECK_INT((int)json_integer_value(json_object_get(ev, "field_1999")), 1999);
	CHECK_INT((int)json_object_size(ev), 2001);
	json_decref(ev);
	dun_json_arena_give_back(a);
	free(big_body);

	/* Malformed input fails the same way inside an arena, nothing kept. */
	a = dun_json_arena_take();
	dun_json_arena_enter(a);
	CHECK_INT(dun_ingest_parse("{\"id\":", 7, &ev, err, sizeof err), DUN_E_PARSE);
	dun_json_arena_leave();
	CHECK(ev == NULL);
	dun_json_arena_give_back(a);
}

int main(void)
{
	dun_json_arena_install();
	/* Retries and dead letters log warnings; only errors are worth reading here. */
	dun_log_set_level(DUN_LOG_ERROR);
	test_enqueue_dedup();
	test_claim_coalesces_and_serializes();
	test_backoff_band();
	test_fail_retry_then_dead();
	test_requeue_by_id();
	test_expired_lease_taken_back();
	test_due_rechecks_once();
	test_ingest_event();
	test_json_arena();
	test_fence_check_reads_on_sqlite();
	dun_clock_reset();
	return CHECK_DONE();
}
