"""The CLI against bad input and hostile files: each case gets a clear
message and the sysexits code the README promises, and nothing is written
where nothing should be.

* --now: overflow, the epoch (0 meant "the wall clock"), impossible dates;
* rollout percent: nan, inf, hexadecimal, exponents, signs;
* a missing database is refused (66) by every command but init, with a
  hint; only init (and demo, serve) create one;
* a database on a full disk: ingest stops with 74, not 65 (bad input);
* a corrupt database or a file that is not one: 65 with a clear message,
  never "being processed by a worker" (75);
* a read-only database: the commands that only read work, the ones that
  write fail clearly;
* retry of a trigger that does not exist: 66;
* new database files are 0600 (and the -wal/-shm files SQLite makes next
  to them get the same mode);
* a secret in a URL of the configuration never appears in its error.

The full-disk and read-only cases need root (a private mount namespace via
`unshare --mount`); they are skipped, saying so, otherwise.
"""

import os
import shutil
import sqlite3
import stat
import subprocess

import pytest

from conftest import DUN_BINARY, EX_DATAERR, EX_NOINPUT, EX_OK, EX_USAGE, EX_CONFIG

EX_IOERR = 74


def is_root():
    return os.geteuid() == 0 and shutil.which("unshare") is not None


needs_root = pytest.mark.skipif(not is_root(), reason="needs root for unshare --mount "
                                "(a tmpfs or a read-only bind mount of its own)")


def in_mount_ns(script, env=None, timeout=120):
    """Run a shell script in a private mount namespace (root only)."""
    return subprocess.run(["unshare", "--mount", "sh", "-ec", script], capture_output=True,
                          text=True, timeout=timeout, env=env)


# --------------------------------------------------------------------------
# --now


@pytest.mark.parametrize("value", [
    "99999999999999999999",      # overflows int64
    "1970-01-01",                # 0 means "the wall clock": refused, not silently so
    "1970-01-01T00:00:00Z",
    "0",
    "-5", "+5", " 5", "1e9", "0x10",
    "2026-02-30",                # a date that does not exist
    "2026-13-01", "2026-03-01T24:00:00Z", "2026-03-01T10:00", "2026-03-01T10:00:00+01:00",
    "10000-01-01",
    "yesterday",
])
def test_now_refuses_what_is_not_a_time(dun, value):
    dun.init()
    r = dun.expect(EX_USAGE, "events", now=value)
    assert "--now" in r.err and value in r.err, r
    assert "1970-01-01T00:00:01Z" in r.err  # the message says the range


def test_now_accepts_the_documented_forms(dun):
    dun.init()
    for value in ("1772442000", "2026-03-02", "2026-03-02T09:00:00Z", "2026-03-02T09:00:00",
                  "2024-02-29", "1970-01-01T00:00:01Z", "9999-12-31T23:59:59Z"):
        dun.ok("events", now=value)
    # The forms mean the same instant: a trigger queued at each carries that time.
    dun.ok("account", "add", "acct_a")
    dun.ok("recompute", "acct_a", now="1772442000")
    dun.ok("recompute", "acct_a", now="2026-03-02T09:00:00Z")
    assert [r[0] for r in dun.sql("SELECT created_at FROM inbox ORDER BY id")] == \
        [1772442000, 1772442000]


# --------------------------------------------------------------------------
# rollout percent


@pytest.mark.parametrize("value", ["nan", "NaN", "inf", "0x10", "1e1", "-1", "+5", " 5",
                                   "5 ", "100.5", "101", "5.", ".5", "", "5%"])
def test_rollout_percent_refuses_what_is_not_a_percentage(dun, value):
    dun.init()
    dun.ok("rollout", "percent", "40", "--force")
    r = dun.expect(EX_USAGE, "rollout", "percent", value)
    assert "0 to 100" in r.err
    # Nothing was written: the previous value stands.
    assert "percent: 40" in dun.ok("rollout", "show").out


def test_rollout_percent_accepts_plain_decimals(dun):
    dun.init()
    for value, shown in (("0", "0"), ("12.5", "12.5"), ("100", "100"), ("007", "7")):
        dun.ok("rollout", "percent", value, "--force")
        assert "percent: %s\n" % shown in dun.ok("rollout", "show").out


def test_config_percent_refuses_nan(dun):
    conf = dun.write("nan.conf", "[rollout]\npercent = nan\n")
    r = dun.expect(EX_CONFIG, "config", "check", "--config", conf)
    assert "percent" in r.err and "nan" in r.err


# --------------------------------------------------------------------------
# a missing database


READ_OR_WORK = [
    ["scan"], ["scan", "--json"], ["scan", "--enqueue"], ["events"], ["emails"], ["work"],
    ["retry"], ["explain", "acct_1"], ["recompute", "acct_1"],
    ["recompute", "--dry-run", "acct_1"], ["rollout", "show"], ["rollout", "percent", "5"],
    ["account", "list"], ["account", "add", "acct_1"], ["outbox"],
    ["pay-bad-debt", "acct_1"], ["email", "preview", "bad_debt", "acct_1"],
]


@pytest.mark.parametrize("args", READ_OR_WORK, ids=lambda a: " ".join(a))
def test_missing_database_is_refused_not_created(dun, args):
    typo = dun.workdir / "typo.db"
    r = dun.run("--db", typo, *args, db=False)
    assert r.rc == EX_NOINPUT, r
    assert "no database there" in r.err and "init" in r.err, r
    assert "drifting" not in r.out
    assert not any(p.name.startswith("typo.db") for p in dun.workdir.iterdir())


def test_ingest_into_missing_database_is_refused(dun, dun_stripe):
    evs, _ = dun_stripe.failing_account("acct_1")
    path = dun.write("e.jsonl", "".join(__import__("json").dumps(e) + "\n" for e in evs))
    r = dun.run("--db", dun.workdir / "typo.db", "ingest", path, db=False)
    assert r.rc == EX_NOINPUT and "init" in r.err, r
    assert not (dun.workdir / "typo.db").exists()


def test_init_creates_and_then_everything_works(dun):
    new = dun.workdir / "new.db"
    r = dun.run("--db", new, "scan", db=False)
    assert r.rc == EX_NOINPUT and not new.exists(), r
    r = dun.run("--db", new, "init", db=False)
    assert r.rc == EX_OK and new.exists(), r
    r = dun.run("--db", new, "scan", db=False)
    assert r.rc == EX_OK and "0 drifting" in r.out, r


# --------------------------------------------------------------------------
# file modes


def mode(path):
    return stat.S_IMODE(os.stat(path).st_mode)


def test_database_and_its_wal_and_shm_are_private(dun):
    old = os.umask(0o022)
    try:
        dun.init()
    finally:
        os.umask(old)
    assert mode(dun.db) == 0o600, oct(mode(dun.db))
    # While a connection is open the -wal and -shm files exist: SQLite gives
    # them the database file's mode.
    con = sqlite3.connect(str(dun.db))
    try:
        con.execute("INSERT INTO settings(key, value) VALUES ('probe', '1')")
        con.commit()
        for sfx in ("-wal", "-shm"):
            p = str(dun.db) + sfx
            assert os.path.exists(p), p
            assert mode(p) == 0o600, (sfx, oct(mode(p)))
    finally:
        con.close()


def test_demo_database_is_private(dun):
    r = dun.run("--db", dun.workdir / "demo.db", "demo", "--accounts", "5", "--days", "3",
                db=False, timeout=300)
    assert r.rc == EX_OK, r
    assert mode(dun.workdir / "demo.db") == 0o600


# --------------------------------------------------------------------------
# corrupt files


def test_a_file_that_is_not_a_database(dun):
    junk = dun.write("junk.db", "this is a README, not a database\n" * 200)
    before = junk.read_bytes()
    for args in (["scan"], ["events"], ["work"], ["recompute", "acct_1"], ["init"]):
        r = dun.run("--db", junk, *args, db=False)
        assert r.rc == EX_DATAERR, r
        assert "not a dunning database, or it is corrupt" in r.err, r
        assert "being processed" not in r.err
    assert junk.read_bytes() == before


def test_a_corrupt_database(dun, dun_stripe):
    dun.init()
    evs, _ = dun_stripe.failing_account("acct_1")
    dun.ingest(evs, now=dun.at(0.1))
    # Overwrite every page but the first (the header stays valid).
    data = bytearray(dun.db.read_bytes())
    page = int.from_bytes(data[16:18], "big") or 65536
    for off in range(page, len(data), page):
        data[off:off + page] = bytes((i * 7 + 13) % 256 for i in range(page))
    dun.db.write_bytes(bytes(data))
    for args in (["recompute", "acct_1"], ["scan"], ["work"], ["explain", "acct_1"],
                 ["events"]):
        r = dun.run(*args)
        assert r.rc == EX_DATAERR, r
        assert "corrupt" in r.err, r
        assert "being processed" not in r.err


# --------------------------------------------------------------------------
# retry


def test_retry_of_a_trigger_that_does_not_exist(dun):
    dun.init()
    r = dun.expect(EX_NOINPUT, "retry", "4242")
    assert "no trigger 4242" in r.err
    r = dun.expect(EX_USAGE, "retry", "99999999999999999999")
    assert "not an inbox id" in r.err
    r = dun.expect(EX_USAGE, "retry", "0x10")


# --------------------------------------------------------------------------
# secrets in configuration errors


@pytest.mark.parametrize("section,key,value", [
    ("platform", "base_url", "https://platform.example.com/api?token=SECRET-QUERY-1"),
    ("platform", "base_url", "https://user:SECRET-PASS-2@platform.example.com/api"),
    ("platform", "base_url", "ftp://platform.example.com/?k=SECRET-QUERY-3"),
    ("stripe", "api_base", "http://stripe.example.com/?key=SECRET-QUERY-4"),
    ("stripe", "api_base", "https://u:SECRET-PASS-5@api.stripe.example/?k=SECRET-QUERY-5"),
    ("events", "endpoints", "https://e.example.com/in?sig=SECRET-QUERY-6, "
                            "https://e.example.com/in?sig=SECRET-QUERY-6"),
    ("email", "smtp_url", "ftp://mail.example.com:25/?password=SECRET-QUERY-7"),
])
def test_config_errors_never_echo_url_secrets(dun, section, key, value):
    extra = {
        "platform": "kind = http\n",
        "stripe": "api_key = sk_test_123\n",
        "events": "secret = 0123456789abcdef0123456789abcdef\n",
        "email": "transport = smtp\nsmtp_from = billing@example.com\n",
    }[section]
    text = "[database]\npath = %s\n" % dun.db
    if section == "stripe":
        text += "[provider]\nkind = stripe\n"
    text += "[%s]\n%s%s = %s\n" % (section, extra, key, value)
    conf = dun.write("secret.conf", text)
    dun.init()
    results = [dun.run("config", "check", "--config", conf), dun.run("--config", conf, "work")]
    if section == "stripe":
        results.append(dun.run("sync", "--config", conf))
    for r in results:
        assert r.rc != EX_OK, r
        assert "SECRET" not in r.err and "SECRET" not in r.out, r
        assert key in r.err or section in r.err, r


# --------------------------------------------------------------------------
# a full disk (root: a tiny tmpfs in a private mount namespace)


@needs_root
def test_ingest_on_a_full_disk_exits_74(dun, dun_stripe, tmp_path):
    import json
    lines = []
    for i in range(300):
        cus = dun_stripe.customer("acct_%d" % i, name="x" * 4000)
        lines.append(json.dumps(dun_stripe.event("customer.created", cus)))
    events = dun.write("big.jsonl", "".join(l + "\n" for l in lines))
    mnt = tmp_path / "small"
    mnt.mkdir()
    db = mnt / "d.db"
    r = in_mount_ns(
        "mount -t tmpfs -o size=1200k tmpfs {m}\n"
        "{b} --db {db} init >/dev/null\n"
        "set +e\n"
        "{b} --db {db} ingest {ev} >{m}/../out 2>{m}/../err\n"
        "echo $? >{m}/../rc\n"
        "{b} --db {db} events --state received >/dev/null 2>&1; echo $? >{m}/../rc2\n"
        .format(m=mnt, b=DUN_BINARY, db=db, ev=events), env=dun.env())
    assert r.returncode == 0, r
    rc = int((tmp_path / "rc").read_text())
    err = (tmp_path / "err").read_text()
    assert rc == EX_IOERR, (rc, err)
    assert "full" in err and "stopped" in err, err
    assert "rejected" not in (tmp_path / "out").read_text()
    # The database is still readable after the failed write.
    assert int((tmp_path / "rc2").read_text()) == EX_OK


# --------------------------------------------------------------------------
# a read-only database (root: a read-only bind mount)


@needs_root
def test_read_only_database(dun, dun_stripe, tmp_path):
    dun.init()
    evs, _ = dun_stripe.failing_account("acct_1")
    dun.ingest(evs, now=dun.at(0.1))
    reads = [["scan"], ["scan", "--json"], ["explain", "acct_1"], ["events"], ["emails"],
             ["rollout", "show"], ["outbox"], ["account", "list"],
             ["email", "preview", "payment_failed", "acct_1"],
             ["recompute", "--dry-run", "acct_1"]]
    writes = [["work"], ["scan", "--enqueue"], ["recompute", "acct_1"],
              ["rollout", "percent", "5"], ["account", "add", "acct_2"]]
    ro = tmp_path / "ro"
    ro.mkdir()
    db = ro / "dunning.db"
    shutil.move(str(dun.db), str(db))
    assert not os.path.exists(str(dun.db) + "-wal")
    out = tmp_path / "out"
    out.mkdir()
    script = "mount --bind {d} {d}\nmount -o remount,ro,bind {d}\nset +e\n".format(d=ro)
    for i, args in enumerate(reads + writes):
        script += "{b} --db {db} --now {now} {a} >{o}/o{i} 2>{o}/e{i}; " \
                  "echo $? >{o}/rc{i}\n".format(b=DUN_BINARY, db=db, a=" ".join(args), o=out,
                                                  i=i, now=dun.at(1))
    before = db.read_bytes()
    r = in_mount_ns(script, env=dun.env())
    assert r.returncode == 0, r
    for i, args in enumerate(reads + writes):
        rc = int((out / ("rc%d" % i)).read_text())
        err = (out / ("e%d" % i)).read_text()
        if args in reads:
            assert rc in (EX_OK, 1), (args, rc, err)  # scan exits 1 on drift
            assert "cannot open" not in err, (args, err)
        else:
            assert rc == EX_IOERR, (args, rc, err)
            assert "writable" in err, (args, err)
    assert db.read_bytes() == before
