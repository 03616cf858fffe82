#!/usr/bin/env python3
"""/metrics scrape cost of the per-account families, as ratios.

One SQLite database with --accounts accounts (a `dunning` row, a customer,
a paid invoice each), --outside of them outside the current stage (an open
invoice each, one in a hundred with a payment in flight). `dunning serve`
over it is scraped --scrapes times for each `[metrics] account_series_limit`
in --limits; the first limit (0 by default: no per-account series, only
their count) is the baseline, measured in the same run. Reported per limit:
the median scrape time, its ratio to the baseline, the scrape's size and
how many per-account samples it held. The rounds alternate between the
limits, so a machine getting slower or faster mid-run shows in every column.

    python3 bench/metrics_bench.py [--accounts 200000] [--outside 20000]
        [--limits 0,1000,10000] [--scrapes 15] [--rounds 2] [--build build] [--json]

Nothing is asserted: it prints what it measured.
"""

import argparse
import json
import random
import signal
import sqlite3
import statistics
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DAY = 86400
NOW = 1775000000  # the engine clock of the run (--now)


def populate(db, accounts, outside, seed=7):
    rnd = random.Random(seed)
    con = sqlite3.connect(db)
    stages = ("notified", "restricted", "suspended", "bad_debt")
    ids = ["acct_%07d" % i for i in range(accounts)]
    out = set(rnd.sample(range(accounts), outside))
    con.executemany("INSERT INTO accounts (id) VALUES (?)", ((a,) for a in ids))
    con.executemany("INSERT INTO customers (id, account_id) VALUES (?, ?)",
                    (("cus_%07d" % i, a) for i, a in enumerate(ids)))
    con.executemany(
        "INSERT INTO dunning (account_id, stage, since) VALUES (?, ?, ?)",
        ((a, rnd.choice(stages) if i in out else "none", NOW - rnd.randrange(60 * DAY))
         for i, a in enumerate(ids)))
    con.executemany(
        "INSERT INTO p_invoices (id, customer_id, status, amount_due, amount_paid,"
        " amount_remaining, currency, account_id) VALUES (?, ?, ?, 2000, ?, ?, 'usd', ?)",
        (("in_%07d" % i, "cus_%07d" % i, "open" if i in out else "paid",
          0 if i in out else 2000, 2000 if i in out else 0, a) for i, a in enumerate(ids)))
    con.executemany(
        "INSERT INTO p_attempts (id, invoice_id, status, created, account_id)"
        " VALUES (?, ?, 'processing', ?, ?)",
        (("py_%07d" % i, "in_%07d" % i, NOW - 3600, ids[i]) for i in sorted(out) if i % 100 == 0))
    con.commit()
    con.close()


class Serve:
    def __init__(self, binary, db, tmp, limit):
        conf = Path(tmp) / ("limit-%d.conf" % limit)
        conf.write_text("[server]\nlisten = 127.0.0.1:0\nworkers = 1\n"
                        "[metrics]\naccount_series_limit = %d\n" % limit)
        self.port_file = Path(tmp) / ("limit-%d.port" % limit)
        self.port_file.unlink(missing_ok=True)  # left by an earlier round
        self.log = open(Path(tmp) / ("limit-%d.log" % limit), "ab")
        self.proc = subprocess.Popen(
            [str(binary), "--db", str(db), "--now", str(NOW), "serve", "--config", str(conf),
             "--port-file", str(self.port_file)], stdout=self.log, stderr=self.log)
        deadline = time.time() + 60
        while not (self.port_file.exists() and self.port_file.read_text().endswith("\n")):
            if self.proc.poll() is not None or time.time() > deadline:
                raise SystemExit("serve did not start (see %s)" % self.log.name)
            time.sleep(0.05)
        self.url = "http://127.0.0.1:%d/metrics" % int(self.port_file.read_text())

    def scrape(self):
        t = time.perf_counter()
        with urllib.request.urlopen(self.url, timeout=120) as r:
            body = r.read()
        return time.perf_counter() - t, body

    def stop(self):
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(60)
        self.log.close()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--accounts", type=int, default=200000)
    ap.add_argument("--outside", type=int, default=20000)
    ap.add_argument("--limits", default="0,1000,10000")
    ap.add_argument("--scrapes", type=int, default=15)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--build", default="build")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    binary = (REPO / args.build / "dunning").resolve()
    limits = [int(x) for x in args.limits.split(",")]
    with tempfile.TemporaryDirectory() as tmp:
        db = Path(tmp) / "bench.db"
        subprocess.run([str(binary), "--db", str(db), "init"], check=True,
                       stdout=subprocess.DEVNULL)
        populate(db, args.accounts, args.outside)
        times = {lim: [] for lim in limits}
        sizes, samples = {}, {}
        for _ in range(args.rounds):
            for lim in limits:
                srv = Serve(binary, db, tmp, lim)
                try:
                    srv.scrape()  # warm the page cache and the statement cache
                    for _ in range(args.scrapes):
                        dt, body = srv.scrape()
                        times[lim].append(dt)
                finally:
                    srv.stop()
                sizes[lim] = len(body)
                samples[lim] = sum(1 for line in body.decode().splitlines()
                                   if line.startswith("dunning_account_")
                                   and "account_id=" in line)
    base = statistics.median(times[limits[0]])
    rows = [{"limit": lim, "median_ms": round(statistics.median(times[lim]) * 1000, 2),
             "ratio": round(statistics.median(times[lim]) / base, 3),
             "bytes": sizes[lim], "account_samples": samples[lim]} for lim in limits]
    if args.json:
        print(json.dumps({"accounts": args.accounts, "outside": args.outside, "rows": rows}))
        return
    print("accounts %d, outside the current stage %d; baseline: limit %d"
          % (args.accounts, args.outside, limits[0]))
    print("%8s %10s %8s %10s %16s" % ("limit", "median ms", "ratio", "bytes", "account samples"))
    for r in rows:
        print("%8d %10.2f %8.3f %10d %16d" % (r["limit"], r["median_ms"], r["ratio"], r["bytes"],
                                              r["account_samples"]))


if __name__ == "__main__":
    main()
