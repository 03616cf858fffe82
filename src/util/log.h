/*
 * log.h — one line per record, logfmt, to stderr.
 *
 *   ts=2026-11-20T10:00:00Z level=info event=recompute.done account=acct_1 ...
 *
 * Event names are stable (they are what dashboards match). Callers pass
 * key/value pairs; values with spaces or quotes are quoted. Secrets are never
 * passed in. The level can be raised to silence info lines (the CLI does
 * that for commands whose output is a table).
 */
#ifndef DUN_LOG_H
#define DUN_LOG_H

enum dun_log_level { DUN_LOG_DEBUG, DUN_LOG_INFO, DUN_LOG_WARN, DUN_LOG_ERROR };

void dun_log_set_level(enum dun_log_level lvl);
/*
 * Log event with NULL-terminated key, value pairs:
 *   dun_log(DUN_LOG_INFO, "inbox.claimed", "account", id, "trigger", t, NULL);
 */
void dun_log(enum dun_log_level lvl, const char *event, ...) __attribute__((sentinel));

#endif
