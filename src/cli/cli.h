/*
 * cli.h — what every subcommand shares: global options, opening the store,
 * the policy, the templates and the engine, exit codes, output helpers.
 */
#ifndef DUN_CLI_H
#define DUN_CLI_H

#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>

#include "apply/recompute.h"
#include "apply/render.h"
#include "inbox/inbox.h"
#include "provider/sim.h"

struct dun_config;
struct dun_effects;

/* Exit codes, from sysexits(3). */
enum {
	DUN_EX_OK = 0,
	DUN_EX_FAIL = 1, /* the command ran and found a problem (e.g. drift) */
	DUN_EX_USAGE = 64,
	DUN_EX_DATAERR = 65,
	DUN_EX_NOINPUT = 66,
	DUN_EX_UNAVAILABLE = 69,
	DUN_EX_SOFTWARE = 70,
	DUN_EX_CANTCREAT = 73,
	DUN_EX_IOERR = 74,
	DUN_EX_TEMPFAIL = 75,
	DUN_EX_CONFIG = 78,
};

/*
 * What a subcommand needs opened for it. The database must exist unless
 * DUN_NEED_CREATE is given (init, demo: the only commands that create one
 * besides `serve`); a missing one is refused with exit 66 and a hint to run
 * `dunning init`, so a typo in --db never yields an empty database.
 * DUN_NEED_READONLY opens it read-only (commands that only read: they work
 * on a read-only file or mount, and never migrate).
 */
enum {
	DUN_NEED_DB = 1,
	DUN_NEED_POLICY = 2,
	DUN_NEED_ENGINE = 4 | 1 | 2, /* the engine needs the db and the policy */
	DUN_NEED_CREATE = 8,
	DUN_NEED_READONLY = 16,
};

struct dun_cli {
	/* global options */
	const char *db_path;
	bool db_path_given;	 /* --db was given: it wins over [database] path */
	const char *config_path; /* --config FILE: the service configuration */
	const char *policy_path;
	const char *templates_dir;
	const char *support_email;
	const char *pay_bad_debt_url; /* $DUNNING_PAY_BAD_DEBT_URL or [policy] pay_bad_debt_url */
	bool verbose;
	/* opened resources */
	struct dun_db *db;
	struct dun_policy policy;
	struct dun_template_set *templates;
	struct dun_template_renderer renderer;
	struct dun_sim *sim;
	struct dun_config *config;    /* loaded from config_path, or NULL */
	struct dun_effects *effects;  /* with a config: platform, mailer, renderer */
	struct dun_provider provider; /* with [provider] kind = stripe: the Stripe client */
	struct dun_engine engine;
	bool engine_ready;
};

/* A subcommand: argc/argv start at the subcommand's own name. */
struct dun_command {
	const char *name;
	int (*run)(struct dun_cli *cli, int argc, char **argv);
	const char *summary;
};

/*
 * Load --config once into cli->config (no-op without --config). Its
 * [database] path, [policy] file and support_email apply unless given on the
 * command line. Prints a clear error and returns an exit code on failure.
 */
int dun_cli_load_config(struct dun_cli *cli);

/*
 * Open what `need` asks for; prints a clear error and returns an exit code
 * on failure. With --config the engine's seams come from it: the provider
 * its [provider] kind names, the effects of dun_effects_open().
 */
int dun_cli_open(struct dun_cli *cli, unsigned need);
void dun_cli_close(struct dun_cli *cli);

/*
 * Process everything that is due now until nothing is left: with the
 * simulated provider, its queued webhooks are delivered through ingest
 * first (they are what a real provider would send after our own writes),
 * then the inbox is drained, and again, until both are quiet; then the
 * emails the drain queued are delivered (dun_cli_deliver_emails). Prints a
 * one-line summary unless quiet. Returns an exit code (1 when some
 * recompute failed; its trigger is retrying or dead).
 */
int dun_cli_drain(struct dun_cli *cli, bool quiet);
/*
 * Run the email sender until nothing more is due now (the engine's mailer,
 * the [email] settings), printing a summary line unless quiet. Email
 * failures are row states, not errors; only a database error is non-zero.
 */
int dun_cli_deliver_emails(struct dun_cli *cli, bool quiet);

/* The inbox settings: [inbox] of --config when given, the defaults otherwise. */
void dun_cli_inbox_config(const struct dun_cli *cli, struct dun_inbox_config *out);

struct dun_stripe;

/*
 * For commands that talk to Stripe directly (sync, backfill): require
 * --config, open the database and make the client from its [stripe]
 * section. cmd names the command in messages. Returns an exit code; on 0,
 * *out is a client the caller releases with dun_stripe_destroy().
 */
int dun_cli_open_stripe(struct dun_cli *cli, const char *cmd, struct dun_stripe **out);

/* Map an error code to an exit code. */
int dun_cli_exit_code(enum dun_err e);

/* Print "dunning: <fmt>" to stderr. */
void dun_cli_error(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

/* Whether stdout/stderr is a terminal (progress lines only then). */
bool dun_cli_tty(void);

/* Print a JSON value to stdout, indented, with a newline. Takes v. */
void dun_cli_print_json(json_t *v);

/* Format a unix time as "YYYY-MM-DD HH:MM" (UTC), "-" for 0. */
const char *dun_cli_time(int64_t t, char *buf, size_t n);

/* Whether argv[i] is "-h" or "--help". */
bool dun_cli_is_help(const char *arg);

#endif
