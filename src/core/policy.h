/*
 * policy.h — EVALUATE: state × policy × now → desired state + reasons.
 *
 * The policy is plain data (struct dun_policy) filled with defaults by
 * dun_policy_defaults() and overridden by a policy file (src/config). The
 * evaluation is a pure function: no I/O, no clock (now is an argument), no
 * allocation (the caller hands in the per-invoice array and the reason list).
 */
#ifndef DUN_POLICY_H
#define DUN_POLICY_H

#include "model.h"
#include "../util/err.h"

#define DUN_RETRY_SCHEDULE_MAX	16
#define DUN_DECLINE_RULES_MAX	128
#define DUN_REASON_TEXT_MAX	200
#define DUN_REASON_RULE_MAX	32
#define DUN_UPGRADE_REASONS_MAX 4

enum dun_decline_class { DUN_DECLINE_SOFT, DUN_DECLINE_HARD };

/*
 * Who retries failed payments. engine: the engine, on the [retries]
 * schedule (the provider's own retries must be off). stripe: the
 * provider (Stripe's Smart Retries or retry schedule); the engine plans no
 * payment retry, reads the provider's next attempt from the mirror, and
 * does everything else.
 */
#define DUN_RETRY_OWNER_LIST(X)             \
	X(DUN_RETRY_OWNER_ENGINE, "engine") \
	X(DUN_RETRY_OWNER_STRIPE, "stripe")

#define DUN_ENUM_MEMBER(name, str) name,
enum dun_retry_owner { DUN_RETRY_OWNER_LIST(DUN_ENUM_MEMBER) };
#undef DUN_ENUM_MEMBER

/* The name of an owner (a static string); parse returns false for an unknown name. */
const char *dun_retry_owner_name(enum dun_retry_owner v);
bool dun_retry_owner_parse(const char *s, enum dun_retry_owner *out);

/*
 * With retries owned by the provider, how long after its next attempt was
 * due the engine looks again (a recheck, and a fresh read of the invoice
 * if no webhook told the outcome by then).
 */
#define DUN_PROVIDER_ATTEMPT_GRACE_S 3600

/* Which field of a failed attempt a decline rule looks at. */
enum dun_decline_field {
	DUN_DECLINE_FIELD_ADVICE_CODE,	       /* advice_code: the first signal */
	DUN_DECLINE_FIELD_NETWORK_ADVICE_CODE, /* Mastercard merchant advice */
	DUN_DECLINE_FIELD_DECLINE_CODE,	       /* decline_code / failure_code */
};

struct dun_decline_rule {
	enum dun_decline_field field;
	char code[DUN_CODE_MAX];
	enum dun_decline_class cls;
	int64_t min_delay_s; /* soft only: do not retry sooner than this */
};

struct dun_policy {
	/* stage thresholds, in seconds of delinquency */
	int64_t restricted_after_s;
	int64_t suspended_after_s;
	int64_t bad_debt_after_s;
	/* upgrade failures never push past this stage, never into bad debt */
	enum dun_billing_reason upgrade_reasons[DUN_UPGRADE_REASONS_MAX];
	int n_upgrade_reasons;
	enum dun_stage upgrade_max_stage;
	/* retries of soft declines: offsets from the first failed attempt */
	int64_t retry_schedule_s[DUN_RETRY_SCHEDULE_MAX];
	int n_retry_schedule;
	int max_attempts; /* attempts in all, the first one included */
	/* who retries: with DUN_RETRY_OWNER_STRIPE the two above are unused */
	enum dun_retry_owner retry_owner;
	/* in-flight guard */
	int64_t lifting_window_s;
	/*
	 * A payment in flight holds the stage for at most this long (from the
	 * attempt's creation); past it the attempt counts as failed and
	 * escalation resumes. 0: hold for as long as it is in flight.
	 */
	int64_t processing_max_s;
	/*
	 * A payment in flight this long (from its attempt) is read again from
	 * the provider at the next recompute (GATHER's refresh), in case its
	 * outcome webhook was lost. 0: never.
	 */
	int64_t processing_recheck_after_s;
	/* segments never touched */
	bool skip_segment[DUN_SEGMENT__COUNT];
	/* what bad debt does */
	bool bad_debt_mark_uncollectible;
	bool bad_debt_cancel_subscriptions;
	bool bad_debt_ban;
	bool bad_debt_remove_resource_flags;
	/* entitlement per stage */
	enum dun_entitlement entitlement[DUN_STAGE__COUNT];
	/* decline classification */
	struct dun_decline_rule declines[DUN_DECLINE_RULES_MAX];
	int n_declines;
	enum dun_decline_class decline_default;
};

/* Fill p with the defaults that policy/default.conf also spells out. */
void dun_policy_defaults(struct dun_policy *p);

/*
 * Classify one failed attempt. Looks at advice_code first, then the network
 * advice code, then the decline code; the first rule that matches wins, and
 * decline_default applies when none does. *min_delay_s (may be NULL) gets the
 * matched rule's minimum retry delay.
 */
enum dun_decline_class dun_policy_classify(const struct dun_policy *p, const struct dun_attempt *a,
					   int64_t *min_delay_s);

/* One line of the explanation: which rule, and what it saw (with numbers). */
struct dun_reason {
	char rule[DUN_REASON_RULE_MAX];
	char text[DUN_REASON_TEXT_MAX];
};

/* What the policy wants for one invoice (parallel to state->invoices). */
struct dun_invoice_desired {
	bool failing;		       /* open, remaining > 0, a failed attempt */
	bool upgrade;		       /* billing_reason counts as an upgrade */
	bool unresolved_uncollectible; /* uncollectible, not covered by a paid consolidated */
	bool covered_by_paid;	       /* listed by a paid consolidated invoice */
	int64_t first_failed_at;       /* 0 when no failed attempt */
	bool hard_decline;	       /* the latest failed attempt is hard */
	bool processing;	       /* a payment is in flight (and still holds the stage) */
	bool processing_expired;       /* a payment in flight past processing_max: counted failed */
	/* consequences wanted on this invoice */
	bool mark_uncollectible;
	bool set_bad_debt_amount;
	int64_t bad_debt_amount_minor;
	bool mark_bad_debt_paid;
	bool close_document;
	bool disable_paylinks;
	bool void_consolidated; /* an open consolidated invoice nothing is owed on any more */
	bool notice;		/* a per-invoice email is wanted */
	enum dun_email_kind notice_kind;
	bool retry_due;	       /* a retry is due now */
	int retry_attempt;     /* the attempt number the retry will be */
	int64_t next_retry_at; /* 0 when no further retry; the provider's when it owns them */
};

struct dun_desired {
	bool skipped;		       /* segment or kill switch: nothing is planned */
	bool held;		       /* the in-flight guard stopped an escalation */
	enum dun_stage computed_stage; /* what the rules say, before the guard */
	enum dun_stage stage;	       /* what will be applied */
	int64_t stage_since;
	int64_t episode;
	int64_t delinquent_since; /* 0 when not delinquent */
	int64_t days_delinquent;
	bool account_bad_debt;
	bool customer_bad_debt;
	bool provider_meta_bad_debt;
	bool banned;
	enum dun_entitlement entitlement;
	bool remove_resource_flags;
	bool cancel_subscriptions;
	bool no_successful_payment;
	bool open_bad_debt_episode;
	bool close_bad_debt_episode;
	/*
	 * The bad-debt episode the account is in or is entering (1, 2, ...):
	 * it scopes the bad_debt email and the episode keys, so bad debt
	 * entered twice within one dunning episode is a new episode.
	 */
	int64_t bad_debt_seq;
	enum dun_exit_reason exit_reason;
	bool send_stage_email;
	enum dun_email_kind stage_email_kind;
	char stage_email_scope[48]; /* the dedup scope of the stage email: ep1, bd2, ... */
	int64_t lifting_since;	    /* 0 when not lifting */
	int64_t next_recheck_at;    /* 0 when nothing will change by itself */
	/* per invoice, caller-owned, n == state->n_invoices */
	struct dun_invoice_desired *invoices;
	/* reasons, caller-owned */
	struct dun_reason *reasons;
	int n_reasons;
	int reasons_cap;
};

/*
 * EVALUATE. Borrows s and p; writes into *d, whose invoices array (at least
 * s->n_invoices long) and reasons array (reasons_cap long) the caller set up
 * beforehand. Returns DUN_E_TOO_BIG when reasons_cap is too small (the
 * desired state is still complete; only reasons were dropped).
 */
enum dun_err dun_policy_evaluate(const struct dun_state *s, const struct dun_policy *p, int64_t now,
				 struct dun_desired *d);

/*
 * The dedup scope of the stage email d wants (d->stage_email_kind set):
 * "bdN" for bad debt, "epN" for resolved and for the first entry of a
 * stage in an episode, "epN/from-<stage>@<since>" for each later entry
 * (the first entry's email was queued before the current stage began).
 */
void dun_stage_email_scope(const struct dun_state *s, const struct dun_desired *d, char *out,
			   size_t out_size);

/* Build an email dedup key: "<account>/email/<kind>/<scope>". */
void dun_email_key(char *out, size_t out_size, const char *account_id, enum dun_email_kind kind,
		   const char *scope);

/* Whether the email log of s already holds key. */
bool dun_state_has_sent(const struct dun_state *s, const char *key);

/*
 * Whether GATHER should read inv's payment again from the provider: the
 * invoice is open and a payment of it has been in flight for
 * processing_recheck_after or longer (its outcome webhook may be lost).
 */
bool dun_policy_payment_recheck_due(const struct dun_policy *p, const struct dun_invoice *inv,
				    int64_t now);

/*
 * Whether GATHER should read inv again from the provider because the
 * provider owns retries and its next attempt of inv was due at least
 * DUN_PROVIDER_ATTEMPT_GRACE_S ago: the mirror still shows the attempt as
 * ahead, so the webhook with its outcome is late or lost.
 */
bool dun_policy_provider_attempt_overdue(const struct dun_policy *p, const struct dun_invoice *inv,
					 int64_t now);

#endif
