/*
 * report.c — the read side operators look at after the pipeline has run:
 * what became of failed invoices (recovered, and how; written off; still
 * open) and why accounts entered bad debt. Reads only; see report.h for the
 * definitions. `dunning report` and /metrics (src/server/metrics_db.c)
 * both call here, so a dashboard and a report never disagree.
 */
#include "report.h"

#include <stdlib.h>
#include <string.h>

#include "util/mem.h"

#define NAME_CASE(name, str) \
	case name:           \
		return str;

const char *dun_recovery_name(enum dun_recovery r)
{
	switch (r) {
		DUN_RECOVERY_LIST(NAME_CASE)
	}
	return "unknown";
}

bool dun_recovery_is_recovered(enum dun_recovery r)
{
	switch (r) {
	case DUN_RECOVERY_RETRY:
	case DUN_RECOVERY_CARD_UPDATE:
	case DUN_RECOVERY_OTHER:
	case DUN_RECOVERY_PAY_BAD_DEBT:
		return true;
	case DUN_RECOVERY_WRITTEN_OFF:
	case DUN_RECOVERY_OPEN:
		return false;
	}
	return false;
}

int64_t dun_report_week(int64_t t)
{
	/* 1970-01-01 was a Thursday: day 4 is the first Monday. */
	int64_t day = t >= 0 ? t / 86400 : (t - 86399) / 86400;
	int64_t since_monday = ((day - 4) % 7 + 7) % 7;
	return (day - since_monday) * 86400;
}

const char *dun_report_entry_reason(const char *text)
{
	if (!text)
		return "other";
	if (!strncmp(text, "uncollectible invoice", strlen("uncollectible invoice")))
		return "uncollectible";
	if (!strncmp(text, "oldest failing invoice", strlen("oldest failing invoice")))
		return "days_past_due";
	if (!strncmp(text, "upgrade invoice", strlen("upgrade invoice")))
		return "upgrade_invoice";
	return "other";
}

/*
 * One row per failed invoice: the attempts decide how it was paid. The
 * consolidated invoices of pay-bad-debt (they carry the list of originals
 * they cover) are left out; their originals are counted.
 */
static const char recovery_sql[] =
    "SELECT i.currency, i.status, i.amount_due, i.amount_paid, i.amount_remaining,"
    " i.meta_bad_debt_paid,"
    " (SELECT MIN(f.created) FROM p_attempts f WHERE f.invoice_id = i.id"
    "  AND f.status = 'failed'),"
    " (SELECT COUNT(*) FROM p_attempts s WHERE s.invoice_id = i.id"
    "  AND s.status = 'succeeded'),"
    " (SELECT COUNT(*) FROM p_attempts s WHERE s.invoice_id = i.id"
    "  AND s.status = 'succeeded' AND s.payment_method <> '' AND s.payment_method NOT IN"
    "  (SELECT f.payment_method FROM p_attempts f WHERE f.invoice_id = i.id"
    "   AND f.status = 'failed'))"
    " FROM p_invoices i WHERE i.meta_bad_debt_invoices IS NULL AND EXISTS"
    " (SELECT 1 FROM p_attempts a WHERE a.invoice_id = i.id AND a.status = 'failed')";

static enum dun_recovery classify(const char *status, bool bad_debt_paid, int64_t succeeded,
				  int64_t new_card)
{
	if (!strcmp(status, "paid")) {
		if (new_card > 0)
			return DUN_RECOVERY_CARD_UPDATE;
		return succeeded > 0 ? DUN_RECOVERY_RETRY : DUN_RECOVERY_OTHER;
	}
	if (!strcmp(status, "uncollectible") || !strcmp(status, "void"))
		return bad_debt_paid ? DUN_RECOVERY_PAY_BAD_DEBT : DUN_RECOVERY_WRITTEN_OFF;
	return DUN_RECOVERY_OPEN;
}

static struct dun_recovery_row *row_for(struct dun_recovery_table *t, int64_t week,
					const char *currency)
{
	for (int i = 0; i < t->n; i++)
		if (t->rows[i].week == week && !strcmp(t->rows[i].currency, currency))
			return &t->rows[i];
	if (t->n == t->cap) {
		t->cap = t->cap ? t->cap * 2 : 16;
		t->rows = dun_realloc(t->rows, (size_t)t->cap * sizeof *t->rows);
	}
	struct dun_recovery_row *r = &t->rows[t->n++];
	memset(r, 0, sizeof *r);
	r->week = week;
	size_t n = strlen(currency);
	if (n >= sizeof r->currency)
		n = sizeof r->currency - 1;
	memcpy(r->currency, currency, n);
	r->currency[n] = '\0';
	return r;
}

static int by_week_currency(const void *a, const void *b)
{
	const struct dun_recovery_row *x = a, *y = b;
	if (x->week != y->week)
		return x->week < y->week ? -1 : 1;
	return strcmp(x->currency, y->currency);
}

enum dun_err dun_report_recovery(struct dun_db *db, int64_t since, int64_t until, bool by_week,
				 struct dun_recovery_table *t)
{
	memset(t, 0, sizeof *t);
	struct dun_stmt *st = dun_db_stmt(db, recovery_sql);
	while (dun_stmt_row(st)) {
		int64_t first = dun_stmt_col_int64(st, 6);
		if ((since && first < since) || (until && first >= until))
			continue;
		const char *currency = dun_stmt_col_text(st, 0);
		const char *status = dun_stmt_col_text(st, 1);
		enum dun_recovery how =
		    classify(status ? status : "", dun_stmt_col_int64(st, 5) != 0,
			     dun_stmt_col_int64(st, 7), dun_stmt_col_int64(st, 8));
		struct dun_recovery_row *r =
		    row_for(t, by_week ? dun_report_week(first) : 0, currency ? currency : "");
		int64_t amount = how == DUN_RECOVERY_RETRY || how == DUN_RECOVERY_CARD_UPDATE ||
					 how == DUN_RECOVERY_OTHER
				     ? dun_stmt_col_int64(st, 3)
				     : dun_stmt_col_int64(st, 4);
		r->failed++;
		r->failed_minor += dun_stmt_col_int64(st, 2);
		r->count[how]++;
		r->amount_minor[how] += amount;
	}
	enum dun_err e = dun_stmt_err(st);
	dun_stmt_reset(st);
	if (e != DUN_OK) {
		dun_recovery_table_free(t);
		return e;
	}
	if (t->n > 1)
		qsort(t->rows, (size_t)t->n, sizeof *t->rows, by_week_currency);
	return DUN_OK;
}

void dun_recovery_table_free(struct dun_recovery_table *t)
{
	free(t->rows);
	memset(t, 0, sizeof *t);
}

enum dun_err dun_report_bad_debt(struct dun_db *db, int64_t since, int64_t until, int64_t now,
				 dun_bad_debt_fn fn, void *arg)
{
	/* A Stripe customer is billed in one currency: the account's invoices
	 * say which. */
	struct dun_stmt *st = dun_db_stmt(
	    db, "SELECT e.account_id, e.episode, e.entered_at, e.reason, e.products,"
		" e.amount_minor, e.exited_at, e.exit_reason,"
		" (SELECT MIN(i.currency) FROM p_invoices i JOIN customers c"
		"  ON c.account_id = i.account_id AND c.id = i.customer_id"
		"  WHERE c.account_id = e.account_id)"
		" FROM bad_debt_episodes e WHERE e.entered_at >= ?1 AND e.entered_at < ?2"
		" ORDER BY e.entered_at, e.account_id, e.episode");
	dun_stmt_bind_int64(st, 1, since);
	dun_stmt_bind_int64(st, 2, until ? until : INT64_MAX);
	int stop = 0;
	while (!stop && dun_stmt_row(st)) {
		struct dun_bad_debt_row r;
		memset(&r, 0, sizeof r);
		dun_stmt_col_copy(st, 0, r.account_id, sizeof r.account_id);
		r.episode = dun_stmt_col_int64(st, 1);
		r.entered_at = dun_stmt_col_int64(st, 2);
		dun_stmt_col_copy(st, 3, r.reason, sizeof r.reason);
		r.reason_class = dun_report_entry_reason(r.reason);
		dun_stmt_col_copy(st, 4, r.products, sizeof r.products);
		r.amount_minor = dun_stmt_col_int64(st, 5);
		r.exited_at = dun_stmt_col_int64(st, 6);
		dun_stmt_col_copy(st, 7, r.exit_reason, sizeof r.exit_reason);
		if (!dun_stmt_col_is_null(st, 8))
			dun_stmt_col_copy(st, 8, r.currency, sizeof r.currency);
		int64_t end = r.exited_at ? r.exited_at : now;
		r.stayed_s = end > r.entered_at ? end - r.entered_at : 0;
		stop = fn(&r, arg);
	}
	enum dun_err e = dun_stmt_err(st);
	dun_stmt_reset(st);
	return e;
}
