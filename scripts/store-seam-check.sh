#!/usr/bin/env bash
# The store seam check: SQL reaches a database only through src/store/
# (store/db.h). Any C file outside src/store/ that names a SQLite or libpq
# symbol (sqlite3_*, SQLITE_*, <sqlite3.h>, PQ*(), PGconn, PGresult,
# <libpq-fe.h>) fails the check, with the offending lines printed.
set -u
cd "$(dirname "$0")/.."
pattern='\bsqlite3(_[A-Za-z0-9_]+)?\b|\bSQLITE_[A-Z0-9_]+|\bPQ[a-z][A-Za-z]*\b|\bPG(conn|result|notify)\b|libpq-fe\.h'
hits=$(grep -rnE --include='*.c' --include='*.h' "$pattern" src bench tests 2>/dev/null |
	grep -v '^src/store/')
if [ -n "$hits" ]; then
	echo "store seam check: SQLite or libpq used outside src/store/ (go through store/db.h):"
	echo "$hits"
	exit 1
fi
echo "store seam check: ok"
