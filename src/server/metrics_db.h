/*
 * metrics_db.h — the figures of /metrics that live in the database: the
 * last drift scan, bad-debt entries and exits, time in bad debt, money
 * recovered and written off, emails, retries, decisions, the observe-mode
 * shadow and the last parity report. Read at scrape time from the tables
 * themselves, so they survive restarts, agree across processes sharing one
 * database, and equal what `dunning report` prints.
 */
#ifndef DUN_METRICS_DB_H
#define DUN_METRICS_DB_H

#include <stdint.h>
#include <stdio.h>

#include "core/policy.h"
#include "store/db.h"
#include "util/err.h"

/*
 * Append the Prometheus text of those figures to f. policy classifies the
 * declines of retried attempts; account_series_limit bounds the per-account
 * families ([metrics] account_series_limit, 0: none); now (the engine's
 * clock) ages the last scan and the accounts' stages.
 * Returns the first database error (what was written before it stays: each
 * family is whole or absent).
 */
enum dun_err dun_metrics_db_render(FILE *f, struct dun_db *db, const struct dun_policy *policy,
				   int64_t account_series_limit, int64_t now);

#endif
