/*
 * cmd_store.c — `dunning store copy --from FILE [--to URL]`: move the
 * embedded SQLite store to PostgreSQL when one machine is no longer enough
 * (docs/operations.md, "Moving from SQLite to PostgreSQL"). The work is
 * src/store/copy.c; this file reads the options, prints the per-table
 * report and turns the outcome into an exit status.
 */
#include "apply/local.h"
#include "commands.h"
#include "config/config.h"
#include "inbox/scan.h"
#include "provider/sim.h"
#include "store/copy.h"
#include "store/schema.h"
#include "util/clock.h"

#include <getopt.h>
#include <inttypes.h>
#include <string.h>
#include <unistd.h>

/*
 * The simulated provider learns the stored webhooks of a SQLite store
 * lazily (provider/sim.c, "Learning"); on PostgreSQL it is taught each one
 * as it is stored and would never learn what the source had not learnt
 * yet. So the source's simulator catches up before the copy. A source this
 * binary would not open as it is (missing, not writable, another schema
 * version) is left alone: the copy refuses or reads it with its own
 * message.
 */
static enum dun_err learn_before_copy(const char *from, char *err, size_t err_size)
{
	if (access(from, R_OK | W_OK) != 0)
		return DUN_OK;
	struct dun_db *db = NULL;
	char open_err[512];
	if (dun_db_open_nomigrate(from, &db, open_err, sizeof open_err) != DUN_OK)
		return DUN_OK;
	enum dun_err e = DUN_OK;
	if (dun_db_schema_version(db) == dun_schema_count()) {
		e = dun_sim_learn_pending(db, NULL, NULL, NULL);
		if (e != DUN_OK)
			snprintf(err, err_size,
				 "%s: the simulated provider cannot learn the stored webhooks "
				 "before the copy: %s; nothing copied",
				 from, dun_db_errmsg(db));
	}
	dun_db_close(db);
	return e;
}

/* The two drift scans of a copy, and the policy and time they ran with. */
struct scans {
	const struct dun_policy *policy;
	int64_t now;
	struct dun_scan_result from, to;
	bool ran;
};

/*
 * A drift scan of the store db, with the embedded seams (the local platform
 * table, the simulated provider, which a scan never calls): reads only, so
 * it runs inside the copy's transactions and an HTTP platform of the
 * configuration is not asked twice for every account.
 */
static enum dun_err scan_store(struct dun_db *db, const struct scans *s,
			       struct dun_scan_result *out, char *err, size_t err_size)
{
	struct dun_sim *sim = dun_sim_new(db, 1);
	struct dun_renderer none = {0};
	struct dun_engine en;
	dun_engine_init(&en, db, s->policy, dun_sim_provider(sim), dun_local_platform(db),
			dun_log_mailer(), none);
	enum dun_err e = dun_scan_run(&en, s->now, false, NULL, NULL, out);
	json_decref(out->examples);
	out->examples = NULL;
	if (e != DUN_OK)
		snprintf(err, err_size, "%s: drift scan: %s", dun_db_path(db),
			 out->error[0] ? out->error : dun_db_errmsg(db));
	dun_engine_free(&en);
	dun_sim_destroy(sim);
	return e;
}

static bool same_scan(const struct dun_scan_result *a, const struct dun_scan_result *b)
{
	if (a->accounts != b->accounts || a->drifting != b->drifting ||
	    a->observe_accounts != b->observe_accounts ||
	    a->observe_real_drifting != b->observe_real_drifting || a->planned != b->planned ||
	    a->kept_accounts != b->kept_accounts)
		return false;
	for (int c = 0; c < DUN_DRIFT__COUNT; c++)
		if (a->per_class[c] != b->per_class[c] ||
		    a->observe_real_per_class[c] != b->observe_real_per_class[c])
			return false;
	return true;
}

/*
 * The copy's last check before its commit (dun_copy_check_fn): the engine
 * must see the same accounts in both stores. The checksums already say the
 * rows are equal; a drift scan of each says the engine reads them alike on
 * both backends (the same drift per class, the same consequences a
 * recompute of every account would plan). The target is analysed first, in
 * the same transaction, so the scan and the first service run with the
 * planner's statistics of the copied rows.
 */
static enum dun_err scan_both(struct dun_db *from, struct dun_db *to, void *arg, char *err,
			      size_t err_size)
{
	struct scans *s = arg;
	enum dun_err e = dun_db_exec(to, "ANALYZE", err, err_size);
	if (e == DUN_OK)
		e = scan_store(from, s, &s->from, err, err_size);
	if (e == DUN_OK)
		e = scan_store(to, s, &s->to, err, err_size);
	if (e != DUN_OK)
		return e;
	s->ran = true;
	if (same_scan(&s->from, &s->to))
		return DUN_OK;
	snprintf(err, err_size,
		 "%s: a drift scan of the copy differs from the file's (see above) although "
		 "every table's rows are equal; nothing was committed",
		 dun_db_path(to));
	return DUN_E_GUARD;
}

static void print_scan_row(const char *side, const struct dun_scan_result *r)
{
	printf("%-26s %12lld %12lld %12lld %12lld\n", side, (long long)r->accounts,
	       (long long)r->drifting, (long long)r->observe_real_drifting, (long long)r->planned);
}

static void print_scans(const struct scans *s)
{
	if (!s->ran)
		return;
	if (!same_scan(&s->from, &s->to)) {
		printf("%-26s %12s %12s %12s %12s\n", "drift scan", "accounts", "drifting",
		       "observe real", "planned");
		print_scan_row("file", &s->from);
		print_scan_row("postgresql", &s->to);
		for (int c = 0; c < DUN_DRIFT__COUNT; c++)
			if (s->from.per_class[c] != s->to.per_class[c])
				printf("  %-28s file %lld, postgresql %lld\n",
				       dun_drift_name((enum dun_drift_class)c),
				       (long long)s->from.per_class[c],
				       (long long)s->to.per_class[c]);
		return;
	}
	printf("drift scan of both: %lld accounts, %lld drifting, %lld consequences a "
	       "recompute of every account would plan: the same\n",
	       (long long)s->to.accounts, (long long)s->to.drifting, (long long)s->to.planned);
}

static void usage(FILE *out)
{
	fprintf(out, "usage: dunning store copy --from FILE [--to postgresql://...] [--no-scan]\n\n"
		     "Copy the SQLite database FILE into an empty PostgreSQL database: the\n"
		     "schema by the migrations (the same as 'dunning init'), then every table,\n"
		     "in one transaction. --to defaults to [database] url of --config. FILE\n"
		     "must have this binary's schema version (run 'dunning --db FILE init' to\n"
		     "migrate an older one first; a newer one is refused). A target holding any\n"
		     "row is refused. Before committing, each table's row count and content\n"
		     "checksum are compared on both sides, and a drift scan of each (with the\n"
		     "policy of --policy or --config) must find the same; anything different\n"
		     "commits nothing. --no-scan leaves the drift scans out (the copy of a\n"
		     "million accounts takes about 3 minutes without them, 9 with them).\n"
		     "Stop whatever writes to FILE first: later writes are not copied.\n\n"
		     "exit status: 0 copied and verified; 1 the copy differed (nothing written);\n"
		     "65 FILE is not a dunning database or is corrupt; 66 no FILE; 69 PostgreSQL\n"
		     "does not answer; 78 a bad URL or login, a target that is not empty, or a\n"
		     "schema version other than this binary's.\n");
}

static void print_report(const struct dun_copy_report *r, const char *target, bool committed)
{
	printf("%-26s %12s %12s  %s\n", "table", "rows (file)", "rows (pg)", "content");
	for (int i = 0; i < r->n_tables; i++) {
		const struct dun_copy_table *t = &r->tables[i];
		bool same_rows = t->rows_from == t->rows_to;
		bool same_sum = t->sum_from == t->sum_to;
		printf("%-26s %12" PRId64 " %12" PRId64 "  %s\n", t->name, t->rows_from, t->rows_to,
		       same_rows && same_sum ? "same"
		       : same_rows	     ? "DIFFERS (checksum)"
					     : "DIFFERS (rows)");
	}
	if (committed)
		printf("copied %" PRId64 " rows in %d tables to %s (schema version %d); "
		       "counts and checksums equal; %d identity columns advanced\n",
		       r->rows, r->n_tables, target, r->schema_version, r->identities);
}

static int store_copy(struct dun_cli *cli, int argc, char **argv)
{
	static const struct option opts[] = {{"from", required_argument, NULL, 'f'},
					     {"to", required_argument, NULL, 't'},
					     {"no-scan", no_argument, NULL, 'n'},
					     {"help", no_argument, NULL, 'h'},
					     {NULL, 0, NULL, 0}};
	const char *from = NULL, *to = NULL;
	bool scan = true;
	int c;
	optind = 0;
	while ((c = getopt_long(argc, argv, "f:t:nh", opts, NULL)) != -1) {
		switch (c) {
		case 'f':
			from = optarg;
			break;
		case 't':
			to = optarg;
			break;
		case 'n':
			scan = false;
			break;
		case 'h':
			usage(stdout);
			return DUN_EX_OK;
		default:
			return DUN_EX_USAGE;
		}
	}
	if (optind != argc) {
		dun_cli_error("store copy: unexpected argument \"%s\"", argv[optind]);
		return DUN_EX_USAGE;
	}
	if (!from) {
		dun_cli_error("store copy: needs --from FILE (the SQLite database to copy)");
		return DUN_EX_USAGE;
	}
	/* The policy the scans use: a bad policy file stops the copy before it starts. */
	int rc = dun_cli_open(cli, DUN_NEED_POLICY);
	if (rc)
		return rc;
	if (!to && cli->config && cli->config->db_url[0])
		to = cli->config->db_url;
	if (!to) {
		dun_cli_error("store copy: needs --to postgresql://... (or --config with a "
			      "[database] url)");
		return DUN_EX_USAGE;
	}
	char shown[512];
	dun_db_redact(to, shown, sizeof shown);
	struct dun_copy_report r;
	char err[1024] = "";
	memset(&r, 0, sizeof r);
	/* Only toward a PostgreSQL URL: a refused target leaves the source as it was. */
	enum dun_err e = dun_db_is_url(to) ? learn_before_copy(from, err, sizeof err) : DUN_OK;
	struct scans scans = {.policy = &cli->policy, .now = dun_clock_now()};
	if (e == DUN_OK)
		e = dun_store_copy(from, to, scan ? scan_both : NULL, &scans, &r, err, sizeof err);
	if (r.n_tables)
		print_report(&r, shown, e == DUN_OK);
	print_scans(&scans);
	dun_copy_report_free(&r);
	if (e != DUN_OK) {
		dun_cli_error("store copy: %s", err[0] ? err : dun_err_str(e));
		if (e == DUN_E_GUARD)
			return DUN_EX_FAIL;
		return dun_cli_exit_code(e);
	}
	return DUN_EX_OK;
}

int dun_cmd_store(struct dun_cli *cli, int argc, char **argv)
{
	if (argc < 2 || dun_cli_is_help(argv[1])) {
		usage(argc < 2 ? stderr : stdout);
		return argc < 2 ? DUN_EX_USAGE : DUN_EX_OK;
	}
	if (!strcmp(argv[1], "copy"))
		return store_copy(cli, argc - 1, argv + 1);
	dun_cli_error("store: unknown subcommand \"%s\" (see 'dunning store --help')", argv[1]);
	return DUN_EX_USAGE;
}
