/*
 * cmd_outbox.c — `dunning outbox`: what is still on its way out, and a
 * delivery pass by hand.
 *
 * The applier queues platform calls (platform_outbox) and payment-outcome
 * events (outcome_events, one delivery per endpoint); `dunning serve`
 * delivers them continuously (src/apply/senders.c). This command lists them
 * by state, delivers once what is due (--deliver, the same senders), and
 * puts dead rows back in line after an operator fixed the cause (--requeue).
 */
#include "commands.h"
#include "apply/events_sender.h"
#include "apply/outbox_sender.h"
#include "config/config.h"
#include "util/clock.h"

#include <getopt.h>
#include <jansson.h>
#include <stdlib.h>
#include <string.h>

static int usage(FILE *out)
{
	fprintf(out,
		"usage: dunning outbox [--events] [--state pending|dead|sent|all] [--account ID]\n"
		"                      [--limit N]\n"
		"       dunning outbox --deliver\n"
		"       dunning outbox --requeue ID|all [--events]\n\n"
		"List the platform calls (or, with --events, the payment-outcome event\n"
		"deliveries) still on their way: pending and dead by default. --deliver sends\n"
		"what is due now, in order per account, as `dunning serve` does continuously;\n"
		"it needs --config with [platform] kind = http and/or [events] endpoints.\n"
		"--requeue puts dead rows back to pending (a dead platform call that a later\n"
		"delivered call overtook stays dead: it would arrive out of order).\n"
		"Exit status 1 when dead rows exist after --deliver.\n");
	return out == stdout ? DUN_EX_OK : DUN_EX_USAGE;
}

/* The configuration: --config's, or the defaults and the environment. */
static int config(struct dun_cli *cli, struct dun_config *fallback, const struct dun_config **out)
{
	if (cli->config) {
		*out = cli->config;
		return DUN_EX_OK;
	}
	char err[256];
	dun_config_defaults(fallback);
	if (dun_config_finish(fallback, err, sizeof err) != DUN_OK) {
		dun_cli_error("%s", err);
		return DUN_EX_CONFIG;
	}
	*out = fallback;
	return DUN_EX_OK;
}

static void print_platform(struct dun_cli *cli, const char *state, const char *account, long limit)
{
	struct dun_stmt *st = dun_db_stmt(
	    cli->db, "SELECT id, account_id, op, value, state, attempts, not_before, created_at,"
		     " sent_at, last_status, last_error FROM platform_outbox"
		     " WHERE (?1 = 'all' OR state = ?1 OR (?1 = 'unsent' AND state <> 'sent'))"
		     " AND (?2 IS NULL OR account_id = ?2) ORDER BY id LIMIT ?3");
	dun_stmt_bind_text(st, 1, state);
	dun_stmt_bind_text_copy(st, 2, account);
	dun_stmt_bind_int64(st, 3, limit);
	printf("%-7s %-16s %-22s %-10s %-7s %4s %-16s %-16s %s\n", "id", "account", "op", "value",
	       "state", "try", "created", "next/sent", "last error");
	char t1[32], t2[32];
	while (dun_stmt_row(st)) {
		const char *row_state = dun_stmt_col_text(st, 4);
		int64_t when = !strcmp(row_state, "sent")   ? dun_stmt_col_int64(st, 8)
			       : !strcmp(row_state, "dead") ? 0
							    : dun_stmt_col_int64(st, 6);
		printf("%-7lld %-16s %-22s %-10s %-7s %4d %-16s %-16s %s\n",
		       (long long)dun_stmt_col_int64(st, 0), dun_stmt_col_text(st, 1),
		       dun_stmt_col_text(st, 2), dun_stmt_col_text(st, 3), row_state,
		       dun_stmt_col_int(st, 5),
		       dun_cli_time(dun_stmt_col_int64(st, 7), t1, sizeof t1),
		       when ? dun_cli_time(when, t2, sizeof t2) : "-", dun_stmt_col_text(st, 10));
	}
	dun_stmt_reset(st);
}

static void print_events(struct dun_cli *cli, const char *state, const char *account, long limit)
{
	struct dun_stmt *st = dun_db_stmt(
	    cli->db,
	    "SELECT d.event_id, d.account_id, e.type, d.endpoint, d.state, d.attempts,"
	    " d.not_before, d.sent_at, d.last_error, e.payload"
	    " FROM outcome_deliveries d JOIN outcome_events e ON e.id = d.event_id"
	    " WHERE (?1 = 'all' OR d.state = ?1 OR (?1 = 'unsent' AND d.state <> 'sent'))"
	    " AND (?2 IS NULL OR d.account_id = ?2) ORDER BY d.event_id, d.endpoint LIMIT ?3");
	dun_stmt_bind_text(st, 1, state);
	dun_stmt_bind_text_copy(st, 2, account);
	dun_stmt_bind_int64(st, 3, limit);
	printf("%-7s %-16s %-22s %-37s %-7s %4s %-16s %s\n", "row", "account", "type", "id",
	       "state", "try", "next/sent", "endpoint / last error");
	char t[32];
	while (dun_stmt_row(st)) {
		const char *row_state = dun_stmt_col_text(st, 4);
		int64_t when = !strcmp(row_state, "sent")   ? dun_stmt_col_int64(st, 7)
			       : !strcmp(row_state, "dead") ? 0
							    : dun_stmt_col_int64(st, 6);
		const char *last = dun_stmt_col_text(st, 8);
		/* The event's own id is inside its payload. */
		json_t *payload = json_loads(dun_stmt_col_text(st, 9), 0, NULL);
		const char *event_id = json_string_value(json_object_get(payload, "id"));
		printf("%-7lld %-16s %-22s %-37s %-7s %4d %-16s %s%s%s\n",
		       (long long)dun_stmt_col_int64(st, 0), dun_stmt_col_text(st, 1),
		       dun_stmt_col_text(st, 2), event_id ? event_id : "(null)", row_state,
		       dun_stmt_col_int(st, 5), when ? dun_cli_time(when, t, sizeof t) : "-",
		       dun_stmt_col_text(st, 3), last && last[0] ? " / " : "", last ? last : "");
		json_decref(payload);
	}
	dun_stmt_reset(st);
	/* Events not yet queued for any endpoint (none configured, or not run yet). */
	st = dun_db_stmt(cli->db, "SELECT COUNT(*) FROM outcome_events e WHERE NOT EXISTS"
				  " (SELECT 1 FROM outcome_deliveries d WHERE d.event_id = e.id)");
	if (dun_stmt_row(st) && dun_stmt_col_int64(st, 0) > 0)
		printf("(%lld events not yet queued for any endpoint)\n",
		       (long long)dun_stmt_col_int64(st, 0));
	dun_stmt_reset(st);
}

static int deliver(struct dun_cli *cli, const struct dun_config *cfg)
{
	if (strcmp(cfg->platform_kind, "http") != 0 && cfg->n_event_endpoints == 0) {
		dun_cli_error(
		    "outbox --deliver: nothing to deliver to: the configuration has "
		    "neither [platform] kind = http nor [events] endpoints (--config FILE)");
		return DUN_EX_CONFIG;
	}
	struct dun_outbox_stats ps;
	struct dun_events_stats es;
	int64_t psent = 0, pretried = 0, pdead = 0, esent = 0, eretried = 0, edead = 0;
	enum dun_err e;
	do {
		e = dun_outbox_sender_run_once(cli->db, cfg, dun_clock_now(), &ps);
		psent += ps.sent;
		pretried += ps.retried;
		pdead += ps.dead;
	} while (e == DUN_OK && ps.more);
	if (e != DUN_OK) {
		dun_cli_error("outbox --deliver: platform: %s", dun_err_str(e));
		return dun_cli_exit_code(e);
	}
	do {
		e = dun_events_sender_run_once(cli->db, cfg, dun_clock_now(), &es);
		esent += es.sent;
		eretried += es.retried;
		edead += es.dead;
	} while (e == DUN_OK && es.more);
	if (e != DUN_OK) {
		dun_cli_error("outbox --deliver: events: %s", dun_err_str(e));
		return dun_cli_exit_code(e);
	}
	printf("platform: sent %lld, retrying %lld, dead %lld%s; now pending %lld, dead %lld\n",
	       (long long)psent, (long long)pretried, (long long)pdead,
	       ps.stopped_early ? " (the platform did not answer; the rest waits)" : "",
	       (long long)ps.pending, (long long)ps.dead_total);
	printf("events: sent %lld, retrying %lld, dead %lld%s; now pending %lld, dead %lld\n",
	       (long long)esent, (long long)eretried, (long long)edead,
	       es.stopped_early ? " (an endpoint did not answer; its rest waits)" : "",
	       (long long)es.pending, (long long)es.dead_total);
	return ps.dead_total || es.dead_total ? DUN_EX_FAIL : DUN_EX_OK;
}

int dun_cmd_outbox(struct dun_cli *cli, int argc, char **argv)
{
	static const struct option opts[] = {
	    {"deliver", no_argument, NULL, 'd'},     {"events", no_argument, NULL, 'e'},
	    {"state", required_argument, NULL, 's'}, {"account", required_argument, NULL, 'a'},
	    {"limit", required_argument, NULL, 'n'}, {"requeue", required_argument, NULL, 'r'},
	    {"help", no_argument, NULL, 'h'},	     {NULL, 0, NULL, 0}};
	bool do_deliver = false, events = false;
	const char *state = "unsent", *account = NULL, *requeue = NULL;
	long limit = 100;
	int c;
	optind = 0;
	while ((c = getopt_long(argc, argv, "des:a:n:r:h", opts, NULL)) != -1) {
		switch (c) {
		case 'd':
			do_deliver = true;
			break;
		case 'e':
			events = true;
			break;
		case 's':
			state = optarg;
			break;
		case 'a':
			account = optarg;
			break;
		case 'n':
			limit = atol(optarg);
			break;
		case 'r':
			requeue = optarg;
			break;
		default:
			return usage(c == 'h' ? stdout : stderr);
		}
	}
	if (optind != argc) {
		dun_cli_error("outbox: unexpected argument \"%s\"", argv[optind]);
		return DUN_EX_USAGE;
	}
	if (strcmp(state, "pending") && strcmp(state, "dead") && strcmp(state, "sent") &&
	    strcmp(state, "all") && strcmp(state, "unsent")) {
		dun_cli_error("outbox: --state is pending, dead, sent or all, not \"%s\"", state);
		return DUN_EX_USAGE;
	}
	int64_t requeue_id = 0;
	if (requeue && strcmp(requeue, "all") != 0) {
		char *end;
		requeue_id = strtoll(requeue, &end, 10);
		if (*end || requeue_id <= 0) {
			dun_cli_error("outbox: --requeue takes a row id or all, not \"%s\"",
				      requeue);
			return DUN_EX_USAGE;
		}
	}
	/* Listing only reads: it works on a read-only database. */
	int rc = dun_cli_open(cli, DUN_NEED_DB | (requeue || do_deliver ? 0 : DUN_NEED_READONLY));
	if (rc)
		return rc;
	struct dun_config fallback;
	const struct dun_config *cfg;
	rc = config(cli, &fallback, &cfg);
	if (rc)
		return rc;
	if (requeue) {
		int n = 0;
		enum dun_err e =
		    events ? dun_events_requeue_dead(cli->db, requeue_id, dun_clock_now(), &n)
			   : dun_outbox_requeue_dead(cli->db, requeue_id, dun_clock_now(), &n);
		if (e != DUN_OK) {
			dun_cli_error("outbox --requeue: %s", dun_err_str(e));
			return dun_cli_exit_code(e);
		}
		printf("requeued %d %s\n", n, events ? "event deliveries" : "platform calls");
		return n ? DUN_EX_OK : DUN_EX_FAIL;
	}
	if (do_deliver)
		return deliver(cli, cfg);
	if (events)
		print_events(cli, state, account, limit);
	else
		print_platform(cli, state, account, limit);
	return DUN_EX_OK;
}
