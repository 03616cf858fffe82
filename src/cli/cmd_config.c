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
 */
#include "commands.h"
#include "apply/effects_setup.h"
#include "config/config.h"
#include "config/policy_file.h"
#include "server/shared_provider.h"

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
		     "Prints a summary without secrets; exit 78 on the first problem.\n");
	return out == stdout ? DUN_EX_OK : DUN_EX_USAGE;
}

/* Open the database read-only in spirit: never created, never migrated. */
static int check_db(const struct dun_config *c, struct dun_db **db, char *desc, size_t n)
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
	if (have < want)
		snprintf(desc, n, "%s (schema %d; serve migrates it to %d)", dun_db_path(*db), have,
			 want);
	else
		snprintf(desc, n, "%s (schema %d)", dun_db_path(*db), have);
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
	if (c->policy_path[0] &&
	    dun_policy_file_load(c->policy_path, &policy, err, sizeof err) != DUN_OK) {
		dun_cli_error("%s", err);
		return DUN_EX_CONFIG;
	}
	struct dun_db *db = NULL;
	char db_desc[4200];
	int rc = check_db(c, &db, db_desc, sizeof db_desc);
	if (rc)
		return rc;
	struct dun_rollout ro;
	char rollout_desc[600] = "";
	enum dun_err e = dun_rollout_load(db, &ro);
	if (e == DUN_OK)
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
	dun_db_close(db);
	if (e != DUN_OK) {
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
			dun_cli_error("%s", err);
			return DUN_EX_CONFIG;
		}
		dun_shared_provider_destroy(sp);
	}

	printf("%s: ok\n", c->path);
	printf("  listen      %s:%d%s\n", c->listen_host, c->listen_port,
	       c->listen_port == 0 ? " (a free port, chosen at start-up)" : "");
	printf("  workers     %d (poll %lld ms), group commit up to %d events, bodies up to "
	       "%lld bytes\n",
	       c->workers, (long long)c->poll_ms, c->group_commit_max,
	       (long long)c->body_max_bytes);
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
	if (warning[0])
		printf("warning: %s\n", warning);
	return DUN_EX_OK;
}
