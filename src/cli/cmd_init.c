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
		       "newer dunning is refused.\n");
		return DUN_EX_OK;
	}
	if (argc > 1) {
		dun_cli_error("init: unexpected argument \"%s\"", argv[1]);
		return DUN_EX_USAGE;
	}
	int rc = dun_cli_open(cli, DUN_NEED_DB);
	if (rc)
		return rc;
	printf("%s: schema version %d\n", cli->db_path, dun_db_schema_version(cli->db));
	return DUN_EX_OK;
}
