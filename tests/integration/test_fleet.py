"""A fleet: several `dunning serve` processes on one PostgreSQL database.

* Three replicas take webhooks for a few hundred accounts at once (a load
  balancer spreads them); one is killed with SIGKILL in the middle of the
  work and restarted. In the end every acknowledged event is stored, every
  account was worked, no email was queued twice, and `scan` finds no drift.
* PostgreSQL itself is restarted (an immediate shutdown: a crash) under
  load: `/readyz` fails while it is down and recovers by itself, nothing
  acknowledged is lost, and the work resumes.

DUNNING_FLEET_ACCOUNTS (default 150) sets the population.
"""
import http.client
import json
import os
import subprocess
import threading
import time

import pytest

from test_serve import BIN, SECRET_A, Serve, customer_created, failing_account_events, sign_batch

N_ACCOUNTS = int(os.environ.get("DUNNING_FLEET_ACCOUNTS", "150"))


def PgServe(tmp_path, name, pg, url, **sections):
    """A `dunning serve` whose store is the PostgreSQL database at url."""
    return Serve(tmp_path, name, db=url, pg=pg, **sections)


def demo_on_pg(tmp_path, pg, name, accounts):
    """A demo population of that many accounts (30 days), copied into a new
    database of the cluster: its URL."""
    demo = tmp_path / ("%s.db" % name)
    r = subprocess.run([str(BIN), "--db", str(demo), "demo", "--accounts", str(accounts),
                        "--days", "30"], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    url = pg.create(name)
    r = subprocess.run([str(BIN), "store", "copy", "--from", str(demo), "--to", url],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    return url


def recompute_everyone(cur, tag):
    """A support recompute of every account, in one statement, the workers
    told: the number of accounts."""
    cur.execute("SELECT COUNT(*) FROM accounts")
    [n] = cur.fetchone()
    cur.execute("INSERT INTO inbox(account_id, kind, source, dedup_key, not_before,"
                " created_at, updated_at) SELECT id, 'support_recompute', 'test',"
                " %s || id, 0, 0, 0 FROM accounts; NOTIFY dunning_inbox", (tag + ":",))
    return n


def population(n):
    payloads = []
    for i in range(n):
        # 8 days: restricted; 16: suspended; 2: notified.
        days = (8, 16, 2)[i % 3]
        payloads += failing_account_events("acct_fl%04d" % i, days_ago=days)
    return payloads


def deliver_spread(servers, pairs, acked, lock, stop):
    """As Stripe behind a load balancer: each event to the next replica that
    answers, again until one acknowledges it."""
    k = 0
    for p, h in pairs:
        eid = json.loads(p)["id"]
        while not stop.is_set():
            s = servers[k % len(servers)]
            k += 1
            try:
                conn = http.client.HTTPConnection("127.0.0.1", s.port, timeout=10)
                conn.request("POST", "/webhooks/stripe", body=p,
                             headers={"Stripe-Signature": h, "Content-Type": "application/json"})
                r = conn.getresponse()
                r.read()
                conn.close()
            except (OSError, http.client.HTTPException, TypeError):
                time.sleep(0.01)
                continue
            if r.status == 200:
                with lock:
                    acked.add(eid)
                break
            time.sleep(0.01)


def fire(servers, payloads, n_threads=8):
    headers = sign_batch([(p, SECRET_A, None) for p in payloads])
    pairs = list(zip(payloads, headers))
    acked, lock, stop = set(), threading.Lock(), threading.Event()
    threads = [threading.Thread(target=deliver_spread,
                                args=(servers, pairs[i::n_threads], acked, lock, stop))
               for i in range(n_threads)]
    for t in threads:
        t.start()
    return acked, threads, stop


def wait_until(cond, timeout=120):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if cond():
            return True
        time.sleep(0.02)
    return False


def idle(s):
    rows = s.sql("SELECT COUNT(*) FROM inbox WHERE state IN ('received', 'processing', 'retrying')")
    return rows == [(0,)]


def scan(url):
    return subprocess.run([str(BIN), "--db", url, "scan"], capture_output=True, text=True,
                          timeout=300)


def test_three_replicas_one_killed_mid_work(tmp_path, dun_pg):
    url = dun_pg.create("fleet")
    conf = {"server": {"workers": "2", "group_commit_max": "32"}}
    servers = [PgServe(tmp_path, "r%d" % i, dun_pg, url, **conf) for i in range(3)]
    for s in servers:
        s.start()
    payloads = population(N_ACCOUNTS)
    acked, threads, stop = fire(servers, payloads)
    try:
        # Kill one replica once a third of the events are in and work is under way.
        assert wait_until(lambda: len(acked) >= len(payloads) // 3)
        victim = servers[1]
        victim.kill9()
        assert wait_until(lambda: len(acked) >= 2 * len(payloads) // 3)
        victim.start()
        for t in threads:
            t.join(300)
    finally:
        stop.set()
    assert len(acked) == len(payloads)
    assert wait_until(lambda: idle(servers[0]), timeout=180), servers[0].sql(
        "SELECT state, COUNT(*) FROM inbox GROUP BY state")
    for s in servers:
        assert s.stop() == 0, s.logs()[-3000:]

    db = servers[0]
    stored = {r[0] for r in db.sql("SELECT id FROM events_raw")}
    assert acked <= stored, sorted(acked - stored)[:5]
    assert db.sql("SELECT COUNT(*) FROM inbox WHERE state = 'dead'") == [(0,)]
    stages = dict(db.sql("SELECT stage, COUNT(*) FROM dunning GROUP BY stage"))
    assert sum(stages.values()) == N_ACCOUNTS, stages
    assert {"notified", "restricted", "suspended"} <= set(stages), stages
    # Nothing twice: one email per account, kind and invoice; one stage email per kind.
    assert db.sql("SELECT account_id, kind, invoice_id FROM emails"
                  " GROUP BY account_id, kind, invoice_id HAVING COUNT(*) > 1") == []
    # The replicas shared the work: the last claims of the accounts name
    # workers of more than one process.
    pids = {w.rsplit(":", 1)[1] for (w,) in db.sql("SELECT DISTINCT owner FROM claims")}
    assert len(pids) >= 2, pids
    r = scan(url)
    assert r.returncode == 0 and " 0 drifting" in r.stdout, r.stdout + r.stderr


def test_postgresql_restarted_under_load(tmp_path, dun_pg):
    url = dun_pg.create("restart")
    s = PgServe(tmp_path, "one", dun_pg, url,
                server={"workers": "2", "group_commit_max": "32"}).start()
    payloads = population(N_ACCOUNTS)
    acked, threads, stop = fire([s], payloads, n_threads=4)
    restarted = False
    try:
        assert wait_until(lambda: len(acked) >= len(payloads) // 3)
        dun_pg.server_stop(mode="immediate")
        try:
            # While the database is down the service is not ready.
            assert wait_until(lambda: s.request("GET", "/readyz")[0] == 503, timeout=30)
            acked_while_down = len(acked)
            time.sleep(1.0)
            assert len(acked) <= acked_while_down + 32  # at most the batch in flight
        finally:
            dun_pg.server_start()
            restarted = True
        assert wait_until(lambda: s.request("GET", "/readyz")[0] == 200, timeout=60), s.logs()[-3000:]
        for t in threads:
            t.join(300)
    finally:
        stop.set()
        if not restarted:
            dun_pg.server_start()
    assert len(acked) == len(payloads)
    assert wait_until(lambda: idle(s), timeout=180), s.sql(
        "SELECT state, last_error, COUNT(*) FROM inbox GROUP BY state, last_error")
    assert s.stop() == 0, s.logs()[-3000:]
    stored = {r[0] for r in s.sql("SELECT id FROM events_raw")}
    assert acked <= stored, sorted(acked - stored)[:5]
    assert s.sql("SELECT COUNT(*) FROM inbox WHERE state = 'dead'") == [(0,)]
    r = scan(url)
    assert r.returncode == 0 and " 0 drifting" in r.stdout, r.stdout + r.stderr


pytestmark = pytest.mark.skipif(not BIN.exists(), reason="dunning is not built")


def test_serve_stops_promptly_while_postgresql_is_down(tmp_path, dun_pg):
    """SIGTERM while the database is unreachable: once every request is
    answered the service stops waiting for the database (no reconnect
    backoff of several seconds per statement in each thread) and exits
    well inside a service manager's stop timeout."""
    url = dun_pg.create("stopdown")
    s = PgServe(tmp_path, "stopdown", dun_pg, url, server={"workers": "2"}).start()
    dun_pg.server_stop(mode="immediate")
    try:
        assert wait_until(lambda: s.request("GET", "/readyz")[0] == 503, timeout=30)
        time.sleep(1.0)  # every thread in its reconnect backoff
        t0 = time.monotonic()
        rc = s.stop(timeout=60)
        took = time.monotonic() - t0
    finally:
        dun_pg.server_start()
    assert rc == 0, s.logs()[-3000:]
    # Before, each thread finished several reconnect rounds of about 6 s.
    assert took < 10, (took, s.logs()[-3000:])


def test_serve_with_the_database_down_exits_69_to_be_restarted(tmp_path, dun_pg):
    """A replica started while PostgreSQL is unreachable is not misconfigured:
    it exits 69 (EX_UNAVAILABLE), which its service manager restarts, not 78."""
    import socket
    with socket.socket() as sk:  # a port nothing listens on
        sk.bind(("127.0.0.1", 0))
        port = sk.getsockname()[1]
    conf = tmp_path / "down.conf"
    conf.write_text("[server]\nlisten = 127.0.0.1:0\n[database]\n"
                    "url = postgresql://postgres:secret-pw@127.0.0.1:%d/dunning\n" % port)
    r = subprocess.run([str(BIN), "serve", "--config", str(conf)], capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 69, (r.returncode, r.stderr)
    assert "cannot connect" in r.stderr and "secret-pw" not in r.stderr


def test_a_trigger_stored_by_another_process_wakes_the_idle_workers(tmp_path, dun_pg):
    """LISTEN/NOTIFY: a replica whose workers are idle, with a poll timer of a
    minute, recomputes at once what another process (here `dunning ingest`
    on another connection) stored: the commit that stored the trigger
    notified the inbox channel, and the replica's listener woke its workers."""
    url = dun_pg.create("wake")
    s = Serve(tmp_path, "idle", db=url, pg=dun_pg,
              server={"poll_ms": "60000", "workers": "2"}).start()
    try:
        # Make sure the workers are idle: one webhook, recomputed, and then
        # nothing for them to do: only a notification wakes them now.
        p = customer_created("acct_first", "cus_first", int(time.time()))
        [h] = sign_batch([(p, SECRET_A, None)])
        assert s.deliver(p, header=h)[0] == 200
        assert wait_until(lambda: idle(s), timeout=20)
        time.sleep(0.5)
        events = tmp_path / "events.jsonl"
        events.write_bytes(b"".join(p + b"\n" for p in
                                    failing_account_events("acct_wake", days_ago=8)))
        r = subprocess.run([str(BIN), "--db", url, "ingest", str(events), "--no-work"],
                           capture_output=True, text=True, timeout=60)
        assert r.returncode == 0, r.stdout + r.stderr
        # Well inside the minute the timer would take.
        assert wait_until(lambda: idle(s) and s.stage("acct_wake") == "restricted",
                          timeout=20), s.logs()[-3000:]
    finally:
        assert s.stop() == 0, s.logs()[-3000:]


def test_fleet_workers_caps_the_workers_working_at_once(tmp_path, dun_pg):
    """[server] fleet_workers: two replicas of three workers each, and at most
    two workers of the fleet have claimed triggers at any moment (sampled
    while the backlog drains; six without the cap). One replica is killed
    with SIGKILL mid-work: its turns come free (a process of this host that
    is gone), the other replica finishes every account, and when the inbox
    is empty every turn has been given back."""
    url = demo_on_pg(tmp_path, dun_pg, "turns", 120)
    servers = [PgServe(tmp_path, "t%d" % i, dun_pg, url,
                       server={"workers": "3", "fleet_workers": "2", "poll_ms": "50"})
               for i in range(2)]
    for s in servers:
        s.start()
    con = dun_pg.connect(url)
    con.autocommit = True
    cur = con.cursor()
    held_query = ("SELECT COUNT(*) FROM fleet_turns WHERE expires_ms >="
                  " (extract(epoch FROM clock_timestamp()) * 1000)::bigint")
    open_query = ("SELECT COUNT(*) FROM inbox WHERE state IN"
                  " ('received', 'processing', 'retrying')")
    try:
        n = recompute_everyone(cur, "turns")
        most, samples_held, killed, most_working = 0, 0, False, 0
        deadline = time.time() + 180
        while time.time() < deadline:
            cur.execute(held_query)
            [held] = cur.fetchone()
            most = max(most, held)
            samples_held += held > 0
            if not killed:
                # The workers with claimed triggers (a killed replica's stay
                # claimed until their lease runs out: counted before only).
                cur.execute("SELECT COUNT(DISTINCT claimed_by) FROM inbox"
                            " WHERE state = 'processing'")
                most_working = max(most_working, cur.fetchone()[0])
            cur.execute(open_query)
            [left] = cur.fetchone()
            if left == 0:
                break
            if not killed and left < n * 2 // 3:
                servers[0].kill9()
                killed = True
            time.sleep(0.01)
        assert killed and left == 0, (left, servers[1].logs()[-3000:])
        assert most <= 2, most
        assert samples_held > 0
        assert 1 <= most_working <= 2, most_working
        cur.execute("SELECT COUNT(DISTINCT account_id) FROM decisions"
                    " WHERE trigger_kind = 'support_recompute'")
        assert cur.fetchone()[0] == n
        cur.execute("SELECT COUNT(*) FROM inbox WHERE state = 'dead'")
        assert cur.fetchone()[0] == 0
        # Idle now: the survivor gave its turns back.
        assert wait_until(lambda: cur.execute(held_query) or cur.fetchone()[0] == 0,
                          timeout=20)
    finally:
        con.close()
        assert servers[1].stop() == 0, servers[1].logs()[-3000:]


def test_fleet_workers_default_is_twice_the_cpus(tmp_path, dun_pg):
    """The default fleet_workers (auto) is twice the host's CPUs:
    `config check` says so, and two replicas of that many workers each
    drain a backlog with at most that many working at once (turns are
    taken: without a cap the fleet takes none)."""
    online = os.sysconf("SC_NPROCESSORS_ONLN")
    cap = 2 * online
    if cap > 64:
        pytest.skip("more CPUs than a replica has workers (64)")
    url = demo_on_pg(tmp_path, dun_pg, "auto", 80)
    servers = [PgServe(tmp_path, "a%d" % i, dun_pg, url,
                       server={"workers": str(cap), "poll_ms": "50"}) for i in range(2)]
    servers[0].write_config()
    r = subprocess.run([str(BIN), "config", "check", str(servers[0].conf)],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr
    assert ("at most %d workers of all replicas at once (auto: twice this host's %d CPUs)"
            % (cap, online)) in r.stdout, r.stdout
    for s in servers:
        s.start()
    con = dun_pg.connect(url)
    con.autocommit = True
    cur = con.cursor()
    try:
        n = recompute_everyone(cur, "auto")
        most_held, most_working, left = 0, 0, n
        deadline = time.time() + 180
        while time.time() < deadline and left:
            cur.execute("SELECT COUNT(*) FROM fleet_turns WHERE expires_ms >="
                        " (extract(epoch FROM clock_timestamp()) * 1000)::bigint")
            most_held = max(most_held, cur.fetchone()[0])
            cur.execute("SELECT COUNT(DISTINCT claimed_by) FROM inbox"
                        " WHERE state = 'processing'")
            most_working = max(most_working, cur.fetchone()[0])
            cur.execute("SELECT COUNT(*) FROM inbox WHERE state IN"
                        " ('received', 'processing', 'retrying')")
            [left] = cur.fetchone()
            time.sleep(0.01)
        assert left == 0, servers[0].logs()[-3000:]
        assert 1 <= most_held <= cap, most_held
        assert most_working <= cap, most_working
        cur.execute("SELECT COUNT(DISTINCT account_id) FROM decisions"
                    " WHERE trigger_kind = 'support_recompute'")
        assert cur.fetchone()[0] == n
    finally:
        con.close()
        for s in servers:
            assert s.stop() == 0, s.logs()[-3000:]
