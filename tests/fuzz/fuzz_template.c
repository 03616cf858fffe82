/*
 * fuzz_template.c — fuzz target for the email template parser and renderer
 * (dun_template_parse / dun_template_render, src/apply/email/template.c).
 *
 * Templates are files an operator edits. Each input is a template's text.
 * A template that parses must render with any values, and the subject it
 * renders is one line (no CR or LF can reach a header).
 */
#include "apply/email/template.h"
#include "fuzz_target.h"

#include <stdlib.h>
#include <string.h>

static void require(bool cond)
{
	if (!cond)
		abort();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct dun_template *t = NULL;
	char err[512];
	enum dun_err e =
	    dun_template_parse("fuzz.txt", (const char *)data, size, &t, err, sizeof err);
	require(memchr(err, '\0', sizeof err) != NULL);
	if (e != DUN_OK) {
		require(t == NULL);
		return 0;
	}
	struct dun_email_invoice inv[2] = {
	    {.id = "in_1\r\nBcc: x@y", .amount_minor = 1234, .currency = "usd", .issued_at = 1},
	    {.id = "in_2", .amount_minor = 0, .currency = "jpy", .issued_at = 0},
	};
	struct dun_email_vars v = {
	    .account_id = "acct_1",
	    .customer_name = "Evil\r\nSubject: spoof",
	    .amount_due_minor = 1234,
	    .currency = "usd",
	    .invoices = inv,
	    .n_invoices = 2,
	    .pay_url = "https://pay.example/in_1",
	    .next_action_at = 1767600000,
	    .next_action = "your account will be suspended",
	    .retries_left = 2,
	    .support_email = "support@example.com",
	};
	char *subject = NULL, *body = NULL;
	require(dun_template_render(t, &v, &subject, &body) == DUN_OK);
	require(subject && body);
	require(!strchr(subject, '\r') && !strchr(subject, '\n'));
	free(subject);
	free(body);
	dun_template_destroy(t);
	return 0;
}
