/*
 * config.h — the service configuration file (`dunning serve`, `dunning
 * config check`, and the CLI when given --config).
 *
 * INI format, parsed with libinih. Every key is documented in
 * docs/config.md. Secrets (Stripe API key, webhook secrets, admin token,
 * SMTP password, platform token, outcome-event secrets) may also come from
 * the environment, which wins over the file; they are never logged.
 *
 *   [server]   listen = 127.0.0.1:8080, body_max_bytes, workers, ...
 *   [database] path (a SQLite file) or url (postgresql://...)
 *   [policy]   file
 *   [stripe]   api_key, api_base, webhook_secrets, tolerance_s, rate_limit_per_s, ...
 *   [admin]    token
 *   [rollout]  mode, percent: what the database is expected to say (the database
 *              holds the rollout; a disagreement stops serve, work, ...)
 *   [email]    transport = log|smtp, smtp_url, smtp_from, ...
 *   [platform] kind = local|http, base_url, token, timeout_ms, read_timeout_ms,
 *              read_batch
 *   [events]   endpoints, secret
 *   [metrics]  account_series_limit
 */
#ifndef DUN_CONFIG_H
#define DUN_CONFIG_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "util/err.h"

#define DUN_CONFIG_SECRETS_MAX	 4
#define DUN_CONFIG_ENDPOINTS_MAX 8
#define DUN_CONFIG_STR		 512

struct dun_config {
	char path[DUN_CONFIG_STR]; /* the file it was read from ("" for defaults) */
	/* [server] */
	char listen_host[64];
	int listen_port;
	int64_t body_max_bytes;	 /* default 1 MiB */
	int workers;		 /* worker threads; default 2 */
	int64_t fleet_workers;	 /* PostgreSQL: workers of all replicas at once; 0 = no cap,
				    DUN_FLEET_WORKERS_AUTO (the default) = dun_config_fleet_cap() */
	int64_t poll_ms;	 /* how often idle workers look for due triggers; default 500 */
	int group_commit_max;	 /* events per fsync at most; default 256 */
	int64_t max_connections; /* open HTTP connections at most; default 8192 */
	int64_t max_connections_per_client; /* per source address, 0 = no cap; default 256 */
	int64_t header_timeout_ms;	    /* a request's headers within; default 10000 */
	int64_t shutdown_grace_ms;	    /* a stop waits this for slow clients; default 10000 */
	/* [database] */
	char db_path[DUN_CONFIG_STR];
	char db_url[DUN_CONFIG_STR]; /* [database] url: a postgresql:// URL; wins over path */
	/* [policy] */
	char policy_path[DUN_CONFIG_STR]; /* "" = built-in defaults */
	char templates_dir[DUN_CONFIG_STR];
	char support_email[256];
	char pay_bad_debt_url[DUN_CONFIG_STR]; /* the bad_debt email's link; "{account}" */
	/* [provider] */
	char provider[16]; /* simulated | stripe */
	/* [stripe] */
	char stripe_api_key[256];
	char stripe_api_base[DUN_CONFIG_STR];
	char stripe_version[64];
	char webhook_secrets[DUN_CONFIG_SECRETS_MAX][256];
	int n_webhook_secrets;
	int64_t webhook_tolerance_s;
	double stripe_rate_limit_per_s;
	int64_t stripe_timeout_ms;
	int stripe_max_retries;
	/* [admin] */
	char admin_token[256];
	/* [panel] the support panel under /panel/ (off without a users file) */
	char panel_users_file[DUN_CONFIG_STR];
	int64_t panel_session_idle_s; /* a session unused this long ends */
	int64_t panel_session_max_s;  /* and any session ends this long after sign-in */
	int64_t panel_cookie_secure;  /* 1: always Secure; 0: when X-Forwarded-Proto is https */
	/* [rollout] */
	char rollout_mode[16];		      /* "" = no expectation about the database's mode */
	double rollout_percent;		      /* < 0 = no expectation */
	int64_t rollout_parity_window_days;   /* the gate: a report must cover this many days */
	int64_t rollout_parity_max_age_hours; /* ... and be at most this old */
	/* [parity] thresholds of `dunning parity` */
	int64_t parity_tolerance_hours;
	double parity_min_match_percent;
	double parity_min_coverage_percent;
	int64_t parity_max_amount_mismatches;
	int64_t parity_max_filter_mismatches;
	int64_t parity_max_errors;
	/* [inbox] */
	int inbox_max_attempts;
	int64_t inbox_backoff_base_s;
	int64_t inbox_backoff_max_s;
	int64_t inbox_lease_s;
	/* [email] */
	char email_transport[16]; /* log | smtp */
	char smtp_url[DUN_CONFIG_STR];
	char smtp_from[256];
	char smtp_username[256];
	char smtp_password[256];
	char smtp_tls[16];
	int64_t smtp_timeout_ms;
	char smtp_ca_file[DUN_CONFIG_STR];
	int64_t email_alert_after_s;   /* undelivered this long: overdue (log, metric) */
	int64_t email_give_up_after_s; /* undelivered this long: dead, no more attempts */
	/* [platform] */
	char platform_kind[16]; /* local | http */
	char platform_base_url[DUN_CONFIG_STR];
	char platform_token[256];
	int64_t platform_timeout_ms;
	/* GATHER's read of one account (or one batch of the scan), in total */
	int64_t platform_read_timeout_ms;
	int64_t platform_read_batch; /* accounts per read of the drift scan */
	/* [events] payment-outcome events out */
	char event_endpoints[DUN_CONFIG_ENDPOINTS_MAX][DUN_CONFIG_STR];
	int n_event_endpoints;
	char event_secret[256];
	int64_t event_timeout_ms;
	/* [metrics] accounts outside the current stage given series of their own, at most */
	int64_t metrics_account_series_limit;
};

/* The defaults every key has when the file does not set it. */
void dun_config_defaults(struct dun_config *c);

/* [server] fleet_workers = auto: twice the CPUs of the host the process runs on. */
#define DUN_FLEET_WORKERS_AUTO (-1)
/*
 * The cap fleet_workers gives: 0 for none, else at most that many workers
 * of all replicas work at once. With auto, cpus is set to the CPUs it was
 * sized from (else 0).
 */
int64_t dun_config_fleet_cap(const struct dun_config *c, int *cpus);

/*
 * Read path over the defaults, then apply the environment (DUNNING_* and
 * STRIPE_* variables, see docs/config.md), then validate. err names the
 * file, line and key of the first problem.
 */
enum dun_err dun_config_load(const char *path, struct dun_config *c, char *err, size_t err_size);

/* The same, from an open stream; name is used in messages. Borrows f. */
enum dun_err dun_config_load_stream(FILE *f, const char *name, struct dun_config *c, char *err,
				    size_t err_size);

/* Apply environment overrides and validate (also used without a file). */
enum dun_err dun_config_finish(struct dun_config *c, char *err, size_t err_size);

#endif
