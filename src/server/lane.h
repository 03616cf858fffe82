/*
 * lane.h — the admin lane: a few threads, each with its own engine
 * context, that run the admin API's database work (explain, pay-bad-debt,
 * inbox listings, /readyz and /metrics reads) off the HTTP threads.
 *
 * An HTTP thread never blocks on the database or the provider: it suspends
 * the connection, submits a job here, and the job answers and resumes it.
 */
#ifndef DUN_LANE_H
#define DUN_LANE_H

#include "config/config.h"
#include "core/policy.h"
#include "provider/provider.h"
#include "server/engine_ctx.h"

/* A unit of work; embed it in your own struct. run is called once, on a lane thread. */
struct dun_lane_job {
	void (*run)(struct dun_lane_job *job, struct dun_engine_ctx *ctx);
	struct dun_lane_job *next;
};

struct dun_lane;

/* Start n threads over cfg's database (everything borrowed, must outlive the lane). */
enum dun_err dun_lane_start(const struct dun_config *cfg, const struct dun_policy *policy,
			    struct dun_provider provider, int n, struct dun_lane **out, char *err,
			    size_t err_size);
/* Queue job. Thread-safe. */
void dun_lane_submit(struct dun_lane *l, struct dun_lane_job *job);
/* Run every queued job, then stop the threads and free; NULL is a no-op. */
void dun_lane_stop(struct dun_lane *l);

#endif
