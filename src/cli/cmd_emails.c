/*
 * cmd_emails.c — `dunning emails`: the email log, which is also the email
 * outbox (src/apply/email_sender.c). Lists it, prints one message, shows
 * what is still undelivered (--queue), delivers what is due now
 * (--deliver, as `work` does after its drain) and puts given-up emails
 * back in the queue (--requeue).
 */
#include "commands.h"
#include "apply/email_sender.h"
#include "util/clock.h"

#include <getopt.h>
#include <string.h>

int dun_cmd_emails(struct dun_cli *cli, int argc, char **argv)
{
	static const struct option opts[] = {
	    {"show", required_argument, NULL, 's'}, {"queue", no_argument, NULL, 'q'},
	    {"deliver", no_argument, NULL, 'd'},    {"requeue", no_argument, NULL, 'r'},
	    {"help", no_argument, NULL, 'h'},	    {NULL, 0, NULL, 0}};
	const char *show = NULL;
	bool queue = false, deliver = false, requeue = false;
	int c;
	optind = 0;
	while ((c = getopt_long(argc, argv, "s:qdrh", opts, NULL)) != -1) {
		if (c == 's')
			show = optarg;
		else if (c == 'q')
			queue = true;
		else if (c == 'd')
			deliver = true;
		else if (c == 'r')
			requeue = true;
		else if (c == 'h') {
			printf(
			    "usage: dunning emails [ACCOUNT] [--show KEY]\n"
			    "       dunning emails --queue\n"
			    "       dunning emails --deliver\n"
			    "       dunning emails --requeue [KEY]\n\n"
			    "List the email log (one row per dedup key), or print one message.\n"
			    "--queue    the emails not yet delivered: queued, being sent, dead\n"
			    "--deliver  deliver what is due now (as 'work' does after its drain)\n"
			    "--requeue  move dead emails (all, or KEY) back to the queue\n");
			return DUN_EX_OK;
		} else
			return DUN_EX_USAGE;
	}
	if ((show != NULL) + queue + deliver + requeue > 1) {
		dun_cli_error("emails: --show, --queue, --deliver and --requeue go one at a time");
		return DUN_EX_USAGE;
	}
	const char *account = optind < argc ? argv[optind] : NULL;
	if (optind + 1 < argc || ((queue || deliver) && account)) {
		dun_cli_error("emails: unexpected argument \"%s\"", argv[argc - 1]);
		return DUN_EX_USAGE;
	}
	/* Listing only reads: it works on a read-only database. */
	int rc = dun_cli_open(cli, deliver   ? DUN_NEED_ENGINE
				   : requeue ? DUN_NEED_DB
					     : DUN_NEED_DB | DUN_NEED_READONLY);
	if (rc)
		return rc;
	if (deliver)
		return dun_cli_deliver_emails(cli, false);
	if (requeue) {
		int n = 0;
		enum dun_err e = dun_email_requeue_dead(cli->db, account, dun_clock_now(), &n);
		if (e != DUN_OK) {
			dun_cli_error("emails: %s: %s", dun_err_str(e), dun_db_errmsg(cli->db));
			return dun_cli_exit_code(e);
		}
		if (account && !n) {
			dun_cli_error("emails: %s is not a dead email", account);
			return DUN_EX_FAIL;
		}
		printf("requeued %d emails\n", n);
		return DUN_EX_OK;
	}
	if (queue) {
		struct dun_stmt *st = dun_db_stmt(
		    cli->db, "SELECT queued_at, state, attempts, not_before, key, last_error"
			     " FROM emails WHERE state <> 'sent' ORDER BY id");
		char t[32], nb[32];
		while (dun_stmt_row(st)) {
			int64_t not_before = dun_stmt_col_int64(st, 3);
			printf("%s %-7s attempts=%d next=%s %s %s\n",
			       dun_cli_time(dun_stmt_col_int64(st, 0), t, sizeof t),
			       dun_stmt_col_text(st, 1), dun_stmt_col_int(st, 2),
			       not_before ? dun_cli_time(not_before, nb, sizeof nb) : "now",
			       dun_stmt_col_text(st, 4), dun_stmt_col_text(st, 5));
		}
		enum dun_err e = dun_stmt_err(st);
		dun_stmt_reset(st);
		return e == DUN_OK ? DUN_EX_OK : dun_cli_exit_code(e);
	}
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
						   " ORDER BY id");
	dun_stmt_bind_text_copy(st, 1, account);
	char t[32];
	while (dun_stmt_row(st))
		printf("%s %-20s %-7s %s\n", dun_cli_time(dun_stmt_col_int64(st, 0), t, sizeof t),
		       dun_stmt_col_text(st, 1), dun_stmt_col_text(st, 2),
		       dun_stmt_col_text(st, 3));
	dun_stmt_reset(st);
	return DUN_EX_OK;
}
