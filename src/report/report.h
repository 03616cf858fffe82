/*
 * report.h — what became of failed invoices and of bad-debt episodes, read
 * from the engine's database. The figures `dunning report` prints and the
 * money and bad-debt figures of /metrics come from these functions, so the
 * two always agree.
 *
 * A failed invoice is an invoice with at least one failed payment attempt
 * (consolidated pay-bad-debt invoices are not counted: their originals
 * are). What became of it, checked in this order:
 *   retry        paid, and a successful attempt used a card that had
 *                failed on it (or no card is known);
 *   card_update  paid by a card that never failed on it (a new card);
 *   other        paid with no successful attempt on record (out of band,
 *                credit, or the attempt was not seen);
 *   pay_bad_debt uncollectible or void, and covered by a paid consolidated
 *                invoice (bad_debt_paid in its metadata);
 *   written_off  uncollectible or void, not paid back;
 *   open         still owed.
 * Amounts: amount_paid for the paid outcomes, amount_remaining for the rest.
 */
#ifndef DUN_REPORT_H
#define DUN_REPORT_H

#include <stdint.h>

#include "store/db.h"
#include "util/err.h"

#define DUN_RECOVERY_LIST(X)                         \
	X(DUN_RECOVERY_RETRY, "retry")               \
	X(DUN_RECOVERY_CARD_UPDATE, "card_update")   \
	X(DUN_RECOVERY_OTHER, "other")               \
	X(DUN_RECOVERY_PAY_BAD_DEBT, "pay_bad_debt") \
	X(DUN_RECOVERY_WRITTEN_OFF, "written_off")   \
	X(DUN_RECOVERY_OPEN, "open")

#define DUN_RECOVERY_ENUM(name, str) name,
enum dun_recovery { DUN_RECOVERY_LIST(DUN_RECOVERY_ENUM) };
#undef DUN_RECOVERY_ENUM
#define DUN_RECOVERY_ONE(name, str) +1
enum { DUN_RECOVERY__COUNT = 0 DUN_RECOVERY_LIST(DUN_RECOVERY_ONE) };
#undef DUN_RECOVERY_ONE

const char *dun_recovery_name(enum dun_recovery r);
/* Whether money came back (retry, card_update, other, pay_bad_debt). */
bool dun_recovery_is_recovered(enum dun_recovery r);

/* One group of failed invoices: a currency, and (by week) a week. */
struct dun_recovery_row {
	int64_t week; /* Monday 00:00 UTC of the first failure's week; 0 in totals */
	char currency[8];
	int64_t failed;
	int64_t failed_minor; /* amount_due of the failed invoices */
	int64_t count[DUN_RECOVERY__COUNT];
	int64_t amount_minor[DUN_RECOVERY__COUNT];
};

struct dun_recovery_table {
	struct dun_recovery_row *rows; /* by week then currency, or by currency */
	int n;
	int cap;
};

/*
 * Failed invoices whose first failure is in [since, until) (0: unbounded),
 * grouped by week of the first failure and currency (by_week), or by
 * currency alone. The caller frees t with dun_recovery_table_free().
 */
enum dun_err dun_report_recovery(struct dun_db *db, int64_t since, int64_t until, bool by_week,
				 struct dun_recovery_table *t);
void dun_recovery_table_free(struct dun_recovery_table *t);

/*
 * Why an account entered bad debt, as a short label for grouping, from the
 * reason an episode recorded (the policy's words with ids and numbers):
 * "uncollectible" (an invoice marked uncollectible), "days_past_due" (the
 * oldest failing invoice reached the bad-debt stage), "upgrade_invoice" (an
 * unpaid upgrade invoice did), "other".
 */
const char *dun_report_entry_reason(const char *reason_text);

/* One bad-debt episode, as `dunning report bad-debt` lists it. */
struct dun_bad_debt_row {
	char account_id[128];
	int64_t episode;
	int64_t entered_at;
	const char *reason_class; /* dun_report_entry_reason() of reason */
	char reason[256];	  /* the policy's words, with ids and numbers */
	char products[512];	  /* what the episode recorded (subscriptions) */
	int64_t amount_minor;
	char currency[8];  /* the account's invoices' currency ("" when none) */
	int64_t exited_at; /* 0: still in bad debt */
	char exit_reason[32];
	int64_t stayed_s; /* exited_at (or now, while open) - entered_at */
};

/* Called once per episode, in order of entry; a non-zero return stops. */
typedef int (*dun_bad_debt_fn)(const struct dun_bad_debt_row *row, void *arg);

/*
 * Episodes entered in [since, until) (0: unbounded), oldest first; now
 * measures the stay of those still open.
 */
enum dun_err dun_report_bad_debt(struct dun_db *db, int64_t since, int64_t until, int64_t now,
				 dun_bad_debt_fn fn, void *arg);

/* Monday 00:00 UTC of the week holding t. */
int64_t dun_report_week(int64_t t);

#endif
