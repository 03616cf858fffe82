/*
 * test_refresh.c — GATHER's targeted refresh (src/gather/refresh.c) as
 * dun_engine_evaluate() runs it, with a scripted provider that answers
 * refresh_invoices the way Stripe's 2025-03-31.basil API does and counts
 * its calls.
 *
 * The starting point is what basil webhooks leave in the mirror: an open
 * invoice with attempt_count 1 and no payment intent, and its failed
 * charge, which names a payment intent but no invoice. What is checked:
 * the short invoice is refreshed with one call, the answer folded, and the
 * account gathered again, so EVALUATE sees the hard decline; an account
 * whose attempts are known, and invoices that cannot be short (paid,
 * consolidated, never attempted), cost no call; a provider failure, or an
 * answer the mirror cannot fold, leaves the snapshot and the mirror as
 * they were and does not fail the pass; a provider without the op is
 * never asked; when Stripe owns the retries, an invoice whose next
 * automatic attempt was due over an hour ago is read again.
 */
#include "check.h"
#include "testdb.h"

#include "apply/local.h"
#include "apply/recompute.h"
#include "apply/render.h"
#include "gather/refresh.h"
#include "store/mirror.h"
#include "util/clock.h"
#include "util/log.h"

#include <jansson.h>
#include <stdlib.h>
#include <string.h>

#define T0   1767603600 /* 2026-01-05T09:00:00Z */
#define ACCT "acct_r"

/* ---- the scripted provider -------------------------------------------------- */

enum answer { ANSWER_BASIL, ANSWER_FAIL, ANSWER_UNFOLDABLE };

struct script {
	enum answer answer;
	int calls;
	int last_n;
	char last_ids[4][DUN_ID_MAX];
};

static json_t *basil_answer(void)
{
	/* The invoice, its invoice_payment, the payment intent, the charge: no "invoice" on the last two. */
	return json_pack(
	    "[{s:s, s:s, s:s, s:s, s:i, s:i, s:i, s:i, s:I},"
	    " {s:s, s:s, s:s, s:s, s:{s:s, s:s}},"
	    " {s:s, s:s, s:s, s:s, s:s, s:{s:s, s:s, s:s, s:s}},"
	    " {s:s, s:s, s:s, s:s, s:s, s:I, s:s, s:{s:s, s:s}}]",
	    "id", "in_r1", "object", "invoice", "customer", "cus_r", "status", "open", "amount_due",
	    2000, "amount_remaining", 2000, "attempt_count", 1, "amount_paid", 0, "created",
	    (json_int_t)(T0 - 7200),
	    /* invoice_payment */
	    "id", "inpay_r1", "object", "invoice_payment", "invoice", "in_r1", "status", "open",
	    "payment", "type", "payment_intent", "payment_intent", "pi_r1",
	    /* payment_intent */
	    "id", "pi_r1", "object", "payment_intent", "customer", "cus_r", "status",
	    "requires_payment_method", "latest_charge", "ch_r1", "last_payment_error", "code",
	    "expired_card", "decline_code", "expired_card", "charge", "ch_r1", "type", "card_error",
	    /* charge */
	    "id", "ch_r1", "object", "charge", "customer", "cus_r", "payment_intent", "pi_r1",
	    "status", "failed", "created", (json_int_t)(T0 - 3600), "failure_code", "expired_card",
	    "outcome", "type", "issuer_declined", "reason", "expired_card");
}

static enum dun_err script_refresh(void *self, const char *const *ids, int n, json_t **out,
				   char *err, size_t err_size)
{
	struct script *sc = self;
	sc->calls++;
	sc->last_n = n;
	for (int i = 0; i < n && i < 4; i++)
		snprintf(sc->last_ids[i], sizeof sc->last_ids[i], "%s", ids[i]);
	*out = NULL;
	switch (sc->answer) {
	case ANSWER_BASIL:
		*out = basil_answer();
		return DUN_OK;
	case ANSWER_FAIL:
		snprintf(err, err_size, "GET /v1/invoice_payments: HTTP 500 api_error (test)");
		return DUN_E_PROVIDER;
	case ANSWER_UNFOLDABLE:
		/* A valid link first, then an invoice without customer or status. */
		*out = basil_answer();
		json_array_insert_new(
		    *out, 2, json_pack("{s:s, s:s}", "number", "in_bad", "object", "invoice"));
		return DUN_OK;
	}
	return DUN_E_INVALID;
}

static const struct dun_provider_ops script_ops = {.name = "script",
						   .refresh_invoices = script_refresh};
static const struct dun_provider_ops no_refresh_ops = {.name = "no-refresh"};

/* ---- the fixture ---------------------------------------------------------------- */

static enum dun_err no_send(void *self, const struct dun_email_msg *msg, char *err, size_t err_size)
{
	(void)self;
	(void)msg;
	snprintf(err, err_size, "this test sends nothing");
	return DUN_E_INVALID;
}

static const struct dun_mailer_ops no_mailer_ops = {.name = "none", .send = no_send};

struct fixture {
	struct dun_db *db;
	struct dun_policy policy;
	struct dun_template_renderer tr;
	struct script script;
	struct dun_engine en;
};

static void fold(struct dun_db *db, const char *json)
{
	json_error_t jerr;
	json_t *o = json_loads(json, 0, &jerr);
	if (!o) {
		CHECK_FAIL_AT("bad test JSON: %s", jerr.text);
		return;
	}
	char err[256] = "";
	enum dun_err e = dun_mirror_upsert(db, o, T0 - 3000, NULL, NULL, err, sizeof err);
	if (e != DUN_OK)
		CHECK_FAIL_AT("fold: %s", err);
	json_decref(o);
}

/* What basil webhooks leave: a short invoice and an orphan charge. */
static void setup(struct fixture *fx, const struct dun_provider_ops *ops, enum answer answer)
{
	memset(fx, 0, sizeof *fx);
	dun_clock_set(T0);
	fx->db = testdb_open(":memory:");
	testdb_writes_on(fx->db);
	dun_policy_defaults(&fx->policy);
	fx->script.answer = answer;
	struct dun_provider provider = {.ops = ops, .self = &fx->script};
	struct dun_mailer mailer = {.ops = &no_mailer_ops, .self = NULL};
	dun_engine_init(&fx->en, fx->db, &fx->policy, provider, dun_local_platform(fx->db), mailer,
			dun_template_renderer(&fx->tr));
	fold(fx->db, "{\"id\": \"cus_r\", \"object\": \"customer\", \"email\": \"r@example.com\","
		     " \"metadata\": {\"account_id\": \"" ACCT "\"}}");
	fold(fx->db, "{\"id\": \"in_r1\", \"object\": \"invoice\", \"customer\": \"cus_r\","
		     " \"status\": \"open\", \"amount_due\": 2000, \"amount_remaining\": 2000,"
		     " \"attempt_count\": 1, \"created\": 1767596400}");
	fold(fx->db, "{\"id\": \"ch_r1\", \"object\": \"charge\", \"customer\": \"cus_r\","
		     " \"payment_intent\": \"pi_r1\", \"status\": \"failed\","
		     " \"created\": 1767600000, \"outcome\": {\"reason\": \"expired_card\"}}");
}

static void teardown(struct fixture *fx)
{
	dun_engine_free(&fx->en);
	dun_db_close(fx->db);
	dun_clock_reset();
}

static int linked_attempts(struct fixture *fx)
{
	return (int)testdb_int(fx->db, "SELECT COUNT(*) FROM p_attempts WHERE invoice_id = ?1",
			       "in_r1");
}

/* ---- tests ------------------------------------------------------------------------ */

static void test_short_invoice_is_refreshed_once(void)
{
	struct fixture fx;
	setup(&fx, &script_ops, ANSWER_BASIL);
	CHECK_INT(linked_attempts(&fx), 0);
	CHECK_INT(dun_engine_evaluate(&fx.en, ACCT, T0), DUN_OK);
	CHECK_INT(fx.script.calls, 1);
	CHECK_INT(fx.script.last_n, 1);
	CHECK_STR(fx.script.last_ids[0], "in_r1");
	/* Gathered again: the attempt is in the snapshot, and the policy sees it. */
	const struct dun_state *s = &fx.en.snap.state;
	CHECK_INT(s->n_invoices, 1);
	CHECK_INT(s->invoices[0].n_attempts, 1);
	CHECK_STR(s->invoices[0].attempts[0].decline_code, "expired_card");
	CHECK_INT(s->invoices[0].attempts[0].created_at, T0 - 3600);
	CHECK(fx.en.desired.invoices[0].failing);
	CHECK(fx.en.desired.invoices[0].hard_decline);
	CHECK_INT(fx.en.desired.stage, DUN_STAGE_NOTIFIED);
	CHECK_INT(linked_attempts(&fx), 1);
	char pi[32];
	CHECK_STR(testdb_text(fx.db, "SELECT payment_intent FROM p_invoices WHERE id = ?1", "in_r1",
			      pi, sizeof pi),
		  "pi_r1");
	/* Known now: no more calls, however often the account is evaluated. */
	CHECK_INT(dun_engine_evaluate(&fx.en, ACCT, T0 + 60), DUN_OK);
	CHECK_INT(dun_engine_evaluate(&fx.en, ACCT, T0 + 120), DUN_OK);
	CHECK_INT(fx.script.calls, 1);
	teardown(&fx);
}

static void test_failed_refresh_keeps_the_mirror(void)
{
	struct fixture fx;
	setup(&fx, &script_ops, ANSWER_FAIL);
	/* The mirror is known to lag and could not be refreshed: the pass
	 * decides nothing and fails as retryable, saying why. */
	CHECK_INT(dun_engine_evaluate(&fx.en, ACCT, T0), DUN_E_INCOMPLETE);
	CHECK(dun_err_is_retryable(DUN_E_INCOMPLETE));
	CHECK_INT(fx.script.calls, 1);
	CHECK_INT(fx.en.snap.state.invoices[0].n_attempts, 0);
	CHECK_STR(fx.en.unread_store, "provider");
	CHECK(strstr(fx.en.unread, "refreshing") != NULL);
	CHECK(strstr(fx.en.unread, "HTTP 500") != NULL);
	CHECK_INT(linked_attempts(&fx), 0);

	/* The same through the gather function, which says why. */
	struct dun_refresh_result r;
	CHECK_INT(dun_gather_refresh(fx.db, fx.en.applier.provider, NULL, &fx.en.snap, &r), DUN_OK);
	CHECK_INT(r.n_invoices, 1);
	CHECK_INT(r.n_objects, 0);
	CHECK_INT(r.refresh_err, DUN_E_PROVIDER);
	CHECK(strstr(r.err_text, "HTTP 500") != NULL);
	teardown(&fx);
}

static void test_unfoldable_answer_is_rolled_back(void)
{
	struct fixture fx;
	setup(&fx, &script_ops, ANSWER_UNFOLDABLE);
	struct dun_refresh_result r;
	CHECK_INT(dun_gather(fx.db, ACCT, &fx.en.snap), DUN_OK);
	CHECK_INT(dun_gather_refresh(fx.db, fx.en.applier.provider, NULL, &fx.en.snap, &r), DUN_OK);
	CHECK_INT(r.refresh_err, DUN_E_PARSE);
	CHECK_INT(r.n_objects, 0);
	/* The invoice_payment before the bad object was folded, then rolled back. */
	char pi[32];
	CHECK_STR(testdb_text(fx.db, "SELECT payment_intent FROM p_invoices WHERE id = ?1", "in_r1",
			      pi, sizeof pi),
		  "");
	CHECK_INT(linked_attempts(&fx), 0);
	CHECK_INT(testdb_int(fx.db, "SELECT COUNT(*) FROM p_invoices WHERE id = ?1", "in_bad"), 0);
	/* Not inside a transaction afterwards. */
	CHECK(!dun_db_in_transaction(fx.db));
	teardown(&fx);
}

static void test_no_call_when_nothing_is_short(void)
{
	struct fixture fx;
	setup(&fx, &script_ops, ANSWER_BASIL);
	/* The webhooks' link arrives after all: the attempt is known. */
	fold(fx.db, "{\"object\": \"invoice_payment\", \"invoice\": \"in_r1\","
		    " \"payment\": {\"payment_intent\": \"pi_r1\"}}");
	CHECK_INT(dun_engine_evaluate(&fx.en, ACCT, T0), DUN_OK);
	CHECK_INT(fx.script.calls, 0);
	CHECK(fx.en.desired.invoices[0].failing);
	teardown(&fx);

	/* A provider without the op is never asked (the simulated one). */
	setup(&fx, &no_refresh_ops, ANSWER_BASIL);
	CHECK_INT(dun_engine_evaluate(&fx.en, ACCT, T0), DUN_OK);
	CHECK_INT(fx.script.calls, 0);
	CHECK_INT(fx.en.snap.state.invoices[0].n_attempts, 0);
	teardown(&fx);
}

/*
 * Stripe owns the retries and its next attempt was due: the mirror, whose
 * attempts are all known, has not heard of that attempt. Read it again,
 * but only past the grace hour, and only when Stripe is the owner.
 */
static void test_overdue_provider_attempt_is_refreshed(void)
{
	static const struct {
		enum dun_retry_owner owner;
		int64_t due_ago_s;
		int calls;
	} cases[] = {
	    {DUN_RETRY_OWNER_STRIPE, 2 * 3600, 1},
	    {DUN_RETRY_OWNER_STRIPE, 1800, 0},	   /* within the grace hour */
	    {DUN_RETRY_OWNER_ENGINE, 2 * 3600, 0}, /* Stripe should not be retrying at all */
	};
	for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
		struct fixture fx;
		setup(&fx, &script_ops, ANSWER_BASIL);
		fx.policy.retry_owner = cases[i].owner;
		fold(fx.db, "{\"object\": \"invoice_payment\", \"invoice\": \"in_r1\","
			    " \"payment\": {\"payment_intent\": \"pi_r1\"}}");
		char inv[512];
		snprintf(inv, sizeof inv,
			 "{\"id\": \"in_r1\", \"object\": \"invoice\", \"customer\": \"cus_r\","
			 " \"status\": \"open\", \"amount_due\": 2000, \"amount_remaining\": 2000,"
			 " \"attempt_count\": 1, \"created\": 1767596400,"
			 " \"next_payment_attempt\": %lld}",
			 (long long)(T0 - cases[i].due_ago_s));
		fold(fx.db, inv);
		CHECK_INT(dun_engine_evaluate(&fx.en, ACCT, T0), DUN_OK);
		CHECK_INT(fx.script.calls, cases[i].calls);
		/* After a refresh the invoice is Stripe's answer (no next attempt). */
		CHECK_INT(fx.en.snap.state.invoices[0].next_payment_attempt_at,
			  cases[i].calls ? 0 : T0 - cases[i].due_ago_s);
		teardown(&fx);
	}
}

static void test_which_invoices_are_short(void)
{
	struct dun_attempt a;
	memset(&a, 0, sizeof a);
	struct dun_invoice inv;
	memset(&inv, 0, sizeof inv);
	inv.status = DUN_INVOICE_OPEN;
	CHECK(!dun_refresh_is_short(&inv)); /* never attempted */
	inv.attempt_count = 2;
	CHECK(dun_refresh_is_short(&inv));
	inv.attempts = &a;
	inv.n_attempts = 1;
	CHECK(dun_refresh_is_short(&inv));
	inv.n_attempts = 2;
	CHECK(!dun_refresh_is_short(&inv));
	inv.n_attempts = 0;
	inv.status = DUN_INVOICE_UNCOLLECTIBLE;
	CHECK(dun_refresh_is_short(&inv));
	inv.status = DUN_INVOICE_PAID;
	CHECK(!dun_refresh_is_short(&inv));
	inv.status = DUN_INVOICE_VOID;
	CHECK(!dun_refresh_is_short(&inv));
	inv.status = DUN_INVOICE_DRAFT;
	CHECK(!dun_refresh_is_short(&inv));
	inv.status = DUN_INVOICE_OPEN;
	inv.is_consolidated = true; /* ours: its payments are not dunning attempts */
	CHECK(!dun_refresh_is_short(&inv));
}

int main(void)
{
	/* A failed refresh is logged as a warning; it is expected here. */
	dun_log_set_level(DUN_LOG_ERROR);
	test_short_invoice_is_refreshed_once();
	test_failed_refresh_keeps_the_mirror();
	test_unfoldable_answer_is_rolled_back();
	test_no_call_when_nothing_is_short();
	test_overdue_provider_attempt_is_refreshed();
	test_which_invoices_are_short();
	return CHECK_DONE();
}
