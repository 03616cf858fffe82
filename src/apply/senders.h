/*
 * senders.h — EXECUTE: the delivery loop for `dunning serve`.
 *
 * One thread runs both HTTP senders — the platform outbox (outbox_sender.h)
 * and the payment-outcome events (events_sender.h) — over its own database
 * connection, until asked to stop; a second thread, over a connection of
 * its own, runs the email sender (email_sender.h), so a slow or dead SMTP
 * relay never delays a platform call. Recomputes never wait for either:
 * they only write rows these loops pick up.
 *
 *   struct dun_senders s;
 *   dun_senders_init(&s, cfg->db_path, cfg);
 *   pthread_create(&t, NULL, dun_senders_thread, &s);
 *   pthread_create(&m, NULL, dun_senders_email_thread, &s);
 *   ...
 *   dun_senders_stop(&s);   // returns at once
 *   pthread_join(t, NULL);  // within one HTTP timeout at most
 *   pthread_join(m, NULL);  // within one SMTP timeout at most
 */
#ifndef DUN_SENDERS_H
#define DUN_SENDERS_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>

#include "apply/events_sender.h"
#include "apply/outbox_sender.h"
#include "config/config.h"

struct dun_senders {
	const char *db_path;	      /* borrowed */
	const struct dun_config *cfg; /* borrowed; must outlive the thread */
	int64_t poll_ms;	      /* pause when nothing is due; default 1000 */
	atomic_bool stop;
	/* Gauges after the last run, for metrics (read from any thread). */
	_Atomic int64_t runs;
	_Atomic int64_t platform_pending;
	_Atomic int64_t platform_dead;
	_Atomic int64_t platform_oldest_pending_at;
	_Atomic int64_t platform_sent_total;
	_Atomic int64_t events_pending;
	_Atomic int64_t events_dead;
	_Atomic int64_t events_sent_total;
	_Atomic int64_t email_pending;
	_Atomic int64_t email_overdue;
	_Atomic int64_t email_dead;
	_Atomic int64_t email_oldest_pending_at;
	_Atomic int64_t email_sent_total;
	_Atomic int64_t errors_total; /* runs that failed on the database */
};

/* Set up s for the database at db_path with cfg (both borrowed). */
void dun_senders_init(struct dun_senders *s, const char *db_path, const struct dun_config *cfg);

/*
 * The thread's body (a pthread start routine; arg is the struct
 * dun_senders). Opens its own connection, runs both senders whenever
 * something may be due (again at once while a run reports more), sleeps
 * poll_ms otherwise, and returns NULL once stop is set. A database error is
 * logged and counted, and the loop goes on after the pause.
 */
void *dun_senders_thread(void *arg);

/*
 * The email thread's body: opens its own connection and the configured
 * mailer (cfg's [email]), runs the email sender whenever something may be
 * due, sleeps poll_ms otherwise, and returns NULL once stop is set. A
 * mailer that cannot be set up is logged and the thread ends (the service
 * checked the same settings at start-up).
 */
void *dun_senders_email_thread(void *arg);

/* Ask the threads to stop; each finishes the call in flight first. */
void dun_senders_stop(struct dun_senders *s);

#endif
