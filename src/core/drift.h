/*
 * drift.h — classifying how an account's stores disagree with the policy.
 *
 * Pure: compares a snapshot with the desired state EVALUATE computed for it.
 * The classes are the ones the drift scan counts; an account may fall in
 * several.
 */
#ifndef DUN_DRIFT_H
#define DUN_DRIFT_H

#include "model.h"
#include "plan.h"
#include "policy.h"

#define DUN_DRIFT_LIST(X)                                                              \
	X(DUN_DRIFT_STUCK_BAD_DEBT, "stuck_in_bad_debt",                               \
	  "flagged bad debt somewhere, but nothing is owed")                           \
	X(DUN_DRIFT_MISSED_BAD_DEBT, "missed_bad_debt",                                \
	  "the policy says bad debt, the account is not flagged")                      \
	X(DUN_DRIFT_FLAGS_DISAGREE, "flags_disagree",                                  \
	  "account, customer and provider bad_debt flags differ")                      \
	X(DUN_DRIFT_STALE_RESTRICTION, "stale_restriction_or_ban",                     \
	  "banned or restricted more than the policy says")                            \
	X(DUN_DRIFT_STALE_NO_SUCCESSFUL_PAYMENT, "stale_no_successful_payment",        \
	  "no_successful_payment is set although a payment succeeded")                 \
	X(DUN_DRIFT_STAGE, "stage_mismatch", "the recorded stage is not the policy's") \
	X(DUN_DRIFT_PLATFORM, "platform_disagrees",                                    \
	  "the platform's ban, entitlement or resource flags are not the policy's")    \
	X(DUN_DRIFT_DOCUMENTS, "invoice_documents",                                    \
	  "an invoice document is open, or its paylinks on, that the policy closes")   \
	X(DUN_DRIFT_SUBSCRIPTION, "live_subscription",                                 \
	  "a subscription the policy cancels is live at the provider")                 \
	X(DUN_DRIFT_INCOMPLETE, "incomplete_state",                                    \
	  "the last recompute could not read every store; it decided nothing")         \
	X(DUN_DRIFT_OTHER, "other", "a recompute would plan something no class above names")

#define DUN_DRIFT_ENUM(name, str, text) name,
enum dun_drift_class { DUN_DRIFT_LIST(DUN_DRIFT_ENUM) };
#undef DUN_DRIFT_ENUM
#define DUN_DRIFT_ONE(name, str, text) +1
enum { DUN_DRIFT__COUNT = 0 DUN_DRIFT_LIST(DUN_DRIFT_ONE) };
#undef DUN_DRIFT_ONE

const char *dun_drift_name(enum dun_drift_class c);
const char *dun_drift_text(enum dun_drift_class c);

/*
 * Bit (1u << class) set for every class of the state alone that applies
 * (the classes up to stage_mismatch); 0: none.
 */
unsigned dun_drift_classify(const struct dun_state *s, const struct dun_desired *d);

/*
 * Every class, with the plan DECIDE made from s and d: dun_drift_classify()
 * plus the classes read off the plan (a platform, document or subscription
 * consequence), and `other` for a non-empty plan that no class names. An
 * account whose plan is not empty always has a class: a recompute would
 * change something, so it drifts.
 */
unsigned dun_drift_classify_plan(const struct dun_state *s, const struct dun_desired *d,
				 const struct dun_plan *plan);

#endif
