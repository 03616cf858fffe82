/*
 * senders.c — the delivery loops (see senders.h): the two HTTP senders on
 * one thread, the email sender on another, each with its own connection
 * and a pause when nothing is due.
 */
#include "senders.h"
#include "apply/effects_setup.h"
#include "apply/email_sender.h"
#include "util/clock.h"
#include "util/log.h"
#include "util/mem.h"

#include <stdlib.h>
#include <string.h>
#include <time.h>

#define SLICE_MS 50

void dun_senders_init(struct dun_senders *s, const char *db_path, const struct dun_config *cfg)
{
	memset(s, 0, sizeof *s);
	s->db_path = db_path;
	s->cfg = cfg;
	s->poll_ms = 1000;
	atomic_init(&s->stop, false);
}

void dun_senders_stop(struct dun_senders *s)
{
	atomic_store(&s->stop, true);
}

/* Sleep ms in short slices, waking early when asked to stop. */
static void pause_ms(struct dun_senders *s, int64_t ms)
{
	while (ms > 0 && !atomic_load(&s->stop)) {
		int64_t step = ms < SLICE_MS ? ms : SLICE_MS;
		struct timespec ts = {.tv_sec = 0, .tv_nsec = (long)step * 1000000L};
		nanosleep(&ts, NULL);
		ms -= step;
	}
}

void *dun_senders_thread(void *arg)
{
	struct dun_senders *s = arg;
	struct dun_db *db = NULL;
	char err[256];
	if (dun_db_open(s->db_path, &db, err, sizeof err) != DUN_OK) {
		dun_log(DUN_LOG_ERROR, "senders.stopped", "error", err, NULL);
		atomic_fetch_add(&s->errors_total, 1);
		return NULL;
	}
	dun_log(DUN_LOG_INFO, "senders.started", "platform", s->cfg->platform_kind, NULL);
	while (!atomic_load(&s->stop)) {
		int64_t now = dun_clock_now();
		struct dun_outbox_stats ps;
		struct dun_events_stats es;
		enum dun_err pe = dun_outbox_sender_run_once(db, s->cfg, now, &ps);
		enum dun_err ee = dun_events_sender_run_once(db, s->cfg, now, &es);
		atomic_fetch_add(&s->runs, 1);
		if (pe == DUN_OK) {
			atomic_store(&s->platform_pending, ps.pending);
			atomic_store(&s->platform_dead, ps.dead_total);
			atomic_store(&s->platform_oldest_pending_at, ps.oldest_pending_at);
			atomic_fetch_add(&s->platform_sent_total, ps.sent);
		}
		if (ee == DUN_OK) {
			atomic_store(&s->events_pending, es.pending);
			atomic_store(&s->events_dead, es.dead_total);
			atomic_fetch_add(&s->events_sent_total, es.sent);
		}
		if (pe != DUN_OK || ee != DUN_OK) {
			atomic_fetch_add(&s->errors_total, 1);
			dun_log(DUN_LOG_ERROR, "senders.failed", "platform", dun_err_str(pe),
				"events", dun_err_str(ee), NULL);
		}
		bool more = (pe == DUN_OK && ps.more) || (ee == DUN_OK && es.more);
		if (!more)
			pause_ms(s, s->poll_ms > 0 ? s->poll_ms : 1000);
	}
	dun_db_close(db);
	dun_log(DUN_LOG_INFO, "senders.stopped", NULL);
	return NULL;
}

void *dun_senders_email_thread(void *arg)
{
	struct dun_senders *s = arg;
	struct dun_db *db = NULL;
	char err[512];
	if (dun_db_open(s->db_path, &db, err, sizeof err) != DUN_OK) {
		dun_log(DUN_LOG_ERROR, "email_sender.stopped", "error", err, NULL);
		atomic_fetch_add(&s->errors_total, 1);
		return NULL;
	}
	struct dun_effects *fx = dun_calloc(1, sizeof *fx);
	if (dun_effects_open(s->cfg, db, false, fx, err, sizeof err) != DUN_OK) {
		dun_log(DUN_LOG_ERROR, "email_sender.stopped", "error", err, NULL);
		atomic_fetch_add(&s->errors_total, 1);
		free(fx);
		dun_db_close(db);
		return NULL;
	}
	struct dun_email_sender_config cfg;
	dun_email_sender_config_from(s->cfg, &fx->mailer, &cfg);
	dun_log(DUN_LOG_INFO, "email_sender.started", "transport", fx->mailer.ops->name, NULL);
	while (!atomic_load(&s->stop)) {
		struct dun_email_stats st;
		enum dun_err e =
		    dun_email_sender_run_once(db, &fx->mailer, &cfg, dun_clock_now(), &st);
		if (e == DUN_OK) {
			atomic_store(&s->email_pending, st.pending);
			atomic_store(&s->email_overdue, st.overdue);
			atomic_store(&s->email_dead, st.dead_total);
			atomic_store(&s->email_oldest_pending_at, st.oldest_pending_at);
			atomic_fetch_add(&s->email_sent_total, st.sent);
		} else {
			atomic_fetch_add(&s->errors_total, 1);
			dun_log(DUN_LOG_ERROR, "email_sender.failed", "error", dun_err_str(e),
				NULL);
		}
		if (e != DUN_OK || !st.more)
			pause_ms(s, s->poll_ms > 0 ? s->poll_ms : 1000);
	}
	dun_effects_close(fx);
	free(fx);
	dun_db_close(db);
	dun_log(DUN_LOG_INFO, "email_sender.stopped", NULL);
	return NULL;
}
