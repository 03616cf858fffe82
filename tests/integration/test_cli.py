"""The `dunning` command as a person uses it.

Every test drives the real binary on a database of its own (``--db`` in
tmp_path) and moves time with ``--now``. Stripe-format events are written by
the tests (see conftest.py: StripeEvents) and fed through ``dunning ingest``,
the same path webhooks take. What the engine did is read back the way a
person would — ``explain --json``, ``emails``, ``events``, ``scan`` — and,
where a property is about the stores themselves (nothing written, each
email once), straight from the SQLite file.

The CLI's payment provider is the built-in simulated one. When a scenario
needs the engine's own provider writes to land (retries, mark
uncollectible, cancel, metadata, the consolidated invoice), the test also
puts the objects into the simulated provider (``dun.provider_knows``), as
Stripe would know them. The last section shows the embedded default
without that help: the simulated provider learns accounts from the ingested
events themselves, and retries, their outcomes and lifts land on time.

Run: /usr/bin/python3 -m pytest tests/integration/test_cli.py -q
(the binary comes from $DUNNING_BUILD_DIR, default build/).
"""

import json
import os
import re
import signal
import time

import pytest

EX_OK, EX_FAIL, EX_USAGE, EX_DATAERR, EX_NOINPUT = 0, 1, 64, 65, 66
EX_CANTCREAT, EX_CONFIG = 73, 78
DAY = 86400


# --------------------------------------------------------------------------
# Scenario helpers


def failing_account(dun, dun_stripe, account, reason="insufficient_funds", provider=True,
                    days=0.0):
    """Ingest one account whose first payment fails; returns the objects.

    With provider, the simulated provider also knows the objects (its card
    keeps failing with the same reason), so retries and bad debt can land.
    """
    evs, objs = dun_stripe.failing_account(account, reason=reason, days=days)
    if provider:
        dun.provider_knows(objs["customer"], behavior=reason)
        dun.provider_knows(objs["subscription"], objs["invoice"], objs["charge"])
    dun.ingest(evs, now=dun.at(days, 60))
    return objs


def healthy_account(dun, dun_stripe, account, days=0.0):
    """Ingest one account whose invoice was paid at the first attempt."""
    cus = dun_stripe.customer(account, days=days)
    sub = dun_stripe.subscription(cus, days=days)
    inv = dun_stripe.invoice(cus, sub, days=days)
    ch = dun_stripe.charge(inv, cus, status="succeeded", days=days)
    paid = dun_stripe.paid(dict(inv, attempt_count=1, attempted=True), days=days)
    dun.provider_knows(cus, behavior="ok")
    dun.provider_knows(sub, paid, ch)
    dun.ingest([dun_stripe.event("customer.created", cus, days),
                dun_stripe.event("customer.subscription.created", sub, days),
                dun_stripe.event("invoice.finalized", inv, days, 1),
                dun_stripe.event("charge.succeeded", ch, days, 2),
                dun_stripe.event("invoice.paid", paid, days, 3)], now=dun.at(days, 60))
    return {"customer": cus, "subscription": sub, "invoice": paid, "charge": ch}


def stage_of(x):
    return x["dunning"]["stage"]


def email_kinds(dun, account):
    return [e["kind"] for e in dun.emails(account)]


def only(items):
    assert len(items) == 1, items
    return items[0]


def bad_debt_account(dun, dun_stripe, account="acct_bd"):
    """An account taken day by day into bad debt by `work`; returns its objects."""
    objs = failing_account(dun, dun_stripe, account)
    for day in (1.1, 7.1, 14.1, 30.1):
        dun.work(now=dun.at(day))
    assert stage_of(dun.explain(account, now=dun.at(30.2))) == "bad_debt"
    return objs


# --------------------------------------------------------------------------
# init, help, usage errors


def test_init_creates_and_is_idempotent(dun):
    r = dun.init()
    m = re.search(r"schema version (\d+)", r.out)
    assert m, r
    version = int(m.group(1))
    assert version >= 1
    assert dun.scalar("PRAGMA user_version") == version
    r2 = dun.init()
    assert "schema version %d" % version in r2.out
    assert dun.scalar("PRAGMA user_version") == version
    # init takes no arguments
    r = dun.expect(EX_USAGE, "init", "extra")
    assert "unexpected argument" in r.err


def test_newer_schema_is_refused(dun):
    dun.init()
    version = dun.scalar("PRAGMA user_version")
    dun.execute("PRAGMA user_version = %d" % (version + 1))
    r = dun.expect(EX_CONFIG, "init")
    assert "newer than this binary" in r.err
    assert "version %d" % (version + 1) in r.err
    assert str(dun.db) in r.err
    assert "upgrade dunning" in r.err
    # Every command that opens the database refuses it the same way.
    r = dun.expect(EX_CONFIG, "events")
    assert "newer than this binary" in r.err
    r = dun.expect(EX_CONFIG, "work")
    assert "newer than this binary" in r.err
    # ... and leaves it alone.
    assert dun.scalar("PRAGMA user_version") == version + 1


def listed_commands(dun):
    r = dun.ok("--help", db=False)
    block = r.out.split("commands:", 1)[1].split("global options", 1)[0]
    names = [line.split()[0] for line in block.splitlines() if line.strip()]
    assert len(names) >= 15, r.out
    return names


def test_help_of_every_command(dun):
    names = listed_commands(dun)
    for expected in ("init", "demo", "recompute", "explain", "scan", "events", "work", "retry",
                     "ingest", "account", "pay-bad-debt", "policy", "rollout", "emails",
                     "simulate"):
        assert expected in names
    for name in names:
        for flag in ("--help", "-h"):
            r = dun.run(name, flag)
            assert r.rc == EX_OK, r
            assert "usage: dunning %s" % name in r.out, r
    # Asking for help never creates a database.
    assert not dun.db.exists()
    assert dun.ok("help", db=False).out.startswith("usage: dunning")
    assert dun.ok("--version", db=False).out.startswith("dunning ")


def test_usage_errors_exit_64(dun):
    r = dun.expect(EX_USAGE, db=False)
    assert "usage: dunning" in r.err
    r = dun.expect(EX_USAGE, "frobnicate")
    assert 'unknown command "frobnicate"' in r.err
    dun.expect(EX_USAGE, "events", "--bogus")
    dun.expect(EX_USAGE, "scan", "--bogus")
    dun.expect(EX_USAGE, "recompute", "--bogus", "acct_1")
    dun.expect(EX_USAGE, "explain")
    r = dun.expect(EX_USAGE, "work", "extra")
    assert "unexpected argument" in r.err
    r = dun.expect(EX_USAGE, "events", "--state", "sleeping")
    assert "unknown state" in r.err
    r = dun.expect(EX_USAGE, "work", now="yesterday-ish")
    assert "--now" in r.err
    r = dun.expect(EX_USAGE, "--db", db=False)
    assert "--db needs a value" in r.err
    r = dun.expect(EX_USAGE, "retry", "abc")
    assert "not an inbox id" in r.err
    dun.expect(EX_USAGE, "policy", "frob")
    dun.expect(EX_USAGE, "rollout", "sideways", "x")
    dun.expect(EX_USAGE, "demo", "--accounts", "0")


# --------------------------------------------------------------------------
# accounts


def account_rows(dun):
    r = dun.ok("account", "list")
    lines = r.out.splitlines()
    assert lines[0].split()[:3] == ["account", "segment", "kill"]
    return {line.split()[0]: line.split() for line in lines[1:]}


def test_account_add_set_list(dun):
    dun.init()
    r = dun.ok("account", "add", "acct_a", "--email", "a@example.com", "--name", "Ada")
    assert "acct_a added" in r.out
    dun.ok("account", "add", "acct_e", "--segment", "enterprise")
    dun.ok("account", "add", "acct_c", "--segment", "contract", "--customer", "cus_c")
    rows = account_rows(dun)
    assert rows["acct_a"][1:5] == ["self_serve", "off", "no", "none"]
    assert rows["acct_e"][1] == "enterprise"
    assert rows["acct_c"][1] == "contract"
    assert dun.scalar("SELECT account_id FROM customers WHERE id = 'cus_c'") == "acct_c"

    r = dun.expect(EX_CANTCREAT, "account", "add", "acct_a")
    assert "exists already" in r.err

    r = dun.ok("account", "set", "acct_a", "--kill-switch", "on")
    assert "recompute queued" in r.out
    assert account_rows(dun)["acct_a"][2] == "on"
    dun.ok("account", "set", "acct_a", "--kill-switch", "off", "--segment", "contract")
    assert account_rows(dun)["acct_a"][1:3] == ["contract", "off"]

    r = dun.expect(EX_USAGE, "account", "add", "acct_x", "--segment", "vip")
    assert 'unknown segment "vip"' in r.err
    assert "self_serve" in r.err
    r = dun.expect(EX_USAGE, "account", "set", "acct_a", "--segment", "vip")
    assert "unknown segment" in r.err
    r = dun.expect(EX_USAGE, "account", "set", "acct_a", "--kill-switch", "maybe")
    assert "on or off" in r.err
    r = dun.expect(EX_NOINPUT, "account", "set", "acct_nobody", "--kill-switch", "on")
    assert "no account" in r.err
    dun.expect(EX_USAGE, "account", "add")
    dun.expect(EX_USAGE, "account", "add", "a", "b")
    dun.expect(EX_USAGE, "account", "add", "x" * 64)
    dun.expect(EX_USAGE, "account", "rename", "acct_a")
    dun.expect(EX_USAGE, "account", "list", "--stage", "bankrupt")
    # Nothing half-written by the refused commands.
    assert sorted(account_rows(dun)) == ["acct_a", "acct_c", "acct_e"]
    # Filter by stage.
    r = dun.ok("account", "list", "--stage", "none")
    assert len(r.out.splitlines()) == 4
    r = dun.ok("account", "list", "--stage", "bad_debt")
    assert len(r.out.splitlines()) == 1


# --------------------------------------------------------------------------
# ingest


def test_soft_decline_notifies_with_payment_failed(dun, dun_stripe):
    dun.init()
    objs = failing_account(dun, dun_stripe, "acct_1", provider=False)
    x = dun.explain("acct_1", now=dun.at(0, 120))
    assert stage_of(x) == "notified"
    assert x["account"]["no_successful_payment"] is True
    assert x["customer"]["id"] == objs["customer"]["id"]
    assert x["platform"] == {"banned": False, "entitlement": "full", "resource_flags": False}
    inv = only(x["invoices"])
    assert inv["id"] == objs["invoice"]["id"]
    assert inv["failing"] is True and inv["hard_decline"] is False
    attempt = only(inv["attempts"])
    assert attempt["decline_code"] == "insufficient_funds"
    assert attempt["decline_class"] == "soft"
    # The next soft retry is a day after the failure.
    assert inv["next_retry_at"] == dun.T0 + DAY
    email = only(x["emails"])
    assert email["kind"] == "payment_failed"
    assert email["state"] == "sent"
    assert email["key"] == "acct_1/email/payment_failed/%s" % objs["invoice"]["id"]
    assert x["plan"] == []
    # Six events, six triggers, one recompute: they were coalesced.
    assert dun.scalar("SELECT COUNT(*) FROM inbox WHERE account_id = 'acct_1'") == 6
    assert only(x["decisions"])["outcome"] == "applied"
    # `emails` lists it, and --show prints the message.
    r = dun.ok("emails")
    assert "payment_failed" in r.out and email["key"] in r.out and "sent" in r.out
    r = dun.ok("emails", "--show", email["key"])
    assert "To: acct_1@example.com" in r.out
    assert "Subject: " in r.out
    assert "20.00" in r.out
    assert "{{" not in r.out
    dun.expect(EX_NOINPUT, "emails", "--show", "acct_1/email/nothing")
    # A second look changes nothing.
    dun.ok("recompute", "acct_1", now=dun.at(0, 180))
    assert len(dun.emails()) == 1


def test_hard_decline_asks_for_a_new_card(dun, dun_stripe):
    dun.init()
    objs = failing_account(dun, dun_stripe, "acct_h", reason="expired_card", provider=False)
    x = dun.explain("acct_h", now=dun.at(0, 120))
    assert stage_of(x) == "notified"
    inv = only(x["invoices"])
    assert inv["hard_decline"] is True
    assert only(inv["attempts"])["decline_class"] == "hard"
    assert email_kinds(dun, "acct_h") == ["card_update_required"]
    assert dun.emails("acct_h")[0]["key"] == \
        "acct_h/email/card_update_required/%s" % objs["invoice"]["id"]
    # A hard decline is never retried on the same card: a day later nothing is due.
    r = dun.work(now=dun.at(1.5))
    assert "processed 0 accounts" in r.out
    x = dun.explain("acct_h", now=dun.at(1.5))
    assert only(x["invoices"])["next_retry_at"] == 0
    assert x["plan"] == []
    assert x["dunning"]["next_recheck_at"] == dun.T0 + 7 * DAY


def test_malformed_lines_are_reported_and_good_lines_land(dun, dun_stripe):
    dun.init()
    evs, objs = dun_stripe.failing_account("acct_m")
    good = [json.dumps(e) for e in evs]
    no_id = dict(evs[2])
    del no_id["id"]
    lines = [good[0],                       # 1
             '{"id": "evt_broken", "type": ',  # 2: malformed JSON
             json.dumps(no_id),             # 3: no id
             good[1], good[2],              # 4, 5
             "",                            # 6: blank lines are skipped
             json.dumps({"id": "evt_x", "type": "invoice.paid", "created": 1}),  # 7: no data
             good[3], good[4], good[5]]     # 8, 9, 10
    r = dun.ingest(None, now=dun.at(0, 60), raw_lines=lines, expect=EX_DATAERR)
    path = r.args[1]
    assert "%s:2:" % path in r.err and "malformed JSON" in r.err
    assert "%s:3:" % path in r.err and '"id"' in r.err
    assert "%s:7:" % path in r.err and "data.object" in r.err
    assert ":6:" not in r.err
    assert "3 rejected" in r.out
    assert "ingested 6 events" in r.out
    # The good lines landed and did their work.
    assert dun.scalar("SELECT COUNT(*) FROM events_raw") == 6
    x = dun.explain("acct_m", now=dun.at(0, 120))
    assert stage_of(x) == "notified"
    assert email_kinds(dun, "acct_m") == ["payment_failed"]
    # A missing file is its own error.
    r = dun.expect(EX_NOINPUT, "ingest", str(dun.workdir / "nope.jsonl"))
    assert "nope.jsonl" in r.err


def test_duplicate_event_is_counted_not_applied(dun, dun_stripe):
    dun.init()
    evs, objs = dun_stripe.failing_account("acct_d")
    r = dun.ingest(evs + [evs[4]], now=dun.at(0, 60))
    assert "ingested 7 events" in r.out
    assert "1 duplicates" in r.out
    r = dun.ingest(evs, now=dun.at(0, 90))
    assert "6 duplicates" in r.out
    assert "0 triggered" in r.out
    # Standard input is read the same way ("-").
    r = dun.ok("ingest", "-", now=dun.at(0, 120),
               stdin="".join(json.dumps(e) + "\n" for e in evs[:2]))
    assert "ingested 2 events" in r.out and "2 duplicates" in r.out
    assert dun.scalar("SELECT COUNT(*) FROM events_raw") == 6
    assert dun.scalar("SELECT COUNT(*) FROM inbox") == 6
    assert len(dun.emails()) == 1


def test_unknown_type_is_acknowledged_without_trigger(dun, dun_stripe):
    dun.init()
    plan = {"id": "plan_basic", "object": "plan", "amount": 2000, "currency": "usd"}
    r = dun.ingest([dun_stripe.event("plan.created", plan)], now=dun.at(0))
    assert "1 ignored types" in r.out
    assert dun.scalar("SELECT outcome FROM events_raw WHERE type = 'plan.created'") == \
        "ignored_type"
    assert dun.scalar("SELECT COUNT(*) FROM inbox") == 0
    # An invoice of a customer nobody mapped to an account: stored, not triggered.
    stray = dun_stripe.customer("acct_ghost")
    del stray["metadata"]["account_id"]
    inv = dun_stripe.invoice(stray)
    r = dun.ingest([dun_stripe.event("invoice.payment_failed", inv)], now=dun.at(0))
    assert "1 unmapped customers" in r.out
    assert dun.scalar("SELECT COUNT(*) FROM inbox") == 0
    assert dun.scalar("SELECT COUNT(*) FROM accounts") == 0


def test_late_older_event_does_not_undo_a_payment(dun, dun_stripe):
    """Stripe delivers out of order: the failure events arrive after the payment."""
    dun.init()
    evs, objs = dun_stripe.failing_account("acct_late")
    paid = dun_stripe.paid(objs["invoice"], days=0.5)
    dun.ingest(evs[:3] + [dun_stripe.event("invoice.paid", paid, days=0.5)], now=dun.at(0.6))
    r = dun.ingest(evs[3:], now=dun.at(0.7))
    x = dun.explain("acct_late", now=dun.at(0.8))
    assert only(x["invoices"])["status"] == "paid"
    assert stage_of(x) == "none"
    assert dun.emails() == []
    assert x["plan"] == []
    # The stale payload was stored as an event but changed nothing in the mirror.
    assert dun.scalar("SELECT COUNT(*) FROM events_raw") == 7
    assert "0 failed" in r.out


# --------------------------------------------------------------------------
# time travel through the stages


def test_time_travel_restricted_suspended_bad_debt(dun, dun_stripe):
    dun.init()
    objs = failing_account(dun, dun_stripe, "acct_t")
    inv_id, sub_id = objs["invoice"]["id"], objs["subscription"]["id"]
    cus_id = objs["customer"]["id"]

    dun.work(now=dun.at(1.1))  # the first retry
    dun.work(now=dun.at(6.9))
    x = dun.explain("acct_t", now=dun.at(6.9))
    assert stage_of(x) == "notified"
    assert x["platform"]["entitlement"] == "full"

    dun.work(now=dun.at(7.1))
    x = dun.explain("acct_t", now=dun.at(7.1))
    assert stage_of(x) == "restricted"
    assert x["platform"]["entitlement"] == "restricted"
    assert x["evaluation"]["days_delinquent"] == 7
    assert any(r["rule"] == "restricted" for r in x["reasons"])
    assert email_kinds(dun, "acct_t") == ["payment_failed", "restricted"]

    dun.work(now=dun.at(14.1))
    x = dun.explain("acct_t", now=dun.at(14.1))
    assert stage_of(x) == "suspended"
    assert x["platform"]["entitlement"] == "suspended"
    assert x["platform"]["banned"] is False
    assert email_kinds(dun, "acct_t")[-1] == "suspended"

    dun.work(now=dun.at(29.9))
    assert stage_of(dun.explain("acct_t", now=dun.at(29.9))) == "suspended"

    dun.work(now=dun.at(30.1))
    x = dun.explain("acct_t", now=dun.at(30.1))
    assert stage_of(x) == "bad_debt"
    assert x["account"]["bad_debt"] is True
    assert x["customer"]["bad_debt"] is True
    assert x["customer"]["provider_metadata_bad_debt"] is True
    assert x["platform"]["banned"] is True
    assert x["platform"]["entitlement"] == "suspended"
    inv = only(x["invoices"])
    assert inv["status"] == "uncollectible"
    assert inv["unresolved_uncollectible"] is True
    assert only(x["subscriptions"]) == {"id": sub_id, "status": "canceled"}
    assert email_kinds(dun, "acct_t")[-1] == "bad_debt"
    episode = only(x["bad_debt_episodes"])
    assert episode["episode"] == 1
    assert episode["amount_minor"] == 2000
    assert episode["exited_at"] == 0
    assert episode["products"] == "prod_pro"  # the product its subscription bills
    assert x["dunning"]["bad_debt_episode_open"] is True
    assert x["plan"] == []
    # The provider was told: uncollectible, the amount on the invoice, the flag on the customer.
    pinv = dun.provider_object(inv_id)
    assert pinv["status"] == "uncollectible"
    assert pinv["metadata"]["bad_debt_amount"] == "2000"
    assert dun.provider_object(cus_id)["metadata"]["bad_debt"] == "true"
    assert dun.provider_object(sub_id)["status"] == "canceled"
    # Every stage change left an outcome event, once.
    stages = [json.loads(p)["to_stage"] for (p,) in
              dun.sql("SELECT payload FROM outcome_events WHERE account_id = 'acct_t' ORDER BY id")]
    assert stages == ["notified", "restricted", "suspended", "bad_debt"]
    # Nothing more to do, and nothing drifts.
    assert "processed 0 accounts" in dun.work(now=dun.at(40)).out
    dun.ok("scan", now=dun.at(40))
    assert len(dun.emails("acct_t")) == 4


def test_failed_upgrade_never_goes_past_restricted(dun, dun_stripe):
    dun.init()
    cus = dun_stripe.customer("acct_up")
    sub = dun_stripe.subscription(cus)
    cycle = dun_stripe.paid(dun_stripe.invoice(cus, sub))
    upgrade = dun_stripe.invoice(cus, sub, billing_reason="subscription_update", amount=700)
    upgrade["attempt_count"] = 1
    charge = dun_stripe.charge(upgrade, cus)
    dun.provider_knows(cus, behavior="insufficient_funds")
    dun.provider_knows(sub, cycle, upgrade, charge)
    dun.ingest([dun_stripe.event("customer.created", cus),
                dun_stripe.event("invoice.paid", cycle, 0, 1),
                dun_stripe.event("charge.failed", charge, 0, 2),
                dun_stripe.event("invoice.payment_failed", upgrade, 0, 3)], now=dun.at(0, 60))
    for day in (1.1, 7.1, 14.1, 30.1, 45):
        dun.work(now=dun.at(day))
    x = dun.explain("acct_up", now=dun.at(45))
    assert stage_of(x) == "restricted"
    assert x["platform"] == {"banned": False, "entitlement": "restricted",
                             "resource_flags": False}
    assert x["account"]["bad_debt"] is False
    assert x["bad_debt_episodes"] == []
    up = [i for i in x["invoices"] if i["id"] == upgrade["id"]][0]
    assert up["upgrade"] is True and up["status"] == "open"
    assert email_kinds(dun, "acct_up") == ["payment_failed", "restricted"]
    assert dun.provider_object(sub["id"])["status"] != "canceled"


def test_invoice_marked_uncollectible_at_the_provider_is_bad_debt_at_once(dun, dun_stripe):
    dun.init()
    objs = failing_account(dun, dun_stripe, "acct_u")
    inv = dict(objs["invoice"], status="uncollectible")
    dun.provider_knows(inv)
    r = dun.ingest([dun_stripe.event("invoice.marked_uncollectible", inv, days=2)],
                   now=dun.at(2))
    assert "0 failed" in r.out
    x = dun.explain("acct_u", now=dun.at(2, 60))
    assert stage_of(x) == "bad_debt"
    assert x["platform"]["banned"] is True
    assert x["account"]["bad_debt"] is True
    episode = only(x["bad_debt_episodes"])
    assert "uncollectible" in episode["reason"]
    assert email_kinds(dun, "acct_u") == ["payment_failed", "bad_debt"]
    assert dun.provider_object(objs["subscription"]["id"])["status"] == "canceled"


def test_bad_debt_email_links_the_pay_bad_debt_page(dun, dun_stripe, tmp_path):
    # Before any consolidated invoice exists, the bad_debt email sends the
    # customer to the user's pay-bad-debt page ([policy] pay_bad_debt_url).
    conf = tmp_path / "dunning.conf"
    conf.write_text("[policy]\npay_bad_debt_url = https://app.example.com/pay?account={account}\n")
    dun.init()
    objs = failing_account(dun, dun_stripe, "acct_link")
    inv = dict(objs["invoice"], status="uncollectible")
    dun.provider_knows(inv)
    events = tmp_path / "late.jsonl"
    events.write_text(json.dumps(dun_stripe.event("invoice.marked_uncollectible", inv, days=2)) + "\n")
    dun.ok("--config", conf, "ingest", events, now=dun.at(2))
    body = dun.scalar("SELECT body FROM emails WHERE kind = 'bad_debt'")
    assert "https://app.example.com/pay?account=acct_link" in body
    # Without the setting the email reads well and sends them to billing.
    r = dun.ok("email", "preview", "bad_debt", "acct_link", now=dun.at(2, 60))
    assert "https://app.example.com" not in r.out


def test_new_card_after_hard_decline_is_tried(dun, dun_stripe):
    dun.init()
    objs = failing_account(dun, dun_stripe, "acct_card", reason="expired_card")
    inv = objs["invoice"]["id"]
    # Nothing is retried on the expired card.
    dun.work(now=dun.at(1.5))
    assert dun.provider_object(inv)["attempt_count"] == 1
    # The customer adds a card that works; Stripe tells us with customer.updated.
    cus = dict(objs["customer"], invoice_settings={"default_payment_method": "pm_fresh"})
    dun.provider_knows(cus, behavior="ok")
    dun.ingest([dun_stripe.event("customer.updated", cus, days=2)], now=dun.at(2))
    assert dun.provider_object(inv)["status"] == "paid"
    assert dun.provider_object(inv)["attempt_count"] == 2
    x = dun.explain("acct_card", now=dun.at(2, 60))
    assert x["customer"]["default_payment_method"] == "pm_fresh"
    assert only(x["invoices"])["status"] == "paid"
    retried = [d for d in x["decisions"]
               if "retry_payment %s attempt=2" % inv in json.dumps(d["plan"])]
    assert retried and retried[0]["trigger_kind"] == "customer_changed"
    # The provider's answer to the retry (invoice.paid) is delivered at once
    # and lifts the account in the same command.
    assert stage_of(x) == "none"


def test_recompute_refused_while_a_worker_holds_the_account(dun, dun_stripe):
    dun.init()
    failing_account(dun, dun_stripe, "acct_busy", provider=False)
    now = dun.at(1, 0)
    # A worker (another process) has claimed a trigger of this account just now.
    dun.execute("INSERT INTO inbox(account_id, kind, source, state, claimed_by, claimed_at,"
                " created_at, updated_at) VALUES ('acct_busy', 'recheck', 'timer',"
                " 'processing', 'worker-7', ?1, ?1, ?1)", (dun.T0 + DAY,))
    # Its claim, live for ten minutes of wall-clock time (leases never follow --now).
    dun.execute("INSERT INTO claims(account_id, owner, token, expires_ms)"
                " VALUES ('acct_busy', 'worker-7', 1, ?1) ON CONFLICT (account_id) DO UPDATE"
                " SET owner = excluded.owner, token = claims.token + 1,"
                " expires_ms = excluded.expires_ms", (int(time.time() * 1000) + 600_000,))
    r = dun.expect(75, "recompute", "acct_busy", now=now)
    assert "being processed by a worker" in r.err
    m = re.search(r"trigger (\d+) is queued", r.err)
    assert m, r
    assert dun.scalar("SELECT state FROM inbox WHERE id = ?", (int(m.group(1)),)) == "received"
    # The dry run is only a read: it works meanwhile.
    dun.ok("recompute", "acct_busy", "--dry-run", now=now)


def test_recompute_dry_run_writes_nothing(dun, dun_stripe):
    dun.init()
    # A hard decline: no retries, so the plan is the stage change alone.
    failing_account(dun, dun_stripe, "acct_r", reason="expired_card")
    before = dun.decisions("acct_r")
    snapshot = dun.sql("SELECT * FROM dunning"), dun.sql("SELECT * FROM platform"), \
        dun.sql("SELECT key, state FROM emails"), dun.sql("SELECT COUNT(*) FROM inbox")
    r = dun.ok("recompute", "acct_r", "--dry-run", now=dun.at(8))
    assert "dry run" in r.out
    assert "notified -> restricted" in r.out
    assert "set_entitlement acct_r restricted" in r.out
    assert "send_email acct_r restricted" in r.out
    assert dun.decisions("acct_r") == before
    assert (dun.sql("SELECT * FROM dunning"), dun.sql("SELECT * FROM platform"),
            dun.sql("SELECT key, state FROM emails"),
            dun.sql("SELECT COUNT(*) FROM inbox")) == snapshot

    r = dun.ok("recompute", "acct_r", now=dun.at(8))
    assert "notified -> restricted" in r.out
    m = re.search(r"decision (\d+)", r.out)
    assert m, r
    assert dun.decisions("acct_r") == before + 1
    row = dun.sql("SELECT trigger_kind, outcome, stage_to FROM decisions WHERE id = ?",
                  (int(m.group(1)),))
    assert row == [("support_recompute", "applied", "restricted")]
    assert stage_of(dun.explain("acct_r", now=dun.at(8))) == "restricted"
    # Its trigger went through the inbox and is done.
    assert dun.scalar("SELECT state FROM inbox WHERE kind = 'support_recompute'") == "done"
    # Again: nothing left to plan.
    r = dun.ok("recompute", "acct_r", now=dun.at(8))
    assert "plan (0)" in r.out
    r = dun.expect(EX_NOINPUT, "recompute", "acct_nobody")
    assert "no account" in r.err
    dun.expect(EX_NOINPUT, "recompute", "acct_nobody", "--dry-run")
    dun.expect(EX_NOINPUT, "explain", "acct_nobody")


# --------------------------------------------------------------------------
# pay-bad-debt


def test_pay_bad_debt_refused_outside_bad_debt(dun, dun_stripe):
    dun.init()
    dun.ok("account", "add", "acct_ok")
    r = dun.expect(EX_FAIL, "pay-bad-debt", "acct_ok")
    assert "not in bad debt" in r.err
    failing_account(dun, dun_stripe, "acct_late")
    r = dun.expect(EX_FAIL, "pay-bad-debt", "acct_late", now=dun.at(10))
    assert "not in bad debt" in r.err
    dun.ok("account", "add", "acct_big", "--segment", "enterprise")
    r = dun.expect(EX_FAIL, "pay-bad-debt", "acct_big")
    assert "not handled by dunning" in r.err
    r = dun.expect(EX_NOINPUT, "pay-bad-debt", "acct_nobody")
    assert "no account" in r.err
    dun.expect(EX_USAGE, "pay-bad-debt")
    # Refusals create nothing at the provider.
    assert dun.scalar("SELECT COUNT(*) FROM decisions WHERE trigger_kind = 'pay_bad_debt'") == 0


def test_pay_bad_debt_then_paid_lifts_everything(dun, dun_stripe):
    dun.init()
    objs = bad_debt_account(dun, dun_stripe, "acct_p")
    orig = objs["invoice"]["id"]

    r = dun.ok("pay-bad-debt", "acct_p", "--json", now=dun.at(31))
    first = json.loads(r.out)
    assert first["created"] is True
    assert first["status"] == "open"
    assert first["covers"] == [orig]
    assert first["amount_due"] == 2000
    assert first["hosted_invoice_url"]
    r = dun.ok("pay-bad-debt", "acct_p", "--json", now=dun.at(31.2))
    again = json.loads(r.out)
    assert again["id"] == first["id"]
    assert again["created"] is False
    r = dun.ok("pay-bad-debt", "acct_p", now=dun.at(31.3))
    assert "existing consolidated invoice %s" % first["id"] in r.out
    assert "pay at: " in r.out
    assert dun.scalar("SELECT COUNT(*) FROM p_invoices WHERE meta_bad_debt_invoices IS NOT NULL"
                      " AND status = 'open'") == 1
    # The account is still in bad debt until it is paid.
    x = dun.explain("acct_p", now=dun.at(31.4))
    assert stage_of(x) == "bad_debt"
    assert x["platform"]["banned"] is True

    # The customer pays the consolidated invoice; its webhook arrives.
    paid = dun_stripe.paid(dun.provider_object(first["id"]), days=31.5)
    dun.provider_knows(paid)
    r = dun.ingest([dun_stripe.event("invoice.paid", paid, days=31.5)], now=dun.at(31.5))
    assert "1 triggered" in r.out and "0 failed" in r.out
    assert dun.scalar("SELECT COUNT(*) FROM inbox WHERE kind = 'bad_debt_paid'") == 1

    x = dun.explain("acct_p", now=dun.at(31.6))
    assert stage_of(x) == "none"
    assert x["platform"] == {"banned": False, "entitlement": "full", "resource_flags": False}
    assert x["account"]["bad_debt"] is False
    assert x["account"]["no_successful_payment"] is False
    assert x["customer"]["bad_debt"] is False
    assert x["customer"]["provider_metadata_bad_debt"] is False
    invs = {i["id"]: i for i in x["invoices"]}
    assert invs[first["id"]]["status"] == "paid"
    original = invs[orig]
    assert original["covered_by_paid"] is True
    assert original["document_closed"] is True
    assert original["paylinks_enabled"] is False
    assert original["display"] == "Paid"
    assert dun.scalar("SELECT meta_bad_debt_paid FROM p_invoices WHERE id = ?", (orig,)) == 1
    assert dun.provider_object(orig)["metadata"]["bad_debt_paid"] == "true"
    episode = only(x["bad_debt_episodes"])
    assert episode["exit_reason"] == "paid"
    assert episode["exited_at"] > 0
    assert email_kinds(dun, "acct_p")[-1] == "resolved"
    assert x["plan"] == []
    lifts = [d for d in x["decisions"]
             if d["trigger_kind"] == "bad_debt_paid" and d["stage_from"] == "bad_debt"]
    assert lifts and lifts[0]["stage_to"] == "none" and lifts[0]["outcome"] == "applied"
    # The text form shows the original as Paid.
    r = dun.ok("explain", "acct_p", now=dun.at(31.6))
    line = only([l for l in r.out.splitlines() if l.strip().startswith(orig)])
    assert "display=Paid" in line
    assert "exited" in r.out and "paid" in r.out
    # After the lifting window, still nothing drifts and nothing is planned.
    dun.work(now=dun.at(33))
    dun.ok("scan", now=dun.at(33))
    assert dun.explain("acct_p", now=dun.at(33))["plan"] == []
    # Once paid, it is no longer something to pay.
    r = dun.expect(EX_FAIL, "pay-bad-debt", "acct_p", now=dun.at(33))
    assert "not in bad debt" in r.err


# --------------------------------------------------------------------------
# who dunning never touches


@pytest.mark.parametrize("segment", ["enterprise", "contract"])
def test_skipped_segments_never_touched(dun, dun_stripe, segment):
    dun.init()
    dun.ok("account", "add", "acct_big", "--segment", segment)
    objs = failing_account(dun, dun_stripe, "acct_big")
    for day in (1.1, 7.1, 14.1, 30.1, 40):
        dun.work(now=dun.at(day))
    x = dun.explain("acct_big", now=dun.at(40))
    assert x["account"]["segment"] == segment
    assert stage_of(x) == "none"
    assert x["evaluation"]["skipped"] is True
    assert x["platform"] == {"banned": False, "entitlement": "full", "resource_flags": False}
    assert x["account"]["bad_debt"] is False
    assert x["plan"] == []
    assert dun.emails("acct_big") == []
    assert only(x["invoices"])["status"] == "open"
    assert dun.provider_object(objs["invoice"]["id"])["attempt_count"] == 1
    # The decision says why.
    assert any(segment in r["text"] for r in x["reasons"]), x["reasons"]
    assert x["decisions"] and all(d["skipped"] == 1 for d in x["decisions"])
    r = dun.ok("explain", "acct_big", now=dun.at(40))
    assert "SKIPPED" in r.out


def test_kill_switch_stops_and_resumes(dun, dun_stripe):
    dun.init()
    dun.ok("account", "add", "acct_k")
    dun.ok("account", "set", "acct_k", "--kill-switch", "on")
    failing_account(dun, dun_stripe, "acct_k", provider=False)
    x = dun.explain("acct_k", now=dun.at(0, 120))
    assert x["evaluation"]["skipped"] is True
    assert any("kill switch" in r["text"] for r in x["reasons"]), x["reasons"]
    assert stage_of(x) == "none"
    assert dun.emails("acct_k") == []
    # Turning it off queues a recompute; the next work acts.
    dun.ok("account", "set", "acct_k", "--kill-switch", "off", now=dun.at(0, 180))
    assert dun.scalar("SELECT COUNT(*) FROM inbox WHERE account_id = 'acct_k'"
                      " AND kind = 'support_recompute' AND state = 'received'") == 1
    dun.work(now=dun.at(0, 240))
    assert stage_of(dun.explain("acct_k", now=dun.at(0, 240))) == "notified"
    assert email_kinds(dun, "acct_k") == ["payment_failed"]


# --------------------------------------------------------------------------
# drift


def test_scan_finds_tampering_and_enqueue_repairs(dun, dun_stripe):
    dun.init()
    healthy_account(dun, dun_stripe, "acct_fine")
    failing_account(dun, dun_stripe, "acct_owes", provider=False)
    dun.ok("account", "add", "acct_new")
    r = dun.ok("scan", now=dun.at(0, 300))
    assert "scanned 3 accounts: 0 drifting" in r.out
    x = dun.explain("acct_fine", now=dun.at(0, 300))
    assert stage_of(x) == "none" and x["customer"]["bad_debt"] is False

    dun.execute("UPDATE accounts SET bad_debt = 1 WHERE id = 'acct_fine'")
    r = dun.expect(EX_FAIL, "scan", "--json", now=dun.at(0, 360))
    scan = json.loads(r.out)
    assert scan["accounts"] == 3
    assert scan["drifting"] == 1
    assert scan["classes"]["stuck_in_bad_debt"] == 1
    assert scan["classes"]["flags_disagree"] == 1
    example = only(scan["examples"])
    assert example["account"] == "acct_fine"
    assert set(example["classes"]) >= {"stuck_in_bad_debt", "flags_disagree"}
    assert scan["enqueued"] == 0
    assert dun.scalar("SELECT COUNT(*) FROM inbox WHERE kind = 'drift_detected'") == 0

    r = dun.expect(EX_FAIL, "scan", "--enqueue", now=dun.at(0, 420))
    assert "queued 1 drift_detected triggers" in r.out
    assert "e.g. acct_fine" in r.out
    dun.work(now=dun.at(0, 480))
    assert dun.scalar("SELECT bad_debt FROM accounts WHERE id = 'acct_fine'") == 0
    assert dun.scalar("SELECT state FROM inbox WHERE kind = 'drift_detected'") == "done"
    r = dun.ok("scan", now=dun.at(0, 540))
    assert "0 drifting" in r.out
    # The repair was an ordinary, recorded decision.
    x = dun.explain("acct_fine", now=dun.at(0, 540))
    assert x["decisions"][0]["trigger_kind"] == "drift_detected"
    assert "set_account_bad_debt" in json.dumps(x["decisions"][0]["plan"])


# --------------------------------------------------------------------------
# the inbox: dead triggers and retry


def test_dead_trigger_is_visible_and_retry_recovers(dun, dun_stripe):
    """The provider refuses a retry (the invoice was voided there and the
    webhook never came): the trigger is dead, visible, and `retry` recovers
    once the missing event is in."""
    dun.init()
    objs = failing_account(dun, dun_stripe, "acct_v")
    voided = dict(objs["invoice"], status="void")
    dun.provider_knows(voided)

    r = dun.work(now=dun.at(1.1), expect=EX_FAIL)
    assert "1 failed" in r.out
    r = dun.ok("events", "--state", "dead")
    assert "dead=1" in r.out
    dead_line = only([l for l in r.out.splitlines() if l.startswith("#")])
    assert "acct_v" in dead_line and "recheck" in dead_line
    assert "not open" in dead_line
    data = json.loads(dun.ok("events", "--state", "dead", "--json").out)
    assert data["counts"]["dead"] == 1
    dead = only(data["events"])
    assert dead["attempts"] == 1
    x = dun.explain("acct_v", now=dun.at(1.1))
    assert only(x["pending_triggers"])["state"] == "dead"
    assert x["decisions"][0]["outcome"] == "failed"

    # Retrying without new information fails the same way (and says so).
    r = dun.expect(EX_FAIL, "retry", now=dun.at(1.2))
    assert "requeued 1 triggers" in r.out
    assert dun.scalar("SELECT state FROM inbox WHERE id = ?", (dead["id"],)) == "dead"

    # The missing webhook arrives; now the retry lifts the account.
    dun.ingest([dun_stripe.event("invoice.voided", voided, days=1.2)], now=dun.at(1.25),
               no_work=True)
    r = dun.ok("retry", str(dead["id"]), now=dun.at(1.3))
    assert "requeued 1 triggers" in r.out
    assert dun.scalar("SELECT state FROM inbox WHERE id = ?", (dead["id"],)) == "done"
    data = json.loads(dun.ok("events", "--json").out)
    assert data["counts"]["dead"] == 0
    assert data["counts"]["retrying"] == 0
    x = dun.explain("acct_v", now=dun.at(1.3))
    assert stage_of(x) == "none"
    assert x["pending_triggers"] == []
    r = dun.expect(EX_OK, "retry", str(dead["id"]), now=dun.at(1.4))
    assert "is not dead or retrying" in r.err


# --------------------------------------------------------------------------
# rollout


def test_rollout_observe_records_and_changes_nothing(dun, dun_stripe):
    dun.init()
    dun.ok("rollout", "mode", "observe")
    assert "mode: observe" in dun.ok("rollout", "show").out
    objs = failing_account(dun, dun_stripe, "acct_o")
    x = dun.explain("acct_o", now=dun.at(0, 120))
    assert x["evaluation"]["mode"] == "observe"
    assert "global mode is observe" in x["evaluation"]["mode_why"]
    # The real stores are untouched; the state shown is the shadow's.
    assert x["view"] == "shadow" and x["real"]["dunning"]["stage"] == "none"
    assert stage_of(x) == "notified"
    assert dun.emails() == []
    assert dun.sql("SELECT * FROM platform") == []
    assert dun.scalar("SELECT COUNT(*) FROM applied") == 0
    # The plan it would apply is in the shadow, on a decision marked observed.
    assert x["plan"] == [] and x["shadow_consequences"], x
    assert x["decisions"][0]["mode"] == "observe"
    assert x["decisions"][0]["outcome"] == "observed"
    assert x["decisions"][0]["n_applied"] == 0
    # A day and a half later a retry is due: observed, planned, not charged.
    before = dun.decisions("acct_o")
    r = dun.ok("recompute", "acct_o", now=dun.at(1.5))
    assert "mode observe" in r.out
    assert "retry_payment %s attempt=2" % objs["invoice"]["id"] in r.out
    assert dun.decisions("acct_o") == before + 1
    assert dun.scalar("SELECT outcome FROM decisions ORDER BY id DESC LIMIT 1") == "observed"
    assert dun.explain("acct_o", now=dun.at(1.5))["real"]["dunning"]["stage"] == "none"
    assert dun.emails() == []
    assert dun.scalar("SELECT COUNT(*) FROM applied") == 0
    assert dun.provider_object(objs["invoice"]["id"])["attempt_count"] == 1
    assert dun.scalar("SELECT COUNT(*) FROM sim_objects WHERE type = 'idempotency_record'") == 0

    # The deny-list keeps one account observed while the rest go active.
    dun.ok("rollout", "mode", "active")
    dun.ok("rollout", "deny", "acct_o")
    r = dun.ok("recompute", "acct_o", now=dun.at(1.5, 60))
    assert "mode observe" in r.out
    assert dun.emails() == []
    dun.ok("rollout", "remove", "acct_o")
    r = dun.ok("recompute", "acct_o", now=dun.at(1.5, 120))
    assert "mode active" in r.out
    assert stage_of(dun.explain("acct_o", now=dun.at(1.5, 120))) == "notified"
    assert dun.provider_object(objs["invoice"]["id"])["attempt_count"] == 2
    assert email_kinds(dun, "acct_o") == ["payment_failed"]


def test_rollout_settings(dun_observe):
    dun = dun_observe
    # A new database is observe at 0%, stored by init.
    assert "observe at 0%" in dun.ok("init").out
    show = dun.ok("rollout", "show").out
    assert "mode: observe" in show and "percent: 0" in show
    assert "gate: closed (no parity report yet" in show
    # Raising the percentage without a parity report is refused, and changes nothing.
    r = dun.expect(EX_FAIL, "rollout", "percent", "12.5")
    assert "no parity report" in r.err and "--force" in r.err
    assert "percent: 0" in dun.ok("rollout", "show").out
    r = dun.ok("rollout", "percent", "12.5", "--force")
    assert "FORCED" in r.out
    dun.ok("rollout", "allow", "acct_vip")
    dun.ok("rollout", "deny", "acct_no")
    show = dun.ok("rollout", "show").out
    assert "percent: 12.5" in show
    assert "allow: acct_vip" in show and "deny: acct_no" in show
    assert "percent 12.5  FORCED" in show  # the override is recorded
    for bad in (["percent", "150"], ["percent", "-1"], ["percent", "lots"], ["percent", ""],
                ["percent", "nan"], ["mode", "sideways"], ["percent", "5", "--forse"]):
        dun.expect(EX_USAGE, "rollout", *bad)
    dun.expect(EX_USAGE, "rollout", "allow")
    assert "percent: 12.5" in dun.ok("rollout", "show").out
    # percent 0 (a rollback: always allowed): outside the lists is observed.
    dun.ok("rollout", "percent", "0")
    dun.ok("account", "add", "acct_vip")
    dun.ok("account", "add", "acct_plain")
    # The global mode is still observe: even the allow-list is observed.
    assert dun.explain("acct_vip")["evaluation"]["mode"] == "observe"
    # `mode active` turns on the allow-list and nothing else.
    dun.ok("rollout", "mode", "active")
    assert dun.explain("acct_vip")["evaluation"]["mode"] == "active"
    assert dun.explain("acct_plain")["evaluation"]["mode"] == "observe"
    dun.expect(EX_FAIL, "rollout", "percent", "100")
    assert dun.explain("acct_plain")["evaluation"]["mode"] == "observe"
    dun.ok("rollout", "percent", "100", "--force")
    assert dun.explain("acct_plain")["evaluation"]["mode"] == "active"


def test_new_database_observes_and_writes_nothing(dun_observe, dun_stripe):
    dun = dun_observe
    # Only init (and serve, demo) create a database: a mistyped --db is refused.
    r = dun.expect(EX_NOINPUT, "rollout", "show")
    assert "init" in r.err
    # A database without a rollout row (one the service created, or an
    # older one) observes at 0%.
    dun.ok("init")
    dun.execute("DELETE FROM settings WHERE key IN ('mode', 'rollout.percent')")
    show = dun.ok("rollout", "show").out
    assert "mode: observe (nothing stored yet" in show and "percent: 0" in show
    failing_account(dun, dun_stripe, "acct_new")
    r = dun.ok("recompute", "acct_new", now=dun.at(20))
    assert "mode observe" in r.out, r.out
    assert dun.emails() == []
    assert dun.sql("SELECT * FROM platform") == []
    assert dun.scalar("SELECT COUNT(*) FROM applied") == 0
    # init on that database stores the safe default explicitly.
    assert "observe at 0%" in dun.ok("init").out
    assert dun.scalar("SELECT value FROM settings WHERE key = 'mode'") == "observe"


def test_config_rollout_disagreeing_with_the_database_is_one_loud_answer(dun_observe):
    dun = dun_observe
    dun.ok("init")
    conf = dun.write("d.conf", "[database]\npath = %s\n[rollout]\nmode = active\n" % dun.db)
    for args in (["work"], ["recompute", "acct_x"], ["config", "check"], ["rollout", "show"]):
        r = dun.run("--config", conf, *args, db=False)
        assert r.rc == EX_CONFIG, r
        assert "[rollout] mode = active, but the database says observe" in r.err, r
    # Agreeing is fine, and config check says where the truth is.
    conf = dun.write("e.conf", "[database]\npath = %s\n[rollout]\nmode = observe\n"
                     "percent = 0\n" % dun.db)
    r = dun.ok("--config", conf, "config", "check", db=False)
    assert "observe at 0% (held by the database; [rollout] agrees)" in r.out


# --------------------------------------------------------------------------
# policy files and simulation


def test_policy_check_names_file_line_and_key(dun):
    bad = dun.write("bad.conf", "[stages]\nrestricted_after = 7d\nsuspended_after = seven\n")
    r = dun.expect(EX_CONFIG, "policy", "check", bad, db=False)
    assert "%s:3:" % bad in r.err
    assert "[stages] suspended_after" in r.err
    assert '"seven"' in r.err
    order = dun.write("order.conf", "[stages]\nrestricted_after = 7d\nsuspended_after = 5d\n")
    r = dun.expect(EX_CONFIG, "policy", "check", order, db=False)
    assert "%s:3:" % order in r.err and "longer than restricted_after" in r.err
    typo = dun.write("typo.conf", "[stage]\nrestricted_after = 7d\n")
    r = dun.expect(EX_CONFIG, "policy", "check", typo, db=False)
    assert "%s:1:" % typo in r.err and "unknown section" in r.err
    r = dun.expect(EX_CONFIG, "policy", "check", dun.workdir / "missing.conf", db=False)
    assert "missing.conf" in r.err
    good = dun.write("good.conf", "[stages]\nrestricted_after = 3d\n")
    assert "ok" in dun.ok("policy", "check", good, db=False).out
    # The shipped default file is valid, and `policy show` is itself a valid file.
    dun.ok("policy", "check", dun.repo / "policy" / "default.conf", db=False)
    shown = dun.write("shown.conf", dun.ok("policy", "show", good, db=False).out)
    assert "restricted_after = 3d" in shown.read_text()
    dun.ok("policy", "check", shown, db=False)
    # A broken --policy stops every command that needs it, before anything is written.
    r = dun.expect(EX_CONFIG, "work", policy=bad)
    assert "%s:3:" % bad in r.err
    assert not dun.db.exists() or dun.scalar("SELECT COUNT(*) FROM decisions") == 0


def parse_simulate(out):
    rows = {}
    for line in out.splitlines():
        m = re.match(r"^\s{2}(\S.*?)\s{2,}(-?[\d.]+)(?:\s+(-?[\d.]+)\s+([+-][\d.]+))?\s*$", line)
        if m:
            rows[m.group(1)] = [float(v) for v in m.groups()[1:] if v is not None]
    return rows


def test_simulate_compares_two_policies(dun):
    strict = dun.write("strict.conf", "[stages]\nrestricted_after = 3d\nsuspended_after = 6d\n"
                       "bad_debt_after = 12d\n")
    r = dun.ok("simulate", "--accounts", "200", "--days", "30", "--compare", strict, db=False)
    assert "simulated 200 accounts for 30 days" in r.out
    assert "policy A" in r.out and "policy B" in r.out and "B - A" in r.out
    assert "B = %s" % strict in r.out
    rows = parse_simulate(r.out)
    for name in ("accounts none", "accounts bad_debt", "recovered (USD)", "emails sent",
                 "bad-debt entries", "payment retries"):
        assert name in rows, (name, r.out)
        a, b, diff = rows[name]
        assert abs((b - a) - diff) < 0.011, (name, rows[name])
    stages = ["accounts none", "accounts notified", "accounts restricted",
              "accounts suspended", "accounts bad_debt"]
    assert sum(rows[s][0] for s in stages) == 200
    assert sum(rows[s][1] for s in stages) == 200
    # Bad debt after 12 days instead of 30: more of it within 30 days.
    assert rows["bad-debt entries"][1] > rows["bad-debt entries"][0]
    # The same run again gives the same numbers (seeded).
    r2 = dun.ok("simulate", "--accounts", "200", "--days", "30", "--compare", strict, db=False)
    assert r2.out == r.out
    # Without --compare: one column. A broken file: exit 78 before anything runs.
    one = dun.ok("simulate", "--accounts", "50", "--days", "10", db=False)
    assert "policy B" not in one.out
    broken = dun.write("broken.conf", "[retries]\nmax_attempts = 0\n")
    r = dun.expect(EX_CONFIG, "simulate", "--compare", broken, db=False)
    assert "%s:2:" % broken in r.err


def test_demo_runs_clean_and_protects_other_databases(dun):
    demo_db = dun.workdir / "demo.db"
    r = dun.ok("--db", demo_db, "demo", "--accounts", "150", "--days", "35", db=False)
    assert "OK: no drift" in r.out
    assert "drift scan: 150 accounts, 0 drifting" in r.out
    assert "second recompute plans 0 consequences" in r.out
    # A demo database is replaced by the next demo run.
    r = dun.ok("--db", demo_db, "demo", "--accounts", "20", "--days", "3", db=False)
    assert "OK: no drift" in r.out
    # Anything else is refused, untouched.
    dun.init()
    dun.ok("account", "add", "acct_real")
    r = dun.expect(EX_CANTCREAT, "demo", "--accounts", "10", "--days", "2")
    assert "is not a demo database" in r.err
    assert dun.scalar("SELECT COUNT(*) FROM accounts") == 1


# --------------------------------------------------------------------------
# crash safety: kill -9 in the middle of `work`


def test_kill_minus_9_mid_work_then_restart(dun, dun_stripe):
    n_accounts = 300
    dun.init()
    events = []
    for i in range(n_accounts):
        evs, _ = dun_stripe.failing_account("acct_%03d" % i)
        events += evs
    dun.ingest(events, now=dun.at(0, 60), no_work=True)
    assert dun.scalar("SELECT COUNT(*) FROM inbox WHERE state = 'received'") == len(events)

    now = dun.at(0, 120)
    proc = dun.popen("work", now=now)
    # Kill it once it is well into the work (about 0.2 s here), never before it started.
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and proc.poll() is None:
        if (dun.scalar("SELECT COUNT(*) FROM decisions") or 0) >= 10:
            break
        time.sleep(0.002)
    assert proc.poll() is None, "work finished before it could be killed; raise n_accounts"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=10)
    assert proc.returncode == -signal.SIGKILL
    done = dun.scalar("SELECT COUNT(*) FROM inbox WHERE state = 'done'")
    assert done < len(events), "the kill came too late to interrupt anything"

    # Restart at once: everything the dead worker had not claimed is processed.
    dun.work(now=now)
    # The dead worker's claims come back when their lease expires.
    later = dun.at(0, 120 + 301)
    dun.work(now=later)
    states = dict(dun.sql("SELECT state, COUNT(*) FROM inbox GROUP BY state"))
    assert states == {"done": len(events)}, states

    # Each email key exactly once, all sent; one payment_failed per account.
    emails = dun.sql("SELECT key, state, account_id, kind FROM emails")
    assert len(emails) == n_accounts
    assert len({k for k, _, _, _ in emails}) == len(emails)
    assert {s for _, s, _, _ in emails} == {"sent"}
    assert {k for _, _, _, k in emails} == {"payment_failed"}
    assert len({a for _, _, a, _ in emails}) == n_accounts
    # No once-consequence applied twice, none left failed; every account notified.
    assert dun.sql("SELECT key FROM applied GROUP BY key HAVING COUNT(*) > 1") == []
    assert dun.sql("SELECT key, error FROM applied WHERE outcome <> 'applied'") == []
    assert dun.scalar("SELECT COUNT(*) FROM outcome_events") == n_accounts
    assert dun.scalar("SELECT COUNT(*) FROM dunning WHERE stage = 'notified'") == n_accounts
    # And the stores agree with the policy.
    r = dun.ok("scan", "--json", now=later)
    assert json.loads(r.out)["drifting"] == 0
    assert "processed 0 accounts" in dun.work(now=later).out


# --------------------------------------------------------------------------
# The embedded default on its own: ingested accounts, retries and their outcomes


def test_ingest_only_account_reaches_bad_debt(dun, dun_stripe):
    dun.init()
    failing_account(dun, dun_stripe, "acct_readme", provider=False)
    for day in (1.1, 7.1, 14.1, 30.1):
        dun.run("work", now=dun.at(day))
    x = dun.explain("acct_readme", now=dun.at(31))
    assert stage_of(x) == "bad_debt"
    assert x["pending_triggers"] == []


def test_soft_decline_retried_on_schedule(dun, dun_stripe):
    dun.init()
    objs = failing_account(dun, dun_stripe, "acct_retry")
    inv = objs["invoice"]["id"]
    for day in (1.1, 3.1, 5.1, 7.1):
        dun.work(now=dun.at(day))
    assert dun.provider_object(inv)["attempt_count"] == 5


def test_repeated_recompute_does_not_charge_twice(dun, dun_stripe):
    dun.init()
    objs = failing_account(dun, dun_stripe, "acct_twice")
    inv = objs["invoice"]["id"]
    dun.ok("recompute", "acct_twice", now=dun.at(8))
    assert dun.provider_object(inv)["attempt_count"] == 2
    dun.ok("recompute", "acct_twice", now=dun.at(8, 30))
    assert dun.provider_object(inv)["attempt_count"] == 2


def test_new_card_payment_lifts_at_once(dun, dun_stripe):
    dun.init()
    objs = failing_account(dun, dun_stripe, "acct_card", reason="expired_card")
    cus = dict(objs["customer"], invoice_settings={"default_payment_method": "pm_fresh"})
    dun.provider_knows(cus, behavior="ok")
    dun.ingest([dun_stripe.event("customer.updated", cus, days=2)], now=dun.at(2))
    dun.work(now=dun.at(2, 60))
    x = dun.explain("acct_card", now=dun.at(2, 120))
    assert stage_of(x) == "none"
    assert x["account"]["no_successful_payment"] is False
