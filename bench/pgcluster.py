"""A throwaway PostgreSQL cluster for the benchmarks (no system instance).

initdb into a temporary directory, the server on a free 127.0.0.1 port and
a Unix socket in that directory, stopped and removed at the end. As root
(initdb refuses root) the server runs as the postgres user. Durable by
default (fsync and synchronous_commit on, as in production); extra server
settings are passed as `-c name=value`.

    with PgCluster(settings={"shared_preload_libraries": "pg_stat_statements"}) as pg:
        url = pg.create("bench")
"""

import glob
import os
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path


def bindir():
    """Debian's newest PostgreSQL server binaries, or None."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"),
                   key=lambda p: int(p.split("/")[4]) if p.split("/")[4].isdigit() else 0)
    return Path(found[-1]).parent if found else None


class PgCluster:
    def __init__(self, settings=None):
        self.bin = bindir()
        if self.bin is None:
            raise RuntimeError("PostgreSQL is not installed (Debian package postgresql)")
        self.dir = Path(tempfile.mkdtemp(prefix="dunning-bench-pg-"))
        self.data = self.dir / "data"
        with socket.socket() as sk:
            sk.bind(("127.0.0.1", 0))
            self.port = sk.getsockname()[1]
        self.as_root = os.geteuid() == 0
        self.settings = {"max_connections": "200", "shared_buffers": "256MB"}
        self.settings.update(settings or {})

    def _run(self, *argv, check=True):
        cmd = [str(a) for a in argv]
        if self.as_root:
            cmd = ["runuser", "-u", "postgres", "--"] + cmd
        r = subprocess.run(cmd, text=True, capture_output=True, timeout=300)
        if check and r.returncode != 0:
            raise RuntimeError("%s failed:\n%s%s" % (argv[0], r.stdout, r.stderr))
        return r

    def start(self):
        if self.as_root:
            shutil.chown(self.dir, "postgres")
        self._run(self.bin / "initdb", "-D", self.data, "-A", "trust", "-U", "postgres",
                  "-E", "UTF8", "--locale=C")
        opts = "-c listen_addresses=127.0.0.1 -p %d -k %s" % (self.port, self.dir)
        opts += "".join(" -c %s=%s" % kv for kv in self.settings.items())
        self._run(self.bin / "pg_ctl", "-D", self.data, "-l", self.dir / "server.log",
                  "-o", opts, "-w", "start")
        return self

    def stop(self):
        self._run(self.bin / "pg_ctl", "-D", self.data, "-m", "fast", "-w", "stop", check=False)
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()

    def url(self, name):
        return "postgresql://postgres@127.0.0.1:%d/%s" % (self.port, name)

    def psql(self, name, sql):
        """Run sql in database name; the rows as lists of strings."""
        r = self._run(self.bin / "psql", "-h", self.dir, "-p", self.port, "-U", "postgres",
                      "-d", name, "-v", "ON_ERROR_STOP=1", "-AtF", "\t", "-c", sql)
        return [line.split("\t") for line in r.stdout.splitlines() if line]

    def session(self, name):
        """One psql process kept open on database name, for queries asked
        often (a new psql for each costs a fork, an exec and a login)."""
        return PsqlSession(self, name)

    def create(self, name, template=None):
        self.psql("postgres", 'CREATE DATABASE "%s"%s' % (
            name, ' TEMPLATE "%s"' % template if template else ""))
        return self.url(name)


class PsqlSession:
    """psql reading queries from a pipe: ask() sends one and returns its
    rows (lists of strings). A query ends with a line only psql echoes
    back, so the rows are read up to it. Use as a context manager."""

    END = "-- end of result --"

    def __init__(self, pg, name):
        cmd = [str(pg.bin / "psql"), "-h", str(pg.dir), "-p", str(pg.port), "-U", "postgres",
               "-d", name, "-X", "-q", "-v", "ON_ERROR_STOP=1", "-AtF", "\t"]
        if pg.as_root:
            cmd = ["runuser", "-u", "postgres", "--"] + cmd
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     text=True, bufsize=1)

    def ask(self, sql):
        self.proc.stdin.write("%s;\n\\echo '%s'\n" % (sql.rstrip().rstrip(";"), self.END))
        self.proc.stdin.flush()
        rows = []
        while True:
            line = self.proc.stdout.readline()
            if not line:
                raise RuntimeError("psql ended (exit %s) during: %s" % (self.proc.wait(), sql))
            line = line.rstrip("\n")
            if line == self.END:
                return rows
            if line:
                rows.append(line.split("\t"))

    def close(self):
        if self.proc.stdin:
            self.proc.stdin.close()
        self.proc.wait(30)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
