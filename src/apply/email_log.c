/*
 * email_log.c — the claim protocol of the email log (see email_log.h).
 *
 * States of one dedup key in the `emails` table:
 *
 *   (no row) ──claim──► sending ──sent──► sent          (final)
 *                        │   ▲
 *                  failed│   │claim (same Message-ID)
 *                        ▼   │
 *                       failed / pending
 *
 * A claim is ONE statement — an INSERT ... ON CONFLICT DO UPDATE whose WHERE
 * admits only a claimable row — so SQLite's write lock makes it atomic
 * across threads and processes: of two claimers, exactly one sees a changed
 * row. The loser learns whether the key is already sent (skip it) or held
 * by a live claim (try later).
 *
 * A claim ends when its owner settles it, when its lease runs out, or at
 * once when its owner is a process of this host that has exited (a worker
 * killed with -9 does not make the key wait for the lease). Taking over a
 * claim re-sends with the Message-ID recorded for the key, which is what
 * bounds the one remaining window: a message the relay accepted just before
 * its sender died is sent again, with the same Message-ID.
 *
 * A legacy system takes part through the same functions (`dunning email
 * claim` and `dunning email record`), with its own owner name; its claims
 * end by lease only.
 */
#include "email_log.h"

#include <errno.h>
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/types.h>
#include <unistd.h>

/* "<host>:<pid namespace inode>" of this process. */
static void host_ns(char *out, size_t out_size)
{
	char host[HOST_NAME_MAX + 1] = "";
	if (gethostname(host, sizeof host) != 0 || !host[0])
		snprintf(host, sizeof host, "localhost");
	host[sizeof host - 1] = '\0';
	for (char *p = host; *p; p++)
		if (*p == ':')
			*p = '_';
	char link[64] = "";
	ssize_t n = readlink("/proc/self/ns/pid", link, sizeof link - 1);
	unsigned long long ns = 0;
	if (n > 0) {
		link[n] = '\0';
		const char *open = strchr(link, '[');
		if (open)
			ns = strtoull(open + 1, NULL, 10);
	}
	snprintf(out, out_size, "%s:%llu", host, ns);
}

void dun_email_owner_self(char *out, size_t out_size)
{
	char hn[DUN_EMAIL_OWNER_MAX];
	host_ns(hn, sizeof hn);
	snprintf(out, out_size, "%s:%ld", hn, (long)getpid());
}

bool dun_email_owner_is_gone(const char *owner)
{
	const char *colon = strrchr(owner, ':');
	if (!colon || colon == owner)
		return false;
	char hn[DUN_EMAIL_OWNER_MAX];
	host_ns(hn, sizeof hn);
	size_t prefix = (size_t)(colon - owner);
	if (prefix != strlen(hn) || strncmp(owner, hn, prefix) != 0)
		return false;
	char *end;
	errno = 0;
	long pid = strtol(colon + 1, &end, 10);
	if (errno || *end || pid <= 0 || pid == (long)getpid())
		return false;
	return kill((pid_t)pid, 0) != 0 && errno == ESRCH;
}

static const char *s(const char *v)
{
	return v ? v : "";
}

struct row {
	bool found;
	char state[16];
	char owner[DUN_EMAIL_OWNER_MAX];
	int64_t claimed_at;
	char message_id[DUN_EMAIL_MESSAGE_ID_MAX];
};

static enum dun_err read_row(struct dun_db *db, const char *key, struct row *r)
{
	memset(r, 0, sizeof *r);
	struct dun_stmt *st = dun_db_stmt(
	    db, "SELECT state, claimed_by, claimed_at, message_id FROM emails WHERE key = ?1");
	dun_stmt_bind_text(st, 1, key);
	int rc = dun_stmt_step(st);
	if (rc == DUN_STEP_ROW) {
		r->found = true;
		dun_stmt_col_copy(st, 0, r->state, sizeof r->state);
		dun_stmt_col_copy(st, 1, r->owner, sizeof r->owner);
		r->claimed_at = dun_stmt_col_int64(st, 2);
		dun_stmt_col_copy(st, 3, r->message_id, sizeof r->message_id);
	}
	dun_stmt_reset(st);
	return rc == DUN_STEP_ROW || rc == DUN_STEP_DONE ? DUN_OK : dun_stmt_err(st);
}

enum dun_err dun_email_claim(struct dun_db *db, const struct dun_email_intent *in,
			     const char *owner, int64_t now, int64_t wall, int64_t lease_s,
			     struct dun_email_claim *out)
{
	memset(out, 0, sizeof *out);
	struct row r;
	enum dun_err e = read_row(db, in->key, &r);
	if (e != DUN_OK)
		return e;
	if (r.found && !strcmp(r.state, "sent")) {
		out->result = DUN_EMAIL_ALREADY_SENT;
		return DUN_OK;
	}
	/* A claim whose owner is gone may be taken now; compared in SQL, so a
	 * fresh claim by someone else in the meantime is not taken. */
	const char *gone = NULL;
	if (r.found && !strcmp(r.state, "sending") && r.owner[0] &&
	    dun_email_owner_is_gone(r.owner))
		gone = r.owner;
	struct dun_stmt *st = dun_db_stmt(
	    db, "INSERT INTO emails(key, account_id, kind, invoice_id, to_addr, subject, body,"
		" message_id, state, claimed_by, claimed_at, source, created_at)"
		" VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, 'sending', ?9, ?10, ?11, ?14)"
		" ON CONFLICT(key) DO UPDATE SET state = 'sending',"
		" claimed_by = excluded.claimed_by, claimed_at = excluded.claimed_at,"
		" to_addr = CASE WHEN excluded.to_addr <> '' THEN excluded.to_addr"
		"  ELSE emails.to_addr END,"
		" subject = CASE WHEN excluded.subject <> '' THEN excluded.subject"
		"  ELSE emails.subject END,"
		" body = CASE WHEN excluded.body <> '' THEN excluded.body ELSE emails.body END"
		" WHERE emails.state IN ('pending', 'failed', 'dead') OR (emails.state = 'sending'"
		"  AND (emails.claimed_at <= ?12 OR emails.claimed_by = ?13))");
	dun_stmt_bind_text(st, 1, in->key);
	dun_stmt_bind_text(st, 2, s(in->account_id));
	dun_stmt_bind_text(st, 3, s(in->kind));
	dun_stmt_bind_text(st, 4, s(in->invoice_id));
	dun_stmt_bind_text(st, 5, s(in->to));
	dun_stmt_bind_text(st, 6, s(in->subject));
	dun_stmt_bind_text(st, 7, s(in->body));
	dun_stmt_bind_text(st, 8, s(in->message_id));
	dun_stmt_bind_text(st, 9, owner);
	dun_stmt_bind_int64(st, 10, wall);
	dun_stmt_bind_text(st, 11, in->source && in->source[0] ? in->source : "engine");
	dun_stmt_bind_int64(st, 12, wall - (lease_s > 0 ? lease_s : DUN_EMAIL_LEASE_S_DEFAULT));
	dun_stmt_bind_text_copy(st, 13, gone);
	dun_stmt_bind_int64(st, 14, now);
	e = dun_stmt_done(st);
	if (e != DUN_OK)
		return e;
	bool won = dun_db_changes(db) > 0;
	e = read_row(db, in->key, &r);
	if (e != DUN_OK)
		return e;
	if (won) {
		out->result = DUN_EMAIL_CLAIMED;
		snprintf(out->message_id, sizeof out->message_id, "%s", r.message_id);
		return DUN_OK;
	}
	if (!strcmp(r.state, "sent")) {
		out->result = DUN_EMAIL_ALREADY_SENT;
		return DUN_OK;
	}
	out->result = DUN_EMAIL_BUSY;
	snprintf(out->owner, sizeof out->owner, "%s", r.owner);
	out->claimed_at = r.claimed_at;
	return DUN_OK;
}

enum dun_err dun_email_settle(struct dun_db *db, const char *key, const char *owner, bool sent,
			      const char *error, int64_t now)
{
	struct dun_stmt *st;
	if (sent) {
		st = dun_db_stmt(db, "UPDATE emails SET state = 'sent', attempts = attempts + 1,"
				     " last_error = '', sent_at = ?2, claimed_by = ''"
				     " WHERE key = ?1 AND state <> 'sent'");
		dun_stmt_bind_text(st, 1, key);
		dun_stmt_bind_int64(st, 2, now);
		return dun_stmt_done(st);
	}
	st = dun_db_stmt(db, "UPDATE emails SET state = 'failed', attempts = attempts + 1,"
			     " last_error = ?3, claimed_by = '' WHERE key = ?1"
			     " AND state = 'sending' AND claimed_by = ?2");
	dun_stmt_bind_text(st, 1, key);
	dun_stmt_bind_text(st, 2, owner);
	dun_stmt_bind_text(st, 3, s(error));
	return dun_stmt_done(st);
}

enum dun_err dun_email_record_sent(struct dun_db *db, const struct dun_email_intent *in,
				   int64_t now, bool *was_sent)
{
	struct row r;
	enum dun_err e = read_row(db, in->key, &r);
	if (e != DUN_OK)
		return e;
	*was_sent = r.found && !strcmp(r.state, "sent");
	if (*was_sent)
		return DUN_OK;
	struct dun_stmt *st = dun_db_stmt(
	    db, "INSERT INTO emails(key, account_id, kind, invoice_id, to_addr, subject, body,"
		" message_id, state, attempts, source, created_at, sent_at)"
		" VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, 'sent', 1, ?9, ?10, ?10)"
		" ON CONFLICT(key) DO UPDATE SET state = 'sent', attempts = emails.attempts + 1,"
		" last_error = '', claimed_by = '', sent_at = ?10 WHERE emails.state <> 'sent'");
	dun_stmt_bind_text(st, 1, in->key);
	dun_stmt_bind_text(st, 2, s(in->account_id));
	dun_stmt_bind_text(st, 3, s(in->kind));
	dun_stmt_bind_text(st, 4, s(in->invoice_id));
	dun_stmt_bind_text(st, 5, s(in->to));
	dun_stmt_bind_text(st, 6, s(in->subject));
	dun_stmt_bind_text(st, 7, s(in->body));
	dun_stmt_bind_text(st, 8, s(in->message_id));
	dun_stmt_bind_text(st, 9, in->source && in->source[0] ? in->source : "legacy");
	dun_stmt_bind_int64(st, 10, now);
	return dun_stmt_done(st);
}

enum dun_err dun_email_queue(struct dun_db *db, const struct dun_email_intent *in, int64_t now,
			     bool *already_sent)
{
	struct row r;
	enum dun_err e = read_row(db, in->key, &r);
	if (e != DUN_OK)
		return e;
	*already_sent = r.found && !strcmp(r.state, "sent");
	if (*already_sent)
		return DUN_OK;
	/* A new key is queued; a `failed` one (a legacy system gave it back, or
	 * an old engine failed it) is queued again with this rendering; a key
	 * someone is sending keeps its claim but gets the text it lacks, so a
	 * take-over after its claim ends can send it. Sent and dead stay. */
	struct dun_stmt *st = dun_db_stmt(
	    db, "INSERT INTO emails(key, account_id, kind, invoice_id, to_addr, subject, body,"
		" message_id, state, source, created_at, not_before, queued_at)"
		" VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, 'pending', ?9, ?10, 0, ?10)"
		" ON CONFLICT(key) DO UPDATE SET"
		" to_addr = CASE WHEN emails.state = 'failed' OR emails.body = ''"
		"  THEN excluded.to_addr ELSE emails.to_addr END,"
		" subject = CASE WHEN emails.state = 'failed' OR emails.body = ''"
		"  THEN excluded.subject ELSE emails.subject END,"
		" body = CASE WHEN emails.state = 'failed' OR emails.body = ''"
		"  THEN excluded.body ELSE emails.body END,"
		" not_before = CASE WHEN emails.state = 'failed' THEN 0 ELSE emails.not_before END,"
		" queued_at = CASE WHEN emails.state = 'failed' OR emails.queued_at = 0"
		"  THEN excluded.queued_at ELSE emails.queued_at END,"
		" state = CASE WHEN emails.state = 'failed' THEN 'pending' ELSE emails.state END"
		" WHERE emails.state IN ('pending', 'sending', 'failed')");
	dun_stmt_bind_text(st, 1, in->key);
	dun_stmt_bind_text(st, 2, s(in->account_id));
	dun_stmt_bind_text(st, 3, s(in->kind));
	dun_stmt_bind_text(st, 4, s(in->invoice_id));
	dun_stmt_bind_text(st, 5, s(in->to));
	dun_stmt_bind_text(st, 6, s(in->subject));
	dun_stmt_bind_text(st, 7, s(in->body));
	dun_stmt_bind_text(st, 8, s(in->message_id));
	dun_stmt_bind_text(st, 9, in->source && in->source[0] ? in->source : "engine");
	dun_stmt_bind_int64(st, 10, now);
	return dun_stmt_done(st);
}
