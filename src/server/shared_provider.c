/*
 * shared_provider.c — the provider seam the service's threads share (see
 * shared_provider.h). EXECUTE calls the provider from several workers and
 * from the admin lane at once; this file makes that safe for the simulated
 * provider by serializing its calls, and hands the thread-safe Stripe
 * client through unchanged.
 *
 * The simulated provider writes through its own connection, never the
 * caller's: the applier never calls the provider inside a transaction of
 * its own connection (external writes happen, then are recorded), so the
 * two connections never wait for each other.
 */
#include "shared_provider.h"
#include "inbox/ingest.h"
#include "provider/sim.h"
#include "server/engine_ctx.h"
#include "store/db.h"
#include "util/log.h"
#include "util/mem.h"

#ifdef DUN_HAVE_STRIPE_PROVIDER
#include "provider/stripe.h"
#endif

#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct dun_shared_provider {
	const char *kind;
	pthread_mutex_t mu; /* serializes every call into the simulator */
	struct dun_db *sim_db;
	struct dun_sim *sim;
	struct dun_provider inner; /* the simulator's seam, or the Stripe client */
	struct dun_provider outer; /* what the threads are given */
	/*
	 * Set by every call into the simulator (each may queue events), cleared
	 * by the delivery after a recompute: a recompute that did not call the
	 * simulator delivers nothing and reads nothing.
	 */
	_Atomic bool called;
};

/* ---- the serializing facade over the simulator ---------------------------- */

#define LOCKED(sp, call)                           \
	do {                                       \
		pthread_mutex_lock(&(sp)->mu);     \
		enum dun_err locked_e = (call);    \
		atomic_store(&(sp)->called, true); \
		pthread_mutex_unlock(&(sp)->mu);   \
		return locked_e;                   \
	} while (0)

static enum dun_err l_set_customer_metadata(void *self, const char *customer_id, const char *key,
					    const char *value, const char *idem, json_t **obj,
					    char *err, size_t n)
{
	struct dun_shared_provider *sp = self;
	LOCKED(sp, sp->inner.ops->set_customer_metadata(sp->inner.self, customer_id, key, value,
							idem, obj, err, n));
}

static enum dun_err l_set_invoice_metadata(void *self, const char *invoice_id, const char *key,
					   const char *value, const char *idem, json_t **obj,
					   char *err, size_t n)
{
	struct dun_shared_provider *sp = self;
	LOCKED(sp, sp->inner.ops->set_invoice_metadata(sp->inner.self, invoice_id, key, value, idem,
						       obj, err, n));
}

static enum dun_err l_mark_uncollectible(void *self, const char *invoice_id, const char *idem,
					 json_t **obj, char *err, size_t n)
{
	struct dun_shared_provider *sp = self;
	LOCKED(sp,
	       sp->inner.ops->mark_uncollectible(sp->inner.self, invoice_id, idem, obj, err, n));
}

static enum dun_err l_void_invoice(void *self, const char *invoice_id, const char *idem,
				   json_t **obj, char *err, size_t n)
{
	struct dun_shared_provider *sp = self;
	LOCKED(sp, sp->inner.ops->void_invoice(sp->inner.self, invoice_id, idem, obj, err, n));
}

static enum dun_err l_cancel_subscription(void *self, const char *subscription_id, const char *idem,
					  json_t **obj, char *err, size_t n)
{
	struct dun_shared_provider *sp = self;
	LOCKED(sp, sp->inner.ops->cancel_subscription(sp->inner.self, subscription_id, idem, obj,
						      err, n));
}

static enum dun_err l_pay_invoice(void *self, const char *invoice_id, const char *idem,
				  json_t **obj, char *err, size_t n)
{
	struct dun_shared_provider *sp = self;
	LOCKED(sp, sp->inner.ops->pay_invoice(sp->inner.self, invoice_id, idem, obj, err, n));
}

static enum dun_err l_create_consolidated(void *self, const struct dun_consolidated_req *req,
					  const char *idem, json_t **obj, char *err, size_t n)
{
	struct dun_shared_provider *sp = self;
	LOCKED(sp, sp->inner.ops->create_consolidated(sp->inner.self, req, idem, obj, err, n));
}

static enum dun_err l_list_invoices(void *self, const char *customer_id, json_t **list, char *err,
				    size_t n)
{
	struct dun_shared_provider *sp = self;
	LOCKED(sp, sp->inner.ops->list_invoices(sp->inner.self, customer_id, list, err, n));
}

static void l_destroy(void *self)
{
	/* The facade owns nothing: dun_shared_provider_destroy() closes the simulator. */
	(void)self;
}

static const struct dun_provider_ops locked_ops = {
    .name = "simulated",
    .set_customer_metadata = l_set_customer_metadata,
    .set_invoice_metadata = l_set_invoice_metadata,
    .mark_uncollectible = l_mark_uncollectible,
    .void_invoice = l_void_invoice,
    .cancel_subscription = l_cancel_subscription,
    .pay_invoice = l_pay_invoice,
    .create_consolidated = l_create_consolidated,
    .list_invoices = l_list_invoices,
    .destroy = l_destroy,
};

/* ---- opening ------------------------------------------------------------------ */

bool dun_shared_provider_has_stripe(void)
{
#ifdef DUN_HAVE_STRIPE_PROVIDER
	return true;
#else
	return false;
#endif
}

static enum dun_err open_stripe(const struct dun_config *cfg, struct dun_shared_provider *sp,
				char *err, size_t err_size)
{
#ifdef DUN_HAVE_STRIPE_PROVIDER
	enum dun_err e = dun_stripe_provider_new(cfg, &sp->inner, err, err_size);
	if (e != DUN_OK)
		return e;
	sp->outer = sp->inner;
	return DUN_OK;
#else
	(void)sp;
	snprintf(err, err_size,
		 "%s: [provider] kind = stripe, but this build of dunning has no Stripe client "
		 "(src/provider/stripe.c was not part of it); use kind = simulated or rebuild",
		 cfg->path[0] ? cfg->path : "configuration");
	return DUN_E_CONFIG;
#endif
}

enum dun_err dun_shared_provider_new(const struct dun_config *cfg, struct dun_shared_provider **out,
				     char *err, size_t err_size)
{
	*out = NULL;
	struct dun_shared_provider *sp = dun_calloc(1, sizeof *sp);
	pthread_mutex_init(&sp->mu, NULL);
	enum dun_err e;
	if (!strcmp(cfg->provider, "stripe")) {
		sp->kind = "stripe";
		e = open_stripe(cfg, sp, err, err_size);
	} else {
		sp->kind = "simulated";
		e = dun_db_open(cfg->db_path, &sp->sim_db, err, err_size);
		if (e == DUN_OK) {
			dun_engine_ctx_busy_wait(sp->sim_db);
			sp->sim = dun_sim_new(sp->sim_db, 1);
			sp->inner = dun_sim_provider(sp->sim);
			sp->outer.ops = &locked_ops;
			sp->outer.self = sp;
		}
	}
	if (e != DUN_OK) {
		dun_shared_provider_destroy(sp);
		return e;
	}
	*out = sp;
	return DUN_OK;
}

enum dun_err dun_shared_provider_deliver(struct dun_shared_provider *sp, int64_t *n_out)
{
	int64_t n = 0;
	enum dun_err e = DUN_OK;
	if (sp->sim) {
		char err[256] = "";
		pthread_mutex_lock(&sp->mu);
		e = dun_ingest_sim_events(sp->sim_db, sp->sim, &n, err, sizeof err);
		pthread_mutex_unlock(&sp->mu);
		if (e != DUN_OK)
			dun_log(DUN_LOG_WARN, "sim.delivery_failed", "error",
				err[0] ? err : dun_err_str(e), NULL);
	}
	if (n_out)
		*n_out = n;
	return e;
}

bool dun_shared_provider_learns_with_commit(const struct dun_shared_provider *sp)
{
	return sp->sim && !dun_sim_learns_lazily(sp->sim_db);
}

void dun_shared_provider_learn(struct dun_shared_provider *sp, bool (*stop)(void *), void *stop_arg)
{
	if (!sp->sim)
		return;
	int64_t n = 0;
	pthread_mutex_lock(&sp->mu);
	enum dun_err e = dun_sim_learn_pending(sp->sim_db, stop, stop_arg, &n);
	pthread_mutex_unlock(&sp->mu);
	if (e != DUN_OK)
		dun_log(DUN_LOG_WARN, "sim.learn_failed", "error", dun_db_errmsg(sp->sim_db), NULL);
}

enum dun_err dun_shared_provider_deliver_called(struct dun_shared_provider *sp, int64_t *n_out)
{
	if (n_out)
		*n_out = 0;
	if (!sp->sim || !atomic_exchange(&sp->called, false))
		return DUN_OK;
	return dun_shared_provider_deliver(sp, n_out);
}

struct dun_provider dun_shared_provider_get(struct dun_shared_provider *sp)
{
	return sp->outer;
}

const char *dun_shared_provider_kind(const struct dun_shared_provider *sp)
{
	return sp->kind;
}

void dun_shared_provider_destroy(struct dun_shared_provider *sp)
{
	if (!sp)
		return;
	if (sp->sim) {
		dun_sim_destroy(sp->sim);
	} else if (sp->inner.ops) {
		dun_provider_destroy(&sp->inner);
	}
	dun_db_close(sp->sim_db);
	pthread_mutex_destroy(&sp->mu);
	free(sp);
}

enum dun_err dun_shared_provider_observe(void *arg, struct dun_db *db, json_t *event, char *err,
					 size_t err_size)
{
	struct dun_shared_provider *sp = arg;
	if (!sp->sim)
		return DUN_OK;
	json_t *obj = json_object_get(json_object_get(event, "data"), "object");
	if (!json_is_object(obj))
		return DUN_OK;
	/*
	 * Through the committer's connection, not the simulator's, and without
	 * the simulator's lock: the learning commits with the event (one fsync
	 * for the batch) and never waits for a provider call in progress.
	 */
	const char *event_id = json_string_value(json_object_get(event, "id"));
	enum dun_err e = dun_sim_observe_in_tx(db, event_id, obj);
	if (e != DUN_OK)
		snprintf(err, err_size, "cannot record the object for the simulated provider: %s",
			 dun_db_errmsg(db));
	return e;
}
