"""Email goes through an outbox: an SMTP relay that is down for a week.

Two copies of one database, built by `dunning demo`, live the same
simulated week (`--now` one day later each time, `dunning work` with a
real SMTP transport). For copy A the relay (aiosmtpd on 127.0.0.1) is up
all week; for copy B nothing listens on its port until the week is over.

* B's stages, entitlements, bans, bad-debt flags and outcome events move
  exactly as A's do, day by day: a relay that is down never blocks a
  stage change, and no recompute fails because of it.
* B's emails wait in the queue (`pending`, retried with backoff, visible in
  `dunning emails --queue`); when the relay comes back, one `work` delivers
  every one of them exactly once (one message per Message-ID), the same
  set of emails A received during the week, and per account in the order
  they were queued — the order A's customers read them in.
* A relay that refuses a recipient for good (550) makes that email `dead`
  at once, visibly, without holding back the account's later emails.
* `dunning serve` delivers on its email thread what `work` queued while the
  relay was down, and its /metrics show the outbox.

The binary is found in $DUNNING_BUILD_DIR (default: build).
"""

import email
import email.policy
import os
import socket
import subprocess
import threading
import time
import urllib.request
from collections import Counter, defaultdict
from pathlib import Path

import pytest

from conftest import dun_copy_db, dun_db_line, dun_query

aiosmtpd_controller = pytest.importorskip("aiosmtpd.controller")

REPO = Path(__file__).resolve().parents[2]
BUILD = Path(os.environ.get("DUNNING_BUILD_DIR", "build"))
if not BUILD.is_absolute():
    BUILD = REPO / BUILD
DUNNING = BUILD / "dunning"

# The demo runs 20 days from 2026-01-05; the week follows it.
WEEK = ["2026-01-%02dT09:00:00Z" % d for d in range(26, 33)]
WEEK[-1] = "2026-02-01T09:00:00Z"
BACK = "2026-02-02T09:00:00Z"  # the relay is back


def free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def dunning(*args, config=None, db=None, now=None, timeout=300):
    cmd = [str(DUNNING)]
    if config:
        cmd += ["--config", str(config)]
    if db:
        cmd += ["--db", str(db)]
    if now:
        cmd += ["--now", now]
    cmd += [str(a) for a in args]
    env = {k: v for k, v in os.environ.items() if not k.startswith("DUNNING_")}
    env["TZ"] = "UTC"
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)


query = dun_query
copy_db = dun_copy_db


def write_config(path, db, port):
    path.write_text("\n".join([
        "[database]", dun_db_line(db),
        "[email]", "transport = smtp", "smtp_url = smtp://127.0.0.1:%d" % port,
        "smtp_from = billing@example.com", "smtp_tls = none", "smtp_timeout_ms = 3000",
    ]) + "\n")
    return path


class Mailbox:
    """Accepts every message and keeps the order they arrived in; refuses
    recipients starting with reject@ for good."""

    def __init__(self):
        self.messages = []
        self.lock = threading.Lock()

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        if address.startswith("reject@"):
            return "550 5.1.1 <%s>: no such user" % address
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server, session, envelope):
        msg = email.message_from_bytes(envelope.original_content or envelope.content,
                                       policy=email.policy.default)
        with self.lock:
            self.messages.append(msg["Message-ID"])
        return "250 2.0.0 accepted"


def start_box(port):
    box = Mailbox()
    controller = aiosmtpd_controller.Controller(box, hostname="127.0.0.1", port=port)
    controller.start()
    return box, controller


def world(db):
    """What the engine decided and enforced: stages, platform, flags, events."""
    return {
        "dunning": query(db, "SELECT account_id, stage, since, episode FROM dunning"
                             " ORDER BY account_id"),
        "platform": query(db, "SELECT account_id, banned, entitlement, resource_flags"
                              " FROM platform ORDER BY account_id"),
        "accounts": query(db, "SELECT id, bad_debt FROM accounts ORDER BY id"),
        "events": query(db, "SELECT key FROM outcome_events ORDER BY key"),
        "episodes": query(db, "SELECT account_id, episode, exited_at FROM bad_debt_episodes"
                              " ORDER BY account_id, episode"),
    }


def queue_order(db, keys):
    """Message-IDs of the given keys, per account, in queue order."""
    per = defaultdict(list)
    for acct, mid, key in query(db, "SELECT account_id, message_id, key FROM emails"
                                    " ORDER BY id"):
        if key in keys:
            per[acct].append(mid)
    return per


def received_order(box, db):
    by_mid = dict(query(db, "SELECT message_id, account_id FROM emails"))
    per = defaultdict(list)
    for mid in box.messages:
        per[by_mid[mid]].append(mid)
    return per


@pytest.fixture(scope="module")
def demo_db(tmp_path_factory):
    if not DUNNING.exists():
        pytest.fail("%s not found: build first" % DUNNING)
    db = tmp_path_factory.mktemp("outbox") / "demo.db"
    r = dunning("demo", "--accounts", 400, "--days", 20, db=db)
    assert r.returncode == 0, r.stdout + r.stderr
    return db


def test_smtp_down_for_a_week(dun_new_db, tmp_path, demo_db):
    a_db, b_db = dun_new_db("a"), dun_new_db("b")
    copy_db(demo_db, a_db)
    copy_db(demo_db, b_db)
    keys_before = {k for (k,) in query(a_db, "SELECT key FROM emails")}
    assert query(b_db, "SELECT COUNT(*) FROM emails WHERE state <> 'sent'") == [(0,)]
    a_port, b_port = free_port(), free_port()
    a_cfg = write_config(tmp_path / "a.ini", a_db, a_port)
    b_cfg = write_config(tmp_path / "b.ini", b_db, b_port)
    a_box, a_ctl = start_box(a_port)
    try:
        stage_changes = 0
        for day, now in enumerate(WEEK):
            before = world(b_db)
            ra = dunning("work", config=a_cfg, now=now)
            rb = dunning("work", config=b_cfg, now=now)
            assert ra.returncode == 0, ra.stdout + ra.stderr
            # The relay is down, yet no recompute failed.
            assert rb.returncode == 0, rb.stdout + rb.stderr
            assert "to retry" in rb.stdout, rb.stdout
            # The same decisions, enforced the same way, on the same day.
            wa, wb = world(a_db), world(b_db)
            assert wa == wb, "day %d: B's enforcement differs from A's" % day
            stage_changes += len(set(wb["dunning"]) - set(before["dunning"]))
            assert query(b_db, "SELECT COUNT(*) FROM inbox WHERE state IN"
                               " ('retrying', 'dead')") == [(0,)]
            # Nothing of B's reached anyone; its emails wait, retried, visible.
            assert query(b_db, "SELECT COUNT(*) FROM emails WHERE state = 'sent'") == \
                [(len(keys_before),)]
        assert stage_changes > 10, "the week moved too few accounts to mean anything"
        waiting = query(b_db, "SELECT key, state, attempts, last_error FROM emails"
                              " WHERE state <> 'sent' ORDER BY id")
        week_new = {k for (k,) in query(a_db, "SELECT key FROM emails")} - keys_before
        assert {k for k, *_ in waiting} == week_new
        assert {st for _k, st, _a, _e in waiting} == {"pending"}
        # The head of each account's queue was tried; what queued behind it waits.
        assert all(err for _k, _st, n, err in waiting if n > 0)
        assert any(n >= 2 for _k, _st, n, _e in waiting)
        q = dunning("emails", "--queue", db=b_db)
        assert q.returncode == 0 and len(q.stdout.splitlines()) == len(waiting), q.stdout
        # A week is less than the age limit: nothing was given up.
        assert query(b_db, "SELECT COUNT(*) FROM emails WHERE state = 'dead'") == [(0,)]

        # The relay comes back: the next `work` delivers everything, each once.
        b_box, b_ctl = start_box(b_port)
        try:
            ra = dunning("work", config=a_cfg, now=BACK)
            assert ra.returncode == 0, ra.stdout + ra.stderr
            r = dunning("work", config=b_cfg, now=BACK)
            assert r.returncode == 0, r.stdout + r.stderr
            again = dunning("emails", "--deliver", config=b_cfg, now=BACK)
            assert again.returncode == 0, again.stdout + again.stderr
        finally:
            b_ctl.stop()
    finally:
        a_ctl.stop()
    assert world(a_db) == world(b_db)
    a_new = {k for (k,) in query(a_db, "SELECT key FROM emails")} - keys_before
    received = Counter(b_box.messages)
    assert [m for m, n in received.items() if n > 1] == []
    b_mids = dict(query(b_db, "SELECT key, message_id FROM emails"))
    assert set(received) == {b_mids[k] for k in a_new}
    assert query(b_db, "SELECT COUNT(*) FROM emails WHERE state <> 'sent'") == [(0,)]
    # Per account, in the order the decisions queued them — A's order.
    assert any(len(v) >= 2 for v in queue_order(b_db, a_new).values())
    assert received_order(b_box, b_db) == queue_order(b_db, a_new)
    assert received_order(b_box, b_db) == received_order(a_box, a_db)
    # The customers of A and B got the same emails.
    assert Counter(a_box.messages) == received


def test_refused_recipient_is_dead_and_does_not_block(dun_new_db, tmp_path, demo_db):
    db = dun_new_db("r")
    copy_db(demo_db, db)
    # A few accounts in dunning have a mailbox the relay refuses for good.
    port = free_port()
    cfg = write_config(tmp_path / "r.ini", db, port)
    box, ctl = start_box(port)
    try:
        r = dunning("work", config=cfg, now=WEEK[0])
        assert r.returncode == 0, r.stdout + r.stderr
        victims = [a for (a,) in query(db, "SELECT account_id FROM dunning WHERE stage"
                                           " IN ('notified', 'restricted') ORDER BY account_id"
                                           " LIMIT 3")]
        assert victims
        for a in victims:
            query(db, "UPDATE accounts SET email = 'reject@example.org' WHERE id = ?", a)
            query(db, "UPDATE p_customers SET email = 'reject@example.org'"
                      " WHERE account_id = ?", a)
        for now in WEEK[1:]:
            r = dunning("work", config=cfg, now=now)
            assert r.returncode == 0, r.stdout + r.stderr
    finally:
        ctl.stop()
    dead = query(db, "SELECT account_id, last_error FROM emails WHERE state = 'dead'")
    assert dead, "no email to a refused mailbox was queued this week"
    assert {a for a, _e in dead} <= set(victims)
    assert all("550" in e for _a, e in dead), dead
    # Dead emails hold nothing back: everything else went out, once.
    assert query(db, "SELECT COUNT(*) FROM emails WHERE state NOT IN ('sent', 'dead')") == [(0,)]
    assert [m for m, n in Counter(box.messages).items() if n > 1] == []
    shown = dunning("emails", "--queue", db=db)
    assert shown.returncode == 0 and "dead" in shown.stdout


def test_serve_delivers_queued_email_when_the_relay_returns(dun_new_db, tmp_path, demo_db):
    """`dunning serve`'s email thread: what `work` queued while the relay was
    down goes out once the relay is back, each email once, with gauges."""
    db = dun_new_db("s")
    copy_db(demo_db, db)
    port = free_port()
    cfg = write_config(tmp_path / "s.ini", db, port)
    r = dunning("work", config=cfg, now=WEEK[0])
    assert r.returncode == 0, r.stdout + r.stderr
    queued = query(db, "SELECT key, message_id FROM emails WHERE state = 'pending'")
    assert queued
    with open(cfg, "a") as f:
        f.write("[server]\nlisten = 127.0.0.1:0\n")
    port_file = tmp_path / "port"
    box, ctl = start_box(port)
    env = {k: v for k, v in os.environ.items() if not k.startswith("DUNNING_")}
    proc = subprocess.Popen([str(DUNNING), "--config", str(cfg), "--now", WEEK[1], "serve",
                             "--port-file", str(port_file)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, env=env)
    try:
        deadline = time.time() + 60
        while len(box.messages) < len(queued) and time.time() < deadline:
            time.sleep(0.1)
        while not (port_file.exists() and port_file.read_text().endswith("\n")):
            time.sleep(0.05)
        url = "http://127.0.0.1:%d/metrics" % int(port_file.read_text())
        # The relay may hold a message the sender has not recorded yet, and
        # serve's own rechecks (due at its later clock) may queue more after
        # a scrape said nothing was pending: wait until the workers have no
        # trigger left, every email is sent, and a scrape counts every
        # message the relay holds.
        while True:
            n_box = len(box.messages)
            idle = query(db, "SELECT (SELECT COUNT(*) FROM inbox WHERE state IN"
                             " ('received', 'processing', 'retrying')) + (SELECT COUNT(*)"
                             " FROM emails WHERE state <> 'sent')") == [(0,)]
            metrics = urllib.request.urlopen(url, timeout=10).read().decode()
            settled = (idle and "dunning_email_pending 0\n" in metrics and
                       "dunning_email_sent_total %d\n" % n_box in metrics and
                       len(box.messages) == n_box)
            if settled or time.time() > deadline:
                break
            time.sleep(0.2)
    finally:
        proc.terminate()
        proc.wait(30)
        ctl.stop()
    # What was queued went out (with whatever serve's own rechecks queued
    # meanwhile), each once, and the log agrees.
    assert {mid for _k, mid in queued} <= set(box.messages)
    assert [m for m, n in Counter(box.messages).items() if n > 1] == []
    assert query(db, "SELECT COUNT(*) FROM emails WHERE state <> 'sent'") == [(0,)]
    sent = {m for (m,) in query(db, "SELECT message_id FROM emails WHERE sent_at >= 0"
                                    " AND state = 'sent'")}
    assert set(box.messages) <= sent
    assert "dunning_email_pending 0\n" in metrics
    assert "dunning_email_sent_total %d\n" % n_box in metrics
