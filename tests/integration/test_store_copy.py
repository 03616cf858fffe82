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
    # Before its commit the copy ran a drift scan of both and found the same.
    import json
    scan = json.loads(dunning("--db", str(db), "scan", "--json").stdout)
    assert scan["accounts"] == 60 and scan["planned_consequences"] > 0, scan
    assert ("drift scan of both: %d accounts, %d drifting, %d consequences a recompute of "
            "every account would plan: the same" % (scan["accounts"], scan["drifting"],
                                                     scan["planned_consequences"])
            in r.stdout), r.stdout
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
    # The policy the copy's drift scans use: a broken one stops it first.
    bad = tmp_path / "policy.json"
    bad.write_text('{"retry": {"max_attempts": "many"')
    r = dunning("--policy", str(bad), "store", "copy", "--from", str(db), "--to", url)
    assert r.returncode == 78 and "policy.json" in r.stderr, r.stderr
    assert not dun_pg.has_schema(url)
    r = dunning("store", "copy", "--from", str(db), "--to", "mysql://nowhere/x")
    assert r.returncode == 78, r.stderr
    with socket.socket() as sk:
        sk.bind(("127.0.0.1", 0))
        port = sk.getsockname()[1]
    r = dunning("store", "copy", "--from", str(db),
                "--to", "postgresql://postgres:pw-secret@127.0.0.1:%d/x" % port)
    assert r.returncode == 69 and "pw-secret" not in r.stderr, r.stderr
    # Only copies of the password are masked: a one-letter password leaves
    # libpq's own words ("port") readable.
    r = dunning("store", "copy", "--from", str(db),
                "--to", "postgresql://postgres:p@127.0.0.1:%d/x" % port)
    assert r.returncode == 69 and "port" in r.stderr and "***ort" not in r.stderr, r.stderr


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


# Values that COPY's text format must escape, and the NULL marker as a value.
AWKWARD = ["tab\there", "new\nline", "carriage\rreturn", "back\\slash", "\\N", "\\.",
           "both\\\tand\\n", "", " lead and trail ", "ünïcode ✓ 日本", "end\\"]


def schema_objects(pg, url):
    """Every index, constraint and trigger of the schema, as PostgreSQL states them."""
    con = pg.connect(url)
    try:
        cur = con.cursor()
        cur.execute("SELECT indexdef FROM pg_indexes WHERE schemaname = current_schema()")
        indexes = sorted(r[0] for r in cur.fetchall())
        cur.execute("SELECT conrelid::regclass::text, conname, pg_get_constraintdef(oid)"
                    " FROM pg_constraint WHERE connamespace = current_schema()::regnamespace")
        constraints = sorted(cur.fetchall())
        cur.execute("SELECT tgrelid::regclass::text, tgname, tgenabled FROM pg_trigger"
                    " WHERE NOT tgisinternal")
        triggers = sorted(cur.fetchall())
        cur.execute("SELECT table_name, column_name, is_nullable, column_default, is_identity"
                    " FROM information_schema.columns WHERE table_schema = current_schema()")
        columns = sorted(cur.fetchall(), key=repr)
        return indexes, constraints, triggers, columns
    finally:
        con.close()


def test_awkward_text_and_nulls_arrive_exactly(tmp_path, dun_pg):
    """The bulk load's escaping: tabs, newlines, carriage returns, backslashes,
    a value spelled like the NULL marker, the end-of-data marker, non-ASCII
    text and real NULLs arrive as they were."""
    import sqlite3
    db = tmp_path / "awkward.db"
    assert dunning("--db", str(db), "init").returncode == 0
    con = sqlite3.connect(str(db))
    for i, v in enumerate(AWKWARD):
        con.execute("INSERT INTO accounts (id, name, email) VALUES (?, ?, ?)",
                    ("acct_%02d" % i, v, v[::-1]))
        con.execute("INSERT INTO p_invoices (id, customer_id, status, account_id,"
                    " hosted_invoice_url, meta_bad_debt_amount, meta_bad_debt_invoices)"
                    " VALUES (?, ?, 'open', ?, ?, ?, ?)",
                    ("in_%02d" % i, "cus_%02d" % i, "acct_%02d" % i, v,
                     None if i % 2 else -5 * i, None if i % 3 else v))
    con.commit()
    con.close()
    url = dun_pg.create("awkward")
    r = dunning("store", "copy", "--from", str(db), "--to", url)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "counts and checksums equal" in r.stdout, r.stdout
    pg = dun_pg.connect(url)
    cur = pg.cursor()
    cur.execute("SELECT id, name, email FROM accounts ORDER BY id")
    assert cur.fetchall() == [("acct_%02d" % i, v, v[::-1]) for i, v in enumerate(AWKWARD)]
    cur.execute("SELECT id, hosted_invoice_url, meta_bad_debt_amount, meta_bad_debt_invoices"
                " FROM p_invoices ORDER BY id")
    assert cur.fetchall() == [("in_%02d" % i, v, None if i % 2 else -5 * i,
                               None if i % 3 else v) for i, v in enumerate(AWKWARD)]
    pg.close()


def test_the_copy_has_the_schema_of_init(tmp_path, dun_pg):
    """The load runs without indexes, constraints and triggers and puts them
    back: the copy's schema is the one `dunning init` makes, and a target whose
    schema is already there, with no rows, is copied into as well."""
    db = tmp_path / "demo.db"
    assert dunning("--db", str(db), "demo", "--accounts", "20", "--days", "20").returncode == 0
    made = dun_pg.create("init")
    assert dunning("--db", made, "init").returncode == 0
    before = schema_objects(dun_pg, made)
    fresh = dun_pg.create("fresh")
    r = dunning("store", "copy", "--from", str(db), "--to", fresh)
    assert r.returncode == 0, r.stdout + r.stderr
    assert schema_objects(dun_pg, fresh) == before
    # A schema with no rows (init writes the settings): loaded with everything in place.
    con = dun_pg.connect(made)
    con.cursor().execute("DELETE FROM settings")
    con.commit()
    con.close()
    # (Without the drift scans this time: --no-scan, for very large stores.)
    r = dunning("store", "copy", "--from", str(db), "--to", made, "--no-scan")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "counts and checksums equal" in r.stdout, r.stdout
    assert "drift scan" not in r.stdout, r.stdout
    assert schema_objects(dun_pg, made) == before
    a, b = dunning("--db", fresh, "scan"), dunning("--db", made, "scan")
    assert a.returncode == b.returncode and a.stdout == b.stdout


def test_a_row_the_server_refuses_writes_nothing(tmp_path, dun_pg):
    """A value PostgreSQL cannot store (text that is not UTF-8) fails the load
    of its table, said, and the whole copy is rolled back: no schema either."""
    import sqlite3
    db = tmp_path / "bad.db"
    assert dunning("--db", str(db), "init").returncode == 0
    con = sqlite3.connect(str(db))
    con.execute("INSERT INTO accounts (id, name) VALUES ('acct_ok', 'fine')")
    con.execute("INSERT INTO accounts (id, name) VALUES ('acct_bad', CAST(X'C328' AS TEXT))")
    con.commit()
    con.close()
    url = dun_pg.create("bad")
    r = dunning("store", "copy", "--from", str(db), "--to", url)
    assert r.returncode != 0, r.stdout
    assert "accounts" in r.stderr and "UTF8" in r.stderr, r.stderr
    assert not dun_pg.has_schema(url)
