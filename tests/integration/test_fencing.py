"""Claims and fencing: two processes never apply for one account.

A `dunning work` drain claims a batch of accounts, then stalls (SIGSTOP,
as a long GC pause, a swapped-out VM or a stuck disk would stall it) in
the middle of a recompute. Its claims run out (`[inbox] lease_s`, timed by
the wall clock); a second drain takes the accounts over and works them.
When the first one wakes up, every write it still wants to make is refused
by the fence: the Stripe test server sees each write once, each account
has one decision that applied anything, and nothing is left stuck.

Also: a process whose `--now` is far in the future cannot take the live
claims of a process beside it (leases never follow the settable clock).

Runs the real binary against the Stripe test server on 127.0.0.1.
"""
import os
import signal
import subprocess
import time
from collections import defaultdict

from test_stripe_client import (DUNNING, Env, basil_failing_account,  # noqa: F401
                                env, fake, fake_server, ingest_fake_events)

LEASE_S = 5


def lease_config(env):
    env.write_config()
    with open(env.cfg, "a") as f:
        f.write("[inbox]\nlease_s = %d\n" % LEASE_S)


def popen(env, *args, now=None):
    cmd = [str(DUNNING), "--config", str(env.cfg)]
    if now is not None:
        cmd += ["--now", str(now)]
    return subprocess.Popen(cmd + list(args), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=dict(os.environ, STRIPE_API_KEY=""))


def wait_for_request(fake, path_regex, method, timeout=60):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if fake.requests(path_regex=path_regex, method=method):
            return
        time.sleep(0.02)
    raise AssertionError("no %s %s reached the test server" % (method, path_regex))


def stripe_writes(fake):
    """Executed POSTs (not replays of a key) by path: {path: [keys]}."""
    writes = defaultdict(list)
    for r in fake.requests(method="POST"):
        if r.get("replayed") or r.get("dropped") or (r.get("status") or 0) >= 400:
            continue
        writes[r["path"]].append(r["headers"]["Idempotency-Key"])
    return writes


def applied_decisions(env):
    return env.sql("SELECT account_id, COUNT(*) FROM decisions WHERE n_applied > 0"
                   " GROUP BY account_id ORDER BY account_id")


def test_a_stalled_drain_writes_nothing_after_its_accounts_were_taken_over(env, fake):
    lease_config(env)
    accounts = ["acct_F%d" % i for i in range(5)]
    for a in accounts:
        basil_failing_account(fake, account=a)
    ingest_fake_events(env, fake)
    # Both drains work 40 days later: bad debt, with writes to Stripe (mark
    # uncollectible, cancel the subscription, the customer's metadata). A's
    # first write for F0 is slow, once: A is stopped while it is on the wire,
    # with F0's plan half applied and the claims of all five accounts.
    fake.fault(path_regex="^/v1/invoices/in_acct_F0/", method="POST", latency_ms=1500, count=1)
    fake.clear_requests()
    later = fake.now() + 40 * 86400
    a = popen(env, "work", now=later)
    try:
        wait_for_request(fake, "^/v1/invoices/in_acct_F0/", "POST")
        os.kill(a.pid, signal.SIGSTOP)
        held = env.sql("SELECT COUNT(*) FROM claims WHERE expires_ms > 0")
        assert held == [(len(accounts),)], held
        time.sleep(LEASE_S + 1.5)  # A's claims run out while it is stopped
        env.run("work", rc=0, now=later)
    finally:
        os.kill(a.pid, signal.SIGCONT)
    out_a, err_a = a.communicate(timeout=120)

    # A noticed and stopped: every account it still held was somebody else's.
    assert "worker.claim_lost" in err_a, err_a[-3000:]
    # B applied every account. A's F0 write that was on the wire when it
    # stopped went out under the same key as B's (a replay at Stripe); A
    # folded and recorded nothing of it, and applied nothing more.
    applied = env.sql("SELECT account_id, outcome FROM decisions WHERE n_applied > 0"
                      " ORDER BY account_id")
    assert applied == [(acct, "applied") for acct in accounts], env.sql(
        "SELECT account_id, outcome, n_applied, error FROM decisions ORDER BY id")
    refused = env.sql("SELECT account_id, outcome, error FROM decisions"
                      " WHERE error LIKE '%claim%'")
    assert [(acct, outcome) for acct, outcome, _e in refused] == [("acct_F0", "failed")], refused
    # Every write reached Stripe under one key.
    writes = stripe_writes(fake)
    assert any("/mark_uncollectible" in p for p in writes), writes
    twice = {p: k for p, k in writes.items() if len(set(k)) > 1}
    assert not twice, twice
    # Nothing left in processing, no claim held.
    assert env.sql("SELECT COUNT(*) FROM inbox WHERE state = 'processing'") == [(0,)]
    assert env.sql("SELECT COUNT(*) FROM claims WHERE expires_ms > 0") == [(0,)]
    # And the stores agree with the policy.
    scan = subprocess.run([str(DUNNING), "--config", str(env.cfg), "--now", str(later), "scan"],
                          capture_output=True, text=True, env=dict(os.environ, STRIPE_API_KEY=""))
    assert "0 drifting" in scan.stdout, (scan.stdout, env.run("explain", "acct_F0", now=later).stdout)


def test_a_future_now_cannot_take_live_claims(env, fake):
    lease_config(env)
    basil_failing_account(fake, account="acct_N")
    ingest_fake_events(env, fake)
    fake.fault(path_regex="^/v1/invoices/in_acct_N$", method="GET", latency_ms=1500, count=1)
    fake.clear_requests()
    a = popen(env, "work")
    try:
        wait_for_request(fake, "^/v1/invoices/in_acct_N$", "GET")
        os.kill(a.pid, signal.SIGSTOP)
        # A week ahead on the settable clock, but the claim is timed by the
        # wall clock and A renewed it a moment ago: B must leave it alone.
        b = env.run("recompute", "acct_N", rc=75, now=fake.now() + 7 * 86400)
        assert "being processed by a worker" in b.stderr, b.stderr
        w = env.run("work", now=fake.now() + 7 * 86400)
        [(owner,)] = env.sql("SELECT owner FROM claims WHERE account_id = 'acct_N'")
        assert owner.endswith(":%d" % a.pid), owner  # still A's
        assert w.returncode == 0
    finally:
        os.kill(a.pid, signal.SIGCONT)
    out_a, err_a = a.communicate(timeout=120)
    assert a.returncode == 0, err_a[-3000:]
    assert "worker.claim_lost" not in err_a
    assert applied_decisions(env) == [("acct_N", 1)]
