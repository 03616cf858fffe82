#!/usr/bin/env python3
"""Webhook ingestion benchmark: `dunning serve` against a raw SQLite insert loop.

What it measures, in one run on one machine:

1. `dunning serve` on a temporary database (synchronous=FULL, WAL — the
   engine's defaults) receives N signed webhook deliveries from C concurrent
   keep-alive connections on 127.0.0.1 (bench/webhook_load.c, built here
   with `cc -O2`). Reported: events/s, p50/p99/max latency, and the mean
   group-commit batch (events per transaction, i.e. per fsync) from
   /metrics.
2. The floor: the same event rows inserted into the same `events_raw` table
   with Python's sqlite3 on a temporary database, synchronous=FULL, WAL, in
   transactions of the server's mean batch size (and of group_commit_max),
   right after the load; the median of three such inserts.
   The ratio server / raw says how much of the storage engine's best case
   the whole service keeps (HTTP, signature check, JSON parse, mirror,
   inbox trigger, answering) — a ratio, because absolute numbers depend on
   the machine and its disk.

By default the events map to known accounts (customer.created is delivered
first), so every delivery also enqueues a trigger and the workers recompute
accounts while the load runs, as in production. --unmapped skips that and
measures ingestion alone.

Signatures are computed with Python's hmac here (the integration tests use
Stripe's own library; the bench only needs valid headers fast).

    python3 bench/webhook_bench.py [--events 50000] [--connections 64]
        [--accounts 2000] [--unmapped] [--repeat N] [--build build] [--json]

Nothing is asserted: it prints what it measured.
"""

import argparse
import hashlib
import hmac
import json
import os
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SECRET = "whsec_bench_secret"
TOKEN = "bench-admin-token"
DAY = 86400


def sign(body: bytes, t: int) -> str:
    mac = hmac.new(SECRET.encode(), str(t).encode() + b"." + body, hashlib.sha256).hexdigest()
    return f"t={t},v1={mac}"


def event(evt_id, type_, created, obj) -> bytes:
    return json.dumps({"id": evt_id, "object": "event", "api_version": "2024-06-20",
                       "type": type_, "created": created, "livemode": False,
                       "data": {"object": obj}}, separators=(",", ":")).encode()


def customer_created(i, t):
    return event(f"evt_bcus_{i}", "customer.created", t,
                 {"id": f"cus_b{i}", "object": "customer", "email": f"b{i}@example.com",
                  "name": f"Bench {i}", "metadata": {"account_id": f"acct_b{i}"}})


def payment_failed(k, account_i, t):
    """An invoice.payment_failed of realistic size (~1 KB), as Stripe sends it."""
    inv = f"in_b{k}"
    return event(f"evt_bpf_{k}", "invoice.payment_failed", t, {
        "id": inv, "object": "invoice", "customer": f"cus_b{account_i}",
        "subscription": f"sub_b{account_i}", "status": "open", "amount_due": 4900,
        "amount_paid": 0, "amount_remaining": 4900, "currency": "usd", "attempt_count": 1,
        "attempted": True, "billing_reason": "subscription_cycle",
        "collection_method": "charge_automatically", "created": t,
        "hosted_invoice_url": f"https://invoice.stripe.com/i/acct_bench/{inv}",
        "payment_intent": f"pi_b{k}", "metadata": {}, "next_payment_attempt": t + DAY,
        "period_start": t - 30 * DAY, "period_end": t, "subtotal": 4900, "total": 4900,
        "lines": {"object": "list", "data": [{"id": f"il_b{k}", "object": "line_item",
                                              "amount": 4900, "currency": "usd",
                                              "description": "1 x Pro plan (at $49.00 / month)"}],
                  "has_more": False, "total_count": 1},
        "status_transitions": {"finalized_at": t, "paid_at": None}})


def request_bytes(body: bytes, t: int) -> bytes:
    head = ("POST /webhooks/stripe HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            "User-Agent: Stripe/1.0 (+https://stripe.com/docs/webhooks)\r\n"
            "Content-Type: application/json; charset=utf-8\r\n"
            f"Stripe-Signature: {sign(body, t)}\r\nContent-Length: {len(body)}\r\n\r\n")
    return head.encode() + body


def write_requests(path, bodies, t):
    with open(path, "wb") as f:
        for b in bodies:
            r = request_bytes(b, t)
            f.write(b"%d\n" % len(r) + r)


def build_loader(tmp):
    exe = Path(tmp) / "webhook_load"
    subprocess.run(["cc", "-O2", "-o", str(exe), str(REPO / "bench" / "webhook_load.c")],
                   check=True)
    return exe


def cpu_seconds(pid):
    """User + system CPU time of a process so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def thread_cpu(pid):
    """CPU seconds so far of each named thread kind (the committer and workers name theirs)."""
    out = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            name = (task / "comm").read_text().strip()
            fields = (task / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        sec = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        out[name] = out.get(name, 0.0) + sec
    return out


def wait_drained(base, timeout_s=600):
    """Seconds until no trigger is received, processing or retrying."""
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < timeout_s:
        req = urllib.request.Request(base + "/events?limit=1",
                                     headers={"Authorization": "Bearer " + TOKEN})
        c = json.loads(urllib.request.urlopen(req).read())["counts"]
        if c["received"] + c["processing"] + c["retrying"] == 0:
            return time.perf_counter() - t0
        time.sleep(0.1)
    return float("nan")


def metric(text, name):
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    return 0.0


def callgrind_control(pid, action):
    subprocess.run(["callgrind_control", action, str(pid)], check=True,
                   stdout=subprocess.DEVNULL)


def callgrind_instructions(out):
    """Instructions counted in the dump taken right after the load (the last one)."""
    dumps = sorted(out.parent.glob(out.name + ".*"), key=lambda f: f.stat().st_mtime)
    if not dumps:
        return 0
    keep = Path(os.environ.get("CALLGRIND_KEEP", "")) if os.environ.get("CALLGRIND_KEEP") else None
    for line in dumps[-1].read_text().splitlines():
        if line.startswith("totals:") or line.startswith("summary:"):
            if keep:
                keep.write_bytes(dumps[-1].read_bytes())
            return int(line.split()[1])
    return 0


def raw_insert_rate(tmp, schema_sql, rows, batch):
    """Rows/s inserting rows into events_raw in transactions of batch rows, fsync each."""
    path = Path(tmp) / f"raw_{batch}.db"
    for suffix in ("", "-wal", "-shm"):
        Path(str(path) + suffix).unlink(missing_ok=True)
    con = sqlite3.connect(path, isolation_level=None)
    con.execute("PRAGMA journal_mode=WAL")
    con.execute("PRAGMA synchronous=FULL")
    con.execute(schema_sql)
    sql = ("INSERT INTO events_raw(id, type, object_id, created, received_at, body)"
           " VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT(id) DO NOTHING")
    t0 = time.perf_counter()
    for i in range(0, len(rows), batch):
        con.execute("BEGIN IMMEDIATE")
        con.executemany(sql, rows[i:i + batch])
        con.execute("COMMIT")
    elapsed = time.perf_counter() - t0
    con.close()
    return len(rows) / elapsed


def run_once(args, binary):
    """One measurement: a fresh service and database, the load, the raw floor."""
    with tempfile.TemporaryDirectory(prefix="dunning-bench-") as tmp:
        loader = build_loader(tmp)
        db = Path(tmp) / "bench.db"
        conf = Path(tmp) / "bench.conf"
        conf.write_text(
            f"[server]\nlisten = 127.0.0.1:0\nworkers = {args.workers}\npoll_ms = 200\n"
            f"group_commit_max = {args.group_commit_max}\n"
            f"[database]\npath = {db}\n[stripe]\nwebhook_secrets = {SECRET}\n"
            f"[admin]\ntoken = {TOKEN}\n")
        port_file = Path(tmp) / "port"
        log = open(Path(tmp) / "serve.log", "wb")
        wrap = []
        cg_out = Path(tmp) / "callgrind.out"
        if args.callgrind:
            # Instructions of the committer thread only: collection is on
            # while that thread is inside committer_main, and zeroed once the
            # service has started (and again after the seeding, below).
            wrap = ["valgrind", "--tool=callgrind", "--toggle-collect=committer_main",
                    f"--callgrind-out-file={cg_out}"]
        proc = subprocess.Popen(wrap + [str(binary), "serve", "--config", str(conf),
                                        "--port-file", str(port_file)], stdout=log, stderr=log)
        try:
            deadline = time.time() + (120 if args.callgrind else 15)
            while not (port_file.exists() and port_file.read_text().endswith("\n")):
                if proc.poll() is not None or time.time() > deadline:
                    sys.exit("dunning serve did not start:\n" +
                             (Path(tmp) / "serve.log").read_text())
                time.sleep(0.02)
            port = int(port_file.read_text())
            base = f"http://127.0.0.1:{port}"
            now = int(time.time())

            if not args.unmapped:
                seed = [customer_created(i, now - 40 * DAY) for i in range(args.accounts)]
                write_requests(Path(tmp) / "seed.req", seed, now)
                out = subprocess.run([str(loader), str(port), str(args.connections),
                                      str(Path(tmp) / "seed.req")],
                                     capture_output=True, text=True, check=True)
                seeded = json.loads(out.stdout)
                if seeded["status"].get("200") != args.accounts:
                    sys.exit(f"seeding failed: {seeded}")

            bodies = [payment_failed(k, k % args.accounts, now - 3 * DAY - k)
                      for k in range(args.events)]
            req_file = Path(tmp) / "events.req"
            write_requests(req_file, bodies, now)
            if args.callgrind:
                callgrind_control(proc.pid, "--zero")
            m0 = urllib.request.urlopen(base + "/metrics").read().decode()
            cpu0 = cpu_seconds(proc.pid)
            threads0 = thread_cpu(proc.pid)
            out = subprocess.run([str(loader), str(port), str(args.connections), str(req_file)],
                                 capture_output=True, text=True, check=True)
            load = json.loads(out.stdout)
            cpu1 = cpu_seconds(proc.pid)
            threads1 = thread_cpu(proc.pid)
            m1 = urllib.request.urlopen(base + "/metrics").read().decode()
            if args.callgrind:
                callgrind_control(proc.pid, "--dump")
            commit_s = (metric(m1, "dunning_group_commit_seconds_total") -
                        metric(m0, "dunning_group_commit_seconds_total"))
            # Absent before the metric existed (older builds): 0.
            lock_wait_s = (metric(m1, "dunning_group_commit_lock_wait_seconds_total") -
                           metric(m0, "dunning_group_commit_lock_wait_seconds_total"))
            # How far the workers were behind when the load stopped, and how
            # long they took to catch up (coalescing: one recompute per account).
            backlog = metric(m1, 'dunning_inbox_triggers{state="received"}')
            drain_s = wait_drained(base) if not args.unmapped else 0.0
            batches = (metric(m1, "dunning_group_commit_batch_size_count") -
                       metric(m0, "dunning_group_commit_batch_size_count"))
            batched = (metric(m1, "dunning_group_commit_batch_size_sum") -
                       metric(m0, "dunning_group_commit_batch_size_sum"))
            mean_batch = batched / batches if batches else 0.0
            con = sqlite3.connect(db)
            schema_sql = con.execute(
                "SELECT sql FROM sqlite_master WHERE name = 'events_raw'").fetchone()[0]
            stored = con.execute("SELECT COUNT(*) FROM events_raw WHERE id LIKE 'evt_bpf_%'"
                                 ).fetchone()[0]
            con.close()
        finally:
            proc.send_signal(signal.SIGTERM)
            rc = proc.wait(60)
            log.close()

        committer_ir = callgrind_instructions(cg_out) if args.callgrind else 0
        # The floor: the same rows, the same table, transactions of the same size.
        rows = []
        for b in bodies:
            e = json.loads(b)
            rows.append((e["id"], e["type"], e["data"]["object"]["id"], e["created"], now,
                         b.decode()))
        # fsync latency drifts from second to second: the median of three.
        batch = max(1, round(mean_batch))
        raw_same = statistics.median(raw_insert_rate(tmp, schema_sql, rows, batch)
                                     for _ in range(3))
        raw_max = statistics.median(raw_insert_rate(tmp, schema_sql, rows, args.group_commit_max)
                                    for _ in range(3))

    result = {
        "events": args.events,
        "connections": args.connections,
        "workers": args.workers,
        "mapped_accounts": 0 if args.unmapped else args.accounts,
        "answered_200": load["status"].get("200", 0),
        "errors": load["errors"],
        "stored": stored,
        "events_per_s": round(load["rate_per_s"]),
        "p50_ms": load["p50_ms"],
        "p99_ms": load["p99_ms"],
        "max_ms": load["max_ms"],
        "group_commits": int(batches),
        "mean_batch": round(mean_batch, 1),
        "raw_batch": batch,
        "trigger_backlog_at_end": int(backlog),
        "drain_s": round(drain_s, 2),
        "mean_commit_ms": round(commit_s / batches * 1000, 3) if batches else 0,
        "mean_lock_wait_ms": round(lock_wait_s / batches * 1000, 3) if batches else 0,
        "serve_cpu_s": round(cpu1 - cpu0, 2),
        # During the load, per thread kind: "dun-committer", "dun-worker", the rest by name.
        "thread_cpu_s": {k: round(v - threads0.get(k, 0.0), 2) for k, v in threads1.items()
                         if v - threads0.get(k, 0.0) > 0},
        "elapsed_s": load["elapsed_s"],
        "raw_insert_per_s_same_batch": round(raw_same),
        "raw_insert_per_s_max_batch": round(raw_max),
        "ratio_to_raw_same_batch": round(load["rate_per_s"] / raw_same, 3),
        "ratio_to_raw_max_batch": round(load["rate_per_s"] / raw_max, 3),
        "serve_exit": rc,
        "cpus": os.cpu_count(),
    }
    if args.callgrind:
        result["committer_instructions_per_event"] = round(
            committer_ir / max(1, result["answered_200"]))
    return result


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--events", type=int, default=50000)
    ap.add_argument("--connections", type=int, default=64)
    ap.add_argument("--accounts", type=int, default=2000)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--group-commit-max", type=int, default=256)
    ap.add_argument("--unmapped", action="store_true",
                    help="do not create the customers first: ingestion only, no recomputes")
    ap.add_argument("--build", default=os.environ.get("DUNNING_BUILD_DIR", "build"))
    ap.add_argument("--repeat", type=int, default=1, help="runs, each on a fresh database")
    ap.add_argument("--json", action="store_true", help="print each run as one JSON object")
    ap.add_argument("--callgrind", action="store_true",
                    help="run serve under callgrind and count the committer thread's "
                    "instructions per event during the load (slow: use a few thousand events)")
    args = ap.parse_args()
    build = Path(args.build)
    if not build.is_absolute():
        build = REPO / build
    binary = build / "dunning"
    if not binary.exists():
        sys.exit(f"{binary} is not built (meson setup {args.build} && ninja -C {args.build})")

    results = []
    for i in range(args.repeat):
        r = run_once(args, binary)
        results.append(r)
        if args.json:
            print(json.dumps(r))
        else:
            report(args, r, i + 1)
    if args.repeat > 1 and not args.json:
        def median(k):
            return statistics.median(r[k] for r in results)
        print(f"median of {args.repeat} runs: {median('events_per_s'):.0f} events/s, "
              f"p50 {median('p50_ms'):.2f} ms, p99 {median('p99_ms'):.2f} ms, "
              f"mean batch {median('mean_batch'):.1f}, ratio to raw (same batch) "
              f"{median('ratio_to_raw_same_batch'):.3f}; best run "
              f"{max(r['events_per_s'] for r in results)} events/s")


def report(args, result, run):
    print(f"run {run}: {args.events} events, {args.connections} connections, "
          f"{args.workers} workers, "
          f"{'unmapped' if args.unmapped else f'{args.accounts} accounts mapped'}, "
          f"{result['cpus']} CPUs")
    print(f"  answered 200: {result['answered_200']}, errors: {result['errors']}, "
          f"stored: {result['stored']}")
    print(f"  throughput:   {result['events_per_s']} events/s")
    print(f"  latency:      p50 {result['p50_ms']:.2f} ms, p99 {result['p99_ms']:.2f} ms, "
          f"max {result['max_ms']:.2f} ms")
    print(f"  group commit: {result['group_commits']} transactions (fsyncs), mean "
          f"{result['mean_batch']:.1f} events and {result['mean_commit_ms']:.2f} ms each "
          f"({result['mean_lock_wait_ms']:.2f} ms of it waiting for the write lock)")
    if result["mapped_accounts"]:
        print(f"  workers:      {result['trigger_backlog_at_end']} triggers still queued when "
              f"the load stopped, all {result['mapped_accounts']} accounts recomputed "
              f"{result['drain_s']:.1f} s later")
    print(f"  server CPU:   {result['serve_cpu_s']:.2f} s over {result['elapsed_s']:.2f} s of "
          f"load ({1e6 * result['serve_cpu_s'] / max(1, result['answered_200']):.0f} us per event)")
    if "committer_instructions_per_event" in result:
        print(f"  committer:    {result['committer_instructions_per_event']} instructions per "
              f"event (callgrind)")
    print("  thread CPU:   " + ", ".join(f"{k} {v:.2f} s" for k, v in
                                          sorted(result["thread_cpu_s"].items(),
                                                 key=lambda kv: -kv[1])))
    print("raw sqlite3 insert of the same rows (synchronous=FULL, WAL):")
    print(f"  batches of {result['raw_batch']}: {result['raw_insert_per_s_same_batch']} rows/s "
          f"-> ratio {result['ratio_to_raw_same_batch']:.3f}")
    print(f"  batches of {args.group_commit_max}: {result['raw_insert_per_s_max_batch']} rows/s "
          f"-> ratio {result['ratio_to_raw_max_batch']:.3f}")

if __name__ == "__main__":
    main()
