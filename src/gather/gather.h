/*
 * gather.h — GATHER: read every store for one account into one snapshot.
 *
 * All reads of the pipeline happen here. The snapshot owns the arrays the
 * pure core's struct dun_state points into; it is reused across accounts
 * (the drift scan gathers millions) so its buffers only grow.
 */
#ifndef DUN_GATHER_H
#define DUN_GATHER_H

#include "core/model.h"
#include "gather/platform_view.h"
#include "store/db.h"

struct dun_snapshot {
	struct dun_state state;
	struct dun_invoice *invoices;
	int invoices_cap;
	struct dun_attempt *attempts;
	int attempts_cap;
	struct dun_subscription *subs;
	int subs_cap;
	struct dun_sent_email *emails;
	int emails_cap;
	/* display-only facts for explain and emails */
	char email[256];
	char name[256];
	/* the platform as GATHER read it: dunning's part is also in state;
	 * the restrictions of other reasons are here only (shown, kept) */
	struct dun_platform_view platform;
	/* the local `platform` row as dun_gather() read it ("" and 0 without
	 * one), for dun_platform_read_local(): the table is read once */
	char local_placed_by[DUN_REASON_MAX];
	int64_t local_resource_flags;
	/* the account's rollout list row: "allow", "deny" or "" (none), for
	 * dun_rollout_mode_of(): read with the account, in the same statement */
	char rollout_list[16];
	/* whether the account has an incomplete_accounts row (a pass before
	 * could not read every store): a complete pass removes it */
	bool incomplete_marked;
};

void dun_snapshot_init(struct dun_snapshot *snap);
void dun_snapshot_free(struct dun_snapshot *snap);

/*
 * Fill snap for account_id from db. DUN_E_NOT_FOUND when the account does
 * not exist. snap->state is valid until the next gather into snap.
 */
enum dun_err dun_gather(struct dun_db *db, const char *account_id, struct dun_snapshot *snap);

/*
 * Mark inv consolidated and fill its covers from list, the comma-separated
 * metadata bad_debt_invoices (borrowed); ids past DUN_COVERS_MAX, and ids
 * that do not fit DUN_ID_MAX, are dropped. Shared with the streaming GATHER
 * (stream.h) so both read the list the same way.
 */
void dun_gather_split_covers(struct dun_invoice *inv, const char *list);

#endif
