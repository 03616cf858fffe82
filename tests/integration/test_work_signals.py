"""`dunning work` stopped by SIGTERM or SIGINT stops cleanly.

It finishes the recompute (or the email) in progress, gives back every
trigger it had claimed and not worked (due now, attempts unchanged),
releases its claims, leaves no email `sending` and no decision `applying`,
exits 75 (EX_TEMPFAIL) saying so — and the next run does the rest, each
email once.

Real binary, the simulated provider, an SMTP server on 127.0.0.1.
"""
import os
import signal
import subprocess
import threading
import time

from test_effects import (DUNNING, LATER, LATER_STILL, assert_exactly_once,  # noqa: F401
                          binary, demo, dunning, query, smtp, write_config)


def work(cfg, now):
    return subprocess.Popen([str(DUNNING), "--config", str(cfg), "--now", now, "work"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def assert_nothing_stuck(db):
    assert query(db, "SELECT COUNT(*) FROM inbox WHERE state = 'processing'") == [(0,)]
    assert query(db, "SELECT COUNT(*) FROM claims WHERE expires_ms > 0") == [(0,)]
    assert query(db, "SELECT COUNT(*) FROM decisions WHERE outcome = 'applying'") == [(0,)]
    assert query(db, "SELECT COUNT(*) FROM emails WHERE state = 'sending'") == [(0,)]


def test_sigterm_during_the_drain(tmp_path, dun_new_db):
    db = dun_new_db("t")
    demo(db, 1500, 20)
    cfg = write_config(tmp_path / "t.ini", db)
    before = query(db, "SELECT COUNT(*) FROM decisions")[0][0]
    w = work(cfg, LATER)
    try:
        deadline = time.monotonic() + 120
        while query(db, "SELECT COUNT(*) FROM decisions")[0][0] < before + 20:
            assert w.poll() is None, "the drain ended before it could be interrupted"
            assert time.monotonic() < deadline
            time.sleep(0.01)
        w.send_signal(signal.SIGTERM)
        out, err = w.communicate(timeout=60)
    finally:
        if w.poll() is None:
            w.kill()
    assert w.returncode == 75, (out, err[-2000:])
    assert "stopped by SIGTERM" in err
    assert_nothing_stuck(db)
    left = query(db, "SELECT COUNT(*) FROM inbox WHERE state IN ('received', 'retrying')")[0][0]
    assert left > 0, "nothing was left for the next run: the signal came too late"
    # Given back, not failed: no attempt was spent on them.
    assert query(db, "SELECT COUNT(*) FROM inbox WHERE last_error = 'interrupted'") == [(0,)]
    r = dunning("work", config=cfg, now=LATER, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    assert query(db, "SELECT COUNT(*) FROM inbox WHERE state IN ('received', 'retrying')"
                     " AND not_before <= (SELECT MAX(at) FROM decisions)") == [(0,)]
    r = dunning("scan", db=db, now=LATER)
    assert " 0 drifting" in r.stdout, r.stdout


def test_sigint_while_sending_email(tmp_path, smtp, dun_new_db):
    box, port = smtp
    db = dun_new_db("e")
    demo(db, 600, 20)
    keys_before = {k for (k,) in query(db, "SELECT key FROM emails")}
    cfg = write_config(tmp_path / "e.ini", db, smtp_port=port)
    box.delay = 0.2
    third = threading.Event()
    box.on_data = lambda n: third.set() if n == 2 else None
    w = work(cfg, LATER)
    try:
        assert third.wait(120), "the worker never reached the 3rd email"
        os.kill(w.pid, signal.SIGINT)  # while the 3rd message is on the wire
        out, err = w.communicate(timeout=60)
    finally:
        if w.poll() is None:
            w.kill()
    assert w.returncode == 75, (out, err[-2000:])
    assert "stopped by SIGINT" in err
    assert_nothing_stuck(db)
    sent_then = len(box.messages)
    assert sent_then >= 3
    assert query(db, "SELECT COUNT(*) FROM emails WHERE state = 'pending'")[0][0] > 0
    box.delay = 0
    box.on_data = None
    r = dunning("work", config=cfg, now=LATER_STILL, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    assert len(box.messages) > sent_then
    assert_exactly_once(box, db, keys_before)
