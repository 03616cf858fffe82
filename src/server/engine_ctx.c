/*
 * engine_ctx.c — one thread's private handle on the pipeline (see
 * engine_ctx.h). `dunning serve` runs GATHER → EVALUATE → DECIDE → EXECUTE
 * on several threads at once; SQLite connections and the applier's seams
 * are per thread, so each thread builds its own from the same configuration.
 */
#include "engine_ctx.h"
#include "util/mem.h"

#include <stdio.h>
#include <stdlib.h>
#include <time.h>

enum dun_err dun_engine_ctx_new(const struct dun_config *cfg, const struct dun_policy *policy,
				struct dun_provider provider, struct dun_engine_ctx **out,
				char *err, size_t err_size)
{
	*out = NULL;
	struct dun_engine_ctx *ctx = dun_calloc(1, sizeof *ctx);
	enum dun_err e = dun_db_open(cfg->db_path, &ctx->db, err, err_size);
	if (e != DUN_OK)
		goto free_ctx;
	dun_engine_ctx_busy_wait(ctx->db);
	e = dun_effects_open(cfg, ctx->db, false, &ctx->fx, err, err_size);
	if (e != DUN_OK)
		goto close_db;
	dun_engine_init(&ctx->engine, ctx->db, policy, provider, ctx->fx.platform, ctx->fx.mailer,
			ctx->fx.renderer);
	*out = ctx;
	return DUN_OK;
close_db:
	dun_db_close(ctx->db);
free_ctx:
	free(ctx);
	return e;
}

void dun_engine_ctx_destroy(struct dun_engine_ctx *ctx)
{
	if (!ctx)
		return;
	dun_engine_free(&ctx->engine);
	dun_effects_close(&ctx->fx);
	dun_db_close(ctx->db);
	free(ctx);
}

void dun_engine_ctx_busy_wait(struct dun_db *db)
{
	dun_db_busy_fine(db);
}

void dun_engine_ctx_refresh(struct dun_engine_ctx *ctx)
{
	struct dun_rollout r;
	if (dun_rollout_load(ctx->db, &r) == DUN_OK)
		ctx->engine.rollout = r;
}
