/*
 * cmd_backfill.c — `dunning backfill --config FILE --since TIME`: replay
 * Stripe's events since TIME through the webhook path.
 *
 * For webhooks that were lost (an outage longer than Stripe's retries, a
 * misconfigured endpoint): GET /v1/events?created[gte]=TIME is listed in
 * full, then fed oldest first to dun_ingest_event(), exactly as if each had
 * arrived at POST /webhooks/stripe — stored, folded into the mirror, turned
 * into a trigger. Events already received are recognized by their id and
 * skipped, so a backfill may overlap webhooks and may be repeated. Stripe
 * keeps events for 30 days.
 */
#include "commands.h"
#include "config/config.h"
#include "inbox/ingest.h"
#include "provider/stripe.h"
#include "util/clock.h"

#include <getopt.h>
#include <stdlib.h>
#include <string.h>

static enum dun_err collect(void *user, json_t *data)
{
	json_array_extend(user, data);
	if (dun_cli_tty())
		fprintf(stderr, "\rbackfill: %zu events listed...   ", json_array_size(user));
	return DUN_OK;
}

int dun_cmd_backfill(struct dun_cli *cli, int argc, char **argv)
{
	static const struct option opts[] = {{"since", required_argument, NULL, 's'},
					     {"help", no_argument, NULL, 'h'},
					     {NULL, 0, NULL, 0}};
	const char *since_text = NULL;
	int c;
	optind = 0;
	while ((c = getopt_long(argc, argv, "s:h", opts, NULL)) != -1) {
		switch (c) {
		case 's':
			since_text = optarg;
			break;
		case 'h':
			printf(
			    "usage: dunning backfill --config FILE --since TIME\n\n"
			    "Replay Stripe's events created at or after TIME (unix seconds,\n"
			    "YYYY-MM-DD or YYYY-MM-DDTHH:MM:SSZ) through the same path as the\n"
			    "webhook, oldest first. Events already received are skipped by\n"
			    "their id, so it is safe to repeat. Stripe keeps 30 days of events.\n"
			    "The triggers it queues are processed by `dunning work`.\n");
			return DUN_EX_OK;
		default:
			return DUN_EX_USAGE;
		}
	}
	if (optind != argc) {
		dun_cli_error("backfill: unexpected argument \"%s\" (see --help)", argv[optind]);
		return DUN_EX_USAGE;
	}
	int64_t since = 0;
	if (!since_text) {
		dun_cli_error("backfill: needs --since TIME");
		return DUN_EX_USAGE;
	}
	if (!dun_clock_parse(since_text, &since)) {
		dun_cli_error("backfill: --since: cannot read \"%s\" as a time (use unix seconds, "
			      "YYYY-MM-DD or YYYY-MM-DDTHH:MM:SSZ)",
			      since_text);
		return DUN_EX_USAGE;
	}
	struct dun_stripe *client = NULL;
	int rc = dun_cli_open_stripe(cli, "backfill", &client);
	if (rc)
		return rc;
	char err[512] = "";
	enum dun_err e;
	struct dun_form q;
	dun_form_init(&q);
	dun_form_add_i64(&q, "created[gte]", since);
	json_t *events = json_array();
	e = dun_stripe_list(client, "/v1/events", &q, collect, events, err, sizeof err);
	dun_form_free(&q);
	dun_stripe_destroy(client);
	if (dun_cli_tty())
		fprintf(stderr, "\r%60s\r", "");
	if (e != DUN_OK) {
		json_decref(events);
		dun_cli_error("backfill: %s", err);
		if (e == DUN_E_PROVIDER || e == DUN_E_TIMEOUT)
			dun_cli_error("backfill: is [stripe] api_base (%s) reachable?",
				      cli->config->stripe_api_base);
		return dun_cli_exit_code(e);
	}
	/* Stripe lists newest first; the engine takes them in the order they happened. */
	long n = 0, triggered = 0, dup = 0, ignored = 0, unmapped = 0, bad = 0;
	enum dun_err fatal = DUN_OK;
	for (size_t i = json_array_size(events); i-- > 0;) {
		json_t *ev = json_array_get(events, i);
		char *body = json_dumps(ev, JSON_COMPACT);
		if (!body)
			continue;
		struct dun_ingest_result res;
		char why[512] = "";
		e = dun_ingest_event(cli->db, body, strlen(body), &res, why, sizeof why);
		free(body);
		if (e != DUN_OK) {
			json_t *id = json_object_get(ev, "id");
			dun_cli_error("backfill: event %s: %s; skipped",
				      json_is_string(id) ? json_string_value(id) : "(no id)", why);
			bad++;
			if (e == DUN_E_STORE || e == DUN_E_BUSY || e == DUN_E_IO) {
				fatal = e; /* the database, not the event: stop here */
				break;
			}
			continue;
		}
		n++;
		if (res.duplicate)
			dup++;
		else if (res.triggered)
			triggered++;
		else if (!strcmp(res.outcome, "unmapped"))
			unmapped++;
		else
			ignored++;
		if (dun_cli_tty() && n % 100 == 0)
			fprintf(stderr, "\rbackfill: %ld events replayed...   ", n);
	}
	if (dun_cli_tty())
		fprintf(stderr, "\r%60s\r", "");
	char when[32];
	dun_clock_format(since, when, sizeof when);
	printf("replayed %ld events since %s: %ld triggered, %ld duplicates, %ld ignored types, "
	       "%ld unmapped customers, %ld rejected\n",
	       n, when, triggered, dup, ignored, unmapped, bad);
	if (triggered)
		printf("`dunning work --config FILE` processes the triggers\n");
	json_decref(events);
	if (fatal != DUN_OK)
		return dun_cli_exit_code(fatal);
	return bad ? DUN_EX_DATAERR : DUN_EX_OK;
}
