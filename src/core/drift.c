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

unsigned dun_drift_classify_plan(const struct dun_state *s, const struct dun_desired *d,
				 const struct dun_plan *plan)
{
	unsigned m = dun_drift_classify(s, d);
	bool unnamed = false;
	for (int i = 0; i < plan->n; i++) {
		switch (plan->items[i].type) {
		case DUN_C_BAN:
		case DUN_C_UNBAN:
		case DUN_C_SET_ENTITLEMENT:
		case DUN_C_REMOVE_RESOURCE_FLAGS:
			m |= 1u << DUN_DRIFT_PLATFORM;
			break;
		case DUN_C_CLOSE_INVOICE_DOCUMENT:
		case DUN_C_DISABLE_PAYLINKS:
			m |= 1u << DUN_DRIFT_DOCUMENTS;
			break;
		case DUN_C_CANCEL_SUBSCRIPTION:
			m |= 1u << DUN_DRIFT_SUBSCRIPTION;
			break;
		case DUN_C_MARK_UNCOLLECTIBLE:
		case DUN_C_SET_INVOICE_BAD_DEBT_AMOUNT:
		case DUN_C_SET_PROVIDER_CUSTOMER_BAD_DEBT:
		case DUN_C_SET_CUSTOMER_BAD_DEBT:
		case DUN_C_SET_ACCOUNT_BAD_DEBT:
		case DUN_C_MARK_INVOICE_BAD_DEBT_PAID:
		case DUN_C_RETRY_PAYMENT:
		case DUN_C_SET_NO_SUCCESSFUL_PAYMENT:
		case DUN_C_SEND_EMAIL:
		case DUN_C_OPEN_BAD_DEBT_EPISODE:
		case DUN_C_CLOSE_BAD_DEBT_EPISODE:
		case DUN_C_EMIT_OUTCOME_EVENT:
		case DUN_C_SET_STAGE:
		case DUN_C_SCHEDULE_RECHECK:
		case DUN_C_VOID_INVOICE:
		case DUN_C_CREATE_CONSOLIDATED_INVOICE:
			unnamed = true;
			break;
		}
	}
	if (!m && unnamed)
		m |= 1u << DUN_DRIFT_OTHER;
	return m;
}
