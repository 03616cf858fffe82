"""Rolling out beside a legacy system: safe defaults, the observe-mode
shadow that lives through time, recompute of one account, cutover, the
parity report and the gate in front of the percentage.

Every test drives the real binary on a database of its own (conftest's
``dun_observe``: a database as a new installation has it, observe at 0%).
"""

import json

from conftest import EX_FAIL, EX_OK


def failing(dun, dun_stripe, account, days=0.0, reason="insufficient_funds", amount=2000):
    evs, objs = dun_stripe.failing_account(account, reason=reason, days=days, amount=amount)
    dun.provider_knows(objs["customer"], behavior=reason)
    dun.provider_knows(objs["subscription"], objs["invoice"], objs["charge"])
    dun.ingest(evs, now=dun.at(days, 60))
    return objs


def shadow(dun, account):
    return dun.sql("SELECT type, target, value, kind, at FROM shadow_consequences"
                   " WHERE account_id = ? ORDER BY id", (account,))


def test_observe_shadow_lives_through_time_and_records_each_step_once(dun_observe, dun_stripe):
    dun = dun_observe
    dun.ok("rollout", "show")
    objs = failing(dun, dun_stripe, "acct_s")
    # Walk 60 days, one `work` a day: only the shadow's own rechecks (and
    # the ones of the retries) move the account; nothing real is written.
    for day in range(1, 61):
        dun.ok("work", now=dun.at(day, 600))
    rows = shadow(dun, "acct_s")
    keys = dun.sql("SELECT key FROM shadow_consequences WHERE account_id = 'acct_s'")
    assert len(keys) == len(set(keys))
    emails = [(r[3], r[4]) for r in rows if r[0] == "send_email"]
    kinds = [k for k, _ in emails]
    # Each escalation once, in order.
    for kind in ("payment_failed", "restricted", "suspended", "bad_debt"):
        assert kinds.count(kind) == 1, kinds
    assert kinds.index("restricted") < kinds.index("suspended") < kinds.index("bad_debt")
    # At its time: the policy's stage boundaries (days after the failure).
    t = dict((k, at) for k, at in emails)
    t0 = dun.T0
    assert t["payment_failed"] - t0 < dun.DAY
    for kind in ("restricted", "suspended", "bad_debt"):
        assert t[kind] - t0 > 2 * dun.DAY, (kind, (t[kind] - t0) / dun.DAY)
    # A recheck brought each step, not an event: the shadow schedules them.
    assert dun.scalar("SELECT COUNT(*) FROM inbox WHERE source = 'shadow'") >= 3
    sd = dict(zip(("stage", "banned", "entitlement", "account_bad_debt"),
                  dun.sql("SELECT stage, banned, entitlement, account_bad_debt"
                          " FROM shadow_dunning WHERE account_id = 'acct_s'")[0]))
    assert sd["stage"] == "bad_debt" and sd["account_bad_debt"] == 1
    # Nothing real was touched.
    assert dun.emails() == []
    assert dun.sql("SELECT * FROM platform") == []
    assert dun.scalar("SELECT COUNT(*) FROM applied") == 0
    assert dun.scalar("SELECT COUNT(*) FROM dunning WHERE stage <> 'none'") == 0
    assert dun.provider_object(objs["invoice"]["id"])["status"] == "open"
    # explain shows the shadow beside the real state.
    x = dun.explain("acct_s", now=dun.at(60, 700))
    assert x["view"] == "shadow"
    assert x["dunning"]["stage"] == "bad_debt"
    assert x["real"]["dunning"]["stage"] == "none"
    assert x["real"]["platform"]["banned"] is False
    assert x["plan"] == []
    text = dun.ok("explain", "acct_s", now=dun.at(60, 700)).out
    assert "shadow" in text


def test_recompute_account_touches_that_account_only(dun, dun_stripe):
    dun.ok("init")
    failing(dun, dun_stripe, "acct_a")
    failing(dun, dun_stripe, "acct_b")
    # 10 days later both have a recheck due; a support recompute of acct_a
    # leaves acct_b's state and triggers alone.
    dun.ok("recompute", "acct_a", "--dry-run", now=dun.at(10))
    before = dun.sql("SELECT id, state FROM inbox WHERE account_id = 'acct_b' ORDER BY id")
    decisions_b = dun.decisions("acct_b")
    r = dun.ok("recompute", "acct_a", now=dun.at(10))
    assert "acct_b" not in r.out
    assert dun.sql("SELECT id, state FROM inbox WHERE account_id = 'acct_b'"
                   " ORDER BY id") == before
    assert dun.decisions("acct_b") == decisions_b
    assert dun.explain("acct_a", now=dun.at(10))["plan"] == []
    assert dun.explain("acct_b", now=dun.at(10))["plan"] != []
    # --dry-run writes nothing at all.
    counts = [dun.scalar("SELECT COUNT(*) FROM %s" % t)
              for t in ("decisions", "inbox", "shadow_consequences", "applied", "emails")]
    dun.ok("recompute", "acct_b", "--dry-run", now=dun.at(11))
    assert counts == [dun.scalar("SELECT COUNT(*) FROM %s" % t)
                      for t in ("decisions", "inbox", "shadow_consequences", "applied",
                                "emails")]


def test_scan_of_observe_accounts_queues_only_shadow_drift(dun_observe, dun_stripe):
    dun = dun_observe
    dun.ok("rollout", "show")
    failing(dun, dun_stripe, "acct_o")
    for day in (1, 5, 10, 20):
        dun.ok("work", now=dun.at(day, 600))
    # The legacy system writes the real stores its own way (a ban, a flag).
    dun.execute("INSERT INTO platform(account_id, banned, entitlement) VALUES"
                " ('acct_o', 1, 'suspended')")
    dun.execute("UPDATE accounts SET bad_debt = 1 WHERE id = 'acct_o'")
    # The shadow is up to date: nothing drifts, nothing is queued, and the
    # real stores' distance from the policy is reported as information.
    r = dun.run("scan", "--enqueue", "--json", now=dun.at(20, 900))
    assert r.rc == EX_OK, r
    j = json.loads(r.out)
    assert j["drifting"] == 0 and j["enqueued"] == 0, j
    assert j["observe"]["accounts"] == 1 and j["observe"]["real_drifting"] == 1, j
    assert "observe mode: 1 accounts" in dun.run("scan", now=dun.at(20, 900)).out
    # The legacy's writes do not fool the shadow.
    x = dun.explain("acct_o", now=dun.at(20, 900))
    assert x["view"] == "shadow" and x["real"]["platform"]["banned"] is True
    assert x["dunning"]["stage"] != "none" and x["plan"] == []
    # Time passes without the engine: now the shadow is behind the policy,
    # and only then is the account queued.
    r = dun.run("scan", "--enqueue", "--json", now=dun.at(45))
    assert r.rc == EX_FAIL, r
    j = json.loads(r.out)
    assert j["drifting"] == 1 and j["enqueued"] == 1, j
    dun.ok("work", now=dun.at(45, 60))
    j = json.loads(dun.run("scan", "--json", now=dun.at(45, 120)).out)
    assert j["drifting"] == 0, j
    # Still nothing real was written by the engine.
    assert dun.emails() == [] and dun.scalar("SELECT COUNT(*) FROM applied") == 0


def test_cutover_mid_episode_sends_no_back_dated_email(dun_observe, dun_stripe):
    dun = dun_observe
    dun.ok("rollout", "show")
    failing(dun, dun_stripe, "acct_c")   # the legacy system took it through its steps
    failing(dun, dun_stripe, "acct_q")   # the legacy system only sent its first email
    for day in (1, 5, 10, 16):
        dun.ok("work", now=dun.at(day, 600))
    # The legacy dunning restricted then suspended acct_c, and its sender
    # recorded the payment_failed email it sent on day 0.
    dun.execute("INSERT INTO platform(account_id, banned, entitlement) VALUES"
                " ('acct_c', 0, 'suspended')")
    inv = dun.sql("SELECT id FROM p_invoices WHERE customer_id IN (SELECT id FROM customers"
                  " WHERE account_id = 'acct_c')")[0][0]
    dun.ok("email", "record", "acct_c/email/payment_failed/%s" % inv, "--sent",
           "--account", "acct_c", "--kind", "payment_failed", "--by", "legacy",
           now=dun.at(0, 900))
    inv_q = dun.sql("SELECT id FROM p_invoices WHERE customer_id IN (SELECT id FROM customers"
                    " WHERE account_id = 'acct_q')")[0][0]
    dun.ok("email", "record", "acct_q/email/payment_failed/%s" % inv_q, "--sent",
           "--account", "acct_q", "--kind", "payment_failed", "--by", "legacy",
           now=dun.at(0, 900))
    # Cutover on day 17: both accounts leave observe mode.
    dun.ok("rollout", "mode", "active")
    dun.ok("rollout", "allow", "acct_c")
    dun.ok("rollout", "allow", "acct_q")
    r = dun.ok("recompute", "acct_c", now=dun.at(17))
    assert "mode active" in r.out and "(cutover: recorded, not sent)" in r.out, r.out
    # acct_c: the engine takes over at suspended; the stores already show the
    # restriction and the suspension, so no email goes out for them now.
    x = dun.explain("acct_c", now=dun.at(17, 60))
    assert x["view"] == "real" and x["dunning"]["stage"] == "suspended" and x["plan"] == []
    sent = [(e["kind"], e["source"]) for e in dun.emails("acct_c")]
    assert ("payment_failed", "legacy") in sent
    assert all(src in ("legacy", "cutover") for _, src in sent), sent
    assert ("suspended", "cutover") in sent, sent
    # acct_q: the stores show nothing yet, so the engine applies the current
    # step now and sends its email; the payment_failed email the legacy
    # sender recorded is not sent again.
    dun.ok("recompute", "acct_q", now=dun.at(17))
    kinds = sorted((e["kind"], e["source"]) for e in dun.emails("acct_q"))
    assert kinds == [("payment_failed", "legacy"), ("suspended", "engine")], kinds
    assert dun.explain("acct_q", now=dun.at(17, 60))["plan"] == []
    # The next step is the engine's own, and it is sent.
    for day in (25, 31, 32):
        dun.ok("work", now=dun.at(day))
    kinds = [(e["kind"], e["source"]) for e in dun.emails("acct_c")]
    assert ("bad_debt", "engine") in kinds, kinds
    # Rollback undoes nothing.
    dun.ok("rollout", "remove", "acct_c")
    dun.ok("rollout", "remove", "acct_q")
    x = dun.explain("acct_c", now=dun.at(33))
    assert x["view"] == "shadow" and x["real"]["platform"]["banned"] is True
