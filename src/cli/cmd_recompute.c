/*
 * cmd_recompute.c — `dunning recompute ACCOUNT [--dry-run]`: the support
 * button on the command line. Without --dry-run it goes through the inbox
 * like every other trigger (so it is serialized with workers and recorded),
 * then processes that account's due triggers at once. It touches that
 * account only: other accounts' due triggers stay for the workers.
 */
#include "commands.h"
#include "inbox/ingest.h"
#include "inbox/worker.h"
#include "util/clock.h"

#include <getopt.h>
#include <string.h>

static void print_plan(const struct dun_engine *en)
{
	for (int i = 0; i < en->plan.n; i++) {
		char line[DUN_KEY_MAX + 64];
		dun_conseq_format(&en->plan.items[i], line, sizeof line);
		printf("  %s\n", line);
	}
}

/*
 * What our own writes caused, for this account only: with the simulated
 * provider its webhooks (a retry's outcome) are delivered into the inbox,
 * then the account's due triggers are processed, until neither moves.
 */
static int settle_account(struct dun_cli *cli, const char *account,
			  const struct dun_inbox_config *cfg, const char *worker)
{
	for (int round = 0; round < 100; round++) {
		int64_t events = 0;
		if (cli->sim) {
			char err[256] = "";
			enum dun_err e =
			    dun_ingest_sim_events(cli->db, cli->sim, &events, err, sizeof err);
			if (e != DUN_OK) {
				dun_cli_error("delivering the simulated provider's events: %s",
					      err);
				return dun_cli_exit_code(e);
			}
		}
		struct dun_inbox_item item;
		int n = 0;
		enum dun_err e = dun_inbox_claim_account(cli->db, cfg, worker, account,
							 dun_clock_now(), &item, &n);
		if (e != DUN_OK)
			return dun_cli_exit_code(e);
		if (n == 0)
			return DUN_EX_OK;
		struct dun_recompute_result r;
		e = dun_worker_run_claimed(&cli->engine, cfg, worker, &item, &r, NULL);
		if (e == DUN_OK) {
			printf("%s: then %s -> %s, mode %s, decision %lld (%s)\n", account,
			       dun_stage_name(r.from), dun_stage_name(r.to), dun_mode_name(r.mode),
			       (long long)r.decision_id, item.kind);
			continue;
		}
		dun_cli_error("recompute: %s (the trigger will be retried)",
			      r.apply.error_text[0] ? r.apply.error_text : dun_err_str(e));
		return dun_cli_exit_code(e);
	}
	return DUN_EX_OK;
}

int dun_cmd_recompute(struct dun_cli *cli, int argc, char **argv)
{
	static const struct option opts[] = {{"dry-run", no_argument, NULL, 'n'},
					     {"help", no_argument, NULL, 'h'},
					     {NULL, 0, NULL, 0}};
	bool dry = false;
	int c;
	optind = 0;
	while ((c = getopt_long(argc, argv, "nh", opts, NULL)) != -1) {
		switch (c) {
		case 'n':
			dry = true;
			break;
		case 'h':
			printf("usage: dunning recompute ACCOUNT [--dry-run]\n\n"
			       "Recompute one account now: read all its state, apply the policy,\n"
			       "apply the difference. --dry-run prints the plan and writes "
			       "nothing.\n");
			return DUN_EX_OK;
		default:
			return DUN_EX_USAGE;
		}
	}
	if (optind != argc - 1) {
		dun_cli_error("recompute: expected one ACCOUNT (see --help)");
		return DUN_EX_USAGE;
	}
	const char *account = argv[optind];
	int rc = dun_cli_open(cli, DUN_NEED_ENGINE | (dry ? DUN_NEED_READONLY : 0));
	if (rc)
		return rc;
	struct dun_engine *en = &cli->engine;
	if (dry) {
		struct dun_recompute_result r;
		enum dun_err e = dun_engine_recompute(en, account, NULL, true, &r);
		if (e == DUN_E_NOT_FOUND) {
			dun_cli_error("recompute: no account \"%s\"", account);
			return DUN_EX_NOINPUT;
		}
		if (e != DUN_OK) {
			dun_cli_error("recompute: %s", dun_err_str(e));
			return dun_cli_exit_code(e);
		}
		printf("%s: %s -> %s%s%s (dry run, mode would be %s: %s)\n", account,
		       dun_stage_name(r.from), dun_stage_name(r.to), r.held ? " [held]" : "",
		       r.skipped ? " [skipped]" : "", dun_mode_name(r.mode), r.mode_why);
		printf("plan (%d):\n", en->plan.n);
		print_plan(en);
		return DUN_EX_OK;
	}
	/* Check the account exists before queueing anything for it. */
	enum dun_err e = dun_engine_evaluate(en, account, dun_clock_now());
	if (e == DUN_E_NOT_FOUND) {
		dun_cli_error("recompute: no account \"%s\"", account);
		return DUN_EX_NOINPUT;
	}
	/* A store that cannot be read now: queued all the same, and retried. */
	if (e != DUN_OK && !dun_err_is_retryable(e)) {
		dun_cli_error("recompute: %s: %s%s%s", account, dun_err_str(e),
			      en->unread[0] ? ": " : "", en->unread);
		return dun_cli_exit_code(e);
	}
	struct dun_trigger_ref t = {.kind = "support_recompute"};
	bool inserted;
	e = dun_inbox_enqueue(cli->db, account, t.kind, "cli", "", NULL, 0, &inserted, &t.id);
	if (e != DUN_OK) {
		dun_cli_error("recompute: cannot record the trigger: %s", dun_err_str(e));
		return dun_cli_exit_code(e);
	}
	struct dun_inbox_config cfg;
	dun_cli_inbox_config(cli, &cfg);
	char worker[200];
	dun_inbox_worker_id(worker, sizeof worker, "cli");
	struct dun_inbox_item item;
	int n = 0;
	/* Claim only this account: other accounts' triggers stay for the workers. */
	e = dun_inbox_claim_account(cli->db, &cfg, worker, account, dun_clock_now(), &item, &n);
	if (e != DUN_OK) {
		/* A store failure is not "busy": say what it is, with its own exit code. */
		dun_cli_error("recompute: cannot claim %s: %s (the trigger %lld is queued)",
			      account, dun_err_str(e), (long long)t.id);
		return dun_cli_exit_code(e);
	}
	if (n == 0) {
		dun_cli_error("recompute: %s is being processed by a worker right now; the "
			      "trigger %lld is queued",
			      account, (long long)t.id);
		return DUN_EX_TEMPFAIL;
	}
	struct dun_recompute_result r;
	t.id = item.id;
	e = dun_worker_run_claimed(en, &cfg, worker, &item, &r, NULL);
	printf("%s: %s -> %s%s%s, mode %s, decision %lld\n", account, dun_stage_name(r.from),
	       dun_stage_name(r.to), r.held ? " [held]" : "", r.skipped ? " [skipped]" : "",
	       dun_mode_name(r.mode), (long long)r.decision_id);
	printf("plan (%d), applied %d, skipped %d:\n", en->plan.n, r.apply.n_applied,
	       r.apply.n_skipped);
	print_plan(en);
	if (e != DUN_OK) {
		dun_cli_error("recompute: %s (the trigger will be retried)",
			      r.apply.error_text[0] ? r.apply.error_text : dun_err_str(e));
		return dun_cli_exit_code(e);
	}
	/* What the provider answers to our writes (a retry's outcome) comes next. */
	return settle_account(cli, account, &cfg, worker);
}
