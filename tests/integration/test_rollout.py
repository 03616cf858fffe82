"""Rolling out beside a legacy system: safe defaults, the observe-mode
shadow that lives through time, recompute of one account, cutover, the
parity report and the gate in front of the percentage.

Every test drives the real binary on a database of its own (conftest's
``dun_observe``: a database as a new installation has it, observe at 0%).
"""

import json
import sqlite3

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
    dun.ok("init")
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
    dun.ok("init")
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
    dun.ok("init")
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


# --------------------------------------------------------------------------
# parity against a legacy system

# The legacy cron runs 5 minutes before the engine's daily pass: it acts
# first, and its writes to the stores must not hide the engine's decisions.
LEGACY_DELAY = -300


def legacy_dunning(dun, accounts, planted):
    """A simple fixed-rule legacy dunning, as a script beside the engine.

    For an account whose invoice failed on day f it sends the payment_failed
    email, retries once a day later, restricts on f+7, suspends on f+14 and
    on f+30 marks the invoice uncollectible, flags bad debt, bans and
    cancels. It writes the real stores as it goes (entitlement, ban, flag),
    as a legacy system would, and returns its decision log (JSON lines).
    planted: {"skip": account, "amount": account, "enterprise": account}.
    """
    lines = []

    def log(acct, day, action, **kw):
        lines.append(dict(account=acct, time=dun.T0 + int(day * dun.DAY) + 600 + LEGACY_DELAY,
                          action=action, **kw))

    for acct, (f, objs) in sorted(accounts.items()):
        if acct == planted["skip"]:
            continue
        inv, sub = objs["invoice"]["id"], objs["subscription"]["id"]
        amount = objs["invoice"]["amount_due"] + (1 if acct == planted["amount"] else 0)
        log(acct, f, "email", kind="payment_failed", invoice=inv)
        log(acct, f + 1, "retry", invoice=inv, attempt=2)
        log(acct, f + 7, "entitlement", level="restricted")
        log(acct, f + 7, "email", kind="restricted")
        log(acct, f + 14, "entitlement", level="suspended")
        log(acct, f + 14, "email", kind="suspended")
        log(acct, f + 30, "invoice_uncollectible", invoice=inv, amount=amount)
        log(acct, f + 30, "bad_debt_set")
        log(acct, f + 30, "ban")
        log(acct, f + 30, "subscription_cancel", subscription=sub)
        log(acct, f + 30, "email", kind="bad_debt")
    return lines


def legacy_writes_stores(dun, lines, since, upto):
    """Apply the legacy log's store writes with since < time <= upto."""
    con = sqlite3.connect(str(dun.db), timeout=30)
    try:
        for ln in lines:
            if not since < ln["time"] <= upto:
                continue
            a = ln["account"]
            if ln["action"] == "entitlement":
                con.execute("INSERT INTO platform(account_id, entitlement) VALUES (?, ?)"
                            " ON CONFLICT(account_id) DO UPDATE SET"
                            " entitlement = excluded.entitlement", (a, ln["level"]))
            elif ln["action"] == "ban":
                con.execute("UPDATE platform SET banned = 1 WHERE account_id = ?", (a,))
            elif ln["action"] == "bad_debt_set":
                con.execute("UPDATE accounts SET bad_debt = 1 WHERE id = ?", (a,))
        con.commit()
    finally:
        con.close()


def write_log(dun, name, lines):
    return dun.write(name, "".join(json.dumps(ln) + "\n" for ln in lines))


def test_parity_over_60_days_finds_exactly_the_planted_disagreements(dun_observe, dun_stripe):
    dun = dun_observe
    dun.ok("init")
    n = 200
    accounts = {}
    by_day = {}
    for i in range(n):
        acct = "acct_%03d" % i
        f = i % 26  # first failures spread over days 0..25: bad debt by day 55
        by_day.setdefault(f, []).append(acct)
    planted = {"skip": "acct_007", "amount": "acct_013", "enterprise": "acct_021"}
    # The legacy log is known in advance (fixed rules): the script writes
    # the stores as the days pass, the engine observes beside it.
    lines = []
    for day in range(0, 61):
        evs = []
        for acct in by_day.get(day, []):
            e, objs = dun_stripe.failing_account(acct, days=day, amount=1000 + 7 * int(acct[5:]))
            dun.provider_knows(objs["customer"], behavior="insufficient_funds")
            dun.provider_knows(objs["subscription"], objs["invoice"], objs["charge"])
            accounts[acct] = (day, objs)
            evs += e
        if evs:
            dun.ingest(evs, now=dun.at(day, 60), no_work=True)
            if day == 21:
                dun.ok("account", "set", planted["enterprise"], "--segment", "enterprise")
        lines = legacy_dunning(dun, accounts, planted)
        upto = dun.T0 + day * dun.DAY + 600 + LEGACY_DELAY
        legacy_writes_stores(dun, lines, upto - dun.DAY, upto)
        dun.ok("work", now=dun.at(day, 600))
    # The enterprise account: the engine skips it; the legacy system does not.
    assert dun.explain(planted["enterprise"], now=dun.at(60))["evaluation"]["skipped"] is True
    # Each shadow escalation once.
    dup = dun.scalar("SELECT COUNT(*) FROM (SELECT account_id, type, target, value, kind"
                     " FROM shadow_consequences WHERE type IN ('ban', 'set_entitlement',"
                     " 'mark_uncollectible', 'send_email') GROUP BY 1, 2, 3, 4, 5"
                     " HAVING COUNT(*) > 1)")
    assert dup == 0
    # Nothing real was written by the engine.
    assert dun.scalar("SELECT COUNT(*) FROM applied") == 0 and dun.emails() == []

    log = write_log(dun, "legacy.jsonl", lines)
    # The gate: no report yet.
    r = dun.expect(EX_FAIL, "rollout", "percent", "5", now=dun.at(60, 3600))
    assert "no parity report" in r.err
    r = dun.run("parity", "--legacy", log, "--from", dun.at(0), "--to", dun.at(60, 3600),
                "--json", now=dun.at(60, 3600))
    assert r.rc == EX_FAIL, r
    rep = json.loads(r.out)
    assert rep["passed"] is False
    found = {(m["account"], m["mismatch"]) for m in rep["mismatches"]}
    assert {a for a, _ in found} == set(planted.values()), sorted(found)
    assert (planted["amount"], "amount") in found
    assert (planted["enterprise"], "filter") in found
    assert (planted["skip"], "only_engine") in found
    # The enterprise account's bad debt has no engine side: n - 2 compared.
    assert rep["amounts"] == {"compared": n - 2, "match": n - 3}
    assert rep["filters"] == {"checked": 1, "agree": 0}
    assert rep["coverage"]["legacy_accounts"] == n - 1
    assert rep["coverage"]["seen"] == n - 1
    assert rep["errors"] == 0
    # Everything else matched, each within the tolerance.
    per = {a["action"]: a for a in rep["actions"]}
    assert per["ban"]["matched"] == n - 2 and per["ban"]["only_legacy"] == 1
    assert per["ban"]["only_engine"] == 1
    assert all(abs(a["max_delay_s"]) <= dun.DAY for a in rep["actions"])
    # The text form says the same, for a person.
    text = dun.run("parity", "--legacy", log, "--from", dun.at(0), "--to", dun.at(60, 3600),
                   now=dun.at(60, 3600))
    assert text.rc == EX_FAIL
    assert "%d/%d bad-debt amounts match" % (n - 3, n - 2) in text.out
    assert "BELOW THRESHOLDS" in text.out and planted["amount"] in text.out
    # A failed report keeps the gate closed; --force opens it and is recorded.
    r = dun.expect(EX_FAIL, "rollout", "percent", "5", now=dun.at(60, 3700))
    assert "below its thresholds" in r.err
    dun.ok("rollout", "percent", "5", "--force", now=dun.at(60, 3700))
    assert "FORCED" in dun.ok("rollout", "show", now=dun.at(60, 3700)).out
    # Thresholds that accept the planted three: the report passes, the gate opens.
    r = dun.run("parity", "--legacy", log, "--from", dun.at(0), "--to", dun.at(60, 3600),
                "--min-match", "95", "--max-amount-mismatches", "1",
                "--max-filter-mismatches", "1", now=dun.at(60, 3800))
    assert r.rc == EX_OK, r
    assert "PASSED" in r.out
    r = dun.ok("rollout", "percent", "10", now=dun.at(60, 3900))
    assert "FORCED" not in r.out
    assert "(parity report #" in dun.ok("rollout", "show", now=dun.at(60, 3900)).out
    # A day and more later the report is stale: the gate closes again.
    r = dun.expect(EX_FAIL, "rollout", "percent", "25", now=dun.at(62))
    assert "hours old" in r.err
    # Going down (rollback) is always allowed.
    dun.ok("rollout", "percent", "0", now=dun.at(62))


def test_parity_refuses_bad_input_and_writes_nothing(dun_observe, dun_stripe):
    dun = dun_observe
    dun.ok("init")
    failing(dun, dun_stripe, "acct_p")
    dun.ok("work", now=dun.at(8))
    good = {"account": "acct_p", "time": dun.at(0, 300), "action": "email",
            "kind": "payment_failed", "invoice": "in_x"}
    cases = [
        ("{not json\n", "bad.jsonl:1: not JSON"),
        (json.dumps(good) + "\n" + json.dumps(good)[:40], "bad.jsonl:2: the last line has no newline"),
        (json.dumps(dict(good, action="nuke")) + "\n", "bad.jsonl:1: unknown action \"nuke\""),
        (json.dumps(dict(good, kind="spam")) + "\n", "unknown email kind"),
        (json.dumps(dict(good, time="yesterday")) + "\n", "\"time\": not a time"),
        ("\n" + json.dumps({"account": "acct_p", "time": 5, "action": "entitlement"}) + "\n",
         "bad.jsonl:2: action entitlement needs \"level\""),
        (json.dumps({"account": "acct_p", "time": 5, "action": "ban", "amount": 3}) + "\n",
         "takes no \"amount\""),
        (json.dumps({"account": "acct_p", "time": 5, "action": "invoice_uncollectible",
                     "invoice": "in_1", "amount": 12.5}) + "\n", "whole number of minor units"),
        (json.dumps({"account": "acct_p", "time": 5, "action": "ban", "ammount": 1}) + "\n",
         "unknown key \"ammount\""),
        ("[1, 2]\n", "not a JSON object"),
    ]
    for text, msg in cases:
        bad = dun.write("bad.jsonl", text)
        r = dun.run("parity", "--legacy", bad, now=dun.at(8, 60))
        assert r.rc == 65, r
        assert msg in r.err, (msg, r.err)
    # Options out of range.
    ok = write_log(dun, "ok.jsonl", [good])
    for args in (["--min-match", "101"], ["--min-coverage", "-1"], ["--max-errors", "x"],
                 ["--tolerance", "1y"], ["--days", "0"], ["--from", "soon"],
                 ["--from", dun.at(9), "--to", dun.at(8)], [], ["--legacy"]):
        extra = [] if args in ([], ["--legacy"]) else ["--legacy", ok]
        r = dun.run("parity", *(extra + args), now=dun.at(8, 60))
        assert r.rc == 64, r
    r = dun.run("parity", "--legacy", dun.workdir / "missing.jsonl", now=dun.at(8, 60))
    assert r.rc == 66 and "missing.jsonl" in r.err
    # A window with no data on either side.
    r = dun.run("parity", "--legacy", ok, "--from", dun.at(-30), "--to", dun.at(-20),
                now=dun.at(8, 60))
    assert r.rc == 66 and "nothing to compare" in r.err, r
    # None of it wrote a report.
    assert dun.scalar("SELECT COUNT(*) FROM parity_reports") == 0
    # A good log over the last 7 days does (and this one does not match: exit 1).
    r = dun.run("parity", "--legacy", ok, now=dun.at(8, 60))
    assert r.rc == EX_FAIL and "report #1 recorded" in r.out, r
    assert dun.scalar("SELECT COUNT(*) FROM parity_reports") == 1
