/*
 * cmd_report.c — `dunning report bad-debt|recovery`: what the pipeline's
 * decisions came to, for the people who answer for the money. Reads only
 * (the database is opened read-only); the figures come from
 * src/report/report.c, the same code /metrics reads, so a report and a
 * dashboard over the same database agree.
 */
#include "commands.h"
#include "core/text.h"
#include "report/report.h"
#include "util/clock.h"

#include <getopt.h>
#include <string.h>

enum format { FORMAT_TEXT, FORMAT_JSON, FORMAT_CSV };

struct opts {
	int64_t since, until;
	enum format format;
};

static void usage(FILE *out)
{
	fprintf(out,
		"usage: dunning report bad-debt [--since TIME] [--until TIME] [--json|--csv]\n"
		"       dunning report recovery [--since TIME] [--until TIME] [--json|--csv]\n\n"
		"bad-debt   every bad-debt episode entered in the window: who, why (the\n"
		"           policy's words and a short reason), products, amount, how long\n"
		"           they stayed and how they left; a summary at the end.\n"
		"recovery   invoices whose first payment failure falls in the window, by\n"
		"           week of that failure and currency: failed, recovered by retry,\n"
		"           by card update, by pay-bad-debt, paid otherwise, written off,\n"
		"           still open, with the amounts (minor units in JSON and CSV).\n\n"
		"TIME: unix seconds, YYYY-MM-DD or YYYY-MM-DDTHH:MM:SSZ (UTC). The window\n"
		"is [since, until); without them, everything. Reads only.\n");
}

static int parse(int argc, char **argv, struct opts *o)
{
	static const struct option opts[] = {
	    {"since", required_argument, NULL, 's'}, {"until", required_argument, NULL, 'u'},
	    {"json", no_argument, NULL, 'j'},	     {"csv", no_argument, NULL, 'c'},
	    {"help", no_argument, NULL, 'h'},	     {NULL, 0, NULL, 0}};
	memset(o, 0, sizeof *o);
	bool json = false, csv = false;
	int c;
	optind = 0;
	while ((c = getopt_long(argc, argv, "s:u:jch", opts, NULL)) != -1) {
		switch (c) {
		case 's':
		case 'u':
			if (!dun_clock_parse(optarg, c == 's' ? &o->since : &o->until)) {
				dun_cli_error(
				    "report: --%s: cannot read \"%s\" as a time: use unix "
				    "seconds, YYYY-MM-DD or YYYY-MM-DDTHH:MM:SSZ",
				    c == 's' ? "since" : "until", optarg);
				return DUN_EX_USAGE;
			}
			break;
		case 'j':
			json = true;
			break;
		case 'c':
			csv = true;
			break;
		case 'h':
			usage(stdout);
			return -1;
		default:
			return DUN_EX_USAGE;
		}
	}
	if (optind != argc) {
		dun_cli_error("report: unexpected argument \"%s\"", argv[optind]);
		return DUN_EX_USAGE;
	}
	if (json && csv) {
		dun_cli_error("report: --json and --csv exclude each other");
		return DUN_EX_USAGE;
	}
	if (o->since && o->until && o->until <= o->since) {
		dun_cli_error("report: --until must be after --since");
		return DUN_EX_USAGE;
	}
	o->format = json ? FORMAT_JSON : csv ? FORMAT_CSV : FORMAT_TEXT;
	return DUN_EX_OK;
}

/* A CSV field: quoted when it holds a comma, a quote or a line break. */
static void csv_field(const char *s, bool last)
{
	if (strpbrk(s, ",\"\r\n")) {
		putchar('"');
		for (const char *p = s; *p; p++) {
			if (*p == '"')
				putchar('"');
			putchar(*p);
		}
		putchar('"');
	} else {
		fputs(s, stdout);
	}
	putchar(last ? '\n' : ',');
}

static const char *money(int64_t minor, const char *currency, char *buf, size_t n)
{
	struct dun_text t;
	dun_text_init(&t, buf, n);
	dun_text_money(&t, minor, currency[0] ? currency : "usd");
	return buf;
}

/* ---- bad-debt ------------------------------------------------------------- */

#define N_REASONS 4
static const char *const reasons[N_REASONS] = {"uncollectible", "days_past_due", "upgrade_invoice",
					       "other"};

struct bad_debt_run {
	enum format format;
	json_t *rows;
	int64_t entered, exited;
	int64_t by_reason[N_REASONS];
	json_t *by_exit; /* exit reason -> count */
	int64_t stayed_exited_s;
};

static int bad_debt_row(const struct dun_bad_debt_row *r, void *arg)
{
	struct bad_debt_run *run = arg;
	char entered[32], exited[32], amount[64];
	run->entered++;
	for (int i = 0; i < N_REASONS; i++)
		if (!strcmp(r->reason_class, reasons[i]))
			run->by_reason[i]++;
	if (r->exited_at) {
		run->exited++;
		run->stayed_exited_s += r->stayed_s;
		json_t *n = json_object_get(run->by_exit, r->exit_reason);
		json_object_set_new(run->by_exit, r->exit_reason,
				    json_integer(n ? json_integer_value(n) + 1 : 1));
	}
	switch (run->format) {
	case FORMAT_JSON:
		json_array_append_new(
		    run->rows,
		    json_pack("{s:s, s:I, s:s, s:s, s:s, s:s, s:I, s:s, s:o, s:o, s:I}", "account",
			      r->account_id, "episode", (json_int_t)r->episode, "entered_at",
			      dun_cli_time(r->entered_at, entered, sizeof entered), "reason",
			      r->reason_class, "reason_text", r->reason, "products", r->products,
			      "amount_minor", (json_int_t)r->amount_minor, "currency", r->currency,
			      "exited_at",
			      r->exited_at
				  ? json_string(dun_cli_time(r->exited_at, exited, sizeof exited))
				  : json_null(),
			      "exit_reason",
			      r->exited_at ? json_string(r->exit_reason) : json_null(), "stayed_s",
			      (json_int_t)r->stayed_s));
		break;
	case FORMAT_CSV: {
		char ep[24], am[24], st[24];
		snprintf(ep, sizeof ep, "%lld", (long long)r->episode);
		snprintf(am, sizeof am, "%lld", (long long)r->amount_minor);
		snprintf(st, sizeof st, "%lld", (long long)r->stayed_s);
		csv_field(r->account_id, false);
		csv_field(ep, false);
		dun_clock_format(r->entered_at, entered, sizeof entered);
		csv_field(entered, false);
		csv_field(r->reason_class, false);
		csv_field(r->reason, false);
		csv_field(r->products, false);
		csv_field(am, false);
		csv_field(r->currency, false);
		if (r->exited_at)
			dun_clock_format(r->exited_at, exited, sizeof exited);
		csv_field(r->exited_at ? exited : "", false);
		csv_field(r->exit_reason, false);
		csv_field(st, true);
		break;
	}
	case FORMAT_TEXT:
		printf("%-20s %3lld  %-16s  %-15s %12s  %5.1fd  %-16s  %-12s  %s\n", r->account_id,
		       (long long)r->episode, dun_cli_time(r->entered_at, entered, sizeof entered),
		       r->reason_class, money(r->amount_minor, r->currency, amount, sizeof amount),
		       (double)r->stayed_s / 86400.0,
		       r->exited_at ? dun_cli_time(r->exited_at, exited, sizeof exited) : "-",
		       r->exited_at ? r->exit_reason : "(still in)", r->products);
		break;
	}
	return 0;
}

static int report_bad_debt(struct dun_cli *cli, const struct opts *o)
{
	struct bad_debt_run run = {
	    .format = o->format, .rows = json_array(), .by_exit = json_object()};
	if (o->format == FORMAT_CSV)
		printf("account,episode,entered_at,reason,reason_text,products,amount_minor,"
		       "currency,exited_at,exit_reason,stayed_s\n");
	if (o->format == FORMAT_TEXT)
		printf("%-20s %3s  %-16s  %-15s %12s  %6s  %-16s  %-12s  %s\n", "account", "ep",
		       "entered", "reason", "amount", "stayed", "exited", "how", "products");
	enum dun_err e =
	    dun_report_bad_debt(cli->db, o->since, o->until, dun_clock_now(), bad_debt_row, &run);
	if (e != DUN_OK) {
		json_decref(run.rows);
		json_decref(run.by_exit);
		dun_cli_error("report: %s", dun_err_str(e));
		return dun_cli_exit_code(e);
	}
	json_t *by_reason = json_object();
	for (int i = 0; i < N_REASONS; i++)
		json_object_set_new(by_reason, reasons[i], json_integer(run.by_reason[i]));
	int64_t mean = run.exited ? run.stayed_exited_s / run.exited : 0;
	switch (o->format) {
	case FORMAT_JSON:
		dun_cli_print_json(
		    json_pack("{s:o, s:{s:I, s:o, s:I, s:o, s:I, s:I}}", "episodes", run.rows,
			      "summary", "entered", (json_int_t)run.entered, "by_reason", by_reason,
			      "exited", (json_int_t)run.exited, "by_exit_reason", run.by_exit,
			      "still_in", (json_int_t)(run.entered - run.exited),
			      "mean_stay_of_exited_s", (json_int_t)mean));
		return DUN_EX_OK;
	case FORMAT_CSV:
		break;
	case FORMAT_TEXT: {
		printf("\n%lld entered (", (long long)run.entered);
		for (int i = 0; i < N_REASONS; i++)
			printf("%s%s %lld", i ? ", " : "", reasons[i], (long long)run.by_reason[i]);
		printf("), %lld left (", (long long)run.exited);
		const char *k;
		json_t *v;
		bool first = true;
		json_object_foreach(run.by_exit, k, v)
		{
			printf("%s%s %lld", first ? "" : ", ", k, (long long)json_integer_value(v));
			first = false;
		}
		printf("), %lld still in bad debt; those who left stayed %.1f days on average\n",
		       (long long)(run.entered - run.exited), (double)mean / 86400.0);
		break;
	}
	}
	json_decref(run.rows);
	json_decref(run.by_exit);
	json_decref(by_reason);
	return DUN_EX_OK;
}

/* ---- recovery ------------------------------------------------------------- */

static json_t *recovery_json(const struct dun_recovery_row *r)
{
	json_t *o = json_object();
	if (r->week) {
		char w[32];
		dun_clock_format(r->week, w, sizeof w);
		w[10] = '\0';
		json_object_set_new(o, "week", json_string(w));
	}
	json_object_set_new(o, "currency", json_string(r->currency));
	json_object_set_new(o, "failed", json_integer(r->failed));
	json_object_set_new(o, "failed_minor", json_integer(r->failed_minor));
	json_t *count = json_object(), *amount = json_object();
	for (int h = 0; h < DUN_RECOVERY__COUNT; h++) {
		const char *n = dun_recovery_name((enum dun_recovery)h);
		json_object_set_new(count, n, json_integer(r->count[h]));
		json_object_set_new(amount, n, json_integer(r->amount_minor[h]));
	}
	json_object_set_new(o, "invoices", count);
	json_object_set_new(o, "amount_minor", amount);
	return o;
}

static int64_t recovered(const struct dun_recovery_row *r, bool amount)
{
	int64_t n = 0;
	for (int h = 0; h < DUN_RECOVERY__COUNT; h++)
		if (dun_recovery_is_recovered((enum dun_recovery)h))
			n += amount ? r->amount_minor[h] : r->count[h];
	return n;
}

static void recovery_text_row(const char *week, const struct dun_recovery_row *r)
{
	char rec[64], wo[64];
	printf(
	    "%-10s %-4s %6lld %6lld %6lld %6lld %6lld %6lld %6lld %14s %14s %5.0f%%\n", week,
	    r->currency, (long long)r->failed, (long long)r->count[DUN_RECOVERY_RETRY],
	    (long long)r->count[DUN_RECOVERY_CARD_UPDATE],
	    (long long)r->count[DUN_RECOVERY_PAY_BAD_DEBT], (long long)r->count[DUN_RECOVERY_OTHER],
	    (long long)r->count[DUN_RECOVERY_WRITTEN_OFF], (long long)r->count[DUN_RECOVERY_OPEN],
	    money(recovered(r, true), r->currency, rec, sizeof rec),
	    money(r->amount_minor[DUN_RECOVERY_WRITTEN_OFF], r->currency, wo, sizeof wo),
	    r->failed ? 100.0 * (double)recovered(r, false) / (double)r->failed : 0.0);
}

static int report_recovery(struct dun_cli *cli, const struct opts *o)
{
	struct dun_recovery_table weeks, totals;
	enum dun_err e = dun_report_recovery(cli->db, o->since, o->until, true, &weeks);
	if (e == DUN_OK)
		e = dun_report_recovery(cli->db, o->since, o->until, false, &totals);
	if (e != DUN_OK) {
		dun_recovery_table_free(&weeks);
		dun_cli_error("report: %s", dun_err_str(e));
		return dun_cli_exit_code(e);
	}
	switch (o->format) {
	case FORMAT_JSON: {
		json_t *w = json_array(), *t = json_array();
		for (int i = 0; i < weeks.n; i++)
			json_array_append_new(w, recovery_json(&weeks.rows[i]));
		for (int i = 0; i < totals.n; i++)
			json_array_append_new(t, recovery_json(&totals.rows[i]));
		dun_cli_print_json(json_pack("{s:o, s:o}", "weeks", w, "totals", t));
		break;
	}
	case FORMAT_CSV:
		printf("week,currency,failed,failed_minor");
		for (int h = 0; h < DUN_RECOVERY__COUNT; h++)
			printf(",%s", dun_recovery_name((enum dun_recovery)h));
		for (int h = 0; h < DUN_RECOVERY__COUNT; h++)
			printf(",%s_minor", dun_recovery_name((enum dun_recovery)h));
		putchar('\n');
		for (int i = 0; i < weeks.n; i++) {
			const struct dun_recovery_row *r = &weeks.rows[i];
			char w[32];
			dun_clock_format(r->week, w, sizeof w);
			w[10] = '\0';
			printf("%s,", w);
			csv_field(r->currency, false);
			printf("%lld,%lld", (long long)r->failed, (long long)r->failed_minor);
			for (int h = 0; h < DUN_RECOVERY__COUNT; h++)
				printf(",%lld", (long long)r->count[h]);
			for (int h = 0; h < DUN_RECOVERY__COUNT; h++)
				printf(",%lld", (long long)r->amount_minor[h]);
			putchar('\n');
		}
		break;
	case FORMAT_TEXT:
		printf("%-10s %-4s %6s %6s %6s %6s %6s %6s %6s %14s %14s %6s\n", "week", "cur",
		       "failed", "retry", "card", "paybd", "other", "w/off", "open", "recovered",
		       "written off", "rate");
		for (int i = 0; i < weeks.n; i++) {
			char w[32];
			dun_clock_format(weeks.rows[i].week, w, sizeof w);
			w[10] = '\0';
			recovery_text_row(w, &weeks.rows[i]);
		}
		for (int i = 0; i < totals.n; i++)
			recovery_text_row("total", &totals.rows[i]);
		if (!weeks.n)
			printf("no failed invoices in this window\n");
		break;
	}
	dun_recovery_table_free(&weeks);
	dun_recovery_table_free(&totals);
	return DUN_EX_OK;
}

int dun_cmd_report(struct dun_cli *cli, int argc, char **argv)
{
	if (argc < 2 || !strcmp(argv[1], "--help") || !strcmp(argv[1], "-h")) {
		usage(argc < 2 ? stderr : stdout);
		return argc < 2 ? DUN_EX_USAGE : DUN_EX_OK;
	}
	const char *what = argv[1];
	bool bad_debt = !strcmp(what, "bad-debt"), recovery = !strcmp(what, "recovery");
	if (!bad_debt && !recovery) {
		dun_cli_error("report: unknown report \"%s\" (bad-debt or recovery)", what);
		return DUN_EX_USAGE;
	}
	struct opts o;
	int rc = parse(argc - 1, argv + 1, &o);
	if (rc)
		return rc < 0 ? DUN_EX_OK : rc;
	rc = dun_cli_open(cli, DUN_NEED_DB | DUN_NEED_READONLY);
	if (rc)
		return rc;
	return bad_debt ? report_bad_debt(cli, &o) : report_recovery(cli, &o);
}
