/*
 * engine_ctx.h — everything one service thread needs to run the pipeline:
 * its own SQLite connection (connections are never shared between threads
 * here), its own effects (platform, mailer, renderer over that connection)
 * and its own struct dun_engine. Workers and the admin lane each own one.
 */
#ifndef DUN_ENGINE_CTX_H
#define DUN_ENGINE_CTX_H

#include "apply/effects_setup.h"
#include "apply/recompute.h"
#include "config/config.h"

struct dun_engine_ctx {
	struct dun_db *db;
	struct dun_effects fx;
	struct dun_engine engine;
};

/*
 * Open a context over cfg's database with policy and provider (both
 * borrowed; they must outlive the context). The returned object is on the
 * heap because the engine's seams point into it. On failure *out is NULL
 * and err says why.
 */
enum dun_err dun_engine_ctx_new(const struct dun_config *cfg, const struct dun_policy *policy,
				struct dun_provider provider, struct dun_engine_ctx **out,
				char *err, size_t err_size);
/* Close everything the context owns; NULL is a no-op. */
void dun_engine_ctx_destroy(struct dun_engine_ctx *ctx);

/*
 * Replace the connection's busy timeout with one that retries every 0.1 ms
 * at first, then every 1 ms, for 10 s in all. SQLite's own sleeps grow to
 * 100 ms, which behind the short transactions of a busy service turns a
 * wait of one commit into a wait of tens of milliseconds.
 */
void dun_engine_ctx_busy_wait(struct dun_db *db);

/* Re-read the rollout settings, so a `dunning rollout` change is seen without a restart. */
void dun_engine_ctx_refresh(struct dun_engine_ctx *ctx);

#endif
