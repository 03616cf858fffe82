/*
 * cmd_users.c — `dunning users add|passwd|remove|list`: the people who may
 * sign in to the support panel of `dunning serve` (src/server/panel.c).
 * The file is --file FILE, or [panel] users_file of --config. A password is
 * read from standard input (a terminal is asked twice, without echo), never
 * from the command line, where other users of the machine could see it.
 */
#include "app/users.h"
#include "commands.h"
#include "config/config.h"

#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <termios.h>
#include <unistd.h>

static void usage(FILE *f)
{
	fprintf(f, "usage: dunning users add NAME [--file FILE]\n"
		   "       dunning users passwd NAME [--file FILE]\n"
		   "       dunning users remove NAME [--file FILE]\n"
		   "       dunning users list [--file FILE]\n\n"
		   "The people who may sign in to the support panel (/panel/ of dunning serve).\n"
		   "FILE is --file, or [panel] users_file of --config. add and passwd read the\n"
		   "password from standard input (at a terminal: asked twice, not shown); it is\n"
		   "stored as a salted yescrypt hash. A name is 1 to 64 letters, digits and\n"
		   ". _ @ -; a password has 8 to 1024 bytes.\n");
}

/* One line of standard input without its line break; false at end of input or when too long. */
static bool read_line(char *buf, size_t size)
{
	if (!fgets(buf, (int)size, stdin))
		return false;
	size_t n = strlen(buf);
	if (n == size - 1 && buf[n - 1] != '\n')
		return false;
	while (n && (buf[n - 1] == '\n' || buf[n - 1] == '\r'))
		buf[--n] = '\0';
	return true;
}

static bool read_password(char *out, size_t size)
{
	bool tty = isatty(0);
	struct termios old, quiet;
	if (tty && tcgetattr(0, &old) == 0) {
		quiet = old;
		quiet.c_lflag &= ~(tcflag_t)ECHO;
		fprintf(stderr, "password: ");
		tcsetattr(0, TCSAFLUSH, &quiet);
		bool ok = read_line(out, size);
		char again[DUN_USER_PASSWORD_MAX + 2];
		if (ok) {
			fprintf(stderr, "\nagain: ");
			ok = read_line(again, sizeof again);
		}
		tcsetattr(0, TCSAFLUSH, &old);
		fprintf(stderr, "\n");
		if (ok && strcmp(out, again) != 0) {
			dun_cli_error("users: the two passwords differ");
			ok = false;
		}
		explicit_bzero(again, sizeof again);
		return ok;
	}
	return read_line(out, size);
}

static bool print_entry(const char *name, const char *hash, void *arg)
{
	(void)hash;
	(void)arg;
	printf("%s\n", name);
	return true;
}

static int list_users(const char *path)
{
	FILE *f = fopen(path, "rb");
	if (!f) {
		dun_cli_error("users list: cannot open %s", path);
		return DUN_EX_NOINPUT;
	}
	char *buf = malloc(DUN_USERS_FILE_MAX + 1);
	size_t n = buf ? fread(buf, 1, DUN_USERS_FILE_MAX + 1, f) : 0;
	fclose(f);
	if (!buf || n > DUN_USERS_FILE_MAX) {
		free(buf);
		dun_cli_error("users list: %s is larger than %d bytes", path, DUN_USERS_FILE_MAX);
		return DUN_EX_DATAERR;
	}
	char err[256] = "";
	enum dun_err e = dun_users_parse(buf, n, print_entry, NULL, err, sizeof err);
	free(buf);
	if (e != DUN_OK) {
		dun_cli_error("users list: %s: %s", path, err);
		return DUN_EX_DATAERR;
	}
	return DUN_EX_OK;
}

int dun_cmd_users(struct dun_cli *cli, int argc, char **argv)
{
	static const struct option opts[] = {{"file", required_argument, NULL, 'f'},
					     {"help", no_argument, NULL, 'h'},
					     {NULL, 0, NULL, 0}};
	const char *file = NULL;
	int c;
	optind = 1;
	while ((c = getopt_long(argc, argv, "+f:h", opts, NULL)) != -1) {
		switch (c) {
		case 'f':
			file = optarg;
			break;
		case 'h':
			usage(stdout);
			return DUN_EX_OK;
		default:
			usage(stderr);
			return DUN_EX_USAGE;
		}
	}
	/* Options may also follow the action and the name. */
	const char *action = optind < argc ? argv[optind++] : NULL;
	const char *name = NULL;
	while (optind < argc) {
		if (!strcmp(argv[optind], "--file") && optind + 1 < argc) {
			file = argv[optind + 1];
			optind += 2;
		} else if (!strncmp(argv[optind], "--file=", 7)) {
			file = argv[optind] + 7;
			optind++;
		} else if (!name && argv[optind][0] != '-') {
			name = argv[optind++];
		} else {
			dun_cli_error("users: unexpected \"%s\"", argv[optind]);
			return DUN_EX_USAGE;
		}
	}
	if (!action) {
		usage(stderr);
		return DUN_EX_USAGE;
	}
	enum dun_users_op op = DUN_USERS_ADD;
	bool listing = false;
	if (!strcmp(action, "add"))
		op = DUN_USERS_ADD;
	else if (!strcmp(action, "passwd"))
		op = DUN_USERS_REPLACE;
	else if (!strcmp(action, "remove"))
		op = DUN_USERS_REMOVE;
	else if (!strcmp(action, "list"))
		listing = true;
	else {
		dun_cli_error("users: unknown action \"%s\" (add, passwd, remove, list)", action);
		return DUN_EX_USAGE;
	}
	if (!file) {
		int rc = dun_cli_load_config(cli);
		if (rc)
			return rc;
		if (cli->config && cli->config->panel_users_file[0])
			file = cli->config->panel_users_file;
	}
	if (!file) {
		dun_cli_error("users: which file? give --file FILE, or --config with [panel] "
			      "users_file");
		return DUN_EX_USAGE;
	}
	if (listing) {
		if (name) {
			dun_cli_error("users list: takes no NAME");
			return DUN_EX_USAGE;
		}
		return list_users(file);
	}
	if (!name) {
		dun_cli_error("users %s: expected a NAME", action);
		return DUN_EX_USAGE;
	}
	if (!dun_users_name_valid(name)) {
		dun_cli_error("users %s: a name is 1 to %d letters, digits and . _ @ -, not \"%s\"",
			      action, DUN_USER_NAME_MAX - 1, name);
		return DUN_EX_USAGE;
	}
	char hash[DUN_USER_HASH_MAX] = "";
	if (op != DUN_USERS_REMOVE) {
		char pw[DUN_USER_PASSWORD_MAX + 2];
		if (!read_password(pw, sizeof pw)) {
			explicit_bzero(pw, sizeof pw);
			dun_cli_error("users %s: no password read from standard input (or longer "
				      "than %d bytes)",
				      action, DUN_USER_PASSWORD_MAX);
			return DUN_EX_DATAERR;
		}
		char why[128];
		if (!dun_users_password_valid(pw, why, sizeof why)) {
			explicit_bzero(pw, sizeof pw);
			dun_cli_error("users %s: %s", action, why);
			return DUN_EX_DATAERR;
		}
		enum dun_err e = dun_users_hash(pw, hash, sizeof hash);
		explicit_bzero(pw, sizeof pw);
		if (e != DUN_OK) {
			dun_cli_error("users %s: cannot hash the password: %s", action,
				      dun_err_str(e));
			return DUN_EX_SOFTWARE;
		}
	}
	char err[512] = "";
	enum dun_err e = dun_users_update(file, op, name, hash, err, sizeof err);
	switch (e) {
	case DUN_OK:
		printf("user %s %s in %s\n", name,
		       op == DUN_USERS_ADD	 ? "added"
		       : op == DUN_USERS_REPLACE ? "password set"
						 : "removed",
		       file);
		return DUN_EX_OK;
	case DUN_E_CONFLICT:
		dun_cli_error("users add: %s", err);
		return DUN_EX_CANTCREAT;
	case DUN_E_NOT_FOUND:
		dun_cli_error("users %s: %s", action, err);
		return DUN_EX_NOINPUT;
	case DUN_E_PARSE:
	case DUN_E_TOO_BIG:
		dun_cli_error("users %s: %s", action, err);
		return DUN_EX_DATAERR;
	case DUN_E_INVALID:
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
	case DUN_E_SIGNATURE:
	case DUN_E_TIMEOUT:
	case DUN_E_UNSUPPORTED:
	case DUN_E_CORRUPT:
	case DUN_E_UNAVAILABLE:
	case DUN_E_FENCED:
	case DUN_E_INCOMPLETE:
		break;
	}
	dun_cli_error("users %s: %s", action, err[0] ? err : dun_err_str(e));
	return DUN_EX_CANTCREAT;
}
