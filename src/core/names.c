/*
 * names.c — stable string names of the model's enums (see model.h).
 *
 * These names are what the store, the policy file, the JSON output and the
 * golden cases use, so they are part of the on-disk format: never rename.
 */
#include "model.h"

#include <string.h>

#define NAME_FUNCS(type, list)                           \
	const char *dun_##type##_name(enum dun_##type v) \
	{                                                \
		switch (v) {                             \
			list(NAME_CASE)                  \
		}                                        \
		return "?";                              \
	}
#define NAME_CASE(name, str) \
	case name:           \
		return str;

#define PARSE_FUNCS(type, list)                                      \
	bool dun_##type##_parse(const char *s, enum dun_##type *out) \
	{                                                            \
		list(PARSE_CASE) return false;                       \
	}
#define PARSE_CASE(name, str)      \
	if (strcmp(s, str) == 0) { \
		*out = name;       \
		return true;       \
	}

/* clang-format off */
NAME_FUNCS(segment, DUN_SEGMENT_LIST)
NAME_FUNCS(stage, DUN_STAGE_LIST)
NAME_FUNCS(entitlement, DUN_ENTITLEMENT_LIST)
NAME_FUNCS(invoice_status, DUN_INVOICE_STATUS_LIST)
NAME_FUNCS(billing_reason, DUN_BILLING_REASON_LIST)
NAME_FUNCS(sub_status, DUN_SUB_STATUS_LIST)
NAME_FUNCS(attempt_status, DUN_ATTEMPT_STATUS_LIST)
NAME_FUNCS(exit_reason, DUN_EXIT_REASON_LIST)
NAME_FUNCS(email_kind, DUN_EMAIL_KIND_LIST)
#undef NAME_CASE
#undef NAME_FUNCS

PARSE_FUNCS(segment, DUN_SEGMENT_LIST)
PARSE_FUNCS(stage, DUN_STAGE_LIST)
PARSE_FUNCS(entitlement, DUN_ENTITLEMENT_LIST)
PARSE_FUNCS(invoice_status, DUN_INVOICE_STATUS_LIST)
PARSE_FUNCS(sub_status, DUN_SUB_STATUS_LIST)
PARSE_FUNCS(attempt_status, DUN_ATTEMPT_STATUS_LIST)
PARSE_FUNCS(exit_reason, DUN_EXIT_REASON_LIST)
PARSE_FUNCS(email_kind, DUN_EMAIL_KIND_LIST)
/* clang-format on */
#undef PARSE_CASE
#undef PARSE_FUNCS

enum dun_billing_reason dun_billing_reason_from(const char *s)
{
#define BR_CASE(name, str)            \
	if (s && strcmp(s, str) == 0) \
		return name;
	DUN_BILLING_REASON_LIST(BR_CASE)
#undef BR_CASE
	return DUN_BILLING_OTHER;
}

void dun_state_init(struct dun_state *s)
{
	memset(s, 0, sizeof *s);
	s->segment = DUN_SEGMENT_SELF_SERVE;
	s->entitlement = DUN_ENTITLEMENT_FULL;
	s->stage = DUN_STAGE_NONE;
}
