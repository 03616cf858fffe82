/*
 * cmd_rollout.c — `dunning rollout`: the observe/active gate.
 */
#include "commands.h"
#include "apply/rollout.h"

#include <stdlib.h>
#include <string.h>

static int usage(void)
{
	printf("usage: dunning rollout show\n"
	       "       dunning rollout mode observe|active\n"
	       "       dunning rollout percent N          (0 to 100, decimals allowed)\n"
	       "       dunning rollout allow|deny|remove ACCOUNT\n\n"
	       "observe computes and records every decision but writes nothing. In active\n"
	       "mode an account is written to when it is on the allow-list, or not on the\n"
	       "deny-list and inside the percentage (a stable hash of its id).\n");
	return DUN_EX_OK;
}

int dun_cmd_rollout(struct dun_cli *cli, int argc, char **argv)
{
	if (argc < 2)
		return usage(), DUN_EX_USAGE;
	if (dun_cli_is_help(argv[1]))
		return usage();
	const char *verb = argv[1];
	int rc = dun_cli_open(cli, DUN_NEED_DB);
	if (rc)
		return rc;
	enum dun_err e = DUN_OK;
	if (!strcmp(verb, "show") && argc == 2) {
		struct dun_rollout r;
		dun_rollout_load(cli->db, &r);
		printf("mode: %s\npercent: %g\n", r.global_observe ? "observe" : "active",
		       r.percent);
		sqlite3_stmt *st = dun_db_stmt(cli->db, "SELECT account_id, list FROM rollout_list"
							" ORDER BY list, account_id");
		while (sqlite3_step(st) == SQLITE_ROW)
			printf("%s: %s\n", sqlite3_column_text(st, 1), sqlite3_column_text(st, 0));
		sqlite3_reset(st);
		return DUN_EX_OK;
	}
	if (argc != 3) {
		dun_cli_error("rollout %s: wrong number of arguments (see --help)", verb);
		return DUN_EX_USAGE;
	}
	const char *arg = argv[2];
	if (!strcmp(verb, "mode")) {
		if (strcmp(arg, "observe") && strcmp(arg, "active")) {
			dun_cli_error("rollout mode: observe or active, not \"%s\"", arg);
			return DUN_EX_USAGE;
		}
		e = dun_db_setting_set(cli->db, "mode", arg);
	} else if (!strcmp(verb, "percent")) {
		char *end;
		double p = strtod(arg, &end);
		if (*end || p < 0 || p > 100) {
			dun_cli_error("rollout percent: a number from 0 to 100, not \"%s\"", arg);
			return DUN_EX_USAGE;
		}
		e = dun_db_setting_set(cli->db, "rollout.percent", arg);
	} else if (!strcmp(verb, "allow") || !strcmp(verb, "deny")) {
		sqlite3_stmt *st =
		    dun_db_stmt(cli->db, "INSERT INTO rollout_list(account_id, list) VALUES"
					 " (?1, ?2) ON CONFLICT(account_id) DO UPDATE SET"
					 " list = excluded.list");
		sqlite3_bind_text(st, 1, arg, -1, SQLITE_STATIC);
		sqlite3_bind_text(st, 2, verb, -1, SQLITE_STATIC);
		e = dun_db_step_done(st);
	} else if (!strcmp(verb, "remove")) {
		sqlite3_stmt *st =
		    dun_db_stmt(cli->db, "DELETE FROM rollout_list WHERE account_id = ?1");
		sqlite3_bind_text(st, 1, arg, -1, SQLITE_STATIC);
		e = dun_db_step_done(st);
	} else {
		dun_cli_error("rollout: unknown action \"%s\" (see --help)", verb);
		return DUN_EX_USAGE;
	}
	if (e != DUN_OK) {
		dun_cli_error("rollout: %s", sqlite3_errmsg(dun_db_handle(cli->db)));
		return dun_cli_exit_code(e);
	}
	printf("rollout %s %s\n", verb, arg);
	return DUN_EX_OK;
}
