/*
 * config.c — reading the service configuration (see config.h).
 *
 * The table below is the single list of keys: section, name, type, where it
 * goes. Unknown sections and keys are errors, so a typo never silently
 * falls back to a default.
 */
#include "config.h"
#include "util/input.h"

#include <errno.h>
#include <ini.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

enum kind { K_STR, K_INT, K_DOUBLE, K_LISTEN, K_SECRETS, K_ENDPOINTS };

struct key {
	const char *section;
	const char *name;
	enum kind kind;
	size_t offset;
	size_t size; /* K_STR: buffer size */
	int64_t min, max;
};

#define STR(sec, name, field)                                         \
	{                                                             \
		sec, name, K_STR, offsetof(struct dun_config, field), \
		    sizeof(((struct dun_config *)0)->field), 0, 0     \
	}
#define INT(sec, name, field, lo, hi)                                           \
	{                                                                       \
		sec, name, K_INT, offsetof(struct dun_config, field), 0, lo, hi \
	}
#define DBL(sec, name, field, lo, hi)                                              \
	{                                                                          \
		sec, name, K_DOUBLE, offsetof(struct dun_config, field), 0, lo, hi \
	}

static const struct key keys[] = {
    {"server", "listen", K_LISTEN, 0, 0, 0, 0},
    INT("server", "body_max_bytes", body_max_bytes, 1024, 64 * 1024 * 1024),
    INT("server", "workers", workers, 1, 64),
    INT("server", "fleet_workers", fleet_workers, 0, 4096),
    INT("server", "poll_ms", poll_ms, 10, 60000),
    INT("server", "group_commit_max", group_commit_max, 1, 10000),
    INT("server", "max_connections", max_connections, 16, 1000000),
    INT("server", "max_connections_per_client", max_connections_per_client, 0, 1000000),
    INT("server", "header_timeout_ms", header_timeout_ms, 100, 600000),
    INT("server", "shutdown_grace_ms", shutdown_grace_ms, 0, 600000),
    STR("database", "path", db_path),
    STR("database", "url", db_url),
    STR("policy", "file", policy_path),
    STR("policy", "templates", templates_dir),
    STR("policy", "support_email", support_email),
    STR("policy", "pay_bad_debt_url", pay_bad_debt_url),
    STR("provider", "kind", provider),
    STR("stripe", "api_key", stripe_api_key),
    STR("stripe", "api_base", stripe_api_base),
    STR("stripe", "version", stripe_version),
    {"stripe", "webhook_secrets", K_SECRETS, 0, 0, 0, 0},
    INT("stripe", "webhook_tolerance_s", webhook_tolerance_s, 0, 86400),
    DBL("stripe", "rate_limit_per_s", stripe_rate_limit_per_s, 1, 10000),
    INT("stripe", "timeout_ms", stripe_timeout_ms, 100, 600000),
    INT("stripe", "max_retries", stripe_max_retries, 0, 20),
    STR("admin", "token", admin_token),
    STR("panel", "users_file", panel_users_file),
    INT("panel", "session_idle_s", panel_session_idle_s, 60, 7 * 86400),
    INT("panel", "session_max_s", panel_session_max_s, 300, 30 * 86400),
    INT("panel", "cookie_secure", panel_cookie_secure, 0, 1),
    STR("rollout", "mode", rollout_mode),
    DBL("rollout", "percent", rollout_percent, 0, 100),
    INT("rollout", "parity_window_days", rollout_parity_window_days, 1, 366),
    INT("rollout", "parity_max_age_hours", rollout_parity_max_age_hours, 1, 8760),
    INT("parity", "tolerance_hours", parity_tolerance_hours, 0, 720),
    DBL("parity", "min_match_percent", parity_min_match_percent, 0, 100),
    DBL("parity", "min_coverage_percent", parity_min_coverage_percent, 0, 100),
    INT("parity", "max_amount_mismatches", parity_max_amount_mismatches, 0, 1000000000),
    INT("parity", "max_filter_mismatches", parity_max_filter_mismatches, 0, 1000000000),
    INT("parity", "max_errors", parity_max_errors, 0, 1000000000),
    INT("inbox", "max_attempts", inbox_max_attempts, 1, 1000),
    INT("inbox", "backoff_base_s", inbox_backoff_base_s, 1, 86400),
    INT("inbox", "backoff_max_s", inbox_backoff_max_s, 1, 7 * 86400),
    INT("inbox", "lease_s", inbox_lease_s, 5, 86400),
    STR("email", "transport", email_transport),
    STR("email", "smtp_url", smtp_url),
    STR("email", "smtp_from", smtp_from),
    STR("email", "smtp_username", smtp_username),
    STR("email", "smtp_password", smtp_password),
    STR("email", "smtp_tls", smtp_tls),
    INT("email", "smtp_timeout_ms", smtp_timeout_ms, 100, 600000),
    STR("email", "smtp_ca_file", smtp_ca_file),
    INT("email", "alert_after_s", email_alert_after_s, 60, 90 * 86400),
    INT("email", "give_up_after_s", email_give_up_after_s, 3600, 365 * 86400),
    STR("platform", "kind", platform_kind),
    STR("platform", "base_url", platform_base_url),
    STR("platform", "token", platform_token),
    INT("platform", "timeout_ms", platform_timeout_ms, 100, 600000),
    INT("platform", "read_timeout_ms", platform_read_timeout_ms, 50, 60000),
    INT("platform", "read_batch", platform_read_batch, 1, 1000),
    {"events", "endpoints", K_ENDPOINTS, 0, 0, 0, 0},
    STR("events", "secret", event_secret),
    INT("events", "timeout_ms", event_timeout_ms, 100, 600000),
    INT("metrics", "account_series_limit", metrics_account_series_limit, 0, 100000),
};

/*
 * auto: twice this host's CPUs. The measured reason (docs/performance.md,
 * "The fleet's turns"): on one machine shared with PostgreSQL, the fleet's
 * throughput held with about two workers per CPU at work and fell by a
 * third with four; a database on a host of its own is rarely smaller than
 * the hosts of its replicas. It is a guard, not a target: a larger
 * database takes a larger number, set in the file.
 */
int64_t dun_config_fleet_cap(const struct dun_config *c, int *cpus)
{
	if (cpus)
		*cpus = 0;
	if (c->fleet_workers != DUN_FLEET_WORKERS_AUTO)
		return c->fleet_workers;
	long n = sysconf(_SC_NPROCESSORS_ONLN);
	if (n < 1)
		n = 1;
	if (n > 2048)
		n = 2048;
	if (cpus)
		*cpus = (int)n;
	return 2 * (int64_t)n;
}

void dun_config_defaults(struct dun_config *c)
{
	memset(c, 0, sizeof *c);
	snprintf(c->listen_host, sizeof c->listen_host, "127.0.0.1");
	c->listen_port = 8080;
	c->body_max_bytes = 1024 * 1024;
	c->workers = 2;
	c->fleet_workers = DUN_FLEET_WORKERS_AUTO;
	c->poll_ms = 500;
	c->group_commit_max = 256;
	c->max_connections = 8192;
	c->max_connections_per_client = 256;
	c->header_timeout_ms = 10000;
	c->shutdown_grace_ms = 10000;
	snprintf(c->db_path, sizeof c->db_path, "dunning.db");
	snprintf(c->provider, sizeof c->provider, "simulated");
	snprintf(c->stripe_api_base, sizeof c->stripe_api_base, "https://api.stripe.com");
	snprintf(c->stripe_version, sizeof c->stripe_version, "2025-03-31.basil");
	c->webhook_tolerance_s = 300;
	c->stripe_rate_limit_per_s = 25;
	c->stripe_timeout_ms = 30000;
	c->stripe_max_retries = 4;
	c->rollout_percent = -1;
	c->rollout_parity_window_days = 7;
	c->rollout_parity_max_age_hours = 24;
	c->parity_tolerance_hours = 24;
	c->parity_min_match_percent = 100;
	c->parity_min_coverage_percent = 100;
	c->inbox_max_attempts = 8;
	c->inbox_backoff_base_s = 30;
	c->inbox_backoff_max_s = 3600;
	c->inbox_lease_s = 300;
	snprintf(c->email_transport, sizeof c->email_transport, "log");
	c->smtp_timeout_ms = 30000;
	c->email_alert_after_s = 86400;
	c->email_give_up_after_s = 14 * 86400;
	snprintf(c->platform_kind, sizeof c->platform_kind, "local");
	c->platform_timeout_ms = 10000;
	c->platform_read_timeout_ms = 2000;
	c->platform_read_batch = 500;
	c->event_timeout_ms = 10000;
	c->panel_session_idle_s = 3600;
	c->panel_session_max_s = 12 * 3600;
	c->metrics_account_series_limit = 1000;
}

struct ctx {
	struct dun_config *c;
	FILE *f;
	int line; /* Debian's inih passes no line numbers: the reader counts */
	const char *path;
	char *err;
	size_t err_size;
	bool failed;
};

static void fail_at(struct ctx *x, int line, const char *section, const char *name, const char *why)
{
	if (x->failed)
		return;
	x->failed = true;
	snprintf(x->err, x->err_size, "%s:%d: [%s] %s: %s", x->path, line, section, name, why);
}

static bool split_list(const char *value, char (*out)[DUN_CONFIG_STR], size_t item_size, int max,
		       int *n)
{
	*n = 0;
	const char *p = value;
	while (*p) {
		while (*p == ' ' || *p == ',')
			p++;
		if (!*p)
			break;
		const char *end = p;
		while (*end && *end != ',')
			end++;
		const char *t = end;
		while (t > p && t[-1] == ' ')
			t--;
		size_t len = (size_t)(t - p);
		if (*n >= max || len >= item_size)
			return false;
		memcpy(out[*n], p, len);
		out[*n][len] = '\0';
		(*n)++;
		p = end;
	}
	return true;
}

static int handler(void *user, const char *section, const char *name, const char *value)
{
	struct ctx *x = user;
	int line = x->line;
	struct dun_config *c = x->c;
	if (x->failed)
		return 1;
	for (size_t i = 0; i < sizeof keys / sizeof keys[0]; i++) {
		const struct key *k = &keys[i];
		if (strcmp(k->section, section) != 0 || strcmp(k->name, name) != 0)
			continue;
		char *field = (char *)c + k->offset;
		switch (k->kind) {
		case K_STR:
			if (strlen(value) >= k->size)
				fail_at(x, line, section, name, "value is too long");
			else
				snprintf(field, k->size, "%s", value);
			return 1;
		case K_INT: {
			char *end;
			errno = 0;
			bool fleet = k->offset == offsetof(struct dun_config, fleet_workers);
			if (fleet && !strcmp(value, "auto")) {
				*(int64_t *)field = DUN_FLEET_WORKERS_AUTO;
				return 1;
			}
			long long v = strtoll(value, &end, 10);
			if (errno || end == value || *end || v < k->min || v > k->max) {
				char why[160];
				snprintf(why, sizeof why,
					 "expected %sa whole number from %lld to %lld, got \"%s\"",
					 fleet ? "\"auto\" or " : "", (long long)k->min,
					 (long long)k->max, value);
				fail_at(x, line, section, name, why);
			} else if (k->offset == offsetof(struct dun_config, workers) ||
				   k->offset == offsetof(struct dun_config, group_commit_max) ||
				   k->offset == offsetof(struct dun_config, stripe_max_retries) ||
				   k->offset == offsetof(struct dun_config, inbox_max_attempts)) {
				*(int *)field = (int)v;
			} else {
				*(int64_t *)field = v;
			}
			return 1;
		}
		case K_DOUBLE: {
			double v = 0;
			if (!dun_input_parse_decimal(value, &v) || v < (double)k->min ||
			    v > (double)k->max) {
				char why[160];
				snprintf(why, sizeof why,
					 "expected a number from %lld to %lld, got \"%s\"",
					 (long long)k->min, (long long)k->max, value);
				fail_at(x, line, section, name, why);
			} else {
				*(double *)field = v;
			}
			return 1;
		}
		case K_LISTEN: {
			const char *colon = strrchr(value, ':');
			char *end;
			long port = colon ? strtol(colon + 1, &end, 10) : -1;
			if (!colon || colon == value || *end || port < 0 || port > 65535 ||
			    (size_t)(colon - value) >= sizeof c->listen_host) {
				fail_at(x, line, section, name,
					"expected HOST:PORT, e.g. 127.0.0.1:8080 (port 0 picks a "
					"free one)");
			} else {
				memcpy(c->listen_host, value, (size_t)(colon - value));
				c->listen_host[colon - value] = '\0';
				c->listen_port = (int)port;
			}
			return 1;
		}
		case K_SECRETS: {
			char tmp[DUN_CONFIG_SECRETS_MAX][DUN_CONFIG_STR];
			int n = 0;
			if (!split_list(value, tmp, 256, DUN_CONFIG_SECRETS_MAX, &n)) {
				fail_at(x, line, section, name,
					"at most 4 secrets of at most 255 characters");
				return 1;
			}
			for (int s = 0; s < n; s++)
				memcpy(c->webhook_secrets[s], tmp[s], 256);
			c->n_webhook_secrets = n;
			return 1;
		}
		case K_ENDPOINTS:
			if (!split_list(value, c->event_endpoints, DUN_CONFIG_STR,
					DUN_CONFIG_ENDPOINTS_MAX, &c->n_event_endpoints))
				fail_at(x, line, section, name, "at most 8 URLs, comma-separated");
			return 1;
		}
	}
	fail_at(x, line, section, name, "unknown key (see docs/config.md)");
	return 1;
}

static void env_str(const char *var, char *field, size_t size)
{
	const char *v = getenv(var);
	if (v && *v)
		snprintf(field, size, "%s", v);
}

enum dun_err dun_config_finish(struct dun_config *c, char *err, size_t err_size)
{
	if (c->db_url[0]) {
		if (strncmp(c->db_url, "postgresql://", 13) &&
		    strncmp(c->db_url, "postgres://", 11)) {
			snprintf(err, err_size,
				 "%s: [database] url: a postgresql:// URL (a SQLite file is"
				 " [database] path)",
				 c->path[0] ? c->path : "configuration");
			return DUN_E_CONFIG;
		}
		snprintf(c->db_path, sizeof c->db_path, "%s", c->db_url);
	}
	env_str("DUNNING_DB", c->db_path, sizeof c->db_path);
	env_str("STRIPE_API_KEY", c->stripe_api_key, sizeof c->stripe_api_key);
	env_str("DUNNING_ADMIN_TOKEN", c->admin_token, sizeof c->admin_token);
	env_str("DUNNING_SMTP_PASSWORD", c->smtp_password, sizeof c->smtp_password);
	env_str("DUNNING_PLATFORM_TOKEN", c->platform_token, sizeof c->platform_token);
	env_str("DUNNING_EVENTS_SECRET", c->event_secret, sizeof c->event_secret);
	const char *ws = getenv("STRIPE_WEBHOOK_SECRETS");
	if (ws && *ws) {
		char tmp[DUN_CONFIG_SECRETS_MAX][DUN_CONFIG_STR];
		int n = 0;
		if (!split_list(ws, tmp, 256, DUN_CONFIG_SECRETS_MAX, &n)) {
			snprintf(err, err_size, "STRIPE_WEBHOOK_SECRETS: at most 4 secrets");
			return DUN_E_CONFIG;
		}
		for (int s = 0; s < n; s++)
			memcpy(c->webhook_secrets[s], tmp[s], 256);
		c->n_webhook_secrets = n;
	}
	const char *where = c->path[0] ? c->path : "configuration";
	if (strcmp(c->provider, "simulated") && strcmp(c->provider, "stripe")) {
		snprintf(err, err_size, "%s: [provider] kind: simulated or stripe, not \"%s\"",
			 where, c->provider);
		return DUN_E_CONFIG;
	}
	if (!strcmp(c->provider, "stripe") && !c->stripe_api_key[0]) {
		snprintf(err, err_size,
			 "%s: [stripe] api_key is required with [provider] kind = stripe (or set "
			 "STRIPE_API_KEY)",
			 where);
		return DUN_E_CONFIG;
	}
	for (int s = 0; s < c->n_webhook_secrets; s++)
		if (strncmp(c->webhook_secrets[s], "whsec_", 6) != 0) {
			snprintf(
			    err, err_size,
			    "%s: [stripe] webhook_secrets: secret %d does not start with whsec_",
			    where, s + 1);
			return DUN_E_CONFIG;
		}
	if (c->rollout_mode[0] && strcmp(c->rollout_mode, "observe") &&
	    strcmp(c->rollout_mode, "active")) {
		snprintf(err, err_size, "%s: [rollout] mode: observe or active, not \"%s\"", where,
			 c->rollout_mode);
		return DUN_E_CONFIG;
	}
	if (strcmp(c->email_transport, "log") && strcmp(c->email_transport, "smtp")) {
		snprintf(err, err_size, "%s: [email] transport: log or smtp, not \"%s\"", where,
			 c->email_transport);
		return DUN_E_CONFIG;
	}
	if (!strcmp(c->email_transport, "smtp") && (!c->smtp_url[0] || !c->smtp_from[0])) {
		snprintf(err, err_size, "%s: [email] transport = smtp needs smtp_url and smtp_from",
			 where);
		return DUN_E_CONFIG;
	}
	if (strcmp(c->platform_kind, "local") && strcmp(c->platform_kind, "http")) {
		snprintf(err, err_size, "%s: [platform] kind: local or http, not \"%s\"", where,
			 c->platform_kind);
		return DUN_E_CONFIG;
	}
	if (!strcmp(c->platform_kind, "http") && !c->platform_base_url[0]) {
		snprintf(err, err_size, "%s: [platform] kind = http needs base_url", where);
		return DUN_E_CONFIG;
	}
	if (c->inbox_backoff_base_s > c->inbox_backoff_max_s) {
		snprintf(err, err_size,
			 "%s: [inbox] backoff_base_s must not be larger than backoff_max_s", where);
		return DUN_E_CONFIG;
	}
	return DUN_OK;
}

static char *read_line(char *buf, int size, void *stream)
{
	struct ctx *x = stream;
	char *r = fgets(buf, size, x->f);
	if (r)
		x->line++;
	return r;
}

enum dun_err dun_config_load_stream(FILE *f, const char *name, struct dun_config *c, char *err,
				    size_t err_size)
{
	dun_config_defaults(c);
	if (err_size)
		err[0] = '\0';
	snprintf(c->path, sizeof c->path, "%s", name);
	struct ctx x = {.c = c, .f = f, .path = name, .err = err, .err_size = err_size};
	int rc = ini_parse_stream(read_line, &x, handler, &x);
	if (x.failed)
		return DUN_E_CONFIG;
	if (rc > 0) {
		snprintf(err, err_size,
			 "%s:%d: cannot parse this line (expected [section] or key = value)", name,
			 rc);
		return DUN_E_CONFIG;
	}
	if (rc < 0) {
		snprintf(err, err_size, "%s: cannot read the file", name);
		return DUN_E_CONFIG;
	}
	return dun_config_finish(c, err, err_size);
}

enum dun_err dun_config_load(const char *path, struct dun_config *c, char *err, size_t err_size)
{
	FILE *f = fopen(path, "r");
	if (!f) {
		dun_config_defaults(c);
		snprintf(err, err_size, "%s: %s", path, strerror(errno));
		return DUN_E_CONFIG;
	}
	enum dun_err e = dun_config_load_stream(f, path, c, err, err_size);
	fclose(f);
	return e;
}
