/*
 * cmd_serve.c — `dunning serve --config FILE [--port-file PATH]`: run the
 * service until SIGTERM or SIGINT (src/server/service.h has the parts).
 *
 * This file owns the process: the configuration, the signals, the exit
 * status. Start-up problems (a broken configuration, a database that cannot
 * be opened, an address in use) print one clear line and exit 78
 * (EX_CONFIG) before anything is served. A signal stops the service
 * gracefully and exits 0.
 */
#include "commands.h"
#include "config/config.h"
#include "server/service.h"
#include "util/log.h"

#include <curl/curl.h>
#include <errno.h>
#include <getopt.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>

/* How often the main thread does its housekeeping while it waits for a signal. */
#define TICK_MS 100

static int usage(FILE *out)
{
	fprintf(out, "usage: dunning serve --config FILE [--port-file PATH]\n\n"
		     "Run the service: POST /webhooks/stripe, the admin API, health and metrics\n"
		     "on [server] listen, and [server] workers threads draining the inbox.\n"
		     "SIGTERM or SIGINT stops it gracefully (requests in flight are answered,\n"
		     "clients still sending theirs after [server] shutdown_grace_ms are cut,\n"
		     "each worker finishes its recompute). Exit 78 when it cannot start.\n\n"
		     "  --config FILE     the service configuration (docs/config.md); also\n"
		     "                    $DUNNING_CONFIG\n"
		     "  --port-file PATH  write the port listened on to PATH once listening\n"
		     "                    (useful with listen = 127.0.0.1:0)\n");
	return out == stdout ? DUN_EX_OK : DUN_EX_USAGE;
}

/* Written to a temporary name first, so a reader never sees half a number. */
static bool write_port_file(const char *path, int port)
{
	char tmp[4096];
	snprintf(tmp, sizeof tmp, "%s.tmp", path);
	FILE *f = fopen(tmp, "w");
	if (!f)
		return false;
	bool ok = fprintf(f, "%d\n", port) > 0;
	ok = fclose(f) == 0 && ok;
	if (ok && rename(tmp, path) != 0)
		ok = false;
	if (!ok)
		remove(tmp);
	return ok;
}

/* Many concurrent connections need descriptors; take what the hard limit allows. */
static void raise_fd_limit(void)
{
	struct rlimit rl;
	if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
		rl.rlim_cur = rl.rlim_max;
		setrlimit(RLIMIT_NOFILE, &rl);
	}
}

int dun_cmd_serve(struct dun_cli *cli, int argc, char **argv)
{
	static const struct option opts[] = {{"port-file", required_argument, NULL, 'p'},
					     {"help", no_argument, NULL, 'h'},
					     {NULL, 0, NULL, 0}};
	const char *port_file = NULL;
	int c;
	optind = 0;
	while ((c = getopt_long(argc, argv, "p:h", opts, NULL)) != -1) {
		switch (c) {
		case 'p':
			port_file = optarg;
			break;
		case 'h':
			return usage(stdout);
		default:
			return usage(stderr);
		}
	}
	if (optind != argc) {
		dun_cli_error("serve: unexpected argument \"%s\"", argv[optind]);
		return DUN_EX_USAGE;
	}
	if (!cli->config_path)
		cli->config_path = getenv("DUNNING_CONFIG");
	if (!cli->config_path || !cli->config_path[0]) {
		dun_cli_error("serve: --config FILE is required (or set DUNNING_CONFIG)");
		return DUN_EX_USAGE;
	}
	int rc = dun_cli_load_config(cli);
	if (rc)
		return DUN_EX_CONFIG;
	/* --db on the command line wins over [database] path, as for every command. */
	if (cli->db_path_given)
		snprintf(cli->config->db_path, sizeof cli->config->db_path, "%s", cli->db_path);
	if (!cli->verbose)
		dun_log_set_level(DUN_LOG_INFO);
	raise_fd_limit();

	/*
	 * Signals are taken synchronously by this thread only: block them
	 * before any thread starts, so every thread inherits the mask.
	 * SIGPIPE is ignored: a client that hangs up is an error return.
	 */
	signal(SIGPIPE, SIG_IGN);
	sigset_t stop_signals;
	sigemptyset(&stop_signals);
	sigaddset(&stop_signals, SIGTERM);
	sigaddset(&stop_signals, SIGINT);
	pthread_sigmask(SIG_BLOCK, &stop_signals, NULL);

	/* libcurl (SMTP, the HTTP platform, Stripe) is set up once, before any thread. */
	if (curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK) {
		dun_cli_error("serve: cannot initialise libcurl");
		return DUN_EX_SOFTWARE;
	}
	struct dun_service *svc = NULL;
	char err[1024] = "";
	enum dun_err e = dun_service_start(cli->config, &svc, err, sizeof err);
	if (e != DUN_OK) {
		dun_cli_error("serve: %s", err[0] ? err : dun_err_str(e));
		curl_global_cleanup();
		/* A database that is down is not a configuration error: exit 69,
		 * which a service manager restarts (78 it does not). */
		return e == DUN_E_UNAVAILABLE ? DUN_EX_UNAVAILABLE : DUN_EX_CONFIG;
	}
	if (port_file && !write_port_file(port_file, svc->port)) {
		dun_cli_error("serve: --port-file %s: %s", port_file, strerror(errno));
		if (dun_service_stop(svc))
			curl_global_cleanup();
		return DUN_EX_CANTCREAT;
	}
	int sig = 0;
	while (!sig) {
		struct timespec ts = {.tv_sec = 0, .tv_nsec = TICK_MS * 1000000L};
		siginfo_t info;
		int s = sigtimedwait(&stop_signals, &info, &ts);
		if (s > 0)
			sig = s;
		else
			dun_service_tick(svc);
	}
	dun_log(DUN_LOG_INFO, "server.signal", "signal", sig == SIGTERM ? "SIGTERM" : "SIGINT",
		NULL);
	if (!dun_service_stop(svc)) {
		dun_cli_error("serve: stopped with requests still in flight");
		/* The service still holds threads; leave without touching what they use. */
		_Exit(DUN_EX_TEMPFAIL);
	}
	curl_global_cleanup();
	return DUN_EX_OK;
}
