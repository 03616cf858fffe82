#!/usr/bin/env python3
"""Webhook ingest on PostgreSQL against pgbench inserting the same rows.

    python3 bench/pg_ingest.py [--build build] [--events 20000] [--connections 64]
        [--seconds 10] [--json]

In one run, on a throwaway durable PostgreSQL cluster (bench/pgcluster.py:
initdb into a temporary directory, fsync and synchronous_commit on, a Unix
socket and a free 127.0.0.1 port, removed at the end):

1. `dunning serve` with `[database] url` on that cluster receives N signed
   `invoice.payment_failed` deliveries for unknown customers (ingestion
   alone, the workers idle: the "unmapped" load of bench/webhook_bench.py)
   from C keep-alive connections (bench/webhook_load.c). Reported: events/s,
   p99, the committer's mean batch and commit time (its /metrics), and the
   CPU per event of the service and of the PostgreSQL server processes.
2. pgbench, with a custom script, writes the rows such a webhook leaves
   (its events_raw row with the same ~950-byte body, outcome and account
   already set, and the simulated provider's sim_objects reference) into
   the same tables, in transactions of the service's mean batch (one
   INSERT per row, prepared statements, as the committer does), from C
   clients and from one client (the service commits through one
   connection). Reported: events/s of each and the ratios.

The target of the PostgreSQL issue is service / pgbench (C clients) >= 0.3.
Nothing is asserted: it prints what it measured.
"""

import argparse
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import webhook_bench as wb  # noqa: E402
from pgcluster import PgCluster  # noqa: E402


def cluster_cpu_seconds(pg):
    """User + system CPU of the postmaster and all its children so far."""
    pid = int((pg.data / "postmaster.pid").read_text().split()[0])
    total = wb.cpu_seconds(pid)
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            fields = (d / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return total


def serve_run(args, pg, url, tmp, binary, bodies, now):
    conf = tmp / "serve.conf"
    conf.write_text(
        f"[server]\nlisten = 127.0.0.1:0\nworkers = 2\npoll_ms = 200\n"
        f"group_commit_max = {args.group_commit_max}\n"
        f"[database]\nurl = {url}\n[stripe]\nwebhook_secrets = {wb.SECRET}\n"
        f"[admin]\ntoken = {wb.TOKEN}\n")
    port_file = tmp / "port"
    log = open(tmp / "serve.log", "wb")
    proc = subprocess.Popen([str(binary), "serve", "--config", str(conf),
                             "--port-file", str(port_file)], stdout=log, stderr=log)
    try:
        deadline = time.time() + 30
        while not (port_file.exists() and port_file.read_text().endswith("\n")):
            if proc.poll() is not None or time.time() > deadline:
                sys.exit("dunning serve did not start:\n" + (tmp / "serve.log").read_text())
            time.sleep(0.02)
        port = int(port_file.read_text())
        base = f"http://127.0.0.1:{port}"
        loader = wb.build_loader(tmp)
        req_file = tmp / "events.req"
        wb.write_requests(req_file, bodies, now)
        m0 = urllib.request.urlopen(base + "/metrics").read().decode()
        cpu0, pg0 = wb.cpu_seconds(proc.pid), cluster_cpu_seconds(pg)
        out = subprocess.run([str(loader), str(port), str(args.connections), str(req_file)],
                             capture_output=True, text=True, check=True)
        cpu1, pg1 = wb.cpu_seconds(proc.pid), cluster_cpu_seconds(pg)
        load = json.loads(out.stdout)
        m1 = urllib.request.urlopen(base + "/metrics").read().decode()
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(60)
        log.close()

    def delta(name):
        return wb.metric(m1, name) - wb.metric(m0, name)

    batches = delta("dunning_group_commit_batch_size_count")
    n = load["status"].get("200", 0)
    stored = int(pg.psql(url.rsplit("/", 1)[1],
                         "SELECT COUNT(*) FROM events_raw WHERE id LIKE 'evt_bpf_%'")[0][0])
    return {
        "answered_200": n,
        "errors": load["errors"],
        "stored": stored,
        "events_per_s": round(load["rate_per_s"]),
        "p50_ms": load["p50_ms"],
        "p99_ms": load["p99_ms"],
        "group_commits": int(batches),
        "mean_batch": round(delta("dunning_group_commit_batch_size_sum") / batches, 1)
        if batches else 0.0,
        "mean_commit_ms": round(1000 * delta("dunning_group_commit_seconds_total") / batches, 3)
        if batches else 0.0,
        "serve_cpu_us_per_event": round(1e6 * (cpu1 - cpu0) / max(1, n)),
        "pg_cpu_us_per_event": round(1e6 * (pg1 - pg0) / max(1, n)),
        "elapsed_s": load["elapsed_s"],
    }


def pgbench_script(body, batch):
    """One transaction of batch webhooks' rows, as the committer writes them."""
    # An E'' literal with every ':' written \x3a, so pgbench does not take a
    # ":name" inside the body for one of its variables; the same bytes are stored.
    lit = body.replace("\\", "\\\\").replace("'", "''").replace(":", "\\x3a")
    lines = ["\\set k random(1, 1000000000000)", "BEGIN;"]
    for i in range(batch):
        evt = f"'evt_pgb_' || :client_id || '_' || :k || '_{i}'"
        lines.append(
            "INSERT INTO events_raw(id, type, object_id, created, received_at, body, account_id,"
            f" outcome) VALUES ({evt}, 'invoice.payment_failed', 'in_pgb_' || :k || '_{i}',"
            f" 1700000000, 1700000000, E'{lit}', '', 'unmapped') ON CONFLICT(id) DO NOTHING;")
        lines.append(
            "INSERT INTO sim_objects(id, type, customer_id, behavior, body) VALUES"
            f" ('in_pgb_' || :client_id || '_' || :k || '_{i}', 'invoice', 'cus_pgb', '',"
            f" 'event:' || {evt}) ON CONFLICT(id) DO UPDATE SET body = excluded.body;")
    lines.append("COMMIT;")
    return "\n".join(lines) + "\n"


def pgbench_run(pg, dbname, script, clients, batch, seconds):
    cmd = [str(pg.bin / "pgbench"), "-h", str(pg.dir), "-p", str(pg.port), "-U", "postgres",
           "-n", "-M", "prepared", "-f", str(script), "-c", str(clients),
           "-j", str(min(clients, 2)), "-T", str(seconds), dbname]
    if pg.as_root:
        cmd = ["runuser", "-u", "postgres", "--"] + cmd
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 120)
    if r.returncode != 0:
        sys.exit("pgbench failed:\n" + r.stdout + r.stderr)
    m = re.search(r"^tps = ([\d.]+)", r.stdout, re.M)
    lat = re.search(r"^latency average = ([\d.]+) ms", r.stdout, re.M)
    return {"clients": clients, "events_per_s": round(float(m.group(1)) * batch),
            "tx_latency_ms": float(lat.group(1)) if lat else 0.0}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--build", default=os.environ.get("DUNNING_BUILD_DIR", "build"))
    ap.add_argument("--events", type=int, default=20000)
    ap.add_argument("--connections", type=int, default=64)
    ap.add_argument("--group-commit-max", type=int, default=256)
    ap.add_argument("--seconds", type=int, default=10, help="duration of each pgbench run")
    ap.add_argument("--json", action="store_true", help="print the result as one JSON object")
    args = ap.parse_args()
    build = Path(args.build)
    if not build.is_absolute():
        build = wb.REPO / build
    binary = build / "dunning"
    if not binary.exists():
        sys.exit(f"{binary} is not built")

    now = int(time.time())
    bodies = [wb.payment_failed(k, k, now - 3 * wb.DAY - k) for k in range(args.events)]
    with PgCluster() as pg, tempfile.TemporaryDirectory(prefix="dunning-pg-ingest-") as t:
        tmp = Path(t)
        os.chmod(tmp, 0o755)
        url = pg.create("ingest")
        serve = serve_run(args, pg, url, tmp, binary, bodies, now)
        if serve["answered_200"] != args.events or serve["errors"]:
            sys.exit(f"pg_ingest: the service lost requests: {serve}")
        batch = max(1, round(serve["mean_batch"]))
        script = tmp / "webhook_rows.sql"
        script.write_text(pgbench_script(bodies[0].decode(), batch))
        os.chmod(script, 0o644)
        bench_c = pgbench_run(pg, "ingest", script, args.connections, batch, args.seconds)
        bench_1 = pgbench_run(pg, "ingest", script, 1, batch, args.seconds)

    result = {
        "events": args.events, "connections": args.connections, "batch": batch,
        "serve": serve, "pgbench": bench_c, "pgbench_one_client": bench_1,
        "ratio": round(serve["events_per_s"] / bench_c["events_per_s"], 3),
        "ratio_one_client": round(serve["events_per_s"] / bench_1["events_per_s"], 3),
    }
    if args.json:
        print(json.dumps(result))
        return
    print(f"webhook ingest on PostgreSQL: {args.events} events (unmapped), "
          f"{args.connections} connections")
    print(f"  dunning serve   {serve['events_per_s']:>7} events/s, p99 {serve['p99_ms']:.1f} ms, "
          f"mean batch {serve['mean_batch']}, commit {serve['mean_commit_ms']:.2f} ms per batch; "
          f"CPU per event: serve {serve['serve_cpu_us_per_event']} us, "
          f"PostgreSQL {serve['pg_cpu_us_per_event']} us")
    print(f"  pgbench, the same rows in transactions of {batch}:")
    print(f"    {args.connections} clients  {bench_c['events_per_s']:>7} events/s "
          f"-> serve / pgbench {result['ratio']:.3f} (target >= 0.3)")
    print(f"    1 client    {bench_1['events_per_s']:>7} events/s "
          f"-> serve / pgbench {result['ratio_one_client']:.3f}")


if __name__ == "__main__":
    main()
