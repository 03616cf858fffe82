/*
 * paybaddebt.h — the consolidated bad-debt invoice a customer pays to get
 * out of bad debt. Shared by `dunning pay-bad-debt` and the admin API.
 */
#ifndef DUN_PAYBADDEBT_H
#define DUN_PAYBADDEBT_H

#include "apply/recompute.h"

/*
 * Create or return the consolidated invoice of account_id. Guards: the
 * account must be in bad debt (recorded or by the rules); an open
 * consolidated invoice covering exactly the current unresolved invoices is
 * returned as is (never two open at once); one covering a different set is
 * stale and voided before a new one is made. On success *invoice_out is a
 * new JSON object {id, status, amount_due, currency, hosted_invoice_url,
 * covers[], created (bool)}. err says why on failure (DUN_E_GUARD for a
 * refused request).
 */
enum dun_err dun_pay_bad_debt(struct dun_engine *en, const char *account_id, int64_t now,
			      json_t **invoice_out, char *err, size_t err_size);

#endif
