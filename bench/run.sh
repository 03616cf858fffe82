#!/usr/bin/env bash
# bench/run.sh — the drift scan and recompute benchmark (`make bench`).
#
#   bench/run.sh [--accounts N] [--seed S] [--rounds N] [--recomputes N] [--pointwise]
#
# 1. builds gen_db and bench_engine in a release build directory
#    (BENCH_BUILD, default build-bench);
# 2. generates the population if no database for these parameters exists
#    under BENCH_DIR (default ${TMPDIR:-/tmp}/dunning-bench) — 3.3 GB and
#    about a minute for the default million accounts — and reuses it
#    otherwise (the name carries the accounts, the seed and the generator's
#    version);
# 3. runs bench_engine, which prints the table: scan / raw read, peak RSS,
#    recomputes per second against gathers per second. The recomputes run
#    on a copy of the database (as much space again, removed afterwards).
# See docs/performance.md for what each number means.
set -euo pipefail
cd "$(dirname "$0")/.."

accounts=1000000
seed=1
rounds=3
recomputes=2000
pointwise=()
while [ $# -gt 0 ]; do
	case $1 in
	--accounts) accounts=$2; shift 2 ;;
	--seed) seed=$2; shift 2 ;;
	--rounds) rounds=$2; shift 2 ;;
	--recomputes) recomputes=$2; shift 2 ;;
	--pointwise) pointwise=(--pointwise); shift ;;
	-h | --help) sed -n '2,16p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
	*) echo "bench/run.sh: unknown argument $1" >&2; exit 64 ;;
	esac
done

build=${BENCH_BUILD:-build-bench}
if [ ! -f "$build/build.ninja" ]; then
	meson setup "$build" --buildtype=release >/dev/null
fi
ninja -C "$build" bench/gen_db bench/bench_engine >/dev/null

dir=${BENCH_DIR:-${TMPDIR:-/tmp}/dunning-bench}
mkdir -p "$dir"
version=$("$build/bench/gen_db" --version)
db="$dir/bench-a$accounts-s$seed-v$version.db"
if [ -f "$db" ]; then
	echo "bench: reusing $db" >&2
else
	echo "bench: generating $db" >&2
	"$build/bench/gen_db" --out "$db" --accounts "$accounts" --seed "$seed"
fi

exec "$build/bench/bench_engine" --db "$db" --rounds "$rounds" --recomputes "$recomputes" \
	"${pointwise[@]}"
