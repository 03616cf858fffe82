/*
 * cmd_pay_bad_debt.c — `dunning pay-bad-debt ACCOUNT [--json]`.
 */
#include "commands.h"
#include "apply/paybaddebt.h"
#include "util/clock.h"

#include <string.h>

int dun_cmd_pay_bad_debt(struct dun_cli *cli, int argc, char **argv)
{
	bool json = false;
	const char *account = NULL;
	for (int i = 1; i < argc; i++) {
		if (dun_cli_is_help(argv[i])) {
			printf(
			    "usage: dunning pay-bad-debt ACCOUNT [--json]\n\n"
			    "Create (or return the existing) consolidated invoice that settles an\n"
			    "account's bad debt, and print its hosted payment link. Only for an\n"
			    "account in bad debt; never two open at once; a stale one (covering\n"
			    "other invoices) is voided first.\n");
			return DUN_EX_OK;
		}
		if (!strcmp(argv[i], "--json"))
			json = true;
		else if (!account && argv[i][0] != '-')
			account = argv[i];
		else {
			dun_cli_error("pay-bad-debt: unexpected argument \"%s\"", argv[i]);
			return DUN_EX_USAGE;
		}
	}
	if (!account) {
		dun_cli_error("pay-bad-debt: expected an ACCOUNT");
		return DUN_EX_USAGE;
	}
	int rc = dun_cli_open(cli, DUN_NEED_ENGINE);
	if (rc)
		return rc;
	json_t *inv = NULL;
	char err[512] = "";
	enum dun_err e =
	    dun_pay_bad_debt(&cli->engine, account, dun_clock_now(), &inv, err, sizeof err);
	if (e != DUN_OK) {
		dun_cli_error("pay-bad-debt: %s", err);
		return dun_cli_exit_code(e);
	}
	if (json) {
		dun_cli_print_json(inv);
		return DUN_EX_OK;
	}
	printf("%s consolidated invoice %s: %.2f %s, covers %zu invoices\npay at: %s\n",
	       json_is_true(json_object_get(inv, "created")) ? "created" : "existing",
	       json_string_value(json_object_get(inv, "id")),
	       (double)json_integer_value(json_object_get(inv, "amount_due")) / 100.0,
	       json_string_value(json_object_get(inv, "currency")),
	       json_array_size(json_object_get(inv, "covers")),
	       json_string_value(json_object_get(inv, "hosted_invoice_url")));
	json_decref(inv);
	return DUN_EX_OK;
}
