/*
 * metrics_db.c — the database's share of /metrics (see metrics_db.h). It
 * sits on the HTTP side, after the pipeline: it only reads what the
 * applier, the drift scan, the parity report and the senders recorded.
 * Every family is built in a memory buffer first and written out whole, so
 * a database error halfway leaves no half-written family (Prometheus would
 * refuse the whole scrape on a family that appears twice).
 *
 * Label values come from the database (email kinds, trigger kinds,
 * currencies, account ids); they are escaped as the text format asks.
 */
#include "metrics_db.h"

#include <jansson.h>
#include <stdlib.h>
#include <string.h>

#include "core/model.h"
#include "report/report.h"
#include "report/scans.h"
#include "util/mem.h"

/* A family written into its own buffer, copied to the scrape when whole. */
struct family {
	char *buf;
	size_t len;
	FILE *f;
};

static FILE *family_open(struct family *fam, const char *name, const char *type, const char *help)
{
	fam->buf = NULL;
	fam->len = 0;
	fam->f = open_memstream(&fam->buf, &fam->len);
	if (!fam->f)
		dun_oom();
	fprintf(fam->f, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, type);
	return fam->f;
}

static enum dun_err family_close(struct family *fam, FILE *out, enum dun_err e)
{
	fclose(fam->f);
	if (e == DUN_OK)
		fwrite(fam->buf, 1, fam->len, out);
	free(fam->buf);
	return e;
}

/* A label value as the text format wants it: \\, \" and \n escaped. */
static void label(FILE *f, const char *v)
{
	fputc('"', f);
	for (const char *p = v ? v : ""; *p; p++) {
		if (*p == '\\' || *p == '"')
			fputc('\\', f), fputc(*p, f);
		else if (*p == '\n')
			fputs("\\n", f);
		else
			fputc(*p, f);
	}
	fputc('"', f);
}

/* ---- drift --------------------------------------------------------------- */

static enum dun_err drift(FILE *out, struct dun_db *db, int64_t now)
{
	struct dun_scan_record r;
	enum dun_err e = dun_scans_last(db, &r);
	if (e != DUN_OK)
		return e;
	struct family fam;
	FILE *f = family_open(&fam, "dunning_drift_scan_recorded", "gauge",
			      "Whether a drift scan was ever recorded (1) or not (0).");
	fprintf(f, "dunning_drift_scan_recorded %d\n", r.found ? 1 : 0);
	family_close(&fam, out, DUN_OK);
	if (!r.found)
		return DUN_OK;
	f = family_open(&fam, "dunning_drift_accounts", "gauge",
			"Accounts drifting per class in the last recorded drift scan (observe "
			"accounts: their shadow).");
	for (int c = 0; c < DUN_DRIFT__COUNT; c++) {
		fputs("dunning_drift_accounts{class=", f);
		label(f, dun_drift_name((enum dun_drift_class)c));
		fprintf(f, "} %lld\n", (long long)r.per_class[c]);
	}
	family_close(&fam, out, DUN_OK);
	f = family_open(&fam, "dunning_drift_observe_real_accounts", "gauge",
			"Observe-mode accounts whose real stores drift, per class, in the last "
			"scan (information: the legacy system's business until cutover).");
	for (int c = 0; c < DUN_DRIFT__COUNT; c++) {
		fputs("dunning_drift_observe_real_accounts{class=", f);
		label(f, dun_drift_name((enum dun_drift_class)c));
		fprintf(f, "} %lld\n", (long long)r.observe_real[c]);
	}
	family_close(&fam, out, DUN_OK);
	int64_t age = now > r.at ? now - r.at : 0;
	fprintf(out,
		"# HELP dunning_drift_drifting_accounts Accounts drifting in any class in the "
		"last scan.\n"
		"# TYPE dunning_drift_drifting_accounts gauge\n"
		"dunning_drift_drifting_accounts %lld\n"
		"# HELP dunning_drift_scanned_accounts Accounts the last scan evaluated.\n"
		"# TYPE dunning_drift_scanned_accounts gauge\n"
		"dunning_drift_scanned_accounts %lld\n"
		"# HELP dunning_drift_scan_timestamp_seconds When the last scan finished "
		"(unix seconds).\n"
		"# TYPE dunning_drift_scan_timestamp_seconds gauge\n"
		"dunning_drift_scan_timestamp_seconds %lld\n"
		"# HELP dunning_drift_scan_age_seconds Seconds since the last scan finished.\n"
		"# TYPE dunning_drift_scan_age_seconds gauge\n"
		"dunning_drift_scan_age_seconds %lld\n",
		(long long)r.drifting, (long long)r.accounts, (long long)r.at, (long long)age);
	return DUN_OK;
}

/* ---- bad debt ------------------------------------------------------------ */

#define N_REASON_LABELS 4
static const char *const reason_labels[N_REASON_LABELS] = {"uncollectible", "days_past_due",
							   "upgrade_invoice", "other"};

/* Upper bounds of the time-in-bad-debt histogram, in days. */
static const int duration_days[] = {1, 3, 7, 14, 30, 60, 90, 180, 365};
enum { N_DURATION = sizeof duration_days / sizeof duration_days[0] };

static enum dun_err bad_debt(FILE *out, struct dun_db *db)
{
	int64_t entries[N_REASON_LABELS] = {0};
	struct dun_stmt *st =
	    dun_db_stmt(db, "SELECT reason, COUNT(*) FROM bad_debt_episodes GROUP BY reason");
	while (dun_stmt_row(st)) {
		const char *l = dun_report_entry_reason(dun_stmt_col_text(st, 0));
		for (int i = 0; i < N_REASON_LABELS; i++)
			if (!strcmp(l, reason_labels[i]))
				entries[i] += dun_stmt_col_int64(st, 1);
	}
	enum dun_err e = dun_stmt_err(st);
	dun_stmt_reset(st);
	if (e != DUN_OK)
		return e;
	struct family fam;
	FILE *f = family_open(&fam, "dunning_bad_debt_entries_total", "counter",
			      "Bad-debt episodes opened, by why the account entered.");
	for (int i = 0; i < N_REASON_LABELS; i++)
		fprintf(f, "dunning_bad_debt_entries_total{reason=\"%s\"} %lld\n", reason_labels[i],
			(long long)entries[i]);
	family_close(&fam, out, DUN_OK);

	f = family_open(&fam, "dunning_bad_debt_exits_total", "counter",
			"Bad-debt episodes ended, by exit reason.");
	int64_t exits[DUN_EXIT_REASON__COUNT] = {0}, other_exits = 0;
	st = dun_db_stmt(db, "SELECT exit_reason, COUNT(*) FROM bad_debt_episodes"
			     " WHERE exited_at > 0 GROUP BY exit_reason");
	while (dun_stmt_row(st)) {
		enum dun_exit_reason r;
		const char *name = dun_stmt_col_text(st, 0);
		if (name && name[0] && dun_exit_reason_parse(name, &r))
			exits[r] += dun_stmt_col_int64(st, 1);
		else
			other_exits += dun_stmt_col_int64(st, 1);
	}
	e = dun_stmt_err(st);
	dun_stmt_reset(st);
	for (int r = 0; r < DUN_EXIT_REASON__COUNT; r++) {
		const char *name = dun_exit_reason_name((enum dun_exit_reason)r);
		if (!name[0])
			continue;
		fprintf(f, "dunning_bad_debt_exits_total{exit_reason=\"%s\"} %lld\n", name,
			(long long)exits[r]);
	}
	if (other_exits) /* written by a binary with exit reasons this one does not know */
		fprintf(f, "dunning_bad_debt_exits_total{exit_reason=\"unknown\"} %lld\n",
			(long long)other_exits);
	e = family_close(&fam, out, e);
	if (e != DUN_OK)
		return e;

	int64_t bucket[N_DURATION + 1] = {0}, count = 0, sum = 0;
	st = dun_db_stmt(db, "SELECT exited_at - entered_at FROM bad_debt_episodes"
			     " WHERE exited_at > 0");
	while (dun_stmt_row(st)) {
		int64_t d = dun_stmt_col_int64(st, 0);
		if (d < 0)
			d = 0;
		int b = 0;
		while (b < N_DURATION && d > (int64_t)duration_days[b] * 86400)
			b++;
		bucket[b]++;
		count++;
		sum += d;
	}
	e = dun_stmt_err(st);
	dun_stmt_reset(st);
	f = family_open(&fam, "dunning_bad_debt_duration_seconds", "histogram",
			"Time ended bad-debt episodes lasted, from entry to exit.");
	int64_t cum = 0;
	for (int b = 0; b < N_DURATION; b++) {
		cum += bucket[b];
		fprintf(f, "dunning_bad_debt_duration_seconds_bucket{le=\"%lld\"} %lld\n",
			(long long)duration_days[b] * 86400, (long long)cum);
	}
	cum += bucket[N_DURATION];
	fprintf(f,
		"dunning_bad_debt_duration_seconds_bucket{le=\"+Inf\"} %lld\n"
		"dunning_bad_debt_duration_seconds_sum %lld\n"
		"dunning_bad_debt_duration_seconds_count %lld\n",
		(long long)cum, (long long)sum, (long long)count);
	return family_close(&fam, out, e);
}

/* ---- money --------------------------------------------------------------- */

static enum dun_err money(FILE *out, struct dun_db *db)
{
	struct dun_recovery_table t;
	enum dun_err e = dun_report_recovery(db, 0, 0, false, &t);
	if (e != DUN_OK)
		return e;
	struct family fam;
	FILE *f = family_open(&fam, "dunning_invoices_failed_total", "counter",
			      "Invoices with at least one failed payment attempt, by currency.");
	for (int i = 0; i < t.n; i++) {
		fputs("dunning_invoices_failed_total{currency=", f);
		label(f, t.rows[i].currency);
		fprintf(f, "} %lld\n", (long long)t.rows[i].failed);
	}
	family_close(&fam, out, DUN_OK);
	f = family_open(&fam, "dunning_failed_invoices", "gauge",
			"Failed invoices by what became of them (retry, card_update, other, "
			"pay_bad_debt, written_off, open) and currency.");
	for (int i = 0; i < t.n; i++)
		for (int h = 0; h < DUN_RECOVERY__COUNT; h++) {
			fprintf(f, "dunning_failed_invoices{outcome=\"%s\",currency=",
				dun_recovery_name((enum dun_recovery)h));
			label(f, t.rows[i].currency);
			fprintf(f, "} %lld\n", (long long)t.rows[i].count[h]);
		}
	family_close(&fam, out, DUN_OK);
	f = family_open(&fam, "dunning_recovered_minor", "gauge",
			"Money of failed invoices recovered, in minor units, by how (retry, "
			"card_update, other, pay_bad_debt) and currency.");
	for (int i = 0; i < t.n; i++)
		for (int h = 0; h < DUN_RECOVERY__COUNT; h++) {
			if (!dun_recovery_is_recovered((enum dun_recovery)h))
				continue;
			fprintf(f, "dunning_recovered_minor{how=\"%s\",currency=",
				dun_recovery_name((enum dun_recovery)h));
			label(f, t.rows[i].currency);
			fprintf(f, "} %lld\n", (long long)t.rows[i].amount_minor[h]);
		}
	family_close(&fam, out, DUN_OK);
	f = family_open(&fam, "dunning_written_off_minor", "gauge",
			"Money of failed invoices written off (uncollectible or void, not paid "
			"back), in minor units, by currency.");
	for (int i = 0; i < t.n; i++) {
		fputs("dunning_written_off_minor{currency=", f);
		label(f, t.rows[i].currency);
		fprintf(f, "} %lld\n", (long long)t.rows[i].amount_minor[DUN_RECOVERY_WRITTEN_OFF]);
	}
	family_close(&fam, out, DUN_OK);
	f = family_open(&fam, "dunning_outstanding_minor", "gauge",
			"Money of failed invoices still owed (open), in minor units, by currency.");
	for (int i = 0; i < t.n; i++) {
		fputs("dunning_outstanding_minor{currency=", f);
		label(f, t.rows[i].currency);
		fprintf(f, "} %lld\n", (long long)t.rows[i].amount_minor[DUN_RECOVERY_OPEN]);
	}
	family_close(&fam, out, DUN_OK);
	dun_recovery_table_free(&t);
	return DUN_OK;
}

/* ---- emails, retries, decisions, shadow ------------------------------------- */

/* A family of one gauge or counter with two text labels, from a GROUP BY query. */
static enum dun_err grouped2(FILE *out, struct dun_db *db, const char *sql, const char *name,
			     const char *type, const char *help, const char *l1, const char *l2)
{
	struct family fam;
	FILE *f = family_open(&fam, name, type, help);
	struct dun_stmt *st = dun_db_stmt(db, sql);
	while (dun_stmt_row(st)) {
		fprintf(f, "%s{%s=", name, l1);
		label(f, dun_stmt_col_text(st, 0));
		fprintf(f, ",%s=", l2);
		label(f, dun_stmt_col_text(st, 1));
		fprintf(f, "} %lld\n", (long long)dun_stmt_col_int64(st, 2));
	}
	enum dun_err e = dun_stmt_err(st);
	dun_stmt_reset(st);
	return family_close(&fam, out, e);
}

/*
 * A retry is a payment attempt on an invoice after a failed one: its
 * decline class is the policy's class of the failure before it, its result
 * its own status. The window function pairs each attempt with the one
 * before it on the same invoice; the groups are classified here.
 */
static enum dun_err retries(FILE *out, struct dun_db *db, const struct dun_policy *policy)
{
	int64_t n[2][DUN_ATTEMPT_STATUS__COUNT] = {{0}};
	struct dun_stmt *st = dun_db_stmt(
	    db, "SELECT prev_decline, prev_advice, prev_network, status, COUNT(*) FROM"
		" (SELECT status,"
		"  LAG(status) OVER (PARTITION BY invoice_id ORDER BY created, id) AS prev_status,"
		"  LAG(decline_code) OVER (PARTITION BY invoice_id ORDER BY created, id)"
		"   AS prev_decline,"
		"  LAG(advice_code) OVER (PARTITION BY invoice_id ORDER BY created, id)"
		"   AS prev_advice,"
		"  LAG(network_advice_code) OVER (PARTITION BY invoice_id ORDER BY created, id)"
		"   AS prev_network"
		"  FROM p_attempts WHERE invoice_id IS NOT NULL AND invoice_id <> '') r"
		" WHERE prev_status = 'failed'"
		" GROUP BY prev_decline, prev_advice, prev_network, status");
	while (dun_stmt_row(st)) {
		struct dun_attempt a;
		memset(&a, 0, sizeof a);
		a.status = DUN_ATTEMPT_FAILED;
		dun_stmt_col_copy(st, 0, a.decline_code, sizeof a.decline_code);
		dun_stmt_col_copy(st, 1, a.advice_code, sizeof a.advice_code);
		dun_stmt_col_copy(st, 2, a.network_advice_code, sizeof a.network_advice_code);
		enum dun_attempt_status s;
		const char *status = dun_stmt_col_text(st, 3);
		if (!status || !dun_attempt_status_parse(status, &s))
			continue;
		enum dun_decline_class cls = dun_policy_classify(policy, &a, NULL);
		n[cls == DUN_DECLINE_HARD][s] += dun_stmt_col_int64(st, 4);
	}
	enum dun_err e = dun_stmt_err(st);
	dun_stmt_reset(st);
	struct family fam;
	FILE *f = family_open(&fam, "dunning_payment_retries_total", "counter",
			      "Payment attempts after a failed one on the same invoice, by the "
			      "decline class of that failure (soft, hard) and their result.");
	for (int c = 0; c < 2; c++)
		for (int s = 0; s < DUN_ATTEMPT_STATUS__COUNT; s++)
			fprintf(f,
				"dunning_payment_retries_total{decline_class=\"%s\",result=\"%s\"} "
				"%lld\n",
				c ? "hard" : "soft",
				dun_attempt_status_name((enum dun_attempt_status)s),
				(long long)n[c][s]);
	return family_close(&fam, out, e);
}

static enum dun_err decisions(FILE *out, struct dun_db *db)
{
	struct family fam;
	FILE *f = family_open(&fam, "dunning_decisions_total", "counter",
			      "Recompute decisions recorded, by trigger kind, mode (active, "
			      "observe: the shadow's) and outcome.");
	struct dun_stmt *st =
	    dun_db_stmt(db, "SELECT trigger_kind, mode, outcome, COUNT(*) FROM decisions"
			    " GROUP BY trigger_kind, mode, outcome");
	while (dun_stmt_row(st)) {
		const char *trigger = dun_stmt_col_text(st, 0);
		fputs("dunning_decisions_total{trigger=", f);
		label(f, trigger && trigger[0] ? trigger : "none");
		fputs(",mode=", f);
		label(f, dun_stmt_col_text(st, 1));
		fputs(",outcome=", f);
		label(f, dun_stmt_col_text(st, 2));
		fprintf(f, "} %lld\n", (long long)dun_stmt_col_int64(st, 3));
	}
	enum dun_err e = dun_stmt_err(st);
	dun_stmt_reset(st);
	return family_close(&fam, out, e);
}

static enum dun_err shadow(FILE *out, struct dun_db *db)
{
	struct family fam;
	FILE *f = family_open(&fam, "dunning_shadow_consequences_total", "counter",
			      "Consequences observe mode recorded in its shadow (what it would "
			      "have done), by type.");
	struct dun_stmt *st =
	    dun_db_stmt(db, "SELECT type, COUNT(*) FROM shadow_consequences GROUP BY type");
	while (dun_stmt_row(st)) {
		fputs("dunning_shadow_consequences_total{type=", f);
		label(f, dun_stmt_col_text(st, 0));
		fprintf(f, "} %lld\n", (long long)dun_stmt_col_int64(st, 1));
	}
	enum dun_err e = dun_stmt_err(st);
	dun_stmt_reset(st);
	e = family_close(&fam, out, e);
	if (e != DUN_OK)
		return e;
	int64_t accounts = 0;
	st = dun_db_stmt(db, "SELECT COUNT(*) FROM shadow_dunning WHERE stage <> 'none'");
	if (dun_stmt_row(st))
		accounts = dun_stmt_col_int64(st, 0);
	e = dun_stmt_err(st);
	dun_stmt_reset(st);
	if (e == DUN_OK)
		fprintf(out,
			"# HELP dunning_shadow_accounts_in_dunning Observe-mode accounts whose "
			"shadow is in a dunning stage.\n"
			"# TYPE dunning_shadow_accounts_in_dunning gauge\n"
			"dunning_shadow_accounts_in_dunning %lld\n",
			(long long)accounts);
	return e;
}

/* ---- parity -------------------------------------------------------------- */

static long long jint(json_t *o, const char *a, const char *b)
{
	json_t *v = json_object_get(o, a);
	if (b)
		v = json_object_get(v, b);
	return (long long)json_integer_value(v);
}

static double jreal(json_t *o, const char *a, const char *b)
{
	json_t *v = json_object_get(json_object_get(o, a), b);
	return json_number_value(v);
}

static enum dun_err parity(FILE *out, struct dun_db *db)
{
	struct dun_stmt *st = dun_db_stmt(db, "SELECT id, created_at, passed, summary FROM"
					      " parity_reports ORDER BY id DESC LIMIT 1");
	json_t *s = NULL;
	int64_t id = 0, at = 0, passed = 0;
	if (dun_stmt_row(st)) {
		id = dun_stmt_col_int64(st, 0);
		at = dun_stmt_col_int64(st, 1);
		passed = dun_stmt_col_int64(st, 2);
		const char *text = dun_stmt_col_text(st, 3);
		s = text ? json_loads(text, 0, NULL) : NULL;
	}
	enum dun_err e = dun_stmt_err(st);
	dun_stmt_reset(st);
	if (e != DUN_OK || !id) {
		json_decref(s);
		return e;
	}
	fprintf(out,
		"# HELP dunning_parity_report_timestamp_seconds When the last parity report was "
		"made (unix seconds).\n"
		"# TYPE dunning_parity_report_timestamp_seconds gauge\n"
		"dunning_parity_report_timestamp_seconds %lld\n"
		"# HELP dunning_parity_passed Whether the last parity report passed its "
		"thresholds.\n"
		"# TYPE dunning_parity_passed gauge\n"
		"dunning_parity_passed %d\n",
		(long long)at, passed ? 1 : 0);
	if (s) {
		json_t *total = json_object_get(s, "total");
		fprintf(out,
			"# HELP dunning_parity_actions Actions of the last parity report: matched, "
			"only in the legacy log, only in the engine's shadow.\n"
			"# TYPE dunning_parity_actions gauge\n"
			"dunning_parity_actions{side=\"matched\"} %lld\n"
			"dunning_parity_actions{side=\"only_legacy\"} %lld\n"
			"dunning_parity_actions{side=\"only_engine\"} %lld\n"
			"# HELP dunning_parity_match_ratio Matched share of the last report's "
			"actions (0..1).\n"
			"# TYPE dunning_parity_match_ratio gauge\n"
			"dunning_parity_match_ratio %.6f\n"
			"# HELP dunning_parity_coverage_ratio Share of the legacy log's accounts "
			"the engine saw in the last report (0..1).\n"
			"# TYPE dunning_parity_coverage_ratio gauge\n"
			"dunning_parity_coverage_ratio %.6f\n"
			"# HELP dunning_parity_amount_mismatches Bad-debt amounts that differ in "
			"the last report.\n"
			"# TYPE dunning_parity_amount_mismatches gauge\n"
			"dunning_parity_amount_mismatches %lld\n"
			"# HELP dunning_parity_errors Legacy log lines the last report could not "
			"use.\n"
			"# TYPE dunning_parity_errors gauge\n"
			"dunning_parity_errors %lld\n",
			jint(total, "matched", NULL), jint(total, "only_legacy", NULL),
			jint(total, "only_engine", NULL),
			jreal(s, "total", "match_percent") / 100.0,
			jreal(s, "coverage", "percent") / 100.0,
			jint(s, "amounts", "compared") - jint(s, "amounts", "match"),
			jint(s, "errors", NULL));
	}
	json_decref(s);
	return DUN_OK;
}

/*
 * Bad-debt episodes by product (bad_debt_episodes.products, the products of
 * the account's subscriptions when it entered): entered, and of those ended.
 * An episode involving two products counts for each; one whose products are
 * not known counts as "unknown". The first PRODUCTS_MAX products get a
 * series of their own, the rest are summed as "other".
 */
#define PRODUCTS_MAX 50

struct product_count {
	char name[96];
	int64_t entries, exits;
};

static void count_product(struct product_count *pc, int *n, const char *p, size_t len, bool exited)
{
	char name[96];
	if (!len || len >= sizeof name)
		snprintf(name, sizeof name, "%s", len ? "other" : "unknown");
	else
		memcpy(name, p, len), name[len] = '\0';
	int i = 0;
	while (i < *n && strcmp(pc[i].name, name))
		i++;
	if (i == *n) {
		if (*n == PRODUCTS_MAX) {
			i = PRODUCTS_MAX; /* the "other" slot */
			snprintf(pc[i].name, sizeof pc[i].name, "other");
		} else {
			snprintf(pc[i].name, sizeof pc[i].name, "%s", name);
			(*n)++;
		}
	}
	pc[i].entries++;
	pc[i].exits += exited;
}

static enum dun_err bad_debt_products(FILE *out, struct dun_db *db)
{
	struct product_count pc[PRODUCTS_MAX + 1];
	memset(pc, 0, sizeof pc);
	int n = 0;
	struct dun_stmt *st =
	    dun_db_stmt(db, "SELECT products, exited_at > 0 FROM bad_debt_episodes");
	while (dun_stmt_row(st)) {
		const char *list = dun_stmt_col_text(st, 0);
		bool exited = dun_stmt_col_int64(st, 1) != 0;
		if (!list || !list[0]) {
			count_product(pc, &n, "", 0, exited);
			continue;
		}
		for (const char *q = list; *q;) {
			const char *end = strchr(q, ',');
			size_t len = end ? (size_t)(end - q) : strlen(q);
			count_product(pc, &n, q, len, exited);
			q = end ? end + 1 : q + len;
		}
	}
	enum dun_err e = dun_stmt_err(st);
	dun_stmt_reset(st);
	int shown = pc[PRODUCTS_MAX].entries ? PRODUCTS_MAX + 1 : n;
	struct family fam;
	FILE *f = family_open(&fam, "dunning_bad_debt_product_entries_total", "counter",
			      "Bad-debt episodes opened, by product involved.");
	for (int i = 0; i < shown; i++) {
		fputs("dunning_bad_debt_product_entries_total{product=", f);
		label(f, pc[i].name);
		fprintf(f, "} %lld\n", (long long)pc[i].entries);
	}
	e = family_close(&fam, out, e);
	if (e != DUN_OK)
		return e;
	f = family_open(&fam, "dunning_bad_debt_product_exits_total", "counter",
			"Bad-debt episodes ended, by product involved.");
	for (int i = 0; i < shown; i++) {
		fputs("dunning_bad_debt_product_exits_total{product=", f);
		label(f, pc[i].name);
		fprintf(f, "} %lld\n", (long long)pc[i].exits);
	}
	return family_close(&fam, out, DUN_OK);
}

/* ---- accounts outside the current stage ----------------------------------- */

/*
 * The drilldown's series: one set per account that is in a dunning stage
 * (notified, restricted, suspended, bad debt), so a dashboard can follow
 * one account by its id. Labelling by account is a cardinality risk that
 * the rest of /metrics avoids on purpose; it is bounded here twice: only
 * accounts outside the current stage (`none`) count, which on a healthy
 * book is a small share, and at most [metrics] account_series_limit of
 * them get series. The ones kept are the longest in their stage (then by
 * id), so the set is stable from scrape to scrape and the accounts an
 * operator is most likely to look for are in it; the rest are counted in
 * dunning_account_series_omitted, never silently dropped.
 *
 * Cost: the selection is one scan of `dunning` filtered on stage, the same
 * scan dunning_accounts{stage} already makes. The payment-in-flight and the
 * owed-money queries are handed the selected ids, ID_BATCH at a time (one
 * fixed statement, the last batch padded with its last id), and reach
 * invoices and attempts by the customers' account, the invoices' customer
 * and the attempts' invoice indexes: neither scans a table, nor repeats the
 * selection's sort.
 */

#define IDS_4  "?,?,?,?"
#define IDS_16 IDS_4 "," IDS_4 "," IDS_4 "," IDS_4
#define IDS_64 IDS_16 "," IDS_16 "," IDS_16 "," IDS_16
enum { ID_BATCH = 64 }; /* the placeholders of IDS_64 */

struct account_row {
	char *id;
	char *stage;
	int64_t since;
	bool kill_switch;
	bool processing;
};

static int account_row_cmp(const void *a, const void *b)
{
	const struct account_row *x = *(const struct account_row *const *)a;
	const struct account_row *y = *(const struct account_row *const *)b;
	return strcmp(x->id, y->id);
}

/* Bind the ids of rows[from..] to the ID_BATCH placeholders; past n, the last id again. */
static void bind_ids(struct dun_stmt *st, const struct account_row *rows, int from, int n)
{
	for (int k = 0; k < ID_BATCH; k++)
		dun_stmt_bind_text(st, k + 1, rows[from + k < n ? from + k : n - 1].id);
}

/* bsearch's comparison of an account id with a row. */
static int account_id_cmp(const void *key, const void *row)
{
	return strcmp(key, (*(const struct account_row *const *)row)->id);
}

static void account_series_header(FILE *out, int64_t limit, int64_t omitted)
{
	fprintf(out,
		"# HELP dunning_account_series_limit Accounts outside the current stage given "
		"series of their own at most ([metrics] account_series_limit; 0: none).\n"
		"# TYPE dunning_account_series_limit gauge\n"
		"dunning_account_series_limit %lld\n"
		"# HELP dunning_account_series_omitted Accounts outside the current stage left "
		"without series of their own by the limit.\n"
		"# TYPE dunning_account_series_omitted gauge\n"
		"dunning_account_series_omitted %lld\n",
		(long long)limit, (long long)omitted);
}

static enum dun_err account_series(FILE *out, struct dun_db *db, int64_t limit, int64_t now)
{
	if (limit <= 0) {
		struct dun_stmt *st =
		    dun_db_stmt(db, "SELECT COUNT(*) FROM dunning WHERE stage <> 'none'");
		int64_t all = dun_stmt_row(st) ? dun_stmt_col_int64(st, 0) : 0;
		enum dun_err e = dun_stmt_err(st);
		dun_stmt_reset(st);
		if (e == DUN_OK)
			account_series_header(out, 0, all);
		return e;
	}
	struct account_row *rows = NULL;
	int n = 0, cap = 0;
	int64_t all = 0;
	struct dun_stmt *st =
	    dun_db_stmt(db, "SELECT s.account_id, s.stage, s.since, COALESCE(a.kill_switch, 0), s.n"
			    " FROM (SELECT account_id, stage, since, COUNT(*) OVER () AS n"
			    "  FROM dunning WHERE stage <> 'none'"
			    "  ORDER BY since, account_id LIMIT ?1) s"
			    " LEFT JOIN accounts a ON a.id = s.account_id"
			    " ORDER BY s.since, s.account_id");
	dun_stmt_bind_int64(st, 1, limit);
	while (dun_stmt_row(st)) {
		if (n == cap) {
			cap = cap ? cap * 2 : 64;
			rows = dun_realloc(rows, (size_t)cap * sizeof *rows);
		}
		const char *id = dun_stmt_col_text(st, 0), *stage = dun_stmt_col_text(st, 1);
		rows[n].id = dun_strdup(id ? id : "");
		rows[n].stage = dun_strdup(stage ? stage : "");
		rows[n].since = dun_stmt_col_int64(st, 2);
		rows[n].kill_switch = dun_stmt_col_int64(st, 3) != 0;
		rows[n].processing = false;
		all = dun_stmt_col_int64(st, 4);
		n++;
	}
	enum dun_err e = dun_stmt_err(st);
	dun_stmt_reset(st);
	struct account_row **by_id = dun_calloc(n ? (size_t)n : 1, sizeof *by_id);
	for (int i = 0; i < n; i++)
		by_id[i] = &rows[i];
	qsort(by_id, (size_t)n, sizeof *by_id, account_row_cmp);
	if (e != DUN_OK)
		goto free_rows;

	/* A payment in flight holds the account's stage (the in-flight guard). */
	for (int from = 0; from < n && e == DUN_OK; from += ID_BATCH) {
		st = dun_db_stmt(db, "SELECT c.account_id FROM customers c"
				     " JOIN p_invoices i ON i.account_id = c.account_id"
				     " AND i.customer_id = c.id"
				     " JOIN p_attempts t ON t.invoice_id = i.id"
				     " WHERE c.account_id IN (" IDS_64 ")"
				     " AND t.status = 'processing' AND i.status = 'open'"
				     " GROUP BY c.account_id");
		bind_ids(st, rows, from, n);
		while (dun_stmt_row(st)) {
			const char *id = dun_stmt_col_text(st, 0);
			struct account_row **hit =
			    bsearch(id ? id : "", by_id, (size_t)n, sizeof *by_id, account_id_cmp);
			if (hit)
				(*hit)->processing = true;
		}
		e = dun_stmt_err(st);
		dun_stmt_reset(st);
	}
	if (e != DUN_OK)
		goto free_rows;

	struct family fam;
	FILE *f = family_open(&fam, "dunning_account_stage", "gauge",
			      "The dunning stage of an account outside the current stage (1), by "
			      "account id; bounded by [metrics] account_series_limit.");
	for (int i = 0; i < n; i++) {
		fputs("dunning_account_stage{account_id=", f);
		label(f, rows[i].id);
		fputs(",stage=", f);
		label(f, rows[i].stage);
		fputs("} 1\n", f);
	}
	family_close(&fam, out, DUN_OK);
	f = family_open(&fam, "dunning_account_stage_age_seconds", "gauge",
			"Seconds an account has been in its current dunning stage (engine "
			"clock), by account id.");
	for (int i = 0; i < n; i++) {
		fputs("dunning_account_stage_age_seconds{account_id=", f);
		label(f, rows[i].id);
		fprintf(f, "} %lld\n", (long long)(now > rows[i].since ? now - rows[i].since : 0));
	}
	family_close(&fam, out, DUN_OK);
	f = family_open(&fam, "dunning_account_held", "gauge",
			"Whether something holds an account's stage where it is (1) or not (0), "
			"by account id and reason: kill_switch (set by a person), "
			"payment_processing (a payment in flight).");
	for (int i = 0; i < n; i++) {
		fputs("dunning_account_held{account_id=", f);
		label(f, rows[i].id);
		fprintf(f, ",reason=\"kill_switch\"} %d\n", rows[i].kill_switch ? 1 : 0);
		fputs("dunning_account_held{account_id=", f);
		label(f, rows[i].id);
		fprintf(f, ",reason=\"payment_processing\"} %d\n", rows[i].processing ? 1 : 0);
	}
	family_close(&fam, out, DUN_OK);

	/*
	 * What the account still owes: open invoices and uncollectible ones not
	 * paid back, without the consolidated pay-bad-debt invoices (they
	 * restate the originals' debt and would count it twice).
	 */
	f = family_open(&fam, "dunning_account_owed_minor", "gauge",
			"Money an account outside the current stage still owes (open and "
			"uncollectible invoices, consolidated ones not counted twice), in minor "
			"units, by account id and currency.");
	for (int from = 0; from < n && e == DUN_OK; from += ID_BATCH) {
		st = dun_db_stmt(
		    db, "SELECT c.account_id, i.currency, SUM(i.amount_remaining)"
			" FROM customers c JOIN p_invoices i ON i.account_id = c.account_id"
			" AND i.customer_id = c.id"
			" WHERE c.account_id IN (" IDS_64 ")"
			" AND i.status IN ('open', 'uncollectible')"
			" AND i.meta_bad_debt_invoices IS NULL AND i.meta_bad_debt_paid = 0"
			" GROUP BY c.account_id, i.currency");
		bind_ids(st, rows, from, n);
		while (dun_stmt_row(st)) {
			fputs("dunning_account_owed_minor{account_id=", f);
			label(f, dun_stmt_col_text(st, 0));
			fputs(",currency=", f);
			label(f, dun_stmt_col_text(st, 1));
			fprintf(f, "} %lld\n", (long long)dun_stmt_col_int64(st, 2));
		}
		e = dun_stmt_err(st);
		dun_stmt_reset(st);
	}
	e = family_close(&fam, out, e);
	if (e == DUN_OK)
		account_series_header(out, limit, all > n ? all - n : 0);
free_rows:
	for (int i = 0; i < n; i++)
		free(rows[i].id), free(rows[i].stage);
	free(rows);
	free(by_id);
	return e;
}

enum dun_err dun_metrics_db_render(FILE *f, struct dun_db *db, const struct dun_policy *policy,
				   int64_t account_series_limit, int64_t now)
{
	enum dun_err e = drift(f, db, now);
	if (e == DUN_OK)
		e = bad_debt(f, db);
	if (e == DUN_OK)
		e = bad_debt_products(f, db);
	if (e == DUN_OK)
		e = money(f, db);
	if (e == DUN_OK)
		e = grouped2(f, db, "SELECT kind, state, COUNT(*) FROM emails GROUP BY kind, state",
			     "dunning_emails", "gauge",
			     "Emails in the email log by kind and state (pending, sending, sent, "
			     "failed, dead).",
			     "kind", "state");
	if (e == DUN_OK)
		e = retries(f, db, policy);
	if (e == DUN_OK)
		e = decisions(f, db);
	if (e == DUN_OK)
		e = shadow(f, db);
	if (e == DUN_OK)
		e = parity(f, db);
	if (e == DUN_OK)
		e = account_series(f, db, account_series_limit, now);
	return e;
}
