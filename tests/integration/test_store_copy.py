"""`dunning store copy`: the embedded SQLite database moved into PostgreSQL.

The demo's database is copied into a fresh PostgreSQL database: every table
with the same rows, the copy as usable as the original (the same scan, an
account explained the same, new work with fresh ids), and the refusals —
a target that is not empty, a missing or foreign source, a source newer than
the binary, PostgreSQL down, a wrong password —
write nothing.
"""
import socket
import subprocess

from conftest import DUN_BINARY


def dunning(*args, timeout=300):
    return subprocess.run([str(DUN_BINARY)] + list(args), capture_output=True, text=True,
                          timeout=timeout)


def tables(pg, url):
    con = pg.connect(url)
    try:
        cur = con.cursor()
        cur.execute("SELECT COUNT(*) FROM accounts")
        accounts = cur.fetchone()[0]
        cur.execute("SELECT COUNT(*) FROM decisions")
        decisions = cur.fetchone()[0]
        return accounts, decisions
    finally:
        con.close()


def test_the_demo_database_copied_into_postgresql(tmp_path, dun_pg):
    db = tmp_path / "demo.db"
    r = dunning("--db", str(db), "demo", "--accounts", "60", "--days", "45")
    assert r.returncode == 0, r.stderr
    url = dun_pg.create("copy")
    r = dunning("store", "copy", "--from", str(db), "--to", url)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "counts and checksums equal" in r.stdout, r.stdout
    assert "DIFFERS" not in r.stdout
    accounts, decisions = tables(dun_pg, url)
    import sqlite3
    con = sqlite3.connect(str(db))
    assert (accounts, decisions) == (con.execute("SELECT COUNT(*) FROM accounts").fetchone()[0],
                                     con.execute("SELECT COUNT(*) FROM decisions").fetchone()[0])
    account = con.execute("SELECT account_id FROM dunning WHERE stage <> 'none'"
                          " ORDER BY account_id LIMIT 1").fetchone()[0]
    max_decision = con.execute("SELECT MAX(id) FROM decisions").fetchone()[0]
    con.close()
    # The same scan on both, the same account explained.
    a, b = dunning("--db", str(db), "scan"), dunning("--db", url, "scan")
    assert a.stdout == b.stdout and a.returncode == b.returncode, (a.stdout, b.stdout)
    a, b = dunning("--db", str(db), "explain", account), dunning("--db", url, "explain", account)
    assert a.returncode == b.returncode == 0 and a.stdout == b.stdout
    # New work on the copy gets fresh ids (identity columns were advanced).
    r = dunning("--db", url, "recompute", account)
    assert r.returncode == 0, r.stderr
    con = dun_pg.connect(url)
    cur = con.cursor()
    cur.execute("SELECT MAX(id) FROM decisions")
    assert cur.fetchone()[0] > max_decision
    con.close()
    # A second copy into the same (now not empty) target is refused, untouched.
    before = tables(dun_pg, url)
    r = dunning("store", "copy", "--from", str(db), "--to", url)
    assert r.returncode == 78 and "empty" in r.stderr, r.stderr
    assert tables(dun_pg, url) == before


def test_refusals_write_nothing(tmp_path, dun_pg):
    url = dun_pg.create("refuse")
    r = dunning("store", "copy", "--from", str(tmp_path / "missing.db"), "--to", url)
    assert r.returncode == 66, r.stderr
    junk = tmp_path / "junk.db"
    junk.write_bytes(b"this is not a database at all" * 100)
    r = dunning("store", "copy", "--from", str(junk), "--to", url)
    assert r.returncode == 65, r.stderr
    assert not dun_pg.has_schema(url)
    db = tmp_path / "d.db"
    assert dunning("--db", str(db), "init").returncode == 0
    r = dunning("store", "copy", "--from", str(db), "--to", "mysql://nowhere/x")
    assert r.returncode == 78, r.stderr
    with socket.socket() as sk:
        sk.bind(("127.0.0.1", 0))
        port = sk.getsockname()[1]
    r = dunning("store", "copy", "--from", str(db),
                "--to", "postgresql://postgres:pw-secret@127.0.0.1:%d/x" % port)
    assert r.returncode == 69 and "pw-secret" not in r.stderr, r.stderr


def test_a_wrong_password_is_refused_and_not_shown(tmp_path, dun_pg):
    """Password authentication (scram) for one role: the wrong password is a
    configuration error (78), said clearly, the password never echoed, and
    nothing is written."""
    con = dun_pg.connect("postgres")
    con.autocommit = True
    cur = con.cursor()
    cur.execute("DROP ROLE IF EXISTS dun_pw")
    cur.execute("CREATE ROLE dun_pw LOGIN PASSWORD 'right-pw'")
    hba = dun_pg.data / "pg_hba.conf"
    hba.write_text("host all dun_pw 127.0.0.1/32 scram-sha-256\n" + hba.read_text())
    cur.execute("SELECT pg_reload_conf()")
    con.close()
    url = dun_pg.create("pw")
    db = tmp_path / "d.db"
    assert dunning("--db", str(db), "init").returncode == 0
    wrong = url.replace("postgres@", "dun_pw:wrong-pw@")
    r = dunning("store", "copy", "--from", str(db), "--to", wrong)
    assert r.returncode == 78, (r.returncode, r.stderr)
    assert "password" in r.stderr and "wrong-pw" not in r.stderr, r.stderr
    assert not dun_pg.has_schema(url)


def test_a_source_newer_than_the_binary_is_refused(tmp_path, dun_pg):
    import sqlite3
    db = tmp_path / "new.db"
    assert dunning("--db", str(db), "init").returncode == 0
    con = sqlite3.connect(str(db))
    version = con.execute("PRAGMA user_version").fetchone()[0]
    con.execute("PRAGMA user_version = %d" % (version + 1))
    con.commit()
    con.close()
    url = dun_pg.create("newer")
    r = dunning("store", "copy", "--from", str(db), "--to", url)
    assert r.returncode == 78, (r.returncode, r.stderr)
    assert "newer than this binary" in r.stderr, r.stderr
    assert not dun_pg.has_schema(url)
