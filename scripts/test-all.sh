#!/usr/bin/env bash
# The whole test suite, as `make test` and CI run it:
#   1. format check (clang-format, pinned style), and the store seam check
#      (no SQLite or libpq symbol outside src/store/)
#   2. -Werror build, C unit/golden/fuzz-corpus tests (meson test)
#   3. the same tests under AddressSanitizer + UndefinedBehaviorSanitizer
#   4. integration tests: pytest driving the real binary against real
#      servers on 127.0.0.1 (Stripe fake, SMTP, platform and event receivers)
# It ends with one line "N passed, N failed" and exits non-zero on any failure.
set -u
cd "$(dirname "$0")/.."

passed=0
failed=0
log_dir=${TEST_LOG_DIR:-build-ci/test-logs}
mkdir -p "$log_dir"

stage() { printf '\n== %s\n' "$*"; }

# meson test prints "Ok:  N" / "Fail:  N" / ... summary lines.
count_meson() {
	local out=$1 ok fail up to
	ok=$(awk '/^Ok:/ {print $2}' "$out" | tail -1)
	fail=$(awk '/^Fail:/ {print $2}' "$out" | tail -1)
	up=$(awk '/^Unexpected Pass:/ {print $3}' "$out" | tail -1)
	to=$(awk '/^Timeout:/ {print $2}' "$out" | tail -1)
	passed=$((passed + ${ok:-0}))
	failed=$((failed + ${fail:-0} + ${up:-0} + ${to:-0}))
}

stage "format check"
if scripts/format-check.sh; then
	passed=$((passed + 1))
else
	failed=$((failed + 1))
fi

stage "store seam check"
if scripts/store-seam-check.sh; then
	passed=$((passed + 1))
else
	failed=$((failed + 1))
fi

stage "build with -Werror and run the C tests"
if [ ! -f build-ci/build.ninja ]; then
	meson setup build-ci --buildtype=debugoptimized -Dwerror=true >/dev/null || failed=$((failed + 1))
fi
if ninja -C build-ci >"$log_dir/build.log" 2>&1; then
	meson test -C build-ci --no-suite integration --print-errorlogs 2>&1 | tee "$log_dir/meson-test.txt" | tail -n 12
	count_meson "$log_dir/meson-test.txt"
else
	cat "$log_dir/build.log"
	echo "build failed"
	failed=$((failed + 1))
fi

stage "AddressSanitizer + UndefinedBehaviorSanitizer"
if [ ! -f build-asan/build.ninja ]; then
	meson setup build-asan --buildtype=debug -Dwerror=true -Db_sanitize=address,undefined \
		-Db_lundef=false >/dev/null || failed=$((failed + 1))
fi
if ninja -C build-asan >"$log_dir/build-asan.log" 2>&1; then
	ASAN_OPTIONS=detect_leaks=0:abort_on_error=1 UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1 \
		meson test -C build-asan --no-suite integration --print-errorlogs 2>&1 |
		tee "$log_dir/meson-asan.txt" | tail -n 12
	count_meson "$log_dir/meson-asan.txt"
else
	cat "$log_dir/build-asan.log"
	echo "sanitizer build failed"
	failed=$((failed + 1))
fi

stage "integration tests (real binary, real servers on 127.0.0.1)"
# (again when a dependency of package.json is missing from node_modules)
if [ -f tests/node/package.json ] && ! node -e '
	const deps = Object.keys(require("./tests/node/package.json").dependencies || {});
	const fs = require("fs");
	process.exit(deps.every((d) => fs.existsSync("tests/node/node_modules/" + d)) ? 0 : 1);
' 2>/dev/null; then
	(cd tests/node && npm install --no-audit --no-fund --loglevel=error) ||
		{ echo "npm install failed"; failed=$((failed + 1)); }
fi
if [ -d tests/integration ]; then
	DUNNING_BUILD_DIR=build-ci /usr/bin/python3 -m pytest tests/integration -q -p no:cacheprovider \
		2>&1 | tee "$log_dir/pytest.txt" | tail -n 25
	summary=$(grep -E '^(=+ )?[0-9]+ (passed|failed|error)' "$log_dir/pytest.txt" | tail -1)
	p=$(echo "$summary" | grep -oE '[0-9]+ passed' | grep -oE '[0-9]+')
	f=$(echo "$summary" | grep -oE '[0-9]+ failed' | grep -oE '[0-9]+')
	e=$(echo "$summary" | grep -oE '[0-9]+ errors?' | grep -oE '[0-9]+')
	x=$(echo "$summary" | grep -oE '[0-9]+ xpassed' | grep -oE '[0-9]+')
	passed=$((passed + ${p:-0}))
	failed=$((failed + ${f:-0} + ${e:-0} + ${x:-0}))
	if [ -z "$summary" ]; then
		echo "pytest printed no summary"
		failed=$((failed + 1))
	fi
fi

echo
echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ]
