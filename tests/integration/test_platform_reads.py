"""GATHER reads the platform dunning does not own (docs/platform-api.md).

Against the test platform of platform_server.py (127.0.0.1), with the
HTTP platform configured:

* a ban lifted behind dunning's back on a bad-debt account is found by
  `scan` (class platform_disagrees) and restored by `scan --enqueue` +
  `work` + delivery; a call still pending in the outbox is neither drift
  nor planned again;
* a restriction placed for another reason (abuse) survives the account
  paying, while the one a legacy dunning handler placed for non-payment is
  lifted; `explain` shows the kept one; the scan reports it, not as drift;
  the same with the embedded local platform (platform_restrictions);
* the platform unreachable (or answering 5xx or garbage) during a recompute
  leaves the trigger `retrying` with the reason, nothing applied; once it
  answers, the next pass applies;
* the scan of a few thousand accounts makes at most
  ceil(accounts / batch) + 2 platform requests (asserted and printed).

Uses the conftest fixtures (`dun`, `dun_stripe`); both backends.
"""

import json
import math

from conftest import EX_FAIL, EX_OK
from platform_server import Platform, platform_config


def run(dun, cfg, *args, now=None):
    return dun.run("--config", str(cfg), *args, now=now)


def ok(dun, cfg, *args, now=None):
    r = run(dun, cfg, *args, now=now)
    assert r.rc == EX_OK, r
    return r


def ingest(dun, cfg, events, now):
    path = dun.write("ev-%d.jsonl" % len(list(dun.workdir.glob("ev-*"))),
                     "".join(json.dumps(e) + "\n" for e in events))
    return ok(dun, cfg, "ingest", path, now=now)


def deliver(dun, cfg):
    r = run(dun, cfg, "outbox", "--deliver")
    assert r.rc in (EX_OK, EX_FAIL), r
    return r


def explain(dun, cfg, account, now):
    return json.loads(ok(dun, cfg, "explain", account, "--json", now=now).out)


def scan(dun, cfg, now, *extra):
    r = run(dun, cfg, "scan", "--json", *extra, now=now)
    assert r.rc in (EX_OK, EX_FAIL), r
    return r, json.loads(r.out)


def failing(dun, st, cfg, account):
    evs, objs = st.failing_account(account)
    dun.provider_knows(objs["customer"], behavior="insufficient_funds")
    dun.provider_knows(objs["subscription"], objs["invoice"], objs["charge"])
    ingest(dun, cfg, evs, dun.at(0, 60))
    return objs


def to_bad_debt(dun, cfg, account):
    for day in (1.1, 7.1, 14.1, 30.1):
        ok(dun, cfg, "work", now=dun.at(day))
        deliver(dun, cfg)
    assert explain(dun, cfg, account, dun.at(30.2))["dunning"]["stage"] == "bad_debt"


def pay(dun, st, cfg, objs, days):
    paid = st.paid(dict(objs["invoice"], attempt_count=1, attempted=True), days=days)
    dun.provider_knows(paid)
    ingest(dun, cfg, [st.event("invoice.paid", paid, days)], dun.at(days, 60))


def test_ban_lifted_behind_dunnings_back_is_found_and_restored(dun, dun_stripe):
    platform = Platform().start()
    try:
        cfg = platform_config(dun.workdir / "p.ini", platform)
        dun.init()
        failing(dun, dun_stripe, cfg, "acct_b")
        to_bad_debt(dun, cfg, "acct_b")
        assert platform.state["acct_b"]["banned"] is True
        _, j = scan(dun, cfg, dun.at(30.3))
        assert j["drifting"] == 0, j
        # Someone lifts the ban by hand on the platform.
        platform.lift("acct_b", "ban", "non_payment")
        r, j = scan(dun, cfg, dun.at(30.4))
        assert r.rc == EX_FAIL and j["drifting"] == 1, j
        assert j["classes"]["platform_disagrees"] == 1, j
        assert "ban" in j["examples"][0]["consequences"], j
        # The repair is queued; while its call waits in the outbox (the
        # platform refuses writes for now) it is neither drift nor planned again.
        platform.mode = "5xx"
        r = run(dun, cfg, "scan", "--enqueue", now=dun.at(30.4))
        assert "queued 1 drift_detected triggers" in r.out, r
        ok(dun, cfg, "work", now=dun.at(30.5))
        deliver(dun, cfg)
        bans = dun.scalar("SELECT COUNT(*) FROM platform_outbox WHERE account_id = 'acct_b'"
                          " AND op = 'ban' AND state = 'pending'")
        assert bans == 1
        _, j = scan(dun, cfg, dun.at(30.6))
        assert j["drifting"] == 0, j
        x = explain(dun, cfg, "acct_b", dun.at(30.6))
        assert x["platform"]["banned"] is True and x["plan"] == [], x
        assert x["platform_owners"]["pending_applied"] >= 1, x["platform_owners"]
        ok(dun, cfg, "recompute", "acct_b", now=dun.at(30.6))
        assert dun.scalar("SELECT COUNT(*) FROM platform_outbox WHERE account_id = 'acct_b'"
                          " AND op = 'ban' AND state = 'pending'") == 1
        # The platform takes writes again: the ban arrives, once.
        platform.mode = "ok"
        dun.execute("UPDATE platform_outbox SET not_before = 0")
        deliver(dun, cfg)
        assert platform.state["acct_b"]["banned"] is True
        assert platform.restrictions("acct_b")[0] == {
            "type": "ban", "reason": "non_payment", "placed_by": "dunning"}
        r, j = scan(dun, cfg, dun.at(30.7))
        assert r.rc == EX_OK and j["drifting"] == 0, j
    finally:
        platform.stop()


def test_other_reason_kept_legacy_non_payment_lifted_http(dun, dun_stripe):
    platform = Platform().start()
    try:
        cfg = platform_config(dun.workdir / "p.ini", platform)
        dun.init()
        objs = failing(dun, dun_stripe, cfg, "acct_k")
        ok(dun, cfg, "work", now=dun.at(1.1))
        # Behind dunning's back: trust and safety bans the account for abuse,
        # and the legacy dunning handler suspends it for non-payment.
        platform.place("acct_k", "ban", "abuse", "trust-and-safety")
        platform.place("acct_k", "entitlement", "non_payment", "legacy-billing",
                       level="suspended")
        x = explain(dun, cfg, "acct_k", dun.at(1.2))
        assert x["platform"]["banned"] is False            # the abuse ban is not dunning's
        assert x["platform"]["entitlement"] == "suspended"  # the legacy one is
        kept = x["platform_owners"]["kept"]
        assert kept == [{"type": "ban", "reason": "abuse", "placed_by": "trust-and-safety"}]
        text = ok(dun, cfg, "explain", "acct_k", now=dun.at(1.2)).out
        assert "kept: ban for abuse, placed by trust-and-safety" in text, text
        # The customer pays.
        pay(dun, dun_stripe, cfg, objs, 2)
        ok(dun, cfg, "work", now=dun.at(2.1))
        deliver(dun, cfg)
        rs = platform.restrictions("acct_k")
        assert rs == [{"type": "ban", "reason": "abuse", "placed_by": "trust-and-safety"}], rs
        x = explain(dun, cfg, "acct_k", dun.at(2.2))
        assert x["dunning"]["stage"] == "none" and x["plan"] == [], x
        r, j = scan(dun, cfg, dun.at(2.2))
        assert r.rc == EX_OK and j["drifting"] == 0, j
        assert j["platform"]["kept_accounts"] == 1, j
        assert "restricted for another reason" in run(dun, cfg, "scan", now=dun.at(2.2)).out
    finally:
        platform.stop()


def test_other_reason_kept_legacy_non_payment_lifted_local(dun, dun_stripe):
    """The embedded local platform models owners the same way."""
    dun.init()
    evs, objs = dun_stripe.failing_account("acct_l")
    dun.provider_knows(objs["customer"], behavior="insufficient_funds")
    dun.provider_knows(objs["subscription"], objs["invoice"], objs["charge"])
    dun.ingest(evs, now=dun.at(0, 60))
    dun.work(now=dun.at(1.1))
    dun.execute("INSERT INTO platform_restrictions(account_id, kind, reason, placed_by)"
                " VALUES ('acct_l', 'ban', 'abuse', 'trust-and-safety')")
    dun.execute("INSERT INTO platform(account_id, banned, placed_by) VALUES"
                " ('acct_l', 1, 'legacy-billing') ON CONFLICT(account_id) DO UPDATE"
                " SET banned = 1, placed_by = 'legacy-billing'")
    x = dun.explain("acct_l", now=dun.at(1.2))
    assert x["platform"]["banned"] is True
    assert x["platform_owners"]["placed_by"] == "legacy-billing"
    assert x["platform_owners"]["kept"][0]["reason"] == "abuse"
    paid = dun_stripe.paid(dict(objs["invoice"], attempt_count=1, attempted=True), days=2)
    dun.provider_knows(paid)
    dun.ingest([dun_stripe.event("invoice.paid", paid, 2)], now=dun.at(2, 60))
    dun.work(now=dun.at(2.1))
    assert dun.scalar("SELECT banned FROM platform WHERE account_id = 'acct_l'") == 0
    assert dun.sql("SELECT kind, reason FROM platform_restrictions"
                   " WHERE account_id = 'acct_l'") == [("ban", "abuse")]
    j = json.loads(dun.ok("scan", "--json", now=dun.at(2.2)).out)
    assert j["drifting"] == 0 and j["platform"]["kept_accounts"] == 1, j


def test_platform_unreachable_leaves_the_trigger_retrying(dun, dun_stripe):
    platform = Platform().start()
    try:
        cfg = platform_config(dun.workdir / "p.ini", platform, read_timeout_ms=500)
        dun.init()
        failing(dun, dun_stripe, cfg, "acct_u")
        ok(dun, cfg, "work", now=dun.at(1.1))
        decisions = dun.scalar("SELECT COUNT(*) FROM decisions WHERE account_id = 'acct_u'")
        outbox = dun.scalar("SELECT COUNT(*) FROM platform_outbox")
        platform.stop()
        # Day 7: the restriction is due, the platform cannot be read.
        r = run(dun, cfg, "work", now=dun.at(7.1))
        state, err = dun.sql("SELECT state, last_error FROM inbox WHERE account_id = 'acct_u'"
                             " ORDER BY id DESC LIMIT 1")[0]
        assert state == "retrying", (state, err, r)
        assert "platform" in err and "GET /accounts/acct_u" in err, err
        assert dun.scalar("SELECT stage FROM dunning WHERE account_id = 'acct_u'") == "notified"
        assert dun.scalar("SELECT COUNT(*) FROM decisions WHERE account_id = 'acct_u'") == decisions
        assert dun.scalar("SELECT COUNT(*) FROM platform_outbox") == outbox
        # The scan does not guess either.
        r = run(dun, cfg, "scan", now=dun.at(7.1))
        assert r.rc not in (EX_OK, EX_FAIL) and "platform" in r.err, r
        # Answers that are not the contract's count as unread too.
        platform.start()
        for mode in ("5xx", "garbage"):
            platform.read_mode = mode
            r = run(dun, cfg, "recompute", "acct_u", now=dun.at(7.2))
            assert r.rc != EX_OK and "platform" in r.err, (mode, r)
        assert dun.scalar("SELECT stage FROM dunning WHERE account_id = 'acct_u'") == "notified"
        # Back: the retried trigger applies the restriction.
        platform.read_mode = "ok"
        ok(dun, cfg, "work", now=dun.at(7.3))
        assert dun.scalar("SELECT stage FROM dunning WHERE account_id = 'acct_u'") == "restricted"
        deliver(dun, cfg)
        assert platform.state["acct_u"]["entitlement"] == "restricted"
    finally:
        platform.stop()


def test_scan_reads_the_platform_in_batches(dun, dun_stripe):
    n, batch = 3000, 200
    platform = Platform().start()
    try:
        cfg = platform_config(dun.workdir / "p.ini", platform, read_batch=batch,
                              read_timeout_ms=5000)
        dun.init()
        dun.execute("INSERT INTO accounts(id) WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL"
                    " SELECT i + 1 FROM n WHERE i < %d) SELECT 'acct_' || (10000 + i) FROM n"
                    % n)
        # Behind dunning's back: three healthy accounts banned "for non-payment"
        # by a legacy handler (dunning's to lift: drift), two banned for abuse
        # (not dunning's: kept, no drift).
        for i in (17, 1500, 2999):
            platform.place("acct_%d" % (10000 + i), "ban", "non_payment", "legacy-billing")
        for i in (5, 2000):
            platform.place("acct_%d" % (10000 + i), "ban", "abuse", "trust-and-safety")
        before = platform.read_count()
        r, j = scan(dun, cfg, dun.at(1))
        requests = platform.read_count() - before
        bound = math.ceil(n / batch) + 2
        print("scan of %d accounts, batch %d: %d platform requests (bound %d)"
              % (n, batch, requests, bound))
        assert j["accounts"] == n, j
        assert requests <= bound, requests
        assert requests == j["platform"]["requests"], j["platform"]
        assert platform.read_count("single") == 0
        assert j["drifting"] == 3, j
        assert j["classes"]["platform_disagrees"] == 3, j
        assert j["classes"]["stale_restriction_or_ban"] == 3, j
        assert j["platform"]["kept_accounts"] == 2, j
        # --enqueue repairs what dunning owns, and only that.
        run(dun, cfg, "scan", "--enqueue", now=dun.at(1))
        ok(dun, cfg, "work", now=dun.at(1.1))
        deliver(dun, cfg)
        for i in (17, 1500, 2999):
            assert platform.restrictions("acct_%d" % (10000 + i)) == []
        for i in (5, 2000):
            assert platform.restrictions("acct_%d" % (10000 + i))[0]["reason"] == "abuse"
        r, j = scan(dun, cfg, dun.at(1.2))
        assert j["drifting"] == 0 and j["platform"]["kept_accounts"] == 2, j
    finally:
        platform.stop()
