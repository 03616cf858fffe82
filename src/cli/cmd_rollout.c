/*
 * cmd_rollout.c — `dunning rollout`: the observe/active gate, read and
 * changed by a person. The state it shows and changes is the one every
 * recompute reads (apply/rollout.h); every change is logged in rollout_log,
 * and raising the percentage goes through the parity gate.
 */
#include "commands.h"
#include "apply/rollout.h"
#include "config/config.h"
#include "util/clock.h"
#include "util/input.h"

#include <stdlib.h>
#include <string.h>

static int usage(void)
{
	printf("usage: dunning rollout show\n"
	       "       dunning rollout mode observe|active\n"
	       "       dunning rollout percent N [--force]   (0 to 100, decimals allowed)\n"
	       "       dunning rollout allow|deny|remove ACCOUNT\n\n"
	       "A new database is observe at 0%%: the engine computes and records every\n"
	       "decision in its shadow and writes nothing. In active mode an account is\n"
	       "written to when it is on the allow-list, or not on the deny-list and\n"
	       "inside the percentage (a stable hash of its id). `mode active` alone\n"
	       "turns on only the allow-list while the percentage is 0.\n\n"
	       "Raising the percentage needs a passing parity report (`dunning parity`)\n"
	       "covering the last [rollout] parity_window_days (7) and at most\n"
	       "parity_max_age_hours (24) old; --force overrides, and is recorded.\n"
	       "Lowering it (rollback) is always allowed and undoes nothing.\n");
	return DUN_EX_OK;
}

static void show_log(struct dun_db *db)
{
	struct dun_stmt *st =
	    dun_db_stmt(db, "SELECT at, action, value, forced, parity_report, note"
			    " FROM rollout_log ORDER BY id DESC LIMIT 10");
	bool header = false;
	while (dun_stmt_row(st)) {
		if (!header)
			printf("changes (newest first):\n");
		header = true;
		char t[32];
		dun_cli_time(dun_stmt_col_int64(st, 0), t, sizeof t);
		int64_t report = dun_stmt_col_int64(st, 4);
		const char *note = dun_stmt_col_text(st, 5);
		printf("  %s  %s %s%s", t, dun_stmt_col_text(st, 1), dun_stmt_col_text(st, 2),
		       dun_stmt_col_int(st, 3) ? "  FORCED" : "");
		if (report)
			printf("  (parity report #%lld)", (long long)report);
		if (note && note[0])
			printf("  %s", note);
		printf("\n");
	}
	dun_stmt_reset(st);
}

static int show(struct dun_cli *cli)
{
	struct dun_rollout r;
	enum dun_err e = dun_rollout_load(cli->db, &r);
	if (e != DUN_OK) {
		dun_cli_error("rollout show: %s", dun_err_str(e));
		return dun_cli_exit_code(e);
	}
	printf("mode: %s%s\npercent: %g\n", r.global_observe ? "observe" : "active",
	       r.mode_stored ? "" : " (nothing stored yet: the safe default)", r.percent);
	struct dun_stmt *st = dun_db_stmt(
	    cli->db, "SELECT account_id, list FROM rollout_list ORDER BY list, account_id");
	while (dun_stmt_row(st))
		printf("%s: %s\n", dun_stmt_col_text(st, 1), dun_stmt_col_text(st, 0));
	dun_stmt_reset(st);
	struct dun_rollout_gate g = {7 * 86400, 24 * 3600};
	if (cli->config) {
		g.window_s = cli->config->rollout_parity_window_days * 86400;
		g.max_age_s = cli->config->rollout_parity_max_age_hours * 3600;
	}
	int64_t report = 0;
	char why[300] = "";
	e = dun_rollout_gate_check(cli->db, dun_clock_now(), &g, &report, why, sizeof why);
	if (e == DUN_OK)
		printf("gate: open (parity report #%lld passed)\n", (long long)report);
	else if (e == DUN_E_GUARD)
		printf("gate: closed (%s)\n", why);
	show_log(cli->db);
	if (cli->config) {
		char err[512];
		if (dun_rollout_check_expected(cli->db, cli->config->rollout_mode,
					       cli->config->rollout_percent, err,
					       sizeof err) != DUN_OK) {
			dun_cli_error("%s: %s", cli->config_path, err);
			return DUN_EX_CONFIG;
		}
		if (cli->config->rollout_mode[0] || cli->config->rollout_percent >= 0)
			printf("config: %s [rollout] agrees\n", cli->config_path);
	}
	return DUN_EX_OK;
}

/* `rollout percent N [--force]`: raising it passes the gate. */
static int set_percent(struct dun_cli *cli, int argc, char **argv)
{
	const char *arg = NULL;
	bool force = false;
	for (int i = 2; i < argc; i++) {
		if (!strcmp(argv[i], "--force"))
			force = true;
		else if (!arg)
			arg = argv[i];
		else {
			dun_cli_error("rollout percent: unexpected argument \"%s\"", argv[i]);
			return DUN_EX_USAGE;
		}
	}
	double p = 0;
	if (!arg || !dun_input_parse_decimal(arg, &p) || p > 100) {
		dun_cli_error("rollout percent: a decimal number from 0 to 100 (such as 5 or "
			      "12.5), not \"%s\"",
			      arg ? arg : "");
		return DUN_EX_USAGE;
	}
	struct dun_rollout r;
	enum dun_err e = dun_rollout_load(cli->db, &r);
	if (e != DUN_OK) {
		dun_cli_error("rollout percent: %s", dun_err_str(e));
		return dun_cli_exit_code(e);
	}
	int64_t now = dun_clock_now();
	int64_t report = 0;
	bool forced = false;
	if (p > r.percent) {
		struct dun_rollout_gate g = {7 * 86400, 24 * 3600};
		if (cli->config) {
			g.window_s = cli->config->rollout_parity_window_days * 86400;
			g.max_age_s = cli->config->rollout_parity_max_age_hours * 3600;
		}
		char why[300] = "";
		e = dun_rollout_gate_check(cli->db, now, &g, &report, why, sizeof why);
		if (e == DUN_E_GUARD && !force) {
			dun_cli_error("rollout percent: refusing to raise %g%% -> %g%%: %s (or "
				      "--force, which is recorded)",
				      r.percent, p, why);
			return DUN_EX_FAIL;
		}
		if (e != DUN_OK && e != DUN_E_GUARD) {
			dun_cli_error("rollout percent: %s", dun_err_str(e));
			return dun_cli_exit_code(e);
		}
		forced = e == DUN_E_GUARD;
	}
	char v[32];
	snprintf(v, sizeof v, "%g", p);
	e = dun_db_begin(cli->db);
	if (e == DUN_OK)
		e = dun_db_setting_set(cli->db, "rollout.percent", v);
	if (e == DUN_OK)
		e = dun_rollout_log(cli->db, now, "percent", v, forced, report,
				    p < r.percent ? "rollback" : "");
	if (e == DUN_OK)
		e = dun_db_commit(cli->db);
	if (e != DUN_OK) {
		dun_db_rollback(cli->db);
		dun_cli_error("rollout percent: %s", dun_err_str(e));
		return dun_cli_exit_code(e);
	}
	printf("rollout percent %s (was %g%s%s)\n", v, r.percent,
	       forced ? "; FORCED past the parity gate, recorded" : "",
	       r.global_observe ? "; the global mode is observe: nothing is written yet" : "");
	return DUN_EX_OK;
}

int dun_cmd_rollout(struct dun_cli *cli, int argc, char **argv)
{
	if (argc < 2)
		return usage(), DUN_EX_USAGE;
	if (dun_cli_is_help(argv[1]))
		return usage();
	const char *verb = argv[1];
	if (!strcmp(verb, "show") && argc != 2) {
		dun_cli_error("rollout show: unexpected argument \"%s\"", argv[2]);
		return DUN_EX_USAGE;
	}
	if (strcmp(verb, "show") && strcmp(verb, "percent") && argc != 3) {
		dun_cli_error("rollout %s: wrong number of arguments (see --help)", verb);
		return DUN_EX_USAGE;
	}
	if (strcmp(verb, "show") && strcmp(verb, "percent") && strcmp(verb, "mode") &&
	    strcmp(verb, "allow") && strcmp(verb, "deny") && strcmp(verb, "remove")) {
		dun_cli_error("rollout: unknown action \"%s\" (see --help)", verb);
		return DUN_EX_USAGE;
	}
	if (!strcmp(verb, "mode") && strcmp(argv[2], "observe") && strcmp(argv[2], "active")) {
		dun_cli_error("rollout mode: observe or active, not \"%s\"", argv[2]);
		return DUN_EX_USAGE;
	}
	/* show only reads: it works on a read-only database. */
	int rc = dun_cli_open(cli, DUN_NEED_DB | (strcmp(verb, "show") ? 0 : DUN_NEED_READONLY));
	if (rc)
		return rc;
	if (!strcmp(verb, "show"))
		return show(cli);
	if (!strcmp(verb, "percent"))
		return set_percent(cli, argc, argv);
	const char *arg = argv[2];
	int64_t now = dun_clock_now();
	enum dun_err e = dun_db_begin(cli->db);
	if (e == DUN_OK && !strcmp(verb, "mode")) {
		e = dun_db_setting_set(cli->db, "mode", arg);
	} else if (e == DUN_OK && (!strcmp(verb, "allow") || !strcmp(verb, "deny"))) {
		struct dun_stmt *st =
		    dun_db_stmt(cli->db, "INSERT INTO rollout_list(account_id, list) VALUES"
					 " (?1, ?2) ON CONFLICT(account_id) DO UPDATE SET"
					 " list = excluded.list");
		dun_stmt_bind_text(st, 1, arg);
		dun_stmt_bind_text(st, 2, verb);
		e = dun_stmt_done(st);
	} else if (e == DUN_OK) {
		struct dun_stmt *st =
		    dun_db_stmt(cli->db, "DELETE FROM rollout_list WHERE account_id = ?1");
		dun_stmt_bind_text(st, 1, arg);
		e = dun_stmt_done(st);
	}
	if (e == DUN_OK)
		e = dun_rollout_log(cli->db, now, verb, arg, false, 0, "");
	if (e == DUN_OK)
		e = dun_db_commit(cli->db);
	if (e != DUN_OK) {
		dun_db_rollback(cli->db);
		dun_cli_error("rollout: %s", dun_err_str(e));
		return dun_cli_exit_code(e);
	}
	struct dun_rollout r;
	dun_rollout_load(cli->db, &r);
	printf("rollout %s %s\n", verb, arg);
	if (!strcmp(verb, "mode") && !r.global_observe)
		printf("active: the allow-list, and %g%% of the other accounts (raise it with "
		       "'dunning rollout percent N' once parity is proven)\n",
		       r.percent);
	return DUN_EX_OK;
}
