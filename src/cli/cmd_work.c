/*
 * cmd_work.c — `dunning work` and `dunning retry`: process the inbox.
 *
 * `work` runs every trigger and scheduled recheck that is due now and stops
 * (a cron-friendly single pass; `dunning serve` runs the same loop forever).
 * `retry` first moves dead triggers — all of them, or the ids given — back
 * to received, then does the same pass.
 */
#include "commands.h"
#include "inbox/inbox.h"
#include "util/clock.h"
#include "util/input.h"

#include <getopt.h>
#include <stdlib.h>
#include <string.h>

int dun_cmd_work(struct dun_cli *cli, int argc, char **argv)
{
	if (argc > 1 && dun_cli_is_help(argv[1])) {
		printf("usage: dunning work\n\n"
		       "Process every trigger and scheduled recheck that is due now, then stop.\n"
		       "Exit status 1 when some recompute failed (its trigger is retrying or "
		       "dead).\n"
		       "SIGTERM or SIGINT stops it after the recompute or email in progress: what\n"
		       "it had claimed and not done goes back to the queue, due now; exit status "
		       "75.\n");
		return DUN_EX_OK;
	}
	if (argc > 1) {
		dun_cli_error("work: unexpected argument \"%s\"", argv[1]);
		return DUN_EX_USAGE;
	}
	int rc = dun_cli_open(cli, DUN_NEED_ENGINE);
	return rc ? rc : dun_cli_drain(cli, false);
}

int dun_cmd_retry(struct dun_cli *cli, int argc, char **argv)
{
	if (argc > 1 && dun_cli_is_help(argv[1])) {
		printf("usage: dunning retry [ID ...]\n\n"
		       "Move dead triggers (all, or the given inbox ids; retrying ones too when\n"
		       "named) back to received, then process everything that is due now.\n");
		return DUN_EX_OK;
	}
	for (int i = 1; i < argc; i++) {
		int64_t id = 0;
		if (!dun_input_parse_count(argv[i], INT64_MAX, &id) || id <= 0) {
			dun_cli_error("retry: \"%s\" is not an inbox id", argv[i]);
			return DUN_EX_USAGE;
		}
	}
	int rc = dun_cli_open(cli, DUN_NEED_ENGINE);
	if (rc)
		return rc;
	/* Every id named must exist before anything is requeued. */
	for (int i = 1; i < argc; i++) {
		struct dun_stmt *st = dun_db_stmt(cli->db, "SELECT 1 FROM inbox WHERE id = ?1");
		dun_stmt_bind_int64(st, 1, strtoll(argv[i], NULL, 10));
		int src = dun_stmt_step(st);
		enum dun_err e = dun_stmt_err(st);
		dun_stmt_reset(st);
		if (src != DUN_STEP_ROW && src != DUN_STEP_DONE) {
			dun_cli_error("retry: reading the inbox: %s", dun_err_str(e));
			return dun_cli_exit_code(e);
		}
		if (src == DUN_STEP_DONE) {
			dun_cli_error("retry: no trigger %s in the inbox (see 'dunning events'); "
				      "nothing was requeued",
				      argv[i]);
			return DUN_EX_NOINPUT;
		}
	}
	int total = 0;
	if (argc == 1) {
		enum dun_err e = dun_inbox_requeue(cli->db, 0, dun_clock_now(), &total);
		if (e != DUN_OK) {
			dun_cli_error("retry: %s", dun_err_str(e));
			return dun_cli_exit_code(e);
		}
	} else {
		for (int i = 1; i < argc; i++) {
			int n = 0;
			enum dun_err e = dun_inbox_requeue(cli->db, strtoll(argv[i], NULL, 10),
							   dun_clock_now(), &n);
			if (e != DUN_OK) {
				dun_cli_error("retry: %s: %s", argv[i], dun_err_str(e));
				return dun_cli_exit_code(e);
			}
			if (!n)
				dun_cli_error("retry: trigger %s is not dead or retrying", argv[i]);
			total += n;
		}
	}
	printf("requeued %d triggers\n", total);
	return dun_cli_drain(cli, false);
}
