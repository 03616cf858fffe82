"""A new installation against the Stripe test server: observe at 0%, so
`sync` and `work` read Stripe and write nothing to it, however far the clock
goes. Then one account is allowed and its writes do reach Stripe.

Uses the Stripe test server and the Env helper of test_stripe_client.py.
"""

import json

from test_stripe_client import fake, fake_server, make_env, seed_failing_account  # noqa: F401


def test_new_database_sync_and_work_send_no_write_to_stripe(tmp_path, fake, make_env):  # noqa: F811
    env = make_env(tmp_path, writes=False)
    env.run("init")
    seed_failing_account(fake, "acct_A", "cus_A")
    seed_failing_account(fake, "acct_B", "cus_B")
    env.run("sync")
    t0 = fake.now()
    for days in (1, 8, 15, 31, 45):
        out = env.run("work", now=t0 + days * 86400).stdout
    assert "0 accounts active (written to)" in out or "processed 0 accounts" in out
    assert [r for r in fake.requests() if r["method"] != "GET"] == []
    # The shadow went all the way, on its own rechecks.
    assert env.sql("SELECT stage FROM shadow_dunning ORDER BY account_id") == [
        ("bad_debt",), ("bad_debt",)]
    assert env.sql("SELECT COUNT(*) FROM dunning WHERE stage <> 'none'") == [(0,)]
    show = env.run("rollout", "show").stdout
    assert "mode: observe" in show and "percent: 0" in show
    # Writes on for one account: its consequences reach Stripe, the other's do not.
    env.run("rollout", "mode", "active")
    env.run("rollout", "allow", "acct_A")
    out = env.run("recompute", "acct_A", now=t0 + 46 * 86400).stdout
    assert "mode active" in out
    posts = [r for r in fake.requests() if r["method"] == "POST"]
    assert posts and all("acct_B" not in r["path"] and "cus_B" not in r["path"] for r in posts)
    assert fake.obj("in_acct_A_0")["status"] == "uncollectible"
    assert fake.obj("in_acct_B_0")["status"] == "open"


def test_parity_against_stripes_own_dunning(tmp_path, fake, make_env):  # noqa: F811
    """Stripe Billing dunned these accounts itself (a retry a day after the
    failure, then on day 30 the invoice marked uncollectible and the
    subscription cancelled); the engine observed beside it. The report
    reconstructs Stripe's actions from its event history."""
    env = make_env(tmp_path, writes=False)
    env.run("init")
    for a in ("acct_A", "acct_B", "acct_C"):
        seed_failing_account(fake, a, "cus_" + a[-1])
    t0 = fake.now()
    env.run("sync", now=t0)

    def stripe_at(t):
        fake.ctl("POST", "/_test/clock", {"now": t})

    def day(d):
        return t0 + int(d * 86400)

    for d in range(1, 33):
        if d == 1:
            stripe_at(day(1) + 300)
            for a in ("acct_A", "acct_B", "acct_C"):
                try:
                    fake.api("POST", "/v1/invoices/in_%s_0/pay" % a)
                except Exception:
                    pass  # the card declines: Stripe records the failed retry
        if d == 30:
            stripe_at(day(30) + 300)
            for a in ("acct_A", "acct_C"):
                fake.api("POST", "/v1/invoices/in_%s_0/mark_uncollectible" % a)
                fake.api("DELETE", "/v1/subscriptions/sub_%s" % a)
        env.run("work", now=day(d) + 600)
    # acct_B: Stripe gave up on day 12 instead (planted: too early for the policy).
    stripe_at(day(12))
    fake.api("POST", "/v1/invoices/in_acct_B_0/mark_uncollectible")
    fake.ctl("POST", "/_test/clock", {"now": None})
    # dunning wrote nothing (its writes carry an Idempotency-Key; Stripe's
    # own actions, played here by the test, do not).
    writes = [r for r in fake.requests() if r["method"] != "GET"]
    assert writes and not [r for r in writes if r["headers"].get("Idempotency-Key")]
    p = env.run("parity", "--stripe", "--from", str(day(0)), "--to", str(day(32)), "--json",
                rc=1, now=day(32))
    rep = json.loads(p.stdout)
    assert rep["source"].startswith("Stripe's own dunning")
    per = {a["action"]: a for a in rep["actions"]}
    assert per["retry"]["matched"] == 3, rep
    assert per["invoice_uncollectible"]["matched"] == 2, rep
    assert per["subscription_cancel"]["matched"] == 2, rep
    assert {m["account"] for m in rep["mismatches"]} == {"acct_B"}, rep["mismatches"]
    assert rep["amounts"]["compared"] == 2 and rep["amounts"]["match"] == 2
