#!/usr/bin/env python3
"""Recomputes per second with the platform read over HTTP, against the
gather-only baseline (docs/performance.md, "The platform read").

    bench/platform_bench.py [--accounts N] [--rounds N] [--build DIR]

Builds a database with `dunning demo` (N accounts, 40 days of dunning), starts
the test platform of tests/integration/platform_server.py on 127.0.0.1 with
every account known to it, and runs build/bench/bench_platform, which prints
both rates and the ratio. Loopback only; nothing else is contacted.
"""

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests" / "integration"))
from platform_server import Platform  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--accounts", type=int, default=500)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--build", default=str(REPO / "build"))
    a = ap.parse_args()
    build = Path(a.build)
    with tempfile.TemporaryDirectory() as tmp:
        db = Path(tmp) / "bench.db"
        env = {k: v for k, v in os.environ.items() if not k.startswith("DUNNING_")}
        subprocess.run([str(build / "dunning"), "--db", str(db), "demo", "--accounts",
                        str(a.accounts), "--days", "40"], check=True, env=env,
                       stdout=subprocess.DEVNULL)
        platform = Platform().start()
        try:
            # Some restrictions of every kind, so the answers are not all empty.
            for i in range(0, a.accounts, 7):
                platform.place("acct_%d" % i, "ban", "abuse", "trust-and-safety")
            r = subprocess.run([str(build / "bench" / "bench_platform"), str(db),
                                platform.url, platform.token, str(a.rounds)],
                               capture_output=True, text=True, env=env)
        finally:
            platform.stop()
        sys.stdout.write(r.stdout)
        sys.stderr.write(r.stderr)
        return r.returncode


if __name__ == "__main__":
    sys.exit(main())
