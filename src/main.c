/*
 * main.c — the `dunning` command: global options, then dispatch to one
 * subcommand from the table below. Each subcommand lives in its own file
 * under src/cli/.
 */
#include "cli/cli.h"
#include "cli/commands.h"
#include "inbox/json_arena.h"
#include "util/clock.h"
#include "util/datadir.h"
#include "util/log.h"

#include <stdlib.h>
#include <string.h>

static const struct dun_command commands[] = {
    {"init", dun_cmd_init, "create or migrate the database"},
    {"demo", dun_cmd_demo, "run a simulated population for 90 days through the real pipeline"},
    {"recompute", dun_cmd_recompute, "recompute one account now (--dry-run: plan only)"},
    {"explain", dun_cmd_explain, "show an account's state, matched rules, plan and history"},
    {"scan", dun_cmd_scan, "find accounts whose stores disagree with the policy (drift)"},
    {"report", dun_cmd_report, "bad-debt episodes, or failed invoices' recovery by week"},
    {"events", dun_cmd_events, "list triggers in the inbox and their workflow state"},
    {"work", dun_cmd_work, "process every trigger and recheck that is due now"},
    {"retry", dun_cmd_retry, "requeue dead triggers (all, or by id) and process them"},
    {"ingest", dun_cmd_ingest, "read Stripe-format events, one JSON per line"},
    {"account", dun_cmd_account, "add, change or list accounts (segment, kill switch)"},
    {"pay-bad-debt", dun_cmd_pay_bad_debt, "create or return the consolidated bad-debt invoice"},
    {"policy", dun_cmd_policy, "check or show a policy file"},
    {"rollout", dun_cmd_rollout, "observe or active: global mode, percentage, allow/deny lists"},
    {"parity", dun_cmd_parity, "compare the observe-mode shadow with a legacy decision log"},
    {"emails", dun_cmd_emails, "show the email log"},
    {"email", dun_cmd_email, "preview an email; claim or record one sent by another system"},
    {"outbox", dun_cmd_outbox, "platform calls and outcome events on their way out; --deliver"},
    {"simulate", dun_cmd_simulate, "run policies over a synthetic population and compare them"},
    {"serve", dun_cmd_serve, "run the service: webhooks, admin API, workers (--config FILE)"},
    {"config", dun_cmd_config, "check a service configuration file (config check FILE)"},
    {"sync", dun_cmd_sync, "import customers, subscriptions and invoices from Stripe (--config)"},
    {"backfill", dun_cmd_backfill, "replay Stripe's events since a time, like lost webhooks"},
    {"users", dun_cmd_users, "add, change or remove the people who may sign in to the panel"},
    {"store", dun_cmd_store, "store copy: move a SQLite database into an empty PostgreSQL one"},
};

static void usage(FILE *out)
{
	fprintf(out, "usage: dunning [global options] COMMAND [options]\n\n"
		     "commands:\n");
	for (size_t i = 0; i < sizeof commands / sizeof commands[0]; i++)
		fprintf(out, "  %-13s %s\n", commands[i].name, commands[i].summary);
	fprintf(
	    out,
	    "\nglobal options (anywhere on the line):\n"
	    "  --db PATH         the SQLite database (default: $DUNNING_DB or ./dunning.db),\n"
	    "                    or a postgresql://user@host/db URL\n"
	    "  --config FILE     the service configuration: database, policy, [provider],\n"
	    "                    [stripe] and the effects (docs/config.md)\n"
	    "  --policy FILE     the policy file (default: $DUNNING_POLICY or the built-in\n"
	    "                    defaults, which %s/policy/default.conf\n"
	    "                    spells out)\n"
	    "  --templates DIR   email templates (default: $DUNNING_TEMPLATES or\n"
	    "                    %s)\n"
	    "  --now TIME        fix the clock: unix seconds, YYYY-MM-DD or YYYY-MM-DDTHH:MM:SSZ\n"
	    "  -v, --verbose     log every step to stderr\n"
	    "\n'dunning COMMAND --help' describes one command.\n",
	    dun_data_dir(), dun_data_templates_dir());
}

/* Remove argv[i] (and argv[i+1] when takes_value) from the vector. */
static void drop(int *argc, char **argv, int i, int n)
{
	for (int k = i; k + n <= *argc; k++)
		argv[k] = argv[k + n];
	*argc -= n;
}

int main(int argc, char **argv)
{
	/* Before any other jansson call: webhooks parse into arenas (inbox/json_arena.h). */
	dun_json_arena_install();
	struct dun_cli cli;
	memset(&cli, 0, sizeof cli);
	cli.db_path = getenv("DUNNING_DB") ? getenv("DUNNING_DB") : "dunning.db";
	cli.policy_path = getenv("DUNNING_POLICY");
	cli.templates_dir =
	    getenv("DUNNING_TEMPLATES") ? getenv("DUNNING_TEMPLATES") : dun_data_templates_dir();
	cli.support_email = getenv("DUNNING_SUPPORT_EMAIL");
	cli.pay_bad_debt_url = getenv("DUNNING_PAY_BAD_DEBT_URL");
	dun_log_set_level(DUN_LOG_WARN);

	/* Global options may stand anywhere; pull them out first. */
	for (int i = 1; i < argc;) {
		const char *a = argv[i];
		const char **slot = NULL;
		if (!strcmp(a, "--db"))
			slot = &cli.db_path;
		else if (!strcmp(a, "--config"))
			slot = &cli.config_path;
		else if (!strcmp(a, "--policy"))
			slot = &cli.policy_path;
		else if (!strcmp(a, "--templates"))
			slot = &cli.templates_dir;
		if (slot || !strcmp(a, "--now")) {
			if (i + 1 >= argc) {
				dun_cli_error("%s needs a value", a);
				return DUN_EX_USAGE;
			}
			if (slot) {
				*slot = argv[i + 1];
				cli.db_path_given |= slot == &cli.db_path;
			} else {
				int64_t t;
				if (!dun_clock_parse(argv[i + 1], &t)) {
					dun_cli_error(
					    "--now: cannot read \"%s\" as a time: use unix "
					    "seconds, YYYY-MM-DD or YYYY-MM-DDTHH:MM:SSZ (UTC), "
					    "from 1970-01-01T00:00:01Z to 9999-12-31T23:59:59Z",
					    argv[i + 1]);
					return DUN_EX_USAGE;
				}
				dun_clock_set(t);
			}
			drop(&argc, argv, i, 2);
			continue;
		}
		if (!strcmp(a, "-v") || !strcmp(a, "--verbose")) {
			cli.verbose = true;
			dun_log_set_level(DUN_LOG_DEBUG);
			drop(&argc, argv, i, 1);
			continue;
		}
		i++;
	}
	if (argc < 2) {
		usage(stderr);
		return DUN_EX_USAGE;
	}
	if (dun_cli_is_help(argv[1]) || !strcmp(argv[1], "help")) {
		usage(stdout);
		return DUN_EX_OK;
	}
	if (!strcmp(argv[1], "--version")) {
		printf("dunning %s\n", DUN_VERSION);
		return DUN_EX_OK;
	}
	for (size_t i = 0; i < sizeof commands / sizeof commands[0]; i++) {
		if (strcmp(argv[1], commands[i].name) != 0)
			continue;
		int rc = commands[i].run(&cli, argc - 1, argv + 1);
		dun_cli_close(&cli);
		return rc;
	}
	dun_cli_error("unknown command \"%s\" (see 'dunning --help')", argv[1]);
	return DUN_EX_USAGE;
}
