/*
 * world.h — a synthetic population run through the real pipeline, for
 * `dunning demo` and `dunning simulate`.
 *
 * The world owns nothing of the engine: it plays the customers (billing
 * days, cards that fail, cards that get replaced, customers who come back
 * and pay their bad debt) through the simulated provider, delivers the
 * provider's events through the real ingest path, and lets the real worker
 * drain the inbox. Everything is seeded, so a run is reproducible.
 */
#ifndef DUN_WORLD_H
#define DUN_WORLD_H

#include <stdbool.h>
#include <stdint.h>

#include "apply/recompute.h"
#include "provider/sim.h"

struct dun_world_config {
	int accounts;
	int days;
	uint64_t seed;
	int64_t start; /* unix seconds of day 0 */
	bool progress; /* a progress line on stderr (terminals only) */
};

/* Totals at one moment of a run. */
struct dun_world_stats {
	int day;
	int64_t per_stage[DUN_STAGE__COUNT];
	int64_t failing_invoices;
	int64_t recovered_minor; /* paid on invoices that had failed, and consolidated ones */
	int64_t written_off_minor;
	int64_t emails_sent;
	int64_t bad_debt_entries;
	int64_t bad_debt_exits;
	int64_t retries;
	int64_t consequences;
	int64_t events;
	int64_t dead_triggers;
};

/*
 * The population options demo and simulate share: --accounts, --days,
 * --seed (getopt letters a, d, s). Returns false, with a message printed,
 * for a value that is not a whole number in range.
 */
bool dun_world_option(int opt, const char *arg, const char *cmd, struct dun_world_config *cfg);

struct dun_world;

/* A world over en and sim (borrowed). */
struct dun_world *dun_world_new(struct dun_engine *en, struct dun_sim *sim,
				const struct dun_world_config *cfg);
void dun_world_destroy(struct dun_world *w);

/* Create the accounts, customers and subscriptions (day 0). */
enum dun_err dun_world_populate(struct dun_world *w);

/*
 * Run one simulated day: billing, customers' actions, event delivery and
 * inbox draining until quiet, at 09:00 and again at the end of the day.
 */
enum dun_err dun_world_day(struct dun_world *w, int day);

/* Deliver all queued provider events and drain the inbox until quiet. */
enum dun_err dun_world_pump(struct dun_world *w);

/* The totals now. */
enum dun_err dun_world_stats(struct dun_world *w, int day, struct dun_world_stats *out);

#endif
