"""Recomputes of several processes side by side on one PostgreSQL database.

Work under a claim runs in concurrent transactions (store/db.h): the claim's
row, not a store-wide lock, keeps two processes off one account. These tests
hold PostgreSQL locks open from a separate connection, as another replica in
the middle of its work would, and show what waits and what does not:

* a claimer passes by an account another claimer is taking (a try-lock
  per account: SKIP LOCKED at the account's grain) and works the other
  accounts meanwhile;
* a worker whose account's claim row is held by an unfinished transaction
  of another process leaves the account alone, and takes it once that
  transaction ended without a live claim, and leaves it alone (exit 0)
  when that transaction committed a live one;
* exclusive work (`dunning ingest`) still waits for the concurrent
  transactions, which is what keeps its invariants;
* a webhook batch is stored beside claimed work, without waiting for it,
  but one mirror writer at a time (the mirror writers' lock);
* four drains at once over a few hundred accounts work every account once.
"""
import subprocess
import threading
import time

import pytest

from conftest import dun_writes_on
from test_serve import (BIN, SECRET_A, Serve, customer_created, failing_account_events,
                        sign_batch)

WRITE_LOCK_KEY = 4242001
MIRROR_LOCK_KEY = 4242002
CLAIM_LOCK_CLASS = 4242003


def ingest(tmp_path, url, accounts, name="events.jsonl"):
    events = tmp_path / name
    events.write_bytes(b"".join(p + b"\n" for a in accounts
                                for p in failing_account_events(a, days_ago=8)))
    r = subprocess.run([str(BIN), "--db", url, "ingest", str(events), "--no-work"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr


def work(url, timeout=60, **kw):
    return subprocess.run([str(BIN), "--db", url, "work"], capture_output=True, text=True,
                          timeout=timeout, **kw)


def open_states(con, account):
    cur = con.cursor()
    cur.execute("SELECT state FROM inbox WHERE account_id = %s ORDER BY id", (account,))
    return [r[0] for r in cur.fetchall()]


def waits_for_commit(con, argv):
    """Run argv while con's transaction is open: it must still be waiting
    after 1.5 s, and finish (exit 0) once con commits. Closes con."""
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        time.sleep(1.5)
        assert proc.poll() is None, proc.communicate()  # waiting, not done
        con.commit()
        out, err = proc.communicate(timeout=30)
        assert proc.returncode == 0, out + err
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        con.close()


def new_db(dun_pg, tmp_path, prefix, accounts):
    url = dun_pg.create(prefix)
    dun_writes_on(url)
    ingest(tmp_path, url, accounts)
    return url


def test_a_claimer_passes_by_an_account_another_one_is_taking(tmp_path, dun_pg):
    """Another replica is half-way through claiming acct_a (it holds the
    account's claiming lock): a drain does not wait for it, works acct_b and
    leaves acct_a; once the other claimer is gone, acct_a is worked too."""
    url = new_db(dun_pg, tmp_path, "skip", ["acct_a", "acct_b"])
    other = dun_pg.connect(url)  # another replica, half-way through its claim
    try:
        cur = other.cursor()
        cur.execute("SELECT pg_advisory_xact_lock_shared(%s)", (WRITE_LOCK_KEY,))
        cur.execute("SELECT pg_try_advisory_xact_lock(%s, hashtext('claim:acct_a'))",
                    (CLAIM_LOCK_CLASS,))
        assert cur.fetchone()[0] is True
        # Before concurrent transactions this drain waited for the store-wide
        # lock (and timed out here); now it works acct_b and passes acct_a by.
        r = work(url, timeout=30)
        assert r.returncode == 0, r.stdout + r.stderr
        check = dun_pg.connect(url)
        try:
            assert set(open_states(check, "acct_b")) == {"done"}
            assert "done" not in open_states(check, "acct_a")
        finally:
            check.close()
    finally:
        other.rollback()
        other.close()
    r = work(url, timeout=30)
    assert r.returncode == 0, r.stdout + r.stderr
    check = dun_pg.connect(url)
    try:
        assert set(open_states(check, "acct_a")) == {"done"}
    finally:
        check.close()


def test_an_account_whose_claim_row_is_held_waits_for_the_holder(tmp_path, dun_pg):
    """Another process's transaction holds acct_a's claim row (it is taking
    the claim). The drain's conditional upsert waits for that lock instead of
    taking the account over; when the holder ends without a live claim, the
    waiting drain takes it."""
    url = new_db(dun_pg, tmp_path, "claimrow", ["acct_a"])
    holder = dun_pg.connect(url)
    cur = holder.cursor()
    cur.execute("SELECT pg_advisory_xact_lock_shared(%s)", (WRITE_LOCK_KEY,))
    cur.execute("INSERT INTO claims(account_id, owner, token, expires_ms)"
                " VALUES ('acct_a', 'elsewhere:1', 1, 0)")
    # The holder's claim is not live (expired): once it commits the drain may take it.
    waits_for_commit(holder, [str(BIN), "--db", url, "work"])
    check = dun_pg.connect(url)
    try:
        assert set(open_states(check, "acct_a")) == {"done"}
        cur = check.cursor()
        cur.execute("SELECT token, owner FROM claims WHERE account_id = 'acct_a'")
        token, owner = cur.fetchone()
        assert token == 2 and owner != "elsewhere:1"
    finally:
        check.close()


def test_a_claim_made_live_while_the_drain_waited_is_left_alone(tmp_path, dun_pg):
    """As above, but the holder commits a live claim: the drain, which read
    acct_a as claimable before, finds it taken when its upsert gets the row,
    leaves it (its only candidate) and ends as a drain with nothing to do
    does, exit 0: another process's claim is not this drain's error."""
    url = new_db(dun_pg, tmp_path, "claimlive", ["acct_a"])
    holder = dun_pg.connect(url)
    cur = holder.cursor()
    cur.execute("SELECT pg_advisory_xact_lock_shared(%s)", (WRITE_LOCK_KEY,))
    cur.execute("INSERT INTO claims(account_id, owner, token, expires_ms)"
                " VALUES ('acct_a', 'elsewhere:1', 5, (extract(epoch FROM now()) * 1000"
                " + 600000)::bigint)")
    waits_for_commit(holder, [str(BIN), "--db", url, "work"])
    check = dun_pg.connect(url)
    try:
        assert "done" not in open_states(check, "acct_a")
        cur = check.cursor()
        cur.execute("SELECT token, owner FROM claims WHERE account_id = 'acct_a'")
        assert cur.fetchone() == (5, "elsewhere:1")
    finally:
        check.close()


def test_a_live_claim_of_another_process_is_never_taken(tmp_path, dun_pg):
    url = new_db(dun_pg, tmp_path, "live", ["acct_a", "acct_b"])
    con = dun_pg.connect(url)
    try:
        cur = con.cursor()
        cur.execute("INSERT INTO claims(account_id, owner, token, expires_ms)"
                    " VALUES ('acct_a', 'elsewhere:1', 7, (extract(epoch FROM now()) * 1000"
                    " + 600000)::bigint)")
        con.commit()
        r = work(url, timeout=30)
        assert r.returncode == 0, r.stdout + r.stderr
        assert set(open_states(con, "acct_b")) == {"done"}
        assert "done" not in open_states(con, "acct_a")
        cur.execute("SELECT token, owner FROM claims WHERE account_id = 'acct_a'")
        assert cur.fetchone() == (7, "elsewhere:1")
        con.commit()
    finally:
        con.close()


def test_exclusive_work_still_waits_for_concurrent_transactions(tmp_path, dun_pg):
    url = new_db(dun_pg, tmp_path, "excl", ["acct_a"])
    other = dun_pg.connect(url)
    cur = other.cursor()
    cur.execute("SELECT pg_advisory_xact_lock_shared(%s)", (WRITE_LOCK_KEY,))
    events = tmp_path / "more.jsonl"
    events.write_bytes(b"".join(p + b"\n" for p in failing_account_events("acct_c", days_ago=2)))
    waits_for_commit(other, [str(BIN), "--db", url, "ingest", str(events), "--no-work"])


def test_four_drains_at_once_work_every_account_once(tmp_path, dun_pg):
    n = 240
    accounts = ["acct_c%04d" % i for i in range(n)]
    url = new_db(dun_pg, tmp_path, "drains", accounts)
    results = [None] * 4

    def drain(k):
        results[k] = work(url, timeout=300)

    threads = [threading.Thread(target=drain, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(320)
    for r in results:
        assert r is not None and r.returncode == 0, r and (r.stdout + r.stderr)
    con = dun_pg.connect(url)
    try:
        cur = con.cursor()
        cur.execute("SELECT COUNT(*), COUNT(*) FILTER (WHERE state <> 'done') FROM inbox")
        total, open_ = cur.fetchone()
        assert total >= n and open_ == 0
        # One decision per account: no account was worked twice.
        cur.execute("SELECT COUNT(DISTINCT account_id), COUNT(*) FROM decisions")
        assert cur.fetchone() == (n, n)
        cur.execute("SELECT account_id, kind, invoice_id FROM emails"
                    " GROUP BY account_id, kind, invoice_id HAVING COUNT(*) > 1")
        assert cur.fetchall() == []
        # The drains shared the work.
        cur.execute("SELECT COUNT(DISTINCT owner) FROM claims")
        assert cur.fetchone()[0] >= 2
    finally:
        con.close()



def deliver_in_background(s, payload):
    [h] = sign_batch([(payload, SECRET_A, None)])
    out = {}

    def run():
        out["status"] = s.deliver(payload, header=h, timeout=60)[0]

    t = threading.Thread(target=run)
    t.start()
    return t, out


@pytest.fixture
def pg_serve(tmp_path, dun_pg):
    url = dun_pg.create("hook")
    s = Serve(tmp_path, "hook", db=url, pg=dun_pg).start()
    yield s, url
    assert s.stop() == 0, s.logs()[-3000:]


def test_a_webhook_is_stored_beside_claimed_work(pg_serve, dun_pg):
    """Another process is half-way through claimed work (the store-wide lock
    in shared mode, an account's claim row locked): a webhook is stored and
    acknowledged without waiting for it. Before, storing webhooks was
    exclusive and waited for every running batch."""
    s, url = pg_serve
    other = dun_pg.connect(url)
    try:
        cur = other.cursor()
        cur.execute("SELECT pg_advisory_xact_lock_shared(%s)", (WRITE_LOCK_KEY,))
        cur.execute("INSERT INTO claims(account_id, owner, token, expires_ms)"
                    " VALUES ('acct_busy', 'elsewhere:1', 1, 0)")
        t, out = deliver_in_background(s, customer_created("acct_new", "cus_new",
                                                           int(time.time())))
        t.join(15)
        assert not t.is_alive() and out.get("status") == 200, out
    finally:
        other.rollback()
        other.close()


def test_mirror_writers_take_turns(pg_serve, dun_pg):
    """While another transaction holds the mirror writers' lock (a worker
    folding a provider reply into the mirror), a webhook waits for it: no
    2xx before its own COMMIT, which comes after the holder's."""
    s, url = pg_serve
    other = dun_pg.connect(url)
    try:
        cur = other.cursor()
        cur.execute("SELECT pg_advisory_xact_lock_shared(%s)", (WRITE_LOCK_KEY,))
        cur.execute("SELECT pg_advisory_xact_lock(%s)", (MIRROR_LOCK_KEY,))
        t, out = deliver_in_background(s, customer_created("acct_wait", "cus_wait",
                                                           int(time.time())))
        time.sleep(1.5)
        assert t.is_alive() and "status" not in out
        other.commit()
        t.join(15)
        assert not t.is_alive() and out.get("status") == 200, out
    finally:
        other.close()
    assert s.sql("SELECT COUNT(*) FROM customers WHERE id = 'cus_wait'") == [(1,)]
