/*
 * parity.h — `dunning parity`: the engine's observe-mode shadow (what it
 * would have done) against a legacy system's decisions over a time window,
 * as a report a person can sign off, and the record the rollout gate reads.
 *
 * A match pairs one legacy action with one shadow action of the same
 * account, action, detail (entitlement level, email kind, retry attempt)
 * and target (invoice or subscription, where the action has one) whose
 * times differ by at most the tolerance; pairs are made greedily in time
 * order, so each action is used once. Bad-debt amounts of matched
 * invoice_uncollectible pairs are compared exactly. Coverage: accounts the
 * legacy system acted on that the engine has decided on. Skip filters:
 * accounts the engine skips (segment, kill switch) must be untouched by the
 * legacy system. Errors: failed decisions and retrying or dead triggers in
 * the window.
 */
#ifndef DUN_PARITY_H
#define DUN_PARITY_H

#include <jansson.h>

#include "apply/parity_log.h"
#include "store/db.h"

struct dun_parity_opts {
	int64_t from, to;    /* the window, unix seconds, inclusive */
	int64_t tolerance_s; /* default one day */
	double min_match_percent;
	double min_coverage_percent;
	int64_t max_amount_mismatches;
	int64_t max_filter_mismatches;
	int64_t max_errors;
	const char *source; /* what the legacy side is, for the report */
	unsigned actions;   /* bit (1u << action) of the actions compared; 0: all */
};

/* The engine's shadow actions with at in [from, to]. */
enum dun_err dun_parity_load_shadow(struct dun_db *db, int64_t from, int64_t to,
				    struct dun_parity_list *out);

/*
 * Compare legacy with the shadow over o's window; *report (new reference)
 * is the whole report, with "passed". DUN_E_NOT_FOUND (and err) when the
 * window holds no action on either side: there is nothing to sign off.
 * Writes nothing.
 */
enum dun_err dun_parity_run(struct dun_db *db, struct dun_parity_list *legacy,
			    const struct dun_parity_opts *o, json_t **report, char *err,
			    size_t err_size);

/*
 * Stripe's own dunning as the legacy side: what Stripe Billing did,
 * reconstructed from events — invoice.marked_uncollectible
 * (invoice_uncollectible, with amount_remaining), customer.subscription.
 * deleted (subscription_cancel) and invoice.payment_failed with
 * attempt_count >= 2 (retry). api_events (borrowed, may be NULL) are the
 * ones listed from /v1/events (Stripe keeps 30 days); older history comes
 * from the events the engine already received (events_raw); an event in
 * both counts once. Customers map to accounts through the mirror. Appends
 * the actions with time in [from, to] to out; *n_events gets how many
 * events were read in all.
 */
enum dun_err dun_parity_stripe_actions(struct dun_db *db, json_t *api_events, int64_t from,
				       int64_t to, struct dun_parity_list *out, int64_t *n_events);

/* Store report as made at now; *id_out gets its number. */
enum dun_err dun_parity_record(struct dun_db *db, int64_t now, const struct dun_parity_opts *o,
			       json_t *report, int64_t *id_out);

#endif
