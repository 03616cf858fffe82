/*
 * mirror.h — the engine's local copy of provider objects.
 *
 * Webhook payloads (`dunning ingest`, POST /webhooks/stripe) and the
 * provider's replies to our own writes are Stripe-format JSON objects; this
 * module folds them into the p_* tables so GATHER and the drift scan never
 * call the provider for a read. Both invoice shapes are accepted (before and
 * after API version 2025-03-31: top-level `subscription`/`payment_intent`, or
 * `parent.subscription_details.subscription` and invoice_payment objects).
 *
 * Out-of-order delivery: every upsert carries a version (the event's
 * `created`, or the clock when the object came from an API reply). An older
 * version never overwrites a newer one; on a tie, an invoice only moves
 * forward in its lifecycle (draft < open < uncollectible < paid, void).
 */
#ifndef DUN_MIRROR_H
#define DUN_MIRROR_H

#include <jansson.h>
#include <stdbool.h>
#include <stdint.h>

#include "store/db.h"

/*
 * Fold one Stripe object (customer, subscription, invoice, charge,
 * payment_intent, invoice_payment) into the mirror. Borrows obj. On success
 * customer_out (may be NULL; DUN_ID_MAX bytes) gets the object's customer id
 * ("" when it has none) and *applied whether the mirror changed (false when
 * the payload was older than what we have). Objects of other types are
 * accepted and ignored (*applied false). Runs inside the caller's
 * transaction if one is open.
 */
enum dun_err dun_mirror_upsert(struct dun_db *db, json_t *obj, int64_t version, char *customer_out,
			       bool *applied, char *err, size_t err_size);

/*
 * The account a provider customer belongs to ("" and DUN_E_NOT_FOUND when
 * the customer is unknown or has no metadata account_id).
 */
enum dun_err dun_mirror_account_of(struct dun_db *db, const char *customer_id, char *account,
				   size_t account_size);

/* Whether obj's "object" is one the mirror folds in. */
bool dun_mirror_knows(const char *object_type);

#endif
