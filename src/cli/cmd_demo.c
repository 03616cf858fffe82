/*
 * cmd_demo.c — `dunning demo`: a synthetic population through the real
 * pipeline (simulated provider, SQLite, ingest, inbox, worker, applier)
 * for 90 simulated days, with a weekly table. The first week observes (a
 * new database's safe default) and then writes are turned on, as a person
 * rolls the engine out. It ends by proving two things:
 * a drift scan finds 0 drifting accounts, and a second recompute of every
 * account plans 0 consequences.
 */
#include "commands.h"
#include "cli/world.h"
#include "inbox/scan.h"
#include "util/clock.h"

#include <errno.h>
#include <getopt.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static void print_header(void)
{
	printf("%-5s %-4s %7s %8s %10s %9s %8s %8s %12s %7s %9s %8s\n", "week", "day", "none",
	       "notified", "restricted", "suspended", "bad_debt", "failing", "recovered$", "emails",
	       "bd_in/out", "retries");
}

static void print_row(int week, const struct dun_world_stats *s)
{
	char bd[32];
	snprintf(bd, sizeof bd, "%lld/%lld", (long long)s->bad_debt_entries,
		 (long long)s->bad_debt_exits);
	printf("%-5d %-4d %7lld %8lld %10lld %9lld %8lld %8lld %12.2f %7lld %9s %8lld\n", week,
	       s->day, (long long)s->per_stage[DUN_STAGE_NONE],
	       (long long)s->per_stage[DUN_STAGE_NOTIFIED],
	       (long long)s->per_stage[DUN_STAGE_RESTRICTED],
	       (long long)s->per_stage[DUN_STAGE_SUSPENDED],
	       (long long)s->per_stage[DUN_STAGE_BAD_DEBT], (long long)s->failing_invoices,
	       (double)s->recovered_minor / 100.0, (long long)s->emails_sent, bd,
	       (long long)s->retries);
	fflush(stdout);
}

/* Recompute every account for real, then evaluate every account again. */
static enum dun_err second_pass(struct dun_engine *en, struct dun_world *w, int64_t *applied,
				int64_t *planned)
{
	*applied = *planned = 0;
	struct dun_stmt *st = dun_db_stmt(en->db, "SELECT id FROM accounts ORDER BY id");
	int n = 0, cap = 1024;
	char(*ids)[DUN_ID_MAX] = malloc(sizeof *ids * (size_t)cap);
	if (!ids)
		return DUN_E_IO;
	while (dun_stmt_row(st)) {
		if (n == cap) {
			cap *= 2;
			void *g = realloc(ids, sizeof *ids * (size_t)cap);
			if (!g) {
				free(ids);
				dun_stmt_reset(st);
				return DUN_E_IO;
			}
			ids = g;
		}
		dun_stmt_col_copy(st, 0, ids[n++], DUN_ID_MAX);
	}
	dun_stmt_reset(st);
	enum dun_err e = DUN_OK;
	struct dun_trigger_ref t = {.kind = "support_recompute"};
	for (int i = 0; i < n && e == DUN_OK; i++) {
		struct dun_recompute_result r;
		e = dun_engine_recompute(en, ids[i], &t, false, &r);
		*applied += r.apply.n_applied;
	}
	if (e == DUN_OK)
		e = dun_world_pump(w);
	for (int i = 0; i < n && e == DUN_OK; i++) {
		e = dun_engine_evaluate(en, ids[i], dun_clock_now());
		*planned += en->plan.n;
	}
	free(ids);
	return e;
}

/* The first week runs as a new installation does: observe, shadow only. */
#define OBSERVE_DAYS 7

/*
 * The end of the observe week: what the shadow holds, then writes on. A
 * demo has no legacy system to prove parity against, so the gate is passed
 * with --force, which the rollout log records, as it would for a person.
 */
static enum dun_err go_active(struct dun_cli *cli)
{
	int64_t shadow = 0, written = 0;
	struct dun_stmt *st = dun_db_stmt(cli->db, "SELECT COUNT(*) FROM shadow_consequences");
	if (dun_stmt_row(st))
		shadow = dun_stmt_col_int64(st, 0);
	dun_stmt_reset(st);
	st = dun_db_stmt(cli->db, "SELECT COUNT(*) FROM applied");
	if (dun_stmt_row(st))
		written = dun_stmt_col_int64(st, 0);
	dun_stmt_reset(st);
	printf("rollout: observe for %d days (a new database): %lld actions in the shadow, %lld "
	       "written\n",
	       OBSERVE_DAYS, (long long)shadow, (long long)written);
	printf("rollout: parity needs a legacy log ('dunning parity --legacy FILE'); a demo has "
	       "none, so\n"
	       "         'rollout mode active' + 'rollout percent 100 --force' (recorded)\n");
	int64_t now = dun_clock_now();
	enum dun_err e = dun_db_setting_set(cli->db, "mode", "active");
	if (e == DUN_OK)
		e = dun_rollout_log(cli->db, now, "mode", "active", false, 0, "");
	if (e == DUN_OK)
		e = dun_db_setting_set(cli->db, "rollout.percent", "100");
	if (e == DUN_OK)
		e = dun_rollout_log(cli->db, now, "percent", "100", true, 0,
				    "demo: no legacy system to prove parity against");
	if (e == DUN_OK)
		e = dun_rollout_load(cli->db, &cli->engine.rollout);
	return e;
}

int dun_cmd_demo(struct dun_cli *cli, int argc, char **argv)
{
	static const struct option opts[] = {{"accounts", required_argument, NULL, 'a'},
					     {"days", required_argument, NULL, 'd'},
					     {"seed", required_argument, NULL, 's'},
					     {"help", no_argument, NULL, 'h'},
					     {NULL, 0, NULL, 0}};
	struct dun_world_config cfg = {.accounts = 1000, .days = 90, .seed = 42};
	int c;
	optind = 0;
	while ((c = getopt_long(argc, argv, "a:d:s:h", opts, NULL)) != -1) {
		switch (c) {
		case 'a':
		case 'd':
		case 's':
			if (!dun_world_option(c, optarg, "demo", &cfg))
				return DUN_EX_USAGE;
			break;
		case 'h':
			printf(
			    "usage: dunning demo [--accounts N] [--days N] [--seed S]\n\n"
			    "Build a synthetic population (default 1000 accounts) in a fresh\n"
			    "database (--db, default ./dunning-demo.db, replaced on every run)\n"
			    "and run it for 90 simulated days through the real pipeline with the\n"
			    "simulated provider, printing a weekly table. The first week runs in\n"
			    "observe mode (shadow only), then writes are turned on. Ends with a "
			    "drift scan\n"
			    "and a second recompute of every account, which must find nothing.\n");
			return DUN_EX_OK;
		default:
			return DUN_EX_USAGE;
		}
	}
	if (!strcmp(cli->db_path, "dunning.db") && !getenv("DUNNING_DB"))
		cli->db_path = "dunning-demo.db";
	/*
	 * A demo database is rebuilt from scratch each run; refuse anything
	 * else. A PostgreSQL database cannot be removed like a file: the demo
	 * runs only in an empty one.
	 */
	if (dun_db_is_url(cli->db_path)) {
		struct dun_db *probe = NULL;
		char err[512];
		enum dun_err e = dun_db_open(cli->db_path, &probe, err, sizeof err);
		if (e != DUN_OK) {
			dun_cli_error("demo: %s", err);
			return dun_cli_exit_code(e);
		}
		struct dun_stmt *st = dun_db_stmt(probe, "SELECT COUNT(*) FROM accounts");
		int64_t n = dun_stmt_row(st) ? dun_stmt_col_int64(st, 0) : -1;
		dun_stmt_reset(st);
		char shown[512];
		dun_db_redact(cli->db_path, shown, sizeof shown);
		dun_db_close(probe);
		if (n != 0) {
			dun_cli_error("demo: %s is not a demo database (on PostgreSQL the demo "
				      "runs only in an empty database); choose another --db",
				      shown);
			return DUN_EX_CANTCREAT;
		}
	} else if (access(cli->db_path, F_OK) == 0) {
		struct dun_db *probe = NULL;
		char err[256];
		bool demo = false;
		if (dun_db_open(cli->db_path, &probe, err, sizeof err) == DUN_OK) {
			char v[8];
			dun_db_setting_get(probe, "demo", v, sizeof v, &demo);
			dun_db_close(probe);
		}
		if (!demo) {
			dun_cli_error("demo: %s exists and is not a demo database; choose another "
				      "--db",
				      cli->db_path);
			return DUN_EX_CANTCREAT;
		}
		const char *sfx[] = {"", "-wal", "-shm"};
		for (int i = 0; i < 3; i++) {
			char p[1024];
			snprintf(p, sizeof p, "%s%s", cli->db_path, sfx[i]);
			if (unlink(p) != 0 && errno != ENOENT) {
				dun_cli_error("demo: cannot remove %s: %s", p, strerror(errno));
				return DUN_EX_CANTCREAT;
			}
		}
	}
	int rc = dun_cli_open(cli, DUN_NEED_ENGINE | DUN_NEED_CREATE);
	if (rc)
		return rc;
	/* Synthetic data: durability buys nothing here, speed does. */
	dun_db_relax_durability(cli->db);
	dun_db_setting_set(cli->db, "demo", "1");
	dun_clock_parse("2026-01-05", &cfg.start);
	cfg.progress = dun_cli_tty();

	printf("dunning demo: %d accounts, %d days, seed %llu, database %s\n", cfg.accounts,
	       cfg.days, (unsigned long long)cfg.seed, dun_db_path(cli->db));
	struct dun_world *w = dun_world_new(&cli->engine, cli->sim, &cfg);
	enum dun_err e = dun_world_populate(w);
	struct dun_world_stats s;
	print_header();
	for (int day = 0; day < cfg.days && e == DUN_OK; day++) {
		if (day == OBSERVE_DAYS && e == DUN_OK)
			e = go_active(cli);
		e = e == DUN_OK ? dun_world_day(w, day) : e;
		if (e == DUN_OK && (day % 7 == 6 || day == cfg.days - 1)) {
			dun_world_stats(w, day, &s);
			print_row(day / 7 + 1, &s);
		} else if (cfg.progress) {
			fprintf(stderr, "\rday %d/%d", day + 1, cfg.days);
		}
		if (cfg.progress)
			fprintf(stderr, "\r              \r");
	}
	if (e != DUN_OK) {
		dun_world_destroy(w);
		dun_cli_error("demo: %s", dun_err_str(e));
		return dun_cli_exit_code(e);
	}
	dun_world_stats(w, cfg.days - 1, &s);
	printf("\nprovider events delivered: %lld, consequences applied: %lld, written off: "
	       "%.2f USD, dead triggers: %lld\n",
	       (long long)s.events, (long long)s.consequences, (double)s.written_off_minor / 100.0,
	       (long long)s.dead_triggers);

	struct dun_scan_result scan;
	e = dun_scan_run(&cli->engine, dun_clock_now(), false, NULL, NULL, &scan);
	int64_t applied = 0, planned = 0;
	if (e == DUN_OK)
		e = second_pass(&cli->engine, w, &applied, &planned);
	dun_world_destroy(w);
	if (e != DUN_OK) {
		json_decref(scan.examples);
		dun_cli_error("demo: %s", dun_err_str(e));
		return dun_cli_exit_code(e);
	}
	printf("drift scan: %lld accounts, %lld drifting\n", (long long)scan.accounts,
	       (long long)scan.drifting);
	for (int i = 0; i < DUN_DRIFT__COUNT; i++)
		if (scan.per_class[i])
			printf("  %s: %lld\n", dun_drift_name((enum dun_drift_class)i),
			       (long long)scan.per_class[i]);
	json_decref(scan.examples);
	printf("recompute of every account: %lld consequences applied; second recompute plans "
	       "%lld consequences\n",
	       (long long)applied, (long long)planned);
	bool ok = scan.drifting == 0 && planned == 0;
	printf("%s\n", ok ? "OK: no drift, and recomputing changes nothing"
			  : "FAILED: the engine did not converge");
	return ok ? DUN_EX_OK : DUN_EX_SOFTWARE;
}
