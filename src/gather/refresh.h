/*
 * refresh.h — GATHER's targeted refresh: the provider objects one
 * account's mirror is missing, read fresh and folded in before EVALUATE.
 *
 * The mirror is fed by webhooks. Since Stripe API version
 * 2025-03-31.basil the webhooks of a failed payment do not tie it to its
 * invoice: the invoice names no payment intent or charge, and neither the
 * charge nor the payment intent names the invoice. The mirror then holds
 * an open invoice whose attempt_count says it was attempted, with no
 * attempt linked to it, and the policy cannot see it failing. Only the
 * provider knows the link (its invoice_payment objects).
 *
 * So after dun_gather(), an invoice is "short" when it is open or
 * uncollectible, not a consolidated bad-debt invoice, and its
 * attempt_count exceeds the attempts the mirror links to it. When some
 * are, ONE call to the provider's refresh_invoices reads them all (in
 * parallel), every object returned is folded into the mirror in one
 * transaction, and the account is gathered again. When none is — the
 * common case — nothing is called: the cost of the check is a loop over
 * the invoices already in memory.
 *
 * An invoice is also refreshed when a payment of it has been in flight
 * (processing) for the policy's processing_recheck_after: the webhook with
 * its outcome may have been lost, and only the provider knows
 * (docs/policy.md, [guard]).
 *
 * And when the policy leaves payment retries to the provider, an invoice
 * whose next automatic attempt (next_payment_attempt) was due an hour ago
 * or more is read again: the mirror has not heard of that attempt, so its
 * outcome webhook is late or lost (docs/policy.md, [retries] owner).
 *
 * The drift scan never refreshes (see inbox/scan.c): it is a read-only
 * estimate over every account.
 */
#ifndef DUN_REFRESH_H
#define DUN_REFRESH_H

#include "core/policy.h"
#include "gather/gather.h"
#include "provider/provider.h"

/* Whether the mirror knows fewer attempts of inv than the provider made. */
bool dun_refresh_is_short(const struct dun_invoice *inv);

struct dun_refresh_result {
	int n_invoices; /* short invoices asked for; 0 when none, or the provider cannot refresh */
	int n_objects;	/* objects folded into the mirror */
	/*
	 * DUN_OK, or why the refresh failed (err_text says more); snap is
	 * then as first gathered and the mirror unchanged.
	 */
	enum dun_err refresh_err;
	char err_text[512];
};

/*
 * Refresh the short invoices of snap (gathered for its account from db) —
 * and, with a policy, the invoices whose payment has been in flight for
 * its processing_recheck_after (dun_policy_payment_recheck_due: a lost
 * outcome webhook is found by reading the payment again) — through
 * provider (borrowed), fold the answer into db with the current
 * time as version, and gather the account again into snap. Must not be
 * called inside a transaction of db. A failed refresh is reported in
 * out->refresh_err and is not an error of this function: the caller goes
 * on with what the mirror has. The return value is the second gather's
 * error (snap is then not usable), DUN_OK otherwise.
 */
/*
 * Whether dun_gather_refresh() would call the provider for snap at now
 * (borrows everything): a worker's batch transaction (inbox/worker.c) must
 * not wait on the network, so it hands such an account to the unbatched
 * path instead.
 */
bool dun_gather_refresh_wanted(struct dun_provider provider, const struct dun_policy *policy,
			       const struct dun_snapshot *snap, int64_t now);

enum dun_err dun_gather_refresh(struct dun_db *db, struct dun_provider provider,
				const struct dun_policy *policy, struct dun_snapshot *snap,
				struct dun_refresh_result *out);

#endif
