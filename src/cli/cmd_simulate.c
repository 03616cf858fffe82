/*
 * cmd_simulate.c — `dunning simulate`: one or two policies over the same
 * synthetic population (same seed, same customers, same cards), each in its
 * own in-memory database, compared side by side: accounts per stage at the
 * end, money recovered, emails, bad-debt entries, retries.
 */
#include "commands.h"
#include "apply/local.h"
#include "cli/world.h"
#include "config/policy_file.h"
#include "util/clock.h"

#include <getopt.h>
#include <stdlib.h>
#include <string.h>

static enum dun_err run_one(struct dun_cli *cli, const struct dun_policy *policy,
			    const struct dun_world_config *cfg, struct dun_world_stats *out)
{
	struct dun_db *db = NULL;
	char err[256];
	enum dun_err e = dun_db_open(":memory:", &db, err, sizeof err);
	if (e != DUN_OK) {
		dun_cli_error("simulate: %s", err);
		return e;
	}
	dun_db_relax_durability(db);
	/* A sandbox in memory: the policy's effects are the point, so it writes. */
	dun_db_setting_set(db, "mode", "active");
	dun_db_setting_set(db, "rollout.percent", "100");
	struct dun_sim *sim = dun_sim_new(db, cfg->seed);
	struct dun_engine en;
	dun_engine_init(&en, db, policy, dun_sim_provider(sim), dun_local_platform(db),
			dun_log_mailer(), dun_template_renderer(&cli->renderer));
	struct dun_world *w = dun_world_new(&en, sim, cfg);
	e = dun_world_populate(w);
	for (int day = 0; day < cfg->days && e == DUN_OK; day++) {
		e = dun_world_day(w, day);
		if (cfg->progress)
			fprintf(stderr, "\rday %d/%d", day + 1, cfg->days);
	}
	if (cfg->progress)
		fprintf(stderr, "\r              \r");
	if (e == DUN_OK)
		e = dun_world_stats(w, cfg->days - 1, out);
	dun_world_destroy(w);
	dun_engine_free(&en);
	dun_sim_destroy(sim);
	dun_db_close(db);
	return e;
}

static void row(const char *name, double a, double b, bool two, bool money)
{
	if (money) {
		if (two)
			printf("  %-24s %14.2f %14.2f %+14.2f\n", name, a, b, b - a);
		else
			printf("  %-24s %14.2f\n", name, a);
	} else {
		if (two)
			printf("  %-24s %14.0f %14.0f %+14.0f\n", name, a, b, b - a);
		else
			printf("  %-24s %14.0f\n", name, a);
	}
}

int dun_cmd_simulate(struct dun_cli *cli, int argc, char **argv)
{
	static const struct option opts[] = {
	    {"accounts", required_argument, NULL, 'a'}, {"days", required_argument, NULL, 'd'},
	    {"seed", required_argument, NULL, 's'},	{"compare", required_argument, NULL, 'c'},
	    {"help", no_argument, NULL, 'h'},		{NULL, 0, NULL, 0}};
	struct dun_world_config cfg = {.accounts = 1000, .days = 90, .seed = 7};
	const char *compare = NULL;
	int c;
	optind = 0;
	while ((c = getopt_long(argc, argv, "a:d:s:c:h", opts, NULL)) != -1) {
		switch (c) {
		case 'a':
		case 'd':
		case 's':
			if (!dun_world_option(c, optarg, "simulate", &cfg))
				return DUN_EX_USAGE;
			break;
		case 'c':
			compare = optarg;
			break;
		case 'h':
			printf(
			    "usage: dunning simulate [--accounts N] [--days N] [--seed S]\n"
			    "                        [--compare POLICY_FILE]\n\n"
			    "Run the policy (--policy, or the defaults) over a synthetic "
			    "population\n"
			    "for N days (default 1000 accounts, 90 days) in memory and print the\n"
			    "outcome. With --compare, run a second policy over the identical\n"
			    "population and print both side by side with the difference.\n");
			return DUN_EX_OK;
		default:
			return DUN_EX_USAGE;
		}
	}
	if (optind != argc) {
		dun_cli_error("simulate: unexpected argument \"%s\"", argv[optind]);
		return DUN_EX_USAGE;
	}
	struct dun_policy b;
	char err[512];
	if (compare && dun_policy_file_load(compare, &b, err, sizeof err) != DUN_OK) {
		dun_cli_error("%s", err);
		return DUN_EX_CONFIG;
	}
	/* Templates and the policy, but no database: each run has its own. */
	int rc = dun_cli_open(cli, DUN_NEED_POLICY);
	if (rc)
		return rc;
	if (dun_template_set_load(cli->templates_dir, &cli->templates, err, sizeof err) != DUN_OK) {
		dun_cli_error("%s", err);
		return DUN_EX_CONFIG;
	}
	cli->renderer.templates = cli->templates;
	cli->renderer.support_email = cli->support_email ? cli->support_email : "";
	cli->renderer.pay_bad_debt_url = cli->pay_bad_debt_url;
	dun_clock_parse("2026-01-05", &cfg.start);
	cfg.progress = dun_cli_tty();
	struct dun_world_stats sa, sb;
	memset(&sb, 0, sizeof sb);
	enum dun_err e = run_one(cli, &cli->policy, &cfg, &sa);
	if (e == DUN_OK && compare)
		e = run_one(cli, &b, &cfg, &sb);
	if (e != DUN_OK) {
		dun_cli_error("simulate: %s", dun_err_str(e));
		return dun_cli_exit_code(e);
	}
	bool two = compare != NULL;
	printf("simulated %d accounts for %d days (seed %llu)\n", cfg.accounts, cfg.days,
	       (unsigned long long)cfg.seed);
	if (two)
		printf("  %-24s %14s %14s %14s\n", "", "policy A", "policy B", "B - A");
	printf("  A = %s\n", cli->policy_path ? cli->policy_path : "built-in defaults");
	if (two)
		printf("  B = %s\n", compare);
	for (int s = 0; s < DUN_STAGE__COUNT; s++) {
		char name[40];
		snprintf(name, sizeof name, "accounts %s", dun_stage_name((enum dun_stage)s));
		row(name, (double)sa.per_stage[s], (double)sb.per_stage[s], two, false);
	}
	row("recovered (USD)", (double)sa.recovered_minor / 100.0,
	    (double)sb.recovered_minor / 100.0, two, true);
	row("written off (USD)", (double)sa.written_off_minor / 100.0,
	    (double)sb.written_off_minor / 100.0, two, true);
	row("emails sent", (double)sa.emails_sent, (double)sb.emails_sent, two, false);
	row("bad-debt entries", (double)sa.bad_debt_entries, (double)sb.bad_debt_entries, two,
	    false);
	row("bad-debt exits", (double)sa.bad_debt_exits, (double)sb.bad_debt_exits, two, false);
	row("payment retries", (double)sa.retries, (double)sb.retries, two, false);
	row("failing invoices open", (double)sa.failing_invoices, (double)sb.failing_invoices, two,
	    false);
	row("consequences applied", (double)sa.consequences, (double)sb.consequences, two, false);
	return DUN_EX_OK;
}
