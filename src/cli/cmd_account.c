/*
 * cmd_account.c — `dunning account add|set|list`: who the engine knows and
 * how to treat them (segment, kill switch). These rows are configuration,
 * not dunning consequences, so they are written here and not by the
 * applier; a change is followed by a recompute trigger so the engine acts
 * on it (e.g. a kill switch turned off).
 */
#include "commands.h"
#include "inbox/inbox.h"
#include "util/clock.h"

#include <getopt.h>
#include <string.h>

static int usage(void)
{
	printf("usage: dunning account add ID [--segment self_serve|enterprise|contract]\n"
	       "                              [--email E] [--name N] [--customer CUS_ID]\n"
	       "       dunning account set ID [--segment S] [--kill-switch on|off]\n"
	       "       dunning account list [--stage STAGE] [--limit N]\n\n"
	       "Enterprise and contract accounts and accounts with the kill switch on are\n"
	       "never touched by dunning; their decisions say why.\n");
	return DUN_EX_OK;
}

static int list(struct dun_cli *cli, int argc, char **argv)
{
	static const struct option opts[] = {{"stage", required_argument, NULL, 's'},
					     {"limit", required_argument, NULL, 'n'},
					     {NULL, 0, NULL, 0}};
	const char *stage = NULL;
	long limit = 100;
	int c;
	optind = 0;
	while ((c = getopt_long(argc, argv, "s:n:", opts, NULL)) != -1) {
		if (c == 's')
			stage = optarg;
		else if (c == 'n')
			limit = atol(optarg);
		else
			return DUN_EX_USAGE;
	}
	enum dun_stage sv;
	if (stage && !dun_stage_parse(stage, &sv)) {
		dun_cli_error("account list: unknown stage \"%s\"", stage);
		return DUN_EX_USAGE;
	}
	int rc = dun_cli_open(cli, DUN_NEED_DB | DUN_NEED_READONLY);
	if (rc)
		return rc;
	struct dun_stmt *st = dun_db_stmt(
	    cli->db, "SELECT a.id, a.segment, a.kill_switch, a.bad_debt,"
		     " COALESCE(d.stage, 'none'), COALESCE(p.banned, 0),"
		     " COALESCE(p.entitlement, 'full') FROM accounts a"
		     " LEFT JOIN dunning d ON d.account_id = a.id"
		     " LEFT JOIN platform p ON p.account_id = a.id"
		     " WHERE ?1 IS NULL OR COALESCE(d.stage, 'none') = ?1 ORDER BY a.id LIMIT ?2");
	dun_stmt_bind_text_copy(st, 1, stage);
	dun_stmt_bind_int64(st, 2, limit);
	printf("%-20s %-11s %-6s %-9s %-11s %-7s %s\n", "account", "segment", "kill", "bad_debt",
	       "stage", "banned", "entitlement");
	while (dun_stmt_row(st))
		printf("%-20s %-11s %-6s %-9s %-11s %-7s %s\n", dun_stmt_col_text(st, 0),
		       dun_stmt_col_text(st, 1), dun_stmt_col_int(st, 2) ? "on" : "off",
		       dun_stmt_col_int(st, 3) ? "yes" : "no", dun_stmt_col_text(st, 4),
		       dun_stmt_col_int(st, 5) ? "yes" : "no", dun_stmt_col_text(st, 6));
	dun_stmt_reset(st);
	return DUN_EX_OK;
}

/* Link a provider customer id to the account (moving it if linked elsewhere). */
static enum dun_err link_customer(struct dun_db *db, const char *customer, const char *account)
{
	struct dun_stmt *st =
	    dun_db_stmt(db, "INSERT INTO customers(id, account_id) VALUES (?1, ?2)"
			    " ON CONFLICT(id) DO UPDATE SET account_id = ?2");
	dun_stmt_bind_text(st, 1, customer);
	dun_stmt_bind_text(st, 2, account);
	return dun_stmt_done(st);
}

int dun_cmd_account(struct dun_cli *cli, int argc, char **argv)
{
	if (argc < 2 || dun_cli_is_help(argv[1]))
		return argc < 2 ? (usage(), DUN_EX_USAGE) : usage();
	const char *verb = argv[1];
	if (!strcmp(verb, "list"))
		return list(cli, argc - 1, argv + 1);
	bool add = !strcmp(verb, "add");
	if (!add && strcmp(verb, "set") != 0) {
		dun_cli_error("account: unknown action \"%s\" (add, set, list)", verb);
		return DUN_EX_USAGE;
	}
	static const struct option opts[] = {{"segment", required_argument, NULL, 's'},
					     {"email", required_argument, NULL, 'e'},
					     {"name", required_argument, NULL, 'n'},
					     {"customer", required_argument, NULL, 'c'},
					     {"kill-switch", required_argument, NULL, 'k'},
					     {NULL, 0, NULL, 0}};
	const char *segment = NULL, *email = NULL, *name = NULL, *customer = NULL, *kill = NULL;
	int c;
	optind = 0;
	argc--;
	argv++;
	while ((c = getopt_long(argc, argv, "s:e:n:c:k:", opts, NULL)) != -1) {
		switch (c) {
		case 's':
			segment = optarg;
			break;
		case 'e':
			email = optarg;
			break;
		case 'n':
			name = optarg;
			break;
		case 'c':
			customer = optarg;
			break;
		case 'k':
			kill = optarg;
			break;
		default:
			return DUN_EX_USAGE;
		}
	}
	if (optind != argc - 1) {
		dun_cli_error("account %s: expected one account ID", verb);
		return DUN_EX_USAGE;
	}
	const char *id = argv[optind];
	enum dun_segment seg;
	if (segment && !dun_segment_parse(segment, &seg)) {
		dun_cli_error("account: unknown segment \"%s\" (self_serve, enterprise, contract)",
			      segment);
		return DUN_EX_USAGE;
	}
	if (kill && strcmp(kill, "on") && strcmp(kill, "off")) {
		dun_cli_error("account: --kill-switch takes on or off");
		return DUN_EX_USAGE;
	}
	if (!id[0] || strlen(id) >= 64) {
		dun_cli_error("account: the id must be 1 to 63 characters");
		return DUN_EX_USAGE;
	}
	int rc = dun_cli_open(cli, DUN_NEED_DB);
	if (rc)
		return rc;
	enum dun_err e = dun_db_begin(cli->db);
	struct dun_stmt *st;
	if (add) {
		st = dun_db_stmt(cli->db,
				 "INSERT INTO accounts(id, segment, email, name, created_at)"
				 " VALUES (?1, COALESCE(?2, 'self_serve'), COALESCE(?3, ''),"
				 " COALESCE(?4, ''), ?5) ON CONFLICT(id) DO NOTHING");
		dun_stmt_bind_text(st, 1, id);
		dun_stmt_bind_text_copy(st, 2, segment);
		dun_stmt_bind_text_copy(st, 3, email);
		dun_stmt_bind_text_copy(st, 4, name);
		dun_stmt_bind_int64(st, 5, dun_clock_now());
		if (e == DUN_OK)
			e = dun_stmt_done(st);
		if (e == DUN_OK && dun_db_changes(cli->db) == 0) {
			dun_db_rollback(cli->db);
			dun_cli_error("account add: \"%s\" exists already (use account set)", id);
			return DUN_EX_CANTCREAT;
		}
		if (e == DUN_OK && customer)
			e = link_customer(cli->db, customer, id);
	} else {
		st = dun_db_stmt(
		    cli->db,
		    "UPDATE accounts SET segment = COALESCE(?2, segment),"
		    " kill_switch = COALESCE(?3, kill_switch), email = COALESCE(?4, email),"
		    " name = COALESCE(?5, name) WHERE id = ?1");
		dun_stmt_bind_text(st, 1, id);
		dun_stmt_bind_text_copy(st, 2, segment);
		if (kill)
			dun_stmt_bind_int(st, 3, !strcmp(kill, "on"));
		else
			dun_stmt_bind_null(st, 3);
		dun_stmt_bind_text_copy(st, 4, email);
		dun_stmt_bind_text_copy(st, 5, name);
		if (e == DUN_OK)
			e = dun_stmt_done(st);
		if (e == DUN_OK && dun_db_changes(cli->db) == 0) {
			dun_db_rollback(cli->db);
			dun_cli_error("account set: no account \"%s\"", id);
			return DUN_EX_NOINPUT;
		}
		if (e == DUN_OK && customer)
			e = link_customer(cli->db, customer, id);
		/* Let the engine act on the change. */
		if (e == DUN_OK)
			e = dun_inbox_enqueue(cli->db, id, "support_recompute", "cli", "", NULL, 0,
					      NULL, NULL);
	}
	if (e == DUN_OK)
		e = dun_db_commit(cli->db);
	if (e != DUN_OK) {
		dun_db_rollback(cli->db);
		dun_cli_error("account %s: %s", verb, dun_db_errmsg(cli->db));
		return dun_cli_exit_code(e);
	}
	printf("account %s %s\n", id, add ? "added" : "updated (recompute queued)");
	return DUN_EX_OK;
}
