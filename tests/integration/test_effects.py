"""Real effects, end to end: the real `dunning` binary against real servers.

* The user's platform is the test platform of platform_server.py on
  127.0.0.1 (docs/platform-api.md: the calls and the reads GATHER makes); it
  can be down (closed port), slow, or answer 5xx or 4xx, and records every
  call. While it is down, recomputes wait (they cannot read it) and calls
  wait in the outbox; once it is back, `dunning outbox --deliver` delivers
  everything, each call once, in order per account (a ban before the unban
  that undoes it).
* Email goes through a real SMTP server (aiosmtpd) on 127.0.0.1: exactly one
  message per dedup key when `dunning work` is killed with SIGKILL in the
  middle of sending and restarted, when two `dunning work` run at once on
  one database (also with one taking over the other's accounts), and when a
  legacy system claims a key first; and the one documented crash window
  (accepted by the server, not yet recorded) repeats the same Message-ID.
* Payment-outcome events go to a receiver that checks the Stripe-style
  signature, answers 500 once, and sees every event id delivered.
* Bad configuration fails at `dunning config check` with a clear message.

Scenarios start from `dunning demo` (the simulated provider and population),
then let time move on with --now so rechecks come due and the engine acts
again through the configured effects.

The binary is found in $DUNNING_BUILD_DIR (default: build).
"""

import asyncio
import email
import email.policy
import hashlib
import hmac
import json
import os
import signal
import socket
import sqlite3
import subprocess
import threading
import time
from collections import Counter, defaultdict
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from conftest import DunPgUrl, dun_db_exists, dun_db_line, dun_query, dun_writes_on
from platform_server import Platform

aiosmtpd_controller = pytest.importorskip("aiosmtpd.controller")
aiosmtpd_smtp = pytest.importorskip("aiosmtpd.smtp")

REPO = Path(__file__).resolve().parents[2]
BUILD = Path(os.environ.get("DUNNING_BUILD_DIR", "build"))
if not BUILD.is_absolute():
    BUILD = REPO / BUILD
DUNNING = BUILD / "dunning"

# The plain-text AUTH server is a loopback-only fixture.
pytestmark = pytest.mark.filterwarnings("ignore:Requiring AUTH while not requiring TLS")

TOKEN = "tok_platform_test_0123456789"
SECRET = "whsec_events_test_0123456789"
# The demo runs from 2026-01-05; these moments come after it, so rechecks are due.
LATER = "2026-02-20T00:00:00Z"
LATER_STILL = "2026-02-20T00:10:00Z"  # past the inbox's and the email claims' leases


def free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session", autouse=True)
def binary():
    if not DUNNING.exists():
        pytest.fail("%s not found: build first (ninja -C %s) or set DUNNING_BUILD_DIR"
                    % (DUNNING, BUILD))


def dunning(*args, config=None, db=None, now=None, timeout=120, env=None):
    cmd = [str(DUNNING)]
    if config:
        cmd += ["--config", str(config)]
    if db:
        cmd += ["--db", str(db)]
    if now:
        cmd += ["--now", now]
    cmd += [str(a) for a in args]
    # A new database writes nothing: turn writes on before its first use
    # (`demo` builds its own database and does it itself).
    if db and not dun_db_exists(db) and args and args[0] != "demo" and \
            not any(str(a) in ("-h", "--help") for a in args):
        dun_writes_on(db)
    e = dict(os.environ)
    for k in ("DUNNING_DB", "DUNNING_SMTP_PASSWORD", "DUNNING_PLATFORM_TOKEN",
              "DUNNING_EVENTS_SECRET", "DUNNING_POLICY"):
        e.pop(k, None)
    e.update(env or {})
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=e)


def demo(db, accounts, days, config=None):
    r = dunning("demo", "--accounts", accounts, "--days", days, config=config, db=db)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "OK: no drift" in r.stdout, r.stdout
    return r


def write_config(path, db, smtp_port=None, platform_url=None, endpoints=None,
                 platform_timeout_ms=2000, templates=None, extra=""):
    lines = ["[database]", dun_db_line(db)]
    if templates:
        lines += ["[policy]", "templates = %s" % templates]
    if smtp_port:
        lines += ["[email]", "transport = smtp",
                  "smtp_url = smtp://127.0.0.1:%d" % smtp_port,
                  "smtp_from = billing@example.com", "smtp_tls = none",
                  "smtp_timeout_ms = 5000"]
    if platform_url:
        lines += ["[platform]", "kind = http", "base_url = %s" % platform_url,
                  "token = %s" % TOKEN, "timeout_ms = %d" % platform_timeout_ms]
    if endpoints:
        lines += ["[events]", "endpoints = %s" % ", ".join(endpoints),
                  "secret = %s" % SECRET, "timeout_ms = 2000"]
    path.write_text("\n".join(lines) + "\n" + extra)
    return path


query = dun_query


class DbLock:
    """Another session that takes the database (SQLite) or the emails table
    (PostgreSQL) so that no writer can record a sent email until released."""

    def __init__(self, db):
        self.pg = isinstance(db, DunPgUrl)
        if self.pg:
            self.con = db.pg.connect(db)
        else:
            self.con = sqlite3.connect(str(db), timeout=30, isolation_level=None,
                                       check_same_thread=False)

    def take(self):
        if self.pg:
            self.con.cursor().execute("LOCK TABLE emails IN ACCESS EXCLUSIVE MODE")
        else:
            self.con.execute("BEGIN EXCLUSIVE")

    def release(self):
        if self.pg:
            # A killed client's statement already reached the server, which
            # would run it once the lock goes: end those sessions first, as
            # the crash would have if the statement had not been sent yet.
            cur = self.con.cursor()
            cur.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                        " WHERE datname = current_database() AND pid <> pg_backend_pid()")
            for _ in range(500):
                cur.execute("SELECT COUNT(*) FROM pg_stat_activity WHERE datname ="
                            " current_database() AND pid <> pg_backend_pid()")
                if cur.fetchone()[0] == 0:
                    break
                time.sleep(0.01)
            self.con.rollback()
        else:
            self.con.execute("ROLLBACK")
        self.con.close()


# ---- the platform ------------------------------------------------------------


OP_PATH = {"ban": "ban", "unban": "unban", "set_entitlement": "entitlement",
           "remove_resource_flags": "resource-flags/remove"}


def deliver_until_empty(config, db, attempts=30):
    """Run `dunning outbox --deliver` until nothing is pending (backoffs are short)."""
    out = []
    for _ in range(attempts):
        r = dunning("outbox", "--deliver", config=config, db=db)
        out.append(r.stdout + r.stderr)
        pending = query(db, "SELECT COUNT(*) FROM platform_outbox WHERE state = 'pending'")[0][0]
        epending = query(db, "SELECT COUNT(*) FROM outcome_deliveries WHERE state = 'pending'")[0][0]
        if pending == 0 and epending == 0:
            return r, out
        time.sleep(1.2)
    raise AssertionError("still pending after %d runs:\n%s" % (attempts, "\n".join(out[-3:])))


def test_platform_down_recomputes_wait_then_everything_delivered_in_order(dun_new_db, tmp_path):
    platform = Platform().start()
    db = dun_new_db("p")
    cfg = write_config(tmp_path / "p.ini", db, platform_url=platform.url)
    # 200 accounts through 40 days of dunning; every recompute reads the
    # platform, and nothing is delivered yet: GATHER sees the calls waiting
    # in the outbox on top of what the platform says, and the engine
    # converges all the same (no call planned twice).
    demo(db, 200, 40, config=cfg)
    assert platform.read_count() > 0 and not platform.calls
    rows = query(db, "SELECT id, account_id, op, value, idem_key, decision_id FROM"
                     " platform_outbox ORDER BY id")
    assert len(rows) > 20
    ops = Counter(r[2] for r in rows)
    assert ops["ban"] > 0 and ops["unban"] > 0, ops
    platform.stop()
    # Down: a recompute that needs the platform waits (its trigger retries)
    # and applies nothing.
    decisions = query(db, "SELECT COUNT(*) FROM decisions")[0][0]
    r = dunning("recompute", rows[0][1], config=cfg, db=db, now=LATER)
    assert r.returncode != 0 and "platform" in r.stderr, r.stdout + r.stderr
    assert query(db, "SELECT COUNT(*) FROM decisions")[0][0] == decisions
    # Still down: one attempt, then the run stops instead of trying every row.
    r = dunning("outbox", "--deliver", config=cfg, db=db)
    assert r.returncode == 0, r.stderr
    assert "did not answer" in r.stdout
    assert query(db, "SELECT COUNT(*) FROM platform_outbox WHERE attempts > 0")[0][0] == 1
    listing = dunning("outbox", config=cfg, db=db)
    assert "Couldn't connect" in listing.stdout
    # The engine's view already says what the platform will be told.
    assert query(db, "SELECT COUNT(*) FROM platform WHERE banned = 1")[0][0] >= 1

    platform.start()
    try:
        r, _ = deliver_until_empty(cfg, db)
        assert r.returncode == 0, r.stdout + r.stderr
    finally:
        platform.stop()

    # Each call delivered and applied once, with its own Idempotency-Key.
    applied_keys = [a[3] for a in platform.applied]
    assert Counter(applied_keys) == Counter(r[4] for r in rows)
    assert not platform.replays
    # In order per account: exactly the outbox order; a ban before its unban.
    by_account = defaultdict(list)
    for acct, op, value, key in platform.applied:
        by_account[acct].append(key)
    expected = defaultdict(list)
    for _id, acct, op, value, key, _d in rows:
        expected[acct].append(key)
    assert by_account == expected
    banned_then_unbanned = 0
    for acct, keys in expected.items():
        seq = [op for (_i, a, op, _v, _k, _d) in rows if a == acct]
        if "ban" in seq and "unban" in seq:
            assert seq.index("ban") < seq.index("unban"), (acct, seq)
            banned_then_unbanned += 1
    assert banned_then_unbanned > 0
    # The contract: paths, methods, bearer token, JSON bodies.
    for call in platform.calls:
        assert call["auth"] == "Bearer " + TOKEN
        body = call["body"]
        assert call["path"] == "/v1/accounts/%s/%s" % (body["account_id"], OP_PATH[body["op"]])
        assert call["method"] == ("PUT" if body["op"] == "set_entitlement" else "POST")
        assert body["idempotency_key"] == call["key"]
        assert body["decision_id"] > 0
    # The platform ends where the engine's view is.
    for acct, banned, ent in query(db, "SELECT account_id, banned, entitlement FROM platform"):
        if acct in expected:
            assert platform.state[acct]["banned"] == bool(banned), acct
            assert platform.state[acct]["entitlement"] == ent, acct
    assert query(db, "SELECT COUNT(*) FROM platform_outbox WHERE state <> 'sent'")[0][0] == 0


def test_platform_5xx_retried_4xx_dead_and_slow_does_not_block(dun_new_db, tmp_path):
    platform = Platform()
    db = dun_new_db("q")
    cfg = write_config(tmp_path / "q.ini", db, platform_url=platform.url,
                       platform_timeout_ms=1000)
    platform.start()
    demo(db, 120, 40, config=cfg)
    rows = query(db, "SELECT id, account_id, op, idem_key FROM platform_outbox ORDER BY id")
    assert len(rows) > 5
    victim = rows[0][1]
    victim_rows = [r for r in rows if r[1] == victim]
    try:
        # Slow: the call times out after 1 s, the run stops at once, nothing is lost.
        platform.mode, platform.delay = "slow", 3.0
        t0 = time.monotonic()
        r = dunning("outbox", "--deliver", config=cfg, db=db)
        assert time.monotonic() - t0 < 2.9
        assert "did not answer" in r.stdout, r.stdout
        row = query(db, "SELECT state, attempts, last_error FROM platform_outbox WHERE id = ?",
                    rows[0][0])[0]
        assert row[0] == "pending" and row[1] == 1 and "timed out" in row[2].lower(), row
        # Meanwhile the engine recomputes as usual: it reads the platform
        # (reads answer at once), it never waits for the slow calls.
        r = dunning("work", config=cfg, db=db, now=LATER)
        assert r.returncode == 0, r.stdout + r.stderr
        # 5xx: retried; the victim's account answers 422: dead, and the rest flows.
        platform.mode = "ok"
        platform.fail_5xx = 3
        platform.reject = {victim}
        time.sleep(1.1)
        r, log = deliver_until_empty(cfg, db)
        assert r.returncode == 1  # dead rows exist
        assert "dead" in r.stdout
    finally:
        platform.stop()
    dead = query(db, "SELECT id, account_id, last_status FROM platform_outbox"
                     " WHERE state = 'dead'")
    # The victim's calls are dead (422 is terminal)...
    assert dead and all(d[1] == victim and d[2] == 422 for d in dead), dead
    # ...visible with its reason...
    listing = dunning("outbox", "--state", "dead", config=cfg, db=db)
    assert victim in listing.stdout and "HTTP 422" in listing.stdout
    # ...and dead rows do not hold back the other accounts.
    others = query(db, "SELECT COUNT(*) FROM platform_outbox WHERE account_id <> ?"
                       " AND state <> 'sent'", victim)[0][0]
    assert others == 0
    # 5xx answers were retried with the same Idempotency-Key and applied once.
    assert Counter(a[3] for a in platform.applied).most_common(1)[0][1] == 1
    # Requeue: fixed on the platform side, the dead calls go out again.
    platform.reject = set()
    platform.start()
    try:
        r = dunning("outbox", "--requeue", "all", config=cfg, db=db)
        assert r.returncode == 0, r.stdout + r.stderr
        r, _ = deliver_until_empty(cfg, db)
        assert r.returncode == 0, r.stdout
    finally:
        platform.stop()


# ---- email over SMTP ------------------------------------------------------------


class Mailbox:
    """An SMTP server's handler that keeps accepted messages.

    A message counts as accepted only when its 250 reply can still be sent:
    like a real MTA, a client that vanished during DATA leaves nothing
    queued. `delay` holds each message before the reply; `on_data(n)` is
    called as the n-th DATA arrives (0-based)."""

    def __init__(self):
        self.messages = []
        self.delay = 0.0
        self.hold = None  # hold(n): seconds to hold the n-th message, or None
        self.on_data = None
        self.data_calls = 0
        self.lock = threading.Lock()

    async def handle_DATA(self, server, session, envelope):
        with self.lock:
            n = self.data_calls
            self.data_calls += 1
        if self.on_data:
            self.on_data(n)
        delay = self.hold(n) if self.hold else None
        delay = self.delay if delay is None else delay
        if delay:
            await asyncio.sleep(delay)
        if server.transport is None or server.transport.is_closing():
            return "421 4.4.2 client gone"
        msg = email.message_from_bytes(envelope.original_content or envelope.content,
                                       policy=email.policy.default)
        with self.lock:
            self.messages.append({"message_id": msg["Message-ID"], "to": msg["To"],
                                  "subject": msg["Subject"], "rcpt": list(envelope.rcpt_tos)})
        return "250 2.0.0 accepted"

    def message_ids(self):
        with self.lock:
            return [m["message_id"] for m in self.messages]


@pytest.fixture
def smtp():
    box = Mailbox()
    port = free_port()
    controller = aiosmtpd_controller.Controller(box, hostname="127.0.0.1", port=port)
    controller.start()
    yield box, port
    controller.stop()


def sent_after(db, keys_before):
    rows = query(db, "SELECT key, message_id, state FROM emails")
    return {k: (mid, st) for k, mid, st in rows if k not in keys_before}


def assert_exactly_once(box, db, keys_before):
    new = sent_after(db, keys_before)
    assert new, "the scenario sent no email"
    states = Counter(st for _mid, st in new.values())
    assert set(states) == {"sent"}, states
    received = Counter(box.message_ids())
    dupes = [m for m, n in received.items() if n > 1]
    assert not dupes, dupes
    assert set(received) == {mid for mid, _st in new.values()}
    # The Message-ID is the key's, qualified with the sender's domain.
    for key, (mid, _st) in new.items():
        assert mid == "<dunning.%s@example.com>" % key, (key, mid)
    return len(received)


def test_smtp_exactly_once_when_worker_killed_and_restarted(dun_new_db, tmp_path, smtp):
    box, port = smtp
    db = dun_new_db("k")
    demo(db, 600, 20)
    keys_before = {k for (k,) in query(db, "SELECT key FROM emails")}
    cfg = write_config(tmp_path / "k.ini", db, smtp_port=port)
    # Hold every message 0.5 s before the reply; kill the worker while the
    # 6th is on the wire, so it dies with an email claimed and unconfirmed.
    box.delay = 0.5
    in_flight = threading.Event()
    box.on_data = lambda n: in_flight.set() if n == 5 else None
    worker = subprocess.Popen([str(DUNNING), "--config", str(cfg), "--now", LATER, "work"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        assert in_flight.wait(60), "the worker never reached the 6th email"
        os.kill(worker.pid, signal.SIGKILL)
    finally:
        worker.wait(30)
    time.sleep(0.6)  # let the server see the connection go
    assert len(box.messages) == 5
    claimed = query(db, "SELECT key, claimed_by FROM emails WHERE state = 'sending'")
    assert len(claimed) == 1, claimed
    assert claimed[0][1].endswith(":%d" % worker.pid)
    # Restart (later: the dead worker's inbox lease has run out).
    box.delay = 0
    box.on_data = None
    r = dunning("work", config=cfg, now=LATER_STILL, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    n = assert_exactly_once(box, db, keys_before)
    assert n > 6
    # The interrupted key was sent by the restart, once.
    key = claimed[0][0]
    mid = query(db, "SELECT message_id FROM emails WHERE key = ?", key)[0][0]
    assert box.message_ids().count(mid) == 1


def test_smtp_the_one_remaining_window_repeats_the_same_message_id(dun_new_db, tmp_path, smtp):
    """docs/email.md, "The crash windows": the server accepted a message and
    the worker died before recording it. The restart sends it again — with
    the same Message-ID, which is what lets a deduplicating relay drop it."""
    box, port = smtp
    db = dun_new_db("x")
    demo(db, 600, 20)
    keys_before = {k for (k,) in query(db, "SELECT key FROM emails")}
    cfg = write_config(tmp_path / "x.ini", db, smtp_port=port)
    lock = DbLock(db)
    locked = threading.Event()

    def hold_db(n):
        # While the 4th message is on the wire, take the database: after the
        # server's 250 the worker cannot record `sent`.
        if n == 3:
            lock.take()
            locked.set()

    box.on_data = hold_db
    box.delay = 0.05
    worker = subprocess.Popen([str(DUNNING), "--config", str(cfg), "--now", LATER, "work"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        assert locked.wait(60)
        deadline = time.monotonic() + 10
        while len(box.messages) < 4 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert len(box.messages) == 4  # accepted: the worker now waits for the database
        time.sleep(0.3)
        os.kill(worker.pid, signal.SIGKILL)
        worker.wait(30)
    finally:
        lock.release()
    accepted = box.messages[3]["message_id"]
    assert query(db, "SELECT state FROM emails WHERE message_id = ?", accepted) == [("sending",)]
    box.on_data = None
    r = dunning("work", config=cfg, now=LATER_STILL, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    received = Counter(box.message_ids())
    assert received[accepted] == 2  # the one duplicate, with one Message-ID
    assert [m for m, n in received.items() if n > 1] == [accepted]
    copies = [m for m in box.messages if m["message_id"] == accepted]
    assert copies[0]["subject"] == copies[1]["subject"] and copies[0]["to"] == copies[1]["to"]
    new = sent_after(db, keys_before)
    assert set(received) == {mid for mid, _st in new.values()}
    assert {st for _mid, st in new.values()} == {"sent"}


def test_smtp_exactly_once_with_two_workers_at_once(dun_new_db, tmp_path, smtp):
    box, port = smtp
    db = dun_new_db("w")
    demo(db, 1500, 20)
    keys_before = {k for (k,) in query(db, "SELECT key FROM emails")}
    cfg = write_config(tmp_path / "w.ini", db, smtp_port=port)
    box.delay = 0.02
    cmd = [str(DUNNING), "--config", str(cfg), "--now", LATER, "work"]
    workers = [subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
               for _ in range(2)]
    outs = [w.communicate(timeout=300) for w in workers]
    for w, (out, err) in zip(workers, outs):
        assert w.returncode in (0, 1), err
    # Whatever one worker had to leave to the other is picked up by the next pass.
    r = dunning("work", config=cfg, now=LATER_STILL, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    assert assert_exactly_once(box, db, keys_before) > 5
    # The two drains ran at once and between them recomputed accounts. (Which
    # of them gets how many is scheduling: with email in an outbox a drain is
    # fast enough that one may take every account before the other claims
    # any, so only the sum is asserted.)
    done = [int(out.split()[1]) for out, _err in outs]
    assert sum(done) > 0, outs


def test_smtp_exactly_once_when_a_second_engine_takes_over_a_stalled_one(dun_new_db, tmp_path, smtp):
    """Two engines at once while A is stuck in the middle of sending. B's
    clock (--now) is past A's lease, but claims are timed by the wall clock:
    B takes none of A's live accounts or email claims. Every key gets one
    message. (A real takeover after a lease ran out is test_fencing.py.)"""
    box, port = smtp
    db = dun_new_db("s")
    demo(db, 600, 20)
    keys_before = {k for (k,) in query(db, "SELECT key FROM emails")}
    cfg = write_config(tmp_path / "s.ini", db, smtp_port=port)
    stuck = threading.Event()
    box.hold = lambda n: 4.0 if n == 3 else 0.05
    box.on_data = lambda n: stuck.set() if n == 3 else None
    a = subprocess.Popen([str(DUNNING), "--config", str(cfg), "--now", LATER, "work"],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert stuck.wait(60)
    # A holds the 4th email's claim and its accounts' claims; B's clock is
    # past them, the wall clock is not: B leaves them alone.
    b = dunning("work", config=cfg, now="2026-02-20T00:05:01Z", timeout=300)
    # B's sender met A's live claim (timed by the wall clock, not by B's
    # --now) and left that email alone: the count below finds no duplicate.
    out_a, err_a = a.communicate(timeout=300)
    assert a.returncode in (0, 1), err_a
    assert b.returncode in (0, 1), b.stderr
    r = dunning("work", config=cfg, now="2026-02-20T01:00:00Z", timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    assert assert_exactly_once(box, db, keys_before) > 5


def planned_email(db, now):
    """An account and the key of an email the engine will send at `now`."""
    accounts = [a for (a,) in query(
        db, "SELECT account_id FROM dunning WHERE next_recheck_at > 0 ORDER BY account_id")]
    for acct in accounts:
        r = dunning("explain", acct, "--json", db=db, now=now)
        assert r.returncode == 0, r.stderr
        for item in json.loads(r.stdout)["plan"]:
            if item["type"] == "send_email":
                kind = item["key"].split("/")[2]
                return acct, item["key"], kind
    raise AssertionError("no account plans an email at %s" % now)


def test_smtp_legacy_system_claims_first(dun_new_db, tmp_path, smtp):
    box, port = smtp
    db = dun_new_db("l")
    demo(db, 300, 20)
    keys_before = {k for (k,) in query(db, "SELECT key FROM emails")}
    cfg = write_config(tmp_path / "l.ini", db, smtp_port=port)
    acct, key, kind = planned_email(db, LATER)
    # The legacy system claims the key before sending its own copy.
    r = dunning("email", "claim", key, "--account", acct, "--kind", kind, "--by", "legacy",
                config=cfg, now=LATER)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "message_id=<dunning.%s@example.com>" % key in r.stdout
    # The engine runs meanwhile: that key is somebody else's; the account's
    # recompute goes on, and the engine does not send that email.
    r = dunning("work", config=cfg, now=LATER)
    assert r.returncode == 0, r.stdout + r.stderr
    assert query(db, "SELECT state, claimed_by FROM emails WHERE key = ?", key) == \
        [("sending", "legacy")]
    again = dunning("email", "claim", key, "--account", acct, "--kind", kind, config=cfg,
                    now=LATER)
    assert again.returncode == 75, again.stdout
    # The legacy system reports success; the engine then skips the key for good.
    r = dunning("email", "record", key, "--sent", "--by", "legacy", config=cfg, now=LATER)
    assert r.returncode == 0, r.stdout + r.stderr
    r = dunning("work", config=cfg, now=LATER_STILL)
    assert r.returncode == 0, r.stdout + r.stderr
    mid = "<dunning.%s@example.com>" % key
    assert mid not in box.message_ids()
    assert query(db, "SELECT state, source FROM emails WHERE key = ?", key) == [("sent", "legacy")]
    assert dunning("email", "claim", key, "--account", acct, "--kind", kind,
                   config=cfg).returncode == 1
    # Every other email went out once.
    new = sent_after(db, keys_before | {key})
    assert Counter(box.message_ids()) == Counter(mid for mid, _st in new.values())


def test_email_preview_renders_and_writes_nothing(dun_new_db, tmp_path):
    db = dun_new_db("v")
    demo(db, 200, 20)
    acct, key, kind = planned_email(db, LATER)
    before = query(db, "SELECT COUNT(*), COALESCE(MAX(created_at), 0) FROM emails")
    r = dunning("email", "preview", kind, acct, db=db, now=LATER)
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("To: ")
    assert "\nSubject: " in r.stdout
    assert "X-Dedup-Key: %s (planned now)" % key in r.stdout
    assert "{{" not in r.stdout
    assert query(db, "SELECT COUNT(*), COALESCE(MAX(created_at), 0) FROM emails") == before
    r = dunning("email", "preview", "resolved", acct, db=db, now=LATER)
    assert r.returncode == 0 and "Subject: " in r.stdout
    r = dunning("email", "preview", "nonsense", acct, db=db)
    assert r.returncode == 64 and 'unknown kind "nonsense"' in r.stderr
    r = dunning("email", "preview", "bad_debt", "acct_nobody", db=db)
    assert r.returncode == 66 and 'no account "acct_nobody"' in r.stderr


# ---- payment-outcome events ------------------------------------------------------


class Receiver:
    """A webhook endpoint that checks the Stripe-style signature."""

    def __init__(self, fail_first=0):
        self.port = free_port()
        self.fail_first = fail_first
        self.requests = []
        self.lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *a):
                pass

            def do_POST(self):
                raw = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                header = self.headers.get("Dunning-Signature", "")
                with receiver.lock:
                    fail = receiver.fail_first > 0
                    receiver.fail_first -= 1 if fail else 0
                    receiver.requests.append({
                        "raw": raw, "signature": header, "valid": verify(header, raw),
                        "event_id": self.headers.get("Dunning-Event-Id"),
                        "status": 500 if fail else 200})
                self.send_response(500 if fail else 200)
                self.send_header("Content-Length", "0")
                self.end_headers()

        self.httpd = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self.httpd.daemon_threads = True
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    @property
    def url(self):
        return "http://127.0.0.1:%d/hooks/dunning" % self.port

    def stop(self):
        self.httpd.shutdown()
        self.httpd.server_close()


def verify(header, raw, tolerance=300):
    """What a receiver does (docs/events.md): Stripe's scheme, our header name."""
    parts = dict(p.split("=", 1) for p in header.split(",") if "=" in p)
    t = int(parts.get("t", "0"))
    expected = hmac.new(SECRET.encode(), b"%d." % t + raw, hashlib.sha256).hexdigest()
    return hmac.compare_digest(expected, parts.get("v1", "")) and abs(time.time() - t) <= tolerance


def test_outcome_events_signed_retried_and_deduplicable(dun_new_db, tmp_path):
    receiver = Receiver(fail_first=1)
    db = dun_new_db("e")
    cfg = write_config(tmp_path / "e.ini", db, endpoints=[receiver.url])
    try:
        demo(db, 100, 40, config=cfg)
        events = query(db, "SELECT id, account_id, key, payload FROM outcome_events ORDER BY id")
        assert len(events) > 10
        r = dunning("outbox", "--deliver", config=cfg, db=db)
        assert r.returncode == 0, r.stdout + r.stderr
        assert "retrying 1" in r.stdout
        # The first account waits for its backoff; everyone else's events went.
        first_acct = events[0][1]
        pending = query(db, "SELECT DISTINCT account_id FROM outcome_deliveries"
                            " WHERE state = 'pending'")
        assert pending == [(first_acct,)]
        r, _ = deliver_until_empty(cfg, db)
        assert r.returncode == 0, r.stdout
    finally:
        receiver.stop()
    reqs = receiver.requests
    assert all(q["valid"] for q in reqs), [q["signature"] for q in reqs if not q["valid"]]
    ok = [json.loads(q["raw"]) for q in reqs if q["status"] == 200]
    # Every stored event arrived exactly once with a 2xx, byte for byte as stored.
    assert sorted(e["id"] for e in ok) == sorted(json.loads(p)["id"] for *_x, p in events)
    stored = {json.loads(p)["id"]: p.encode() for *_x, p in events}
    for q in reqs:
        assert q["raw"] == stored[q["event_id"]]
    # The 500 was retried with the same id and the same bytes.
    failed = [q for q in reqs if q["status"] == 500]
    assert len(failed) == 1
    assert [q["raw"] for q in reqs].count(failed[0]["raw"]) == 2
    # Ids are stable: derived from the event's key.
    for _id, acct, key, payload in events:
        p = json.loads(payload)
        assert p["id"] == "evt_" + hashlib.sha256(key.encode()).hexdigest()[:32]
        assert p["object"] == "event" and p["version"] == 1
        assert p["type"] in ("dunning.stage_changed", "dunning.lifted")
        assert p["account_id"] == acct and p["key"] == key
        assert {"from_stage", "to_stage", "episode", "entitlement", "created"} <= set(p)
    # In order per account.
    order = defaultdict(list)
    for e in ok:
        order[e["account_id"]].append(e["id"])
    expected = defaultdict(list)
    for _id, acct, _key, payload in events:
        expected[acct].append(json.loads(payload)["id"])
    assert order == expected
    assert query(db, "SELECT COUNT(*) FROM outcome_events WHERE delivered_at = 0")[0][0] == 0


# ---- bad configuration fails at `dunning config check` ------------------------------


def config_check(cfg):
    r = dunning("config", "check", cfg)
    if 'unknown command "config"' in r.stderr:
        pytest.skip("this build has no `dunning config check`")
    return r


@pytest.fixture
def auth_smtp():
    class Auth:
        async def handle_DATA(self, server, session, envelope):
            return "250 OK"

    def authenticator(server, session, envelope, mechanism, auth_data):
        ok = isinstance(auth_data, aiosmtpd_smtp.LoginPassword) and \
            auth_data.password == b"right"
        return aiosmtpd_smtp.AuthResult(success=ok, handled=False)

    port = free_port()
    controller = aiosmtpd_controller.Controller(
        Auth(), hostname="127.0.0.1", port=port, authenticator=authenticator,
        auth_required=True, auth_require_tls=False)
    controller.start()
    yield port
    controller.stop()


def test_config_check_catches_bad_effects(dun_new_db, tmp_path, smtp, auth_smtp):
    _box, port = smtp
    db = dun_new_db("c")
    good = write_config(tmp_path / "good.ini", db, smtp_port=port)
    r = config_check(good)
    assert r.returncode == 0, r.stdout + r.stderr

    cases = []
    # Unreachable SMTP server.
    cases.append((write_config(tmp_path / "c1.ini", db, smtp_port=free_port()),
                  "127.0.0.1"))
    # Wrong credentials.
    cases.append((write_config(tmp_path / "c2.ini", db, smtp_port=auth_smtp,
                               extra="smtp_username = billing\nsmtp_password = wrong\n"),
                  "535"))
    # A template directory without one of the kinds.
    partial = tmp_path / "partial"
    partial.mkdir()
    for f in (REPO / "templates").glob("*.txt"):
        if f.name != "bad_debt.txt":
            (partial / f.name).write_text(f.read_text())
    cases.append((write_config(tmp_path / "c3.ini", db, templates=partial), "bad_debt.txt"))
    # A template with an unknown placeholder.
    typo = tmp_path / "typo"
    typo.mkdir()
    for f in (REPO / "templates").glob("*.txt"):
        (typo / f.name).write_text(f.read_text())
    (typo / "suspended.txt").write_text(
        "Subject: Account suspended\n\nHello {{customer_nmae}},\n")
    cases.append((write_config(tmp_path / "c4.ini", db, templates=typo), "customer_nmae"))
    # A malformed platform URL, and a token that would travel in clear text.
    cases.append((write_config(tmp_path / "c5.ini", db, platform_url="ftp://platform"),
                  "[platform] base_url"))
    cases.append((write_config(tmp_path / "c6.ini", db,
                               platform_url="http://platform.example.com/v1"),
                  "clear text"))
    # Event endpoints without a secret, and a malformed endpoint.
    (tmp_path / "c7.ini").write_text("[database]\n%s\n[events]\nendpoints = "
                                     "http://127.0.0.1:9/hook\n" % dun_db_line(db))
    cases.append((tmp_path / "c7.ini", "secret"))
    (tmp_path / "c8.ini").write_text("[database]\n%s\n[events]\nendpoints = "
                                     "hook.example.com\nsecret = %s\n" % (dun_db_line(db), SECRET))
    cases.append((tmp_path / "c8.ini", "[events] endpoints"))
    for cfg, needle in cases:
        r = config_check(cfg)
        assert r.returncode == 78, (cfg.name, r.stdout, r.stderr)
        assert needle in r.stderr, (cfg.name, r.stderr)
        assert len(r.stderr.strip().splitlines()) <= 2, r.stderr

    # The platform refusing the token fails too; an unreachable one only warns.
    platform = Platform()
    platform.start()
    try:
        bad_token = write_config(tmp_path / "c9.ini", db, platform_url=platform.url)
        bad_token.write_text(bad_token.read_text().replace(TOKEN, "tok_wrong"))
        r = config_check(bad_token)
        assert r.returncode == 78 and "[platform] token" in r.stderr, r.stderr
        r = config_check(write_config(tmp_path / "c10.ini", db, platform_url=platform.url))
        assert r.returncode == 0, r.stderr
    finally:
        platform.stop()
    r = config_check(write_config(tmp_path / "c11.ini", db,
                                  platform_url="http://127.0.0.1:%d/" % free_port()))
    assert r.returncode == 0, r.stderr
    assert "did not answer" in r.stdout + r.stderr
