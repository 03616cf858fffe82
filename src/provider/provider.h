/*
 * provider.h — the payment provider seam.
 *
 * The applier talks to "the provider" only through this table of
 * operations. Two implementations: the built-in simulated provider (sim.c,
 * the embedded default) and the Stripe API client. Every operation takes the
 * consequence's idempotency key (the Stripe client sends it as
 * Idempotency-Key) and returns the provider's updated object as
 * Stripe-format JSON, which the caller folds into the mirror — so the mirror
 * learns about our own writes without waiting for the webhook.
 *
 * Ownership: *obj_out is a new reference the caller json_decref()s; it is
 * NULL on failure. err (may be NULL) receives a one-line reason.
 */
#ifndef DUN_PROVIDER_H
#define DUN_PROVIDER_H

#include <jansson.h>
#include <stddef.h>
#include <stdint.h>

#include "util/err.h"

/* What a consolidated bad-debt invoice is made of. */
struct dun_consolidated_req {
	const char *customer_id;
	const char *currency;
	int n_originals;
	const char *const *original_ids;       /* the uncollectible invoices */
	const int64_t *original_amounts_minor; /* what each still owes */
	int days_until_due;
};

struct dun_provider_ops {
	const char *name;
	enum dun_err (*set_customer_metadata)(void *self, const char *customer_id, const char *key,
					      const char *value, const char *idem_key,
					      json_t **obj_out, char *err, size_t err_size);
	enum dun_err (*set_invoice_metadata)(void *self, const char *invoice_id, const char *key,
					     const char *value, const char *idem_key,
					     json_t **obj_out, char *err, size_t err_size);
	enum dun_err (*mark_uncollectible)(void *self, const char *invoice_id, const char *idem_key,
					   json_t **obj_out, char *err, size_t err_size);
	enum dun_err (*void_invoice)(void *self, const char *invoice_id, const char *idem_key,
				     json_t **obj_out, char *err, size_t err_size);
	enum dun_err (*cancel_subscription)(void *self, const char *subscription_id,
					    const char *idem_key, json_t **obj_out, char *err,
					    size_t err_size);
	/* Attempt to collect an open invoice now (a payment retry). */
	enum dun_err (*pay_invoice)(void *self, const char *invoice_id, const char *idem_key,
				    json_t **obj_out, char *err, size_t err_size);
	/* Create, fill and finalize a consolidated invoice; returns it. */
	enum dun_err (*create_consolidated)(void *self, const struct dun_consolidated_req *req,
					    const char *idem_key, json_t **obj_out, char *err,
					    size_t err_size);
	/*
	 * Fresh read of all of a customer's invoices (a JSON array), for the
	 * re-check before destructive consequences.
	 */
	enum dun_err (*list_invoices)(void *self, const char *customer_id, json_t **list_out,
				      char *err, size_t err_size);
	/*
	 * Optional (may be NULL): GATHER's targeted refresh
	 * (gather/refresh.h). A fresh read of n invoices and their payment
	 * attempts, for invoices whose attempt_count says the mirror misses
	 * some: *objs_out is a JSON array of Stripe objects in the order the
	 * mirror should fold them — per invoice, the invoice, its
	 * invoice_payment objects, each payment intent and every charge of
	 * it (the decline codes). Reads only; the ids are borrowed. A
	 * provider whose own events already link every attempt to its
	 * invoice leaves it NULL.
	 */
	enum dun_err (*refresh_invoices)(void *self, const char *const *invoice_ids, int n,
					 json_t **objs_out, char *err, size_t err_size);
	void (*destroy)(void *self);
};

struct dun_provider {
	const struct dun_provider_ops *ops;
	void *self;
	/*
	 * The simulated provider: the connection its objects are written
	 * through (no network, nothing outside the engine DB). A worker's
	 * batch (inbox/worker.c) makes its calls inside the batch's
	 * transaction when this is the engine's own connection. NULL for a
	 * real provider, whose calls never run inside a transaction.
	 */
	struct dun_db *local_db;
};

/* Release a provider; NULL-safe. */
void dun_provider_destroy(struct dun_provider *p);

#endif
