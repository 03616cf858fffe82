"""`dunning report bad-debt` and `dunning report recovery` over the known
scenario of metrics_scenario.py: the reports' figures match what the
scenario did, what /metrics says, and each other's formats (text, JSON, CSV).
"""

import csv
import io
import json

import pytest

from conftest import EX_USAGE
from metrics_scenario import (EXPECTED_RECOVERY, SCENARIO_DAY, ServeOver, build, family,
                              parse_metrics, value)


@pytest.fixture
def scenario(dun, dun_stripe):
    build(dun, dun_stripe)
    return dun


def test_bad_debt_report_lists_who_entered_why_and_how_they_left(scenario):
    dun = scenario
    now = dun.at(SCENARIO_DAY)
    rep = json.loads(dun.ok("report", "bad-debt", "--since", "2026-03-01", "--json",
                            now=now).out)
    eps = {e["account"]: e for e in rep["episodes"]}
    assert set(eps) == {"acct_paybd", "acct_wo"}
    paybd, wo = eps["acct_paybd"], eps["acct_wo"]
    assert paybd["reason"] == wo["reason"] == "days_past_due"
    assert "oldest failing invoice" in paybd["reason_text"]
    assert paybd["amount_minor"] == 4000 and wo["amount_minor"] == 5000
    assert paybd["currency"] == wo["currency"] == "usd"
    assert paybd["exit_reason"] == "paid" and paybd["exited_at"]
    assert wo["exit_reason"] is None and wo["exited_at"] is None
    # products: those of the subscription the account was billed for
    products = dun.scalar("SELECT s.products FROM p_subscriptions s JOIN customers c ON"
                          " c.id = s.customer_id WHERE c.account_id = 'acct_wo'")
    assert products == "prod_pro"
    assert wo["products"] in ("prod_pro", ["prod_pro"]), wo["products"]
    # how long they stayed: the episode's own times; the open one up to now
    row = dun.sql("SELECT entered_at, exited_at FROM bad_debt_episodes"
                  " WHERE account_id = 'acct_paybd'")[0]
    assert paybd["stayed_s"] == row[1] - row[0]
    entered_wo = dun.scalar("SELECT entered_at FROM bad_debt_episodes"
                            " WHERE account_id = 'acct_wo'")
    assert wo["stayed_s"] == dun.T0 + SCENARIO_DAY * dun.DAY - entered_wo
    s = rep["summary"]
    assert s["entered"] == 2 and s["exited"] == 1 and s["still_in"] == 1
    assert s["by_reason"]["days_past_due"] == 2
    assert s["by_exit_reason"] == {"paid": 1}
    assert s["mean_stay_of_exited_s"] == paybd["stayed_s"]

    # a window after the entries holds nothing
    later = json.loads(dun.ok("report", "bad-debt", "--since", dun.at(31), "--json",
                              now=now).out)
    assert later["episodes"] == [] and later["summary"]["entered"] == 0

    # CSV: the same rows
    rows = list(csv.DictReader(io.StringIO(dun.ok("report", "bad-debt", "--csv",
                                                  now=now).out)))
    assert {r["account"] for r in rows} == {"acct_paybd", "acct_wo"}
    by = {r["account"]: r for r in rows}
    assert by["acct_paybd"]["exit_reason"] == "paid"
    assert by["acct_wo"]["amount_minor"] == "5000"
    assert by["acct_wo"]["exited_at"] == ""

    # text: a table and the summary line
    out = dun.ok("report", "bad-debt", now=now).out
    assert "acct_paybd" in out and "acct_wo" in out and "(still in)" in out
    assert "2 entered" in out and "1 left (paid 1)" in out and "1 still in bad debt" in out


def test_recovery_report_by_week_matches_the_scenario_and_metrics(scenario, tmp_path):
    dun = scenario
    now = dun.at(SCENARIO_DAY)
    rep = json.loads(dun.ok("report", "recovery", "--json", now=now).out)
    # every invoice first failed on day 0, Monday 2 March 2026: one week
    assert [w["week"] for w in rep["weeks"]] == ["2026-03-02"]
    week = rep["weeks"][0]
    assert week["currency"] == "usd"
    assert week["failed"] == 4
    assert week["failed_minor"] == 2000 + 3000 + 4000 + 5000
    for outcome, (n, minor) in EXPECTED_RECOVERY.items():
        assert week["invoices"][outcome] == n, outcome
        assert week["amount_minor"][outcome] == minor, outcome
    assert rep["totals"] == [{k: v for k, v in week.items() if k != "week"}]

    # /metrics over the same database says the same
    srv = ServeOver(dun, tmp_path, dun.at(SCENARIO_DAY, 60))
    try:
        m = parse_metrics(srv.metrics())
    finally:
        assert srv.stop() == 0
    for outcome, n in week["invoices"].items():
        assert value(m, "dunning_failed_invoices", outcome=outcome, currency="usd") == n
    rec = family(m, "dunning_recovered_minor")
    for how, minor in rec.items():
        assert week["amount_minor"][dict(how)["how"]] == minor
    assert value(m, "dunning_written_off_minor", currency="usd") == \
        week["amount_minor"]["written_off"]

    # CSV and text carry the same figures
    rows = list(csv.DictReader(io.StringIO(dun.ok("report", "recovery", "--csv",
                                                  now=now).out)))
    assert len(rows) == 1 and rows[0]["week"] == "2026-03-02"
    assert rows[0]["retry"] == "1" and rows[0]["card_update"] == "1"
    assert rows[0]["pay_bad_debt_minor"] == "4000" and rows[0]["written_off_minor"] == "5000"
    out = dun.ok("report", "recovery", now=now).out
    line = [l for l in out.splitlines() if l.startswith("2026-03-02")]
    assert len(line) == 1 and "75%" in line[0], out  # 3 of 4 recovered

    # a window before the failures holds none
    empty = json.loads(dun.ok("report", "recovery", "--until", "2026-03-01", "--json",
                              now=now).out)
    assert empty == {"weeks": [], "totals": []}


def test_report_refuses_bad_input(dun):
    dun.init()
    r = dun.expect(EX_USAGE, "report")
    assert "usage" in r.err
    r = dun.expect(EX_USAGE, "report", "money")
    assert "unknown report" in r.err
    r = dun.expect(EX_USAGE, "report", "bad-debt", "--since", "yesterday")
    assert "cannot read" in r.err
    r = dun.expect(EX_USAGE, "report", "recovery", "--json", "--csv")
    assert "exclude" in r.err
    r = dun.expect(EX_USAGE, "report", "recovery", "--since", "2026-03-02", "--until",
                   "2026-03-01")
    assert "after" in r.err
    r = dun.expect(EX_USAGE, "report", "bad-debt", "extra")
    assert "unexpected" in r.err
    assert "bad-debt" in dun.ok("report", "--help").out
