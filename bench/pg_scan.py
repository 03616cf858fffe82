#!/usr/bin/env python3
"""The drift scan on PostgreSQL against a raw read of the same rows.

    python3 bench/pg_scan.py [--accounts N] [--rounds N] [--keep]

1. generates (or reuses) the SQLite population of bench/run.sh with gen_db;
2. starts a throwaway PostgreSQL cluster: initdb into a temporary directory
   (as the postgres user when run as root), the server listening only on a
   Unix socket in that directory, fsync off;
3. copies the population into it with `dunning store copy` (the schema by
   the migrations, so the covering indexes of migration 14 are there), then
   VACUUM ANALYZE, so the scan's reads can be index-only;
4. runs bench_engine against the postgresql:// URL: the scan and the raw read
   of the stream's own queries, alternated, best of --rounds; it prints
   scan / raw read and accounts/s. Recomputes are not run (bench/run.sh
   measures them on SQLite).

The cluster is stopped and removed at the end (unless --keep). Timings are
never asserted; the exit status is bench_engine's (non-zero when the scan's
drift counts differ from what the generator planted).
"""

import argparse
import glob
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def say(msg):
    print(msg, file=sys.stderr, flush=True)


def pg_bindir():
    dirs = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"),
                  key=lambda p: int(p.split("/")[4]) if p.split("/")[4].isdigit() else 0)
    if not dirs:
        sys.exit("bench/pg_scan.py: no PostgreSQL server binaries (apt-get install postgresql)")
    return Path(dirs[-1]).parent


class Cluster:
    def __init__(self):
        self.bindir = pg_bindir()
        self.dir = Path(tempfile.mkdtemp(prefix="dunning-pgbench-"))
        self.data = self.dir / "data"
        self.as_root = os.geteuid() == 0
        self.port = 5432

    def run(self, *argv, check=True):
        cmd = [str(a) for a in argv]
        if self.as_root:  # initdb refuses root: the server runs as postgres
            cmd = ["runuser", "-u", "postgres", "--"] + cmd
        r = subprocess.run(cmd, text=True, capture_output=True)
        if check and r.returncode != 0:
            sys.exit("bench/pg_scan.py: %s failed:\n%s%s" % (argv[0], r.stdout, r.stderr))
        return r

    def start(self):
        if self.as_root:
            shutil.chown(self.dir, "postgres")
        self.run(self.bindir / "initdb", "-D", self.data, "-A", "trust", "-U", "postgres",
                 "--no-sync", "-E", "UTF8", "--locale=C")
        opts = ("-c listen_addresses='' -p %d -k %s -c fsync=off -c full_page_writes=off"
                " -c synchronous_commit=off -c shared_buffers=128MB -c max_wal_size=4GB"
                % (self.port, self.dir))
        self.run(self.bindir / "pg_ctl", "-D", self.data, "-l", self.dir / "server.log",
                 "-o", opts, "-w", "start")
        self.run(self.bindir / "createdb", "-h", self.dir, "-p", self.port, "-U", "postgres",
                 "bench")

    def url(self):
        return "postgresql://postgres@/bench?host=%s&port=%d" % (self.dir, self.port)

    def psql(self, sql):
        return self.run(self.bindir / "psql", "-h", self.dir, "-p", self.port, "-U", "postgres",
                        "-d", "bench", "-v", "ON_ERROR_STOP=1", "-c", sql).stdout

    def stop(self):
        self.run(self.bindir / "pg_ctl", "-D", self.data, "-m", "fast", "-w", "stop",
                 check=False)
        shutil.rmtree(self.dir, ignore_errors=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--accounts", type=int, default=1000000)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--build", default="build", help="the build with `dunning` (store copy)")
    ap.add_argument("--keep", action="store_true", help="leave the cluster running")
    args = ap.parse_args()

    bench_build = Path(os.environ.get("BENCH_BUILD", REPO / "build-bench"))
    if not (bench_build / "build.ninja").exists():
        subprocess.run(["meson", "setup", str(bench_build), "--buildtype=release"], check=True,
                       stdout=subprocess.DEVNULL)
    subprocess.run(["ninja", "-C", str(bench_build), "dunning", "bench/gen_db",
                    "bench/bench_engine"], check=True, stdout=subprocess.DEVNULL)
    gen = bench_build / "bench" / "gen_db"
    version = subprocess.run([str(gen), "--version"], check=True, capture_output=True,
                             text=True).stdout.strip()
    bench_dir = Path(os.environ.get("BENCH_DIR", Path(os.environ.get("TMPDIR", "/tmp"))
                                    / "dunning-bench"))
    bench_dir.mkdir(parents=True, exist_ok=True)
    db = bench_dir / f"bench-a{args.accounts}-s{args.seed}-v{version}.db"
    if db.exists():
        say(f"pg bench: reusing {db}")
        # A population made by an older binary: bring its schema up to date
        # (store copy reads the source without migrating it).
        subprocess.run([str(bench_build / "dunning"), "--db", str(db), "init"], check=True,
                       stdout=subprocess.DEVNULL)
    else:
        say(f"pg bench: generating {db}")
        subprocess.run([str(gen), "--out", str(db), "--accounts", str(args.accounts), "--seed",
                        str(args.seed)], check=True)

    cluster = Cluster()
    try:
        cluster.start()
        say("pg bench: store copy into a throwaway cluster in %s" % cluster.dir)
        t0 = time.monotonic()
        subprocess.run([str(bench_build / "dunning"), "store", "copy", "--from", str(db),
                        "--to", cluster.url()], check=True)
        copy_s = time.monotonic() - t0
        t0 = time.monotonic()
        cluster.psql("VACUUM ANALYZE")
        say("pg bench: copied in %.1f s, VACUUM ANALYZE %.1f s" % (copy_s,
                                                                   time.monotonic() - t0))
        r = subprocess.run([str(bench_build / "bench" / "bench_engine"), "--db", cluster.url(),
                            "--rounds", str(args.rounds), "--recomputes", "0"])
        if args.keep:
            say("pg bench: cluster left running: %s" % cluster.url())
        return r.returncode
    finally:
        if not args.keep:
            cluster.stop()


if __name__ == "__main__":
    sys.exit(main())
