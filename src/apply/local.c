/*
 * local.c — the built-in platform and mailer of the embedded default.
 *
 * The local platform is the `platform` table of the engine DB: its row is
 * the account's restriction for non-payment (dunning's own reason, see
 * migration 9), so ban, unban and set_entitlement change that row only and
 * record dunning as who placed it; restrictions for other reasons, in
 * platform_restrictions, are never touched. The local
 * mailer delivers nothing: the email log (the `emails` table, where the
 * applier has already recorded the rendered message) is the outbox a person
 * reads with `dunning emails`. Both live behind the same seams as the HTTP
 * platform and SMTP, so switching is configuration.
 */
#include "local.h"
#include "util/clock.h"

static enum dun_err local_ban(void *self, const char *account_id, bool banned, const char *idem_key,
			      int64_t decision_id, char *err, size_t err_size)
{
	struct dun_db *db = self;
	struct dun_stmt *st =
	    dun_db_stmt(db, "INSERT INTO platform(account_id, banned, updated_at, placed_by)"
			    " VALUES (?1, ?2, ?3, 'dunning') ON CONFLICT(account_id) DO UPDATE SET"
			    " banned = excluded.banned, updated_at = excluded.updated_at,"
			    " placed_by = excluded.placed_by");
	dun_stmt_bind_text(st, 1, account_id);
	dun_stmt_bind_int(st, 2, banned);
	dun_stmt_bind_int64(st, 3, dun_clock_now());
	return dun_stmt_done(st);
}

static enum dun_err local_set_entitlement(void *self, const char *account_id,
					  enum dun_entitlement level, const char *idem_key,
					  int64_t decision_id, char *err, size_t err_size)
{
	struct dun_db *db = self;
	struct dun_stmt *st =
	    dun_db_stmt(db, "INSERT INTO platform(account_id, entitlement, updated_at, placed_by)"
			    " VALUES (?1, ?2, ?3, 'dunning') ON CONFLICT(account_id) DO UPDATE SET"
			    " entitlement = excluded.entitlement, updated_at = excluded.updated_at,"
			    " placed_by = excluded.placed_by");
	dun_stmt_bind_text(st, 1, account_id);
	dun_stmt_bind_text(st, 2, dun_entitlement_name(level));
	dun_stmt_bind_int64(st, 3, dun_clock_now());
	return dun_stmt_done(st);
}

static enum dun_err local_remove_flags(void *self, const char *account_id, const char *idem_key,
				       int64_t decision_id, char *err, size_t err_size)
{
	struct dun_db *db = self;
	struct dun_stmt *st =
	    dun_db_stmt(db, "UPDATE platform SET resource_flags = 0, updated_at = ?2"
			    " WHERE account_id = ?1");
	dun_stmt_bind_text(st, 1, account_id);
	dun_stmt_bind_int64(st, 2, dun_clock_now());
	return dun_stmt_done(st);
}

static const struct dun_platform_ops local_platform_ops = {
    .name = "local",
    .in_engine_db = true,
    .ban = local_ban,
    .set_entitlement = local_set_entitlement,
    .remove_resource_flags = local_remove_flags,
};

struct dun_platform dun_local_platform(struct dun_db *db)
{
	struct dun_platform p = {.ops = &local_platform_ops, .self = db};
	return p;
}

static enum dun_err log_send(void *self, const struct dun_email_msg *msg, char *err,
			     size_t err_size)
{
	(void)self;
	(void)msg;
	return DUN_OK;
}

static const struct dun_mailer_ops log_mailer_ops = {
    .name = "log",
    .send = log_send,
};

struct dun_mailer dun_log_mailer(void)
{
	struct dun_mailer m = {.ops = &log_mailer_ops, .self = NULL};
	return m;
}
