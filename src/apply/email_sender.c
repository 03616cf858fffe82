/*
 * email_sender.c — delivering the email outbox (see email_sender.h).
 *
 * Design
 * ------
 * A queued email is a row of the email log that the applier wrote, rendered
 * and `pending`, in the transaction of its decision (email_log.c). The
 * sender hands it to the mailer and records the outcome:
 *
 *   pending ──claim──► sending ──accepted──► sent          (final)
 *      ▲                 │
 *      │   relay down,   │ refused for good (550, bad address, no address)
 *      │   4xx, timeout  ├──────────────────────────────► dead  (final, visible)
 *      └─────────────────┘ not_before = now + backoff;
 *                          queued longer than give_up_after_s: dead
 *
 * Ordering.  Only the oldest undelivered email of an account (by queue id)
 * is eligible, so a customer reads the notices in the order the decisions
 * were taken: "payment failed", then "restricted", then "resolved", never
 * the other way round, even after a week of a relay that was down. A dead
 * email does not hold back the ones after it.
 *
 * Claims.  A claim is the row's move to `sending` with this process as
 * owner and the wall-clock time, in one UPDATE that only succeeds on a due
 * row, so two senders (the service's thread and `dunning work`, or two
 * engines on one database) never send one email at the same time. A claim
 * whose owner is gone (same host) or whose lease ran out is put back to
 * `pending` at the start of a run and sent again with the same Message-ID:
 * the one duplicate window of docs/email.md. A legacy system's claim
 * (`dunning email claim`) is honoured the same way; if it ends without the
 * text of the email (the engine never queued it) the row becomes `failed`
 * and the next recompute queues it with its text.
 *
 * A relay that is down.  Three retryable failures in a row end the run, so
 * a dead relay costs a few connection attempts per run, not one per email.
 */
#include "email_sender.h"
#include "apply/email_log.h"
#include "apply/outbox.h"
#include "util/clock.h"
#include "util/log.h"
#include "util/mem.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define BATCH 32

void dun_email_sender_config_from(const struct dun_config *cfg, const struct dun_mailer *mailer,
				  struct dun_email_sender_config *out)
{
	memset(out, 0, sizeof *out);
	out->alert_after_s = cfg ? cfg->email_alert_after_s : 86400;
	out->give_up_after_s = cfg ? cfg->email_give_up_after_s : 14 * 86400;
	out->claim_lease_s =
	    mailer && mailer->claim_lease_s > 0 ? mailer->claim_lease_s : DUN_EMAIL_LEASE_S_DEFAULT;
}

struct row {
	int64_t id;
	char *key;
	char *account_id;
	char *to;
	char *subject;
	char *body;
	char *message_id;
	int attempts;
	int64_t queued_at;
};

static char *col(struct dun_stmt *st, int c)
{
	const char *v = dun_stmt_col_text(st, c);
	return dun_strdup(v ? v : "");
}

static void row_free(struct row *r)
{
	free(r->key);
	free(r->account_id);
	free(r->to);
	free(r->subject);
	free(r->body);
	free(r->message_id);
	memset(r, 0, sizeof *r);
}

/* Put back `sending` claims whose owner is gone or whose lease ran out. */
static enum dun_err recover(struct dun_db *db, int64_t wall, int64_t lease_s,
			    struct dun_email_stats *stats)
{
	struct stale {
		int64_t id;
		char owner[DUN_EMAIL_OWNER_MAX];
		int64_t claimed_at;
	} found[BATCH];
	int n = 0;
	struct dun_stmt *st = dun_db_stmt(
	    db,
	    "SELECT id, claimed_by, claimed_at FROM emails WHERE state = 'sending' ORDER BY id");
	while (n < BATCH && dun_stmt_row(st)) {
		struct stale *s = &found[n];
		s->id = dun_stmt_col_int64(st, 0);
		dun_stmt_col_copy(st, 1, s->owner, sizeof s->owner);
		s->claimed_at = dun_stmt_col_int64(st, 2);
		bool expired = s->claimed_at <= wall - lease_s;
		if (expired || (s->owner[0] && dun_email_owner_is_gone(s->owner)))
			n++;
	}
	enum dun_err e = dun_stmt_err(st);
	dun_stmt_reset(st);
	for (int i = 0; i < n && e == DUN_OK; i++) {
		char why[DUN_EMAIL_OWNER_MAX + 64];
		snprintf(why, sizeof why, "the claim of %s ended unsettled; sent again",
			 found[i].owner[0] ? found[i].owner : "(nobody)");
		st = dun_db_stmt(
		    db,
		    "UPDATE emails SET state = CASE WHEN body = '' THEN 'failed'"
		    " ELSE 'pending' END, claimed_by = '', last_error = ?4"
		    " WHERE id = ?1 AND state = 'sending' AND claimed_by = ?2 AND claimed_at = ?3");
		dun_stmt_bind_int64(st, 1, found[i].id);
		dun_stmt_bind_text(st, 2, found[i].owner);
		dun_stmt_bind_int64(st, 3, found[i].claimed_at);
		dun_stmt_bind_text(st, 4, why);
		e = dun_stmt_done(st);
		if (e == DUN_OK && dun_db_changes(db) > 0) {
			stats->recovered++;
			dun_log(DUN_LOG_WARN, "email.reclaimed", "owner", found[i].owner, NULL);
		}
	}
	return e;
}

/*
 * The due heads: queued (`pending`, or `failed` with its text), due, and no
 * earlier email of the same account still undelivered.
 */
static int select_due(struct dun_db *db, int64_t now, struct row *out, int max, enum dun_err *err)
{
	struct dun_stmt *st = dun_db_stmt(
	    db, "SELECT e.id, e.key, e.account_id, e.to_addr, e.subject, e.body, e.message_id,"
		" e.attempts, e.queued_at FROM emails e"
		" WHERE e.state IN ('pending', 'failed') AND e.body <> '' AND e.not_before <= ?1"
		" AND NOT EXISTS (SELECT 1 FROM emails p WHERE p.account_id = e.account_id"
		"  AND p.id < e.id AND (p.state IN ('pending', 'sending')"
		"  OR (p.state = 'failed' AND p.body <> '')))"
		" ORDER BY e.id LIMIT ?2");
	dun_stmt_bind_int64(st, 1, now);
	dun_stmt_bind_int(st, 2, max);
	int n = 0;
	while (n < max && dun_stmt_row(st)) {
		struct row *r = &out[n++];
		r->id = dun_stmt_col_int64(st, 0);
		r->key = col(st, 1);
		r->account_id = col(st, 2);
		r->to = col(st, 3);
		r->subject = col(st, 4);
		r->body = col(st, 5);
		r->message_id = col(st, 6);
		r->attempts = dun_stmt_col_int(st, 7);
		r->queued_at = dun_stmt_col_int64(st, 8);
	}
	*err = dun_stmt_err(st);
	dun_stmt_reset(st);
	return n;
}

static enum dun_err claim(struct dun_db *db, const struct row *r, const char *owner, int64_t now,
			  int64_t wall, bool *won)
{
	struct dun_stmt *st = dun_db_stmt(
	    db, "UPDATE emails SET state = 'sending', claimed_by = ?3, claimed_at = ?4"
		" WHERE id = ?1 AND state IN ('pending', 'failed') AND not_before <= ?2");
	dun_stmt_bind_int64(st, 1, r->id);
	dun_stmt_bind_int64(st, 2, now);
	dun_stmt_bind_text(st, 3, owner);
	dun_stmt_bind_int64(st, 4, wall);
	enum dun_err e = dun_stmt_done(st);
	*won = e == DUN_OK && dun_db_changes(db) > 0;
	return e;
}

/* Back to pending after delay_s, or dead; only while this sender holds the claim. */
static enum dun_err settle_failed(struct dun_db *db, const struct row *r, const char *owner,
				  bool dead, const char *error, int64_t not_before)
{
	struct dun_stmt *st = dun_db_stmt(
	    db, "UPDATE emails SET state = ?3, attempts = attempts + 1, last_error = ?4,"
		" not_before = ?5, claimed_by = '' WHERE id = ?1 AND state = 'sending'"
		" AND claimed_by = ?2");
	dun_stmt_bind_int64(st, 1, r->id);
	dun_stmt_bind_text(st, 2, owner);
	dun_stmt_bind_text(st, 3, dead ? "dead" : "pending");
	dun_stmt_bind_text(st, 4, error);
	dun_stmt_bind_int64(st, 5, dead ? 0 : not_before);
	return dun_stmt_done(st);
}

/* Give up a row that waited too long, without sending it. */
static enum dun_err give_up(struct dun_db *db, const struct row *r, int64_t now,
			    int64_t give_up_after_s, bool *done)
{
	char why[160];
	snprintf(why, sizeof why,
		 "given up: undelivered %" PRId64 " s after it was queued (give_up_after_s %" PRId64
		 "); last error: ",
		 now - r->queued_at, give_up_after_s);
	struct dun_stmt *st = dun_db_stmt(
	    db, "UPDATE emails SET state = 'dead', last_error = ?2 || last_error, not_before = 0"
		" WHERE id = ?1 AND state IN ('pending', 'failed')");
	dun_stmt_bind_int64(st, 1, r->id);
	dun_stmt_bind_text(st, 2, why);
	enum dun_err e = dun_stmt_done(st);
	*done = e == DUN_OK && dun_db_changes(db) > 0;
	return e;
}

enum dun_err dun_email_sender_count(struct dun_db *db, const struct dun_email_sender_config *cfg,
				    int64_t now, struct dun_email_stats *stats)
{
	struct dun_stmt *st = dun_db_stmt(
	    db, "SELECT COALESCE(SUM(CASE WHEN state IN ('pending', 'sending') OR (state = 'failed'"
		"  AND body <> '') THEN 1 ELSE 0 END), 0),"
		" COALESCE(SUM(CASE WHEN (state IN ('pending', 'sending') OR (state = 'failed'"
		"  AND body <> '')) AND queued_at > 0 AND queued_at <= ?1 THEN 1 ELSE 0 END), 0),"
		" COALESCE(SUM(CASE WHEN state = 'dead' THEN 1 ELSE 0 END), 0),"
		" COALESCE(MIN(CASE WHEN (state IN ('pending', 'sending') OR (state = 'failed'"
		"  AND body <> '')) AND queued_at > 0 THEN queued_at END), 0)"
		" FROM emails WHERE state <> 'sent'");
	dun_stmt_bind_int64(st, 1, now - cfg->alert_after_s);
	enum dun_err e = DUN_OK;
	if (dun_stmt_row(st)) {
		stats->pending = dun_stmt_col_int64(st, 0);
		stats->overdue = dun_stmt_col_int64(st, 1);
		stats->dead_total = dun_stmt_col_int64(st, 2);
		stats->oldest_pending_at = dun_stmt_col_int64(st, 3);
	} else {
		e = dun_stmt_err(st);
	}
	dun_stmt_reset(st);
	return e;
}

/* Refused for good: retrying cannot help. Everything else is retried. */
static bool is_final_refusal(enum dun_err e)
{
	return e == DUN_E_INVALID || e == DUN_E_TOO_BIG;
}

static void log_result(const struct row *r, const char *event, int attempts, int64_t delay_s,
		       const char *error)
{
	char a[16], d[24];
	snprintf(a, sizeof a, "%d", attempts);
	snprintf(d, sizeof d, "%" PRId64, delay_s);
	if (!strcmp(event, "email.sent"))
		dun_log(DUN_LOG_INFO, event, "account", r->account_id, "key", r->key, "attempts", a,
			NULL);
	else if (!strcmp(event, "email.dead"))
		dun_log(DUN_LOG_ERROR, event, "account", r->account_id, "key", r->key, "attempts",
			a, "error", error, NULL);
	else
		dun_log(DUN_LOG_WARN, event, "account", r->account_id, "key", r->key, "attempts", a,
			"retry_in_s", d, "error", error, NULL);
}

enum dun_err dun_email_sender_run_once(struct dun_db *db, const struct dun_mailer *mailer,
				       const struct dun_email_sender_config *cfg, int64_t now,
				       struct dun_email_stats *stats)
{
	memset(stats, 0, sizeof *stats);
	int64_t wall = dun_clock_wall_ms() / 1000;
	char owner[DUN_EMAIL_OWNER_MAX];
	dun_email_owner_self(owner, sizeof owner);
	enum dun_err e = recover(db, wall, cfg->claim_lease_s, stats);
	struct row rows[BATCH];
	int failures_in_a_row = 0;
	/*
	 * Each due row is the next email of its own account (select_due), so
	 * the rows may be sent in any order. Senders of several processes read
	 * the same rows: each starts at its own place in them (a hash of its
	 * owner name), so they mostly claim different rows instead of racing
	 * for the same one.
	 */
	uint64_t spread = 1469598103934665603ULL;
	for (const char *c = owner; *c; c++)
		spread = (spread ^ (unsigned char)*c) * 1099511628211ULL;
	while (e == DUN_OK && !stats->stopped_early) {
		if (stats->attempted >= DUN_EMAIL_RUN_MAX) {
			stats->more = true;
			break;
		}
		int n = select_due(db, now, rows, BATCH, &e);
		if (n == 0)
			break;
		bool progress = false;
		if (cfg->should_stop && cfg->should_stop()) {
			stats->stopped_early = true;
			break;
		}
		int first = (int)(spread % (uint64_t)n);
		for (int i = 0; i < n; i++) {
			struct row *r = &rows[(first + i) % n];
			if (cfg->should_stop && cfg->should_stop())
				stats->stopped_early = true;
			if (e != DUN_OK || stats->stopped_early)
				continue;
			if (r->queued_at > 0 && now - r->queued_at >= cfg->give_up_after_s) {
				bool done = false;
				e = give_up(db, r, now, cfg->give_up_after_s, &done);
				if (done) {
					stats->dead++;
					progress = true;
					log_result(r, "email.dead", r->attempts, 0,
						   "given up at the age limit");
				}
				continue;
			}
			bool won = false;
			wall = dun_clock_wall_ms() / 1000;
			e = claim(db, r, owner, now, wall, &won);
			if (e != DUN_OK || !won)
				continue;
			struct dun_email_msg msg = {.key = r->key,
						    .message_id = r->message_id,
						    .to = r->to,
						    .subject = r->subject,
						    .body = r->body};
			char err[512] = "";
			enum dun_err se = mailer->ops->send(mailer->self, &msg, err, sizeof err);
			stats->attempted++;
			if (se == DUN_OK) {
				e = dun_email_settle(db, r->key, owner, true, "", now);
				stats->sent++;
				progress = true;
				failures_in_a_row = 0;
				log_result(r, "email.sent", r->attempts + 1, 0, "");
				continue;
			}
			if (!err[0])
				snprintf(err, sizeof err, "%s", dun_err_str(se));
			char error[600];
			snprintf(error, sizeof error, "%s: %s", dun_err_str(se), err);
			if (is_final_refusal(se)) {
				e = settle_failed(db, r, owner, true, error, 0);
				stats->dead++;
				progress = true;
				log_result(r, "email.dead", r->attempts + 1, 0, error);
				continue;
			}
			int64_t delay = dun_outbox_backoff_s(
			    r->attempts + 1, DUN_EMAIL_BACKOFF_BASE_S, DUN_EMAIL_BACKOFF_MAX_S,
			    (uint64_t)r->id * 0x9e3779b97f4a7c15ULL + (uint64_t)r->attempts);
			e = settle_failed(db, r, owner, false, error, now + delay);
			stats->retried++;
			bool overdue = r->queued_at > 0 && now - r->queued_at >= cfg->alert_after_s;
			log_result(r, overdue ? "email.overdue" : "email.retry", r->attempts + 1,
				   delay, error);
			/* A configuration error or a timeout will fail every email
			 * alike; otherwise a few failures in a row say the same. */
			if (se == DUN_E_CONFIG || se == DUN_E_TIMEOUT ||
			    ++failures_in_a_row >= DUN_EMAIL_RUN_FAILURES_MAX)
				stats->stopped_early = true;
		}
		for (int i = 0; i < n; i++)
			row_free(&rows[i]);
		/* Failed rows wait for their backoff; only a delivered (or dead)
		 * row makes the next email of its account eligible. */
		if (!progress)
			break;
	}
	if (e != DUN_OK) {
		dun_log(DUN_LOG_ERROR, "email.sender_failed", "error", dun_db_errmsg(db), NULL);
		return e;
	}
	return dun_email_sender_count(db, cfg, now, stats);
}

enum dun_err dun_email_requeue_dead(struct dun_db *db, const char *key, int64_t now, int *n_out)
{
	struct dun_stmt *st =
	    dun_db_stmt(db, "UPDATE emails SET state = 'pending', not_before = 0, queued_at = ?2,"
			    " last_error = 'requeued after: ' || last_error"
			    " WHERE state = 'dead' AND (?1 IS NULL OR key = ?1)");
	dun_stmt_bind_text(st, 1, key);
	dun_stmt_bind_int64(st, 2, now);
	enum dun_err e = dun_stmt_done(st);
	if (n_out)
		*n_out = e == DUN_OK ? (int)dun_db_changes(db) : 0;
	return e;
}
