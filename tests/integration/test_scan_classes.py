"""The drift scan names every drift a recompute would repair.

Three kinds of drift the scan once reported as `drifting: 0` although a
recompute would change something (`planned_consequences` above 0): an
original invoice's document reopened by a generic sync after its
consolidated invoice was paid, resource flags re-added to a banned (bad
debt) account, and a bad-debt account's subscription made active again at
the provider. Each is counted under a class by `scan`, queued by
`scan --enqueue`, repaired by `work`, and the next scan is clean. An
account whose plan is not empty always has a class (`other` at worst, with
the consequence types in the example).

Uses the conftest fixtures (`dun`, `dun_stripe`); both backends.
"""

import json

from conftest import EX_FAIL
from test_cli import bad_debt_account, failing_account, stage_of


def scan_json(dun, now, *extra):
    r = dun.run("scan", "--json", *extra, now=now)
    assert r.rc in (0, 1), r
    return r, json.loads(r.out)


def repaired(dun, account, now, now2, klass):
    """scan counts the account under klass, --enqueue + work repair it."""
    r, scan = scan_json(dun, now)
    assert r.rc == EX_FAIL, r
    assert scan["drifting"] == 1, scan
    assert scan["classes"][klass] == 1, scan
    assert scan["planned_consequences"] > 0
    ex = scan["examples"][0]
    assert ex["account"] == account and klass in ex["classes"], ex
    assert dun.scalar("SELECT COUNT(*) FROM inbox WHERE kind = 'drift_detected'") == 0
    r = dun.expect(EX_FAIL, "scan", "--enqueue", now=now)
    assert "queued 1 drift_detected triggers" in r.out, r.out
    dun.work(now=now2)
    assert dun.scalar("SELECT state FROM inbox WHERE kind = 'drift_detected'") == "done"
    r, scan = scan_json(dun, now2)
    assert r.rc == 0 and scan["drifting"] == 0 and scan["planned_consequences"] == 0, scan
    return ex


def test_resource_flags_readded_to_a_banned_account(dun, dun_stripe):
    dun.init()
    bad_debt_account(dun, dun_stripe, "acct_rf")
    dun.work(now=dun.at(30.3))
    _, scan = scan_json(dun, dun.at(30.3))
    assert scan["drifting"] == 0, scan
    assert dun.explain("acct_rf", now=dun.at(30.3))["platform"]["banned"] is True
    # An admin sync puts the resource flags back behind the engine's back.
    dun.execute("INSERT INTO platform(account_id, resource_flags) VALUES ('acct_rf', 3)"
                " ON CONFLICT(account_id) DO UPDATE SET resource_flags = 3")
    ex = repaired(dun, "acct_rf", dun.at(30.4), dun.at(30.5), "platform_disagrees")
    assert "remove_resource_flags" in ex["consequences"], ex
    assert dun.scalar("SELECT resource_flags FROM platform WHERE account_id = 'acct_rf'") == 0


def test_bad_debt_subscription_made_active_again(dun, dun_stripe):
    dun.init()
    objs = bad_debt_account(dun, dun_stripe, "acct_sub")
    dun.work(now=dun.at(30.3))
    sub = objs["subscription"]["id"]
    assert dun.scalar("SELECT status FROM p_subscriptions WHERE id = ?", (sub,)) == "canceled"
    # Someone reactivates it at the provider; the webhook lands in the mirror.
    dun.execute("UPDATE p_subscriptions SET status = 'active' WHERE id = ?", (sub,))
    dun.provider_knows(dict(objs["subscription"], status="active"))
    ex = repaired(dun, "acct_sub", dun.at(30.4), dun.at(30.5), "live_subscription")
    assert "cancel_subscription" in ex["consequences"], ex
    assert dun.scalar("SELECT status FROM p_subscriptions WHERE id = ?", (sub,)) == "canceled"


def test_reopened_original_document(dun, dun_stripe):
    dun.init()
    objs = bad_debt_account(dun, dun_stripe, "acct_doc")
    orig = objs["invoice"]["id"]
    first = json.loads(dun.ok("pay-bad-debt", "acct_doc", "--json", now=dun.at(31)).out)
    paid = dun_stripe.paid(dun.provider_object(first["id"]), days=31.5)
    dun.provider_knows(paid)
    dun.ingest([dun_stripe.event("invoice.paid", paid, days=31.5)], now=dun.at(31.5))
    dun.work(now=dun.at(33))
    x = dun.explain("acct_doc", now=dun.at(33))
    assert stage_of(x) == "none"
    assert {i["id"]: i for i in x["invoices"]}[orig]["document_closed"] is True
    _, scan = scan_json(dun, dun.at(33))
    assert scan["drifting"] == 0, scan
    # A generic sync reopens the original's document and its paylinks.
    dun.execute("UPDATE invoice_docs SET closed = 0, paylinks_enabled = 1 WHERE invoice_id = ?",
                (orig,))
    ex = repaired(dun, "acct_doc", dun.at(33.1), dun.at(33.2), "invoice_documents")
    assert {"close_invoice_document", "disable_paylinks"} <= set(ex["consequences"]), ex
    assert dun.sql("SELECT closed, paylinks_enabled FROM invoice_docs WHERE invoice_id = ?",
                   (orig,)) == [(1, 0)]


def test_any_planned_consequence_is_drift_under_other(dun, dun_stripe):
    """A plan no named class explains is still drift: `other`, with its types."""
    dun.init()
    failing_account(dun, dun_stripe, "acct_o")
    dun.work(now=dun.at(1.1))
    _, scan = scan_json(dun, dun.at(1.2))
    assert scan["drifting"] == 0, scan
    # The engine's timer lost (a restore from an old backup, say): nothing
    # would ever wake the account up again.
    dun.execute("UPDATE dunning SET next_recheck_at = 0 WHERE account_id = 'acct_o'")
    ex = repaired(dun, "acct_o", dun.at(1.2), dun.at(1.3), "other")
    assert ex["classes"] == ["other"], ex
    assert ex["consequences"] == ["schedule_recheck"], ex
    assert dun.scalar("SELECT next_recheck_at FROM dunning WHERE account_id = 'acct_o'") > 0
