/*
 * platform_view.h — GATHER: what the user's platform says about an account,
 * decoded from its answer to the read calls of docs/platform-api.md.
 *
 * Ownership is the reason, not the writer: a restriction whose reason is
 * "non_payment" is dunning's to set and lift, whoever placed it (dunning,
 * or a legacy dunning handler before cutover); a restriction for any other
 * reason (abuse, manual, compliance, ...) is kept: dunning shows it and
 * never lifts it. The view therefore carries dunning's part (ban and
 * entitlement for non-payment, resource flags) apart from the kept ones.
 */
#ifndef DUN_PLATFORM_VIEW_H
#define DUN_PLATFORM_VIEW_H

#include <jansson.h>
#include <stddef.h>
#include <stdint.h>

#include "core/model.h"
#include "util/err.h"

/* The reason that makes a restriction dunning's. */
#define DUN_PLATFORM_OWN_REASON "non_payment"
/* Restrictions for other reasons kept per account (more are counted, not kept). */
#define DUN_KEPT_MAX		8
#define DUN_REASON_MAX		64

struct dun_kept_restriction {
	char kind[16];			/* "ban" or "entitlement" */
	enum dun_entitlement level;	/* entitlement only */
	char reason[DUN_REASON_MAX];	/* never "non_payment" */
	char placed_by[DUN_REASON_MAX]; /* who placed it, as the platform says ("" unknown) */
};

struct dun_platform_view {
	char account_id[DUN_ID_MAX];
	/* dunning's part: the restrictions for non-payment, and the flags */
	bool banned;
	enum dun_entitlement entitlement;
	int64_t resource_flags;
	char placed_by[DUN_REASON_MAX]; /* who placed the non-payment restriction(s) */
	/* everybody else's: kept, shown, never lifted */
	struct dun_kept_restriction kept[DUN_KEPT_MAX];
	int n_kept;    /* kept[] entries filled */
	int n_others;  /* restrictions for other reasons, all of them */
	int n_pending; /* outbox calls applied on top (platform_read.h) */
};

void dun_platform_view_init(struct dun_platform_view *v, const char *account_id);

/*
 * Decode one account object of the contract into v (initialised first):
 *   {"account_id": "...", "restrictions": [{"type": "ban"|"entitlement",
 *    "level": "restricted"|"suspended" (entitlement), "reason": "...",
 *    "placed_by": "..."}...], "resource_flags": N}
 * Strict: account_id must be a string (and equal to expect_id when that is
 * not NULL), restrictions an array of such objects with a non-empty reason
 * of at most 63 bytes, resource_flags an integer >= 0; unknown fields are
 * ignored. DUN_E_PARSE with err saying what is wrong otherwise.
 */
enum dun_err dun_platform_view_decode(json_t *obj, const char *expect_id,
				      struct dun_platform_view *v, char *err, size_t err_size);

/* The same from the bytes of a GET /accounts/{id} answer. */
enum dun_err dun_platform_view_parse(const char *body, size_t len, const char *expect_id,
				     struct dun_platform_view *v, char *err, size_t err_size);

/*
 * The answer to POST /accounts/read for ids[0..n): {"accounts": [...]},
 * each object as above, every requested id exactly once, in any order.
 * out[i] is filled for ids[i]. DUN_E_PARSE when an id is missing, repeated
 * or not asked for, or any object is malformed.
 */
enum dun_err dun_platform_view_parse_batch(const char *body, size_t len, const char *const *ids,
					   int n, struct dun_platform_view *out, char *err,
					   size_t err_size);

/*
 * Apply one outbox call (op, value as in platform_outbox) on top of v: what
 * the platform will show once the call is delivered. Unknown ops: no change.
 */
void dun_platform_view_apply(struct dun_platform_view *v, const char *op, const char *value);

#endif
