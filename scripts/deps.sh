#!/usr/bin/env bash
# Installs the Debian packages dunning needs to build and test, if any is
# missing. Safe to run again: when everything is present it does nothing.
set -euo pipefail

packages=(
	gcc make pkg-config meson ninja-build
	libsqlite3-dev libjansson-dev libcurl4-openssl-dev libmicrohttpd-dev
	libinih-dev libssl-dev libpq-dev libcrypt-dev
	python3 python3-pytest python3-aiosmtpd python3-psycopg2 sqlite3 clang-format
	postgresql prometheus
)
if [ "${1:-}" = "--with-node" ]; then
	# chromium: the support panel's browser tests drive it with playwright-core
	packages+=(nodejs npm chromium)
fi

missing=()
for p in "${packages[@]}"; do
	dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
# nodejs may come from outside Debian's packages; a working node is enough.
if [ "${1:-}" = "--with-node" ] && command -v node >/dev/null && command -v npm >/dev/null; then
	kept=()
	for p in "${missing[@]}"; do
		[ "$p" = nodejs ] || [ "$p" = npm ] || kept+=("$p")
	done
	missing=("${kept[@]+"${kept[@]}"}")
fi
[ ${#missing[@]} -eq 0 ] && exit 0

echo "installing Debian packages: ${missing[*]}" >&2
sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo"
$sudo apt-get update -qq
DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}" >/dev/null
