"""Shared helpers for the integration tests that drive the `dunning` binary.

Everything here is namespaced so it cannot collide with the fixtures of
other test files in this directory:

* the ``dun`` fixture: a :class:`Dunning` bound to a fresh database in the
  test's own ``tmp_path`` — ``dun.run(...)``, ``dun.ok(...)``,
  ``dun.explain(...)``, ``dun.ingest(...)``, ``dun.sql(...)``;
* the ``dun_stripe`` fixture: a :class:`StripeEvents` that builds
  Stripe-format objects and events (customer.created with metadata
  account_id, invoice.finalized, charge.failed with outcome.reason,
  invoice.payment_failed, invoice.paid, ...) on a fixed timeline;
* ``dun.at(days)``: the ``--now`` value ``days`` after that timeline's start;
* ``dun_writes_on(db)``: turn writes on in a database (rollout active at
  100%, forced past the parity gate) — a new database observes and writes
  nothing. The ``dun`` fixture does it before its first command (its
  ``writes`` option); ``dun_observe`` is the same fixture without it, a
  database exactly as a new installation has it.

Backends: ``dun`` and ``dun_observe`` run every test twice, on a SQLite
file and on a PostgreSQL database of its own (``dun.backend`` says which).
The PostgreSQL side is a real, throwaway cluster this file starts once per
session (``dun_pg``: initdb into a temporary directory, the server on
127.0.0.1 and a socket in that directory, stopped at the end; as root it
runs as the ``postgres`` user). Without PostgreSQL's binaries the
postgresql variants are skipped, saying why. ``dun.sql``, ``dun.scalar``,
``dun.execute``, ``dun.emails`` and ``dun.provider_knows`` work on both:
queries are written with SQLite's ``?``/``?N`` parameters. A test that is
about SQLite itself is listed in DUN_SQLITE_ONLY below.

The binary is found in $DUNNING_BUILD_DIR (default: build, relative to the
repository root). Every command gets ``--db`` explicitly; the environment
variables the binary reads (DUNNING_DB, DUNNING_POLICY, ...) are removed so
a developer's shell cannot leak into a test.
"""

import glob
import json
import os
import re
import shutil
import socket
import sqlite3
import subprocess
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import pytest

DUN_REPO = Path(__file__).resolve().parents[2]
DUN_BUILD = Path(os.environ.get("DUNNING_BUILD_DIR", "build"))
if not DUN_BUILD.is_absolute():
    DUN_BUILD = DUN_REPO / DUN_BUILD
DUN_BINARY = DUN_BUILD / "dunning"

# The timeline of the tests' events: day 0 is Monday 2 March 2026, 09:00 UTC.
DUN_T0 = int(datetime(2026, 3, 2, 9, 0, tzinfo=timezone.utc).timestamp())
DUN_DAY = 86400

# Exit codes (sysexits), as docs and `dunning --help` promise.
EX_OK, EX_FAIL, EX_USAGE, EX_DATAERR, EX_NOINPUT = 0, 1, 64, 65, 66
EX_CANTCREAT, EX_CONFIG = 73, 78


def dun_at(days=0.0, seconds=0):
    """The --now value `days` (may be fractional) after DUN_T0, as ISO 8601 UTC."""
    t = DUN_T0 + round(days * DUN_DAY) + seconds
    return datetime.fromtimestamp(t, tz=timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def dun_writes_on(db, config=None):
    """Turn writes on in the database `db`, as an operator does after cutover:
    `init`, `rollout mode active`, `rollout percent 100 --force` (forced: the
    tests have no legacy system to prove parity against). With config, the
    commands run with --config too (its [database] path is then db)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("DUNNING_")}
    env["TZ"] = "UTC"
    base = [str(DUN_BINARY)] + (["--config", str(config)] if config else ["--db", str(db)])
    for args in (["init"], ["rollout", "mode", "active"],
                 ["rollout", "percent", "100", "--force"]):
        proc = subprocess.run(base + args, text=True, capture_output=True, env=env)
        assert proc.returncode == 0, proc.stderr


class DunResult:
    """One finished command: its exit code and both outputs."""

    def __init__(self, args, proc):
        self.args = args
        self.rc = proc.returncode
        self.out = proc.stdout
        self.err = proc.stderr

    def __repr__(self):
        return "dunning %s -> %d\n--- stdout\n%s--- stderr\n%s" % (
            " ".join(self.args), self.rc, self.out, self.err)


class Dunning:
    """The `dunning` command bound to one database file."""

    DAY = DUN_DAY
    T0 = DUN_T0
    repo = DUN_REPO
    at = staticmethod(dun_at)

    def __init__(self, db, workdir, writes=True, pg=None):
        # db: a SQLite file, or (with pg, the DunPgCluster) a postgresql:// URL.
        self.pg = pg
        self.backend = "postgresql" if pg else "sqlite"
        self.db = DunPgUrl(db, pg) if pg else Path(db)
        self.workdir = Path(workdir)
        self._files = 0
        # writes: before the first command that opens a database that does
        # not exist yet, turn writes on in it (dun_writes_on).
        self.writes = writes

    def _writes_on_first(self, args, db):
        if not self.writes or not db or self.db.exists():
            return
        if any(str(a) in ("-h", "--help", "help") for a in args):
            return
        dun_writes_on(self.db)

    # -- running the binary ------------------------------------------------

    def env(self):
        env = {k: v for k, v in os.environ.items() if not k.startswith("DUNNING_")}
        env["TZ"] = "UTC"
        return env

    def argv(self, args, now=None, policy=None, db=True):
        argv = [str(DUN_BINARY)]
        if db:
            argv += ["--db", str(self.db)]
        if now is not None:
            argv += ["--now", now]
        if policy is not None:
            argv += ["--policy", str(policy)]
        return argv + [str(a) for a in args]

    def run(self, *args, now=None, policy=None, db=True, stdin=None, timeout=300):
        """Run `dunning [--db DB] [--now NOW] [--policy P] ARGS...`; never raises on rc."""
        self._writes_on_first(args, db)
        proc = subprocess.run(self.argv(args, now, policy, db), input=stdin, text=True,
                              capture_output=True, env=self.env(), cwd=self.workdir,
                              timeout=timeout)
        return DunResult([str(a) for a in args], proc)

    def ok(self, *args, **kw):
        """Run and require exit status 0; returns the result."""
        r = self.run(*args, **kw)
        assert r.rc == 0, r
        return r

    def expect(self, rc, *args, **kw):
        """Run and require exit status rc; returns the result."""
        r = self.run(*args, **kw)
        assert r.rc == rc, r
        return r

    def popen(self, *args, now=None, policy=None):
        """Start a command in the background (the caller waits or kills it by its pid)."""
        self._writes_on_first(args, True)
        return subprocess.Popen(self.argv(args, now, policy), text=True,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                env=self.env(), cwd=self.workdir)

    def init(self):
        return self.ok("init")

    def explain(self, account, now=None):
        """`explain ACCOUNT --json`, parsed."""
        r = self.ok("explain", account, "--json", now=now)
        return json.loads(r.out)

    def write(self, name, text):
        """A file in the test's directory."""
        path = self.workdir / name
        path.write_text(text)
        return path

    def ingest(self, events, now=None, no_work=False, expect=EX_OK, raw_lines=None):
        """Write events (dicts, or raw strings) one per line and `ingest` them."""
        self._files += 1
        lines = raw_lines if raw_lines is not None else [
            e if isinstance(e, str) else json.dumps(e) for e in events]
        path = self.write("events-%d.jsonl" % self._files, "".join(l + "\n" for l in lines))
        args = ["ingest", path] + (["--no-work"] if no_work else [])
        return self.expect(expect, *args, now=now)

    def work(self, now=None, expect=EX_OK):
        return self.expect(expect, "work", now=now)

    # -- reading the database ---------------------------------------------

    def _connect(self):
        if self.pg:
            return self.pg.connect(self.db)
        return sqlite3.connect(str(self.db), timeout=30)

    def _q(self, query, params):
        """query and params for this backend (SQLite's ?/?N on both)."""
        if self.pg:
            return dun_pg_query(query, params)
        return query, params

    def sql(self, query, params=()):
        """Rows of a query (read-only use; WAL lets this run beside the binary)."""
        con = self._connect()
        try:
            cur = con.cursor()
            cur.execute(*self._q(query, params))
            return [tuple(r) for r in cur.fetchall()]
        finally:
            con.close()

    def scalar(self, query, params=()):
        rows = self.sql(query, params)
        return rows[0][0] if rows else None

    def execute(self, query, params=()):
        """Write to the database behind the binary's back (tampering, drift)."""
        con = self._connect()
        try:
            con.cursor().execute(*self._q(query, params))
            con.commit()
        finally:
            con.close()

    def emails(self, account=None):
        """The email log as dicts, oldest first."""
        con = self._connect()
        try:
            cur = con.cursor()
            cur.execute(*self._q(
                "SELECT * FROM emails WHERE ?1 IS NULL OR account_id = ?1"
                " ORDER BY created_at, key", (account,)))
            names = [d[0] for d in cur.description]
            return [dict(zip(names, r)) for r in cur.fetchall()]
        finally:
            con.close()

    def decisions(self, account):
        return self.scalar("SELECT COUNT(*) FROM decisions WHERE account_id = ?", (account,))

    # -- the simulated provider ------------------------------------------

    def provider_knows(self, *objects, behavior=None):
        """Put Stripe objects into the simulated provider's own store.

        The CLI's provider is the built-in simulated one; it keeps its
        objects in the sim_objects table of the same database. A test that
        plays "Stripe" with ingested events and wants the engine's writes
        (retries, mark uncollectible, cancel, metadata) to land must also
        make the provider know those objects, as Stripe would. behavior is
        the card behaviour of customers (see src/provider/sim.h), e.g.
        "insufficient_funds" or "expired_card".
        """
        con = self._connect()
        try:
            for o in objects:
                cus = o["id"] if o["object"] == "customer" else o.get("customer", "")
                con.cursor().execute(*self._q(
                    "INSERT INTO sim_objects(id, type, customer_id, behavior, body)"
                    " VALUES (?1, ?2, ?3, ?4, ?5) ON CONFLICT(id) DO UPDATE SET"
                    " body = excluded.body, behavior = CASE WHEN ?4 = ''"
                    " THEN sim_objects.behavior ELSE excluded.behavior END",
                    (o["id"], o["object"], cus,
                     behavior if (behavior and o["object"] == "customer") else "",
                     json.dumps(o))))
            con.commit()
        finally:
            con.close()

    def provider_object(self, object_id):
        """The simulated provider's current copy of one object (dict), or None.

        An object learnt from a webhook and not changed since is stored as
        "event:<id>", a reference to the stored event that carried it.
        """
        body = self.scalar("SELECT body FROM sim_objects WHERE id = ?", (object_id,))
        if body and body.startswith("event:"):
            ev = self.scalar("SELECT body FROM events_raw WHERE id = ?", (body[6:],))
            return json.loads(ev)["data"]["object"] if ev else None
        return json.loads(body) if body else None


class StripeEvents:
    """Stripe-format objects and events on the DUN_T0 timeline.

    Objects use the pre-2025-03-31 invoice shape (top-level subscription and
    payment_intent; charge.invoice), which is what the simulated provider
    speaks too. Ids are unique within one test.
    """

    def __init__(self, prefix="t"):
        self.prefix = prefix
        self.n = 0

    def _id(self, kind):
        self.n += 1
        return "%s_%s%05d" % (kind, self.prefix, self.n)

    @staticmethod
    def t(days=0.0, seconds=0):
        return DUN_T0 + int(days * DUN_DAY) + seconds

    def customer(self, account_id, email=None, name=None, days=0.0):
        cid = self._id("cus")
        return {"id": cid, "object": "customer", "email": email or "%s@example.com" % account_id,
                "name": name or "Customer of %s" % account_id, "created": self.t(days),
                "metadata": {"account_id": account_id},
                "invoice_settings": {"default_payment_method": self._id("pm")}}

    def subscription(self, customer, days=0.0, product="prod_pro"):
        sid = self._id("sub")
        return {"id": sid, "object": "subscription", "customer": customer["id"],
                "status": "active", "created": self.t(days),
                "items": {"object": "list", "data": [
                    {"id": "si_" + sid, "object": "subscription_item",
                     "price": {"id": "price_" + product, "object": "price", "product": product}}]}}

    def invoice(self, customer, subscription=None, amount=2000, days=0.0,
                billing_reason="subscription_cycle", status="open", attempt_count=0):
        iid = self._id("in")
        return {"id": iid, "object": "invoice", "customer": customer["id"],
                "subscription": subscription["id"] if subscription else "",
                "status": status, "amount_due": amount, "amount_paid": 0,
                "amount_remaining": amount, "currency": "usd", "attempt_count": attempt_count,
                "attempted": attempt_count > 0, "billing_reason": billing_reason,
                "collection_method": "charge_automatically", "created": self.t(days),
                "hosted_invoice_url": "https://invoice.example.invalid/%s" % iid,
                "payment_intent": self._id("pi"), "metadata": {},
                "status_transitions": {}}

    def charge(self, invoice, customer, reason="insufficient_funds", status="failed",
               days=0.0, advice_code=None, network_advice_code=None):
        ch = {"id": self._id("ch"), "object": "charge", "customer": customer["id"],
              "invoice": invoice["id"], "payment_intent": invoice["payment_intent"],
              "created": self.t(days), "amount": invoice["amount_remaining"],
              "status": status,
              "payment_method": customer["invoice_settings"]["default_payment_method"]}
        if status == "failed":
            ch["failure_code"] = reason if reason in ("expired_card", "incorrect_number") \
                else "card_declined"
            ch["outcome"] = {"type": "issuer_declined", "reason": reason}
            if advice_code:
                ch["outcome"]["advice_code"] = advice_code
            if network_advice_code:
                ch["outcome"]["network_advice_code"] = network_advice_code
        return ch

    def event(self, etype, obj, days=0.0, seconds=0, event_id=None):
        """A Stripe event envelope around a copy of obj."""
        return {"id": event_id or self._id("evt"), "object": "event", "type": etype,
                "created": self.t(days, seconds), "api_version": "2024-06-20",
                "livemode": False, "data": {"object": json.loads(json.dumps(obj))}}

    def failing_account(self, account_id, reason="insufficient_funds", days=0.0, amount=2000):
        """The events of one account whose first invoice's payment fails.

        Returns (events, objects) where objects has customer, subscription,
        invoice (as the provider holds it after the failed attempt) and charge.
        """
        cus = self.customer(account_id, days=days)
        sub = self.subscription(cus, days=days)
        inv = self.invoice(cus, sub, amount=amount, days=days)
        evs = [self.event("customer.created", cus, days),
               self.event("customer.subscription.created", sub, days),
               self.event("invoice.finalized", inv, days, 1)]
        inv["attempt_count"] = 1
        inv["attempted"] = True
        ch = self.charge(inv, cus, reason=reason, days=days)
        sub["status"] = "past_due"
        evs += [self.event("charge.failed", ch, days, 2),
                self.event("invoice.payment_failed", inv, days, 3),
                self.event("customer.subscription.updated", sub, days, 4)]
        return evs, {"customer": cus, "subscription": sub, "invoice": inv, "charge": ch}

    def paid(self, invoice, days=0.0):
        """The invoice as paid in full (a new dict)."""
        inv = json.loads(json.dumps(invoice))
        inv.update({"status": "paid", "amount_paid": inv["amount_due"], "amount_remaining": 0,
                    "status_transitions": {"paid_at": self.t(days)}})
        return inv


# Tests about SQLite itself (its file, PRAGMA user_version): not run on PostgreSQL.
DUN_SQLITE_ONLY = {
    "test_cli.py::test_init_creates_and_is_idempotent",
    "test_cli.py::test_newer_schema_is_refused",
    "test_cli_inputs.py::test_database_and_its_wal_and_shm_are_private",
    "test_cli_inputs.py::test_a_corrupt_database",
    "test_cli_inputs.py::test_read_only_database",
    # opens the file with Python's sqlite3 (legacy_writes_stores)
    "test_rollout.py::test_parity_over_60_days_finds_exactly_the_planted_disagreements",
    # loads a SQLite dump made by the previous release's binary
    "test_release_upgrade.py::test_an_upgraded_database_sends_none_of_its_emails_again",
    # SQLite's file on a full disk
    "test_hostile_clients.py::test_readyz_fails_while_the_disk_is_full_and_recovers",
}


def pytest_collection_modifyitems(config, items):
    for item in items:
        callspec = getattr(item, "callspec", None)
        if not callspec or callspec.params.get("dun_backend") != "postgresql":
            continue
        name = "%s::%s" % (Path(str(item.fspath)).name, item.originalname)
        if name in DUN_SQLITE_ONLY:
            item.add_marker(pytest.mark.skip(reason="about SQLite's file itself"))


def dun_pg_query(query, params=()):
    """A query with SQLite's ?N / ? parameters as psycopg2 wants it (%s, in order)."""
    params = list(params)
    out, args, nxt = [], [], 0
    i = 0
    while i < len(query):
        c = query[i]
        if c in "'\"":
            j = query.index(c, i + 1) + 1
            out.append(query[i:j].replace("%", "%%"))
            i = j
            continue
        if c == "?":
            m = re.match(r"\?(\d*)", query[i:])
            if m.group(1):
                n = int(m.group(1))
            else:
                nxt += 1
                n = nxt
            out.append("%s")
            args.append(params[n - 1])
            i += len(m.group(0))
            continue
        out.append("%%" if c == "%" else c)
        i += 1
    return "".join(out), args


class DunPgUrl(str):
    """A PostgreSQL database's URL that, like a Path, says whether it exists:
    whether the dunning schema was created in it."""

    def __new__(cls, url, pg):
        obj = super().__new__(cls, url)
        obj.pg = pg
        return obj

    def exists(self):
        return self.pg.has_schema(self)


class DunPgCluster:
    """A throwaway PostgreSQL cluster: initdb into a temporary directory, the
    server on 127.0.0.1 (a free port) and a Unix socket in that directory."""

    def __init__(self, bindir):
        self.bindir = Path(bindir)
        self.dir = Path(tempfile.mkdtemp(prefix="dunning-pg-"))
        self.data = self.dir / "data"
        with socket.socket() as sk:
            sk.bind(("127.0.0.1", 0))
            self.port = sk.getsockname()[1]
        self.as_root = os.geteuid() == 0
        self.n = 0

    def _run(self, *argv):
        cmd = [str(a) for a in argv]
        if self.as_root:  # initdb refuses root: the server runs as postgres
            cmd = ["runuser", "-u", "postgres", "--"] + cmd
        return subprocess.run(cmd, text=True, capture_output=True, timeout=120)

    def start(self):
        if self.as_root:
            shutil.chown(self.dir, "postgres")
        r = self._run(self.bindir / "initdb", "-D", self.data, "-A", "trust", "-U", "postgres",
                      "--no-sync", "-E", "UTF8", "--locale=C")
        assert r.returncode == 0, r.stdout + r.stderr
        self.server_start()

    def server_start(self):
        """Start the server on the existing data directory (after server_stop)."""
        opts = ("-c listen_addresses=127.0.0.1 -p %d -k %s -c fsync=off"
                " -c full_page_writes=off -c max_connections=200" % (self.port, self.dir))
        r = self._run(self.bindir / "pg_ctl", "-D", self.data, "-l", self.dir / "server.log",
                      "-o", opts, "-w", "start")
        assert r.returncode == 0, r.stdout + r.stderr + self.log()

    def server_stop(self, mode="fast"):
        """Stop the server, keeping its data (a restart, an outage)."""
        r = self._run(self.bindir / "pg_ctl", "-D", self.data, "-m", mode, "-w", "stop")
        assert r.returncode == 0, r.stdout + r.stderr + self.log()

    def stop(self):
        self._run(self.bindir / "pg_ctl", "-D", self.data, "-m", "immediate", "-w", "stop")
        shutil.rmtree(self.dir, ignore_errors=True)

    def log(self):
        try:
            return (self.dir / "server.log").read_text()
        except OSError:
            return ""

    def url(self, name):
        return "postgresql://postgres@127.0.0.1:%d/%s" % (self.port, name)

    def connect(self, url_or_name):
        import psycopg2
        name = url_or_name.rsplit("/", 1)[-1]
        return psycopg2.connect(host="127.0.0.1", port=self.port, user="postgres", dbname=name)

    def create(self, prefix="dun"):
        """A new empty database; returns its URL."""
        self.n += 1
        name = "%s_%d_%d" % (prefix, os.getpid(), self.n)
        con = self.connect("postgres")
        con.autocommit = True
        try:
            con.cursor().execute('CREATE DATABASE "%s"' % name)
        finally:
            con.close()
        return self.url(name)

    def has_schema(self, url):
        con = self.connect(url)
        try:
            cur = con.cursor()
            cur.execute("SELECT to_regclass('dunning_schema') IS NOT NULL")
            return cur.fetchone()[0]
        finally:
            con.close()


def dun_pg_bindir():
    """Debian's PostgreSQL server binaries (the newest version), or None."""
    dirs = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"),
                  key=lambda p: int(p.split("/")[4]) if p.split("/")[4].isdigit() else 0)
    return str(Path(dirs[-1]).parent) if dirs else None


_dun_pg_cluster = None


@pytest.fixture(scope="session")
def dun_pg():
    """The session's throwaway PostgreSQL cluster (started on first use)."""
    global _dun_pg_cluster
    bindir = dun_pg_bindir()
    if not bindir:
        pytest.skip("PostgreSQL is not installed (Debian package postgresql)")
    try:
        import psycopg2  # noqa: F401
    except ImportError:
        pytest.skip("python3-psycopg2 is not installed")
    if _dun_pg_cluster is None:
        _dun_pg_cluster = DunPgCluster(bindir)
        _dun_pg_cluster.start()
    return _dun_pg_cluster


def pytest_sessionfinish(session, exitstatus):
    global _dun_pg_cluster
    if _dun_pg_cluster is not None:
        _dun_pg_cluster.stop()
        _dun_pg_cluster = None


@pytest.fixture(params=["sqlite", "postgresql"])
def dun_backend(request):
    """The store a ``dun`` test runs on; the postgresql variant needs ``dun_pg``."""
    return request.param


def _dun_for(request, tmp_path, backend, writes):
    if not DUN_BINARY.exists():
        pytest.skip("dunning is not built in %s" % DUN_BUILD)
    if backend == "postgresql":
        pg = request.getfixturevalue("dun_pg")
        return Dunning(pg.create(), tmp_path, writes=writes, pg=pg)
    return Dunning(tmp_path / "dunning.db", tmp_path, writes=writes)


@pytest.fixture
def dun(request, tmp_path, dun_backend):
    """The `dunning` binary on a database of its own: a SQLite file in tmp_path,
    or a fresh PostgreSQL database (the test runs on both)."""
    return _dun_for(request, tmp_path, dun_backend, True)


@pytest.fixture
def dun_observe(request, tmp_path, dun_backend):
    """Like ``dun``, on a database left as a new installation has it: observe at 0%."""
    return _dun_for(request, tmp_path, dun_backend, False)


def dun_query(db, sql, *args):
    """Rows of sql (SQLite's ? parameters) on a database of either store: a
    SQLite file's path, or a DunPgUrl. Committed: sql may write."""
    if isinstance(db, DunPgUrl):
        con = db.pg.connect(db)
        try:
            cur = con.cursor()
            cur.execute(*dun_pg_query(sql, args))
            rows = [tuple(r) for r in cur.fetchall()] if cur.description else []
            con.commit()
            return rows
        finally:
            con.close()
    con = sqlite3.connect(str(db), timeout=30)
    try:
        rows = con.execute(sql, args).fetchall()
        con.commit()
        return rows
    finally:
        con.close()


def dun_db_line(db):
    """The [database] line of a config naming db: a URL or a file's path."""
    return ("url = %s" if isinstance(db, DunPgUrl) else "path = %s") % db


def dun_db_exists(db):
    return db.exists() if isinstance(db, DunPgUrl) else Path(db).exists()


@pytest.fixture
def dun_new_db(request, tmp_path, dun_backend):
    """A maker of empty databases on the test's backend: dun_new_db("name") is
    a SQLite file in tmp_path or a new PostgreSQL database (a DunPgUrl)."""
    pg = request.getfixturevalue("dun_pg") if dun_backend == "postgresql" else None

    def make(name):
        return DunPgUrl(pg.create(name), pg) if pg else tmp_path / ("%s.db" % name)
    return make


def dun_copy_db(src, dst):
    """The SQLite database src copied into dst: a file (SQLite's backup API,
    the WAL included) or an empty PostgreSQL database (`dunning store copy`)."""
    if isinstance(dst, DunPgUrl):
        r = subprocess.run([str(DUN_BINARY), "store", "copy", "--from", str(src), "--to", dst],
                           capture_output=True, text=True, timeout=300)
        assert r.returncode == 0, r.stdout + r.stderr
        return
    a = sqlite3.connect(str(src))
    b = sqlite3.connect(str(dst))
    try:
        a.backup(b)
    finally:
        a.close()
        b.close()


@pytest.fixture
def dun_stripe():
    """A builder of Stripe-format objects and events on the DUN_T0 timeline."""
    return StripeEvents()


# Every request the engine's Stripe client makes to a Stripe fake during the
# session is appended here (fake_stripe.py reads the variable), so that
# test_zz_stripe_conformance.py, which runs last, checks them all against
# the official Stripe library's API definitions.
STRIPE_CAPTURE = Path(tempfile.gettempdir()) / ("dunning-stripe-capture-%d.jsonl" % os.getpid())
if "DUNNING_STRIPE_CAPTURE" not in os.environ:
    os.environ["DUNNING_STRIPE_CAPTURE"] = str(STRIPE_CAPTURE)
    if STRIPE_CAPTURE.exists():
        STRIPE_CAPTURE.unlink()
