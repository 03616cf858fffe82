/*
 * bench_platform.c — what reading the platform over HTTP costs a recompute.
 *
 *   bench_platform DB BASE_URL TOKEN [ROUNDS]
 *
 * Runs GATHER + EVALUATE + DECIDE (dun_engine_evaluate: what a recompute
 * does before it writes) for every account of DB, ROUNDS times, first with
 * the local platform (the gather-only baseline: every read is the engine
 * DB), then with the HTTP platform at BASE_URL (one GET /accounts/{id} per
 * account, overlapped with the engine's own reads), and prints both rates
 * and their ratio. DB is only read. Driven by bench/platform_bench.py,
 * which starts the test platform on 127.0.0.1 and builds the database.
 */
#include "apply/local.h"
#include "apply/recompute.h"
#include "core/text.h"
#include "util/clock.h"
#include "provider/sim.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static double seconds(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static int run(struct dun_engine *en, char (*ids)[DUN_ID_MAX], int n, int rounds, double *rate)
{
	double t0 = seconds();
	for (int r = 0; r < rounds; r++)
		for (int i = 0; i < n; i++) {
			enum dun_err e = dun_engine_evaluate(en, ids[i], dun_clock_now());
			if (e != DUN_OK) {
				fprintf(stderr, "%s: %s %s\n", ids[i], dun_err_str(e), en->unread);
				return 1;
			}
		}
	*rate = (double)n * rounds / (seconds() - t0);
	return 0;
}

int main(int argc, char **argv)
{
	if (argc < 4) {
		fprintf(stderr, "usage: bench_platform DB BASE_URL TOKEN [ROUNDS]\n");
		return 64;
	}
	int rounds = argc > 4 ? atoi(argv[4]) : 3;
	char err[512];
	struct dun_db *db;
	if (dun_db_open(argv[1], &db, err, sizeof err) != DUN_OK) {
		fprintf(stderr, "open %s: %s\n", argv[1], err);
		return 66;
	}
	int n = 0, cap = 1024;
	char(*ids)[DUN_ID_MAX] = malloc(sizeof *ids * (size_t)cap);
	struct dun_stmt *st = dun_db_stmt(db, "SELECT id FROM accounts ORDER BY id");
	while (dun_stmt_row(st)) {
		if (n == cap) {
			cap *= 2;
			ids = realloc(ids, sizeof *ids * (size_t)cap);
		}
		dun_stmt_col_copy(st, 0, ids[n++], DUN_ID_MAX);
	}
	dun_stmt_reset(st);
	struct dun_policy policy;
	dun_policy_defaults(&policy);
	struct dun_sim *sim = dun_sim_new(db, 1);
	struct dun_renderer none = {0};
	struct dun_engine en;

	dun_engine_init(&en, db, &policy, dun_sim_provider(sim), dun_local_platform(db),
			dun_log_mailer(), none);
	double local = 0, http = 0;
	int rc = run(&en, ids, n, rounds, &local);
	dun_engine_free(&en);

	struct dun_platform_reader reader = {.budget_ms = 5000, .batch = 500};
	dun_strlcpy(reader.base_url, argv[2], sizeof reader.base_url);
	dun_strlcpy(reader.token, argv[3], sizeof reader.token);
	struct dun_platform p = dun_local_platform(db);
	p.reader = &reader;
	dun_engine_init(&en, db, &policy, dun_sim_provider(sim), p, dun_log_mailer(), none);
	if (!rc)
		rc = run(&en, ids, n, rounds, &http);
	dun_engine_free(&en);
	dun_sim_destroy(sim);
	dun_db_close(db);
	free(ids);
	if (rc)
		return 1;
	printf("accounts %d, rounds %d\n", n, rounds);
	printf("gather-only (local platform)         %10.0f recomputes/s\n", local);
	printf("with the platform read over HTTP     %10.0f recomputes/s\n", http);
	printf("ratio http / gather-only             %10.2f\n", http / local);
	return 0;
}
