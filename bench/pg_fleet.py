#!/usr/bin/env python3
"""Recomputes per second with 1, 2 and 4 `dunning serve` processes on one
PostgreSQL, as ratios from one run, and what one recompute costs the
database (statements, transactions, WAL bytes).

    python3 bench/pg_fleet.py [--build build] [--accounts 1000] [--days 30]
                              [--processes 1,2,4] [--rounds 2]

A throwaway, durable PostgreSQL cluster (bench/pgcluster.py) is started
and removed. The population is the demo's (`dunning demo`), copied into
PostgreSQL once (`dunning store copy`) and cloned for every run
(CREATE DATABASE ... TEMPLATE), so each run starts from the same state.
The serve processes are started first and idle; then one transaction
queues a recompute of every account (its COMMIT notifies the inbox
channel, which wakes every process), and the run lasts until the inbox is
drained. The clock of the processes (--now) is a week past the demo's end,
so many accounts move on (emails, restrictions): recomputes with
consequences, not only empty plans. Each process runs [server] workers = 2
(--workers); with --total-workers T the same T workers are split over the
processes instead (T/n each), which separates what more processes cost
from what more workers buy. --fleet-workers F sets [server] fleet_workers:
at most F workers of all the processes work at once (default auto, the
service's default: twice this machine's CPUs; 0: no cap).

A warm-up run (--warmup, not counted) fills PostgreSQL's buffers and the
page cache first: without it the first round ran at about half the speed
of the later ones, whatever its size. The sizes are printed in order
(1, 2, 4, then again, alternated over --rounds) and each figure's ratio
to the best; the target on a 2-core
machine that also runs PostgreSQL is "no collapse": every figure >= 0.9x
the best. Nothing is asserted; the exit status is non-zero only when
something failed to run.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from pgcluster import PgCluster  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
DEMO_START = datetime(2026, 1, 5, tzinfo=timezone.utc)


def say(msg):
    print(msg, file=sys.stderr, flush=True)


def run(argv, **kw):
    r = subprocess.run([str(a) for a in argv], capture_output=True, text=True, **kw)
    if r.returncode != 0:
        raise RuntimeError("%s failed (%d):\n%s%s" % (argv[1:3], r.returncode, r.stdout,
                                                      r.stderr))
    return r


def start_serves(binary, url, n, now, workdir, workers, fleet_workers="auto"):
    procs = []
    for i in range(n):
        conf = workdir / ("serve%d.conf" % i)
        conf.write_text("[server]\nlisten = 127.0.0.1:0\nworkers = %d\npoll_ms = 200\n"
                        "fleet_workers = %s\n[database]\nurl = %s\n"
                        % (workers, fleet_workers, url))
        port_file = workdir / ("serve%d.port" % i)
        if port_file.exists():
            port_file.unlink()
        log = open(workdir / ("serve%d.log" % i), "ab")
        env = {k: v for k, v in os.environ.items() if not k.startswith("DUNNING_")}
        p = subprocess.Popen([str(binary), "--config", str(conf), "--now", now, "serve",
                              "--port-file", str(port_file)], stdout=log, stderr=log, env=env)
        procs.append((p, port_file, log))
    deadline = time.time() + 60
    for p, port_file, _log in procs:
        while not (port_file.exists() and port_file.read_text().endswith("\n")):
            if p.poll() is not None or time.time() > deadline:
                raise RuntimeError("serve did not start; see %s" % workdir)
            time.sleep(0.05)
    return procs


def stop_serves(procs):
    for p, _pf, _log in procs:
        p.terminate()
    for p, _pf, log in procs:
        try:
            p.wait(60)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
        log.close()


def cpu_seconds(pid):
    with open("/proc/%d/stat" % pid) as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def counters(pg, name):
    [[commits, wal, stmts]] = pg.psql(name, (
        "SELECT (SELECT xact_commit + xact_rollback FROM pg_stat_database"
        "        WHERE datname = current_database()),"
        " pg_wal_lsn_diff(pg_current_wal_lsn(), '0/0')::bigint,"
        " (SELECT COALESCE(SUM(calls), 0) FROM pg_stat_statements"
        "  WHERE dbid = (SELECT oid FROM pg_database WHERE datname = current_database()))"))
    return int(commits), int(wal), int(stmts)


def top_statements(pg, name, limit):
    """The statements of this database that ran most often since the reset."""
    rows = pg.psql(name, (
        "SELECT calls, round(total_exec_time::numeric, 1), regexp_replace(left(query, 90),"
        " '\\s+', ' ', 'g') FROM pg_stat_statements WHERE dbid = (SELECT oid FROM"
        " pg_database WHERE datname = current_database()) ORDER BY calls DESC LIMIT %d"
        % limit))
    return [(int(c), float(ms), q) for c, ms, q in rows]


def one_run(pg, binary, n, accounts, now, workdir, tag, workers, top=0, fleet_workers="auto"):
    name = "run_%s" % tag
    url = pg.create(name, template="base")
    # The clone went through the WAL: flushed now, so that no run shares
    # its time with a checkpoint of the one before, and every run starts
    # with the same full-page writes to make.
    pg.psql(name, "CHECKPOINT")
    procs = start_serves(binary, url, n, now, workdir, workers, fleet_workers)
    try:
        time.sleep(1.0)  # every process idle, listening
        if top:
            pg.psql(name, "SELECT pg_stat_statements_reset()")
        before = counters(pg, name)
        cpu0 = sum(cpu_seconds(p.pid) for p, _pf, _l in procs)
        t0 = time.monotonic()
        pg.psql(name, (
            "INSERT INTO inbox(account_id, kind, source, dedup_key, not_before, created_at,"
            " updated_at) SELECT id, 'support_recompute', 'bench', 'bench:' || id, 0, 0, 0"
            " FROM accounts; NOTIFY dunning_inbox"))
        # Polled on one connection: a psql process every 50 ms (runuser,
        # exec, login) took several per cent of the machine from the run.
        with pg.session(name) as poll:
            while True:
                [[left]] = poll.ask("SELECT EXISTS (SELECT 1 FROM inbox WHERE state IN"
                                    " ('received', 'processing', 'retrying'))")
                if left == "f":
                    break
                if time.monotonic() - t0 > 900:
                    raise RuntimeError("the inbox did not drain in 15 minutes; see %s"
                                       % workdir)
                time.sleep(0.05)
        elapsed = time.monotonic() - t0
        cpu = sum(cpu_seconds(p.pid) for p, _pf, _l in procs) - cpu0
        after = counters(pg, name)
        statements = top_statements(pg, name, top) if top else []
        [[dead]] = pg.psql(name, "SELECT COUNT(*) FROM inbox WHERE state = 'dead'")
        [[decided]] = pg.psql(name, "SELECT COUNT(*) FROM decisions WHERE trigger_kind ="
                                    " 'support_recompute'")
    finally:
        stop_serves(procs)
        # Dropped at once: left in the cluster, the finished runs' tables
        # kept autovacuum busy during the next runs, which slowed round
        # after round (the last round of 3 ran at two thirds of the first).
        pg.psql("postgres", 'DROP DATABASE IF EXISTS "%s"' % name)
    return {"processes": n, "workers_each": workers, "seconds": elapsed, "per_s": accounts / elapsed,
            "serve_cpu_s": cpu, "dead": int(dead), "decisions": int(decided),
            "transactions": after[0] - before[0], "wal_bytes": after[1] - before[1],
            "statements": after[2] - before[2], "top": statements}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--build", default="build")
    ap.add_argument("--accounts", type=int, default=1000)
    ap.add_argument("--days", type=int, default=30)
    ap.add_argument("--processes", default="1,2,4")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--warmup", type=int, default=1,
                    help="runs before the measured ones, not counted (the cluster's and the "
                    "page cache's first fills)")
    ap.add_argument("--workers", type=int, default=2, help="[server] workers of each process")
    ap.add_argument("--total-workers", type=int, default=0,
                    help="split this many workers over the processes instead")
    ap.add_argument("--fleet-workers", default="auto",
                    help="[server] fleet_workers of every process (auto: twice the CPUs, "
                    "the default; 0: no cap)")
    ap.add_argument("--top", type=int, default=0,
                    help="also print each run's N most frequent statements (calls per account)")
    ap.add_argument("--json", action="store_true", help="one JSON object on stdout")
    args = ap.parse_args()
    binary = (REPO / args.build / "dunning").resolve()
    sizes = [int(x) for x in args.processes.split(",")]
    commit = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"],
                            capture_output=True, text=True).stdout.strip()
    now = (DEMO_START + timedelta(days=args.days + 7)).strftime("%Y-%m-%dT%H:%M:%SZ")
    with tempfile.TemporaryDirectory(prefix="dunning-pg-fleet-") as tmp:
        workdir = Path(tmp)
        if os.geteuid() == 0:
            os.chmod(tmp, 0o755)
        pop = workdir / "demo.db"
        say("building the demo population: %d accounts, %d days" % (args.accounts, args.days))
        run([binary, "--db", pop, "demo", "--accounts", args.accounts, "--days", args.days],
            timeout=1800)
        with PgCluster(settings={"shared_preload_libraries": "pg_stat_statements"}) as pg:
            url = pg.create("base")
            run([binary, "store", "copy", "--from", pop, "--to", url], timeout=1800)
            pg.psql("base", "CREATE EXTENSION pg_stat_statements")
            for w in range(args.warmup):
                n = max(sizes)
                say("warm-up %d: %d process(es), not counted" % (w + 1, n))
                workers = (max(1, args.total_workers // n) if args.total_workers
                           else args.workers)
                one_run(pg, binary, n, args.accounts, now, workdir, "w%d" % w, workers, 0,
                        args.fleet_workers)
            results = []
            for r in range(args.rounds):
                order = sizes if r % 2 == 0 else list(reversed(sizes))
                for n in order:
                    say("round %d: %d process(es)" % (r + 1, n))
                    workers = (max(1, args.total_workers // n) if args.total_workers
                               else args.workers)
                    results.append(one_run(pg, binary, n, args.accounts, now, workdir,
                                           "%d_%d" % (r, n), workers, args.top,
                                           args.fleet_workers))
    best = {}
    for res in results:
        best[res["processes"]] = max(best.get(res["processes"], 0), res["per_s"])
    top = max(best.values())
    load = os.getloadavg()[0]
    summary = {"commit": commit, "accounts": args.accounts, "load_average": load,
               "runs": results, "best_per_size": best}
    if args.json:
        print(json.dumps(summary))
        return 0
    split = ("%d workers in all, split over the processes" % args.total_workers
             if args.total_workers else "each process %d workers" % args.workers)
    if args.fleet_workers == "auto":
        split += ", at most %d of the fleet at once (auto)" % (2 * (os.cpu_count() or 1))
    elif args.fleet_workers != "0":
        split += ", at most %s of the fleet at once" % args.fleet_workers
    print("pg fleet at %s: %d accounts, %s, durable PostgreSQL on the "
          "same machine (load average %.1f)" % (commit, args.accounts, split, load))
    print("%-10s %8s %12s %10s %10s %12s %12s %12s" % ("processes", "workers", "accounts/s",
                                                         "÷ best", "serve CPU", "stmts/acct",
                                                         "txns/acct", "WAL B/acct"))
    for res in results:
        print("%-10d %8d %12.0f %10.2f %9.1fs %12.1f %12.1f %12.0f" % (
            res["processes"], res["workers_each"], res["per_s"], res["per_s"] / top,
            res["serve_cpu_s"],
            res["statements"] / args.accounts, res["transactions"] / args.accounts,
            res["wal_bytes"] / args.accounts))
    for res in results:
        if res["top"]:
            print("%d process(es), most frequent statements (calls and ms per account):"
                  % res["processes"])
            for calls, ms, q in res["top"]:
                print("  %7.2f %8.3f  %s" % (calls / args.accounts, ms / args.accounts, q))
    worst = min(best[n] for n in best) / top
    print("best per size: %s; worst ÷ best %.2f (target >= 0.90: %s)" % (
        ", ".join("%d: %.0f/s" % (n, best[n]) for n in sorted(best)), worst,
        "ok" if worst >= 0.9 else "MISSED"))
    if any(res["dead"] for res in results):
        print("dead triggers: %s" % [res["dead"] for res in results])
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
