/*
 * gen.h — the synthetic population of the benchmarks and of the stream
 * equivalence test.
 *
 * It writes accounts, customers, the provider mirror (customers,
 * subscriptions, invoices, payment attempts), invoice documents, dunning
 * rows, platform rows, bad-debt episodes and the email log straight through
 * the real schema (the file is opened with dun_db_open, so every migration
 * applies). Everything is a function of (seed, account index): the same
 * parameters give the same database, byte for byte in content.
 *
 * The population is consistent with the default policy at `now`, except for
 * a few percent of self-serve accounts where one deliberate inconsistency is
 * planted; the expected drift count per class is returned (and stored in the
 * settings table) so a scan can be checked against it. The edge mix (for the
 * equivalence test) adds every oddity the GATHER has to treat the same way
 * on both paths, and gives up the expectations.
 */
#ifndef DUN_BENCH_GEN_H
#define DUN_BENCH_GEN_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "core/drift.h"
#include "util/err.h"

struct dun_bench_gen_config {
	const char *path; /* the database to create; must not exist */
	int64_t accounts;
	int64_t now; /* the time the population is consistent at */
	uint64_t seed;
	bool edge;  /* dense mix of odd cases, no expectations */
	bool quiet; /* no progress lines on stderr */
};

struct dun_bench_gen_counts {
	int64_t accounts;
	int64_t customers;
	int64_t subscriptions;
	int64_t invoices;
	int64_t attempts;
	int64_t docs;
	int64_t emails;
	int64_t episodes;
	int64_t planted; /* accounts with a planted inconsistency */
	int64_t expect[DUN_DRIFT__COUNT];
};

/*
 * Create the database at cfg->path. Borrows cfg; fills *out. On failure err
 * says why and the file may be left half-written (callers generate into a
 * temporary name and rename).
 */
enum dun_err dun_bench_gen_run(const struct dun_bench_gen_config *cfg,
			       struct dun_bench_gen_counts *out, char *err, size_t err_size);

/*
 * The population's version: bumped whenever a change to gen.c changes what
 * a given (accounts, seed, now) produces, so bench/run.sh regenerates.
 */
#define DUN_BENCH_GEN_VERSION "6"

/* The settings keys the generator stores its parameters and counts under. */
#define DUN_BENCH_KEY_PARAMS "bench.params"
#define DUN_BENCH_KEY_NOW    "bench.now"
#define DUN_BENCH_KEY_EXPECT "bench.expect." /* + drift class name */

#endif
