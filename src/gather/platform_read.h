/*
 * platform_read.h — GATHER's read of the user's platform (see
 * platform_read.c, platform_view.h and docs/platform-api.md).
 *
 * With the embedded local platform the platform is two tables of the
 * engine DB: `platform` (the non-payment restriction and the resource
 * flags) and `platform_restrictions` (restrictions for other reasons).
 * With an HTTP platform it is asked GET {base_url}/accounts/{id} for every
 * recompute, and POST {base_url}/accounts/read for a batch of accounts by
 * the drift scan; the calls still pending in the outbox are applied on top
 * of its answer, so a call on its way is neither drift nor planned again.
 */
#ifndef DUN_PLATFORM_READ_H
#define DUN_PLATFORM_READ_H

#include "gather/gather.h"
#include "gather/platform_view.h"
#include "store/db.h"

/* How to reach an HTTP platform's read calls (read-only once set up). */
struct dun_platform_reader {
	char base_url[512];
	char token[256];
	long budget_ms; /* one read, connection included */
	int batch;	/* accounts per batch read */
};

/* One engine's connection to the platform (not shared between threads). */
struct dun_platform_conn;

struct dun_platform_conn *dun_platform_conn_new(const struct dun_platform_reader *r);
void dun_platform_conn_free(struct dun_platform_conn *c);
/* Requests made so far (single and batch reads). */
int64_t dun_platform_conn_requests(const struct dun_platform_conn *c);

/*
 * Start reading account_id: the request goes out now and runs while the
 * caller reads the engine's own tables. Pair with dun_platform_read_end().
 */
void dun_platform_read_begin(struct dun_platform_conn *c, const char *account_id);

/*
 * Wait for the answer (within the reader's budget), decode it, apply the
 * account's pending outbox calls on top, and set snap's platform part
 * (state.banned, entitlement, has_resource_flags and snap->platform).
 * DUN_E_PLATFORM when the platform could not be read (no answer in time,
 * an answer other than 200, a malformed body): err says why, and snap's
 * platform part must not be decided on.
 */
enum dun_err dun_platform_read_end(struct dun_platform_conn *c, struct dun_db *db,
				   struct dun_snapshot *snap, char *err, size_t err_size);

/*
 * The local platform: fill snap->platform from what dun_gather() read of
 * the `platform` table into snap (the state, who placed it, the raw flags),
 * and the restrictions of other reasons from platform_restrictions. snap
 * must come from dun_gather() in the same transaction.
 */
enum dun_err dun_platform_read_local(struct dun_db *db, struct dun_snapshot *snap);

/*
 * The drift scan's read: ids[0..n) (n at most the reader's batch) in one
 * request, out[i] for ids[i], with the pending outbox calls applied.
 * DUN_E_PLATFORM as above.
 */
enum dun_err dun_platform_read_batch(struct dun_platform_conn *c, struct dun_db *db,
				     const char *const *ids, int n, struct dun_platform_view *out,
				     char *err, size_t err_size);

/* Restrictions of other reasons of the local platform, for the scan. */
enum dun_err dun_platform_read_local_kept(struct dun_db *db, struct dun_platform_view *v);

/* Set snap's state and snap->platform from v. */
void dun_platform_view_to_snapshot(const struct dun_platform_view *v, struct dun_snapshot *snap);

#endif
