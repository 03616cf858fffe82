/*
 * cmd_init.c — `dunning init`: create the database, or migrate an existing
 * one to this binary's schema.
 */
#include "commands.h"

#include <string.h>

int dun_cmd_init(struct dun_cli *cli, int argc, char **argv)
{
	if (argc > 1 && dun_cli_is_help(argv[1])) {
		printf("usage: dunning init\n\n"
		       "Create the database given by --db (default ./dunning.db) or migrate it to\n"
		       "the schema of this binary. Safe to run again. A database written by a\n"
		       "newer dunning is refused. A database without a rollout state gets\n"
		       "the safe one: observe at 0%% (see 'dunning rollout').\n");
		return DUN_EX_OK;
	}
	if (argc > 1) {
		dun_cli_error("init: unexpected argument \"%s\"", argv[1]);
		return DUN_EX_USAGE;
	}
	int rc = dun_cli_open(cli, DUN_NEED_DB | DUN_NEED_CREATE);
	if (rc)
		return rc;
	printf("%s: schema version %d\n", dun_db_path(cli->db), dun_db_schema_version(cli->db));
	/* Safe by default: a database without a rollout row observes, at 0%. */
	enum dun_err e = dun_rollout_init_defaults(cli->db);
	struct dun_rollout r;
	if (e == DUN_OK)
		e = dun_rollout_load(cli->db, &r);
	if (e != DUN_OK) {
		dun_cli_error("init: cannot write the rollout defaults: %s", dun_err_str(e));
		return dun_cli_exit_code(e);
	}
	printf("rollout: %s at %g%%%s\n", r.global_observe ? "observe" : "active", r.percent,
	       r.global_observe ? " (nothing is written until 'dunning rollout mode active')" : "");
	return DUN_EX_OK;
}
