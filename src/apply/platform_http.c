/*
 * platform_http.c — the HTTP platform's side of the applier: queue, never call.
 *
 * At the seeds' company dunning called account management synchronously,
 * so a slow or dead account service stalled escalation. Here an operation
 * does two writes to the engine DB and no network I/O:
 *
 *   1. it inserts the call into platform_outbox under its idempotency key
 *      (the consequence key and the decision id), which the sender
 *      (outbox_sender.c) delivers later, in order per account;
 *   2. it sets the engine's view of the account in the `platform` table —
 *      the same table the local platform uses — to the desired value.
 *
 * The applier runs both inside the transaction that records the
 * consequence as applied (ops.in_engine_db), so the intent and the decision
 * commit together or not at all. "Queued" counts as applied: the next
 * recompute's GATHER reads the desired value from the platform table and
 * plans nothing more, whether or not the platform has received the call
 * yet. What is still on its way is in the outbox (`dunning outbox`, and
 * `dunning explain` under "platform_outbox").
 */
#include "platform_http.h"
#include "apply/local.h"
#include "util/clock.h"

#include <stdio.h>

static enum dun_err enqueue(struct dun_db *db, const char *account_id, const char *op,
			    const char *value, const char *idem_key, int64_t decision_id, char *err,
			    size_t err_size)
{
	struct dun_stmt *st = dun_db_stmt(
	    db, "INSERT INTO platform_outbox(account_id, op, value, idem_key, decision_id,"
		" created_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6) ON CONFLICT(idem_key) DO NOTHING");
	dun_stmt_bind_text(st, 1, account_id);
	dun_stmt_bind_text(st, 2, op);
	dun_stmt_bind_text(st, 3, value);
	dun_stmt_bind_text(st, 4, idem_key);
	dun_stmt_bind_int64(st, 5, decision_id);
	dun_stmt_bind_int64(st, 6, dun_clock_now());
	enum dun_err e = dun_stmt_done(st);
	if (e != DUN_OK)
		snprintf(err, err_size, "queueing %s for %s: %s", op, account_id,
			 dun_db_errmsg(db));
	return e;
}

static enum dun_err http_ban(void *self, const char *account_id, bool banned, const char *idem_key,
			     int64_t decision_id, char *err, size_t err_size)
{
	struct dun_db *db = self;
	enum dun_err e = enqueue(db, account_id, banned ? "ban" : "unban", "", idem_key,
				 decision_id, err, err_size);
	if (e != DUN_OK)
		return e;
	struct dun_platform view = dun_local_platform(db);
	return view.ops->ban(view.self, account_id, banned, idem_key, decision_id, err, err_size);
}

static enum dun_err http_set_entitlement(void *self, const char *account_id,
					 enum dun_entitlement level, const char *idem_key,
					 int64_t decision_id, char *err, size_t err_size)
{
	struct dun_db *db = self;
	enum dun_err e = enqueue(db, account_id, "set_entitlement", dun_entitlement_name(level),
				 idem_key, decision_id, err, err_size);
	if (e != DUN_OK)
		return e;
	struct dun_platform view = dun_local_platform(db);
	return view.ops->set_entitlement(view.self, account_id, level, idem_key, decision_id, err,
					 err_size);
}

static enum dun_err http_remove_flags(void *self, const char *account_id, const char *idem_key,
				      int64_t decision_id, char *err, size_t err_size)
{
	struct dun_db *db = self;
	enum dun_err e = enqueue(db, account_id, "remove_resource_flags", "", idem_key, decision_id,
				 err, err_size);
	if (e != DUN_OK)
		return e;
	struct dun_platform view = dun_local_platform(db);
	return view.ops->remove_resource_flags(view.self, account_id, idem_key, decision_id, err,
					       err_size);
}

static const struct dun_platform_ops http_platform_ops = {
    .name = "http",
    .in_engine_db = true,
    .ban = http_ban,
    .set_entitlement = http_set_entitlement,
    .remove_resource_flags = http_remove_flags,
};

struct dun_platform dun_http_platform(struct dun_db *db)
{
	struct dun_platform p = {.ops = &http_platform_ops, .self = db};
	return p;
}
