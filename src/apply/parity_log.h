/*
 * parity_log.h — the actions a parity report compares, and the parser of a
 * legacy system's decision log (outside input: JSON lines, see
 * docs/operations.md "The legacy decision log").
 *
 * One line is one JSON object:
 *   {"account": "acct_1", "time": "2026-03-02T09:00:00Z", "action": "ban"}
 * with "time" as ISO 8601 UTC or unix seconds, and per action:
 *   bad_debt_set, bad_debt_cleared, ban, unban        (nothing else)
 *   entitlement            "level": full | restricted | suspended
 *   subscription_cancel    "subscription": id
 *   email                  "kind": payment_failed | card_update_required |
 *                          restricted | suspended | bad_debt | resolved,
 *                          "invoice": id (payment_failed and
 *                          card_update_required only)
 *   invoice_uncollectible  "invoice": id, "amount": integer minor units
 *   retry                  "invoice": id, "attempt": integer >= 2
 * Any other key, a missing or mistyped one, an unknown action: an error
 * naming the line. Blank lines are allowed; nothing else is.
 */
#ifndef DUN_PARITY_LOG_H
#define DUN_PARITY_LOG_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "core/model.h"
#include "util/err.h"

#define DUN_PARITY_ACTION_LIST(X)                                \
	X(DUN_PA_BAD_DEBT_SET, "bad_debt_set")                   \
	X(DUN_PA_BAD_DEBT_CLEARED, "bad_debt_cleared")           \
	X(DUN_PA_BAN, "ban")                                     \
	X(DUN_PA_UNBAN, "unban")                                 \
	X(DUN_PA_ENTITLEMENT, "entitlement")                     \
	X(DUN_PA_SUBSCRIPTION_CANCEL, "subscription_cancel")     \
	X(DUN_PA_EMAIL, "email")                                 \
	X(DUN_PA_INVOICE_UNCOLLECTIBLE, "invoice_uncollectible") \
	X(DUN_PA_RETRY, "retry")

#define DUN_PA_MEMBER(name, str) name,
#define DUN_PA_ONE(name, str)	 +1
enum dun_parity_action { DUN_PARITY_ACTION_LIST(DUN_PA_MEMBER) };
enum { DUN_PARITY_ACTION__COUNT = 0 DUN_PARITY_ACTION_LIST(DUN_PA_ONE) };
#undef DUN_PA_MEMBER
#undef DUN_PA_ONE

const char *dun_parity_action_name(enum dun_parity_action a);
bool dun_parity_action_parse(const char *s, enum dun_parity_action *out);

/* One action of one account, from the legacy log or from the engine's shadow. */
struct dun_parity_item {
	char account[DUN_ID_MAX];
	int64_t at;
	enum dun_parity_action action;
	char detail[32];	 /* entitlement level, email kind, retry attempt; else "" */
	char target[DUN_ID_MAX]; /* invoice or subscription; "" when the action has none */
	bool has_amount;
	int64_t amount; /* invoice_uncollectible: the bad-debt amount, minor units */
	int line;	/* legacy log: its line number; 0 for the engine */
	int match;	/* index of the paired item on the other side, -1 when none */
};

struct dun_parity_list {
	struct dun_parity_item *items;
	int n;
	int cap;
};

void dun_parity_list_free(struct dun_parity_list *l);
struct dun_parity_item *dun_parity_list_add(struct dun_parity_list *l);

/*
 * Parse one line (len bytes, no newline needed; need not be NUL-terminated)
 * into out. DUN_E_PARSE with err (without the line number) on anything the
 * format above does not allow.
 */
enum dun_err dun_parity_parse_line(const char *line, size_t len, struct dun_parity_item *out,
				   char *err, size_t err_size);

/*
 * Read a whole log: every line parsed, in order, appended to out. On the
 * first bad line: DUN_E_PARSE, err = "<name>:<line>: <why>", and out holds
 * what came before (the caller discards it: nothing is half-used).
 */
enum dun_err dun_parity_read_log(FILE *f, const char *name, struct dun_parity_list *out, char *err,
				 size_t err_size);

#endif
