"""The processing hold ends: a payment whose outcome webhook is lost.

An account's payment fails on day 0; on day 0.5 the customer's bank debit
starts (payment_intent.processing) and the webhook with its outcome never
arrives. The in-flight guard holds the stage — no escalation, no retry —
but only for [guard] processing_max (7 days by default, docs/policy.md):

* on day 7 the account would be restricted and is held (explain says why,
  and a recheck is scheduled for the moment the hold ends);
* on day 7.5 the payment has been in flight for 7 days: it counts as
  failed and the account is restricted, without a payment retry;
* `/metrics` of `dunning serve` shows the held account by hold age while it
  lasts, and past processing_max once the hold has ended;
* a `charge.failed` for the held payment intent releases the hold at once;
* with the Stripe provider (against tests/integration/fake_stripe.py), a
  payment in flight for [guard] processing_recheck_after (3 days) is read
  again from Stripe at the next recompute, and the hold ends when Stripe
  says the payment is no longer processing.

Uses the conftest fixtures (`dun`, `dun_stripe`); servers on 127.0.0.1.
"""

import json
import subprocess
import time
import urllib.request

from conftest import DUN_BINARY, EX_OK


def processing_events(st, objs, days):
    """payment_intent.processing for the invoice's payment intent."""
    inv, cus = objs["invoice"], objs["customer"]
    pi = {"id": inv["payment_intent"], "object": "payment_intent", "status": "processing",
          "invoice": inv["id"], "customer": cus["id"], "amount": inv["amount_remaining"],
          "created": st.t(days),
          "payment_method": cus["invoice_settings"]["default_payment_method"]}
    inv2 = dict(inv, attempt_count=2)
    return [st.event("payment_intent.processing", pi, days),
            st.event("invoice.updated", inv2, days, 1)]


def held_account(dun, st, acct="acct_h"):
    evs, objs = st.failing_account(acct)
    dun.init()
    dun.provider_knows(objs["customer"], objs["subscription"], objs["invoice"],
                       behavior="insufficient_funds")
    dun.ingest(evs, now=dun.at(0, 10))
    assert dun.explain(acct, now=dun.at(0, 20))["dunning"]["stage"] == "notified"
    dun.ingest(processing_events(st, objs, 0.5), now=dun.at(0.5, 10))
    return objs


def retries(dun):
    return dun.scalar("SELECT COUNT(*) FROM applied WHERE type = 'retry_payment'")


def metrics_at(dun, now):
    """Start `dunning serve` with the clock at now, scrape /metrics, stop it."""
    port_file = dun.workdir / "serve.port"
    if port_file.exists():
        port_file.unlink()
    conf = dun.write("serve.conf", "[server]\nlisten = 127.0.0.1:0\n[database]\npath = %s\n"
                     % dun.db)
    proc = subprocess.Popen([str(DUN_BINARY), "--now", now, "serve", "--config", str(conf),
                             "--port-file", str(port_file)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=dun.env(),
                            cwd=dun.workdir)
    try:
        deadline = time.time() + 15
        while not (port_file.exists() and port_file.read_text().endswith("\n")):
            assert proc.poll() is None, proc.stdout.read()
            assert time.time() < deadline, "serve did not start"
            time.sleep(0.02)
        port = int(port_file.read_text())
        with urllib.request.urlopen("http://127.0.0.1:%d/metrics" % port, timeout=10) as r:
            text = r.read().decode()
    finally:
        proc.terminate()
        proc.wait(30)
    gauges = {}
    for line in text.splitlines():
        if line.startswith("dunning_accounts_payment_processing"):
            name, value = line.rsplit(" ", 1)
            gauges[name] = int(value)
    return gauges


def test_lost_outcome_webhook_hold_ends(dun, dun_stripe):
    held_account(dun, dun_stripe)
    # Day 5: a payment in flight, nothing escalates, nothing is retried.
    dun.work(now=dun.at(5))
    e = dun.explain("acct_h", now=dun.at(5))
    assert e["dunning"]["stage"] == "notified"
    assert retries(dun) == 0
    # Day 7: restricted by the calendar, held by the payment in flight; the
    # recheck is set for the end of the hold (day 0.5 + 7d).
    dun.work(now=dun.at(7))
    e = dun.explain("acct_h", now=dun.at(7))
    assert e["dunning"]["stage"] == "notified", e
    assert e["evaluation"]["held"] is True
    assert any("a payment is processing for 6d 12h of at most 7d" in r["text"]
               for r in e["reasons"]), e["reasons"]
    assert e["dunning"]["next_recheck_at"] == dun.T0 + int(7.5 * dun.DAY)
    g = metrics_at(dun, dun.at(7))
    assert g['dunning_accounts_payment_processing{age="3d_7d"}'] == 1, g
    assert g["dunning_accounts_payment_processing_past_max"] == 0, g
    # Day 7.5: the hold has ended; the payment counts as failed.
    dun.work(now=dun.at(7.5))
    e = dun.explain("acct_h", now=dun.at(7.5))
    assert e["dunning"]["stage"] == "restricted", e
    assert e["platform"]["entitlement"] == "restricted"
    assert any("counted as failed" in r["text"] for r in e["reasons"]), e["reasons"]
    assert retries(dun) == 0  # the payment may still land: never charged twice
    g = metrics_at(dun, dun.at(7.5))
    assert g['dunning_accounts_payment_processing{age="ge_7d"}'] == 1, g
    assert g["dunning_accounts_payment_processing_past_max"] == 1, g


def test_charge_failed_releases_the_hold_at_once(dun, dun_stripe):
    objs = held_account(dun, dun_stripe)
    dun.work(now=dun.at(7))
    assert dun.explain("acct_h", now=dun.at(7))["evaluation"]["held"] is True
    # The debit fails: Stripe sends charge.failed for the same payment intent
    # (the payment_intent.payment_failed webhook is lost).
    ch = dun_stripe.charge(objs["invoice"], objs["customer"], days=7.1)
    dun.ingest([dun_stripe.event("charge.failed", ch, 7.1)], now=dun.at(7.1))
    e = dun.explain("acct_h", now=dun.at(7.1))
    assert e["dunning"]["stage"] == "restricted", e
    assert e["evaluation"]["held"] is False
    assert dun.scalar("SELECT COUNT(*) FROM p_attempts WHERE status = 'processing'") == 0
    g = metrics_at(dun, dun.at(7.1))
    assert sum(v for k, v in g.items() if k.endswith("}")) == 0, g


def test_processing_max_from_the_policy_file(dun, dun_stripe):
    policy = dun.write("p.conf", "[guard]\nprocessing_max = 0s\n")
    r = dun.run("policy", "check", policy)
    assert r.rc == EX_OK, r
    # With 0s the old rule: the payment in flight holds however long.
    evs, objs = dun_stripe.failing_account("acct_z")
    dun.init()
    dun.provider_knows(objs["customer"], objs["subscription"], objs["invoice"],
                       behavior="insufficient_funds")
    dun.expect(EX_OK, "ingest", dun.write("e1.jsonl", "".join(
        json.dumps(x) + "\n" for x in evs)), now=dun.at(0, 10), policy=policy)
    dun.expect(EX_OK, "ingest", dun.write("e2.jsonl", "".join(
        json.dumps(x) + "\n" for x in processing_events(dun_stripe, objs, 0.5))),
        now=dun.at(0.5, 10), policy=policy)
    dun.expect(EX_OK, "work", now=dun.at(20), policy=policy)
    assert dun.explain("acct_z", now=dun.at(20))["dunning"]["stage"] == "notified"
    bad = dun.write("bad.conf", "[guard]\nprocessing_max = soon\n")
    r = dun.run("policy", "check", bad)
    assert r.rc != EX_OK and "processing_max" in r.err, r


# ---- the re-read from the provider (Stripe, against the fake) -------------------

from test_stripe_client import (DAY, basil_failing_account, make_env,  # noqa: E402,F401
                                fake, fake_server, ingest_fake_events)


def put_processing_marker(env, pi, inv, created):
    """What payment_intent.processing left in the mirror; its outcome webhook is lost."""
    env.sql("INSERT INTO p_attempts(id, invoice_id, payment_intent, created, status,"
            " version, account_id) VALUES (?, ?, ?, ?, 'processing', ?,"
            " COALESCE((SELECT account_id FROM p_invoices WHERE id = ?), ''))",
            pi + ":processing", inv, pi, created, created, inv)


def test_a_payment_in_flight_is_read_again_after_processing_recheck_after(tmp_path, fake, make_env):
    env = make_env(tmp_path)
    inv, first = basil_failing_account(fake, declines=("insufficient_funds",))
    ingest_fake_events(env, fake)
    [pi] = [ip["payment"]["payment_intent"] for ip in
            fake.api("GET", "/v1/invoice_payments?invoice=" + inv)["data"]]
    now = fake.now()
    # The mirror heard payment_intent.processing a day ago; the webhooks with
    # the outcome were lost. Below processing_recheck_after (3d) nothing is
    # read: the payment holds.
    put_processing_marker(env, pi, inv, now - 1 * DAY)
    fake.clear_requests()
    env.run("recompute", "acct_A")
    assert fake.requests() == []
    assert env.sql("SELECT COUNT(*) FROM p_attempts WHERE status = 'processing'") == [(1,)]
    x = json.loads(env.run("explain", "acct_A", "--json").stdout)
    assert x["invoices"][0]["processing"] is True, json.dumps(x["invoices"], indent=1)
    # In flight for four days: the recompute reads the payment again. Stripe
    # says it failed; the hold is over and dunning starts on the real outcome.
    env.sql("UPDATE p_attempts SET created = ?1, version = ?1 WHERE status = 'processing'",
            now - 4 * DAY)
    fake.clear_requests()
    env.run("recompute", "acct_A")
    reads = [r["path"] for r in fake.requests() if r["method"] == "GET"]
    assert "/v1/invoices/" + inv in reads, reads
    assert env.sql("SELECT COUNT(*) FROM p_attempts WHERE status = 'processing'") == [(0,)]
    assert env.sql("SELECT status FROM p_attempts WHERE payment_intent = ?", pi) == [("failed",)]
    assert env.sql("SELECT stage FROM dunning WHERE account_id = 'acct_A'") == [("notified",)]
