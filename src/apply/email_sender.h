/*
 * email_sender.h — EXECUTE: delivering the email outbox.
 *
 * The applier queues rendered emails in the email log (`emails`, state
 * `pending`, see email_log.h); this sender hands them to the mailer (SMTP,
 * or the log transport), in queue order per account, with retries and
 * backoff, and records what happened. It runs inside `dunning serve` (the
 * delivery thread, senders.h), after the drain of `dunning work`, `retry`,
 * `ingest --work` and every simulated day of the demo, and from `dunning
 * emails --deliver`. Several senders at once are safe. Recomputes never
 * wait for it.
 */
#ifndef DUN_EMAIL_SENDER_H
#define DUN_EMAIL_SENDER_H

#include <stdbool.h>
#include <stdint.h>

#include "apply/effects.h"
#include "config/config.h"
#include "store/db.h"

#define DUN_EMAIL_BACKOFF_BASE_S   60	/* first retry after 30–60 s */
#define DUN_EMAIL_BACKOFF_MAX_S	   3600 /* never more than an hour apart */
#define DUN_EMAIL_RUN_MAX	   1000 /* emails per run at most */
/* Retryable failures in a row after which a run stops: the relay is down. */
#define DUN_EMAIL_RUN_FAILURES_MAX 3

struct dun_email_sender_config {
	int64_t alert_after_s;	 /* a queued email this old is overdue: logged, counted */
	int64_t give_up_after_s; /* a queued email this old is given up: dead */
	int64_t claim_lease_s;	 /* a `sending` claim older than this is taken over */
	/* asked between emails; true stops the run (a signal): NULL never stops */
	bool (*should_stop)(void);
};

/* The settings from cfg ([email] alert_after_s, give_up_after_s); cfg NULL: defaults. */
void dun_email_sender_config_from(const struct dun_config *cfg, const struct dun_mailer *mailer,
				  struct dun_email_sender_config *out);

struct dun_email_stats {
	/* this run */
	int64_t attempted;
	int64_t sent;
	int64_t retried;
	int64_t dead;	    /* refused for good, or given up at the age limit */
	int64_t recovered;  /* `sending` claims of gone or expired owners put back */
	bool stopped_early; /* the relay failed DUN_EMAIL_RUN_FAILURES_MAX times: wait */
	bool more;	    /* DUN_EMAIL_RUN_MAX was reached: call again */
	/* the email log after the run */
	int64_t pending; /* queued and not yet sent (pending, sending, failed) */
	int64_t overdue; /* of those, queued longer than alert_after_s ago */
	int64_t dead_total;
	int64_t oldest_pending_at; /* created_at of the oldest queued email, 0 if none */
};

/*
 * Deliver what is due at now (the engine's clock: backoff and age are
 * business time; claims are timed by the wall clock). An email goes out
 * only when no earlier-queued email of its account is still undelivered
 * (a notice never overtakes the one before it); a dead email does not hold
 * back the ones after it. Each email is claimed first (state `sending`,
 * owner, wall-clock time), so of several senders one sends it; a claim
 * whose owner is gone or whose lease ran out is put back first.
 *
 * Outcomes: the relay accepted it: `sent`. Refused for good (DUN_E_INVALID:
 * no such mailbox, a malformed address, no address at all; DUN_E_TOO_BIG):
 * `dead`. Anything else (relay down, 4xx, timeout, a configuration error an
 * operator will fix): `pending` again after a capped exponential backoff —
 * until the email has waited give_up_after_s since it was queued, then
 * `dead`. A row waiting longer than alert_after_s is overdue: each retry of
 * it logs `email.overdue`, and the count is a gauge.
 *
 * mailer and cfg are borrowed. DUN_OK even when sends failed: failures are
 * row states; an error means the database failed.
 */
enum dun_err dun_email_sender_run_once(struct dun_db *db, const struct dun_mailer *mailer,
				       const struct dun_email_sender_config *cfg, int64_t now,
				       struct dun_email_stats *stats);

/* The counts of the email log alone (pending, overdue, dead, oldest), for metrics. */
enum dun_err dun_email_sender_count(struct dun_db *db, const struct dun_email_sender_config *cfg,
				    int64_t now, struct dun_email_stats *stats);

/*
 * Move dead emails back to pending (key NULL: all of them), due at once and
 * queued afresh at now (the age limit counts from then); *n_out counts them.
 */
enum dun_err dun_email_requeue_dead(struct dun_db *db, const char *key, int64_t now, int *n_out);

#endif
