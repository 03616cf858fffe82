/*
 * events_sender.c — posting payment-outcome events (see events_sender.h).
 *
 * Design
 * ------
 * outcome_events holds one row per event, written by the applier with its
 * final payload; outcome_deliveries holds one row per (event, endpoint),
 * created here: each run first queues, for every configured endpoint, the
 * events it has no delivery of: those not yet delivered everywhere
 * (delivered_at = 0), and those above the highest one it has (an endpoint
 * added later gets the history). "Above the highest" alone is not enough:
 * recomputes of several processes commit side by side on PostgreSQL, so
 * ids do not commit in order, and an event can appear below one already
 * queued. A delivery moves like a platform outbox row:
 *
 *   pending ──2xx──► sent                   (final)
 *      │ ▲
 *      │ └── anything else: attempts+1, not_before = now + backoff
 *      └──410 Gone, or DUN_EVENTS_MAX_ATTEMPTS reached──► dead (requeue by hand)
 *
 * At least once: a delivery is marked sent only after a 2xx, so a crash
 * between the receiver's 2xx and our record posts it again; the payload's
 * stable id (and the Dunning-Event-Id header) lets the receiver drop it.
 *
 * Order: per endpoint, only the oldest pending delivery of an account is
 * eligible, so one account's events arrive in the order they happened.
 *
 * Signing: the header is `Dunning-Signature: t=<now>,v1=<hex>` with v1 the
 * HMAC-SHA256 of "<t>.<body>" under [events] secret — exactly Stripe's
 * scheme (dun_signature_header), so a Stripe verifier checks it. It is made
 * fresh for every attempt; the body bytes are the same every time.
 */
#include "events_sender.h"
#include "server/signature.h"
#include "core/model.h"
#include "util/log.h"
#include "util/mem.h"

#include <inttypes.h>
#include <jansson.h>
#include <openssl/evp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define BATCH 64

void dun_event_id(const char *key, char out[DUN_EVENT_ID_SIZE])
{
	unsigned char md[EVP_MAX_MD_SIZE];
	unsigned int md_len = 0;
	if (!EVP_Digest(key, strlen(key), md, &md_len, EVP_sha256(), NULL) || md_len < 16)
		dun_oom();
	static const char hex[] = "0123456789abcdef";
	memcpy(out, "evt_", 4);
	for (int i = 0; i < 16; i++) {
		out[4 + 2 * i] = hex[md[i] >> 4];
		out[5 + 2 * i] = hex[md[i] & 15];
	}
	out[36] = '\0';
}

struct delivery {
	int64_t event_id;
	char account_id[DUN_ID_MAX];
	int attempts;
	char *payload; /* heap */
};

/*
 * Queue for endpoint what it has no delivery of: every event not yet
 * delivered everywhere (this finds an event whose transaction committed
 * after a higher id was queued), and every event above the highest one it
 * has (this gives an endpoint added later the history).
 */
static enum dun_err queue_new(struct dun_db *db, const char *endpoint, int64_t now, int64_t *n)
{
	static const char *const sql[] = {
	    "INSERT INTO outcome_deliveries(event_id, endpoint, account_id, created_at)"
	    " SELECT e.id, ?1, e.account_id, ?2 FROM outcome_events e WHERE e.delivered_at = 0"
	    " AND NOT EXISTS (SELECT 1 FROM outcome_deliveries d WHERE d.event_id = e.id"
	    "  AND d.endpoint = ?1) ORDER BY e.id ON CONFLICT DO NOTHING",
	    "INSERT INTO outcome_deliveries(event_id, endpoint, account_id, created_at)"
	    " SELECT e.id, ?1, e.account_id, ?2 FROM outcome_events e"
	    " WHERE e.id > COALESCE((SELECT MAX(event_id) FROM outcome_deliveries"
	    "  WHERE endpoint = ?1), 0) ORDER BY e.id ON CONFLICT DO NOTHING",
	};
	for (size_t i = 0; i < sizeof sql / sizeof sql[0]; i++) {
		struct dun_stmt *st = dun_db_stmt(db, sql[i]);
		dun_stmt_bind_text(st, 1, endpoint);
		dun_stmt_bind_int64(st, 2, now);
		enum dun_err e = dun_stmt_done(st);
		if (e != DUN_OK)
			return e;
		*n += dun_db_changes(db);
	}
	return DUN_OK;
}

static int select_due(struct dun_db *db, const char *endpoint, int64_t now, struct delivery *out,
		      int max)
{
	struct dun_stmt *st = dun_db_stmt(
	    db, "SELECT d.event_id, d.account_id, d.attempts, e.payload"
		" FROM outcome_deliveries d JOIN outcome_events e ON e.id = d.event_id"
		" WHERE d.endpoint = ?1 AND d.state = 'pending' AND d.not_before <= ?2"
		" AND NOT EXISTS (SELECT 1 FROM outcome_deliveries p WHERE p.endpoint = ?1"
		"  AND p.account_id = d.account_id AND p.state = 'pending'"
		"  AND p.event_id < d.event_id)"
		" ORDER BY d.event_id LIMIT ?3");
	dun_stmt_bind_text(st, 1, endpoint);
	dun_stmt_bind_int64(st, 2, now);
	dun_stmt_bind_int(st, 3, max);
	int n = 0;
	while (n < max && dun_stmt_row(st)) {
		struct delivery *d = &out[n++];
		d->event_id = dun_stmt_col_int64(st, 0);
		dun_stmt_col_copy(st, 1, d->account_id, sizeof d->account_id);
		d->attempts = dun_stmt_col_int(st, 2);
		const char *p = dun_stmt_col_text(st, 3);
		d->payload = dun_strdup(p ? p : "{}");
	}
	dun_stmt_reset(st);
	return n;
}

static enum dun_err claim(struct dun_db *db, const char *endpoint, int64_t event_id, int64_t now,
			  int64_t lease_s, bool *won)
{
	struct dun_stmt *st = dun_db_stmt(
	    db,
	    "UPDATE outcome_deliveries SET not_before = ?4, attempts = attempts + 1"
	    " WHERE event_id = ?1 AND endpoint = ?2 AND state = 'pending' AND not_before <= ?3");
	dun_stmt_bind_int64(st, 1, event_id);
	dun_stmt_bind_text(st, 2, endpoint);
	dun_stmt_bind_int64(st, 3, now);
	dun_stmt_bind_int64(st, 4, now + lease_s);
	enum dun_err e = dun_stmt_done(st);
	*won = e == DUN_OK && dun_db_changes(db) > 0;
	return e;
}

static enum dun_err settle(struct dun_db *db, int n_endpoints, const char *endpoint,
			   const struct delivery *d, enum dun_outbox_verdict v,
			   const struct dun_http_reply *reply, int64_t now, int64_t delay_s)
{
	struct dun_stmt *st = dun_db_stmt(
	    db, "UPDATE outcome_deliveries SET state = ?3, last_status = ?4, last_error = ?5,"
		" not_before = ?6, sent_at = CASE WHEN ?3 = 'sent' THEN ?7 ELSE sent_at END"
		" WHERE event_id = ?1 AND endpoint = ?2");
	dun_stmt_bind_int64(st, 1, d->event_id);
	dun_stmt_bind_text(st, 2, endpoint);
	dun_stmt_bind_text(st, 3, v == DUN_OUTBOX_RETRY ? "pending" : dun_outbox_verdict_name(v));
	dun_stmt_bind_int64(st, 4, reply->status);
	dun_stmt_bind_text(st, 5, reply->error);
	dun_stmt_bind_int64(st, 6, v == DUN_OUTBOX_RETRY ? now + delay_s : 0);
	dun_stmt_bind_int64(st, 7, now);
	enum dun_err e = dun_stmt_done(st);
	if (e != DUN_OK || v != DUN_OUTBOX_SENT)
		return e;
	/*
	 * The event is delivered once every endpoint got it: as many sent
	 * deliveries as endpoints are configured (another replica may not have
	 * queued it for every endpoint yet), and none still open.
	 */
	st = dun_db_stmt(
	    db, "UPDATE outcome_events SET delivered_at = ?2 WHERE id = ?1"
		" AND delivered_at = 0 AND NOT EXISTS (SELECT 1 FROM"
		" outcome_deliveries WHERE event_id = ?1 AND state <> 'sent')"
		" AND (SELECT COUNT(*) FROM outcome_deliveries WHERE event_id = ?1) >= ?3");
	dun_stmt_bind_int64(st, 1, d->event_id);
	dun_stmt_bind_int64(st, 2, now);
	dun_stmt_bind_int(st, 3, n_endpoints);
	return dun_stmt_done(st);
}

static enum dun_outbox_verdict post(struct dun_http_client *client, const struct dun_config *cfg,
				    const char *endpoint, const struct delivery *d, int64_t now,
				    struct dun_http_reply *reply, int64_t *delay_s)
{
	*delay_s = 0;
	size_t len = strlen(d->payload);
	char sig[DUN_SIGNATURE_HEADER_SIZE];
	enum dun_err e = dun_signature_header(
	    cfg->event_secret, now, (const unsigned char *)d->payload, len, sig, sizeof sig);
	if (e != DUN_OK) {
		memset(reply, 0, sizeof *reply);
		reply->outcome = DUN_HTTP_TRANSPORT;
		snprintf(reply->error, sizeof reply->error, "cannot sign the event: %s",
			 dun_err_str(e));
		return DUN_OUTBOX_RETRY;
	}
	char sig_header[DUN_SIGNATURE_HEADER_SIZE + 32], id_header[DUN_EVENT_ID_SIZE + 32];
	snprintf(sig_header, sizeof sig_header, DUN_EVENTS_SIGNATURE_HEADER ": %s", sig);
	json_t *o = json_loads(d->payload, 0, NULL);
	const char *id = o ? json_string_value(json_object_get(o, "id")) : NULL;
	snprintf(id_header, sizeof id_header, "Dunning-Event-Id: %s", id ? id : "");
	json_decref(o);
	const char *headers[] = {"Content-Type: application/json", sig_header, id_header};
	dun_http_client_send(client, "POST", endpoint, headers, 3, d->payload, len, reply);
	enum dun_outbox_verdict v = dun_outbox_classify_event(reply, d->attempts + 1);
	if (v == DUN_OUTBOX_RETRY)
		*delay_s = dun_outbox_retry_delay_s(
		    reply, d->attempts + 1, DUN_EVENTS_BACKOFF_BASE_S, DUN_EVENTS_BACKOFF_MAX_S,
		    (uint64_t)d->event_id * 0x9e3779b97f4a7c15ULL + (uint64_t)d->attempts);
	return v;
}

static void log_result(const char *endpoint, const struct delivery *d, enum dun_outbox_verdict v,
		       const struct dun_http_reply *reply, int64_t delay_s)
{
	char id[24], status[16], attempts[16], delay[24], where[160];
	snprintf(id, sizeof id, "%" PRId64, d->event_id);
	snprintf(status, sizeof status, "%ld", reply->status);
	snprintf(attempts, sizeof attempts, "%d", d->attempts + 1);
	snprintf(delay, sizeof delay, "%" PRId64, delay_s);
	snprintf(where, sizeof where, "%.*s", (int)strcspn(endpoint, "?#"), endpoint);
	switch (v) {
	case DUN_OUTBOX_SENT:
		dun_log(DUN_LOG_INFO, "event.sent", "account", d->account_id, "event_row", id,
			"endpoint", where, "status", status, "attempts", attempts, NULL);
		break;
	case DUN_OUTBOX_RETRY:
		dun_log(DUN_LOG_WARN, "event.retry", "account", d->account_id, "event_row", id,
			"endpoint", where, "status", status, "attempts", attempts, "retry_in_s",
			delay, "error", reply->error, NULL);
		break;
	case DUN_OUTBOX_DEAD:
		dun_log(DUN_LOG_ERROR, "event.dead", "account", d->account_id, "event_row", id,
			"endpoint", where, "status", status, "attempts", attempts, "error",
			reply->error, NULL);
		break;
	}
}

/* Deliver what is due to one endpoint. */
static enum dun_err run_endpoint(struct dun_db *db, const struct dun_config *cfg,
				 struct dun_http_client *client, const char *endpoint, int64_t now,
				 struct dun_events_stats *stats)
{
	struct delivery ds[BATCH];
	int64_t lease_s = cfg->event_timeout_ms / 1000 + 30;
	enum dun_err e = DUN_OK;
	for (;;) {
		if (stats->attempted >= DUN_EVENTS_RUN_MAX) {
			stats->more = true;
			break;
		}
		int n = select_due(db, endpoint, now, ds, BATCH);
		if (n == 0)
			break;
		bool progress = false, unreachable = false;
		for (int i = 0; i < n; i++) {
			bool won = false;
			if (e == DUN_OK && !unreachable)
				e = claim(db, endpoint, ds[i].event_id, now, lease_s, &won);
			if (won) {
				struct dun_http_reply reply;
				int64_t delay_s;
				enum dun_outbox_verdict v =
				    post(client, cfg, endpoint, &ds[i], now, &reply, &delay_s);
				e = settle(db, cfg->n_event_endpoints, endpoint, &ds[i], v, &reply,
					   now, delay_s);
				log_result(endpoint, &ds[i], v, &reply, delay_s);
				stats->attempted++;
				stats->sent += v == DUN_OUTBOX_SENT;
				stats->retried += v == DUN_OUTBOX_RETRY;
				stats->dead += v == DUN_OUTBOX_DEAD;
				progress |= v != DUN_OUTBOX_RETRY;
				unreachable = reply.outcome == DUN_HTTP_CONNECT ||
					      reply.outcome == DUN_HTTP_TIMEOUT;
			}
			free(ds[i].payload);
		}
		if (unreachable)
			stats->stopped_early = true;
		if (e != DUN_OK || unreachable || !progress)
			break;
	}
	return e;
}

static enum dun_err count(struct dun_db *db, struct dun_events_stats *stats)
{
	struct dun_stmt *st = dun_db_stmt(
	    db, "SELECT (SELECT COUNT(*) FROM outcome_deliveries WHERE state = 'pending'),"
		" (SELECT COUNT(*) FROM outcome_deliveries WHERE state = 'dead'),"
		" (SELECT COALESCE(MIN(created_at), 0) FROM outcome_deliveries WHERE state = "
		"'pending')");
	int rc = dun_stmt_step(st);
	if (rc == DUN_STEP_ROW) {
		stats->pending = dun_stmt_col_int64(st, 0);
		stats->dead_total = dun_stmt_col_int64(st, 1);
		stats->oldest_pending_at = dun_stmt_col_int64(st, 2);
	}
	dun_stmt_reset(st);
	return rc == DUN_STEP_ROW ? DUN_OK : dun_stmt_err(st);
}

enum dun_err dun_events_sender_run_once(struct dun_db *db, const struct dun_config *cfg,
					int64_t now, struct dun_events_stats *stats)
{
	memset(stats, 0, sizeof *stats);
	if (cfg->n_event_endpoints == 0)
		return count(db, stats);
	if (!cfg->event_secret[0]) {
		dun_log(DUN_LOG_ERROR, "event.config", "error",
			"[events] endpoints are set but no secret: nothing is sent", NULL);
		return DUN_E_CONFIG;
	}
	enum dun_err e = DUN_OK;
	for (int i = 0; i < cfg->n_event_endpoints && e == DUN_OK; i++)
		e = queue_new(db, cfg->event_endpoints[i], now, &stats->queued);
	struct dun_http_client *client = dun_http_client_new((long)cfg->event_timeout_ms);
	for (int i = 0; i < cfg->n_event_endpoints && e == DUN_OK; i++)
		e = run_endpoint(db, cfg, client, cfg->event_endpoints[i], now, stats);
	dun_http_client_destroy(client);
	if (e != DUN_OK)
		return e;
	return count(db, stats);
}

enum dun_err dun_events_requeue_dead(struct dun_db *db, int64_t event_id, int64_t now, int *n_out)
{
	struct dun_stmt *st =
	    dun_db_stmt(db, "UPDATE outcome_deliveries SET state = 'pending',"
			    " not_before = ?2, attempts = 0, last_error ="
			    " 'requeued after: ' || last_error"
			    " WHERE state = 'dead' AND (?1 = 0 OR event_id = ?1)");
	dun_stmt_bind_int64(st, 1, event_id);
	dun_stmt_bind_int64(st, 2, now);
	enum dun_err e = dun_stmt_done(st);
	if (n_out)
		*n_out = dun_db_changes(db);
	return e;
}
