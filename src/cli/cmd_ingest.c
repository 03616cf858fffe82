/*
 * cmd_ingest.c — `dunning ingest FILE`: Stripe-format events, one JSON per
 * line (the objects the webhook receives), through the same path as the
 * webhook; then the triggers they started are processed unless --no-work.
 * A bad line is reported with its number and skipped; the others still
 * land (each event is its own transaction). Exit 65 when any line was bad.
 * A store failure (disk full, I/O error) is not the line's fault: ingest
 * stops at that line and exits with the store's code (74).
 */
#include "commands.h"
#include "inbox/ingest.h"
#include "util/clock.h"

#include <errno.h>
#include <getopt.h>
#include <stdlib.h>
#include <string.h>

#define LINE_MAX_BYTES (1024 * 1024)

/* Whether an ingest error is the line's fault (skip it) rather than the store's (stop). */
static bool is_bad_input(enum dun_err e)
{
	switch (e) {
	case DUN_E_INVALID:
	case DUN_E_TOO_BIG:
	case DUN_E_PARSE:
	case DUN_E_SIGNATURE:
	case DUN_E_UNSUPPORTED:
	case DUN_E_NOT_FOUND:
		return true;
	case DUN_OK:
	case DUN_E_CONFIG:
	case DUN_E_STORE:
	case DUN_E_BUSY:
	case DUN_E_SCHEMA:
	case DUN_E_IO:
	case DUN_E_PROVIDER:
	case DUN_E_PROVIDER_REJECTED:
	case DUN_E_PLATFORM:
	case DUN_E_EMAIL:
	case DUN_E_GUARD:
	case DUN_E_CONFLICT:
	case DUN_E_TIMEOUT:
	case DUN_E_CORRUPT:
	case DUN_E_UNAVAILABLE:
	case DUN_E_FENCED:
	case DUN_E_INCOMPLETE:
		return false;
	}
	return false;
}

int dun_cmd_ingest(struct dun_cli *cli, int argc, char **argv)
{
	static const struct option opts[] = {{"no-work", no_argument, NULL, 'n'},
					     {"help", no_argument, NULL, 'h'},
					     {NULL, 0, NULL, 0}};
	bool work = true;
	int c;
	optind = 0;
	while ((c = getopt_long(argc, argv, "nh", opts, NULL)) != -1) {
		switch (c) {
		case 'n':
			work = false;
			break;
		case 'h':
			printf("usage: dunning ingest FILE|- [--no-work]\n\n"
			       "Read Stripe-format events, one JSON object per line, update the\n"
			       "provider mirror and queue recomputes, then process them (unless\n"
			       "--no-work). Customers map to accounts by metadata account_id.\n"
			       "Lines over 1 MiB are rejected.\n");
			return DUN_EX_OK;
		default:
			return DUN_EX_USAGE;
		}
	}
	if (optind != argc - 1) {
		dun_cli_error("ingest: expected one FILE (or - for standard input)");
		return DUN_EX_USAGE;
	}
	const char *path = argv[optind];
	FILE *in = strcmp(path, "-") ? fopen(path, "r") : stdin;
	if (!in) {
		dun_cli_error("ingest: %s: %s", path, strerror(errno));
		return DUN_EX_NOINPUT;
	}
	int rc = dun_cli_open(cli, DUN_NEED_ENGINE);
	if (rc) {
		if (in != stdin)
			fclose(in);
		return rc;
	}
	char *line = NULL;
	size_t cap = 0;
	ssize_t len;
	long lineno = 0, ok = 0, bad = 0, dup = 0, triggered = 0, ignored = 0, unmapped = 0;
	while ((len = getline(&line, &cap, in)) != -1) {
		lineno++;
		while (len > 0 && (line[len - 1] == '\n' || line[len - 1] == '\r'))
			line[--len] = '\0';
		if (len == 0)
			continue;
		if (len > LINE_MAX_BYTES) {
			dun_cli_error("ingest: %s:%ld: event is larger than 1 MiB; skipped", path,
				      lineno);
			bad++;
			continue;
		}
		struct dun_ingest_result res;
		char err[512] = "";
		enum dun_err e =
		    dun_ingest_event(cli->db, line, (size_t)len, &res, err, sizeof err);
		if (e != DUN_OK && !is_bad_input(e)) {
			/*
			 * The line may be fine; the store is not (disk full, I/O
			 * error, corrupt file). Nothing later would land either:
			 * stop, say how far we got, and exit with the store's code.
			 */
			dun_cli_error("ingest: %s:%ld: %s; stopped (lines before it are stored, "
				      "this one and the rest are not: ingest the file again once "
				      "the database is writable, duplicates are recognised)",
				      path, lineno, err[0] ? err : dun_err_str(e));
			free(line);
			if (in != stdin)
				fclose(in);
			return dun_cli_exit_code(e);
		}
		if (e != DUN_OK) {
			dun_cli_error("ingest: %s:%ld: %s; skipped", path, lineno, err);
			bad++;
			continue;
		}
		ok++;
		if (cli->sim && !res.duplicate && !dun_sim_learns_lazily(cli->db)) {
			/*
			 * The simulated provider learns what the events show: here
			 * where commits run side by side, later by itself where they
			 * are serial (provider/sim.c, "Learning").
			 */
			json_t *ev = json_loadb(line, (size_t)len, 0, NULL);
			json_t *obj = json_object_get(json_object_get(ev, "data"), "object");
			if (json_is_object(obj))
				dun_sim_observe(cli->sim, obj);
			json_decref(ev);
		}
		if (res.duplicate)
			dup++;
		else if (res.triggered)
			triggered++;
		else if (!strcmp(res.outcome, "unmapped"))
			unmapped++;
		else
			ignored++;
	}
	free(line);
	if (in != stdin)
		fclose(in);
	if (cli->sim && ok > 0) {
		/*
		 * What the simulator learns lazily it learns now, so that it knows
		 * the ingested objects when this command returns, as where it is
		 * taught each event. A failure is the store's and is said; the
		 * events are stored and it is tried again before the simulator's
		 * next operation.
		 */
		enum dun_err le = dun_sim_learn_pending(cli->db, NULL, NULL, NULL);
		if (le != DUN_OK)
			dun_cli_error("ingest: the simulated provider cannot learn the ingested "
				      "events yet: %s (the events are stored)",
				      dun_db_errmsg(cli->db));
	}
	printf("ingested %ld events: %ld triggered, %ld duplicates, %ld ignored types, %ld "
	       "unmapped customers, %ld rejected\n",
	       ok, triggered, dup, ignored, unmapped, bad);
	int work_rc = work ? dun_cli_drain(cli, false) : DUN_EX_OK;
	if (bad)
		return DUN_EX_DATAERR;
	return work_rc;
}
