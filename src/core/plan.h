/*
 * plan.h — DELTA/DECIDE: state × desired → the minimal ordered plan.
 *
 * A plan is a list of typed consequences. Each consequence names its store
 * (engine, provider, platform, email), its target, its value and a stable
 * idempotency key. Facts already true produce nothing, so deciding twice on
 * the same state — after the first plan was applied — gives an empty plan.
 *
 * Order matters and is fixed here: provider-side facts first (mark
 * uncollectible before the account is flagged), then the engine's flags,
 * then the notices (payment failed, and the stage email announcing a
 * restriction: queued before the platform writes that enforce it), then the
 * platform, then the email announcing a lift (resolved, after the lift),
 * then the bookkeeping (episodes, outcome events, the stage itself, the
 * next recheck). The stage is written last so that a plan interrupted
 * half-way is re-planned in full on the next run.
 *
 * CREATE_CONSOLIDATED_INVOICE is never produced by the policy: it is the
 * plan of an explicit request (pay-bad-debt), built by the caller and
 * executed by the same applier. VOID_INVOICE is produced both by that
 * request (a stale consolidated invoice) and by the policy (an open
 * consolidated invoice when nothing is owed any more), under one key.
 */
#ifndef DUN_PLAN_H
#define DUN_PLAN_H

#include "model.h"
#include "policy.h"

#define DUN_KEY_MAX 160

/* X(name, string, store, once) — once: applied at most once per key, ever. */
#define DUN_CONSEQ_LIST(X)                                                                       \
	X(DUN_C_MARK_UNCOLLECTIBLE, "mark_uncollectible", DUN_STORE_PROVIDER, false)             \
	X(DUN_C_SET_INVOICE_BAD_DEBT_AMOUNT, "set_invoice_bad_debt_amount", DUN_STORE_PROVIDER,  \
	  false)                                                                                 \
	X(DUN_C_SET_PROVIDER_CUSTOMER_BAD_DEBT, "set_provider_customer_bad_debt",                \
	  DUN_STORE_PROVIDER, false)                                                             \
	X(DUN_C_SET_CUSTOMER_BAD_DEBT, "set_customer_bad_debt", DUN_STORE_ENGINE, false)         \
	X(DUN_C_SET_ACCOUNT_BAD_DEBT, "set_account_bad_debt", DUN_STORE_ENGINE, false)           \
	X(DUN_C_BAN, "ban", DUN_STORE_PLATFORM, false)                                           \
	X(DUN_C_UNBAN, "unban", DUN_STORE_PLATFORM, false)                                       \
	X(DUN_C_SET_ENTITLEMENT, "set_entitlement", DUN_STORE_PLATFORM, false)                   \
	X(DUN_C_REMOVE_RESOURCE_FLAGS, "remove_resource_flags", DUN_STORE_PLATFORM, false)       \
	X(DUN_C_CANCEL_SUBSCRIPTION, "cancel_subscription", DUN_STORE_PROVIDER, false)           \
	X(DUN_C_MARK_INVOICE_BAD_DEBT_PAID, "mark_invoice_bad_debt_paid", DUN_STORE_PROVIDER,    \
	  false)                                                                                 \
	X(DUN_C_CLOSE_INVOICE_DOCUMENT, "close_invoice_document", DUN_STORE_ENGINE, false)       \
	X(DUN_C_DISABLE_PAYLINKS, "disable_paylinks", DUN_STORE_ENGINE, false)                   \
	X(DUN_C_RETRY_PAYMENT, "retry_payment", DUN_STORE_PROVIDER, true)                        \
	X(DUN_C_SET_NO_SUCCESSFUL_PAYMENT, "set_no_successful_payment", DUN_STORE_ENGINE, false) \
	X(DUN_C_SEND_EMAIL, "send_email", DUN_STORE_EMAIL, true)                                 \
	X(DUN_C_OPEN_BAD_DEBT_EPISODE, "open_bad_debt_episode", DUN_STORE_ENGINE, true)          \
	X(DUN_C_CLOSE_BAD_DEBT_EPISODE, "close_bad_debt_episode", DUN_STORE_ENGINE, true)        \
	X(DUN_C_EMIT_OUTCOME_EVENT, "emit_outcome_event", DUN_STORE_ENGINE, true)                \
	X(DUN_C_SET_STAGE, "set_stage", DUN_STORE_ENGINE, false)                                 \
	X(DUN_C_SCHEDULE_RECHECK, "schedule_recheck", DUN_STORE_ENGINE, false)                   \
	X(DUN_C_VOID_INVOICE, "void_invoice", DUN_STORE_PROVIDER, false)                         \
	X(DUN_C_CREATE_CONSOLIDATED_INVOICE, "create_consolidated_invoice", DUN_STORE_PROVIDER,  \
	  true)

enum dun_store { DUN_STORE_ENGINE, DUN_STORE_PROVIDER, DUN_STORE_PLATFORM, DUN_STORE_EMAIL };

#define DUN_CONSEQ_ENUM(name, str, store, once) name,
#define DUN_CONSEQ_ONE(name, str, store, once)	+1
enum dun_conseq_type { DUN_CONSEQ_LIST(DUN_CONSEQ_ENUM) };
enum { DUN_CONSEQ__COUNT = 0 DUN_CONSEQ_LIST(DUN_CONSEQ_ONE) };
#undef DUN_CONSEQ_ENUM
#undef DUN_CONSEQ_ONE

const char *dun_conseq_name(enum dun_conseq_type t);
bool dun_conseq_parse(const char *s, enum dun_conseq_type *out);
enum dun_store dun_conseq_store(enum dun_conseq_type t);
const char *dun_store_name(enum dun_store s);
/* Whether a consequence of this type is applied at most once per key. */
bool dun_conseq_is_once(enum dun_conseq_type t);
/* Whether the applier must re-read the invoices fresh before applying it. */
bool dun_conseq_is_destructive(enum dun_conseq_type t);

/*
 * One consequence. Meaning of the fields by type:
 *   target  invoice id, subscription id, customer id, or the account id
 *   value   the boolean / enum / amount / time / attempt number it sets
 *   kind    the email kind (SEND_EMAIL only)
 *   from    the previous stage (SET_STAGE, EMIT_OUTCOME_EVENT)
 *   episode the dunning episode the consequence belongs to
 */
struct dun_consequence {
	enum dun_conseq_type type;
	char target[DUN_ID_MAX];
	int64_t value;
	enum dun_email_kind kind;
	enum dun_stage from;
	int64_t episode;
	int64_t at;	       /* SET_STAGE: the new since; SCHEDULE_RECHECK: when */
	int64_t lifting_since; /* SET_STAGE: the new lifting_since (0: not lifting) */
	/*
	 * SEND_EMAIL only: the step was gone through before the engine took
	 * over (cutover from observe: the stores already show its consequence):
	 * the applier records the key in the email log, sends nothing.
	 */
	bool cutover;
	char key[DUN_KEY_MAX];
};

struct dun_plan {
	struct dun_consequence *items; /* caller-owned */
	int n;
	int cap;
};

/*
 * DECIDE. Borrows s and d; appends to plan (which the caller set up with
 * storage and cap). Returns DUN_E_TOO_BIG when the plan does not fit.
 */
enum dun_err dun_plan_decide(const struct dun_state *s, const struct dun_desired *d,
			     struct dun_plan *plan);

/*
 * Render one consequence as one line of text ("ban acct_1", "set_entitlement
 * acct_1 restricted", ...), the form golden cases and `explain` use.
 * Returns the length written (truncated to out_size - 1).
 */
size_t dun_conseq_format(const struct dun_consequence *c, char *out, size_t out_size);

#endif
