/*
 * outbox_sender.c — delivering platform_outbox rows (see outbox_sender.h).
 *
 * Design
 * ------
 * A row is an intent the applier committed together with its decision
 * (platform_http.c). The sender turns it into one HTTP call of the contract
 * in docs/platform-api.md and records what happened:
 *
 *   pending ──2xx / 409──► sent            (final)
 *      │  ▲
 *      │  └── 408/425/429/5xx, refused, timeout: attempts+1, not_before =
 *      │      now + backoff (capped exponential, jittered, or Retry-After)
 *      └──other 4xx──► dead                (final; `dunning outbox --requeue`)
 *
 * Ordering.  Only the OLDEST undelivered row of an account is eligible, so
 * calls reach the platform in the order the decisions were taken: a ban,
 * then the unban that undoes it, never the other way round. One account
 * waiting for its backoff holds back only that account.
 *
 * Claims.  Before a call the row's not_before is pushed past the call's
 * timeout in one UPDATE that only succeeds on a due row; a second sender
 * (another thread, `dunning outbox --deliver` next to `dunning serve`) then
 * finds it not due. A sender that dies mid-call leaves the claim to run out,
 * and the row is sent again with the same Idempotency-Key — the contract
 * obliges the platform to treat a repeated key as done.
 *
 * Unreachable platform.  A refused connection or a timeout ends the run
 * after that one row, so a dead platform costs one connection attempt per
 * run, not one per row; the rest stays due for the next run.
 */
#include "outbox_sender.h"
#include "core/model.h"
#include "util/log.h"
#include "util/mem.h"

#include <inttypes.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define BATCH 64

struct row {
	int64_t id;
	char account_id[DUN_ID_MAX];
	char op[32];
	char value[32];
	char idem_key[256];
	int64_t decision_id;
	int attempts;
	int64_t created_at;
};

static void percent_encode(const char *in, char *out, size_t out_size, bool *fits)
{
	static const char hex[] = "0123456789ABCDEF";
	size_t n = 0;
	*fits = true;
	for (const unsigned char *p = (const unsigned char *)in; *p; p++) {
		bool plain = (*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z') ||
			     (*p >= '0' && *p <= '9') || *p == '-' || *p == '_' || *p == '.' ||
			     *p == '~';
		size_t need = plain ? 1 : 3;
		if (n + need >= out_size) {
			*fits = false;
			break;
		}
		if (plain) {
			out[n++] = (char)*p;
		} else {
			out[n++] = '%';
			out[n++] = hex[*p >> 4];
			out[n++] = hex[*p & 15];
		}
	}
	out[n < out_size ? n : out_size - 1] = '\0';
}

enum dun_err dun_outbox_request_line(const char *base_url, const char *op, const char *account_id,
				     const char **method, char *url, size_t url_size)
{
	const char *path;
	if (!strcmp(op, "ban")) {
		*method = "POST";
		path = "ban";
	} else if (!strcmp(op, "unban")) {
		*method = "POST";
		path = "unban";
	} else if (!strcmp(op, "set_entitlement")) {
		*method = "PUT";
		path = "entitlement";
	} else if (!strcmp(op, "remove_resource_flags")) {
		*method = "POST";
		path = "resource-flags/remove";
	} else {
		return DUN_E_INVALID;
	}
	char id[3 * DUN_ID_MAX];
	bool fits;
	percent_encode(account_id, id, sizeof id, &fits);
	size_t base_len = strlen(base_url);
	while (base_len > 0 && base_url[base_len - 1] == '/')
		base_len--;
	int n = snprintf(url, url_size, "%.*s/accounts/%s/%s", (int)base_len, base_url, id, path);
	return fits && n >= 0 && (size_t)n < url_size ? DUN_OK : DUN_E_TOO_BIG;
}

/* The JSON body of a row: the same bytes on every attempt. */
static char *request_body(const struct row *r)
{
	json_t *o = json_pack("{s:s, s:s, s:I, s:s, s:I}", "account_id", r->account_id, "op", r->op,
			      "decision_id", (json_int_t)r->decision_id, "idempotency_key",
			      r->idem_key, "requested_at", (json_int_t)r->created_at);
	if (!strcmp(r->op, "set_entitlement"))
		json_object_set_new(o, "level", json_string(r->value));
	char *s = json_dumps(o, JSON_COMPACT | JSON_SORT_KEYS);
	json_decref(o);
	if (!s)
		dun_oom();
	return s;
}

static int select_due(struct dun_db *db, int64_t now, struct row *out, int max)
{
	struct dun_stmt *st =
	    dun_db_stmt(db, "SELECT o.id, o.account_id, o.op, o.value, o.idem_key, o.decision_id,"
			    " o.attempts, o.created_at FROM platform_outbox o"
			    " WHERE o.state = 'pending' AND o.not_before <= ?1"
			    " AND NOT EXISTS (SELECT 1 FROM platform_outbox p"
			    "  WHERE p.state = 'pending'"
			    "  AND p.account_id = o.account_id AND p.id < o.id)"
			    " ORDER BY o.id LIMIT ?2");
	dun_stmt_bind_int64(st, 1, now);
	dun_stmt_bind_int(st, 2, max);
	int n = 0;
	while (n < max && dun_stmt_row(st)) {
		struct row *r = &out[n++];
		r->id = dun_stmt_col_int64(st, 0);
		dun_stmt_col_copy(st, 1, r->account_id, sizeof r->account_id);
		dun_stmt_col_copy(st, 2, r->op, sizeof r->op);
		dun_stmt_col_copy(st, 3, r->value, sizeof r->value);
		dun_stmt_col_copy(st, 4, r->idem_key, sizeof r->idem_key);
		r->decision_id = dun_stmt_col_int64(st, 5);
		r->attempts = dun_stmt_col_int(st, 6);
		r->created_at = dun_stmt_col_int64(st, 7);
	}
	dun_stmt_reset(st);
	return n;
}

static enum dun_err claim(struct dun_db *db, int64_t id, int64_t now, int64_t lease_s, bool *won)
{
	struct dun_stmt *st = dun_db_stmt(db, "UPDATE platform_outbox SET not_before = ?3,"
					      " attempts = attempts + 1 WHERE id = ?1 AND"
					      " state = 'pending' AND not_before <= ?2");
	dun_stmt_bind_int64(st, 1, id);
	dun_stmt_bind_int64(st, 2, now);
	dun_stmt_bind_int64(st, 3, now + lease_s);
	enum dun_err e = dun_stmt_done(st);
	*won = e == DUN_OK && dun_db_changes(db) > 0;
	return e;
}

static enum dun_err settle(struct dun_db *db, const struct row *r, enum dun_outbox_verdict v,
			   const struct dun_http_reply *reply, int64_t now, int64_t delay_s)
{
	struct dun_stmt *st = dun_db_stmt(
	    db, "UPDATE platform_outbox SET state = ?2, last_status = ?3, last_error = ?4,"
		" not_before = ?5, sent_at = CASE WHEN ?2 = 'sent' THEN ?6 ELSE sent_at END"
		" WHERE id = ?1");
	dun_stmt_bind_int64(st, 1, r->id);
	dun_stmt_bind_text(st, 2, v == DUN_OUTBOX_RETRY ? "pending" : dun_outbox_verdict_name(v));
	dun_stmt_bind_int64(st, 3, reply->status);
	dun_stmt_bind_text(st, 4, reply->error);
	dun_stmt_bind_int64(st, 5, v == DUN_OUTBOX_RETRY ? now + delay_s : 0);
	dun_stmt_bind_int64(st, 6, now);
	return dun_stmt_done(st);
}

static enum dun_err count(struct dun_db *db, struct dun_outbox_stats *stats)
{
	struct dun_stmt *st = dun_db_stmt(
	    db,
	    "SELECT (SELECT COUNT(*) FROM platform_outbox WHERE state = 'pending'),"
	    " (SELECT COUNT(*) FROM platform_outbox WHERE state = 'dead'),"
	    " (SELECT COALESCE(MIN(created_at), 0) FROM platform_outbox WHERE state = 'pending')");
	int rc = dun_stmt_step(st);
	if (rc == DUN_STEP_ROW) {
		stats->pending = dun_stmt_col_int64(st, 0);
		stats->dead_total = dun_stmt_col_int64(st, 1);
		stats->oldest_pending_at = dun_stmt_col_int64(st, 2);
	}
	dun_stmt_reset(st);
	return rc == DUN_STEP_ROW ? DUN_OK : dun_stmt_err(st);
}

/* One call for row r; the verdict and the delay before a retry. */
static enum dun_outbox_verdict deliver(struct dun_http_client *client, const struct dun_config *cfg,
				       const struct row *r, struct dun_http_reply *reply,
				       int64_t *delay_s)
{
	const char *method;
	char url[DUN_CONFIG_STR + 3 * DUN_ID_MAX + 64];
	*delay_s = 0;
	if (dun_outbox_request_line(cfg->platform_base_url, r->op, r->account_id, &method, url,
				    sizeof url) != DUN_OK) {
		memset(reply, 0, sizeof *reply);
		reply->outcome = DUN_HTTP_TRANSPORT;
		snprintf(reply->error, sizeof reply->error, "cannot build the request for op %s",
			 r->op);
		return DUN_OUTBOX_DEAD;
	}
	char *body = request_body(r);
	char auth[300], idem[300];
	snprintf(idem, sizeof idem, "Idempotency-Key: %s", r->idem_key);
	const char *headers[4] = {"Content-Type: application/json", "Accept: application/json",
				  idem, NULL};
	int n_headers = 3;
	if (cfg->platform_token[0]) {
		snprintf(auth, sizeof auth, "Authorization: Bearer %s", cfg->platform_token);
		headers[n_headers++] = auth;
	}
	dun_http_client_send(client, method, url, headers, n_headers, body, strlen(body), reply);
	free(body);
	enum dun_outbox_verdict v = dun_outbox_classify_platform(reply);
	if (v == DUN_OUTBOX_RETRY)
		*delay_s = dun_outbox_retry_delay_s(
		    reply, r->attempts + 1, DUN_OUTBOX_BACKOFF_BASE_S, DUN_OUTBOX_BACKOFF_MAX_S,
		    (uint64_t)r->id * 0x9e3779b97f4a7c15ULL + (uint64_t)r->attempts);
	return v;
}

static void log_result(const struct row *r, enum dun_outbox_verdict v,
		       const struct dun_http_reply *reply, int64_t delay_s)
{
	char id[24], status[16], attempts[16], delay[24];
	snprintf(id, sizeof id, "%" PRId64, r->id);
	snprintf(status, sizeof status, "%ld", reply->status);
	snprintf(attempts, sizeof attempts, "%d", r->attempts + 1);
	snprintf(delay, sizeof delay, "%" PRId64, delay_s);
	switch (v) {
	case DUN_OUTBOX_SENT:
		dun_log(DUN_LOG_INFO, "platform.sent", "account", r->account_id, "op", r->op,
			"outbox_id", id, "status", status, "attempts", attempts, NULL);
		break;
	case DUN_OUTBOX_RETRY:
		dun_log(DUN_LOG_WARN, "platform.retry", "account", r->account_id, "op", r->op,
			"outbox_id", id, "status", status, "attempts", attempts, "retry_in_s",
			delay, "error", reply->error, NULL);
		break;
	case DUN_OUTBOX_DEAD:
		dun_log(DUN_LOG_ERROR, "platform.dead", "account", r->account_id, "op", r->op,
			"outbox_id", id, "status", status, "attempts", attempts, "error",
			reply->error, NULL);
		break;
	}
}

enum dun_err dun_outbox_sender_run_once(struct dun_db *db, const struct dun_config *cfg,
					int64_t now, struct dun_outbox_stats *stats)
{
	memset(stats, 0, sizeof *stats);
	if (strcmp(cfg->platform_kind, "http") != 0 || !cfg->platform_base_url[0])
		return count(db, stats);
	struct row rows[BATCH];
	int64_t lease_s = cfg->platform_timeout_ms / 1000 + 30;
	struct dun_http_client *client = dun_http_client_new((long)cfg->platform_timeout_ms);
	enum dun_err e = DUN_OK;
	while (e == DUN_OK && !stats->stopped_early) {
		if (stats->attempted >= DUN_OUTBOX_RUN_MAX) {
			stats->more = true;
			break;
		}
		int n = select_due(db, now, rows, BATCH);
		if (n == 0)
			break;
		bool progress = false;
		for (int i = 0; i < n && e == DUN_OK; i++) {
			bool won = false;
			e = claim(db, rows[i].id, now, lease_s, &won);
			if (e != DUN_OK || !won)
				continue;
			struct dun_http_reply reply;
			int64_t delay_s;
			enum dun_outbox_verdict v =
			    deliver(client, cfg, &rows[i], &reply, &delay_s);
			e = settle(db, &rows[i], v, &reply, now, delay_s);
			log_result(&rows[i], v, &reply, delay_s);
			stats->attempted++;
			switch (v) {
			case DUN_OUTBOX_SENT:
				stats->sent++;
				progress = true;
				break;
			case DUN_OUTBOX_RETRY:
				stats->retried++;
				break;
			case DUN_OUTBOX_DEAD:
				stats->dead++;
				progress = true;
				break;
			}
			if (reply.outcome == DUN_HTTP_CONNECT ||
			    reply.outcome == DUN_HTTP_TIMEOUT) {
				stats->stopped_early = true;
				break;
			}
		}
		/* Rows that failed wait for their backoff; only a delivered row
		 * makes the next row of its account eligible. */
		if (!progress)
			break;
	}
	dun_http_client_destroy(client);
	if (e != DUN_OK)
		return e;
	return count(db, stats);
}

enum dun_err dun_outbox_requeue_dead(struct dun_db *db, int64_t id, int64_t now, int *n_out)
{
	/* A dead row whose effect a later, delivered row of the same kind has
	 * overtaken (a dead ban after a delivered unban) stays dead: sending it
	 * now would reach the platform out of order. */
	struct dun_stmt *st =
	    dun_db_stmt(db, "UPDATE platform_outbox AS o SET state = 'pending', not_before = ?2,"
			    " last_error = 'requeued after: ' || last_error"
			    " WHERE o.state = 'dead' AND (?1 = 0 OR o.id = ?1) AND NOT EXISTS"
			    " (SELECT 1 FROM platform_outbox l WHERE l.account_id = o.account_id"
			    "  AND l.id > o.id AND l.state = 'sent'"
			    "  AND (CASE l.op WHEN 'unban' THEN 'ban' ELSE l.op END)"
			    "   = (CASE o.op WHEN 'unban' THEN 'ban' ELSE o.op END))");
	dun_stmt_bind_int64(st, 1, id);
	dun_stmt_bind_int64(st, 2, now);
	enum dun_err e = dun_stmt_done(st);
	if (n_out)
		*n_out = dun_db_changes(db);
	return e;
}
