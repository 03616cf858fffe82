"""Correct under a misbehaving Stripe: the same end state as a fault-free run.

A month of dunning for a population of accounts is run twice against the
Stripe test server: once without faults, once with about 20% of the
engine's Stripe requests failing — 429, 500 before executing, 500 AFTER
executing (Stripe stores that answer under the key), 503, connections
dropped before and after executing. Every account must end in exactly the
state of the fault-free run (engine stores and Stripe's objects), no effect
may be executed twice (charges per invoice, objects and events created at
the test server), every failure must be visible as `retrying` while it
lasts, and nothing may end dead.

Kept small for CI (DUNNING_FAULT_ACCOUNTS, default 18 accounts); set it to a
few hundred for the full run.
"""
import json
import os
import subprocess
import time
import urllib.error
from collections import Counter

from test_stripe_client import (API_KEY, DAY, DUNNING, fake, make_env,  # noqa: F401
                                fake_server)

N_ACCOUNTS = int(os.environ.get("DUNNING_FAULT_ACCOUNTS", "18"))
STEP_DAYS = [0, 1, 2, 3, 5, 7, 8, 10, 14, 15, 21, 31, 32]
SLICE_S = 300  # retries are due within [inbox] backoff_max_s = 300

# Not /v1/events: that is the test harness reading what to deliver.
ENGINE_PATHS = r"^/v1/(?!events)"
FAULTS = [
    {"status": 429, "retry_after": None},
    {"status": 500},
    {"status": 500, "phase": "after"},
    {"status": 503, "retry_after": None},
    {"drop": True},
    {"drop": True, "phase": "after"},
]
P_EACH = 0.037  # six faults in turn: 1 - (1 - 0.037)^6 = about 20% of requests


def run(env, *args, now, rc=None):
    p = subprocess.run([str(DUNNING), "--config", str(env.cfg), "--now", str(now)] + list(args),
                       capture_output=True, text=True, timeout=300,
                       env=dict(os.environ, STRIPE_API_KEY=""))
    if rc is not None:
        assert p.returncode == rc, (args, p.returncode, p.stdout, p.stderr[-3000:])
    return p


def seed(fake, n):
    """Three kinds of account: a retry succeeds; soft declines for ever (bad
    debt at 30 days); a hard decline (no retries, a card update asked)."""
    customers, subs, invoices = [], [], []
    for i in range(n):
        a = "acct_%03d" % i
        card = (["insufficient_funds", "ok"], "insufficient_funds", "expired_card")[i % 3]
        customers.append({"id": "cus_%03d" % i, "email": a + "@example.com", "name": a,
                          "metadata": {"account_id": a}, "card": card})
        subs.append({"id": "sub_%03d" % i, "customer": "cus_%03d" % i, "status": "past_due"})
        invoices.append({"id": "in_%03d" % i, "customer": "cus_%03d" % i,
                         "subscription": "sub_%03d" % i, "amount_due": 1000 + i,
                         "attempts": [card if isinstance(card, str) else card[0]]})
    fake.seed(customers=customers, subscriptions=subs, invoices=invoices, events=True)


def list_all(fake, path):
    """Every object of a list, page by page; the harness waits out the test
    server's rate limit as any client must."""
    items, after = [], None
    while True:
        q = path + "?limit=100" + ("&starting_after=" + after if after else "")
        try:
            page = fake.api("GET", q)
        except urllib.error.HTTPError as e:
            if e.code != 429:
                raise
            time.sleep(1.0)
            continue
        items += page["data"]
        if not page["has_more"]:
            return items
        after = page["data"][-1]["id"]


def deliver_new_events(env, fake, seen, now):
    """Every event not delivered yet, oldest first, as Stripe's webhooks would."""
    events = list_all(fake, "/v1/events")
    new = [e for e in reversed(events) if e["id"] not in seen]
    if not new:
        return
    seen.update(e["id"] for e in new)
    path = env.dir / "events.jsonl"
    path.write_text("".join(json.dumps(e) + "\n" for e in new))
    run(env, "ingest", str(path), "--no-work", now=now, rc=0)


def month(tmp_path, fake, faults, make_env):
    fake.ctl("POST", "/_test/reset")
    fake.config(api_key=API_KEY)
    t0 = fake.now()
    fake.ctl("POST", "/_test/clock", {"now": t0})
    seed(fake, N_ACCOUNTS)
    tmp_path.mkdir(parents=True, exist_ok=True)
    env = make_env(tmp_path)
    env.write_config(max_retries=1, timeout_ms=5000)
    with open(env.cfg, "a") as f:
        f.write("[inbox]\nmax_attempts = 60\nbackoff_base_s = 30\nbackoff_max_s = %d\n" % SLICE_S)
    if faults:
        fake.ctl("POST", "/_test/faults", {"faults": [
            dict(f, path_regex=ENGINE_PATHS, count=-1, probability=P_EACH, seed=k)
            for k, f in enumerate(FAULTS)]})
    seen, retrying_seen, failed_runs = set(), 0, 0
    for day in STEP_DAYS:
        for k in range(40):
            now = t0 + day * DAY + k * SLICE_S
            fake.ctl("POST", "/_test/clock", {"now": now})
            deliver_new_events(env, fake, seen, now)
            w = run(env, "work", now=now)
            assert w.returncode in (0, 1), (w.stdout, w.stderr[-3000:])
            failed_runs += w.returncode == 1
            pending = env.sql("SELECT state, last_error FROM inbox"
                              " WHERE state IN ('received', 'retrying', 'processing', 'dead')")
            assert all(st != "dead" for st, _e in pending), pending
            # A failure is visible while it lasts: retrying, with its reason.
            for st, err in pending:
                assert st == "retrying" and err, pending
            retrying_seen += len(pending)
            if not pending and k > 0:
                break
        else:
            raise AssertionError("triggers still retrying after 40 slices on day %d" % day)
    fake.ctl("DELETE", "/_test/faults")
    return env, fake_end_state(env, fake), (retrying_seen, failed_runs)


def fake_end_state(env, fake):
    accounts = {}
    for i in range(N_ACCOUNTS):
        a = "acct_%03d" % i
        inv = fake.obj("in_%03d" % i)
        sub = fake.obj("sub_%03d" % i)
        cus = fake.obj("cus_%03d" % i)
        [(stage,)] = env.sql("SELECT stage FROM dunning WHERE account_id = ?", a) or [("none",)]
        accounts[a] = {
            "stage": stage,
            "emails": sorted(k for (k,) in env.sql(
                "SELECT kind FROM emails WHERE account_id = ?", a)),
            "platform": env.sql("SELECT banned, entitlement FROM platform WHERE account_id = ?", a),
            "account_bad_debt": env.sql("SELECT bad_debt FROM accounts WHERE id = ?", a),
            "invoice": (inv["status"], inv["attempt_count"], inv.get("metadata", {})),
            "subscription": sub["status"],
            "customer_metadata": cus.get("metadata", {}),
        }
    stats = fake.stats()
    charges = Counter(o["customer"] for o in list_all(fake, "/v1/charges"))
    return {"accounts": accounts, "objects": stats["objects"], "events": stats["events"],
            "charges_per_customer": dict(charges)}


def test_twenty_percent_stripe_faults_end_in_the_fault_free_state(tmp_path, fake, make_env):
    _env, clean, _ = month(tmp_path / "clean", fake, False, make_env)
    stages = Counter(a["stage"] for a in clean["accounts"].values())
    assert stages["bad_debt"] and stages["none"], stages  # the scenario reaches both ends
    _env, faulty, (retrying_seen, failed_runs) = month(tmp_path / "faulty", fake, True, make_env)
    # The faults did bite: recomputes failed and were retried.
    assert failed_runs > 0 and retrying_seen > 0
    for a in clean["accounts"]:
        assert faulty["accounts"][a] == clean["accounts"][a], a
    # Nothing executed twice: the same charges, objects and events at Stripe.
    assert faulty["charges_per_customer"] == clean["charges_per_customer"]
    assert (faulty["objects"], faulty["events"]) == (clean["objects"], clean["events"])
