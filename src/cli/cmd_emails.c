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
		sqlite3_stmt *st = dun_db_stmt(cli->db, "SELECT to_addr, subject, body, message_id,"
							" state FROM emails WHERE key = ?1");
		sqlite3_bind_text(st, 1, show, -1, SQLITE_STATIC);
		if (sqlite3_step(st) != SQLITE_ROW) {
			sqlite3_reset(st);
			dun_cli_error("emails: no email with key \"%s\"", show);
			return DUN_EX_NOINPUT;
		}
		printf("To: %s\nSubject: %s\nMessage-ID: %s\nState: %s\n\n%s\n",
		       sqlite3_column_text(st, 0), sqlite3_column_text(st, 1),
		       sqlite3_column_text(st, 3), sqlite3_column_text(st, 4),
		       sqlite3_column_text(st, 2));
		sqlite3_reset(st);
		return DUN_EX_OK;
	}
	sqlite3_stmt *st = dun_db_stmt(cli->db, "SELECT created_at, kind, state, key FROM emails"
						" WHERE ?1 IS NULL OR account_id = ?1"
						" ORDER BY created_at, key");
	dun_db_bind_text(st, 1, account);
	char t[32];
	while (sqlite3_step(st) == SQLITE_ROW)
		printf("%s %-20s %-7s %s\n", dun_cli_time(sqlite3_column_int64(st, 0), t, sizeof t),
		       sqlite3_column_text(st, 1), sqlite3_column_text(st, 2),
		       sqlite3_column_text(st, 3));
	sqlite3_reset(st);
	return DUN_EX_OK;
}
