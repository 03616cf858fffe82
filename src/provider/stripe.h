/*
 * stripe.h — the Stripe API client, and the provider seam over it.
 *
 * The client speaks Stripe's REST API with libcurl: Bearer auth, a pinned
 * Stripe-Version, form-encoded bodies with nested keys, an Idempotency-Key
 * on every POST, retries with capped exponential backoff and jitter, a
 * client-side rate limiter shared by every thread, pagination. It is what
 * `dunning sync` and `dunning backfill` read through, and what the applier
 * writes through when [provider] kind = stripe (docs/stripe.md).
 *
 * Constructor used by `dunning serve` and the CLI with --config:
 *
 *   enum dun_err dun_stripe_provider_new(const struct dun_config *cfg,
 *                                        struct dun_provider *out,
 *                                        char *err, size_t err_size);
 *
 * Thread safety: one struct dun_stripe (and so one provider) may be used by
 * any number of threads at once. The rate limiter, the memory of
 * idempotency keys that met an error and the pool of idle connections are
 * shared and guarded; every call runs its own transfers.
 *
 * Errors are mapped here, once: connection failures, 409, 429 and 5xx are
 * DUN_E_PROVIDER (retryable), other 4xx DUN_E_PROVIDER_REJECTED (terminal),
 * a 401 DUN_E_CONFIG (the API key is wrong), timeouts DUN_E_TIMEOUT. err
 * texts carry Stripe's error type, code and message, never the API key.
 */
#ifndef DUN_STRIPE_H
#define DUN_STRIPE_H

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "config/config.h"
#include "provider/provider.h"
#include "util/err.h"

/* Stripe refuses Idempotency-Key values longer than 255 characters. */
#define DUN_STRIPE_IDEM_MAX 256

/* ---- form encoding --------------------------------------------------------- */

/*
 * An application/x-www-form-urlencoded string under construction: the body
 * of a POST or the query of a GET. Values and key segments are
 * percent-encoded; the brackets of Stripe's nested keys stay literal, as
 * Stripe's own libraries send them (`metadata[bad_debt]=true`,
 * `expand[]=latest_charge`, `created[gte]=1700000000`).
 */
struct dun_form {
	char *buf; /* NUL-terminated once anything was added; owned */
	size_t len;
	size_t cap;
};

void dun_form_init(struct dun_form *f);
void dun_form_free(struct dun_form *f);
/* Add key=value. key is taken literally: brackets stay, anything else is escaped. */
void dun_form_add(struct dun_form *f, const char *key, const char *value);
/* Add parent[sub]=value; sub is escaped completely (a metadata key is free text). */
void dun_form_add_sub(struct dun_form *f, const char *parent, const char *sub, const char *value);
void dun_form_add_i64(struct dun_form *f, const char *key, int64_t value);
/* The encoded text so far ("" when empty). Lives until the next add or free. */
const char *dun_form_str(const struct dun_form *f);

/*
 * The consolidated invoice's list of originals as metadata: comma-separated
 * ids in values of at most 500 characters (Stripe's limit), under
 * bad_debt_invoices, bad_debt_invoices_2, _3, ... (the mirror joins them).
 * An id is never split. DUN_E_TOO_BIG when the list needs more than 40 keys
 * (Stripe allows 50 metadata keys in all).
 */
enum dun_err dun_stripe_form_covers(struct dun_form *f, const char *const *ids, int n);

/* ---- the pieces of the retry and rate policy (pure, for tests) -------------- */

/*
 * A token bucket. Tokens may go negative: taking one when none is left
 * reserves the next one to come, and the caller waits until then, so
 * waiting threads are served in the order they asked.
 */
struct dun_stripe_bucket {
	double rate_per_s; /* tokens added per second */
	double capacity;   /* the most tokens it holds: the largest burst */
	double tokens;
	int64_t updated_us; /* when tokens was last brought up to date */
};

void dun_stripe_bucket_init(struct dun_stripe_bucket *b, double rate_per_s, double capacity,
			    int64_t now_us);
/* Take one token at now_us; returns how long to wait (µs) before sending. */
int64_t dun_stripe_bucket_take(struct dun_stripe_bucket *b, int64_t now_us);

/*
 * The bucket's rate for a configured limit of limit_per_s requests per
 * second: 10 % under it, so that up to 100 ms of jitter between our
 * clock and Stripe's counter never pushes limit_per_s + 1 requests into
 * one of its one-second windows (see docs/stripe.md).
 */
double dun_stripe_bucket_rate(double limit_per_s);

/*
 * Delay before retry number retry (1 = the first retry): 500 ms doubled per
 * retry, capped at 8 s, then jittered down to between half and all of it.
 * u01 is a uniform random number in [0, 1).
 */
int64_t dun_stripe_backoff_ms(int retry, double u01);

/*
 * The Idempotency-Key for base (a consequence key, with a step suffix for
 * multi-request operations) at generation gen: base itself for gen 0,
 * base + "/r<gen>" after that. A key longer than 255 characters keeps its
 * first 238 and ends in "~" and 16 hex digits of a hash of the whole, so
 * it stays stable and distinct. out has DUN_STRIPE_IDEM_MAX bytes.
 */
void dun_stripe_idem_key(const char *base, int gen, char *out);

/* ---- the client ------------------------------------------------------------ */

struct dun_stripe;

/*
 * A client for cfg's [stripe] section (api_key, api_base, version,
 * rate_limit_per_s, timeout_ms, max_retries). Copies what it needs from
 * cfg. Refuses (DUN_E_CONFIG) an empty API key and a plain-http api_base
 * that is not a loopback address: the key would travel in clear text.
 */
enum dun_err dun_stripe_new(const struct dun_config *cfg, struct dun_stripe **out, char *err,
			    size_t err_size);
void dun_stripe_destroy(struct dun_stripe *s);

/*
 * One API request. method is "GET", "POST" or "DELETE"; params (may be
 * NULL) go in the query (GET, DELETE) or the body (POST). Every POST needs
 * idem_base, the base of its Idempotency-Key (see docs/stripe.md for how a
 * new key is chosen after an error). *obj_out is the reply object, a new
 * reference, NULL on failure.
 */
enum dun_err dun_stripe_call(struct dun_stripe *s, const char *method, const char *path,
			     const struct dun_form *params, const char *idem_base, json_t **obj_out,
			     char *err, size_t err_size);

/*
 * Every object of a list endpoint (GET path?params&limit=100, then
 * starting_after=<last id> while has_more), newest first as Stripe lists
 * them. page is called with each page's "data" array (borrowed); a
 * non-DUN_OK return stops the listing and is returned.
 */
enum dun_err dun_stripe_list(struct dun_stripe *s, const char *path, const struct dun_form *params,
			     enum dun_err (*page)(void *user, json_t *data), void *user, char *err,
			     size_t err_size);

/*
 * The invoice_payment objects of n invoices, fetched in parallel
 * (GET /v1/invoice_payments?invoice=... with the payment intent expanded),
 * appended to out: each invoice_payment, followed by its payment intent as
 * an object of its own so the mirror learns the decline codes.
 */
enum dun_err dun_stripe_invoice_payments(struct dun_stripe *s, const char *const *invoice_ids,
					 int n, json_t *out, char *err, size_t err_size);

/* ---- the provider ------------------------------------------------------------ */

/*
 * The payment provider seam (provider.h) over a new client for cfg. On
 * success *out owns the client: dun_provider_destroy(out) frees it. On
 * failure *out is zeroed and err says why (DUN_E_CONFIG for a bad [stripe]
 * section).
 */
enum dun_err dun_stripe_provider_new(const struct dun_config *cfg, struct dun_provider *out,
				     char *err, size_t err_size);

#endif
