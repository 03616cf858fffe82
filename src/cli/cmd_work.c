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

#include <getopt.h>
#include <stdlib.h>
#include <string.h>

int dun_cmd_work(struct dun_cli *cli, int argc, char **argv)
{
	if (argc > 1 && dun_cli_is_help(argv[1])) {
		printf("usage: dunning work\n\n"
		       "Process every trigger and scheduled recheck that is due now, then stop.\n"
		       "Exit status 1 when some recompute failed (its trigger is retrying or "
		       "dead).\n");
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
		char *end;
		long long id = strtoll(argv[i], &end, 10);
		if (*end || id <= 0) {
			dun_cli_error("retry: \"%s\" is not an inbox id", argv[i]);
			return DUN_EX_USAGE;
		}
	}
	int rc = dun_cli_open(cli, DUN_NEED_ENGINE);
	if (rc)
		return rc;
	int total = 0;
	if (argc == 1) {
		dun_inbox_requeue(cli->db, 0, dun_clock_now(), &total);
	} else {
		for (int i = 1; i < argc; i++) {
			int n = 0;
			dun_inbox_requeue(cli->db, strtoll(argv[i], NULL, 10), dun_clock_now(), &n);
			if (!n)
				dun_cli_error("retry: trigger %s is not dead or retrying", argv[i]);
			total += n;
		}
	}
	printf("requeued %d triggers\n", total);
	return dun_cli_drain(cli, false);
}
