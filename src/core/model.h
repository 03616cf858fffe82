/*
 * model.h — the snapshot of one account that GATHER builds and the pure core
 * reads.
 *
 * A struct dun_state is everything the engine knows about one account at one
 * moment: the engine's own rows (account, customer, dunning, episodes, sent
 * emails), the platform's row (ban, entitlement, resource flags), the invoice
 * documents, and the provider mirror (customer metadata, subscriptions,
 * invoices, payment attempts). GATHER fills it; EVALUATE and DECIDE only read
 * it. The arrays are owned by whoever built the state (the gather module, or
 * a test); the core never allocates or frees them.
 *
 * Times are unix seconds (int64). Money is int64 minor units.
 */
#ifndef DUN_MODEL_H
#define DUN_MODEL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define DUN_ID_MAX     64  /* provider ids, account ids (with NUL) */
#define DUN_CODE_MAX   48  /* decline codes, advice codes */
#define DUN_URL_MAX    256 /* hosted invoice url */
#define DUN_COVERS_MAX 64  /* originals one consolidated invoice may list */

/* Segments: only self_serve accounts are ever touched. */
#define DUN_SEGMENT_LIST(X)                     \
	X(DUN_SEGMENT_SELF_SERVE, "self_serve") \
	X(DUN_SEGMENT_ENTERPRISE, "enterprise") \
	X(DUN_SEGMENT_CONTRACT, "contract")

/* Dunning stages, least severe first (the numeric order is the severity). */
#define DUN_STAGE_LIST(X)                     \
	X(DUN_STAGE_NONE, "none")             \
	X(DUN_STAGE_NOTIFIED, "notified")     \
	X(DUN_STAGE_RESTRICTED, "restricted") \
	X(DUN_STAGE_SUSPENDED, "suspended")   \
	X(DUN_STAGE_BAD_DEBT, "bad_debt")

#define DUN_ENTITLEMENT_LIST(X)                     \
	X(DUN_ENTITLEMENT_FULL, "full")             \
	X(DUN_ENTITLEMENT_RESTRICTED, "restricted") \
	X(DUN_ENTITLEMENT_SUSPENDED, "suspended")

#define DUN_INVOICE_STATUS_LIST(X)                    \
	X(DUN_INVOICE_DRAFT, "draft")                 \
	X(DUN_INVOICE_OPEN, "open")                   \
	X(DUN_INVOICE_PAID, "paid")                   \
	X(DUN_INVOICE_UNCOLLECTIBLE, "uncollectible") \
	X(DUN_INVOICE_VOID, "void")

#define DUN_BILLING_REASON_LIST(X)                                \
	X(DUN_BILLING_OTHER, "other")                             \
	X(DUN_BILLING_SUBSCRIPTION_CYCLE, "subscription_cycle")   \
	X(DUN_BILLING_SUBSCRIPTION_CREATE, "subscription_create") \
	X(DUN_BILLING_SUBSCRIPTION_UPDATE, "subscription_update") \
	X(DUN_BILLING_MANUAL, "manual")

#define DUN_SUB_STATUS_LIST(X)                              \
	X(DUN_SUB_INCOMPLETE, "incomplete")                 \
	X(DUN_SUB_INCOMPLETE_EXPIRED, "incomplete_expired") \
	X(DUN_SUB_TRIALING, "trialing")                     \
	X(DUN_SUB_ACTIVE, "active")                         \
	X(DUN_SUB_PAST_DUE, "past_due")                     \
	X(DUN_SUB_CANCELED, "canceled")                     \
	X(DUN_SUB_UNPAID, "unpaid")                         \
	X(DUN_SUB_PAUSED, "paused")

#define DUN_ATTEMPT_STATUS_LIST(X)            \
	X(DUN_ATTEMPT_FAILED, "failed")       \
	X(DUN_ATTEMPT_SUCCEEDED, "succeeded") \
	X(DUN_ATTEMPT_PROCESSING, "processing")

/* Why a bad-debt episode ended; also how the originals are displayed. */
#define DUN_EXIT_REASON_LIST(X)                \
	X(DUN_EXIT_NONE, "")                   \
	X(DUN_EXIT_PAID, "paid")               \
	X(DUN_EXIT_RESOLVED, "resolved")       \
	X(DUN_EXIT_WRITTEN_OFF, "written_off") \
	X(DUN_EXIT_OTHER, "other")

#define DUN_EMAIL_KIND_LIST(X)                                    \
	X(DUN_EMAIL_PAYMENT_FAILED, "payment_failed")             \
	X(DUN_EMAIL_CARD_UPDATE_REQUIRED, "card_update_required") \
	X(DUN_EMAIL_RESTRICTED, "restricted")                     \
	X(DUN_EMAIL_SUSPENDED, "suspended")                       \
	X(DUN_EMAIL_BAD_DEBT, "bad_debt")                         \
	X(DUN_EMAIL_RESOLVED, "resolved")

#define DUN_ENUM_MEMBER(name, str) name,
#define DUN_ENUM_ONE(name, str)	   +1
enum dun_segment { DUN_SEGMENT_LIST(DUN_ENUM_MEMBER) };
enum { DUN_SEGMENT__COUNT = 0 DUN_SEGMENT_LIST(DUN_ENUM_ONE) };
enum dun_stage { DUN_STAGE_LIST(DUN_ENUM_MEMBER) };
enum { DUN_STAGE__COUNT = 0 DUN_STAGE_LIST(DUN_ENUM_ONE) };
enum dun_entitlement { DUN_ENTITLEMENT_LIST(DUN_ENUM_MEMBER) };
enum { DUN_ENTITLEMENT__COUNT = 0 DUN_ENTITLEMENT_LIST(DUN_ENUM_ONE) };
enum dun_invoice_status { DUN_INVOICE_STATUS_LIST(DUN_ENUM_MEMBER) };
enum { DUN_INVOICE_STATUS__COUNT = 0 DUN_INVOICE_STATUS_LIST(DUN_ENUM_ONE) };
enum dun_billing_reason { DUN_BILLING_REASON_LIST(DUN_ENUM_MEMBER) };
enum { DUN_BILLING_REASON__COUNT = 0 DUN_BILLING_REASON_LIST(DUN_ENUM_ONE) };
enum dun_sub_status { DUN_SUB_STATUS_LIST(DUN_ENUM_MEMBER) };
enum { DUN_SUB_STATUS__COUNT = 0 DUN_SUB_STATUS_LIST(DUN_ENUM_ONE) };
enum dun_attempt_status { DUN_ATTEMPT_STATUS_LIST(DUN_ENUM_MEMBER) };
enum { DUN_ATTEMPT_STATUS__COUNT = 0 DUN_ATTEMPT_STATUS_LIST(DUN_ENUM_ONE) };
enum dun_exit_reason { DUN_EXIT_REASON_LIST(DUN_ENUM_MEMBER) };
enum { DUN_EXIT_REASON__COUNT = 0 DUN_EXIT_REASON_LIST(DUN_ENUM_ONE) };
enum dun_email_kind { DUN_EMAIL_KIND_LIST(DUN_ENUM_MEMBER) };
enum { DUN_EMAIL_KIND__COUNT = 0 DUN_EMAIL_KIND_LIST(DUN_ENUM_ONE) };
#undef DUN_ENUM_MEMBER
#undef DUN_ENUM_ONE

/*
 * Name <-> enum. The *_name functions return a static string; the *_parse
 * functions return false (and leave *out alone) for an unknown name.
 */
const char *dun_segment_name(enum dun_segment v);
const char *dun_stage_name(enum dun_stage v);
const char *dun_entitlement_name(enum dun_entitlement v);
const char *dun_invoice_status_name(enum dun_invoice_status v);
const char *dun_billing_reason_name(enum dun_billing_reason v);
const char *dun_sub_status_name(enum dun_sub_status v);
const char *dun_attempt_status_name(enum dun_attempt_status v);
const char *dun_exit_reason_name(enum dun_exit_reason v);
const char *dun_email_kind_name(enum dun_email_kind v);
bool dun_segment_parse(const char *s, enum dun_segment *out);
bool dun_stage_parse(const char *s, enum dun_stage *out);
bool dun_entitlement_parse(const char *s, enum dun_entitlement *out);
bool dun_invoice_status_parse(const char *s, enum dun_invoice_status *out);
/* Unknown billing reasons map to DUN_BILLING_OTHER (always succeeds). */
enum dun_billing_reason dun_billing_reason_from(const char *s);
bool dun_sub_status_parse(const char *s, enum dun_sub_status *out);
bool dun_attempt_status_parse(const char *s, enum dun_attempt_status *out);
bool dun_exit_reason_parse(const char *s, enum dun_exit_reason *out);
bool dun_email_kind_parse(const char *s, enum dun_email_kind *out);

/* One payment attempt on one invoice (a PaymentIntent attempt / a Charge). */
struct dun_attempt {
	char id[DUN_ID_MAX];
	int64_t created_at;
	enum dun_attempt_status status;
	char payment_method[DUN_ID_MAX]; /* the card used; "" when unknown */
	char decline_code[DUN_CODE_MAX];
	char advice_code[DUN_CODE_MAX];
	char network_advice_code[DUN_CODE_MAX];
};

/*
 * One invoice as mirrored from the provider, plus its invoice document.
 * attempts points into the state's attempts array (first_attempt .. +n).
 */
struct dun_invoice {
	char id[DUN_ID_MAX];
	char subscription_id[DUN_ID_MAX];
	enum dun_invoice_status status;
	enum dun_billing_reason billing_reason;
	int64_t amount_due_minor;
	int64_t amount_paid_minor;
	int64_t amount_remaining_minor;
	char currency[8];
	int attempt_count;
	/*
	 * When the provider will next try to collect this invoice by itself
	 * (Stripe's next_payment_attempt: Smart Retries or a retry schedule);
	 * 0 when it will not.
	 */
	int64_t next_payment_attempt_at;
	int64_t created_at;
	int64_t paid_at; /* 0 unless status paid */
	char hosted_invoice_url[DUN_URL_MAX];
	/* metadata the engine reads and writes */
	bool meta_has_bad_debt_amount;
	int64_t meta_bad_debt_amount_minor;
	bool meta_bad_debt_paid;
	/*
	 * A consolidated bad-debt invoice lists the originals it covers in its
	 * metadata bad_debt_invoices; covers/n_covers is that list.
	 */
	bool is_consolidated;
	int n_covers;
	char covers[DUN_COVERS_MAX][DUN_ID_MAX];
	/* the invoice document (engine DB); has_doc false when none exists yet */
	bool has_doc;
	bool doc_closed;
	bool doc_paylinks_enabled;
	/* payment attempts, oldest first */
	const struct dun_attempt *attempts;
	int n_attempts;
};

struct dun_subscription {
	char id[DUN_ID_MAX];
	enum dun_sub_status status;
};

/*
 * An email already recorded in the email log for this account, and when it
 * was queued (or recorded by the legacy sender): the clock time, 0 unknown.
 */
struct dun_sent_email {
	char key[128];
	int64_t at;
};

struct dun_state {
	/* engine: accounts */
	char account_id[DUN_ID_MAX];
	enum dun_segment segment;
	bool kill_switch;
	bool account_bad_debt;
	bool no_successful_payment;
	/* engine: customers, and the provider's customer */
	bool has_customer;
	char customer_id[DUN_ID_MAX];
	bool customer_bad_debt;
	bool provider_meta_bad_debt; /* customer metadata bad_debt == "true" */
	char default_payment_method[DUN_ID_MAX];
	/* platform */
	bool banned;
	enum dun_entitlement entitlement;
	bool has_resource_flags;
	/* engine: dunning */
	enum dun_stage stage;
	int64_t stage_since;
	int64_t episode;	 /* 0 before the first episode; increases by one */
	int64_t lifting_since;	 /* 0 when not lifting */
	int64_t next_recheck_at; /* 0 when none scheduled */
	/* engine: bad-debt episodes entered so far, and whether the last is open */
	int64_t bad_debt_episodes;
	bool bad_debt_episode_open;
	/* provider mirror */
	const struct dun_subscription *subscriptions;
	int n_subscriptions;
	const struct dun_invoice *invoices;
	int n_invoices;
	/* engine: email log keys for this account */
	const struct dun_sent_email *sent_emails;
	int n_sent_emails;
};

/* Zero a state and set the defaults of an account nobody has touched. */
void dun_state_init(struct dun_state *s);

#endif
