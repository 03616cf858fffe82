/*
 * shared_provider.h — the one payment provider of a `dunning serve`
 * process, shared by every worker and admin thread.
 *
 * [provider] kind = simulated: one simulated provider on its own SQLite
 * connection, behind a mutex. It must be one instance: the simulator keeps
 * its id counter in memory, so two instances over one database would mint
 * the same ids.
 * [provider] kind = stripe: the Stripe client (provider/stripe.h), which is
 * thread-safe and keeps one rate limiter for the whole process. Only when
 * this build has it; otherwise kind = stripe is refused at start-up.
 */
#ifndef DUN_SHARED_PROVIDER_H
#define DUN_SHARED_PROVIDER_H

#include "config/config.h"
#include "provider/provider.h"

struct dun_shared_provider;
struct dun_db;

/* Open the provider cfg asks for. On failure *out is NULL and err says why. */
enum dun_err dun_shared_provider_new(const struct dun_config *cfg, struct dun_shared_provider **out,
				     char *err, size_t err_size);
/* The seam every thread may call at once; it lives as long as sp. */
struct dun_provider dun_shared_provider_get(struct dun_shared_provider *sp);
/*
 * The simulated provider's queued webhooks (what its own writes changed: a
 * retry's outcome, a new invoice) through the real ingest path, as Stripe
 * would deliver them; *n_out (may be NULL) gets how many. Nothing to do for
 * Stripe, whose webhooks arrive over HTTP. Thread-safe.
 */
enum dun_err dun_shared_provider_deliver(struct dun_shared_provider *sp, int64_t *n_out);
/*
 * The same, but only if the simulator was called since the last time this
 * was asked: after each recompute, so that the many that never call it
 * cost nothing. What other processes queued is delivered by the periodic
 * dun_shared_provider_deliver of the service's housekeeping.
 */
enum dun_err dun_shared_provider_deliver_called(struct dun_shared_provider *sp, int64_t *n_out);
/* "simulated" or "stripe". */
const char *dun_shared_provider_kind(const struct dun_shared_provider *sp);
/* Whether this build can talk to Stripe ([provider] kind = stripe). */
bool dun_shared_provider_has_stripe(void);
/* Close it; NULL is a no-op. No thread may use the seam any more. */
void dun_shared_provider_destroy(struct dun_shared_provider *sp);

/*
 * Let the simulated provider learn the object a webhook describes
 * (dun_sim_observe_in_tx), writing through db inside the caller's
 * transaction. No-op for the Stripe provider. Matches the committer's
 * observer (dun_committer_observe_fn); err gets the reason on failure.
 */
enum dun_err dun_shared_provider_observe(void *sp, struct dun_db *db, json_t *event, char *err,
					 size_t err_size);
/*
 * Whether the committer must teach the simulated provider each webhook
 * (set dun_shared_provider_observe as its observer): only the simulator on
 * a store whose commits run side by side. Elsewhere the simulator learns
 * lazily (provider/sim.c, "Learning") and the Stripe provider learns
 * nothing.
 */
bool dun_shared_provider_learns_with_commit(const struct dun_shared_provider *sp);
/*
 * Let the simulated provider learn the webhooks stored since it last did,
 * in its own short transactions, leaving the rest for later as soon as
 * stop(stop_arg) says so (checked between transactions). For the idle
 * moments of the service, so that an operation of the simulator rarely
 * finds much to learn first. No-op for Stripe. Thread-safe.
 */
void dun_shared_provider_learn(struct dun_shared_provider *sp, bool (*stop)(void *),
			       void *stop_arg);

#endif
