#!/usr/bin/env bash
# Fails when a tracked C file is not formatted by the pinned .clang-format.
set -u
bad=0
for f in $(git ls-files '*.c' '*.h'); do
	if ! clang-format --dry-run --Werror "$f" >/dev/null 2>&1; then
		echo "not formatted: $f (run: clang-format -i $f)"
		bad=1
	fi
done
exit $bad
