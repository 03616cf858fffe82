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
#include "provider/sim.h"

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

/* What a subcommand needs opened for it. */
enum {
	DUN_NEED_DB = 1,
	DUN_NEED_POLICY = 2,
	DUN_NEED_ENGINE = 4 | 1 | 2, /* the engine needs the db and the policy */
};

struct dun_cli {
	/* global options */
	const char *db_path;
	const char *policy_path;
	const char *templates_dir;
	const char *support_email;
	bool verbose;
	/* opened resources */
	struct dun_db *db;
	struct dun_policy policy;
	struct dun_template_set *templates;
	struct dun_template_renderer renderer;
	struct dun_sim *sim;
	struct dun_engine engine;
	bool engine_ready;
};

/* A subcommand: argc/argv start at the subcommand's own name. */
struct dun_command {
	const char *name;
	int (*run)(struct dun_cli *cli, int argc, char **argv);
	const char *summary;
};

/* Open what `need` asks for; prints a clear error and returns an exit code on failure. */
int dun_cli_open(struct dun_cli *cli, unsigned need);
void dun_cli_close(struct dun_cli *cli);

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
