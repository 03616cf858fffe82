"""PostgreSQL as the store: what is about that backend itself.

Everything else runs on PostgreSQL through the ``dun`` fixture (each test
of test_cli.py runs on SQLite and on PostgreSQL). Here: how a postgresql://
URL is chosen (--db, [database] url), what a person sees when the URL, the
password or the server is wrong (exit 78 for what must be fixed, 69 for a
server that may come back, never the password), and the schema version
kept in the database.
"""

import subprocess

from conftest import DUN_BINARY, DUN_BUILD, EX_CONFIG, EX_OK

EX_UNAVAILABLE = 69


def run(*args, cwd=None):
    import os
    env = {k: v for k, v in os.environ.items() if not k.startswith("DUNNING_")}
    env["TZ"] = "UTC"
    return subprocess.run([str(DUN_BINARY)] + [str(a) for a in args], text=True,
                          capture_output=True, env=env, cwd=cwd, timeout=120)


def test_init_migrates_a_postgresql_database_and_counts_its_tables(dun_pg):
    url = dun_pg.create("pginit")
    r = run("--db", url, "init")
    assert r.returncode == EX_OK, r.stderr
    assert "schema version" in r.stdout
    con = dun_pg.connect(url)
    try:
        cur = con.cursor()
        cur.execute("SELECT version FROM dunning_schema")
        version = cur.fetchone()[0]
        cur.execute("SELECT COUNT(*) FROM information_schema.tables"
                    " WHERE table_schema = 'public'")
        tables = cur.fetchone()[0]
        # 64-bit integers everywhere, as SQLite's INTEGER is.
        cur.execute("SELECT data_type FROM information_schema.columns"
                    " WHERE table_name = 'inbox' AND column_name = 'id'")
        id_type = cur.fetchone()[0]
    finally:
        con.close()
    assert "schema version %d" % version in r.stdout
    assert tables > 20
    assert id_type == "bigint"
    # Running init again changes nothing.
    r = run("--db", url, "init")
    assert r.returncode == EX_OK and "schema version %d" % version in r.stdout


def test_newer_schema_in_postgresql_is_refused(dun_pg):
    url = dun_pg.create("pgnewer")
    assert run("--db", url, "init").returncode == EX_OK
    con = dun_pg.connect(url)
    try:
        cur = con.cursor()
        cur.execute("UPDATE dunning_schema SET version = version + 1 RETURNING version")
        newer = cur.fetchone()[0]
        con.commit()
    finally:
        con.close()
    for args in (["init"], ["events"], ["work"]):
        r = run("--db", url, *args)
        assert r.returncode == EX_CONFIG, r
        assert "newer than this binary" in r.stderr
        assert "version %d" % newer in r.stderr


def test_connection_problems_are_clear_and_never_print_the_password(dun_pg):
    base = "127.0.0.1:%d" % dun_pg.port
    cases = [
        # what a person must fix: exit 78
        ("postgresql://postgres:s3cret-pw@%s/no_such_db" % base, EX_CONFIG, "does not exist"),
        ("postgresql://nobody:s3cret-pw@%s/postgres" % base, EX_CONFIG, "nobody"),
        ("postgresql://postgres:s3cret-pw@[not-a-host", EX_CONFIG, "cannot connect"),
        # a server that does not answer may come back: exit 69
        ("postgresql://postgres:s3cret-pw@127.0.0.1:1/x", EX_UNAVAILABLE, "cannot connect"),
    ]
    for url, rc, words in cases:
        r = run("--db", url, "init")
        assert r.returncode == rc, (url, r.returncode, r.stderr)
        assert words in r.stderr, r.stderr
        assert "s3cret-pw" not in r.stderr + r.stdout


def test_config_database_url_selects_postgresql(dun_pg, tmp_path):
    url = dun_pg.create("pgconf")
    conf = tmp_path / "d.conf"
    conf.write_text("[database]\npath = %s\nurl = %s\n" % (tmp_path / "unused.db", url))
    r = run("--config", conf, "init")
    assert r.returncode == EX_OK, r.stderr
    # The URL won over the path: no SQLite file was created.
    assert not (tmp_path / "unused.db").exists()
    r = run("--config", conf, "config", "check")
    assert r.returncode == EX_OK, r.stderr
    assert url in r.stdout
    # url must be a PostgreSQL URL; a file is [database] path.
    bad = tmp_path / "bad.conf"
    bad.write_text("[database]\nurl = %s\n" % (tmp_path / "x.db"))
    r = run("--config", bad, "init")
    assert r.returncode == EX_CONFIG
    assert "[database] url" in r.stderr
    assert not (tmp_path / "x.db").exists()


def test_the_store_seam_on_a_real_postgresql(dun_pg):
    """The C tests of the seam that need a server (tests/unit/test_store_pg.c):
    dun_db_pipeline sends several reads in one pipeline and gives the rows
    each would give alone, reports the first statement the server failed
    and leaves the connection usable, inside a transaction and out; after a
    lost connection the steps reconnect; the check `store copy` passes to
    dun_store_copy runs inside the copy's transaction and decides its commit."""
    import os
    tool = DUN_BUILD / "tests" / "unit" / "test_store_pg"
    env = dict(os.environ, DUNNING_TEST_PG_URL=dun_pg.create("seam"),
               DUNNING_TEST_PG_COPY_URL=dun_pg.create("seam_copy"))
    r = subprocess.run([str(tool)], text=True, capture_output=True, env=env, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout.strip().endswith(" 0 failed"), r.stdout
