"""/metrics over a known scenario (metrics_scenario.py): the figures equal
what the scenario did and what the database holds, on both backends.

A figure that is read from the database at scrape time is checked twice:
against the number the scenario was built to produce, and against a count
this test makes itself with SQL (so a metric that drifts from its table, or
a scenario that stops producing what it says, both fail).
"""

import re
import subprocess
import urllib.error
import urllib.request

import pytest

from conftest import DUN_BINARY
from metrics_scenario import (EXPECTED_RECOVERY, SCENARIO_DAY, ServeOver, build, family,
                              parse_metrics, value)


@pytest.fixture
def scenario(dun, dun_stripe, tmp_path):
    scan = build(dun, dun_stripe)
    srv = ServeOver(dun, tmp_path, dun.at(SCENARIO_DAY, 3600))
    try:
        yield dun, scan, srv
    finally:
        assert srv.stop() == 0, srv.logs()[-3000:]


def test_metric_values_equal_the_scenario_and_the_database(scenario):
    dun, scan, srv = scenario
    m = parse_metrics(srv.metrics())
    assert value(m, "dunning_metrics_database_ok") == 1

    # Drift: the last recorded scan, per class, and its age (the clock is
    # fixed an hour after the scan).
    assert value(m, "dunning_drift_scan_recorded") == 1
    assert scan["classes"]["stuck_in_bad_debt"] == 1
    assert scan["classes"]["flags_disagree"] == 1
    for cls, n in scan["classes"].items():
        assert value(m, "dunning_drift_accounts", **{"class": cls}) == n, cls
        assert dun.scalar("SELECT c.accounts FROM drift_scan_classes c JOIN drift_scans s"
                          " ON s.id = c.scan_id WHERE c.class = ? ORDER BY s.id DESC LIMIT 1",
                          (cls,)) == n
    assert value(m, "dunning_drift_drifting_accounts") == scan["drifting"] == 1, scan["examples"]
    assert value(m, "dunning_drift_scanned_accounts") == scan["accounts"] == 5
    assert value(m, "dunning_drift_scan_age_seconds") == 3600
    assert value(m, "dunning_drift_scan_timestamp_seconds") == dun.T0 + SCENARIO_DAY * dun.DAY

    # Bad debt: two entries (days past due), one exit (paid), its duration.
    assert value(m, "dunning_bad_debt_entries_total", reason="days_past_due") == 2
    assert sum(family(m, "dunning_bad_debt_entries_total").values()) == \
        dun.scalar("SELECT COUNT(*) FROM bad_debt_episodes") == 2
    assert value(m, "dunning_bad_debt_exits_total", exit_reason="paid") == 1
    assert sum(family(m, "dunning_bad_debt_exits_total").values()) == \
        dun.scalar("SELECT COUNT(*) FROM bad_debt_episodes WHERE exited_at > 0") == 1
    stayed = dun.scalar("SELECT exited_at - entered_at FROM bad_debt_episodes"
                        " WHERE account_id = 'acct_paybd'")
    assert 0 < stayed < 3 * dun.DAY
    # By product (the subscriptions' items): both episodes involve prod_pro.
    assert dun.sql("SELECT products FROM bad_debt_episodes") == [("prod_pro",), ("prod_pro",)]
    assert family(m, "dunning_bad_debt_product_entries_total") == {
        frozenset({("product", "prod_pro")}): 2}
    assert family(m, "dunning_bad_debt_product_exits_total") == {
        frozenset({("product", "prod_pro")}): 1}
    assert value(m, "dunning_bad_debt_duration_seconds_count") == 1
    assert value(m, "dunning_bad_debt_duration_seconds_sum") == stayed
    assert value(m, "dunning_bad_debt_duration_seconds_bucket", le="86400") == \
        (1 if stayed <= 86400 else 0)
    assert value(m, "dunning_bad_debt_duration_seconds_bucket", le="259200") == 1
    assert value(m, "dunning_bad_debt_duration_seconds_bucket", le="+Inf") == 1
    assert value(m, "dunning_bad_debt_episodes_open") == 1

    # Money: per outcome, in minor units, usd.
    for outcome, (n, minor) in EXPECTED_RECOVERY.items():
        assert value(m, "dunning_failed_invoices", outcome=outcome, currency="usd") == n, outcome
    assert value(m, "dunning_invoices_failed_total", currency="usd") == 4 == dun.scalar(
        "SELECT COUNT(DISTINCT invoice_id) FROM p_attempts WHERE status = 'failed'")
    for how in ("retry", "card_update", "pay_bad_debt"):
        assert value(m, "dunning_recovered_minor", how=how, currency="usd") == \
            EXPECTED_RECOVERY[how][1], how
    assert value(m, "dunning_written_off_minor", currency="usd") == 5000
    assert value(m, "dunning_outstanding_minor", currency="usd") == 0
    # what was recovered by pay-bad-debt is what the paid consolidated invoice collected
    assert dun.scalar("SELECT SUM(amount_paid) FROM p_invoices WHERE status = 'paid'"
                      " AND meta_bad_debt_invoices IS NOT NULL") == 4000

    # Emails by kind and state, decisions by trigger, mode and outcome: the tables' counts.
    emails = family(m, "dunning_emails")
    rows = dun.sql("SELECT kind, state, COUNT(*) FROM emails GROUP BY kind, state")
    assert rows and len(emails) == len(rows)
    for kind, state, n in rows:
        assert emails[frozenset({("kind", kind), ("state", state)})] == n
    assert sum(v for k, v in emails.items() if ("kind", "bad_debt") in k) == 2
    decisions = family(m, "dunning_decisions_total")
    rows = dun.sql("SELECT trigger_kind, mode, outcome, COUNT(*) FROM decisions"
                   " GROUP BY trigger_kind, mode, outcome")
    assert len(decisions) == len(rows)
    for trigger, mode, outcome, n in rows:
        assert decisions[frozenset({("trigger", trigger or "none"), ("mode", mode),
                                    ("outcome", outcome)})] == n
    assert sum(v for k, v in decisions.items() if ("trigger", "bad_debt_paid") in k) >= 1

    # Retries: every attempt after a failed one on the same invoice, by result.
    retries = family(m, "dunning_payment_retries_total")
    attempts = dun.sql("SELECT invoice_id, status FROM p_attempts ORDER BY invoice_id,"
                       " created, id")
    expect = {"failed": 0, "succeeded": 0, "processing": 0}
    for i in range(1, len(attempts)):
        if attempts[i][0] == attempts[i - 1][0] and attempts[i - 1][1] == "failed":
            expect[attempts[i][1]] += 1
    for result, n in expect.items():
        assert retries[frozenset({("decline_class", "soft"), ("result", result)})] + \
            retries[frozenset({("decline_class", "hard"), ("result", result)})] == n, result
    # insufficient_funds is a soft decline: the two successful payments after it are soft
    assert retries[frozenset({("decline_class", "soft"), ("result", "succeeded")})] == 2


def test_every_sample_is_well_formed_and_named_with_units(scenario):
    _, _, srv = scenario
    before = parse_metrics(srv.metrics())
    assert value(before, "dunning_webhook_duration_seconds_count") == 0
    # a webhook delivery (refused: this service has no secret) is timed
    req = urllib.request.Request("http://127.0.0.1:%d/webhooks/stripe" % srv.port,
                                 data=b"{}", method="POST")
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(req, timeout=30)
    assert refused.value.code == 503
    text = srv.metrics()
    after = parse_metrics(text)
    assert value(after, "dunning_webhook_duration_seconds_count") == 1
    assert value(after, "dunning_webhook_duration_seconds_bucket", le="+Inf") == 1
    parse_metrics(text)  # fails on a malformed line or a sample given twice
    types = {}
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split(" ")
            assert name not in types, "family twice: " + name
            types[name] = kind
    assert types, text
    for name, kind in types.items():
        assert name.startswith("dunning_"), name
        if kind == "counter":
            assert name.endswith("_total"), name
        for unit in ("_seconds", "_minor", "_bytes", "_ratio"):
            if unit in name:
                assert name.endswith(unit) or name.endswith(unit + "_total"), name


def _unescape(v):
    return re.sub(r"\\(.)", lambda m: "\n" if m.group(1) == "n" else m.group(1), v)


def _accounts(samples, name):
    """{account id (unescaped): {other labels: value}} of one per-account family."""
    out = {}
    for labels, v in family(samples, name).items():
        d = {k: _unescape(x) for k, x in labels}
        out.setdefault(d.pop("account_id"), {})[frozenset(d.items())] = v
    return out


def test_account_series_are_bounded_by_the_limit_and_escaped(dun, dun_stripe, tmp_path):
    build(dun, dun_stripe)
    # Three more accounts outside the current stage, all in it longer than
    # acct_wo (day 30), with ids the text format must escape.
    quoted, backslash, newline = 'acct "quoted"', "acct\\back", "acct\nline"
    for i, (acct, stage) in enumerate(((quoted, "notified"), (backslash, "restricted"),
                                       (newline, "suspended"))):
        dun.execute("INSERT INTO dunning (account_id, stage, since) VALUES (?, ?, ?)",
                    (acct, stage, dun.T0 + (i + 1) * dun.DAY))
    # quoted owes 700 eur on an open invoice with a payment in flight; backslash
    # has its kill switch on
    dun.execute("INSERT INTO customers (id, account_id) VALUES ('cus_quoted', ?)", (quoted,))
    # (account_id written as the mirror writes it: schema migration 18)
    dun.execute("INSERT INTO p_invoices (id, customer_id, status, amount_due, amount_remaining,"
                " currency, account_id) VALUES ('in_quoted', 'cus_quoted', 'open', 700, 700,"
                " 'eur', ?)", (quoted,))
    dun.execute("INSERT INTO p_attempts (id, invoice_id, status, account_id) VALUES"
                " ('py_quoted', 'in_quoted', 'processing', ?)", (quoted,))
    dun.execute("INSERT INTO accounts (id, kill_switch) VALUES (?, 1)", (backslash,))
    # and 130 more, newer than acct_wo, owing 100 + i cents each: more than
    # one batch of ids for the held and owed queries
    bulk = ["acct_bulk_%03d" % i for i in range(130)]
    for i, acct in enumerate(bulk):
        dun.execute("INSERT INTO dunning (account_id, stage, since) VALUES (?, 'notified', ?)",
                    (acct, dun.T0 + 31 * dun.DAY + i))
        dun.execute("INSERT INTO customers (id, account_id) VALUES (?, ?)", ("cus_b%03d" % i, acct))
        dun.execute("INSERT INTO p_invoices (id, customer_id, status, amount_due,"
                    " amount_remaining, currency, account_id) VALUES (?, ?, 'open', ?, ?,"
                    " 'usd', ?)", ("in_b%03d" % i, "cus_b%03d" % i, 100 + i, 100 + i, acct))
    outside = dun.scalar("SELECT COUNT(*) FROM dunning WHERE stage <> 'none'")
    assert outside == 4 + len(bulk)
    now = dun.at(SCENARIO_DAY, 3600)

    def scrape(limit):
        (tmp_path / "serve-metrics.port").unlink(missing_ok=True)
        srv = ServeOver(dun, tmp_path, now,
                        extra_conf="" if limit is None else
                        "[metrics]\naccount_series_limit = %d\n" % limit)
        try:
            text = srv.metrics()
        finally:
            assert srv.stop() == 0, srv.logs()[-3000:]
        assert "acct\nline" not in text  # one sample per line, whatever the id
        return parse_metrics(text)

    # The limit keeps the accounts longest in their stage.
    m = scrape(2)
    stages = _accounts(m, "dunning_account_stage")
    assert stages == {quoted: {frozenset({("stage", "notified")}): 1},
                      backslash: {frozenset({("stage", "restricted")}): 1}}, stages
    assert value(m, "dunning_account_series_limit") == 2
    assert value(m, "dunning_account_series_omitted") == outside - 2
    ages = _accounts(m, "dunning_account_stage_age_seconds")
    assert ages[quoted] == {frozenset(): dun.T0 + SCENARIO_DAY * dun.DAY + 3600 -
                            (dun.T0 + dun.DAY)}
    held = _accounts(m, "dunning_account_held")
    assert held == {
        quoted: {frozenset({("reason", "kill_switch")}): 0,
                 frozenset({("reason", "payment_processing")}): 1},
        backslash: {frozenset({("reason", "kill_switch")}): 1,
                    frozenset({("reason", "payment_processing")}): 0}}, held
    assert _accounts(m, "dunning_account_owed_minor") == {
        quoted: {frozenset({("currency", "eur")}): 700}}
    assert value(m, "dunning_metrics_database_ok") == 1

    # The default limit holds them all; acct_wo owes its written-off invoice.
    m = scrape(None)
    stages = _accounts(m, "dunning_account_stage")
    assert set(stages) == {quoted, backslash, newline, "acct_wo"} | set(bulk)
    assert stages["acct_wo"] == {frozenset({("stage", "bad_debt")}): 1}
    assert value(m, "dunning_account_series_limit") == 1000
    assert value(m, "dunning_account_series_omitted") == 0
    owed = _accounts(m, "dunning_account_owed_minor")
    assert owed["acct_wo"] == {frozenset({("currency", "usd")}): 5000}
    assert {a: v for a, v in owed.items() if a in bulk} == \
        {a: {frozenset({("currency", "usd")}): 100 + i} for i, a in enumerate(bulk)}
    assert len(_accounts(m, "dunning_account_held")) == outside

    # A limit inside the bulk: the oldest 70 (the four, then the first 66).
    m = scrape(70)
    kept = {quoted, backslash, newline, "acct_wo"} | set(bulk[:66])
    assert set(_accounts(m, "dunning_account_stage")) == kept
    assert set(_accounts(m, "dunning_account_stage_age_seconds")) == kept
    assert set(_accounts(m, "dunning_account_held")) == kept
    assert set(_accounts(m, "dunning_account_owed_minor")) == {quoted, "acct_wo"} | set(bulk[:66])
    assert value(m, "dunning_account_series_omitted") == outside - 70

    # 0: no account has series of its own, all are counted as omitted.
    m = scrape(0)
    for name in ("dunning_account_stage", "dunning_account_stage_age_seconds",
                 "dunning_account_held", "dunning_account_owed_minor"):
        assert not family(m, name), name
    assert value(m, "dunning_account_series_limit") == 0
    assert value(m, "dunning_account_series_omitted") == outside


@pytest.mark.parametrize("limit, ok", [("0", True), ("100000", True), ("-1", False),
                                       ("100001", False), ("lots", False)])
def test_account_series_limit_is_checked(tmp_path, limit, ok):
    conf = tmp_path / "limit.conf"
    conf.write_text("[database]\npath = %s\n[metrics]\naccount_series_limit = %s\n"
                    % (tmp_path / "none.db", limit))
    r = subprocess.run([str(DUN_BINARY), "config", "check", str(conf)], capture_output=True,
                       text=True, timeout=60)
    if ok:
        assert r.returncode == 0, r.stderr
    else:
        assert r.returncode == 78, r.stderr
        assert "[metrics] account_series_limit: expected a whole number from 0 to 100000" \
            in r.stderr, r.stderr
