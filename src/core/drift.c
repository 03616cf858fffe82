/*
 * drift.c — the drift classes (see drift.h). Skipped accounts never drift:
 * their desired state is their current state by definition.
 */
#include "drift.h"

const char *dun_drift_name(enum dun_drift_class c)
{
	switch (c) {
#define DRIFT_NAME(name, str, text) \
	case name:                  \
		return str;
		DUN_DRIFT_LIST(DRIFT_NAME)
#undef DRIFT_NAME
	}
	return "?";
}

const char *dun_drift_text(enum dun_drift_class c)
{
	switch (c) {
#define DRIFT_TEXT(name, str, text) \
	case name:                  \
		return text;
		DUN_DRIFT_LIST(DRIFT_TEXT)
#undef DRIFT_TEXT
	}
	return "?";
}

unsigned dun_drift_classify(const struct dun_state *s, const struct dun_desired *d)
{
	if (d->skipped)
		return 0;
	unsigned m = 0;
	bool any_flag = s->account_bad_debt ||
			(s->has_customer && (s->customer_bad_debt || s->provider_meta_bad_debt));
	bool want_bd = d->stage == DUN_STAGE_BAD_DEBT;
	if (any_flag && !want_bd)
		m |= 1u << DUN_DRIFT_STUCK_BAD_DEBT;
	if (want_bd && !s->account_bad_debt)
		m |= 1u << DUN_DRIFT_MISSED_BAD_DEBT;
	if (s->has_customer && (s->account_bad_debt != s->customer_bad_debt ||
				s->account_bad_debt != s->provider_meta_bad_debt))
		m |= 1u << DUN_DRIFT_FLAGS_DISAGREE;
	if ((s->banned && !d->banned) || s->entitlement > d->entitlement)
		m |= 1u << DUN_DRIFT_STALE_RESTRICTION;
	if (s->no_successful_payment && !d->no_successful_payment)
		m |= 1u << DUN_DRIFT_STALE_NO_SUCCESSFUL_PAYMENT;
	if (s->stage != d->stage)
		m |= 1u << DUN_DRIFT_STAGE;
	return m;
}
