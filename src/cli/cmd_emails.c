/*
 * cmd_emails.c — `dunning emails [ACCOUNT] [--show KEY]`: the email log.
 */
#include "commands.h"

#include <getopt.h>
#include <string.h>

int dun_cmd_emails(struct dun_cli *cli, int argc, char **argv)
{
	static const struct option opts[] = {{"show", required_argument, NULL, 's'},
					     {"help", no_argument, NULL, 'h'},
					     {NULL, 0, NULL, 0}};
	const char *show = NULL;
	int c;
	optind = 0;
	while ((c = getopt_long(argc, argv, "s:h", opts, NULL)) != -1) {
		if (c == 's')
			show = optarg;
		else if (c == 'h') {
			printf(
			    "usage: dunning emails [ACCOUNT] [--show KEY]\n\n"
			    "List the email log (one row per dedup key), or print one message.\n");
			return DUN_EX_OK;
		} else
			return DUN_EX_USAGE;
	}
	const char *account = optind < argc ? argv[optind] : NULL;
	int rc = dun_cli_open(cli, DUN_NEED_DB);
	if (rc)
		return rc;
	if (show) {
		struct dun_stmt *st =
		    dun_db_stmt(cli->db, "SELECT to_addr, subject, body, message_id,"
					 " state FROM emails WHERE key = ?1");
		dun_stmt_bind_text(st, 1, show);
		if (!dun_stmt_row(st)) {
			dun_stmt_reset(st);
			dun_cli_error("emails: no email with key \"%s\"", show);
			return DUN_EX_NOINPUT;
		}
		printf("To: %s\nSubject: %s\nMessage-ID: %s\nState: %s\n\n%s\n",
		       dun_stmt_col_text(st, 0), dun_stmt_col_text(st, 1), dun_stmt_col_text(st, 3),
		       dun_stmt_col_text(st, 4), dun_stmt_col_text(st, 2));
		dun_stmt_reset(st);
		return DUN_EX_OK;
	}
	struct dun_stmt *st = dun_db_stmt(cli->db, "SELECT created_at, kind, state, key FROM emails"
						   " WHERE ?1 IS NULL OR account_id = ?1"
						   " ORDER BY created_at, key");
	dun_stmt_bind_text_copy(st, 1, account);
	char t[32];
	while (dun_stmt_row(st))
		printf("%s %-20s %-7s %s\n", dun_cli_time(dun_stmt_col_int64(st, 0), t, sizeof t),
		       dun_stmt_col_text(st, 1), dun_stmt_col_text(st, 2),
		       dun_stmt_col_text(st, 3));
	dun_stmt_reset(st);
	return DUN_EX_OK;
}
