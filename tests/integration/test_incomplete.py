"""Never decide on a snapshot known to be incomplete.

The webhooks of an account left its mirror lagging (attempts tied to no
invoice): GATHER must read the invoice from Stripe before deciding. While
Stripe fails that read, every recompute fails as retryable — the trigger is
`retrying` with the reason in its error, nothing is decided or applied, the
account is marked incomplete — and the drift scan counts it in its own class
and queues it. Once Stripe answers, the retry decides on the full state and
the mark goes.

Runs the real binary against the Stripe test server on 127.0.0.1.
"""
import json
import os
import subprocess

from test_stripe_client import (DAY, DUNNING, Env, basil_failing_account,  # noqa: F401
                                env, fake, fake_server, ingest_fake_events)


def run(env, *args, now=None):
    cmd = [str(DUNNING), "--config", str(env.cfg)]
    if now is not None:
        cmd += ["--now", str(now)]
    return subprocess.run(cmd + list(args), capture_output=True, text=True, timeout=180,
                          env=dict(os.environ, STRIPE_API_KEY=""))


def test_a_failed_refresh_decides_nothing_and_is_retried(env, fake):
    inv, _first = basil_failing_account(fake)
    ingest_fake_events(env, fake)
    fake.fault(path_regex="^/v1/invoices/" + inv + "$", method="GET", status=500, count=-1)

    w = run(env, "work")
    assert w.returncode == 1, w.stdout + w.stderr  # a recompute failed; its trigger retries
    assert "gather.refresh_failed" in w.stderr
    # Nothing decided on the lagging mirror: no stage, no email, no decision.
    assert env.sql("SELECT COUNT(*) FROM dunning WHERE stage <> 'none'") == [(0,)]
    assert env.sql("SELECT COUNT(*) FROM emails") == [(0,)]
    assert env.sql("SELECT COUNT(*) FROM decisions WHERE account_id = 'acct_A'") == [(0,)]
    # The failure is visible while it lasts.
    [(state, error)] = env.sql("SELECT state, last_error FROM inbox WHERE account_id = 'acct_A'"
                               " GROUP BY state, last_error")
    assert state == "retrying", (state, error)
    assert "refreshing" in error, error
    [(store, reason)] = env.sql("SELECT store, reason FROM incomplete_accounts"
                                " WHERE account_id = 'acct_A'")
    assert store == "provider" and "refreshing" in reason, reason

    # The support button says the same and queues the trigger all the same.
    r = run(env, "recompute", "acct_A")
    assert r.returncode == 75, r.stdout + r.stderr
    assert "refreshing" in r.stderr and "retried" in r.stderr, r.stderr

    # The scan counts it in its own class, and --enqueue queues it.
    s = run(env, "scan", "--json")
    assert s.returncode == 1, s.stdout + s.stderr
    out = json.loads(s.stdout)
    assert out["drifting"] == 1, out
    [ex] = out["examples"]
    assert ex["account"] == "acct_A" and "incomplete_state" in ex["classes"], ex
    text = run(env, "scan")
    assert "incomplete_state" in text.stdout, text.stdout

    # Stripe answers again: the retry (due after its backoff) decides on the full state.
    fake.ctl("DELETE", "/_test/faults")
    later = fake.now() + 2 * 3600
    w = run(env, "work", now=later)
    assert w.returncode == 0, w.stdout + w.stderr
    assert env.sql("SELECT stage FROM dunning WHERE account_id = 'acct_A'") == [("notified",)]
    assert env.sql("SELECT COUNT(*) FROM incomplete_accounts") == [(0,)]
    assert env.sql("SELECT COUNT(*) FROM inbox WHERE state <> 'done'") == [(0,)]
    s = run(env, "scan", now=later)
    assert "0 drifting" in s.stdout, s.stdout
