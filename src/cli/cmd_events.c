/*
 * cmd_events.c — `dunning events [--state S] [--account A] [--limit N]
 * [--json]`: the inbox of triggers and their workflow states.
 */
#include "commands.h"
#include "inbox/inbox.h"

#include <getopt.h>
#include <stdlib.h>
#include <string.h>

int dun_cmd_events(struct dun_cli *cli, int argc, char **argv)
{
	static const struct option opts[] = {
	    {"state", required_argument, NULL, 's'}, {"account", required_argument, NULL, 'a'},
	    {"limit", required_argument, NULL, 'n'}, {"json", no_argument, NULL, 'j'},
	    {"help", no_argument, NULL, 'h'},	     {NULL, 0, NULL, 0}};
	const char *state = NULL, *account = NULL;
	long limit = 50;
	bool json = false;
	int c;
	optind = 0;
	while ((c = getopt_long(argc, argv, "s:a:n:jh", opts, NULL)) != -1) {
		switch (c) {
		case 's':
			state = optarg;
			break;
		case 'a':
			account = optarg;
			break;
		case 'n':
			limit = strtol(optarg, NULL, 10);
			break;
		case 'j':
			json = true;
			break;
		case 'h':
			printf("usage: dunning events [--state "
			       "received|processing|done|retrying|dead]\n"
			       "                      [--account A] [--limit N] [--json]\n\n"
			       "List triggers in the inbox, newest first, with their counts per "
			       "state.\n");
			return DUN_EX_OK;
		default:
			return DUN_EX_USAGE;
		}
	}
	if (state && strcmp(state, "received") && strcmp(state, "processing") &&
	    strcmp(state, "done") && strcmp(state, "retrying") && strcmp(state, "dead")) {
		dun_cli_error("events: unknown state \"%s\" (received, processing, done, retrying, "
			      "dead)",
			      state);
		return DUN_EX_USAGE;
	}
	if (limit <= 0) {
		dun_cli_error("events: --limit must be a positive number");
		return DUN_EX_USAGE;
	}
	int rc = dun_cli_open(cli, DUN_NEED_DB | DUN_NEED_READONLY);
	if (rc)
		return rc;
	struct dun_inbox_counts counts;
	dun_inbox_counts(cli->db, &counts);
	struct dun_stmt *st = dun_db_stmt(
	    cli->db, "SELECT id, account_id, kind, source, event_id, state, attempts,"
		     " last_error, not_before, created_at FROM inbox"
		     " WHERE (?1 IS NULL OR state = ?1) AND (?2 IS NULL OR account_id = ?2)"
		     " ORDER BY id DESC LIMIT ?3");
	dun_stmt_bind_text_copy(st, 1, state);
	dun_stmt_bind_text_copy(st, 2, account);
	dun_stmt_bind_int64(st, 3, limit);
	json_t *arr = json_array();
	while (dun_stmt_row(st)) {
		json_array_append_new(
		    arr,
		    json_pack("{s:I, s:s, s:s, s:s, s:s, s:s, s:i, s:s, s:I, s:I}", "id",
			      (json_int_t)dun_stmt_col_int64(st, 0), "account_id",
			      dun_stmt_col_text(st, 1), "kind", dun_stmt_col_text(st, 2), "source",
			      dun_stmt_col_text(st, 3), "event_id", dun_stmt_col_text(st, 4),
			      "state", dun_stmt_col_text(st, 5), "attempts",
			      dun_stmt_col_int(st, 6), "last_error", dun_stmt_col_text(st, 7),
			      "not_before", (json_int_t)dun_stmt_col_int64(st, 8), "created_at",
			      (json_int_t)dun_stmt_col_int64(st, 9)));
	}
	dun_stmt_reset(st);
	if (json) {
		json_t *o = json_pack(
		    "{s:{s:I, s:I, s:I, s:I, s:I}, s:o}", "counts", "received",
		    (json_int_t)counts.received, "processing", (json_int_t)counts.processing,
		    "done", (json_int_t)counts.done, "retrying", (json_int_t)counts.retrying,
		    "dead", (json_int_t)counts.dead, "events", arr);
		dun_cli_print_json(o);
		return DUN_EX_OK;
	}
	printf("received=%lld processing=%lld done=%lld retrying=%lld dead=%lld\n",
	       (long long)counts.received, (long long)counts.processing, (long long)counts.done,
	       (long long)counts.retrying, (long long)counts.dead);
	size_t i;
	json_t *v;
	char t1[32], t2[32];
	json_array_foreach(arr, i, v)
	{
		printf("#%-6lld %-10s %-16s %-20s %-10s attempts=%lld created=%s next=%s %s\n",
		       (long long)json_integer_value(json_object_get(v, "id")),
		       json_string_value(json_object_get(v, "state")),
		       json_string_value(json_object_get(v, "account_id")),
		       json_string_value(json_object_get(v, "kind")),
		       json_string_value(json_object_get(v, "source")),
		       (long long)json_integer_value(json_object_get(v, "attempts")),
		       dun_cli_time(json_integer_value(json_object_get(v, "created_at")), t1,
				    sizeof t1),
		       dun_cli_time(json_integer_value(json_object_get(v, "not_before")), t2,
				    sizeof t2),
		       json_string_value(json_object_get(v, "last_error")));
	}
	json_decref(arr);
	return DUN_EX_OK;
}
