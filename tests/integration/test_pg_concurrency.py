"""Recomputes of several processes side by side on one PostgreSQL database.

Work under a claim runs in concurrent transactions (store/db.h): the claim's
row, not a store-wide lock, keeps two processes off one account. These tests
hold PostgreSQL locks open from a separate connection, as another replica in
the middle of its work would, and show what waits and what does not:

* a claimer passes by the trigger rows another claimer has locked (SKIP
  LOCKED) and works the other accounts meanwhile;
* a worker whose account's claim row is held by an unfinished transaction
  of another process leaves the account alone, and takes it once that
  transaction ended without a live claim;
* exclusive work (storing events) still waits for the concurrent
  transactions, which is what keeps its invariants;
* four drains at once over a few hundred accounts work every account once.
"""
import subprocess
import threading
import time

from conftest import dun_writes_on
from test_serve import BIN, failing_account_events

WRITE_LOCK_KEY = 4242001


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


def new_db(dun_pg, tmp_path, prefix, accounts):
    url = dun_pg.create(prefix)
    dun_writes_on(url)
    ingest(tmp_path, url, accounts)
    return url


def test_a_claimer_passes_by_trigger_rows_another_one_has_locked(tmp_path, dun_pg):
    url = new_db(dun_pg, tmp_path, "skip", ["acct_a", "acct_b"])
    other = dun_pg.connect(url)  # another replica, half-way through its claim
    try:
        cur = other.cursor()
        cur.execute("SELECT pg_advisory_xact_lock_shared(%s)", (WRITE_LOCK_KEY,))
        cur.execute("SELECT id FROM inbox WHERE account_id = 'acct_a' FOR UPDATE")
        assert cur.fetchall()
        # Before concurrent transactions this drain waited for the store-wide
        # lock (and timed out here); now it works acct_b and skips acct_a.
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
    proc = subprocess.Popen([str(BIN), "--db", url, "work"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        time.sleep(1.5)
        assert proc.poll() is None, proc.communicate()  # waiting on the row, not done
        holder.commit()  # the holder's claim is not live (expired): the drain may take it
        out, err = proc.communicate(timeout=30)
        assert proc.returncode == 0, out + err
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        holder.close()
    check = dun_pg.connect(url)
    try:
        assert set(open_states(check, "acct_a")) == {"done"}
        cur = check.cursor()
        cur.execute("SELECT token, owner FROM claims WHERE account_id = 'acct_a'")
        token, owner = cur.fetchone()
        assert token == 2 and owner != "elsewhere:1"
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
    proc = subprocess.Popen([str(BIN), "--db", url, "ingest", str(events), "--no-work"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        time.sleep(1.5)
        assert proc.poll() is None, proc.communicate()
        other.commit()
        out, err = proc.communicate(timeout=30)
        assert proc.returncode == 0, out + err
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        other.close()


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

