"""Who owns payment retries: the engine or Stripe, tested both ways.

The policy says it ([retries] owner, docs/policy.md). With owner = engine,
Stripe's own retries must be off for the accounts the engine writes to:
`dunning config check` reads a sample of their open invoices from Stripe
and fails, naming the Stripe setting, when Stripe would retry them too;
accounts in observe mode beside Stripe's retries are how a rollout starts
and pass. With owner = stripe, the Stripe fake's scheduler plays Smart
Retries (POST /_test/scheduler/run), the engine makes no payment attempt
of its own (no POST /v1/invoices/*/pay reaches the fake) and still
restricts, suspends, tells the customer and puts the account into bad
debt on its own schedule. The events Stripe's automation emits
(invoice.upcoming without an id, invoice.overdue, invoice_payment.paid,
the retries' outcomes) are delivered as webhooks to the real `dunning
serve`, which answers every one with 200.

Run: DUNNING_BUILD_DIR=build /usr/bin/python3 -m pytest tests/integration/test_retries_owner.py
"""

import json
import time

import pytest

from test_serve import SECRET_A, Serve
from test_stripe_client import (  # noqa: F401 (fixtures)
    API_KEY,
    DAY,
    env,
    fake,
    fake_server,
    make_env,
    seed_failing_account,
)


@pytest.fixture(autouse=True)
def reads_beside_the_client(fake):
    """The tests read the fake right after the client's bursts; their own
    reads must not share the 25/s test-mode window with it (the pacing is
    tested in test_stripe_client.py)."""
    fake.config(rate_limit_per_s=1000)


def use_policy(env, owner):
    policy = env.dir / "policy.conf"
    policy.write_text("[retries]\nowner = %s\n" % owner)
    env.cfg.write_text(env.cfg.read_text() + "[policy]\nfile = %s\n" % policy)
    return policy


def set_clock(fake, t):
    fake.ctl("POST", "/_test/clock", {"now": t})


def pays(fake):
    """The payment attempts the engine asked Stripe for (a test's own
    requests, such as a customer paying, are not the engine's)."""
    return [r for r in fake.requests(r"^/v1/invoices/[^/]+/pay$", "POST")
            if (r["headers"].get("User-Agent") or "").startswith("dunning-stripe/")]


# --------------------------------------------------------------------------
# owner = engine: config check asks Stripe whether it retries too


def test_engine_owner_with_stripe_retrying_fails_config_check_naming_the_setting(env, fake):
    [inv] = seed_failing_account(fake)
    assert fake.obj(inv)["next_payment_attempt"], "Stripe's Smart Retries are on by default"
    env.run("sync")
    use_policy(env, "engine")
    fake.clear_requests()
    err = env.run("config", "check", rc=78).stderr
    assert "[retries] owner = engine, but Stripe is retrying payments too" in err, err
    assert "1 of 1 open invoices of accounts in active mode" in err, err
    assert "%s (account acct_A, next attempt " % inv in err, err
    assert "Billing > Revenue recovery > Retries" in err and "Smart Retries" in err, err
    assert "[retries] owner = stripe" in err, err
    # It read the invoice from Stripe, and wrote nothing.
    assert [r["path"] for r in fake.requests("^/v1/invoices/")] == ["/v1/invoices/" + inv]
    assert fake.requests(method="POST") == []
    # An account the policy never touches is Stripe's alone to retry.
    env.run("account", "set", "acct_A", "--kill-switch", "on")
    assert "no open, attempted invoice" in env.run("config", "check").stdout
    env.run("account", "set", "acct_A", "--kill-switch", "off", "--segment", "enterprise")
    assert "no open, attempted invoice" in env.run("config", "check").stdout


def test_engine_owner_with_stripe_retries_off_passes(env, fake):
    fake.config(smart_retries=False)
    [inv] = seed_failing_account(fake)
    assert fake.obj(inv)["next_payment_attempt"] is None
    env.run("sync")
    out = env.run("config", "check").stdout
    assert "retries     engine (Stripe retries none of 1 open invoice of active accounts" in out, out


def test_observing_beside_stripes_retries_is_normal(tmp_path, fake, make_env):
    env = make_env(tmp_path, writes=False)
    env.run("init")  # observe at 0%, as a new installation
    seed_failing_account(fake)
    env.run("sync")
    out = env.run("config", "check").stdout
    assert "every account observes" in out, out
    assert fake.requests("^/v1/invoices/in_") == []
    # Writes on, but not for this account yet: still nothing to ask about.
    env.run("rollout", "mode", "active")
    out = env.run("config", "check").stdout
    assert "no open, attempted invoice of an account in active mode" in out, out
    # Once the account is active, Stripe's retries are a problem.
    env.run("rollout", "allow", "acct_A")
    assert "Stripe is retrying payments too" in env.run("config", "check", rc=78).stderr


def test_stripe_owner_passes_config_check_without_asking(env, fake):
    seed_failing_account(fake)
    env.run("sync")
    use_policy(env, "stripe")
    fake.clear_requests()
    out = env.run("config", "check").stdout
    assert "retries     stripe: Stripe retries failed payments; the engine makes none" in out, out
    assert fake.requests("^/v1/invoices") == []


def test_engine_owner_retries_by_itself(env, fake):
    """The other way round, for contrast: with Stripe's retries off the
    engine pays on its own schedule (one retry, a day after the failure)."""
    fake.config(smart_retries=False)
    t = fake.now()
    set_clock(fake, t)
    seed_failing_account(fake)
    env.run("sync", now=t)
    env.run("work", now=t)
    assert pays(fake) == []
    set_clock(fake, t + DAY + 60)
    env.run("work", now=t + DAY + 60)
    [pay] = pays(fake)
    assert pay["headers"]["Idempotency-Key"].startswith("acct_A/retry_payment/in_acct_A_0/")


# --------------------------------------------------------------------------
# owner = stripe: Stripe retries, the engine does everything else


def test_stripe_owner_stripe_retries_and_the_engine_still_escalates_on_schedule(env, fake):
    t = fake.now()
    set_clock(fake, t)
    [inv] = seed_failing_account(fake, decline="insufficient_funds")
    fake.seed(customers=[{"id": "cus_A", "card": ["insufficient_funds"] * 20}])
    use_policy(env, "stripe")
    env.run("sync", now=t)
    env.run("work", now=t)
    stage = {}
    for day in (0, 1, 3, 5, 7, 9, 11, 14, 20, 30):
        now = t + day * DAY + 60
        set_clock(fake, now)
        fake.ctl("POST", "/_test/scheduler/run")
        # What webhooks would have brought, replayed through the same path.
        env.run("backfill", "--since", str(t), now=now)
        env.run("work", now=now)
        [(stage[day],)] = env.sql("SELECT stage FROM dunning WHERE account_id = 'acct_A'")
    assert stage == {0: "notified", 1: "notified", 3: "notified", 5: "notified", 7: "restricted",
                     9: "restricted", 11: "restricted", 14: "suspended", 20: "suspended",
                     30: "bad_debt"}, stage
    # Stripe made 8 tries within two weeks; the engine none.
    got = fake.obj(inv)
    assert got["attempt_count"] == 8, got
    assert pays(fake) == []
    # The engine followed Stripe's attempts: the mirror has them all.
    [(count, nxt)] = env.sql("SELECT attempt_count, next_payment_attempt FROM p_invoices WHERE id = ?", inv)
    assert count == 8 and nxt == 0
    # Everything else happened: emails, bad debt at Stripe, the subscription canceled.
    kinds = [k for (k,) in env.sql("SELECT kind FROM emails WHERE account_id = 'acct_A' ORDER BY id")]
    assert kinds == ["payment_failed", "restricted", "suspended", "bad_debt"], kinds
    # Stripe will try again, but the engine cannot say how often.
    [(body,)] = env.sql("SELECT body FROM emails WHERE kind = 'payment_failed'")
    assert "We will try your payment method again automatically. To settle" in body, body
    assert "attempts remaining" not in body
    assert got["status"] == "uncollectible"
    assert fake.obj("sub_acct_A")["status"] == "canceled"
    assert [r["status"] for r in fake.requests("/mark_uncollectible$", "POST")] == [200]

    # The customer pays the uncollectible invoice: bad debt ends as paid,
    # and the outcome event says so.
    now = t + 31 * DAY
    set_clock(fake, now)
    fake.seed(customers=[{"id": "cus_A", "card": "ok"}])
    assert fake.api("POST", "/v1/invoices/%s/pay" % inv, {}, idem="customer-pays")["status"] == "paid"
    env.run("backfill", "--since", str(t), now=now + 60)
    env.run("work", now=now + 60)
    assert env.sql("SELECT stage FROM dunning WHERE account_id = 'acct_A'") == [("none",)]
    assert env.sql("SELECT exit_reason FROM bad_debt_episodes WHERE account_id = 'acct_A'") == [("paid",)]
    payloads = [json.loads(p) for (p,) in env.sql("SELECT payload FROM outcome_events ORDER BY id")]
    assert [p["to_stage"] for p in payloads] == ["notified", "restricted", "suspended", "bad_debt", "none"]
    assert payloads[-1]["type"] == "dunning.lifted" and payloads[-1]["exit_reason"] == "paid"
    assert all("exit_reason" not in p for p in payloads[:-1])
    assert pays(fake) == []


def test_stripe_owner_a_lost_outcome_webhook_is_found_after_stripes_attempt(env, fake):
    """Stripe's retry succeeds but its webhooks never arrive: the engine's
    recheck an hour after that attempt reads the invoice and lifts."""
    t = fake.now()
    set_clock(fake, t)
    [inv] = seed_failing_account(fake)
    fake.seed(customers=[{"id": "cus_A", "card": "ok"}])
    use_policy(env, "stripe")
    env.run("sync", now=t)
    env.run("work", now=t)
    assert env.sql("SELECT stage FROM dunning WHERE account_id = 'acct_A'") == [("notified",)]
    [(recheck,)] = env.sql("SELECT next_recheck_at FROM dunning WHERE account_id = 'acct_A'")
    assert recheck == fake.obj(inv)["next_payment_attempt"] + 3600
    set_clock(fake, recheck)
    [a] = fake.ctl("POST", "/_test/scheduler/run")["attempts"]
    assert a["outcome"] == "paid"
    env.run("work", now=recheck)  # no backfill: the webhooks are lost
    assert env.sql("SELECT stage FROM dunning WHERE account_id = 'acct_A'") == [("none",)]
    assert fake.requests("^/v1/invoices/%s$" % inv, "GET"), "the invoice was read again"
    assert pays(fake) == []


# --------------------------------------------------------------------------
# The intake answers 200 to every event Stripe's automation emits


def test_the_intake_answers_200_to_what_stripes_automation_emits(tmp_path, fake, request,
                                                                 dun_backend):
    pg = request.getfixturevalue("dun_pg") if dun_backend == "postgresql" else None
    policy = tmp_path / "policy.conf"
    policy.write_text("[retries]\nowner = stripe\n")
    s = Serve(tmp_path, pg=pg, provider={"kind": "stripe"}, policy={"file": str(policy)},
              stripe={"api_key": API_KEY, "api_base": fake.base})
    s.start()
    try:
        fake.config(webhook_url="http://127.0.0.1:%d/webhooks/stripe" % s.port, webhook_secrets=[SECRET_A])
        now = int(time.time())
        ago = now - 2 * DAY
        fake.seed(events=True, customers=[
            {"id": "cus_F", "email": "f@example.com", "metadata": {"account_id": "acct_F"},
             "card": "insufficient_funds"},
            {"id": "cus_P", "email": "p@example.com", "metadata": {"account_id": "acct_P"}, "card": "ok"}],
            subscriptions=[{"id": "sub_F", "customer": "cus_F", "status": "past_due",
                            "current_period_end": now + 2 * DAY},
                           {"id": "sub_P", "customer": "cus_P", "status": "past_due",
                            "current_period_end": now + 20 * DAY}],
            invoices=[{"id": "in_F", "customer": "cus_F", "subscription": "sub_F", "created": ago,
                       "attempts": [{"decline_code": "insufficient_funds", "created": ago}]},
                      {"id": "in_P", "customer": "cus_P", "subscription": "sub_P", "created": ago,
                       "attempts": [{"decline_code": "insufficient_funds", "created": ago}]},
                      {"id": "in_S", "customer": "cus_P", "collection_method": "send_invoice",
                       "created": now - 10 * DAY, "due_date": now - 3 * DAY}])
        out = fake.ctl("POST", "/_test/scheduler/run")
        assert sorted((a["invoice"], a["outcome"]) for a in out["attempts"]) == \
            [("in_F", "failed"), ("in_P", "paid")]
        assert out["upcoming"] == ["sub_F"] and out["overdue"] == ["in_S"]
        assert fake.ctl("POST", "/_test/webhooks/flush", {"timeout_s": 30})["ok"]
        deliveries = fake.ctl("GET", "/_test/deliveries")["deliveries"]
        types = {d["type"] for d in deliveries}
        assert {"invoice.upcoming", "invoice.overdue", "invoice_payment.paid", "invoice.paid",
                "invoice.payment_failed", "charge.failed", "charge.succeeded"} <= types, types
        assert [d for d in deliveries if d["status"] != 200] == []
        s.wait_idle()
        outcomes = dict(s.sql("SELECT type, outcome FROM events_raw WHERE type IN"
                              " ('invoice.upcoming', 'invoice.overdue', 'invoice_payment.paid')"))
        assert outcomes["invoice.upcoming"] == "ignored_no_id"
        assert outcomes["invoice.overdue"] == "ignored_type"
        assert outcomes["invoice_payment.paid"] in ("triggered", "coalesced")
        assert s.sql("SELECT account_id FROM events_raw WHERE type = 'invoice_payment.paid'") == [("acct_P",)]
        status, _, text = s.request("GET", "/metrics")
        assert status == 200
        assert 'dunning_webhook_requests_total{outcome="ignored_no_id"} 1' in text.decode()
        assert s.stage("acct_P") == "none" and s.stage("acct_F") == "notified"
        assert pays(fake) == []
    finally:
        assert s.stop() == 0
