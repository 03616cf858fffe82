/*
 * cmd_config.c — `dunning config check [--config] FILE`: validate a
 * service configuration the way `dunning serve` would start with it, and
 * say what it would run, without serving anything.
 *
 * Checked: the file itself (every key, dun_config_load), the environment
 * overrides, the policy file, the database (opened when it exists, never
 * created or migrated here), the effects with their live checks (SMTP
 * connects and authenticates, the HTTP platform answers; see
 * dun_effects_open), and the provider. Any problem prints one line and
 * exits 78 (EX_CONFIG). Secrets are never printed; only whether they are set.
 *
 * With Stripe and a policy whose payment retries belong to the engine
 * ([retries] owner = engine), it also asks Stripe whether Stripe is
 * retrying too: a sample of the open, already attempted invoices of
 * accounts in active mode is read (GET /v1/invoices/{id}), and an invoice
 * Stripe will try again by itself (next_payment_attempt set, auto_advance
 * true) fails the check with the Stripe setting to change. Accounts in
 * observe mode are left out: the engine writes nothing for them, and
 * observing beside Stripe's own retries is how a rollout starts.
 */
#include "commands.h"
#include "apply/effects_setup.h"
#include "config/config.h"
#include "config/policy_file.h"
#include "provider/stripe.h"
#include "server/shared_provider.h"
#include "util/clock.h"
#include "util/mem.h"

#include <errno.h>
#include <libgen.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static int usage(FILE *out)
{
	fprintf(out, "usage: dunning config check [--config] FILE\n\n"
		     "Validate a service configuration as `dunning serve` would: the file, the\n"
		     "environment overrides, the policy, the database, the email, platform and\n"
		     "event settings (SMTP and the platform are contacted) and the provider.\n"
		     "With Stripe and [retries] owner = engine, a sample of the open invoices of\n"
		     "accounts in active mode is read from Stripe: if Stripe retries them too,\n"
		     "the check fails and names the Stripe setting to change.\n"
		     "Prints a summary without secrets; exit 78 on the first problem.\n");
	return out == stdout ? DUN_EX_OK : DUN_EX_USAGE;
}

/* Open the database read-only in spirit: never created, never migrated. */
static int check_db(const struct dun_config *c, struct dun_db **db, char *desc, size_t n,
		    bool *exists)
{
	char err[512] = "";
	if (!dun_db_is_url(c->db_path) && access(c->db_path, F_OK) != 0) {
		char dir[4096];
		snprintf(dir, sizeof dir, "%s", c->db_path);
		const char *d = dirname(dir);
		if (access(d, W_OK) != 0) {
			dun_cli_error("%s: [database] path %s: cannot be created: %s: %s", c->path,
				      c->db_path, d, strerror(errno));
			return DUN_EX_CONFIG;
		}
		snprintf(desc, n, "%s (does not exist yet; serve creates it)", c->db_path);
		return dun_db_open(":memory:", db, err, sizeof err) == DUN_OK ? DUN_EX_OK
									      : DUN_EX_SOFTWARE;
	}
	enum dun_err e = dun_db_open_nomigrate(c->db_path, db, err, sizeof err);
	if (e != DUN_OK) {
		dun_cli_error("%s: [database]: %s", c->path, err);
		return DUN_EX_CONFIG;
	}
	int have = dun_db_schema_version(*db), want = dun_db_schema_latest();
	if (have == 0) {
		/* An empty database (a new PostgreSQL one, an empty file): nothing to
		 * read yet; the rest is checked against an empty schema. */
		snprintf(desc, n, "%s (empty; serve creates the schema)", dun_db_path(*db));
		dun_db_close(*db);
		*db = NULL;
		*exists = false;
		return dun_db_open(":memory:", db, err, sizeof err) == DUN_OK ? DUN_EX_OK
									      : DUN_EX_SOFTWARE;
	}
	if (have < want)
		snprintf(desc, n, "%s (schema %d; serve migrates it to %d)", dun_db_path(*db), have,
			 want);
	else
		snprintf(desc, n, "%s (schema %d)", dun_db_path(*db), have);
	return DUN_EX_OK;
}

/* Open invoices read from the mirror to find those of active accounts. */
#define RETRY_CANDIDATES_MAX 2000
/* Invoices of active accounts read from Stripe at most. */
#define RETRY_SAMPLE_MAX     20
/* Invoices Stripe retries that the message names at most. */
#define RETRY_NAMED_MAX	     3

struct retry_candidate {
	char invoice[DUN_ID_MAX];
	char account[DUN_ID_MAX];
};

/* Whether id can stand in a URL path as is (Stripe ids are [A-Za-z0-9_]). */
static bool plain_id(const char *id)
{
	if (!id[0])
		return false;
	for (; *id; id++)
		if (!((*id >= 'a' && *id <= 'z') || (*id >= 'A' && *id <= 'Z') ||
		      (*id >= '0' && *id <= '9') || *id == '_'))
			return false;
	return true;
}

/*
 * Up to RETRY_SAMPLE_MAX open, already attempted, automatically charged
 * invoices of accounts in active mode that the policy duns (segments it
 * skips and accounts with the kill switch on are Stripe's alone to retry),
 * newest first, from the mirror. *n_out is how many.
 */
static enum dun_err retry_sample(struct dun_db *db, const struct dun_rollout *ro,
				 const struct dun_policy *policy, struct retry_candidate *out,
				 int *n_out)
{
	*n_out = 0;
	struct retry_candidate *all = dun_calloc(RETRY_CANDIDATES_MAX, sizeof *all);
	int n = 0;
	struct dun_stmt *st = dun_db_stmt(
	    db, "SELECT i.id, c.account_id, COALESCE(a.segment, 'self_serve'),"
		" COALESCE(a.kill_switch, 0) FROM p_invoices i JOIN customers c"
		" ON c.account_id = i.account_id AND c.id = i.customer_id"
		" LEFT JOIN accounts a ON a.id = c.account_id"
		" WHERE i.status = 'open' AND i.attempt_count > 0"
		" AND i.collection_method = 'charge_automatically' AND c.account_id <> ''"
		" ORDER BY i.created DESC, i.id LIMIT ?1");
	dun_stmt_bind_int(st, 1, RETRY_CANDIDATES_MAX);
	enum dun_step rc;
	while ((rc = dun_stmt_step(st)) == DUN_STEP_ROW && n < RETRY_CANDIDATES_MAX) {
		enum dun_segment seg = DUN_SEGMENT_SELF_SERVE;
		dun_segment_parse(dun_stmt_col_text(st, 2), &seg);
		if (policy->skip_segment[seg] || dun_stmt_col_int(st, 3))
			continue;
		dun_stmt_col_copy(st, 0, all[n].invoice, sizeof all[n].invoice);
		dun_stmt_col_copy(st, 1, all[n].account, sizeof all[n].account);
		n++;
	}
	dun_stmt_reset(st);
	enum dun_err e = rc == DUN_STEP_ROW || rc == DUN_STEP_DONE ? DUN_OK : DUN_E_STORE;
	/* The rollout is asked only once the statement is done. */
	for (int i = 0; e == DUN_OK && i < n && *n_out < RETRY_SAMPLE_MAX; i++)
		if (plain_id(all[i].invoice) &&
		    dun_rollout_mode(db, ro, all[i].account, NULL) == DUN_MODE_ACTIVE)
			out[(*n_out)++] = all[i];
	free(all);
	return e;
}

/*
 * Who retries payments, seen from Stripe. Writes the summary line into
 * desc; returns an exit code (0 when the engine is alone in retrying the
 * sampled invoices, or when there is nothing to check).
 */
static int check_retry_owner(const struct dun_config *c, const struct dun_policy *policy,
			     struct dun_db *db, const struct dun_rollout *ro, bool db_exists,
			     char *desc, size_t n)
{
	if (policy->retry_owner == DUN_RETRY_OWNER_STRIPE) {
		snprintf(desc, n, "%s",
			 !strcmp(c->provider, "stripe")
			     ? "stripe: Stripe retries failed payments; the engine makes none"
			     : "stripe: nothing retries failed payments (the simulated provider "
			       "has no retries of its own)");
		return DUN_EX_OK;
	}
	if (strcmp(c->provider, "stripe") != 0) {
		snprintf(desc, n, "engine");
		return DUN_EX_OK;
	}
	if (!db_exists) {
		snprintf(desc, n, "engine (Stripe's retries not checked: no database yet)");
		return DUN_EX_OK;
	}
	if (ro->global_observe) {
		snprintf(desc, n,
			 "engine (Stripe's retries not checked: every account observes, and "
			 "observing beside them is expected; check again before `rollout mode "
			 "active`)");
		return DUN_EX_OK;
	}
	struct retry_candidate sample[RETRY_SAMPLE_MAX];
	int n_sample = 0;
	if (retry_sample(db, ro, policy, sample, &n_sample) != DUN_OK) {
		dun_cli_error("%s: [database]: cannot read the open invoices: %s", c->path,
			      dun_db_errmsg(db));
		return DUN_EX_CONFIG;
	}
	if (n_sample == 0) {
		snprintf(desc, n,
			 "engine (no open, attempted invoice of an account in active mode "
			 "that dunning handles to ask Stripe about)");
		return DUN_EX_OK;
	}
	struct dun_stripe *client = NULL;
	char err[1024] = "";
	enum dun_err e = dun_stripe_new(c, &client, err, sizeof err);
	if (e != DUN_OK) {
		dun_cli_error("%s: %s", c->path, err);
		return DUN_EX_CONFIG;
	}
	int retrying = 0, read = 0;
	char named[RETRY_NAMED_MAX * (2 * DUN_ID_MAX + 64)] = "";
	size_t named_len = 0;
	for (int i = 0; i < n_sample; i++) {
		char path[DUN_ID_MAX + 16];
		snprintf(path, sizeof path, "/v1/invoices/%.*s", DUN_ID_MAX - 1, sample[i].invoice);
		json_t *inv = NULL;
		e = dun_stripe_call(client, "GET", path, NULL, NULL, &inv, err, sizeof err);
		if (e == DUN_E_PROVIDER_REJECTED)
			continue; /* gone at Stripe (404): nothing retries it */
		if (e != DUN_OK) {
			dun_stripe_destroy(client);
			dun_cli_error("%s: cannot ask Stripe who retries payments: %s", c->path,
				      err);
			return DUN_EX_CONFIG;
		}
		read++;
		json_t *next = json_object_get(inv, "next_payment_attempt");
		const char *status = json_string_value(json_object_get(inv, "status"));
		if (status && !strcmp(status, "open") &&
		    json_is_true(json_object_get(inv, "auto_advance")) && json_is_integer(next)) {
			if (retrying < RETRY_NAMED_MAX) {
				char at[32];
				dun_clock_format((int64_t)json_integer_value(next), at, sizeof at);
				int w = snprintf(named + named_len, sizeof named - named_len,
						 "%s%s (account %s, next attempt %s)",
						 retrying ? ", " : "", sample[i].invoice,
						 sample[i].account, at);
				if (w > 0 && (size_t)w < sizeof named - named_len)
					named_len += (size_t)w;
			}
			retrying++;
		}
		json_decref(inv);
	}
	dun_stripe_destroy(client);
	if (retrying) {
		dun_cli_error(
		    "%s: [retries] owner = engine, but Stripe is retrying payments too: %d of %d "
		    "open invoices of accounts in active mode have a next automatic attempt at "
		    "Stripe: %s%s. Both would charge the same invoices. Turn Stripe's retries off "
		    "in the Stripe Dashboard (Billing > Revenue recovery > Retries: Smart Retries "
		    "and any custom retry schedule; for one-time invoices, Settings > Billing > "
		    "Invoices), or let Stripe own them: [retries] owner = stripe in the policy%s%s",
		    c->path, retrying, read, named, retrying > RETRY_NAMED_MAX ? ", ..." : "",
		    c->policy_path[0] ? " " : "", c->policy_path);
		return DUN_EX_CONFIG;
	}
	snprintf(desc, n,
		 "engine (Stripe retries none of %d open invoice%s of active accounts read from "
		 "Stripe)",
		 read, read == 1 ? "" : "s");
	return DUN_EX_OK;
}

int dun_cmd_config(struct dun_cli *cli, int argc, char **argv)
{
	if (argc < 2)
		return usage(stderr);
	if (dun_cli_is_help(argv[1]))
		return usage(stdout);
	if (strcmp(argv[1], "check") != 0) {
		dun_cli_error("config: unknown action \"%s\" (check)", argv[1]);
		return DUN_EX_USAGE;
	}
	for (int i = 2; i < argc; i++) {
		if (dun_cli_is_help(argv[i]))
			return usage(stdout);
		if (!strcmp(argv[i], "--config") && i + 1 < argc)
			cli->config_path = argv[++i];
		else if (argv[i][0] != '-' && !cli->config_path)
			cli->config_path = argv[i];
		else {
			dun_cli_error("config check: unexpected argument \"%s\"", argv[i]);
			return DUN_EX_USAGE;
		}
	}
	if (!cli->config_path)
		cli->config_path = getenv("DUNNING_CONFIG");
	if (!cli->config_path || !cli->config_path[0]) {
		dun_cli_error("config check: which file? (dunning config check FILE)");
		return DUN_EX_USAGE;
	}
	if (dun_cli_load_config(cli))
		return DUN_EX_CONFIG;
	struct dun_config *c = cli->config;
	if (cli->db_path_given)
		snprintf(c->db_path, sizeof c->db_path, "%s", cli->db_path);
	char err[1024] = "";

	struct dun_policy policy;
	dun_policy_defaults(&policy);
	if (c->policy_path[0] &&
	    dun_policy_file_load(c->policy_path, &policy, err, sizeof err) != DUN_OK) {
		dun_cli_error("%s", err);
		return DUN_EX_CONFIG;
	}
	struct dun_db *db = NULL;
	char db_desc[4200];
	bool db_exists = dun_db_is_url(c->db_path) || access(c->db_path, F_OK) == 0;
	int rc = check_db(c, &db, db_desc, sizeof db_desc, &db_exists);
	if (rc)
		return rc;
	struct dun_rollout ro;
	char rollout_desc[600] = "";
	enum dun_err e = dun_rollout_load(db, &ro);
	if (e != DUN_OK)
		snprintf(err, sizeof err, "[database]: cannot read the rollout state: %s",
			 dun_db_errmsg(db));
	else
		e = dun_rollout_check_expected(db, c->rollout_mode, c->rollout_percent, err,
					       sizeof err);
	if (e != DUN_OK) {
		dun_db_close(db);
		dun_cli_error("%s: %s", c->path, err);
		return DUN_EX_CONFIG;
	}
	snprintf(rollout_desc, sizeof rollout_desc, "%s at %g%% (held by the database%s)",
		 ro.global_observe ? "observe" : "active", ro.percent,
		 c->rollout_mode[0] || c->rollout_percent >= 0 ? "; [rollout] agrees" : "");
	struct dun_effects fx;
	e = dun_effects_open(c, db, true, &fx, err, sizeof err);
	if (e != DUN_OK) {
		dun_db_close(db);
		dun_cli_error("%s: %s", c->path, err);
		return DUN_EX_CONFIG;
	}
	char warning[sizeof fx.warning];
	snprintf(warning, sizeof warning, "%s", fx.warning);
	dun_effects_close(&fx);
	/* The simulated provider has nothing to check beyond the database. */
	if (!strcmp(c->provider, "stripe")) {
		struct dun_shared_provider *sp = NULL;
		e = dun_shared_provider_new(c, &sp, err, sizeof err);
		if (e != DUN_OK) {
			dun_db_close(db);
			dun_cli_error("%s", err);
			return DUN_EX_CONFIG;
		}
		dun_shared_provider_destroy(sp);
	}
	char retries_desc[512];
	rc = check_retry_owner(c, &policy, db, &ro, db_exists, retries_desc, sizeof retries_desc);
	dun_db_close(db);
	if (rc)
		return rc;

	printf("%s: ok\n", c->path);
	printf("  listen      %s:%d%s\n", c->listen_host, c->listen_port,
	       c->listen_port == 0 ? " (a free port, chosen at start-up)" : "");
	printf("  workers     %d (poll %lld ms), group commit up to %d events, bodies up to "
	       "%lld bytes\n",
	       c->workers, (long long)c->poll_ms, c->group_commit_max,
	       (long long)c->body_max_bytes);
	int cpus = 0;
	int64_t cap = dun_config_fleet_cap(c, &cpus);
	char sized[64] = "";
	if (cpus)
		snprintf(sized, sizeof sized, " (auto: twice this host's %d CPUs)", cpus);
	if (cap)
		printf("  fleet       at most %lld workers of all replicas at once%s%s\n",
		       (long long)cap, sized,
		       dun_db_is_url(c->db_path) ? "" : " (PostgreSQL only: ignored on SQLite)");
	else
		printf("  fleet       no cap on the workers of all replicas%s\n",
		       dun_db_is_url(c->db_path) ? "" : " (PostgreSQL only)");
	char per_client[48];
	if (c->max_connections_per_client)
		snprintf(per_client, sizeof per_client, "%lld",
			 (long long)c->max_connections_per_client);
	else
		snprintf(per_client, sizeof per_client, "no cap");
	printf("  clients     up to %lld connections, %s per address; headers within %lld ms;\n"
	       "              a stop waits %lld ms for slow clients\n",
	       (long long)c->max_connections, per_client, (long long)c->header_timeout_ms,
	       (long long)c->shutdown_grace_ms);
	printf("  database    %s\n", db_desc);
	printf("  policy      %s\n", c->policy_path[0] ? c->policy_path : "built-in defaults");
	printf("  provider    %s\n", c->provider);
	if (c->n_webhook_secrets)
		printf("  webhooks    %d secret%s, tolerance %lld s\n", c->n_webhook_secrets,
		       c->n_webhook_secrets == 1 ? "" : "s", (long long)c->webhook_tolerance_s);
	else
		printf("  webhooks    off: no [stripe] webhook_secrets (answers 503)\n");
	printf("  admin API   %s\n",
	       c->admin_token[0] ? "token set" : "off: no token (answers 503)");
	printf("  email       %s\n",
	       !strcmp(c->email_transport, "smtp") ? "smtp (connected and authenticated)" : "log");
	printf("  platform    %s\n", c->platform_kind);
	printf("  events      %d endpoint%s\n", c->n_event_endpoints,
	       c->n_event_endpoints == 1 ? "" : "s");
	printf("  rollout     %s\n", rollout_desc);
	printf("  retries     %s\n", retries_desc);
	if (warning[0])
		printf("warning: %s\n", warning);
	return DUN_EX_OK;
}
