#!/usr/bin/env python3
"""The whole benchmark, as ratios measured in one run: `make bench` / `make bench-quick`.

    python3 bench/suite.py [--quick] [--baseline COMMIT] [--build DIR]

1. Webhook ingestion, unmapped and mapped (bench/webhook_bench.py), of the
   current build and of a baseline commit built beside it (default
   b5b08c3, the last commit before the d185d91 regression), the two runs
   alternated so both see the same machine. Reported: events/s and p99 of
   each, current / baseline, and each run's ratio to the raw SQLite floor.
2. The drift scan and recomputes (bench/run.sh): scan / raw read, accounts/s,
   peak RSS, recompute / gather.
3. With --pg (`make bench` passes it): the drift scan on PostgreSQL against
   a raw read of the same rows (bench/pg_scan.py), on the same population;
   webhook ingest on a throwaway PostgreSQL cluster against pgbench writing
   the same rows with the same batching (bench/pg_ingest.py; target serve /
   pgbench >= 0.3); recomputes with 1, 2 and 4 serve processes on one
   PostgreSQL (bench/pg_fleet.py, with fleet_workers = 4 and 4 workers each as
   docs/operations.md says to run a fleet; target: each >= 0.9x the best;
   the defaults are reported beside it).

The baseline is exported with `git archive` into BENCH_DIR (default
${TMPDIR:-/tmp}/dunning-bench) and built there once with the current
build's build type; later runs reuse it. --quick (under a minute once the
baseline is built and the population generated) runs fewer events (three
pairs per load, the median), 20,000 accounts and three rounds (the best,
as in the full run): the same ratios, noisier.

Nothing is asserted on a timing: targets are printed as "ok" or "MISSED"
and the exit status is non-zero only when something failed to run or the
scan's drift counts differ from what the generator planted.
"""

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BENCH_DIR = Path(os.environ.get("BENCH_DIR",
                                Path(os.environ.get("TMPDIR", "/tmp")) / "dunning-bench"))

FULL = {"events": 20000, "connections": 64, "accounts": 2000, "pairs": 3,
        "engine": ["--accounts", "1000000", "--rounds", "3", "--recomputes", "2000"]}
QUICK = {"events": 3000, "connections": 64, "accounts": 500, "pairs": 3,
         "engine": ["--accounts", "20000", "--rounds", "3", "--recomputes", "300"]}


def say(msg):
    print(msg, file=sys.stderr, flush=True)


def git(*args):
    return subprocess.run(["git", "-C", str(REPO), *args], check=True, capture_output=True,
                          text=True).stdout.strip()


def buildtype(build):
    """The build type of an existing meson build directory (debugoptimized if unknown)."""
    info = build / "meson-info" / "intro-buildoptions.json"
    try:
        for opt in json.loads(info.read_text()):
            if opt["name"] == "buildtype":
                return opt["value"]
    except (OSError, ValueError, KeyError):
        pass
    return "debugoptimized"


def build_current(build):
    if not (build / "build.ninja").exists():
        subprocess.run(["meson", "setup", str(build), "--buildtype=debugoptimized"],
                       check=True, stdout=subprocess.DEVNULL)
    subprocess.run(["ninja", "-C", str(build), "dunning"], check=True, stdout=subprocess.DEVNULL)
    return build


def build_baseline(commit, btype):
    """The baseline's `dunning`, exported and built once under BENCH_DIR."""
    full = git("rev-parse", "--verify", commit + "^{commit}")
    root = BENCH_DIR / f"baseline-{full[:12]}-{btype}"
    build = root / "build"
    if (build / "dunning").exists():
        return build
    say(f"bench: building the baseline {full[:12]} in {root} (once)")
    src = root / "src"
    src.mkdir(parents=True, exist_ok=True)
    archive = subprocess.run(["git", "-C", str(REPO), "archive", full], check=True,
                             capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(src)], input=archive, check=True)
    if not (build / "build.ninja").exists():
        subprocess.run(["meson", "setup", str(build), str(src), f"--buildtype={btype}"],
                       check=True, stdout=subprocess.DEVNULL)
    subprocess.run(["ninja", "-C", str(build), "dunning"], check=True, stdout=subprocess.DEVNULL)
    return build


def webhook_run(build, cfg, unmapped):
    cmd = [sys.executable, str(REPO / "bench" / "webhook_bench.py"), "--build", str(build),
           "--events", str(cfg["events"]), "--connections", str(cfg["connections"]),
           "--accounts", str(cfg["accounts"]), "--json"]
    if unmapped:
        cmd.append("--unmapped")
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def webhook(cfg, current, baseline):
    """Pairs of runs per load, the order alternating, medians per side."""
    rows = []
    for unmapped in (True, False):
        load = "unmapped" if unmapped else "mapped"
        runs = {"current": [], "baseline": []}
        for p in range(cfg["pairs"]):
            order = ("baseline", "current") if p % 2 == 0 else ("current", "baseline")
            for side in order:
                say(f"bench: webhook {load}, pair {p + 1}/{cfg['pairs']}, {side}...")
                r = webhook_run(current if side == "current" else baseline, cfg, unmapped)
                if r["answered_200"] != cfg["events"] or r["errors"]:
                    sys.exit(f"bench: webhook run of the {side} build lost requests: {r}")
                say(f"bench:   {r['events_per_s']} events/s, p99 {r['p99_ms']:.1f} ms, "
                    f"{1e6 * r['serve_cpu_s'] / r['answered_200']:.0f} us CPU per event")
                runs[side].append(r)
        med = {side: {k: statistics.median(r[k] for r in rs)
                      for k in ("events_per_s", "p99_ms", "ratio_to_raw_same_batch",
                                "serve_cpu_s", "drain_s")}
               for side, rs in runs.items()}
        rows.append((load, med))
    return rows


def engine(cfg):
    say("bench: drift scan and recomputes (bench/run.sh " + " ".join(cfg["engine"]) + ")...")
    p = subprocess.run([str(REPO / "bench" / "run.sh"), *cfg["engine"]], capture_output=True,
                       text=True)
    sys.stderr.write(p.stderr)
    return p.returncode, p.stdout


def grab(text, pattern, group=1, conv=float):
    m = re.search(pattern, text, re.M)
    return conv(m.group(group)) if m else None


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="the under-a-minute version")
    ap.add_argument("--baseline", default="b5b08c3",
                    help="commit the webhook figures are compared with (default b5b08c3)")
    ap.add_argument("--build", default=os.environ.get("DUNNING_BUILD_DIR", "build"))
    ap.add_argument("--skip-webhook", action="store_true")
    ap.add_argument("--skip-engine", action="store_true")
    ap.add_argument("--pg", action="store_true",
                    help="also PostgreSQL: the drift scan (bench/pg_scan.py), webhook ingest "
                         "against pgbench (bench/pg_ingest.py), recomputes with 1, 2 and 4 "
                         "serve processes (bench/pg_fleet.py)")
    args = ap.parse_args()
    cfg = QUICK if args.quick else FULL
    build = Path(args.build)
    if not build.is_absolute():
        build = REPO / build

    head = git("rev-parse", "--short", "HEAD")
    dirty = " (with uncommitted changes)" if git("status", "--porcelain", "--untracked-files=no") else ""
    wh = []
    if not args.skip_webhook:
        current = build_current(build)
        baseline = build_baseline(args.baseline, buildtype(build))
        wh = webhook(cfg, current, baseline)
    pg = None
    if args.pg:
        say("bench: webhook ingest on PostgreSQL against pgbench (bench/pg_ingest.py)...")
        out = subprocess.run([sys.executable, str(REPO / "bench" / "pg_ingest.py"), "--build",
                              str(build), "--events", str(cfg["events"]), "--connections",
                              str(cfg["connections"]), "--seconds", "5" if args.quick else "15",
                              "--json"], check=True, capture_output=True, text=True).stdout
        pg = json.loads(out.strip().splitlines()[-1])
    rc, engine_out = (0, "")
    if not args.skip_engine:
        rc, engine_out = engine(cfg)
        print(engine_out)

    pg_rc, pg_out = (0, "")
    if args.pg:
        accounts = cfg["engine"][cfg["engine"].index("--accounts") + 1]
        rounds = cfg["engine"][cfg["engine"].index("--rounds") + 1]
        p = subprocess.run([sys.executable, str(REPO / "bench" / "pg_scan.py"), "--accounts",
                            accounts, "--rounds", rounds], stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, text=True)
        sys.stderr.write(p.stderr)
        pg_rc, pg_out = p.returncode, p.stdout
        print(pg_out)
    fleet = None
    if args.pg:
        say("bench: recomputes with 1, 2 and 4 serve processes on PostgreSQL (bench/pg_fleet.py)...")
        size = ["--accounts", "1000", "--days", "20", "--rounds", "1"] if args.quick else \
            ["--accounts", "3000", "--days", "30", "--rounds", "3"]
        fleet = {}
        # As docs/operations.md says to run a fleet (the target), then the
        # defaults (2 workers each, fleet_workers auto), reported beside it.
        for name, extra in (("capped", ["--workers", "4", "--fleet-workers", "4"]),
                            ("defaults", ["--rounds", "1"])):
            out = subprocess.run([sys.executable, str(REPO / "bench" / "pg_fleet.py"),
                                  "--build", str(build), "--json"] + size + extra,
                                 check=True, capture_output=True, text=True).stdout
            fleet[name] = json.loads(out.strip().splitlines()[-1])

    print(f"summary: commit {head}{dirty}, {'quick' if args.quick else 'full'} run, "
          f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}")
    if wh:
        print(f"\n  webhook ingest ({cfg['events']} events, {cfg['connections']} connections, "
              f"median of {cfg['pairs']} alternated pair(s); baseline {args.baseline})")
        print("  load       events/s now  baseline  now/base   p99 now  p99 base   now/raw floor")
        for load, med in wh:
            c, b = med["current"], med["baseline"]
            ratio = c["events_per_s"] / b["events_per_s"] if b["events_per_s"] else 0.0
            print(f"  {load:<9} {c['events_per_s']:>13.0f} {b['events_per_s']:>9.0f}"
                  f" {ratio:>9.2f} {c['p99_ms']:>7.1f} ms {b['p99_ms']:>6.1f} ms"
                  f" {c['ratio_to_raw_same_batch']:>13.3f}")
        for load, med in wh:
            c, b = med["current"], med["baseline"]
            ok = c["events_per_s"] >= b["events_per_s"] and c["p99_ms"] <= 20.0
            print(f"  target {load}: >= baseline and p99 <= 20 ms: {'ok' if ok else 'MISSED'}")
    if pg:
        s, b = pg["serve"], pg["pgbench"]
        print(f"\n  webhook ingest on PostgreSQL ({pg['events']} events unmapped, "
              f"{pg['connections']} connections) against pgbench, the same rows in "
              f"transactions of {pg['batch']}")
        print(f"  serve {s['events_per_s']} events/s (p99 {s['p99_ms']:.1f} ms; CPU per event "
              f"serve {s['serve_cpu_us_per_event']} us, PostgreSQL {s['pg_cpu_us_per_event']} us);"
              f" pgbench {b['events_per_s']} events/s; serve / pgbench {pg['ratio']:.2f}, "
              f"target >= 0.3: {'ok' if pg['ratio'] >= 0.3 else 'MISSED'} (one pgbench client: "
              f"{pg['pgbench_one_client']['events_per_s']} events/s, "
              f"{pg['ratio_one_client']:.2f})")
    if engine_out:
        accounts = grab(engine_out, r"^\s*(\d+) accounts,", conv=int)
        scan_rate = grab(engine_out, r"^\s*scan \(stream.*?\s(\d+)\s*$")
        scan_cpu = grab(engine_out, r"^\s*scan \(stream[^\d]*[\d.]+\s+([\d.]+)")
        raw_rate = grab(engine_out, r"^\s*raw read of the same columns.*?\s(\d+)\s*$")
        ratio = grab(engine_out, r"^\s*scan / raw read\s+([\d.]+)")
        ratio_cpu = grab(engine_out, r"^\s*scan / raw read, cpu time\s+([\d.]+)")
        rss = grab(engine_out, r"^\s*peak RSS of a scan\s+([\d.]+) MB")
        gather = grab(engine_out, r"^\s*dun_gather only\s+[\d.]+\s+(\d+)")
        recomp = grab(engine_out, r"^\s*dun_engine_recompute\s+[\d.]+\s+(\d+)")
        rg = grab(engine_out, r"^\s*recompute / gather\s+([\d.]+)")
        print(f"\n  drift scan ({accounts} accounts) and recomputes")
        if scan_rate is not None:
            per_cpu = accounts / scan_cpu if scan_cpu else 0.0
            print(f"  scan {scan_rate:.0f} accounts/s, {per_cpu:.0f} per CPU second (raw read "
                  f"{raw_rate:.0f}/s); scan / raw read {ratio:.3f} (cpu {ratio_cpu:.3f}), "
                  f"target <= 1.2: {'ok' if ratio <= 1.2 else 'MISSED'}")
            print(f"  target >= 100k accounts/s (set for 1M accounts, wall clock): "
                  f"{'ok' if scan_rate >= 100000 else 'MISSED'}")
        if rss is not None:
            print(f"  peak RSS of a scan {rss:.1f} MB, target <= 64 MB: "
                  f"{'ok' if rss <= 64 else 'MISSED'}")
        if recomp is not None:
            print(f"  recomputes {recomp:.0f}/s against gathers {gather:.0f}/s "
                  f"(recompute / gather {rg:.2f})")
        row = r"^\s*%s\s+\d+ \+ \d+\s+(\d+)\s+(\d+)\s+(\d+)\s+([\d.]+)"
        for name in ("empty plan", "with consequences"):
            m = re.search(row % re.escape(name), engine_out, re.M)
            if m:
                g, u, b, ratio = m.groups()
                print(f"  workers, {name}: batched {b}/s, unbatched {u}/s, gathers {g}/s "
                      f"(batched / unbatched {float(ratio):.2f})")
        for line in engine_out.splitlines():
            if line.strip().startswith(("batched, empty plan", "batched / unbatched")):
                print("  " + " ".join(line.split()))
    if pg_out:
        accounts = grab(pg_out, r"^\s*(\d+) accounts,", conv=int)
        scan_rate = grab(pg_out, r"^\s*scan \(stream.*?\s(\d+)\s*$")
        raw_rate = grab(pg_out, r"^\s*raw read of the same columns.*?\s(\d+)\s*$")
        ratio = grab(pg_out, r"^\s*scan / raw read\s+([\d.]+)")
        ratio_cpu = grab(pg_out, r"^\s*scan / raw read, cpu time\s+([\d.]+)")
        rss = grab(pg_out, r"^\s*peak RSS of a scan\s+([\d.]+) MB")
        if scan_rate is not None:
            print(f"\n  drift scan on PostgreSQL ({accounts} accounts, covering indexes)")
            print(f"  scan {scan_rate:.0f} accounts/s (raw read {raw_rate:.0f}/s); scan / raw "
                  f"read {ratio:.3f} (client cpu {ratio_cpu:.3f}); peak RSS {rss:.1f} MB")
    for name, label in (("capped", "4 workers per serve process, fleet_workers = 4"),
                        ("defaults", "the defaults: 2 workers per serve process, fleet_workers auto")):
        if not fleet:
            break
        f = fleet[name]
        best = {int(k): v for k, v in f["best_per_size"].items()}
        top = max(best.values())
        print(f"\n  recomputes on PostgreSQL ({f['accounts']} accounts queued at once, {label})")
        print("  " + ", ".join(f"{n} process(es) {best[n]:.0f}/s ({best[n] / top:.2f} of the best)"
                               for n in sorted(best)))
        r0 = f["runs"][0]
        n = f["accounts"]
        verdict = ("target each >= 0.9x the best: "
                   + ("ok" if min(best.values()) >= 0.9 * top else "MISSED")
                   if name == "capped" else "no target (docs/operations.md: set the cap)")
        print(f"  per account: {r0['statements'] / n:.1f} statements, {r0['transactions'] / n:.1f} "
              f"transactions, {r0['wal_bytes'] / n:.0f} WAL bytes; {verdict}")
    if rc:
        print(f"\n  bench/run.sh exited {rc} (drift counts differ or it failed)")
    if pg_rc:
        print(f"\n  bench/pg_scan.py exited {pg_rc} (drift counts differ or it failed)")
    return 1 if rc or pg_rc else 0


if __name__ == "__main__":
    sys.exit(main())
