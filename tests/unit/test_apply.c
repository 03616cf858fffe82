/*
 * test_apply.c — the whole pipeline (GATHER → EVALUATE → DECIDE → rollout
 * gate → EXECUTE) on an in-memory database with the simulated provider,
 * wired the way `dunning` wires it (src/cli/cli.c): local platform,
 * template renderer over the shipped templates, and a test mailer that
 * records what it was handed and can be told to fail.
 *
 * What is checked: once-consequences are applied at most once per key
 * even when a stale plan is replayed; an email is queued (pending) with its
 * decision and the email sender takes it to sent; a failing mailer never
 * fails the plan: the stage moves, the email is retried by the sender with
 * backoff, in queue order per account, and given up (dead) at the age
 * limit, and a requeue sends it; a fresh provider read that finds an
 * invoice paid aborts a destructive plan with DUN_E_CONFLICT; observe mode
 * writes nothing but its decision; the rollout gate's buckets are stable.
 */
#include "check.h"
#include "testdb.h"

#include "apply/apply.h"
#include "apply/email_sender.h"
#include "apply/local.h"
#include "apply/recompute.h"
#include "apply/render.h"
#include "apply/rollout.h"
#include "inbox/ingest.h"
#include "inbox/worker.h"
#include "provider/sim.h"
#include "util/clock.h"
#include "util/log.h"

#include <jansson.h>
#include <stdlib.h>
#include <string.h>

#ifndef DUN_TEST_DATA_DIR
#error "DUN_TEST_DATA_DIR must name the source tree (see tests/unit/meson.build)"
#endif

#define T0   1767603600 /* 2026-01-05T09:00:00Z */
#define DAY  86400
#define ACCT "acct_1"

/* ---- a mailer that records and can fail ------------------------------------ */

struct test_mailer {
	struct dun_db *db;
	int calls;
	enum dun_err fail_with; /* DUN_OK: deliver */
	char last_key[DUN_KEY_MAX];
	char state_during_send[16]; /* the email log's state while the mailer has it */
	char last_to[128];
	char last_subject[256];
};

static enum dun_err test_send(void *self, const struct dun_email_msg *msg, char *err,
			      size_t err_size)
{
	struct test_mailer *m = self;
	m->calls++;
	snprintf(m->last_key, sizeof m->last_key, "%s", msg->key);
	snprintf(m->last_to, sizeof m->last_to, "%s", msg->to ? msg->to : "");
	snprintf(m->last_subject, sizeof m->last_subject, "%s", msg->subject ? msg->subject : "");
	testdb_text(m->db, "SELECT state FROM emails WHERE key = ?1", msg->key,
		    m->state_during_send, sizeof m->state_during_send);
	if (m->fail_with != DUN_OK) {
		snprintf(err, err_size, "relay refused the message (test)");
		return m->fail_with;
	}
	return DUN_OK;
}

static const struct dun_mailer_ops test_mailer_ops = {.name = "test", .send = test_send};

/* ---- the fixture: one account with a card that fails ----------------------- */

struct fixture {
	struct dun_db *db;
	struct dun_sim *sim;
	struct dun_policy policy;
	struct dun_template_set *templates;
	struct dun_template_renderer tr;
	struct test_mailer mailer;
	struct dun_engine en;
	char customer[DUN_ID_MAX];
	char subscription[DUN_ID_MAX];
	char invoice[DUN_ID_MAX];
};

/* Run the email sender once at now with the fixture's mailer. */
static void deliver(struct fixture *fx, int64_t now, struct dun_email_stats *st)
{
	struct dun_mailer m = fx->en.applier.mailer;
	struct dun_email_sender_config c;
	dun_email_sender_config_from(NULL, &m, &c);
	CHECK_INT(dun_email_sender_run_once(fx->db, &m, &c, now, st), DUN_OK);
}

/* Deliver every queued provider event through the real ingest path. */
static void pump(struct fixture *fx)
{
	json_t *evs = dun_sim_take_events(fx->sim, 1000);
	size_t i;
	json_t *ev;
	json_array_foreach(evs, i, ev)
	{
		char *body = json_dumps(ev, JSON_COMPACT);
		struct dun_ingest_result r;
		char err[256] = "";
		enum dun_err e = dun_ingest_event(fx->db, body, strlen(body), &r, err, sizeof err);
		if (e != DUN_OK)
			CHECK_FAIL_AT("ingest: %s", err);
		free(body);
	}
	json_decref(evs);
}

/* Set up fx with one self-serve account whose card fails with behavior,
 * in the database at path. */
static bool setup_at(struct fixture *fx, const char *behavior, const char *path)
{
	memset(fx, 0, sizeof *fx);
	dun_clock_set(T0);
	fx->db = testdb_open(path);
	testdb_writes_on(fx->db);
	fx->sim = dun_sim_new(fx->db, 1);
	dun_policy_defaults(&fx->policy);
	char err[512] = "";
	if (dun_template_set_load(DUN_TEST_DATA_DIR "/templates", &fx->templates, err,
				  sizeof err) != DUN_OK) {
		CHECK_FAIL_AT("templates: %s", err);
		dun_sim_destroy(fx->sim);
		dun_db_close(fx->db);
		return false;
	}
	fx->tr.templates = fx->templates;
	fx->tr.support_email = "billing@example.com";
	fx->mailer.db = fx->db;
	struct dun_mailer mailer = {.ops = &test_mailer_ops, .self = &fx->mailer};
	dun_engine_init(&fx->en, fx->db, &fx->policy, dun_sim_provider(fx->sim),
			dun_local_platform(fx->db), mailer, dun_template_renderer(&fx->tr));
	CHECK_INT(dun_sim_create_customer(fx->sim, ACCT, "ada@example.com", "Ada", behavior,
					  fx->customer),
		  DUN_OK);
	CHECK_INT(dun_sim_create_subscription(fx->sim, fx->customer, fx->subscription), DUN_OK);
	CHECK_INT(dun_sim_bill(fx->sim, fx->customer, fx->subscription, 2000, "subscription_cycle",
			       fx->invoice),
		  DUN_OK);
	pump(fx);
	return true;
}

static bool setup(struct fixture *fx, const char *behavior)
{
	return setup_at(fx, behavior, ":memory:");
}

static void teardown(struct fixture *fx)
{
	dun_engine_free(&fx->en);
	dun_sim_destroy(fx->sim);
	dun_template_set_destroy(fx->templates);
	dun_db_close(fx->db);
	dun_clock_reset();
}

static enum dun_err recompute(struct fixture *fx, const char *kind, struct dun_recompute_result *r)
{
	struct dun_trigger_ref t = {.id = 0, .kind = kind};
	return dun_engine_recompute(&fx->en, ACCT, &t, false, r);
}

static int count_in_plan(const struct dun_plan *p, enum dun_conseq_type type)
{
	int n = 0;
	for (int i = 0; i < p->n; i++)
		n += p->items[i].type == type;
	return n;
}

static int64_t sim_int(struct fixture *fx, const char *id, const char *path)
{
	char sql[160];
	snprintf(sql, sizeof sql, "SELECT json_extract(body, '%s') FROM sim_objects WHERE id = ?1",
		 path);
	return testdb_int(fx->db, sql, id);
}

static const char *sim_text(struct fixture *fx, const char *id, const char *path, char *buf,
			    size_t n)
{
	char sql[160];
	snprintf(sql, sizeof sql, "SELECT json_extract(body, '%s') FROM sim_objects WHERE id = ?1",
		 path);
	return testdb_text(fx->db, sql, id, buf, n);
}

/* A copy of the engine's current plan, to replay later as a stale one. */
struct saved_plan {
	struct dun_consequence items[64];
	struct dun_plan plan;
};

static void save_plan(const struct dun_engine *en, struct saved_plan *sp)
{
	int n = en->plan.n < 64 ? en->plan.n : 64;
	memcpy(sp->items, en->plan.items, sizeof sp->items[0] * (size_t)n);
	sp->plan.items = sp->items;
	sp->plan.n = n;
	sp->plan.cap = 64;
}

/* ---- once-consequences ------------------------------------------------------- */

static void test_once_consequences_at_most_once(void)
{
	struct fixture fx;
	if (!setup(&fx, "insufficient_funds"))
		return;
	struct dun_recompute_result r;
	CHECK_INT(recompute(&fx, "payment_failed", &r), DUN_OK);
	CHECK_INT(r.mode, DUN_MODE_ACTIVE);
	CHECK_INT(r.to, DUN_STAGE_NOTIFIED);
	CHECK_INT(count_in_plan(&fx.en.plan, DUN_C_SEND_EMAIL), 1);
	CHECK_INT(r.apply.n_failed, 0);
	CHECK_INT(r.apply.n_applied, fx.en.plan.n);
	CHECK_INT(fx.mailer.calls, 0);
	struct dun_email_stats es;
	deliver(&fx, T0, &es);
	CHECK_INT(fx.mailer.calls, 1);
	struct saved_plan first;
	save_plan(&fx.en, &first);
	int once_in_first = 0;
	for (int i = 0; i < first.plan.n; i++)
		once_in_first += dun_conseq_is_once(first.items[i].type);
	CHECK(once_in_first >= 1);

	/* The second recompute finds everything true: an empty plan, a noop decision. */
	CHECK_INT(recompute(&fx, "support_recompute", &r), DUN_OK);
	CHECK_INT(r.n_planned, 0);
	CHECK_INT(fx.mailer.calls, 1);
	char buf[64];
	char sid[32];
	snprintf(sid, sizeof sid, "%lld", (long long)r.decision_id);
	CHECK_STR(testdb_text(fx.db, "SELECT outcome FROM decisions WHERE id = CAST(?1 AS INTEGER)",
			      sid, buf, sizeof buf),
		  "noop");

	/* Replaying the first, stale plan skips every once-consequence by its key. */
	struct dun_apply_result res;
	CHECK_INT(
	    dun_apply_plan(&fx.en.applier, &fx.en.snap, &fx.en.desired, &first.plan, 999, &res),
	    DUN_OK);
	CHECK_INT(res.n_skipped, once_in_first);
	CHECK_INT(res.n_failed, 0);
	CHECK_INT(fx.mailer.calls, 1);
	CHECK_INT(testdb_int(fx.db, "SELECT COUNT(*) FROM emails", NULL), 1);
	CHECK_INT(testdb_int(fx.db, "SELECT COUNT(*) FROM outcome_events", NULL),
		  count_in_plan(&first.plan, DUN_C_EMIT_OUTCOME_EVENT));
	/* Every once key was applied by the first decision, never by the replay. */
	CHECK_INT(testdb_int(fx.db,
			     "SELECT COUNT(*) FROM applied WHERE decision_id = 999 AND type IN"
			     " ('send_email', 'emit_outcome_event', 'retry_payment',"
			     " 'open_bad_debt_episode', 'close_bad_debt_episode')",
			     NULL),
		  0);

	/* A day later a retry is due: it is charged once, and once only. */
	dun_clock_set(T0 + DAY + 3600);
	int64_t charges_before = testdb_int(fx.db,
					    "SELECT COUNT(*) FROM sim_objects WHERE type = 'charge'"
					    " AND json_extract(body, '$.invoice') = ?1",
					    fx.invoice);
	CHECK_INT(charges_before, 1);
	CHECK_INT(recompute(&fx, "recheck", &r), DUN_OK);
	CHECK_INT(count_in_plan(&fx.en.plan, DUN_C_RETRY_PAYMENT), 1);
	struct saved_plan retry;
	save_plan(&fx.en, &retry);
	CHECK_INT(sim_int(&fx, fx.invoice, "$.attempt_count"), 2);
	CHECK_INT(testdb_int(fx.db,
			     "SELECT COUNT(*) FROM sim_objects WHERE type = 'charge'"
			     " AND json_extract(body, '$.invoice') = ?1",
			     fx.invoice),
		  2);
	/* The provider's reply was folded into the mirror at once. */
	CHECK_INT(
	    testdb_int(fx.db, "SELECT attempt_count FROM p_invoices WHERE id = ?1", fx.invoice), 2);
	CHECK_INT(
	    dun_apply_plan(&fx.en.applier, &fx.en.snap, &fx.en.desired, &retry.plan, 1000, &res),
	    DUN_OK);
	CHECK_INT(res.n_failed, 0);
	CHECK(res.n_skipped >= 1);
	CHECK_INT(sim_int(&fx, fx.invoice, "$.attempt_count"), 2);
	CHECK_INT(testdb_int(fx.db,
			     "SELECT COUNT(*) FROM sim_objects WHERE type = 'charge'"
			     " AND json_extract(body, '$.invoice') = ?1",
			     fx.invoice),
		  2);
	/* And recomputing again at the same moment plans no second retry. */
	CHECK_INT(recompute(&fx, "recheck", &r), DUN_OK);
	CHECK_INT(count_in_plan(&fx.en.plan, DUN_C_RETRY_PAYMENT), 0);
	CHECK_INT(
	    testdb_int(fx.db, "SELECT COUNT(*) FROM applied WHERE type = 'retry_payment'", NULL),
	    1);
	teardown(&fx);
}

/* ---- the email log ------------------------------------------------------------ */

static void test_email_pending_then_sent(void)
{
	struct fixture fx;
	if (!setup(&fx, "insufficient_funds"))
		return;
	struct dun_recompute_result r;
	CHECK_INT(recompute(&fx, "payment_failed", &r), DUN_OK);
	/* Queued with its decision, not sent by it. */
	CHECK_INT(fx.mailer.calls, 0);
	char key[DUN_KEY_MAX];
	snprintf(key, sizeof key, "%s/email/payment_failed/%s", ACCT, fx.invoice);
	char buf[256];
	CHECK_STR(
	    testdb_text(fx.db, "SELECT state FROM emails WHERE key = ?1", key, buf, sizeof buf),
	    "pending");
	CHECK_STR(
	    testdb_text(fx.db, "SELECT outcome FROM applied WHERE key = ?1", key, buf, sizeof buf),
	    "applied");
	CHECK_INT(testdb_int(fx.db, "SELECT queued_at FROM emails WHERE key = ?1", key), T0);
	struct dun_email_stats st;
	deliver(&fx, T0 + 5, &st);
	CHECK_INT(st.sent, 1);
	CHECK_INT(st.pending, 0);
	CHECK_INT(fx.mailer.calls, 1);
	/* The row was claimed by the sender while the mailer had the message. */
	CHECK_STR(fx.mailer.state_during_send, "sending");
	CHECK_STR(fx.mailer.last_key, key);
	CHECK_STR(fx.mailer.last_to, "ada@example.com");
	CHECK(fx.mailer.last_subject[0] != '\0');
	CHECK_STR(
	    testdb_text(fx.db, "SELECT state FROM emails WHERE key = ?1", key, buf, sizeof buf),
	    "sent");
	CHECK_INT(testdb_int(fx.db, "SELECT attempts FROM emails WHERE key = ?1", key), 1);
	CHECK_INT(testdb_int(fx.db, "SELECT sent_at FROM emails WHERE key = ?1", key), T0 + 5);
	char want[256];
	snprintf(want, sizeof want, "payment_failed|%s|ada@example.com", fx.invoice);
	CHECK_STR(testdb_text(fx.db,
			      "SELECT kind || '|' || invoice_id || '|' || to_addr FROM emails"
			      " WHERE key = ?1",
			      key, buf, sizeof buf),
		  want);
	testdb_text(fx.db, "SELECT message_id FROM emails WHERE key = ?1", key, buf, sizeof buf);
	CHECK(buf[0] == '<' && strchr(buf, '@') != NULL);
	testdb_text(fx.db, "SELECT body FROM emails WHERE key = ?1", key, buf, sizeof buf);
	CHECK(strstr(buf, "{{") == NULL);
	/* A second run sends nothing more. */
	deliver(&fx, T0 + 6, &st);
	CHECK_INT(st.attempted, 0);
	CHECK_INT(fx.mailer.calls, 1);
	teardown(&fx);
}

static void test_failing_mailer_does_not_block_the_plan(void)
{
	struct fixture fx;
	if (!setup(&fx, "insufficient_funds"))
		return;
	fx.mailer.fail_with = DUN_E_EMAIL;
	struct dun_inbox_config cfg;
	dun_inbox_config_defaults(&cfg);
	struct dun_drain_stats stats;
	/* The provider's events queued triggers; the worker takes them all. */
	CHECK_INT(dun_worker_drain(&fx.en, &cfg, "w1", T0, 0, &stats), DUN_OK);
	CHECK_INT(stats.accounts, 1);
	CHECK_INT(stats.failed, 0);
	CHECK_INT(testdb_int(fx.db, "SELECT COUNT(*) FROM dunning WHERE stage = 'notified'", NULL),
		  1);
	CHECK_INT(testdb_int(fx.db, "SELECT COUNT(*) FROM inbox WHERE state <> 'done'", NULL), 0);
	char key[DUN_KEY_MAX], buf[256];
	snprintf(key, sizeof key, "%s/email/payment_failed/%s", ACCT, fx.invoice);
	struct dun_email_stats st;
	deliver(&fx, T0, &st);
	CHECK_INT(st.retried, 1);
	CHECK_INT(st.pending, 1);
	CHECK_INT(fx.mailer.calls, 1);
	CHECK_STR(
	    testdb_text(fx.db, "SELECT state FROM emails WHERE key = ?1", key, buf, sizeof buf),
	    "pending");
	CHECK_INT(testdb_int(fx.db, "SELECT attempts FROM emails WHERE key = ?1", key), 1);
	int64_t not_before = testdb_int(fx.db, "SELECT not_before FROM emails WHERE key = ?1", key);
	CHECK(not_before >= T0 + DUN_EMAIL_BACKOFF_BASE_S / 2 &&
	      not_before <= T0 + DUN_EMAIL_BACKOFF_BASE_S);
	testdb_text(fx.db, "SELECT last_error FROM emails WHERE key = ?1", key, buf, sizeof buf);
	CHECK(strstr(buf, "relay refused") != NULL);

	/* A queued email is taken care of: the next evaluation plans nothing. */
	CHECK_INT(dun_engine_evaluate(&fx.en, ACCT, T0 + 60), DUN_OK);
	CHECK_INT(fx.en.plan.n, 0);

	/* Not before its backoff; then the relay works again and the retry sends it. */
	deliver(&fx, T0 + 10, &st);
	CHECK_INT(st.attempted, 0);
	CHECK_INT(fx.mailer.calls, 1);
	fx.mailer.fail_with = DUN_OK;
	deliver(&fx, T0 + 3600, &st);
	CHECK_INT(st.sent, 1);
	CHECK_INT(fx.mailer.calls, 2);
	CHECK_STR(
	    testdb_text(fx.db, "SELECT state FROM emails WHERE key = ?1", key, buf, sizeof buf),
	    "sent");
	CHECK_INT(testdb_int(fx.db, "SELECT attempts FROM emails WHERE key = ?1", key), 2);
	CHECK_INT(testdb_int(fx.db, "SELECT COUNT(*) FROM emails", NULL), 1);
	teardown(&fx);
}

static void test_email_order_and_age_limit(void)
{
	struct fixture fx;
	if (!setup(&fx, "insufficient_funds"))
		return;
	fx.mailer.fail_with = DUN_E_EMAIL;
	struct dun_inbox_config cfg;
	dun_inbox_config_defaults(&cfg);
	struct dun_drain_stats stats;
	CHECK_INT(dun_worker_drain(&fx.en, &cfg, "w1", T0, 0, &stats), DUN_OK);
	/* A week later the account is restricted on schedule: a second email
	 * queues behind the first, which the relay still refuses. */
	for (int day = 1; day <= 8; day++) {
		dun_clock_set(T0 + day * DAY);
		CHECK_INT(dun_worker_drain(&fx.en, &cfg, "w1", T0 + day * DAY, 0, &stats), DUN_OK);
		CHECK_INT(stats.failed, 0);
		struct dun_email_stats st;
		deliver(&fx, T0 + day * DAY, &st);
	}
	CHECK_INT(
	    testdb_int(fx.db, "SELECT COUNT(*) FROM dunning WHERE stage = 'restricted'", NULL), 1);
	CHECK_INT(testdb_int(fx.db, "SELECT COUNT(*) FROM emails WHERE state = 'pending'", NULL),
		  2);
	/* Only the head of the account's queue was ever tried. */
	CHECK_INT(
	    testdb_int(fx.db,
		       "SELECT COUNT(*) FROM emails WHERE kind = 'restricted' AND attempts = 0",
		       NULL),
	    1);
	CHECK_INT(fx.mailer.calls, 8);
	CHECK(strstr(fx.mailer.last_key, "/email/payment_failed/") != NULL);

	/* Past the age limit the first one is given up: dead, never planned
	 * again; the second one goes out once the relay is back. */
	fx.mailer.fail_with = DUN_OK;
	int64_t late = T0 + 14 * DAY;
	struct dun_email_stats st;
	deliver(&fx, late, &st);
	CHECK_INT(st.dead, 1);
	CHECK_INT(st.sent, 1);
	CHECK_INT(st.dead_total, 1);
	CHECK_INT(testdb_int(fx.db,
			     "SELECT COUNT(*) FROM emails WHERE state = 'dead'"
			     " AND kind = 'payment_failed' AND last_error LIKE 'given up%'",
			     NULL),
		  1);
	CHECK_INT(testdb_int(fx.db,
			     "SELECT COUNT(*) FROM emails WHERE state = 'sent'"
			     " AND kind = 'restricted'",
			     NULL),
		  1);
	CHECK_INT(dun_engine_evaluate(&fx.en, ACCT, late), DUN_OK);
	for (int i = 0; i < fx.en.plan.n; i++) {
		char line[DUN_KEY_MAX + 64];
		dun_conseq_format(&fx.en.plan.items[i], line, sizeof line);
		if (fx.en.plan.items[i].type == DUN_C_SEND_EMAIL &&
		    strstr(fx.en.plan.items[i].key, "/payment_failed/"))
			CHECK_FAIL_AT("planned again: %s (%s)", line, fx.en.plan.items[i].key);
	}
	/* A requeue by hand sends it, once. */
	int n = 0;
	CHECK_INT(dun_email_requeue_dead(fx.db, NULL, late, &n), DUN_OK);
	CHECK_INT(n, 1);
	deliver(&fx, late + 1, &st);
	CHECK_INT(st.sent, 1);
	deliver(&fx, late + 2, &st);
	CHECK_INT(st.attempted, 0);
	CHECK_INT(testdb_int(fx.db, "SELECT COUNT(*) FROM emails WHERE state = 'sent'", NULL), 2);
	teardown(&fx);
}

/* ---- the fresh re-read before destructive consequences ----------------------- */

static int first_destructive(const struct dun_plan *p)
{
	for (int i = 0; i < p->n; i++)
		if (dun_conseq_is_destructive(p->items[i].type))
			return i;
	return -1;
}

static void check_nothing_destroyed(struct fixture *fx)
{
	char buf[64];
	CHECK_INT(testdb_int(fx->db, "SELECT COUNT(*) FROM platform WHERE banned = 1", NULL), 0);
	CHECK_INT(testdb_int(fx->db, "SELECT bad_debt FROM accounts WHERE id = ?1", ACCT), 0);
	CHECK_INT(testdb_int(fx->db, "SELECT COUNT(*) FROM customers WHERE bad_debt = 1", NULL), 0);
	CHECK_INT(testdb_int(fx->db, "SELECT COUNT(*) FROM bad_debt_episodes", NULL), 0);
	CHECK_INT(testdb_int(fx->db, "SELECT COUNT(*) FROM emails WHERE kind = 'bad_debt'", NULL),
		  0);
	CHECK_STR(sim_text(fx, fx->invoice, "$.status", buf, sizeof buf), "paid");
	CHECK_STR(sim_text(fx, fx->subscription, "$.status", buf, sizeof buf), "active");
}

static void test_paid_meanwhile_aborts_destructive_plan(void)
{
	struct fixture fx;
	if (!setup(&fx, "insufficient_funds"))
		return;
	struct dun_recompute_result r;
	CHECK_INT(recompute(&fx, "payment_failed", &r), DUN_OK);
	/* Thirty-one days on, with no retries recorded in between: bad debt is planned. */
	int64_t now = T0 + 31 * DAY;
	dun_clock_set(now);
	CHECK_INT(dun_engine_evaluate(&fx.en, ACCT, now), DUN_OK);
	CHECK_INT(fx.en.desired.stage, DUN_STAGE_BAD_DEBT);
	int fd = first_destructive(&fx.en.plan);
	CHECK(fd >= 0);
	CHECK(count_in_plan(&fx.en.plan, DUN_C_BAN) == 1);
	/* Between EVALUATE and EXECUTE the customer pays on the hosted page. */
	CHECK_INT(dun_sim_pay_out_of_band(fx.sim, fx.invoice), DUN_OK);
	struct dun_apply_result res;
	CHECK_INT(
	    dun_apply_plan(&fx.en.applier, &fx.en.snap, &fx.en.desired, &fx.en.plan, 4242, &res),
	    DUN_E_CONFLICT);
	CHECK_INT(res.error, DUN_E_CONFLICT);
	CHECK_INT(res.failed_index, fd);
	CHECK_INT(res.n_applied, fd);
	CHECK_INT(res.n_failed, 1);
	CHECK(strstr(res.error_text, fx.invoice) != NULL);
	CHECK(strstr(res.error_text, "paid") != NULL);
	CHECK(dun_err_is_retryable(DUN_E_CONFLICT));
	check_nothing_destroyed(&fx);
	/* The fresh read was folded into the mirror: GATHER now sees the payment. */
	char buf[64];
	CHECK_STR(testdb_text(fx.db, "SELECT status FROM p_invoices WHERE id = ?1", fx.invoice, buf,
			      sizeof buf),
		  "paid");

	/* The retry recomputes from that fresh state and lifts instead of banning. */
	CHECK_INT(recompute(&fx, "recheck", &r), DUN_OK);
	CHECK_INT(r.to, DUN_STAGE_NONE);
	CHECK_INT(count_in_plan(&fx.en.plan, DUN_C_BAN), 0);
	CHECK_INT(count_in_plan(&fx.en.plan, DUN_C_MARK_UNCOLLECTIBLE), 0);
	check_nothing_destroyed(&fx);
	CHECK_STR(testdb_text(fx.db, "SELECT stage FROM dunning WHERE account_id = ?1", ACCT, buf,
			      sizeof buf),
		  "none");
	teardown(&fx);
}

static void test_paid_before_webhook_fails_trigger_retryably(void)
{
	struct fixture fx;
	if (!setup(&fx, "insufficient_funds"))
		return;
	struct dun_inbox_config cfg;
	dun_inbox_config_defaults(&cfg);
	struct dun_drain_stats stats;
	CHECK_INT(dun_worker_drain(&fx.en, &cfg, "w", T0, 0, &stats), DUN_OK);
	CHECK_INT(stats.failed, 0);
	/* Paid at the provider, but its webhook has not arrived when the day-31 recheck runs. */
	int64_t now = T0 + 31 * DAY;
	dun_clock_set(now);
	CHECK_INT(dun_sim_pay_out_of_band(fx.sim, fx.invoice), DUN_OK);
	CHECK_INT(dun_worker_drain(&fx.en, &cfg, "w", now, 0, &stats), DUN_OK);
	CHECK_INT(stats.accounts, 1);
	CHECK_INT(stats.failed, 1);
	check_nothing_destroyed(&fx);
	char buf[512];
	CHECK_STR(testdb_text(fx.db, "SELECT state FROM inbox ORDER BY id DESC LIMIT 1", NULL, buf,
			      sizeof buf),
		  "retrying");
	testdb_text(fx.db, "SELECT error FROM decisions ORDER BY id DESC LIMIT 1", NULL, buf,
		    sizeof buf);
	CHECK(strstr(buf, "paid since the state was read") != NULL);
	/* After the backoff the retry lifts. */
	dun_clock_set(now + 3600);
	CHECK_INT(dun_worker_drain(&fx.en, &cfg, "w", now + 3600, 0, &stats), DUN_OK);
	CHECK_INT(stats.failed, 0);
	CHECK_INT(testdb_int(fx.db, "SELECT COUNT(*) FROM inbox WHERE state <> 'done'", NULL), 0);
	CHECK_STR(testdb_text(fx.db, "SELECT stage FROM dunning WHERE account_id = ?1", ACCT, buf,
			      sizeof buf),
		  "none");
	check_nothing_destroyed(&fx);
	teardown(&fx);
}

/* ---- observe mode -------------------------------------------------------------- */

/*
 * FNV-1a over every value of every row of table, in storage order (rowid,
 * or the primary key of a WITHOUT ROWID table).
 */
static uint64_t table_hash(struct dun_db *db, const char *table)
{
	char sql[128];
	snprintf(sql, sizeof sql, "SELECT * FROM %s", table);
	struct dun_stmt *st = NULL;
	uint64_t h = 14695981039346656037ULL;
	if (dun_db_prepare(db, sql, &st) != DUN_OK) {
		CHECK_FAIL_AT("%s: %s", sql, dun_db_errmsg(db));
		return 0;
	}
	while (dun_stmt_row(st)) {
		for (int c = 0; c < dun_stmt_col_count(st); c++) {
			const char *t = dun_stmt_col_text(st, c);
			for (const unsigned char *p = (const unsigned char *)(t ? t : "\x01"); *p;
			     p++) {
				h ^= *p;
				h *= 1099511628211ULL;
			}
			h ^= 0xff;
			h *= 1099511628211ULL;
		}
	}
	dun_stmt_finalize(st);
	return h;
}

static const char *const written_tables[] = {
    "accounts",	       "customers",  "dunning",		  "platform",	    "invoice_docs",
    "applied",	       "emails",     "bad_debt_episodes", "outcome_events", "p_customers",
    "p_subscriptions", "p_invoices", "p_attempts",	  "sim_objects",    "sim_events",
};
#define N_WRITTEN (sizeof written_tables / sizeof written_tables[0])

static void test_observe_writes_only_the_decision(void)
{
	struct fixture fx;
	if (!setup(&fx, "insufficient_funds"))
		return;
	CHECK_INT(dun_db_setting_set(fx.db, "mode", "observe"), DUN_OK);
	CHECK_INT(dun_rollout_load(fx.db, &fx.en.rollout), DUN_OK);
	CHECK(fx.en.rollout.global_observe);
	uint64_t before[N_WRITTEN];
	for (size_t i = 0; i < N_WRITTEN; i++)
		before[i] = table_hash(fx.db, written_tables[i]);
	int64_t decisions = testdb_int(fx.db, "SELECT COUNT(*) FROM decisions", NULL);

	struct dun_recompute_result r;
	CHECK_INT(recompute(&fx, "payment_failed", &r), DUN_OK);
	CHECK_INT(r.mode, DUN_MODE_OBSERVE);
	CHECK(r.decision_id > 0);
	CHECK(r.n_planned > 0);
	CHECK_INT(r.apply.n_applied, 0);
	CHECK_INT(fx.mailer.calls, 0);
	for (size_t i = 0; i < N_WRITTEN; i++)
		if (table_hash(fx.db, written_tables[i]) != before[i])
			CHECK_FAIL_AT("observe mode wrote to %s", written_tables[i]);
		else
			check_passed++;
	CHECK_INT(testdb_int(fx.db, "SELECT COUNT(*) FROM decisions", NULL), decisions + 1);
	char sid[32], buf[64];
	snprintf(sid, sizeof sid, "%lld", (long long)r.decision_id);
	CHECK_STR(testdb_text(fx.db,
			      "SELECT mode || '|' || outcome || '|' || stage_to || '|' || n_applied"
			      " FROM decisions WHERE id = CAST(?1 AS INTEGER)",
			      sid, buf, sizeof buf),
		  "observe|observed|notified|0");
	/* The plan it would have applied is in the decision, for parity checks. */
	CHECK_INT(testdb_int(fx.db,
			     "SELECT json_array_length(plan) FROM decisions"
			     " WHERE id = CAST(?1 AS INTEGER)",
			     sid),
		  r.n_planned);

	/* An explicit request (pay-bad-debt's path) is refused outright. */
	struct dun_consequence c;
	memset(&c, 0, sizeof c);
	c.type = DUN_C_SET_ACCOUNT_BAD_DEBT;
	snprintf(c.target, sizeof c.target, "%s", ACCT);
	c.value = 1;
	snprintf(c.key, sizeof c.key, "%s/test/request", ACCT);
	CHECK_INT(dun_engine_evaluate(&fx.en, ACCT, T0), DUN_OK);
	CHECK_INT(dun_engine_apply_request(&fx.en, &c, 1, "test", &r), DUN_E_GUARD);
	CHECK(strstr(r.apply.error_text, "observe") != NULL);
	CHECK_INT(testdb_int(fx.db, "SELECT bad_debt FROM accounts WHERE id = ?1", ACCT), 0);
	CHECK_INT(testdb_int(fx.db, "SELECT COUNT(*) FROM decisions", NULL), decisions + 1);

	/* Back to active: the same trigger now applies the plan. */
	CHECK_INT(dun_db_setting_set(fx.db, "mode", "active"), DUN_OK);
	CHECK_INT(dun_rollout_load(fx.db, &fx.en.rollout), DUN_OK);
	CHECK_INT(recompute(&fx, "payment_failed", &r), DUN_OK);
	CHECK_INT(r.mode, DUN_MODE_ACTIVE);
	CHECK_INT(testdb_int(fx.db, "SELECT COUNT(*) FROM emails WHERE state = 'pending'", NULL),
		  1);
	CHECK_INT(testdb_int(fx.db, "SELECT COUNT(*) FROM dunning WHERE stage = 'notified'", NULL),
		  1);
	teardown(&fx);
}

/* ---- an account with nothing yet ---------------------------------------------- */

/*
 * A fresh engine evaluating an account without a customer or invoices: the
 * per-invoice array has never been allocated. This once passed NULL to
 * memset in EVALUATE (undefined behaviour, caught by UBSan in `dunning
 * explain` of a new account).
 */
static void test_account_without_invoices(void)
{
	dun_clock_set(T0);
	struct dun_db *db = testdb_open(":memory:");
	testdb_writes_on(db);
	struct dun_sim *sim = dun_sim_new(db, 1);
	struct dun_policy policy;
	dun_policy_defaults(&policy);
	struct test_mailer tm = {.db = db};
	struct dun_mailer mailer = {.ops = &test_mailer_ops, .self = &tm};
	struct dun_template_renderer tr = {.templates = NULL, .support_email = ""};
	struct dun_engine en;
	dun_engine_init(&en, db, &policy, dun_sim_provider(sim), dun_local_platform(db), mailer,
			dun_template_renderer(&tr));
	testdb_exec(db, "INSERT INTO accounts(id) VALUES ('acct_new')");
	CHECK_INT(dun_engine_evaluate(&en, "acct_new", T0), DUN_OK);
	CHECK_INT(en.snap.state.n_invoices, 0);
	CHECK_INT(en.desired.stage, DUN_STAGE_NONE);
	CHECK(!en.desired.skipped);
	CHECK_INT(en.plan.n, 0);
	struct dun_recompute_result r;
	struct dun_trigger_ref t = {.id = 0, .kind = "support_recompute"};
	CHECK_INT(dun_engine_recompute(&en, "acct_new", &t, false, &r), DUN_OK);
	CHECK_INT(r.n_planned, 0);
	CHECK_INT(tm.calls, 0);
	CHECK_INT(dun_engine_evaluate(&en, "acct_nobody", T0), DUN_E_NOT_FOUND);
	dun_engine_free(&en);
	dun_sim_destroy(sim);
	dun_db_close(db);
	dun_clock_reset();
}

/* ---- the simulated provider learns stored webhooks ------------------------------ */

static void ingest_text(struct dun_db *db, const char *body)
{
	struct dun_ingest_result r;
	char err[256] = "";
	if (dun_ingest_event(db, body, strlen(body), &r, err, sizeof err) != DUN_OK)
		CHECK_FAIL_AT("ingest: %s", err);
}

/*
 * On SQLite the simulator learns what webhooks showed after they are
 * stored, in their order, before any operation that reads its objects; a
 * store that refuses the learning fails the operation and moves nothing.
 */
static void test_sim_learns_stored_webhooks_in_order(void)
{
	dun_clock_set(T0);
	struct dun_db *db = testdb_open(":memory:");
	struct dun_sim *sim = dun_sim_new(db, 1);
	CHECK(dun_sim_learns_lazily(db));
	ingest_text(db, "{\"id\":\"evt_l1\",\"type\":\"customer.created\",\"created\":1,"
			"\"data\":{\"object\":{\"id\":\"cus_l\",\"object\":\"customer\","
			"\"metadata\":{\"account_id\":\"acct_l\"},"
			"\"invoice_settings\":{\"default_payment_method\":\"pm_1\"}}}}");
	ingest_text(db, "{\"id\":\"evt_l2\",\"type\":\"charge.failed\",\"created\":2,"
			"\"data\":{\"object\":{\"id\":\"ch_l\",\"object\":\"charge\","
			"\"customer\":\"cus_l\",\"status\":\"failed\","
			"\"outcome\":{\"reason\":\"lost_card\"}}}}");
	/* Stored, not learnt yet: nothing on the committer's path. */
	CHECK_INT(testdb_int(db, "SELECT COUNT(*) FROM sim_objects", NULL), 0);
	/* A store that refuses: the operation fails as the store's error, nothing moves. */
	testdb_exec(db, "CREATE TEMP TRIGGER refuse BEFORE INSERT ON sim_objects"
			" WHEN NEW.id = 'ch_l' BEGIN SELECT RAISE(ABORT, 'refused'); END");
	CHECK(dun_sim_update_card(sim, "cus_l", "ok") != DUN_OK);
	CHECK_INT(testdb_int(db, "SELECT seq FROM sim_learnt", NULL), 0);
	CHECK_INT(testdb_int(db, "SELECT COUNT(*) FROM sim_objects", NULL), 0);
	CHECK(!dun_db_in_transaction(db));
	testdb_exec(db, "DROP TRIGGER refuse");
	/* Learnt in order: the card fails as the last charge did. */
	int64_t n = 0;
	CHECK_INT(dun_sim_learn_pending(db, NULL, NULL, &n), DUN_OK);
	CHECK_INT(n, 2);
	CHECK_STR(testdb_text(db, "SELECT behavior FROM sim_objects WHERE id = ?1", "cus_l",
			      (char[64]){0}, 64),
		  "=lost_card");
	CHECK_INT(dun_sim_learn_pending(db, NULL, NULL, &n), DUN_OK);
	CHECK_INT(n, 0);
	/* An operation learns first: the update below acts on a learnt customer. */
	ingest_text(db, "{\"id\":\"evt_l3\",\"type\":\"customer.updated\",\"created\":3,"
			"\"data\":{\"object\":{\"id\":\"cus_l\",\"object\":\"customer\","
			"\"name\":\"renamed\",\"metadata\":{\"account_id\":\"acct_l\"},"
			"\"invoice_settings\":{\"default_payment_method\":\"pm_1\"}}}}");
	CHECK_INT(dun_sim_update_card(sim, "cus_l", "expired_card"), DUN_OK);
	CHECK_INT(testdb_int(db, "SELECT seq FROM sim_learnt", NULL),
		  testdb_int(db, "SELECT MAX(rowid) FROM events_raw", NULL));
	CHECK_STR(testdb_text(db, "SELECT behavior FROM sim_objects WHERE id = ?1", "cus_l",
			      (char[64]){0}, 64),
		  "expired_card");
	/* Inside a caller's transaction it learns in that transaction. */
	ingest_text(db, "{\"id\":\"evt_l4\",\"type\":\"invoice.created\",\"created\":4,"
			"\"data\":{\"object\":{\"id\":\"in_l\",\"object\":\"invoice\","
			"\"customer\":\"cus_l\",\"status\":\"open\"}}}");
	CHECK_INT(dun_db_begin(db), DUN_OK);
	CHECK_INT(dun_sim_learn_pending(db, NULL, NULL, &n), DUN_OK);
	CHECK_INT(n, 1);
	CHECK(dun_db_in_transaction(db));
	dun_db_rollback(db);
	CHECK_INT(testdb_int(db, "SELECT COUNT(*) FROM sim_objects WHERE id = ?1", "in_l"), 0);
	CHECK_INT(dun_sim_learn_pending(db, NULL, NULL, &n), DUN_OK);
	CHECK_INT(n, 1);
	CHECK_INT(testdb_int(db, "SELECT COUNT(*) FROM sim_objects WHERE id = ?1", "in_l"), 1);
	dun_sim_destroy(sim);
	dun_db_close(db);
	dun_clock_reset();
}

/*
 * The simulator's queued events are marked delivered in the transaction
 * that stores them: a store that refuses them leaves them queued.
 */
static void test_sim_events_stay_queued_until_stored(void)
{
	dun_clock_set(T0);
	struct dun_db *db = testdb_open(":memory:");
	struct dun_sim *sim = dun_sim_new(db, 1);
	bool queued = true;
	CHECK_INT(dun_sim_has_events(sim, &queued), DUN_OK);
	CHECK(!queued);
	char cus[DUN_ID_MAX];
	CHECK_INT(dun_sim_create_customer(sim, "acct_q", "q@example.com", "Q", "", cus), DUN_OK);
	CHECK_INT(dun_sim_has_events(sim, &queued), DUN_OK);
	CHECK(queued);
	testdb_exec(db, "CREATE TEMP TRIGGER refuse BEFORE INSERT ON events_raw"
			" BEGIN SELECT RAISE(ABORT, 'refused'); END");
	int64_t n = -1;
	char err[256] = "";
	CHECK(dun_ingest_sim_events(db, sim, &n, err, sizeof err) != DUN_OK);
	CHECK(!dun_db_in_transaction(db));
	CHECK_INT(testdb_int(db, "SELECT COUNT(*) FROM sim_events WHERE delivered = 0", NULL), 1);
	testdb_exec(db, "DROP TRIGGER refuse");
	CHECK_INT(dun_ingest_sim_events(db, sim, &n, err, sizeof err), DUN_OK);
	CHECK_INT(n, 1);
	CHECK_INT(testdb_int(db, "SELECT COUNT(*) FROM sim_events WHERE delivered = 0", NULL), 0);
	CHECK_INT(testdb_int(db, "SELECT COUNT(*) FROM events_raw", NULL), 1);
	CHECK_INT(dun_ingest_sim_events(db, sim, &n, err, sizeof err), DUN_OK);
	CHECK_INT(n, 0);
	dun_sim_destroy(sim);
	dun_db_close(db);
	dun_clock_reset();
}

/* ---- the rollout gate ---------------------------------------------------------- */

static void test_rollout_buckets(void)
{
	struct dun_db *db = testdb_open(":memory:");
	struct dun_rollout r;
	CHECK_INT(dun_rollout_load(db, &r), DUN_OK);
	CHECK(r.global_observe); /* nothing set: observe everywhere, at 0% */
	CHECK(r.percent == 0.0);
	r.global_observe = false;
	CHECK_STR(dun_mode_name(DUN_MODE_OBSERVE), "observe");
	CHECK_STR(dun_mode_name(DUN_MODE_ACTIVE), "active");

	enum { N = 2000 };
	static char ids[N][24];
	int spread[10] = {0};
	for (int i = 0; i < N; i++) {
		snprintf(ids[i], sizeof ids[i], "acct_%d", i);
		uint32_t b = dun_rollout_bucket(ids[i]);
		CHECK(b < 10000);
		CHECK_INT(dun_rollout_bucket(ids[i]), b); /* deterministic */
		spread[b / 1000]++;
	}
	for (int k = 0; k < 10; k++)
		CHECK(spread[k] > N / 10 / 2 && spread[k] < N / 10 * 2);
	CHECK(dun_rollout_bucket("acct_1") != dun_rollout_bucket("acct_2"));

	static const double steps[] = {0, 5, 10, 25, 50, 100};
	static bool was_active[N];
	memset(was_active, 0, sizeof was_active);
	int active_at[6] = {0};
	for (size_t s = 0; s < 6; s++) {
		r.global_observe = false;
		r.percent = steps[s];
		for (int i = 0; i < N; i++) {
			const char *why = NULL;
			enum dun_mode m = dun_rollout_mode(db, &r, ids[i], &why);
			CHECK(why != NULL);
			if (m == DUN_MODE_ACTIVE) {
				active_at[s]++;
				CHECK(strstr(why, "inside") != NULL);
			} else {
				CHECK(strstr(why, "outside") != NULL);
				/* Raising the percentage never drops an account. */
				if (was_active[i])
					CHECK_FAIL_AT("%s left the rollout at %g%%", ids[i],
						      steps[s]);
			}
			was_active[i] = m == DUN_MODE_ACTIVE;
			/* The same answer every time for the same percentage. */
			CHECK_INT(dun_rollout_mode(db, &r, ids[i], NULL), m);
		}
	}
	CHECK_INT(active_at[0], 0);
	CHECK_INT(active_at[5], N);
	for (size_t s = 1; s < 5; s++) {
		double share = (double)active_at[s] / N * 100.0;
		CHECK(share > steps[s] * 0.6 && share < steps[s] * 1.4 + 1.0);
		CHECK(active_at[s] >= active_at[s - 1]);
	}

	/* Allow beats the percentage; deny beats it the other way; global observe beats all. */
	testdb_exec(db, "INSERT INTO rollout_list(account_id, list) VALUES"
			" ('acct_allowed', 'allow'), ('acct_denied', 'deny')");
	const char *why = NULL;
	r.percent = 0;
	CHECK_INT(dun_rollout_mode(db, &r, "acct_allowed", &why), DUN_MODE_ACTIVE);
	CHECK(strstr(why, "allow") != NULL);
	r.percent = 100;
	CHECK_INT(dun_rollout_mode(db, &r, "acct_denied", &why), DUN_MODE_OBSERVE);
	CHECK(strstr(why, "deny") != NULL);
	r.global_observe = true;
	CHECK_INT(dun_rollout_mode(db, &r, "acct_allowed", &why), DUN_MODE_OBSERVE);
	CHECK(strstr(why, "global") != NULL);

	/* A database without a rollout row is observe at 0%, and says so. */
	CHECK_INT(dun_rollout_load(db, &r), DUN_OK);
	CHECK(r.global_observe && r.percent == 0 && !r.mode_stored);
	CHECK_INT(dun_rollout_mode(db, &r, "acct_plain", &why), DUN_MODE_OBSERVE);
	/* The settings the CLI writes are what the gate reads. */
	CHECK_INT(dun_db_setting_set(db, "rollout.percent", "12.5"), DUN_OK);
	CHECK_INT(dun_db_setting_set(db, "mode", "active"), DUN_OK);
	CHECK_INT(dun_rollout_load(db, &r), DUN_OK);
	CHECK(!r.global_observe);
	CHECK(r.percent == 12.5);
	CHECK_INT(dun_db_setting_set(db, "mode", "observe"), DUN_OK);
	CHECK_INT(dun_rollout_load(db, &r), DUN_OK);
	CHECK(r.global_observe);
	dun_db_close(db);
}

/* What another connection sees committed while a batch runs. */
struct peek {
	const char *path;
	int calls;
	long long processing, live_claims, done;
};

/* Called by the batch between two accounts (cfg->contended): look, don't stop. */
static bool peek_committed(void *arg)
{
	struct peek *p = arg;
	struct dun_db *db = NULL;
	char err[256] = "";
	if (dun_db_open_as(p->path, DUN_DB_READONLY, &db, err, sizeof err) != DUN_OK) {
		CHECK_FAIL_AT("second connection: %s", err);
		return false;
	}
	p->calls++;
	p->processing =
	    testdb_int(db, "SELECT COUNT(*) FROM inbox WHERE state = 'processing'", NULL);
	p->live_claims = testdb_int(db, "SELECT COUNT(*) FROM claims WHERE expires_ms > 0", NULL);
	p->done = testdb_int(db, "SELECT COUNT(*) FROM inbox WHERE state = 'done'", NULL);
	dun_db_close(db);
	return false;
}

/*
 * On SQLite the drain claims its accounts inside its first batch's
 * transaction: while the batch runs, another connection sees no trigger in
 * processing and no live claim (nothing of the claim is committed before
 * the work it authorises), and afterwards every trigger is done and every
 * claim released.
 */
static void test_claims_commit_with_the_batch(void)
{
	char dir[256], path[320];
	testdb_mkdir(dir, sizeof dir);
	snprintf(path, sizeof path, "%s/batch.db", dir);
	struct fixture fx;
	if (!setup_at(&fx, "insufficient_funds", path))
		return;
	char cus[DUN_ID_MAX], sub[DUN_ID_MAX], inv[DUN_ID_MAX];
	CHECK_INT(dun_sim_create_customer(fx.sim, "acct_2", "bo@example.com", "Bo",
					  "insufficient_funds", cus),
		  DUN_OK);
	CHECK_INT(dun_sim_create_subscription(fx.sim, cus, sub), DUN_OK);
	CHECK_INT(dun_sim_bill(fx.sim, cus, sub, 3000, "subscription_cycle", inv), DUN_OK);
	pump(&fx);
	long long open =
	    testdb_int(fx.db, "SELECT COUNT(*) FROM inbox WHERE state <> 'done'", NULL);
	CHECK(open >= 2);
	struct peek pk = {.path = path};
	struct dun_inbox_config cfg;
	dun_inbox_config_defaults(&cfg);
	cfg.contended = peek_committed;
	cfg.yield_arg = &pk;
	struct dun_drain_stats stats;
	CHECK_INT(dun_worker_drain(&fx.en, &cfg, "w1", T0, 0, &stats), DUN_OK);
	CHECK_INT(stats.accounts, 2);
	CHECK_INT(stats.failed, 0);
	CHECK(pk.calls >= 1);
	CHECK_INT(pk.processing, 0);
	CHECK_INT(pk.live_claims, 0);
	CHECK_INT(pk.done, 0);
	CHECK_INT(testdb_int(fx.db, "SELECT COUNT(*) FROM inbox WHERE state <> 'done'", NULL), 0);
	CHECK_INT(testdb_int(fx.db, "SELECT COUNT(*) FROM claims WHERE expires_ms > 0", NULL), 0);
	CHECK_INT(testdb_int(fx.db, "SELECT COUNT(*) FROM dunning WHERE stage = 'notified'", NULL),
		  2);
	teardown(&fx);
	testdb_unlink(path);
	rmdir(dir);
}

int main(void)
{
	/* The applier logs failures as warnings; they are expected here. */
	dun_log_set_level(DUN_LOG_ERROR);
	test_once_consequences_at_most_once();
	test_email_pending_then_sent();
	test_failing_mailer_does_not_block_the_plan();
	test_email_order_and_age_limit();
	test_paid_meanwhile_aborts_destructive_plan();
	test_paid_before_webhook_fails_trigger_retryably();
	test_observe_writes_only_the_decision();
	test_account_without_invoices();
	test_sim_learns_stored_webhooks_in_order();
	test_sim_events_stay_queued_until_stored();
	test_rollout_buckets();
	test_claims_commit_with_the_batch();
	return CHECK_DONE();
}
