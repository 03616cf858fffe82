/*
 * world.c — the synthetic population (see world.h).
 *
 * The mix, per account, drawn from one seeded generator:
 *   segment     90% self_serve, 6% enterprise, 4% contract
 *   card        70% ok; 8% insufficient_funds that clears half the time;
 *               5% insufficient_funds that never clears; 4% do_not_honor
 *               that clears a third of the time; 4% expired_card (hard);
 *               2% lost_card (hard); 2% generic_decline with Mastercard
 *               advice 24 (retry after an hour); 5% good card whose
 *               upgrades fail (insufficient_funds on subscription_update)
 *   fixes card  half of the failing cards are replaced by a good one
 *               3 to 20 days after the first failure
 *   pays debt   a third of the accounts that reach bad debt ask for the
 *               consolidated invoice 2 to 10 days later and pay it
 * Billing is monthly on a random day of the first 30, 10 to 500 USD.
 */
#include "world.h"
#include "apply/email_sender.h"
#include "apply/paybaddebt.h"
#include "inbox/ingest.h"
#include "inbox/worker.h"
#include "util/clock.h"
#include "util/mem.h"

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define DAY 86400

struct person {
	char account[DUN_ID_MAX];
	char customer[DUN_ID_MAX];
	char subscription[DUN_ID_MAX];
	int bill_day;
	int64_t amount_minor;
	bool upgrades_fail;
	bool will_fix_card;
	int fix_after_days;
	bool will_pay_debt;
	int pay_after_days;
	/* progress */
	int first_failure_day; /* -1: none yet */
	int bad_debt_day;      /* -1: not seen in bad debt */
	bool fixed;
	bool paid_debt;
	bool upgraded;
};

struct dun_world {
	struct dun_engine *en;
	struct dun_sim *sim;
	struct dun_world_config cfg;
	struct person *people;
	uint64_t rng;
	int64_t events;
	int64_t consequences;
};

static uint64_t next(struct dun_world *w)
{
	/* xorshift64*: small, seeded, reproducible */
	w->rng ^= w->rng >> 12;
	w->rng ^= w->rng << 25;
	w->rng ^= w->rng >> 27;
	return w->rng * 2685821657736338717ULL;
}

static int pick(struct dun_world *w, int n)
{
	return (int)(next(w) % (uint64_t)n);
}

struct dun_world *dun_world_new(struct dun_engine *en, struct dun_sim *sim,
				const struct dun_world_config *cfg)
{
	struct dun_world *w = dun_calloc(1, sizeof *w);
	w->en = en;
	w->sim = sim;
	w->cfg = *cfg;
	w->rng = cfg->seed ? cfg->seed * 0x9E3779B97F4A7C15ULL : 0x9E3779B97F4A7C15ULL;
	w->people = dun_calloc((size_t)cfg->accounts, sizeof *w->people);
	return w;
}

void dun_world_destroy(struct dun_world *w)
{
	if (!w)
		return;
	free(w->people);
	free(w);
}

static const char *card_for(struct dun_world *w, struct person *p)
{
	int r = pick(w, 100);
	if (r < 70)
		return "ok";
	if (r < 78)
		return "insufficient_funds@50";
	if (r < 83)
		return "insufficient_funds";
	if (r < 87)
		return "do_not_honor@33";
	if (r < 91)
		return "expired_card";
	if (r < 93)
		return "lost_card";
	if (r < 95)
		return "generic_decline,network=24";
	p->upgrades_fail = true;
	return "ok,upgrades=insufficient_funds";
}

enum dun_err dun_world_populate(struct dun_world *w)
{
	struct dun_db *db = w->en->db;
	dun_clock_set(w->cfg.start);
	enum dun_err e = DUN_OK;
	for (int i = 0; i < w->cfg.accounts && e == DUN_OK; i++) {
		struct person *p = &w->people[i];
		snprintf(p->account, sizeof p->account, "acct_%05d", i + 1);
		int seg = pick(w, 100);
		const char *segment = seg < 90	 ? "self_serve"
				      : seg < 96 ? "enterprise"
						 : "contract";
		const char *card = card_for(w, p);
		p->bill_day = pick(w, 30);
		p->amount_minor = 1000 + 100 * (int64_t)pick(w, 491);
		p->will_fix_card = strcmp(card, "ok") != 0 && !p->upgrades_fail && pick(w, 2) == 0;
		p->fix_after_days = 3 + pick(w, 18);
		p->will_pay_debt = pick(w, 3) == 0;
		p->pay_after_days = 2 + pick(w, 9);
		p->first_failure_day = -1;
		p->bad_debt_day = -1;
		char email[128], name[64];
		snprintf(email, sizeof email, "billing+%s@example.com", p->account);
		snprintf(name, sizeof name, "Customer %d", i + 1);
		struct dun_stmt *st =
		    dun_db_stmt(db, "INSERT INTO accounts(id, segment, email,"
				    " name, created_at) VALUES (?1, ?2, ?3, ?4, ?5)"
				    " ON CONFLICT DO NOTHING");
		dun_stmt_bind_text(st, 1, p->account);
		dun_stmt_bind_text(st, 2, segment);
		dun_stmt_bind_text(st, 3, email);
		dun_stmt_bind_text(st, 4, name);
		dun_stmt_bind_int64(st, 5, w->cfg.start);
		e = dun_stmt_done(st);
		if (e == DUN_OK)
			e = dun_sim_create_customer(w->sim, p->account, email, name, card,
						    p->customer);
		if (e == DUN_OK)
			e = dun_sim_create_subscription(w->sim, p->customer, p->subscription);
		/* Some accounts have resources the platform flags (removed at bad debt). */
		if (e == DUN_OK && pick(w, 3) == 0) {
			st = dun_db_stmt(db,
					 "INSERT INTO platform(account_id,"
					 " resource_flags) VALUES (?1, 1) ON CONFLICT DO NOTHING");
			dun_stmt_bind_text(st, 1, p->account);
			e = dun_stmt_done(st);
		}
		if (e == DUN_OK && (i % 200) == 199)
			e = dun_world_pump(w);
	}
	return e == DUN_OK ? dun_world_pump(w) : e;
}

enum dun_err dun_world_pump(struct dun_world *w)
{
	struct dun_inbox_config cfg;
	dun_inbox_config_defaults(&cfg);
	char worker[200];
	dun_inbox_worker_id(worker, sizeof worker, "demo");
	for (int round = 0; round < 1000; round++) {
		int64_t n = 0;
		char err[256] = "";
		enum dun_err e = dun_ingest_sim_events(w->en->db, w->sim, &n, err, sizeof err);
		if (e != DUN_OK) {
			fprintf(stderr, "dunning: demo: ingest: %s\n", err);
			return e;
		}
		w->events += n;
		struct dun_drain_stats st;
		e = dun_worker_drain(w->en, &cfg, worker, dun_clock_now(), 0, &st);
		if (e != DUN_OK)
			return e;
		w->consequences += st.consequences_applied;
		if (!n && !st.accounts)
			break;
	}
	/* The day's emails go out through the email sender, as in `work`. */
	struct dun_email_sender_config ecfg;
	dun_email_sender_config_from(NULL, &w->en->applier.mailer, &ecfg);
	struct dun_email_stats es;
	enum dun_err e;
	do
		e = dun_email_sender_run_once(w->en->db, &w->en->applier.mailer, &ecfg,
					      dun_clock_now(), &es);
	while (e == DUN_OK && es.more);
	return e;
}

static enum dun_stage stage_of(struct dun_db *db, const char *account)
{
	struct dun_stmt *st = dun_db_stmt(db, "SELECT stage FROM dunning WHERE account_id = ?1");
	dun_stmt_bind_text(st, 1, account);
	enum dun_stage s = DUN_STAGE_NONE;
	if (dun_stmt_row(st))
		dun_stage_parse(dun_stmt_col_text(st, 0), &s);
	dun_stmt_reset(st);
	return s;
}

static bool has_failure(struct dun_db *db, const char *customer)
{
	/* By the table's key: an invoice's account is its customer's (schema migration 23). */
	struct dun_stmt *st = dun_db_stmt(
	    db, "SELECT 1 FROM p_invoices WHERE account_id = COALESCE((SELECT account_id FROM"
		" customers WHERE id = ?1), '') AND customer_id = ?1 AND attempt_count > 0"
		" AND status IN ('open', 'uncollectible') LIMIT 1");
	dun_stmt_bind_text(st, 1, customer);
	bool yes = dun_stmt_row(st);
	dun_stmt_reset(st);
	return yes;
}

static enum dun_err act(struct dun_world *w, struct person *p, int day)
{
	struct dun_db *db = w->en->db;
	enum dun_err e = DUN_OK;
	/* Billing: monthly, on the subscription's day, while it is not canceled. */
	if (day % 30 == p->bill_day) {
		struct dun_stmt *st =
		    dun_db_stmt(db, "SELECT status FROM p_subscriptions WHERE id = ?1");
		dun_stmt_bind_text(st, 1, p->subscription);
		bool live = dun_stmt_row(st) && strcmp(dun_stmt_col_text(st, 0), "canceled") != 0;
		dun_stmt_reset(st);
		if (live)
			e = dun_sim_bill(w->sim, p->customer, p->subscription, p->amount_minor,
					 day < 30 ? "subscription_create" : "subscription_cycle",
					 NULL);
	}
	/* An upgrade ten days after the first bill. */
	if (e == DUN_OK && p->upgrades_fail && !p->upgraded && day == p->bill_day + 10) {
		p->upgraded = true;
		e = dun_sim_bill(w->sim, p->customer, p->subscription, p->amount_minor / 2,
				 "subscription_update", NULL);
	}
	if (e != DUN_OK)
		return e;
	if (p->first_failure_day < 0 && has_failure(db, p->customer))
		p->first_failure_day = day;
	/* Replacing the card. */
	if (p->will_fix_card && !p->fixed && p->first_failure_day >= 0 &&
	    day >= p->first_failure_day + p->fix_after_days) {
		p->fixed = true;
		e = dun_sim_update_card(w->sim, p->customer, "ok");
	}
	/* Coming back to pay the bad debt. */
	if (e == DUN_OK && p->will_pay_debt && !p->paid_debt) {
		if (p->bad_debt_day < 0 && stage_of(db, p->account) == DUN_STAGE_BAD_DEBT)
			p->bad_debt_day = day;
		if (p->bad_debt_day >= 0 && day >= p->bad_debt_day + p->pay_after_days) {
			json_t *inv = NULL;
			char err[256];
			if (dun_pay_bad_debt(w->en, p->account, dun_clock_now(), &inv, err,
					     sizeof err) == DUN_OK) {
				p->paid_debt = true;
				e = dun_sim_update_card(w->sim, p->customer, "ok");
				if (e == DUN_OK)
					e = dun_sim_pay_out_of_band(
					    w->sim, json_string_value(json_object_get(inv, "id")));
			}
			json_decref(inv);
		}
	}
	return e;
}

enum dun_err dun_world_day(struct dun_world *w, int day)
{
	dun_clock_set(w->cfg.start + (int64_t)day * DAY + 9 * 3600);
	enum dun_err e = DUN_OK;
	for (int i = 0; i < w->cfg.accounts && e == DUN_OK; i++) {
		e = act(w, &w->people[i], day);
		if (e == DUN_OK && (i % 100) == 99)
			e = dun_world_pump(w);
	}
	if (e == DUN_OK)
		e = dun_world_pump(w);
	/* Evening: rechecks due later in the day (stage boundaries, retries). */
	dun_clock_set(w->cfg.start + (int64_t)day * DAY + DAY - 1);
	if (e == DUN_OK)
		e = dun_world_pump(w);
	return e;
}

static int64_t scalar(struct dun_db *db, const char *sql)
{
	struct dun_stmt *st = dun_db_stmt(db, sql);
	int64_t v = 0;
	if (dun_stmt_row(st))
		v = dun_stmt_col_int64(st, 0);
	dun_stmt_reset(st);
	return v;
}

enum dun_err dun_world_stats(struct dun_world *w, int day, struct dun_world_stats *out)
{
	struct dun_db *db = w->en->db;
	memset(out, 0, sizeof *out);
	out->day = day;
	int64_t staged = 0;
	struct dun_stmt *st = dun_db_stmt(db, "SELECT stage, COUNT(*) FROM dunning GROUP BY stage");
	while (dun_stmt_row(st)) {
		enum dun_stage s = DUN_STAGE_NONE;
		dun_stage_parse(dun_stmt_col_text(st, 0), &s);
		out->per_stage[s] += dun_stmt_col_int64(st, 1);
		staged += dun_stmt_col_int64(st, 1);
	}
	dun_stmt_reset(st);
	out->per_stage[DUN_STAGE_NONE] += scalar(db, "SELECT COUNT(*) FROM accounts") - staged;
	out->failing_invoices =
	    scalar(db, "SELECT COUNT(*) FROM p_invoices WHERE status = 'open' AND attempt_count > 0"
		       " AND amount_remaining > 0 AND meta_bad_debt_invoices IS NULL");
	out->recovered_minor = scalar(
	    db, "SELECT COALESCE(SUM(amount_paid), 0) FROM p_invoices WHERE status = 'paid' AND"
		" (attempt_count > 1 OR meta_bad_debt_invoices IS NOT NULL)");
	out->written_off_minor =
	    scalar(db, "SELECT COALESCE(SUM(amount_minor), 0) FROM bad_debt_episodes");
	out->emails_sent = scalar(db, "SELECT COUNT(*) FROM emails WHERE state = 'sent'");
	out->bad_debt_entries = scalar(db, "SELECT COUNT(*) FROM bad_debt_episodes");
	out->bad_debt_exits =
	    scalar(db, "SELECT COUNT(*) FROM bad_debt_episodes WHERE exited_at > 0");
	out->retries = scalar(db, "SELECT COUNT(*) FROM applied WHERE type = 'retry_payment'"
				  " AND outcome = 'applied'");
	out->dead_triggers = scalar(db, "SELECT COUNT(*) FROM inbox WHERE state = 'dead'");
	out->consequences = w->consequences;
	out->events = w->events;
	return DUN_OK;
}

bool dun_world_option(int opt, const char *arg, const char *cmd, struct dun_world_config *cfg)
{
	char *end;
	errno = 0;
	unsigned long long v = strtoull(arg, &end, 10);
	bool number = errno == 0 && end != arg && *end == '\0' && arg[0] != '-';
	switch (opt) {
	case 'a':
		if (number && v >= 1 && v <= 1000000) {
			cfg->accounts = (int)v;
			return true;
		}
		fprintf(stderr, "dunning: %s: --accounts takes 1 to 1000000, not \"%s\"\n", cmd,
			arg);
		return false;
	case 'd':
		if (number && v >= 1 && v <= 3650) {
			cfg->days = (int)v;
			return true;
		}
		fprintf(stderr, "dunning: %s: --days takes 1 to 3650, not \"%s\"\n", cmd, arg);
		return false;
	case 's':
		if (number) {
			cfg->seed = (uint64_t)v;
			return true;
		}
		fprintf(stderr, "dunning: %s: --seed takes a whole number, not \"%s\"\n", cmd, arg);
		return false;
	default:
		return false;
	}
}
