/*
 * gen.c — the synthetic population (see gen.h).
 *
 * Each account is described by describe(), a pure function of the seed and
 * the account's index, so the generator never keeps per-account state and
 * may write an account's rows in any order. The engine-side rows and the
 * mirror's invoices and attempts are written account by account, which is
 * the key order of the mirror's tables since schema migration 14 (the
 * order a real mirror's rows are stored in, whatever order they arrived
 * in); invoice documents are written month by month over all accounts in
 * a billing order unrelated to account ids, as a real service creates them
 * (since schema migration 19 they too are stored by account). Invoice ids are numbered in that
 * billing order too, so they are unrelated to account ids, as in production.
 *
 * Segments are 90% self_serve, 6% enterprise, 4% contract (the policy skips
 * the last two, whatever their state); one account in a thousand has its
 * kill switch on, one in a hundred no provider customer yet, one in two
 * hundred a second one (kept healthy: which one GATHER reads depends on the
 * ids). Each account with a customer falls in one scenario:
 *   ~89%  healthy: 1 to 9 monthly invoices, all paid, one succeeded attempt
 *         each (5% after a failed first attempt), 2% a paid upgrade too; 5%
 *         carry a resolved past dunning episode
 *     6%  failing: the latest invoice open, failed 2 hours to 29.5 days ago
 *         (80% soft declines retried on the default schedule, 20% hard),
 *         with the stage, entitlement and sent emails the policy puts there
 *   1.2%  bad debt: the latest one or two invoices uncollectible, the flag
 *         set in every store, banned, subscription canceled, episode open
 *   0.6%  paid bad debt: the same, covered by a paid consolidated invoice,
 *         documents closed, episode closed, everything lifted
 *     3%  planted drift on a self-serve account (enum plant; the classes
 *         each must show are in expect_of())
 * Invoice documents exist for one paid invoice in ten and half the failing
 * ones; a third of the accounts have platform rows.
 */
#include "gen.h"
#include "core/model.h"
#include "store/db.h"
#include "util/mem.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define DAY		  86400
#define HOUR		  3600
#define MAX_CYCLES	  9 /* regular invoices per account: 1..MAX_CYCLES */
#define SLOT_UPGRADE	  MAX_CYCLES
#define SLOT_CONSOLIDATED (MAX_CYCLES + 1)
#define SLOT_SECOND	  (MAX_CYCLES + 2)
#define N_SLOTS		  (MAX_CYCLES + 3)
#define BATCH		  20000

enum scenario { SC_HEALTHY, SC_FAILING, SC_BAD_DEBT, SC_PAID_BAD_DEBT };

/* One deliberate inconsistency; the drift classes each one must produce are in expect_of(). */
enum plant {
	PL_NONE,
	PL_STUCK,	    /* bad_debt set in all three stores, nothing owed */
	PL_STUCK_BANNED,    /* ... and banned, suspended, stage bad_debt */
	PL_FLAGS_DISAGREE,  /* only the customer's bad_debt flag set */
	PL_STALE_BAN,	    /* banned with nothing owed */
	PL_STALE_NSP,	    /* no_successful_payment set although invoices were paid */
	PL_MISSED_BAD_DEBT, /* failing for 32 to 50 days, still recorded as suspended */
	PL_STAGE_ONLY,	    /* stage notified with nothing owed */
};

/* Odd cases of the edge mix (bits of struct acct.odd). */
enum {
	ODD_FLAGS = 1u << 0,	    /* random bad_debt flags */
	ODD_PLATFORM = 1u << 1,	    /* random ban / entitlement */
	ODD_STRINGS = 1u << 2,	    /* unknown stage, entitlement, statuses */
	ODD_PROCESSING = 1u << 3,   /* a processing attempt on the unpaid invoice */
	ODD_OPEN_CONSOL = 1u << 4,  /* an open consolidated invoice (lifting window) */
	ODD_EMAIL_STATES = 1u << 5, /* failed and pending emails beside the sent ones */
	ODD_EMPTY_COVERS = 1u << 6, /* meta_bad_debt_invoices = '' on a paid invoice */
	ODD_NO_PCUSTOMER = 1u << 7, /* customers row without a p_customers row */
	ODD_LONG_TEXT = 1u << 8,    /* url and decline code longer than the buffers */
	ODD_EPISODES = 1u << 9,	    /* a closed and an open bad-debt episode */
	ODD_MANY_COVERS = 1u << 10, /* a consolidated invoice listing 70 originals */
	ODD_TIES = 1u << 11,	    /* attempts with equal created times */
	ODD_RANDOM_DOCS = 1u << 12, /* documents in any state */
};

struct decline {
	const char *code;
	const char *network;
	const char *advice;
	bool hard;
};

static const struct decline declines[] = {
    {"insufficient_funds", "", "", false},
    {"insufficient_funds", "", "", false},
    {"do_not_honor", "", "", false},
    {"generic_decline", "24", "", false},
    {"card_declined", "", "try_again_later", false},
    {"expired_card", "", "", true},
    {"lost_card", "", "do_not_try_again", true},
};
#define N_SOFT 5
#define N_DECL ((int)(sizeof declines / sizeof declines[0]))

struct acct {
	int64_t idx;
	char id[32];
	enum dun_segment segment;
	bool kill_switch;
	int n_customers; /* 0, 1 or 2 */
	char cus[2][32];
	char sub[2][32];
	char pm[32];
	enum scenario sc;
	enum plant plant;
	int n_cycles;	      /* regular invoices of the first customer */
	int n_unpaid;	      /* trailing regular invoices not paid */
	int64_t last_created; /* when the latest regular invoice was created */
	int64_t amount_minor;
	int decline;
	bool upgrade;	   /* a paid upgrade invoice after the first one */
	bool past_episode; /* healthy, a resolved episode behind it */
	bool has_platform;
	bool resource_flags;
	int64_t consolidated_paid_at; /* PAID_BAD_DEBT */
	unsigned odd;
	uint64_t draws; /* seed of the per-invoice draws */
};

struct gen {
	const struct dun_bench_gen_config *cfg;
	struct dun_bench_gen_counts *counts;
	struct dun_db *db;
	struct dun_stmt *account, *customer, *pcustomer, *sub, *dunning, *platform, *episode,
	    *email, *invoice, *attempt, *doc;
	char *err;
	size_t err_size;
	uint64_t bill_a, bill_a_inv; /* the billing order's multiplier and its inverse */
	/* Which rows the invoice code writes: the mirror's (invoices, attempts) or the
	 * invoice documents; the other kind is computed and not written. */
	enum { WRITE_MIRROR, WRITE_DOCS } writes;
};

/* ---- deterministic draws ------------------------------------------------- */

static uint64_t mix64(uint64_t x)
{
	/* splitmix64's finalizer: a bijection, so distinct inputs give distinct ids */
	x ^= x >> 30;
	x *= 0xbf58476d1ce4e5b9ULL;
	x ^= x >> 27;
	x *= 0x94d049bb133111ebULL;
	x ^= x >> 31;
	return x;
}

static uint64_t draw(uint64_t *s)
{
	*s += 0x9e3779b97f4a7c15ULL;
	return mix64(*s);
}

/* Uniform in [0, n). */
static int64_t below(uint64_t *s, int64_t n)
{
	return (int64_t)(draw(s) % (uint64_t)n);
}

/* Uniform in [lo, hi]. */
static int64_t between(uint64_t *s, int64_t lo, int64_t hi)
{
	return lo + below(s, hi - lo + 1);
}

/* Whether a draw in [0, 10000) falls under basis points bp. */
static bool chance(uint64_t *s, int bp)
{
	return below(s, 10000) < bp;
}

static void base36(char *out, size_t n, const char *prefix, uint64_t v, int width)
{
	char digits[16];
	int len = 0;
	do {
		digits[len++] = "0123456789abcdefghijklmnopqrstuvwxyz"[v % 36];
		v /= 36;
	} while (v && len < (int)sizeof digits);
	while (len < width && len < (int)sizeof digits)
		digits[len++] = '0';
	size_t p = strlen(prefix);
	if (p + (size_t)len + 1 > n)
		return;
	memcpy(out, prefix, p);
	for (int i = 0; i < len; i++)
		out[p + (size_t)i] = digits[len - 1 - i];
	out[p + (size_t)len] = '\0';
}

/*
 * The order accounts are billed in within one month: billing days have
 * nothing to do with account ids, so this is a permutation of the indexes
 * (pos -> A * pos + B mod n, a bijection as the prime A does not divide n),
 * a different one every month. One account's invoice ids (and documents)
 * thus end up far from its neighbours', as they do in production.
 */
static int64_t billing_order(const struct gen *g, int slot, int64_t pos)
{
	const uint64_t n = (uint64_t)g->cfg->accounts;
	const uint64_t b = mix64((uint64_t)slot + 1) % n;
	return (int64_t)((g->bill_a * (uint64_t)pos + b) % n);
}

/* The inverse: where in its month's billing run account idx comes. */
static uint64_t billing_pos(const struct gen *g, int slot, int64_t idx)
{
	const uint64_t n = (uint64_t)g->cfg->accounts;
	const uint64_t b = mix64((uint64_t)slot + 1) % n;
	return ((uint64_t)idx + n - b) % n * g->bill_a_inv % n;
}

static uint64_t inverse_mod(uint64_t a, uint64_t n)
{
	int64_t t = 0, t1 = 1, r = (int64_t)n, r1 = (int64_t)a;
	while (r1) {
		int64_t q = r / r1, x = t - q * t1, y = r - q * r1;
		t = t1;
		t1 = x;
		r = r1;
		r1 = y;
	}
	return (uint64_t)(t < 0 ? t + (int64_t)n : t);
}

/*
 * Invoices are numbered in the order they are created (month, then billing
 * run), as provider ids roughly are: ids sort by creation, and the id index
 * only ever grows at its end.
 */
static uint64_t invoice_seq(const struct gen *g, int slot, int64_t idx)
{
	return (uint64_t)slot * (uint64_t)g->cfg->accounts + billing_pos(g, slot, idx);
}

static void invoice_id(const struct gen *g, int slot, int64_t idx, char *out, size_t n)
{
	base36(out, n, "in_", invoice_seq(g, slot, idx), 9);
}

/* ---- one account --------------------------------------------------------- */

static void describe(const struct gen *g, int64_t idx, struct acct *a)
{
	const bool edge = g->cfg->edge;
	uint64_t s = g->cfg->seed * 0x9e3779b97f4a7c15ULL ^ mix64((uint64_t)idx + 1);
	memset(a, 0, sizeof *a);
	a->idx = idx;
	snprintf(a->id, sizeof a->id, "acct_%07" PRId64, idx + 1);
	int64_t r = below(&s, 100);
	a->segment = r < 90   ? DUN_SEGMENT_SELF_SERVE
		     : r < 96 ? DUN_SEGMENT_ENTERPRISE
			      : DUN_SEGMENT_CONTRACT;
	a->kill_switch = chance(&s, edge ? 300 : 10);
	int64_t c = below(&s, 10000);
	a->n_customers = c < (edge ? 300 : 100) ? 0 : c < (edge ? 1300 : 150) ? 2 : 1;
	uint64_t u = (uint64_t)idx;
	base36(a->cus[0], sizeof a->cus[0], "cus_", mix64(u ^ g->cfg->seed << 40), 13);
	base36(a->cus[1], sizeof a->cus[1], "cus_", mix64(u ^ 0x5a5a5a5a5aULL << 36), 13);
	base36(a->sub[0], sizeof a->sub[0], "sub_", mix64(u ^ 0x1234567ULL << 34), 13);
	base36(a->sub[1], sizeof a->sub[1], "sub_", mix64(u ^ 0x7654321ULL << 34), 13);
	base36(a->pm, sizeof a->pm, "pm_", mix64(u ^ 0x3c3c3c3cULL << 35), 13);
	a->n_cycles = (int)between(&s, 1, MAX_CYCLES);
	a->amount_minor = 1000 + 100 * between(&s, 0, 490);
	a->upgrade = chance(&s, 200) && a->n_cycles >= 2;
	a->has_platform = below(&s, 3) == 0;
	a->resource_flags = below(&s, 2) == 0;
	a->draws = draw(&s);
	const int64_t now = g->cfg->now;
	a->last_created = now - between(&s, HOUR, 29 * DAY);

	/* Scenario, in basis points: edge mixes far more of everything but health. */
	int64_t sc = below(&s, 10000);
	const int fail = edge ? 2500 : 600, bd = edge ? 1000 : 120, pbd = edge ? 1000 : 60;
	const int plant = edge ? 1500 : 300;
	a->sc = SC_HEALTHY;
	if (a->n_customers == 0)
		a->n_cycles = 0;
	else if (a->n_customers == 2 && !edge)
		a->sc = SC_HEALTHY; /* which one GATHER reads depends on the ids */
	else if (sc < fail)
		a->sc = SC_FAILING;
	else if (sc < fail + bd)
		a->sc = SC_BAD_DEBT;
	else if (sc < fail + bd + pbd)
		a->sc = SC_PAID_BAD_DEBT;
	else if (sc < fail + bd + pbd + plant && a->segment == DUN_SEGMENT_SELF_SERVE &&
		 !a->kill_switch && (edge || a->n_customers == 1))
		a->plant = (enum plant)between(&s, PL_STUCK, PL_STAGE_ONLY);
	a->past_episode = a->sc == SC_HEALTHY && a->plant == PL_NONE && chance(&s, 500);
	a->decline = (int)(chance(&s, 8000) ? below(&s, N_SOFT) : between(&s, N_SOFT, N_DECL - 1));

	switch (a->sc) {
	case SC_HEALTHY:
		break;
	case SC_FAILING: {
		/* Away from the stage thresholds, so the stage is unambiguous. */
		int64_t bin = below(&s, 3);
		int64_t age = bin == 0	 ? between(&s, 2 * HOUR, 6 * DAY + 12 * HOUR)
			      : bin == 1 ? between(&s, 7 * DAY + 5 * HOUR, 13 * DAY + 19 * HOUR)
					 : between(&s, 14 * DAY + 5 * HOUR, 29 * DAY + 12 * HOUR);
		a->last_created = now - age;
		a->n_unpaid = 1;
		break;
	}
	case SC_BAD_DEBT:
		a->n_unpaid = (int)between(&s, 1, 2);
		a->last_created = now - between(&s, 35 * DAY, 80 * DAY);
		break;
	case SC_PAID_BAD_DEBT:
		a->n_unpaid = (int)between(&s, 1, 2);
		a->consolidated_paid_at = now - between(&s, 2 * DAY, 40 * DAY);
		a->last_created = a->consolidated_paid_at - between(&s, 35 * DAY, 60 * DAY);
		break;
	}
	if (a->plant == PL_MISSED_BAD_DEBT) {
		a->n_unpaid = 2;
		if (a->n_cycles < 3)
			a->n_cycles = 3;
		a->last_created = now - between(&s, 2 * DAY, 20 * DAY);
	}
	if (a->n_unpaid > a->n_cycles)
		a->n_cycles = a->n_unpaid;
	if (edge) {
		for (int bit = 0; bit < 13; bit++)
			if (chance(&s, 600))
				a->odd |= 1u << bit;
		if (a->n_customers == 0)
			a->odd &= ~(unsigned)(ODD_OPEN_CONSOL | ODD_MANY_COVERS);
	}
}

static bool unpaid_cycle(const struct acct *a, int k)
{
	return k >= a->n_cycles - a->n_unpaid;
}

static int64_t cycle_created(const struct acct *a, int k)
{
	return a->last_created - (int64_t)(a->n_cycles - 1 - k) * 30 * DAY;
}

static enum dun_stage failing_stage(int64_t age)
{
	return age >= 30 * DAY	 ? DUN_STAGE_BAD_DEBT
	       : age >= 14 * DAY ? DUN_STAGE_SUSPENDED
	       : age >= 7 * DAY	 ? DUN_STAGE_RESTRICTED
				 : DUN_STAGE_NOTIFIED;
}

static int64_t stage_offset(enum dun_stage st)
{
	switch (st) {
	case DUN_STAGE_NONE:
	case DUN_STAGE_NOTIFIED:
		return 0;
	case DUN_STAGE_RESTRICTED:
		return 7 * DAY;
	case DUN_STAGE_SUSPENDED:
		return 14 * DAY;
	case DUN_STAGE_BAD_DEBT:
		return 30 * DAY;
	}
	return 0;
}

/* The drift classes a planted account must show (bit per class). */
static unsigned expect_of(enum plant p)
{
	const unsigned stuck = 1u << DUN_DRIFT_STUCK_BAD_DEBT;
	switch (p) {
	case PL_NONE:
		return 0;
	case PL_STUCK:
		return stuck;
	case PL_STUCK_BANNED:
		return stuck | 1u << DUN_DRIFT_STALE_RESTRICTION | 1u << DUN_DRIFT_STAGE;
	case PL_FLAGS_DISAGREE:
		return stuck | 1u << DUN_DRIFT_FLAGS_DISAGREE;
	case PL_STALE_BAN:
		return 1u << DUN_DRIFT_STALE_RESTRICTION;
	case PL_STALE_NSP:
		return 1u << DUN_DRIFT_STALE_NO_SUCCESSFUL_PAYMENT;
	case PL_MISSED_BAD_DEBT:
		return 1u << DUN_DRIFT_MISSED_BAD_DEBT | 1u << DUN_DRIFT_STAGE;
	case PL_STAGE_ONLY:
		return 1u << DUN_DRIFT_STAGE;
	}
	return 0;
}

/* ---- statements ----------------------------------------------------------- */

static bool prepare(struct gen *g, struct dun_stmt **st, const char *sql)
{
	if (dun_db_prepare(g->db, sql, st) == DUN_OK)
		return true;
	snprintf(g->err, g->err_size, "prepare: %s", dun_db_errmsg(g->db));
	return false;
}

static bool step(struct gen *g, struct dun_stmt *st)
{
	int rc = dun_stmt_step(st);
	dun_stmt_clear(st);
	if (rc == DUN_STEP_DONE)
		return true;
	snprintf(g->err, g->err_size, "insert: %s", dun_db_errmsg(g->db));
	return false;
}

static void text(struct dun_stmt *st, int i, const char *s)
{
	dun_stmt_bind_text_copy(st, i, s);
}

static void i64(struct dun_stmt *st, int i, int64_t v)
{
	dun_stmt_bind_int64(st, i, v);
}

static bool exec(struct gen *g, const char *sql)
{
	return dun_db_exec(g->db, sql, g->err, g->err_size) == DUN_OK;
}

/* ---- pass 1: the engine's rows, account by account ------------------------------ */

static bool put_email(struct gen *g, const struct acct *a, enum dun_email_kind kind,
		      const char *scope, const char *invoice, const char *state, int64_t at)
{
	char key[160], msgid[200], subject[96], body[400];
	snprintf(key, sizeof key, "%s/email/%s/%s", a->id, dun_email_kind_name(kind), scope);
	snprintf(msgid, sizeof msgid, "<%016" PRIx64 ".%s@dunning.invalid>",
		 mix64((uint64_t)a->idx ^ (uint64_t)kind << 48), a->id);
	snprintf(subject, sizeof subject, "Your account %s: %s", a->id, dun_email_kind_name(kind));
	snprintf(body, sizeof body,
		 "Hello,\n\nthis is about account %s and invoice %s. Please check your payment"
		 " method at https://billing.example.invalid/%s so your service continues"
		 " without interruption.\n\n-- Billing\n",
		 a->id, invoice[0] ? invoice : "-", a->id);
	struct dun_stmt *st = g->email;
	text(st, 1, key);
	text(st, 2, a->id);
	text(st, 3, dun_email_kind_name(kind));
	text(st, 4, invoice);
	char to[64];
	snprintf(to, sizeof to, "billing+%s@example.com", a->id);
	text(st, 5, to);
	text(st, 6, subject);
	text(st, 7, body);
	text(st, 8, msgid);
	text(st, 9, state);
	i64(st, 10, !strcmp(state, "pending") ? 0 : 1);
	i64(st, 11, at);
	i64(st, 12, !strcmp(state, "sent") ? at : 0);
	g->counts->emails++;
	return step(g, st);
}

static bool put_platform(struct gen *g, const struct acct *a, bool banned, const char *entitlement,
			 bool flags)
{
	struct dun_stmt *st = g->platform;
	text(st, 1, a->id);
	i64(st, 2, banned);
	text(st, 3, entitlement);
	i64(st, 4, flags);
	i64(st, 5, g->cfg->now - 3 * DAY);
	return step(g, st);
}

static bool put_dunning(struct gen *g, const struct acct *a, const char *stage, int64_t since,
			int64_t episode)
{
	struct dun_stmt *st = g->dunning;
	text(st, 1, a->id);
	text(st, 2, stage);
	i64(st, 3, since);
	i64(st, 4, episode);
	i64(st, 5, since);
	return step(g, st);
}

static bool put_episode(struct gen *g, const struct acct *a, int64_t seq, int64_t entered,
			int64_t exited, const char *exit_reason)
{
	struct dun_stmt *st = g->episode;
	text(st, 1, a->id);
	i64(st, 2, seq);
	i64(st, 3, entered);
	text(st, 4, "delinquent");
	text(st, 5, a->sub[0]);
	i64(st, 6, a->amount_minor * a->n_unpaid);
	i64(st, 7, exited);
	text(st, 8, exit_reason);
	g->counts->episodes++;
	return step(g, st);
}

static bool put_customer(struct gen *g, const struct acct *a, int c, bool bad_debt,
			 bool meta_bad_debt)
{
	struct dun_stmt *st = g->customer;
	text(st, 1, a->cus[c]);
	text(st, 2, a->id);
	i64(st, 3, bad_debt);
	if (!step(g, st))
		return false;
	g->counts->customers++;
	if ((a->odd & ODD_NO_PCUSTOMER) && c == 0)
		return true;
	char email[64], name[48], md[128], pm[40];
	snprintf(email, sizeof email, "billing+%s@example.com", a->id);
	snprintf(name, sizeof name, "Customer %" PRId64, a->idx + 1);
	snprintf(md, sizeof md, "{\"account_id\":\"%s\"%s}", a->id,
		 meta_bad_debt ? ",\"bad_debt\":\"true\"" : "");
	snprintf(pm, sizeof pm, "%s%s", a->pm, c ? "b" : "");
	st = g->pcustomer;
	text(st, 1, a->cus[c]);
	text(st, 2, a->id);
	text(st, 3, email);
	text(st, 4, name);
	text(st, 5, pm);
	i64(st, 6, meta_bad_debt);
	text(st, 7, md);
	i64(st, 8, g->cfg->now - 400 * DAY);
	text(st, 9, a->id); /* the account its customers row links it to */
	return step(g, st);
}

static bool put_sub(struct gen *g, const struct acct *a, int c, const char *status)
{
	struct dun_stmt *st = g->sub;
	text(st, 1, a->sub[c]);
	text(st, 2, a->cus[c]);
	text(st, 3, status);
	i64(st, 4, g->cfg->now - 400 * DAY);
	text(st, 5, a->id); /* its customer's account */
	g->counts->subscriptions++;
	return step(g, st);
}

static const char *entitlement_of(enum dun_stage st)
{
	return dun_entitlement_name(st == DUN_STAGE_RESTRICTED	? DUN_ENTITLEMENT_RESTRICTED
				    : st >= DUN_STAGE_SUSPENDED ? DUN_ENTITLEMENT_SUSPENDED
								: DUN_ENTITLEMENT_FULL);
}

static bool pass1_account(struct gen *g, const struct acct *a)
{
	const int64_t now = g->cfg->now;
	uint64_t s = a->draws ^ 0xabcdef;
	/* The flags, the stage and the platform row, by scenario and plant. */
	bool acct_bd = false, cus_bd = false, meta_bd = false, banned = false, nsp = false;
	const char *stage = NULL, *ent = "full";
	int64_t since = 0, episode = 0;
	bool platform = a->has_platform, flags = a->resource_flags;
	int64_t first_fail = cycle_created(a, a->n_cycles - a->n_unpaid);
	bool paid_any = a->n_cycles > a->n_unpaid || a->upgrade;
	char inv_last[32], inv_prev[32];
	invoice_id(g, MAX_CYCLES - 1, a->idx, inv_last, sizeof inv_last);
	invoice_id(g, MAX_CYCLES - 2, a->idx, inv_prev, sizeof inv_prev);
	bool ok = true;
	enum dun_email_kind notice =
	    declines[a->decline].hard ? DUN_EMAIL_CARD_UPDATE_REQUIRED : DUN_EMAIL_PAYMENT_FAILED;

	switch (a->sc) {
	case SC_HEALTHY:
		if (a->past_episode) {
			stage = "none";
			since = now - between(&s, 60 * DAY, 300 * DAY);
			episode = 1;
			ok = put_email(g, a, DUN_EMAIL_RESOLVED, "ep1", "", "sent", since);
		}
		break;
	case SC_FAILING: {
		enum dun_stage st = failing_stage(now - first_fail);
		stage = dun_stage_name(st);
		episode = 1;
		since = first_fail + stage_offset(st);
		ent = entitlement_of(st);
		platform = platform || st >= DUN_STAGE_RESTRICTED;
		nsp = !paid_any;
		ok = put_email(g, a, notice, inv_last, inv_last, "sent", first_fail + 60);
		if (ok && st >= DUN_STAGE_RESTRICTED)
			ok = put_email(g, a, DUN_EMAIL_RESTRICTED, "ep1", "", "sent",
				       first_fail + 7 * DAY);
		if (ok && st >= DUN_STAGE_SUSPENDED)
			ok = put_email(g, a, DUN_EMAIL_SUSPENDED, "ep1", "", "sent",
				       first_fail + 14 * DAY);
		break;
	}
	case SC_BAD_DEBT:
	case SC_PAID_BAD_DEBT: {
		bool paid = a->sc == SC_PAID_BAD_DEBT;
		int64_t entered = first_fail + 30 * DAY;
		stage = paid ? "none" : "bad_debt";
		since = paid ? a->consolidated_paid_at : entered;
		episode = 1;
		acct_bd = cus_bd = meta_bd = banned = !paid;
		ent = paid ? "full" : "suspended";
		platform = true;
		flags = false;
		nsp = !paid && !paid_any;
		for (int k = a->n_cycles - a->n_unpaid; ok && k < a->n_cycles; k++) {
			char inv[32];
			invoice_id(g, MAX_CYCLES - a->n_cycles + k, a->idx, inv, sizeof inv);
			ok = put_email(g, a, notice, inv, inv, "sent", cycle_created(a, k) + 60);
		}
		if (ok)
			ok = put_email(g, a, DUN_EMAIL_RESTRICTED, "ep1", "", "sent",
				       first_fail + 7 * DAY);
		if (ok)
			ok = put_email(g, a, DUN_EMAIL_SUSPENDED, "ep1", "", "sent",
				       first_fail + 14 * DAY);
		if (ok)
			ok = put_email(g, a, DUN_EMAIL_BAD_DEBT, "bd1", "", "sent", entered);
		if (ok && paid)
			ok = put_email(g, a, DUN_EMAIL_RESOLVED, "ep1", "", "sent",
				       a->consolidated_paid_at);
		if (ok)
			ok = put_episode(g, a, 1, entered, paid ? a->consolidated_paid_at : 0,
					 paid ? "paid" : "");
		break;
	}
	}

	switch (a->plant) {
	case PL_NONE:
		break;
	case PL_STUCK:
		acct_bd = cus_bd = meta_bd = true;
		break;
	case PL_STUCK_BANNED:
		acct_bd = cus_bd = meta_bd = banned = true;
		ent = "suspended";
		platform = true;
		stage = "bad_debt";
		since = now - 20 * DAY;
		episode = 1;
		if (ok)
			ok = put_episode(g, a, 1, since, 0, "");
		break;
	case PL_FLAGS_DISAGREE:
		cus_bd = true;
		break;
	case PL_STALE_BAN:
		banned = true;
		platform = true;
		break;
	case PL_STALE_NSP:
		nsp = true;
		break;
	case PL_MISSED_BAD_DEBT:
		stage = "suspended";
		since = first_fail + 14 * DAY;
		episode = 1;
		ent = "suspended";
		platform = true;
		if (ok)
			ok = put_email(g, a, notice, inv_prev, inv_prev, "sent", first_fail + 60);
		if (ok)
			ok = put_email(g, a, DUN_EMAIL_SUSPENDED, "ep1", "", "sent", since);
		break;
	case PL_STAGE_ONLY:
		stage = "notified";
		since = now - 3 * DAY;
		episode = 1;
		break;
	}

	if (a->odd & ODD_FLAGS) {
		acct_bd = below(&s, 2);
		cus_bd = below(&s, 2);
		meta_bd = below(&s, 2);
		nsp = below(&s, 2);
	}
	if (a->odd & ODD_PLATFORM) {
		platform = true;
		banned = below(&s, 2);
		ent = dun_entitlement_name((enum dun_entitlement)below(&s, DUN_ENTITLEMENT__COUNT));
	}
	if (a->odd & ODD_STRINGS) {
		if (stage)
			stage = "legacy_hold";
		ent = "partial";
	}
	if (a->odd & ODD_EMAIL_STATES) {
		if (ok)
			ok = put_email(g, a, DUN_EMAIL_RESTRICTED, "ep9", "", "failed", now - DAY);
		if (ok)
			ok = put_email(g, a, notice, inv_last, inv_last, "pending", now - HOUR);
	}
	if (ok && (a->odd & ODD_EPISODES)) {
		ok = put_episode(g, a, 7, now - 200 * DAY, now - 150 * DAY, "resolved");
		if (ok)
			ok = put_episode(g, a, 8, now - 100 * DAY, 0, "");
	}
	if (!ok)
		return false;

	char email[64], name[48];
	snprintf(email, sizeof email, "billing+%s@example.com", a->id);
	snprintf(name, sizeof name, "Customer %" PRId64, a->idx + 1);
	struct dun_stmt *st = g->account;
	text(st, 1, a->id);
	text(st, 2, dun_segment_name(a->segment));
	i64(st, 3, acct_bd);
	i64(st, 4, nsp);
	i64(st, 5, a->kill_switch);
	text(st, 6, (a->odd & ODD_NO_PCUSTOMER) ? "" : email);
	text(st, 7, name);
	i64(st, 8, now - 400 * DAY);
	if (!step(g, st))
		return false;
	g->counts->accounts++;

	for (int c = 0; c < a->n_customers; c++) {
		const char *sub_status = "active";
		if (c == 0 && (a->sc == SC_BAD_DEBT || a->sc == SC_PAID_BAD_DEBT))
			sub_status = "canceled";
		else if (c == 0 && (a->sc == SC_FAILING || a->plant == PL_MISSED_BAD_DEBT))
			sub_status = "past_due";
		if (c == 0 && (a->odd & ODD_STRINGS))
			sub_status = "legacy";
		if (!put_customer(g, a, c, c == 0 && cus_bd, c == 0 && meta_bd) ||
		    !put_sub(g, a, c, sub_status))
			return false;
	}
	if (stage && !put_dunning(g, a, stage, since, episode))
		return false;
	if (platform && !put_platform(g, a, banned, ent, flags))
		return false;
	if (a->plant != PL_NONE) {
		unsigned m = expect_of(a->plant);
		g->counts->planted++;
		for (int i = 0; i < DUN_DRIFT__COUNT; i++)
			if (m & (1u << i))
				g->counts->expect[i]++;
	}
	return true;
}

/* ---- pass 2: invoices, attempts and documents, month by month --------------------- */

struct inv {
	uint64_t seq; /* unique per invoice: names its attempts */
	char id[128];
	const char *customer;
	const char *sub;
	const char *status;
	int64_t due, paid, remaining;
	int attempts;
	const char *reason;
	const char *collection;
	int64_t created, paid_at;
	bool has_bd_amount;
	int64_t bd_amount;
	bool bd_paid;
	const char *covers; /* NULL: not consolidated */
};

static bool put_attempt(struct gen *g, const struct acct *a, const struct inv *v, int n,
			int64_t created, const char *status, const struct decline *d)
{
	if (g->writes != WRITE_MIRROR)
		return true;
	char id[32], pi[160];
	base36(id, sizeof id, "py_", v->seq << 4 | (uint64_t)n, 11);
	snprintf(pi, sizeof pi, "pi_%s", v->id + 3);
	struct dun_stmt *st = g->attempt;
	text(st, 1, id);
	text(st, 2, v->id);
	text(st, 3, pi);
	i64(st, 4, created);
	text(st, 5, status);
	text(st, 6, a->pm);
	if (d) {
		char longcode[80];
		const char *code = d->code;
		if (a->odd & ODD_LONG_TEXT) {
			snprintf(longcode, sizeof longcode, "%s_%s_%s", d->code, d->code,
				 "with_a_very_long_suffix");
			code = longcode;
		}
		text(st, 7, code);
		text(st, 8, d->advice);
		text(st, 9, d->network);
	} else {
		text(st, 7, "");
		text(st, 8, "");
		text(st, 9, "");
	}
	i64(st, 10, created);
	text(st, 11, a->id); /* the invoice's account: its customer's (put_customer) */
	g->counts->attempts++;
	return step(g, st);
}

static bool put_invoice(struct gen *g, const struct acct *a, const struct inv *v)
{
	if (g->writes != WRITE_MIRROR)
		return true;
	char url[512], pi[160], md[1600];
	if (a->odd & ODD_LONG_TEXT) {
		snprintf(url, sizeof url, "https://invoice.example.invalid/i/%s?%0300d", v->id, 7);
	} else {
		snprintf(url, sizeof url, "https://invoice.example.invalid/i/%s", v->id);
	}
	snprintf(pi, sizeof pi, "pi_%s", v->id + 3);
	/* The metadata as the mirror stores it: compact, keys sorted. */
	size_t n = (size_t)snprintf(md, sizeof md, "{");
	if (v->has_bd_amount)
		n += (size_t)snprintf(md + n, sizeof md - n, "\"bad_debt_amount\":\"%" PRId64 "\"",
				      v->bd_amount);
	if (v->covers && n < sizeof md)
		n += (size_t)snprintf(md + n, sizeof md - n, "%s\"bad_debt_invoices\":\"%s\"",
				      n > 1 ? "," : "", v->covers);
	if (v->bd_paid && n < sizeof md)
		n += (size_t)snprintf(md + n, sizeof md - n, "%s\"bad_debt_paid\":\"true\"",
				      n > 1 ? "," : "");
	if (n < sizeof md)
		snprintf(md + n, sizeof md - n, "}");
	struct dun_stmt *st = g->invoice;
	text(st, 1, v->id);
	text(st, 2, v->customer);
	text(st, 3, v->sub);
	text(st, 4, v->status);
	i64(st, 5, v->due);
	i64(st, 6, v->paid);
	i64(st, 7, v->remaining);
	i64(st, 8, v->attempts);
	text(st, 9, v->reason);
	text(st, 10, v->collection);
	i64(st, 11, v->created);
	i64(st, 12, v->paid_at);
	text(st, 13, url);
	text(st, 14, pi);
	if (v->has_bd_amount)
		i64(st, 15, v->bd_amount);
	else
		dun_stmt_bind_null(st, 15);
	i64(st, 16, v->bd_paid);
	if (v->covers)
		text(st, 17, v->covers);
	else
		dun_stmt_bind_null(st, 17);
	text(st, 18, md);
	i64(st, 19, v->paid_at ? v->paid_at : v->created);
	text(st, 20, a->id); /* every customer of an account is linked to it (put_customer) */
	g->counts->invoices++;
	return step(g, st);
}

static bool put_doc(struct gen *g, const struct acct *a, const char *invoice, bool closed,
		    bool paylinks, int64_t at)
{
	if (g->writes != WRITE_DOCS)
		return true;
	struct dun_stmt *st = g->doc;
	text(st, 1, invoice);
	i64(st, 2, closed);
	i64(st, 3, paylinks);
	i64(st, 4, at);
	text(st, 5, a->id); /* the invoice's account (schema migration 19) */
	g->counts->docs++;
	return step(g, st);
}

/* A paid invoice: one succeeded attempt, sometimes after a failed one. */
static bool paid_invoice(struct gen *g, const struct acct *a, struct inv *v, uint64_t *s)
{
	bool retried = chance(s, 500);
	int64_t t = v->created + 60;
	v->status = "paid";
	v->paid = v->due;
	v->remaining = 0;
	v->attempts = retried ? 2 : 1;
	v->paid_at = retried ? v->created + DAY : t;
	if (!put_invoice(g, a, v))
		return false;
	if (retried && !put_attempt(g, a, v, 0, t, "failed", &declines[0]))
		return false;
	if (!put_attempt(g, a, v, 1, v->paid_at, "succeeded", NULL))
		return false;
	if (chance(s, 1000) && !put_doc(g, a, v->id, true, false, v->paid_at))
		return false;
	return true;
}

/* An unpaid invoice: failed attempts on the retry schedule that has come due. */
static bool unpaid_invoice(struct gen *g, const struct acct *a, struct inv *v, bool uncollectible,
			   uint64_t *s)
{
	static const int64_t offsets[] = {0, 1 * DAY, 3 * DAY, 5 * DAY, 7 * DAY};
	const struct decline *d = &declines[a->decline];
	const int64_t now = g->cfg->now;
	int n = 0;
	int64_t times[5];
	for (int i = 0; i < 5; i++) {
		int64_t t = v->created + offsets[i];
		if (t > now - HOUR || (d->hard && i > 0))
			break;
		times[n++] = (a->odd & ODD_TIES) && i == 1 ? times[0] : t;
	}
	if (!n)
		times[n++] = v->created;
	v->status = uncollectible ? "uncollectible" : "open";
	v->paid = 0;
	v->remaining = v->due;
	v->attempts = n;
	v->paid_at = 0;
	if (uncollectible) {
		v->has_bd_amount = true;
		v->bd_amount = v->due;
		v->bd_paid = a->sc == SC_PAID_BAD_DEBT;
	}
	if ((a->odd & ODD_STRINGS) && chance(s, 3000))
		v->status = "legacy";
	if (!put_invoice(g, a, v))
		return false;
	for (int i = 0; i < n; i++)
		if (!put_attempt(g, a, v, i, times[i], "failed", d))
			return false;
	if ((a->odd & ODD_PROCESSING) && !put_attempt(g, a, v, 9, now - HOUR, "processing", NULL))
		return false;
	if ((a->odd & ODD_STRINGS) && !put_attempt(g, a, v, 10, now - 2 * HOUR, "legacy", NULL))
		return false;
	if (a->sc == SC_PAID_BAD_DEBT)
		return put_doc(g, a, v->id, true, false, a->consolidated_paid_at);
	if (a->sc == SC_BAD_DEBT || chance(s, 5000))
		return put_doc(g, a, v->id, false, true, v->created);
	return true;
}

static bool consolidated_invoice(struct gen *g, const struct acct *a, uint64_t *s)
{
	/* The originals it covers; the edge mix lists 70 (more than a state keeps). */
	char covers[80 * 16] = "";
	size_t len = 0;
	int n = (a->odd & ODD_MANY_COVERS) ? 70 : a->n_unpaid;
	for (int i = 0; i < n && len < sizeof covers; i++) {
		char id[32];
		if (i < a->n_unpaid)
			invoice_id(g, MAX_CYCLES - a->n_unpaid + i, a->idx, id, sizeof id);
		else
			base36(id, sizeof id, "in_", mix64((uint64_t)i), 9);
		const char *sep = !len ? "" : (a->odd & ODD_TIES) ? ", " : ",";
		len += (size_t)snprintf(covers + len, sizeof covers - len, "%s%s", sep, id);
	}
	struct inv v = {0};
	v.seq = invoice_seq(g, SLOT_CONSOLIDATED, a->idx);
	invoice_id(g, SLOT_CONSOLIDATED, a->idx, v.id, sizeof v.id);
	v.customer = a->cus[0];
	v.sub = "";
	v.due = a->amount_minor * (a->n_unpaid ? a->n_unpaid : 1);
	v.reason = "manual";
	v.collection = "send_invoice";
	v.covers = covers;
	if (a->sc == SC_PAID_BAD_DEBT) {
		v.created = a->consolidated_paid_at - 2 * DAY;
		v.status = "paid";
		v.paid = v.due;
		v.attempts = 1;
		v.paid_at = a->consolidated_paid_at;
		if (!put_invoice(g, a, &v))
			return false;
		return put_attempt(g, a, &v, 1, v.paid_at, "succeeded", NULL);
	}
	/* Edge mix: an open consolidated invoice within the lifting window. */
	v.created = g->cfg->now - between(s, HOUR, 30 * HOUR);
	v.status = "open";
	v.remaining = v.due;
	return put_invoice(g, a, &v);
}

static bool pass2_slot(struct gen *g, const struct acct *a, int slot)
{
	uint64_t s = a->draws ^ (uint64_t)slot * 0x9e3779b97f4a7c15ULL;
	struct inv v = {0};
	v.seq = invoice_seq(g, slot, a->idx);
	invoice_id(g, slot, a->idx, v.id, sizeof v.id);
	v.customer = a->cus[0];
	v.sub = a->sub[0];
	v.due = a->amount_minor;
	v.collection = "charge_automatically";
	if (slot < MAX_CYCLES) {
		int k = slot - (MAX_CYCLES - a->n_cycles);
		if (k < 0 || k >= a->n_cycles)
			return true;
		v.created = cycle_created(a, k);
		v.reason = k == 0 ? "subscription_create" : "subscription_cycle";
		if ((a->odd & ODD_EMPTY_COVERS) && k == 0)
			v.covers = "";
		if (!unpaid_cycle(a, k)) {
			/* An id longer than a state keeps (nothing refers to paid ones). */
			if ((a->odd & ODD_LONG_TEXT) && k == 0)
				strcat(v.id, "_with_a_suffix_that_makes_it_longer_than_any_id_a_"
					     "state_keeps");
			return paid_invoice(g, a, &v, &s);
		}
		bool uncollectible = a->sc == SC_BAD_DEBT || a->sc == SC_PAID_BAD_DEBT;
		return unpaid_invoice(g, a, &v, uncollectible, &s);
	}
	if (slot == SLOT_UPGRADE) {
		if (!a->upgrade)
			return true;
		v.created = cycle_created(a, 0) + 10 * DAY;
		v.reason = "subscription_update";
		v.due = a->amount_minor / 2;
		return paid_invoice(g, a, &v, &s);
	}
	if (slot == SLOT_CONSOLIDATED) {
		if (a->sc != SC_PAID_BAD_DEBT && !(a->odd & ODD_OPEN_CONSOL))
			return true;
		return consolidated_invoice(g, a, &s);
	}
	if (a->n_customers < 2)
		return true;
	v.customer = a->cus[1];
	v.sub = a->sub[1];
	v.created = g->cfg->now - between(&s, DAY, 29 * DAY);
	v.reason = "subscription_create";
	return paid_invoice(g, a, &v, &s);
}

/* A few rows whose account does not exist, between and after real ids. */
static bool put_orphans(struct gen *g)
{
	static const char *const ids[] = {"acct_0000000x", "acct_zzzz", "acct_0000001x"};
	for (size_t i = 0; i < sizeof ids / sizeof ids[0]; i++) {
		struct acct a;
		memset(&a, 0, sizeof a);
		snprintf(a.id, sizeof a.id, "%s", ids[i]);
		snprintf(a.cus[0], sizeof a.cus[0], "cus_orphan%zu", i);
		snprintf(a.sub[0], sizeof a.sub[0], "sub_orphan%zu", i);
		snprintf(a.pm, sizeof a.pm, "pm_orphan%zu", i);
		a.idx = g->cfg->accounts + (int64_t)i;
		a.n_cycles = 1;
		if (!put_platform(g, &a, true, "suspended", false) ||
		    !put_dunning(g, &a, "bad_debt", g->cfg->now - DAY, 1) ||
		    !put_email(g, &a, DUN_EMAIL_BAD_DEBT, "bd1", "", "sent", g->cfg->now) ||
		    !put_episode(g, &a, 1, g->cfg->now - DAY, 0, "") ||
		    !put_customer(g, &a, 0, true, true) || !put_sub(g, &a, 0, "active"))
			return false;
		struct inv v = {0};
		v.seq = (uint64_t)N_SLOTS * (uint64_t)g->cfg->accounts + i;
		snprintf(v.id, sizeof v.id, "in_orphan%zu", i);
		v.customer = a.cus[0];
		v.sub = a.sub[0];
		v.due = 5000;
		v.reason = "subscription_cycle";
		v.collection = "charge_automatically";
		v.created = g->cfg->now - DAY;
		/* The mirror's rows, then the document: the same draws twice. */
		struct inv w = v;
		uint64_t s = i, t = i;
		g->writes = WRITE_MIRROR;
		if (!unpaid_invoice(g, &a, &v, false, &s))
			return false;
		g->writes = WRITE_DOCS;
		if (!unpaid_invoice(g, &a, &w, false, &t))
			return false;
	}
	return true;
}

/* ---- driver --------------------------------------------------------------------- */

static bool prepare_all(struct gen *g)
{
	return prepare(g, &g->account,
		       "INSERT INTO accounts(id, segment, bad_debt, no_successful_payment,"
		       " kill_switch, email, name, created_at) VALUES (?,?,?,?,?,?,?,?)") &&
	       prepare(g, &g->customer,
		       "INSERT INTO customers(id, account_id, bad_debt) VALUES (?,?,?)") &&
	       prepare(g, &g->pcustomer,
		       "INSERT INTO p_customers(id, account_id, email, name,"
		       " default_payment_method, meta_bad_debt, metadata, version,"
		       " linked_account_id) VALUES (?,?,?,?,?,?,?,?,?)") &&
	       prepare(g, &g->sub,
		       "INSERT INTO p_subscriptions(id, customer_id, status, version, account_id)"
		       " VALUES (?,?,?,?,?)") &&
	       prepare(g, &g->dunning,
		       "INSERT INTO dunning(account_id, stage, since, episode, updated_at)"
		       " VALUES (?,?,?,?,?)") &&
	       prepare(g, &g->platform,
		       "INSERT INTO platform(account_id, banned, entitlement, resource_flags,"
		       " updated_at) VALUES (?,?,?,?,?)") &&
	       prepare(
		   g, &g->episode,
		   "INSERT INTO bad_debt_episodes(account_id, episode, entered_at, reason,"
		   " products, amount_minor, exited_at, exit_reason) VALUES (?,?,?,?,?,?,?,?)") &&
	       prepare(g, &g->email,
		       "INSERT OR IGNORE INTO emails(key, account_id, kind, invoice_id, to_addr, "
		       "subject,"
		       " body, message_id, state, attempts, created_at, sent_at)"
		       " VALUES (?,?,?,?,?,?,?,?,?,?,?,?)") &&
	       prepare(g, &g->invoice,
		       "INSERT INTO p_invoices(id, customer_id, subscription_id, status,"
		       " amount_due, amount_paid, amount_remaining, attempt_count, billing_reason,"
		       " collection_method, created, paid_at, hosted_invoice_url, payment_intent,"
		       " meta_bad_debt_amount, meta_bad_debt_paid, meta_bad_debt_invoices,"
		       " metadata, version, account_id) VALUES (?1,?2,?3,?4,?5,?6,?7,?8,?9,?10,"
		       "?11,?12,?13,?14,?15,?16,?17,?18,?19,?20)") &&
	       prepare(g, &g->attempt,
		       "INSERT INTO p_attempts(id, invoice_id, payment_intent, created, status,"
		       " payment_method, decline_code, advice_code, network_advice_code, version,"
		       " account_id) VALUES (?1,?2,?3,?4,?5,?6,?7,?8,?9,?10,?11)") &&
	       prepare(g, &g->doc,
		       "INSERT INTO invoice_docs(invoice_id, closed, paylinks_enabled, updated_at,"
		       " account_id) VALUES (?,?,?,?,?)");
}

static void finalize_all(struct gen *g)
{
	struct dun_stmt *all[] = {g->account, g->customer, g->pcustomer, g->sub,
				  g->dunning, g->platform, g->episode,	 g->email,
				  g->invoice, g->attempt,  g->doc};
	for (size_t i = 0; i < sizeof all / sizeof all[0]; i++)
		dun_stmt_finalize(all[i]);
}

static bool batch(struct gen *g, int64_t *n)
{
	if (++*n % BATCH)
		return true;
	return exec(g, "COMMIT; BEGIN");
}

static bool store_settings(struct gen *g)
{
	char buf[160];
	const struct dun_bench_gen_config *c = g->cfg;
	snprintf(buf, sizeof buf,
		 "version=%s accounts=%" PRId64 " seed=%" PRIu64 " now=%" PRId64 " edge=%d",
		 DUN_BENCH_GEN_VERSION, c->accounts, c->seed, c->now, c->edge ? 1 : 0);
	if (dun_db_setting_set(g->db, DUN_BENCH_KEY_PARAMS, buf) != DUN_OK)
		return false;
	snprintf(buf, sizeof buf, "%" PRId64, c->now);
	if (dun_db_setting_set(g->db, DUN_BENCH_KEY_NOW, buf) != DUN_OK)
		return false;
	for (int i = 0; i < DUN_DRIFT__COUNT; i++) {
		char key[96];
		snprintf(key, sizeof key, "%s%s", DUN_BENCH_KEY_EXPECT,
			 dun_drift_name((enum dun_drift_class)i));
		snprintf(buf, sizeof buf, "%" PRId64, g->counts->expect[i]);
		if (dun_db_setting_set(g->db, key, buf) != DUN_OK)
			return false;
	}
	snprintf(buf, sizeof buf, "%" PRId64, g->counts->planted);
	return dun_db_setting_set(g->db, DUN_BENCH_KEY_EXPECT "drifting", buf) == DUN_OK;
}

/*
 * Secondary indexes are dropped during the load and built once at the end:
 * SQLite sorts and builds them bottom-up, far faster than row by row. Their
 * SQL is taken from the schema itself, so they come back exactly as the
 * migrations made them. The triggers go with them (those on customers
 * move a customer's invoices): the load writes account_id itself, as the
 * mirror does.
 */
#define MAX_INDEXES 128

static bool load(struct gen *g);

struct indexes {
	char *sql[MAX_INDEXES];
	int n;
};

static bool drop_indexes(struct gen *g, struct indexes *ix)
{
	struct dun_stmt *st = NULL;
	if (!prepare(g, &st,
		     "SELECT name, sql, type FROM sqlite_master WHERE type IN ('index', 'trigger')"
		     " AND sql IS NOT NULL ORDER BY rowid"))
		return false;
	char names[MAX_INDEXES][128];
	bool trigger[MAX_INDEXES];
	ix->n = 0;
	while (dun_stmt_row(st) && ix->n < MAX_INDEXES) {
		snprintf(names[ix->n], sizeof names[0], "%s", dun_stmt_col_text(st, 0));
		trigger[ix->n] = strcmp(dun_stmt_col_text(st, 2), "trigger") == 0;
		ix->sql[ix->n++] = dun_strdup(dun_stmt_col_text(st, 1));
	}
	dun_stmt_finalize(st);
	for (int i = 0; i < ix->n; i++) {
		char sql[160];
		snprintf(sql, sizeof sql, "DROP %s \"%.127s\"", trigger[i] ? "TRIGGER" : "INDEX",
			 names[i]);
		if (!exec(g, sql))
			return false;
	}
	return true;
}

static bool create_indexes(struct gen *g, struct indexes *ix)
{
	bool ok = true;
	for (int i = 0; i < ix->n; i++) {
		ok = ok && exec(g, ix->sql[i]);
		free(ix->sql[i]);
	}
	ix->n = 0;
	return ok;
}

static bool generate(struct gen *g)
{
	struct indexes ix = {.n = 0};
	bool ok = drop_indexes(g, &ix) && load(g);
	if (!g->cfg->quiet)
		fprintf(stderr, "gen: building indexes\n");
	ok = create_indexes(g, &ix) && ok;
	return ok && exec(g, "PRAGMA journal_mode=WAL");
}

static bool load(struct gen *g)
{
	const int64_t n = g->cfg->accounts;
	int64_t done = 0;
	struct acct a;
	/* Bulk load: no journal, no fsync; the file is renamed into place when complete. */
	if (!exec(g, "PRAGMA journal_mode=DELETE") || !exec(g, "PRAGMA journal_mode=OFF") ||
	    !exec(g, "PRAGMA synchronous=OFF") || !exec(g, "PRAGMA cache_size=-1000000") ||
	    !prepare_all(g) || !exec(g, "BEGIN"))
		return false;
	/* Each account's rows, its invoices and attempts with them: the tables
	 * the scan reads are keyed by account first, so every insert lands at
	 * the end of its B-tree (in billing order, each one landed anywhere in
	 * a table far larger than the page cache). */
	g->writes = WRITE_MIRROR;
	for (int64_t i = 0; i < n; i++) {
		describe(g, i, &a);
		if (!pass1_account(g, &a) || !batch(g, &done))
			return false;
		for (int slot = 0; slot < N_SLOTS && a.n_customers > 0; slot++)
			if (!pass2_slot(g, &a, slot))
				return false;
		if (!g->cfg->quiet && (i + 1) % 100000 == 0)
			fprintf(stderr,
				"gen: accounts %" PRId64 "/%" PRId64 ", invoices %" PRId64 "\n",
				i + 1, n, g->counts->invoices);
	}
	/* Invoice documents, month by month in billing order, as a real
	 * service creates them: a rowid table, so they are stored in that
	 * order and a scan in account order probes them at random. */
	g->writes = WRITE_DOCS;
	for (int slot = 0; slot < N_SLOTS; slot++) {
		for (int64_t pos = 0; pos < n; pos++) {
			describe(g, billing_order(g, slot, pos), &a);
			if (a.n_customers == 0)
				continue;
			if (!pass2_slot(g, &a, slot) || !batch(g, &done))
				return false;
		}
	}
	if (!g->cfg->quiet)
		fprintf(stderr, "gen: %" PRId64 " invoice documents\n", g->counts->docs);
	return put_orphans(g) && store_settings(g) && exec(g, "COMMIT");
}

enum dun_err dun_bench_gen_run(const struct dun_bench_gen_config *cfg,
			       struct dun_bench_gen_counts *out, char *err, size_t err_size)
{
	memset(out, 0, sizeof *out);
	struct gen g = {.cfg = cfg, .counts = out, .err = err, .err_size = err_size};
	if (cfg->accounts < 1 || cfg->accounts > 100000000) {
		snprintf(err, err_size, "accounts must be between 1 and 100000000");
		return DUN_E_INVALID;
	}
	enum dun_err e = dun_db_open(cfg->path, &g.db, err, err_size);
	if (e != DUN_OK)
		return e;
	g.bill_a = 2654435761u % (uint64_t)cfg->accounts;
	g.bill_a_inv = inverse_mod(g.bill_a, (uint64_t)cfg->accounts);
	bool ok = generate(&g);
	if (!ok)
		dun_db_rollback(g.db);
	finalize_all(&g);
	dun_db_close(g.db);
	return ok ? DUN_OK : DUN_E_STORE;
}
