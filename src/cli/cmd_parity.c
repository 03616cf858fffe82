/*
 * cmd_parity.c — `dunning parity`: the engine's observe-mode shadow against
 * a legacy system's decision log over a window, printed for a person (or
 * as JSON), recorded for the rollout gate, exit status 1 below thresholds.
 * Bad input of any kind is refused before anything is written.
 */
#include "commands.h"
#include "apply/parity.h"
#include "config/config.h"
#include "provider/stripe.h"
#include "util/clock.h"

#include <errno.h>
#include <getopt.h>
#include <stdlib.h>
#include <string.h>

static int usage(void)
{
	printf(
	    "usage: dunning parity --legacy FILE | --stripe  [--days N | --from TIME] [--to TIME]\n"
	    "                      [--tolerance DURATION] [--min-match PCT] [--min-coverage PCT]\n"
	    "                      [--max-amount-mismatches N] [--max-filter-mismatches N]\n"
	    "                      [--max-errors N] [--json]\n\n"
	    "Compare what the engine would have done in observe mode (its shadow) with\n"
	    "what a legacy system did, over a window (default: the last [rollout]\n"
	    "parity_window_days, 7, ending now). FILE is the legacy decision log, JSON\n"
	    "lines (see docs/operations.md), or - for standard input. --stripe (with\n"
	    "--config) compares with Stripe's own dunning instead: what Stripe Billing\n"
	    "did (invoices marked uncollectible, subscriptions deleted, retries),\n"
	    "from /v1/events (30 days) and the events the engine already received.\n\n"
	    "A match pairs one legacy action with one engine action of the same account,\n"
	    "action and invoice within the tolerance (default 1d; 90s, 30m, 6h, 2d).\n"
	    "The report: per action matched / only legacy / only engine and the delay\n"
	    "of the engine; bad-debt amounts compared exactly; coverage; skip filters;\n"
	    "errors; and the accounts behind every mismatch. Thresholds come from the\n"
	    "options, else from [parity] of --config, else: 100%% match, 100%% coverage,\n"
	    "0 amount and filter mismatches, 0 errors. The report is recorded (the\n"
	    "rollout gate reads it). Exit status 0 when it passes, 1 when it does not.\n");
	return DUN_EX_OK;
}

/* "90", "90s", "30m", "6h", "2d" -> seconds; false on anything else. */
static bool parse_duration(const char *s, int64_t *out)
{
	char *end;
	errno = 0;
	long long v = strtoll(s, &end, 10);
	if (errno || end == s || v < 0)
		return false;
	long long mul = 1;
	if (!strcmp(end, "d"))
		mul = 86400;
	else if (!strcmp(end, "h"))
		mul = 3600;
	else if (!strcmp(end, "m"))
		mul = 60;
	else if (strcmp(end, "s") && *end)
		return false;
	if (v > 366LL * 86400 / mul)
		return false;
	*out = v * mul;
	return true;
}

static bool parse_pct(const char *s, double *out)
{
	char *end;
	double v = strtod(s, &end);
	if (end == s || *end || !(v >= 0 && v <= 100))
		return false;
	*out = v;
	return true;
}

static bool parse_count(const char *s, int64_t *out)
{
	char *end;
	errno = 0;
	long long v = strtoll(s, &end, 10);
	if (errno || end == s || *end || v < 0)
		return false;
	*out = v;
	return true;
}

static void print_text(json_t *r, int64_t id)
{
	printf("parity: %s vs the engine's shadow, %s .. %s (tolerance %lld s)\n",
	       json_string_value(json_object_get(r, "source")),
	       json_string_value(json_object_get(r, "from")),
	       json_string_value(json_object_get(r, "to")),
	       (long long)json_integer_value(json_object_get(r, "tolerance_s")));
	printf("  %-22s %8s %12s %12s %14s\n", "action", "matched", "only legacy", "only engine",
	       "delay mean/max");
	size_t i;
	json_t *v;
	json_array_foreach(json_object_get(r, "actions"), i, v)
	{
		char delay[48];
		snprintf(delay, sizeof delay, "%+.1fh/%+.1fh",
			 (double)json_integer_value(json_object_get(v, "mean_delay_s")) / 3600.0,
			 (double)json_integer_value(json_object_get(v, "max_delay_s")) / 3600.0);
		printf("  %-22s %8lld %12lld %12lld %14s\n",
		       json_string_value(json_object_get(v, "action")),
		       (long long)json_integer_value(json_object_get(v, "matched")),
		       (long long)json_integer_value(json_object_get(v, "only_legacy")),
		       (long long)json_integer_value(json_object_get(v, "only_engine")), delay);
	}
	json_t *t = json_object_get(r, "total");
	json_t *a = json_object_get(r, "amounts");
	json_t *c = json_object_get(r, "coverage");
	json_t *f = json_object_get(r, "filters");
	printf("  %-22s %8lld %12lld %12lld   (%.1f%% matched)\n", "all",
	       (long long)json_integer_value(json_object_get(t, "matched")),
	       (long long)json_integer_value(json_object_get(t, "only_legacy")),
	       (long long)json_integer_value(json_object_get(t, "only_engine")),
	       json_real_value(json_object_get(t, "match_percent")));
	printf("amounts: %lld/%lld bad-debt amounts match exactly\n",
	       (long long)json_integer_value(json_object_get(a, "match")),
	       (long long)json_integer_value(json_object_get(a, "compared")));
	printf("coverage: %lld/%lld accounts the legacy system acted on were seen by the engine\n",
	       (long long)json_integer_value(json_object_get(c, "seen")),
	       (long long)json_integer_value(json_object_get(c, "legacy_accounts")));
	printf("skip filters: %lld/%lld accounts the engine skips were left alone by the legacy "
	       "system\n",
	       (long long)json_integer_value(json_object_get(f, "agree")),
	       (long long)json_integer_value(json_object_get(f, "checked")));
	printf("errors: %lld failed decisions or retrying/dead triggers in the window\n",
	       (long long)json_integer_value(json_object_get(r, "errors")));
	json_t *mm = json_object_get(r, "mismatches");
	if (json_array_size(mm))
		printf("mismatches (open each with 'dunning explain ACCOUNT'):\n");
	json_array_foreach(mm, i, v)
	{
		const char *acct = json_string_value(json_object_get(v, "account"));
		const char *what = json_string_value(json_object_get(v, "mismatch"));
		const char *action = json_string_value(json_object_get(v, "action"));
		printf("  %-24s %-12s", acct, what);
		if (action) {
			const char *detail = json_string_value(json_object_get(v, "detail"));
			const char *target = json_string_value(json_object_get(v, "target"));
			printf(" %s%s%s%s%s %s", action, detail[0] ? " " : "", detail,
			       target[0] ? " " : "", target,
			       json_string_value(json_object_get(v, "at")));
		}
		if (json_object_get(v, "legacy_amount"))
			printf(" legacy %lld, engine %lld",
			       (long long)json_integer_value(json_object_get(v, "legacy_amount")),
			       (long long)json_integer_value(json_object_get(v, "engine_amount")));
		if (json_object_get(v, "line"))
			printf(" (line %lld)",
			       (long long)json_integer_value(json_object_get(v, "line")));
		if (!strcmp(what, "error"))
			printf(" %s", json_string_value(json_object_get(v, "detail")));
		printf("\n");
	}
	json_t *failed = json_object_get(r, "failed");
	if (json_array_size(failed)) {
		printf("BELOW THRESHOLDS:");
		json_array_foreach(failed, i, v) printf(" %s", json_string_value(v));
		printf("\n");
	} else {
		printf("PASSED\n");
	}
	printf("report #%lld recorded\n", (long long)id);
}

static int parity_stripe(struct dun_cli *cli, struct dun_parity_opts *o, bool json);
static int report_and_record(struct dun_cli *cli, struct dun_parity_list *legacy,
			     const struct dun_parity_opts *po, bool json);

int dun_cmd_parity(struct dun_cli *cli, int argc, char **argv)
{
	enum {
		O_LEGACY = 1000,
		O_DAYS,
		O_FROM,
		O_TO,
		O_TOL,
		O_MIN_MATCH,
		O_MIN_COV,
		O_MAX_AMT,
		O_MAX_FILT,
		O_MAX_ERR,
		O_JSON,
		O_STRIPE
	};
	static const struct option opts[] = {
	    {"legacy", required_argument, NULL, O_LEGACY},
	    {"days", required_argument, NULL, O_DAYS},
	    {"from", required_argument, NULL, O_FROM},
	    {"to", required_argument, NULL, O_TO},
	    {"tolerance", required_argument, NULL, O_TOL},
	    {"min-match", required_argument, NULL, O_MIN_MATCH},
	    {"min-coverage", required_argument, NULL, O_MIN_COV},
	    {"max-amount-mismatches", required_argument, NULL, O_MAX_AMT},
	    {"max-filter-mismatches", required_argument, NULL, O_MAX_FILT},
	    {"max-errors", required_argument, NULL, O_MAX_ERR},
	    {"json", no_argument, NULL, O_JSON},
	    {"stripe", no_argument, NULL, O_STRIPE},
	    {"help", no_argument, NULL, 'h'},
	    {NULL, 0, NULL, 0}};
	int rc = dun_cli_load_config(cli);
	if (rc)
		return rc;
	const struct dun_config *cf = cli->config;
	struct dun_parity_opts o = {
	    .tolerance_s = cf ? cf->parity_tolerance_hours * 3600 : 86400,
	    .min_match_percent = cf ? cf->parity_min_match_percent : 100,
	    .min_coverage_percent = cf ? cf->parity_min_coverage_percent : 100,
	    .max_amount_mismatches = cf ? cf->parity_max_amount_mismatches : 0,
	    .max_filter_mismatches = cf ? cf->parity_max_filter_mismatches : 0,
	    .max_errors = cf ? cf->parity_max_errors : 0,
	};
	int64_t days = cf ? cf->rollout_parity_window_days : 7;
	int64_t from = -1, to = dun_clock_now();
	const char *legacy_path = NULL;
	bool json = false, days_given = false, stripe = false;
	int c;
	optind = 0;
	while ((c = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
		bool ok = true;
		switch (c) {
		case O_LEGACY:
			legacy_path = optarg;
			break;
		case O_DAYS:
			ok = parse_count(optarg, &days) && days >= 1 && days <= 366;
			days_given = true;
			break;
		case O_FROM:
			ok = dun_clock_parse(optarg, &from);
			break;
		case O_TO:
			ok = dun_clock_parse(optarg, &to);
			break;
		case O_TOL:
			ok = parse_duration(optarg, &o.tolerance_s);
			break;
		case O_MIN_MATCH:
			ok = parse_pct(optarg, &o.min_match_percent);
			break;
		case O_MIN_COV:
			ok = parse_pct(optarg, &o.min_coverage_percent);
			break;
		case O_MAX_AMT:
			ok = parse_count(optarg, &o.max_amount_mismatches);
			break;
		case O_MAX_FILT:
			ok = parse_count(optarg, &o.max_filter_mismatches);
			break;
		case O_MAX_ERR:
			ok = parse_count(optarg, &o.max_errors);
			break;
		case O_JSON:
			json = true;
			break;
		case O_STRIPE:
			stripe = true;
			break;
		case 'h':
			return usage();
		default:
			return DUN_EX_USAGE;
		}
		if (!ok) {
			dun_cli_error("parity: bad value \"%s\" for --%s (see --help: percentages "
				      "0 to 100, counts from 0, --days 1 to 366, times like "
				      "2026-03-02T09:00:00Z, durations like 6h or 1d)",
				      optarg, opts[c - O_LEGACY].name);
			return DUN_EX_USAGE;
		}
	}
	if (optind != argc) {
		dun_cli_error("parity: unexpected argument \"%s\"", argv[optind]);
		return DUN_EX_USAGE;
	}
	if (!legacy_path == !stripe) {
		dun_cli_error("parity: give --legacy FILE (the legacy decision log, JSON lines) or "
			      "--stripe (Stripe's own dunning), one of them (see --help)");
		return DUN_EX_USAGE;
	}
	if (from >= 0 && days_given) {
		dun_cli_error("parity: give --from or --days, not both");
		return DUN_EX_USAGE;
	}
	o.from = from >= 0 ? from : to - days * 86400;
	o.to = to;
	if (o.from >= o.to) {
		dun_cli_error("parity: the window is empty (--from must be before --to)");
		return DUN_EX_USAGE;
	}
	if (stripe)
		return parity_stripe(cli, &o, json);
	/* Read and check the whole log before opening anything for writing. */
	FILE *f = strcmp(legacy_path, "-") ? fopen(legacy_path, "r") : stdin;
	if (!f) {
		dun_cli_error("parity: %s: %s", legacy_path, strerror(errno));
		return DUN_EX_NOINPUT;
	}
	struct dun_parity_list legacy = {0};
	char err[600] = "";
	enum dun_err e = dun_parity_read_log(f, legacy_path, &legacy, err, sizeof err);
	if (f != stdin)
		fclose(f);
	if (e != DUN_OK) {
		dun_parity_list_free(&legacy);
		dun_cli_error("parity: %s", err);
		return DUN_EX_DATAERR;
	}
	char source[300];
	snprintf(source, sizeof source, "legacy log %s", legacy_path);
	o.source = source;
	rc = dun_cli_open(cli, DUN_NEED_DB);
	if (rc) {
		dun_parity_list_free(&legacy);
		return rc;
	}
	return report_and_record(cli, &legacy, &o, json);
}

static enum dun_err collect_events(void *user, json_t *data)
{
	json_array_extend(user, data);
	return DUN_OK;
}

/* Stripe's own dunning as the legacy side (see dun_parity_stripe_actions). */
static int parity_stripe(struct dun_cli *cli, struct dun_parity_opts *o, bool json)
{
	struct dun_stripe *client = NULL;
	int rc = dun_cli_open_stripe(cli, "parity --stripe", &client);
	if (rc)
		return rc;
	char err[512] = "";
	struct dun_form q;
	dun_form_init(&q);
	dun_form_add_i64(&q, "created[gte]", o->from - o->tolerance_s);
	json_t *events = json_array();
	enum dun_err e =
	    dun_stripe_list(client, "/v1/events", &q, collect_events, events, err, sizeof err);
	dun_form_free(&q);
	dun_stripe_destroy(client);
	if (e != DUN_OK) {
		json_decref(events);
		dun_cli_error("parity: listing Stripe's events: %s", err);
		return dun_cli_exit_code(e);
	}
	struct dun_parity_list legacy = {0};
	int64_t n = 0;
	e = dun_parity_stripe_actions(cli->db, events, o->from - o->tolerance_s,
				      o->to + o->tolerance_s, &legacy, &n);
	json_decref(events);
	if (e != DUN_OK) {
		dun_parity_list_free(&legacy);
		dun_cli_error("parity: reading the received events: %s", dun_err_str(e));
		return dun_cli_exit_code(e);
	}
	static char source[600];
	snprintf(source, sizeof source, "Stripe's own dunning at %s (%lld events)",
		 cli->config->stripe_api_base, (long long)n);
	o->source = source;
	o->actions = 1u << DUN_PA_INVOICE_UNCOLLECTIBLE | 1u << DUN_PA_SUBSCRIPTION_CANCEL |
		     1u << DUN_PA_RETRY;
	return report_and_record(cli, &legacy, o, json);
}

static int report_and_record(struct dun_cli *cli, struct dun_parity_list *legacy,
			     const struct dun_parity_opts *po, bool json)
{
	struct dun_parity_opts o = *po;
	char err[600] = "";
	json_t *report = NULL;
	enum dun_err e = dun_parity_run(cli->db, legacy, &o, &report, err, sizeof err);
	dun_parity_list_free(legacy);
	if (e != DUN_OK) {
		dun_cli_error("parity: %s", err);
		return e == DUN_E_NOT_FOUND ? DUN_EX_NOINPUT : dun_cli_exit_code(e);
	}
	int64_t id = 0;
	e = dun_parity_record(cli->db, dun_clock_now(), &o, report, &id);
	if (e != DUN_OK) {
		json_decref(report);
		dun_cli_error("parity: cannot record the report: %s", dun_err_str(e));
		return dun_cli_exit_code(e);
	}
	bool passed = json_is_true(json_object_get(report, "passed"));
	if (json) {
		json_object_set_new(report, "report_id", json_integer(id));
		dun_cli_print_json(report);
	} else {
		print_text(report, id);
		json_decref(report);
	}
	return passed ? DUN_EX_OK : DUN_EX_FAIL;
}
