/*
 * cmd_scan.c — `dunning scan [--json] [--enqueue]`: drift detection.
 * Exit status 1 when any account drifts (so scripts can alert on it).
 */
#include "commands.h"
#include "inbox/scan.h"
#include "report/scans.h"
#include "util/clock.h"

#include <getopt.h>
#include <string.h>

static void progress(int64_t done, void *arg)
{
	(void)arg;
	fprintf(stderr, "\rscanned %lld accounts", (long long)done);
}

/*
 * Keep the scan's counts for /metrics and the panel (src/report/scans.c).
 * A read-only scan (without --enqueue) opens a writable connection for this
 * alone; where the database cannot be written (a backup on a read-only
 * mount) the scan still reports, and says it was not recorded.
 */
static void record_scan(struct dun_cli *cli, const struct dun_scan_result *r)
{
	char err[512] = "";
	struct dun_db *db = NULL;
	enum dun_err e = dun_db_open_as(cli->db_path, DUN_DB_EXISTING, &db, err, sizeof err);
	if (e == DUN_OK)
		e = dun_scans_record(db, dun_clock_now(), r, NULL);
	if (e != DUN_OK)
		fprintf(stderr, "scan: not recorded for /metrics: %s\n",
			err[0] ? err : dun_err_str(e));
	dun_db_close(db);
}

int dun_cmd_scan(struct dun_cli *cli, int argc, char **argv)
{
	static const struct option opts[] = {{"json", no_argument, NULL, 'j'},
					     {"enqueue", no_argument, NULL, 'e'},
					     {"help", no_argument, NULL, 'h'},
					     {NULL, 0, NULL, 0}};
	bool json = false, enqueue = false;
	int c;
	optind = 0;
	while ((c = getopt_long(argc, argv, "jeh", opts, NULL)) != -1) {
		switch (c) {
		case 'j':
			json = true;
			break;
		case 'e':
			enqueue = true;
			break;
		case 'h':
			printf("usage: dunning scan [--json] [--enqueue]\n\n"
			       "Evaluate every account against the policy and count those whose\n"
			       "stores disagree with it, per class. --enqueue queues a "
			       "drift_detected\n"
			       "trigger for each drifting account (processed by 'dunning work' or "
			       "the\n"
			       "service). Exit status 1 when any account drifts.\n");
			return DUN_EX_OK;
		default:
			return DUN_EX_USAGE;
		}
	}
	if (optind != argc) {
		dun_cli_error("scan: unexpected argument \"%s\"", argv[optind]);
		return DUN_EX_USAGE;
	}
	int rc = dun_cli_open(cli, DUN_NEED_ENGINE | (enqueue ? 0 : DUN_NEED_READONLY));
	if (rc)
		return rc;
	struct dun_scan_result r;
	bool tty = dun_cli_tty() && !json;
	enum dun_err e =
	    dun_scan_run(&cli->engine, dun_clock_now(), enqueue, tty ? progress : NULL, NULL, &r);
	if (tty && r.accounts >= 10000)
		fputc('\n', stderr);
	if (e != DUN_OK) {
		json_decref(r.examples);
		dun_cli_error("scan: %s%s%s", dun_err_str(e), r.error[0] ? ": " : "", r.error);
		return dun_cli_exit_code(e);
	}
	record_scan(cli, &r);
	if (json) {
		json_t *classes = json_object();
		for (int i = 0; i < DUN_DRIFT__COUNT; i++)
			json_object_set_new(classes, dun_drift_name((enum dun_drift_class)i),
					    json_integer(r.per_class[i]));
		json_t *oclasses = json_object();
		for (int i = 0; i < DUN_DRIFT__COUNT; i++)
			json_object_set_new(oclasses, dun_drift_name((enum dun_drift_class)i),
					    json_integer(r.observe_real_per_class[i]));
		json_t *doc =
		    json_pack("{s:I, s:I, s:o, s:I, s:I, s:o, s:{s:I, s:I, s:o}}", "accounts",
			      (json_int_t)r.accounts, "drifting", (json_int_t)r.drifting, "classes",
			      classes, "planned_consequences", (json_int_t)r.planned, "enqueued",
			      (json_int_t)r.enqueued, "examples", r.examples, "observe", "accounts",
			      (json_int_t)r.observe_accounts, "real_drifting",
			      (json_int_t)r.observe_real_drifting, "real_classes", oclasses);
		json_object_set_new(doc, "platform",
				    json_pack("{s:I, s:I}", "kept_accounts",
					      (json_int_t)r.kept_accounts, "requests",
					      (json_int_t)r.platform_requests));
		dun_cli_print_json(doc);
	} else {
		printf("scanned %lld accounts: %lld drifting\n", (long long)r.accounts,
		       (long long)r.drifting);
		for (int i = 0; i < DUN_DRIFT__COUNT; i++)
			printf("  %-28s %8lld  %s\n", dun_drift_name((enum dun_drift_class)i),
			       (long long)r.per_class[i], dun_drift_text((enum dun_drift_class)i));
		if (r.observe_accounts) {
			printf("observe mode: %lld accounts (drift above is their shadow's); their "
			       "real stores, as information (the legacy system's business until "
			       "cutover, never repaired): %lld drifting\n",
			       (long long)r.observe_accounts, (long long)r.observe_real_drifting);
			for (int i = 0; i < DUN_DRIFT__COUNT; i++)
				if (r.observe_real_per_class[i])
					printf("  %-28s %8lld\n",
					       dun_drift_name((enum dun_drift_class)i),
					       (long long)r.observe_real_per_class[i]);
		}
		if (r.kept_accounts)
			printf("platform: %lld accounts restricted for another reason than "
			       "non-payment: not dunning's, kept, never repaired\n",
			       (long long)r.kept_accounts);
		if (r.platform_requests)
			printf("platform: %lld read requests\n", (long long)r.platform_requests);
		if (enqueue)
			printf("queued %lld drift_detected triggers\n", (long long)r.enqueued);
		size_t i;
		json_t *v;
		json_array_foreach(r.examples, i, v)
		{
			char *cl = json_dumps(json_object_get(v, "classes"), JSON_COMPACT);
			printf("  e.g. %s %s\n", json_string_value(json_object_get(v, "account")),
			       cl);
			free(cl);
		}
		json_decref(r.examples);
	}
	return r.drifting ? DUN_EX_FAIL : DUN_EX_OK;
}
