/*
 * outbox_sender.h — EXECUTE: delivering the platform outbox.
 *
 * The applier queues platform calls (platform_http.c); this sender delivers
 * them to the user's platform over the HTTP contract of
 * docs/platform-api.md. It runs inside `dunning serve` (a thread, see
 * senders.h) and from `dunning outbox --deliver`; several senders at once
 * are safe. Recomputes never wait for it.
 */
#ifndef DUN_OUTBOX_SENDER_H
#define DUN_OUTBOX_SENDER_H

#include <stdbool.h>
#include <stdint.h>

#include "apply/outbox.h"
#include "config/config.h"
#include "store/db.h"

#define DUN_OUTBOX_BACKOFF_BASE_S 1    /* first retry after 0.5–1 s */
#define DUN_OUTBOX_BACKOFF_MAX_S  300  /* never more than 5 minutes apart */
#define DUN_OUTBOX_RUN_MAX	  1000 /* calls per run at most */

struct dun_outbox_stats {
	/* this run */
	int64_t attempted;
	int64_t sent;
	int64_t retried;
	int64_t dead;
	bool stopped_early; /* the platform did not answer: the rest waits for the next run */
	bool more;	    /* DUN_OUTBOX_RUN_MAX was reached: call again */
	/* the outbox after the run */
	int64_t pending;
	int64_t dead_total;
	int64_t oldest_pending_at; /* created_at of the oldest pending row, 0 if none */
};

/*
 * Deliver what is due at now. Rows go out in id order per account, and a
 * row is never sent while an earlier row of its account is undelivered (an
 * unban never overtakes its ban); a dead row does not hold back the rows
 * after it. Each call is claimed first (its not_before moves past the call's
 * timeout), so concurrent senders never send one row at the same time, and
 * a sender that dies mid-call leaves a row that is sent again — with the
 * same Idempotency-Key — once the claim runs out. A failure below HTTP
 * (refused, timeout) ends the run: the platform is not hammered once per row.
 *
 * With [platform] kind other than http the run sends nothing (rows queued
 * before a switch wait until http is configured again) and only counts.
 * db is borrowed (one connection per thread); cfg is borrowed. DUN_OK even
 * when calls failed: failures are row states; an error means the DB failed.
 */
enum dun_err dun_outbox_sender_run_once(struct dun_db *db, const struct dun_config *cfg,
					int64_t now, struct dun_outbox_stats *stats);

/*
 * The method and URL of one outbox row (op, account, base_url without a
 * trailing slash): for tests and `dunning outbox`. url has url_size bytes.
 * DUN_E_INVALID for an unknown op, DUN_E_TOO_BIG when it does not fit.
 */
enum dun_err dun_outbox_request_line(const char *base_url, const char *op, const char *account_id,
				     const char **method, char *url, size_t url_size);

/*
 * Move dead rows back to pending (id 0: all of them); *n_out counts them. A
 * dead row that a later delivered row of the same kind has overtaken (a dead
 * ban after a delivered unban) is left dead: it would arrive out of order.
 */
enum dun_err dun_outbox_requeue_dead(struct dun_db *db, int64_t id, int64_t now, int *n_out);

#endif
