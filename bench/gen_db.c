/*
 * gen_db.c — `gen_db`: write the benchmark population (gen.h) into a new
 * SQLite file. bench/run.sh calls it when the database for the requested
 * parameters is missing; the file is generated under a temporary name and
 * renamed, so an interrupted run never leaves a database that looks
 * complete.
 *
 *   gen_db --out PATH [--accounts N] [--seed S] [--now UNIX] [--edge] [--quiet]
 *   gen_db --version     the population's version (see gen.h)
 */
#include "gen.h"
#include "util/clock.h"

#include <getopt.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* 2026-03-01T12:00:00Z: a fixed "now", so the same parameters give the same data. */
#define DEFAULT_NOW 1772366400

static void usage(FILE *f)
{
	fprintf(f, "usage: gen_db --out PATH [--accounts N] [--seed S] [--now UNIX] [--edge]"
		   " [--quiet]\n       gen_db --version\n");
}

int main(int argc, char **argv)
{
	static const struct option opts[] = {{"out", required_argument, NULL, 'o'},
					     {"accounts", required_argument, NULL, 'a'},
					     {"seed", required_argument, NULL, 's'},
					     {"now", required_argument, NULL, 'n'},
					     {"edge", no_argument, NULL, 'e'},
					     {"quiet", no_argument, NULL, 'q'},
					     {"version", no_argument, NULL, 'V'},
					     {"help", no_argument, NULL, 'h'},
					     {NULL, 0, NULL, 0}};
	struct dun_bench_gen_config cfg = {.accounts = 1000000, .now = DEFAULT_NOW, .seed = 1};
	int c;
	while ((c = getopt_long(argc, argv, "o:a:s:n:eqVh", opts, NULL)) != -1) {
		switch (c) {
		case 'o':
			cfg.path = optarg;
			break;
		case 'a':
			cfg.accounts = strtoll(optarg, NULL, 10);
			break;
		case 's':
			cfg.seed = strtoull(optarg, NULL, 10);
			break;
		case 'n':
			if (!dun_clock_parse(optarg, &cfg.now)) {
				fprintf(stderr, "gen_db: bad --now \"%s\"\n", optarg);
				return 64;
			}
			break;
		case 'e':
			cfg.edge = true;
			break;
		case 'q':
			cfg.quiet = true;
			break;
		case 'V':
			printf("%s\n", DUN_BENCH_GEN_VERSION);
			return 0;
		case 'h':
			usage(stdout);
			return 0;
		default:
			usage(stderr);
			return 64;
		}
	}
	if (!cfg.path || optind != argc) {
		usage(stderr);
		return 64;
	}
	char tmp[4096];
	if ((size_t)snprintf(tmp, sizeof tmp, "%s.tmp", cfg.path) >= sizeof tmp) {
		fprintf(stderr, "gen_db: path too long\n");
		return 64;
	}
	const char *final_path = cfg.path;
	/* Leftovers of an interrupted run (the file and its WAL companions). */
	const char *const suffixes[] = {"", "-wal", "-shm", "-journal"};
	for (size_t i = 0; i < sizeof suffixes / sizeof suffixes[0]; i++) {
		char p[4200];
		snprintf(p, sizeof p, "%s%s", tmp, suffixes[i]);
		unlink(p);
	}
	cfg.path = tmp;
	int64_t t0 = dun_clock_mono_ms();
	struct dun_bench_gen_counts n;
	char err[512] = "";
	enum dun_err e = dun_bench_gen_run(&cfg, &n, err, sizeof err);
	if (e != DUN_OK) {
		fprintf(stderr, "gen_db: %s: %s\n", tmp, err[0] ? err : dun_err_str(e));
		return 1;
	}
	if (rename(tmp, final_path) != 0) {
		perror("gen_db: rename");
		return 1;
	}
	printf("generated %s in %.1f s: %" PRId64 " accounts, %" PRId64 " customers, %" PRId64
	       " subscriptions, %" PRId64 " invoices, %" PRId64 " attempts, %" PRId64
	       " documents, %" PRId64 " emails, %" PRId64 " episodes, %" PRId64 " planted\n",
	       final_path, (double)(dun_clock_mono_ms() - t0) / 1000.0, n.accounts, n.customers,
	       n.subscriptions, n.invoices, n.attempts, n.docs, n.emails, n.episodes, n.planted);
	return 0;
}
