/*
 * test_template.c — the email templates: the six shipped files render to
 * the wording each situation needs, and a broken template is refused at load
 * time with its file and line.
 *
 * Usage: test-template TEMPLATE_DIR (the repository's templates/).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "apply/email/template.h"
#include "check.h"
#include "util/mem.h"

static const char *template_dir;

#define CHECK_HAS(hay, needle)                                                               \
	do {                                                                                 \
		const char *ch_ = (hay), *cn_ = (needle);                                    \
		if (ch_ && strstr(ch_, cn_))                                                 \
			check_passed++;                                                      \
		else                                                                         \
			CHECK_FAIL_AT("expected \"%s\" in:\n%s", cn_, ch_ ? ch_ : "(null)"); \
	} while (0)

#define CHECK_LACKS(hay, needle)                                                                   \
	do {                                                                                       \
		const char *ch_ = (hay), *cn_ = (needle);                                          \
		if (ch_ && !strstr(ch_, cn_))                                                      \
			check_passed++;                                                            \
		else                                                                               \
			CHECK_FAIL_AT("did not expect \"%s\" in:\n%s", cn_, ch_ ? ch_ : "(null)"); \
	} while (0)

static const struct dun_email_invoice sample_invoices[] = {
    {"in_1001", 1234, NULL, 1767225600}, /* 2026-01-01 */
    {"in_1002", 500, "usd", 1769904000}, /* 2026-02-01 */
};

/* Everything set: a mid-schedule notice with a live link. */
static struct dun_email_vars full_vars(void)
{
	struct dun_email_vars v = {
	    .account_id = "acct_42",
	    .customer_name = "Ada Lovelace",
	    .amount_due_minor = 1734,
	    .currency = "usd",
	    .invoices = sample_invoices,
	    .n_invoices = 2,
	    .pay_url = "https://pay.example.com/i/in_1002",
	    .next_action_at = 1773532800, /* 2026-03-15 */
	    .next_action = "your account will be suspended",
	    .retries_left = 2,
	    .retries_counted = true,
	    .support_email = "billing@example.com",
	    .exit_reason = "paid",
	    .voided_invoice = "",
	};
	return v;
}

/* The last notice: no retry, no next step, no link. */
static struct dun_email_vars last_vars(void)
{
	struct dun_email_vars v = full_vars();
	v.retries_left = 0;
	v.next_action_at = 0;
	v.next_action = "";
	v.pay_url = "";
	return v;
}

static struct dun_template_set *load_set(void)
{
	struct dun_template_set *set = NULL;
	char err[512] = "";
	enum dun_err e = dun_template_set_load(template_dir, &set, err, sizeof err);
	CHECK_INT(e, DUN_OK);
	if (e != DUN_OK)
		fprintf(stderr, "load: %s\n", err);
	return set;
}

static void render(const struct dun_template_set *set, enum dun_email_kind k,
		   const struct dun_email_vars *v, char **subject, char **body)
{
	CHECK_INT(dun_template_render(dun_template_set_get(set, k), v, subject, body), DUN_OK);
}

/* Properties every rendered email must have. */
static void check_clean(const char *what, const char *subject, const char *body)
{
	CHECK_LACKS(subject, "{{");
	CHECK_LACKS(body, "{{");
	CHECK_LACKS(body, "}}");
	CHECK_LACKS(subject, "\n");
	CHECK_LACKS(subject, "\r");
	/* The blocks must not leave holes in the text. */
	CHECK_LACKS(body, "\n\n\n");
	CHECK(subject[0] != '\0');
	if (body[0] == '\n')
		CHECK_FAIL_AT("%s: body starts with an empty line", what);
}

static void test_all_kinds_render(void)
{
	struct dun_template_set *set = load_set();
	if (!set)
		return;
	static const char *const phrases[DUN_EMAIL_KIND__COUNT][2] = {
	    [DUN_EMAIL_PAYMENT_FAILED] = {"could not process", "did not go through"},
	    [DUN_EMAIL_CARD_UPDATE_REQUIRED] = {"new card", "add a new card"},
	    [DUN_EMAIL_RESTRICTED] = {"restricted", "Full access is restored"},
	    [DUN_EMAIL_SUSPENDED] = {"suspended", "lifts the suspension"},
	    [DUN_EMAIL_BAD_DEBT] = {"Final notice", "no further attempts"},
	    [DUN_EMAIL_RESOLVED] = {"Payment received", "settled"},
	};
	for (int k = 0; k < DUN_EMAIL_KIND__COUNT; k++) {
		struct dun_email_vars full = full_vars(), last = last_vars();
		const struct dun_email_vars *cases[] = {&full, &last};
		for (int c = 0; c < 2; c++) {
			char *subject = NULL, *body = NULL;
			render(set, (enum dun_email_kind)k, cases[c], &subject, &body);
			if (!subject || !body)
				continue;
			const char *name = dun_email_kind_name((enum dun_email_kind)k);
			check_clean(name, subject, body);
			CHECK_HAS(subject, phrases[k][0]);
			CHECK_HAS(body, phrases[k][1]);
			CHECK_HAS(body, "acct_42");
			CHECK_HAS(body, "Hello Ada Lovelace,");
			CHECK_HAS(body, "- in_1001: 12.34 USD, issued 2026-01-01\n"
					"- in_1002: 5.00 USD, issued 2026-02-01\n");
			CHECK_HAS(body, "billing@example.com");
			if (k != DUN_EMAIL_RESOLVED)
				CHECK_HAS(body, "17.34 USD");
			free(subject);
			free(body);
		}
	}
	dun_template_set_destroy(set);
}

static void test_mid_schedule_wording(void)
{
	struct dun_template_set *set = load_set();
	if (!set)
		return;
	struct dun_email_vars v = full_vars();
	char *subject, *body;

	render(set, DUN_EMAIL_PAYMENT_FAILED, &v, &subject, &body);
	CHECK_STR(subject, "We could not process your payment of 17.34 USD");
	CHECK_HAS(body, "We will try your payment method again automatically (attempts "
			"remaining: 2)");
	CHECK_HAS(body, "You can pay securely online here:\nhttps://pay.example.com/i/in_1002\n");
	CHECK_HAS(body,
		  "If the balance is still unpaid on 2026-03-15, your account will be suspended.");
	CHECK_LACKS(body, "final automatic attempt");
	free(subject);
	free(body);

	render(set, DUN_EMAIL_CARD_UPDATE_REQUIRED, &v, &subject, &body);
	CHECK_HAS(body, "Please add a new card or another payment method.");
	CHECK_HAS(body, "we will charge it automatically at our next attempt");
	free(subject);
	free(body);

	render(set, DUN_EMAIL_RESOLVED, &v, &subject, &body);
	/* Nothing is due once resolved: no link, no threat. */
	CHECK_LACKS(body, "https://");
	CHECK_LACKS(body, "unpaid on");
	free(subject);
	free(body);
	dun_template_set_destroy(set);
}

/* Stripe owns the retries: it will try again, but it never says how often. */
static void test_retries_by_stripe_are_not_counted(void)
{
	struct dun_template_set *set = load_set();
	if (!set)
		return;
	struct dun_email_vars v = full_vars();
	v.retries_left = 1;
	v.retries_counted = false;
	static const enum dun_email_kind kinds[] = {DUN_EMAIL_PAYMENT_FAILED, DUN_EMAIL_RESTRICTED,
						    DUN_EMAIL_SUSPENDED};
	for (size_t k = 0; k < sizeof kinds / sizeof kinds[0]; k++) {
		char *subject, *body;
		render(set, kinds[k], &v, &subject, &body);
		CHECK_LACKS(body, "attempts remaining");
		CHECK_HAS(body, "automatically");
		free(subject);
		free(body);
	}
	char *subject, *body;
	render(set, DUN_EMAIL_PAYMENT_FAILED, &v, &subject, &body);
	CHECK_HAS(body, "We will try your payment method again automatically. To settle");
	free(subject);
	free(body);
	dun_template_set_destroy(set);
}

/* Phrases that promise another charge attempt or a later step. */
static const char *const promises[] = {
    "attempts remaining", "at our next attempt", "will try your payment method again",
    "keep trying",	  "unpaid on",		 "Please act before",
};

static void test_last_notice(void)
{
	struct dun_template_set *set = load_set();
	if (!set)
		return;
	struct dun_email_vars v = last_vars();
	for (int k = 0; k < DUN_EMAIL_KIND__COUNT; k++) {
		char *subject, *body;
		render(set, (enum dun_email_kind)k, &v, &subject, &body);
		for (size_t i = 0; i < sizeof promises / sizeof promises[0]; i++)
			CHECK_LACKS(body, promises[i]);
		free(subject);
		free(body);
	}

	char *subject, *body;
	render(set, DUN_EMAIL_PAYMENT_FAILED, &v, &subject, &body);
	CHECK_HAS(body, "This was our final automatic attempt: we will not try to charge your "
			"payment method again.");
	free(subject);
	free(body);

	render(set, DUN_EMAIL_CARD_UPDATE_REQUIRED, &v, &subject, &body);
	CHECK_HAS(body, "We will not try to charge your payment method again automatically");
	free(subject);
	free(body);

	/* bad_debt never promises a retry, even if a caller passed one. */
	struct dun_email_vars w = full_vars();
	render(set, DUN_EMAIL_BAD_DEBT, &w, &subject, &body);
	for (size_t i = 0; i < sizeof promises / sizeof promises[0]; i++)
		CHECK_LACKS(body, promises[i]);
	CHECK_HAS(body, "Pay the outstanding balance securely here:\nhttps://pay.example.com/");
	free(subject);
	free(body);
	dun_template_set_destroy(set);
}

static void test_empty_pay_url(void)
{
	struct dun_template_set *set = load_set();
	if (!set)
		return;
	struct dun_email_vars v = full_vars();
	v.pay_url = "";
	for (int k = 0; k < DUN_EMAIL_KIND__COUNT; k++) {
		char *subject, *body;
		render(set, (enum dun_email_kind)k, &v, &subject, &body);
		check_clean(dun_email_kind_name((enum dun_email_kind)k), subject, body);
		CHECK_LACKS(body, "http");
		CHECK_LACKS(body, "here:");
		free(subject);
		free(body);
	}
	char *subject, *body;
	render(set, DUN_EMAIL_PAYMENT_FAILED, &v, &subject, &body);
	CHECK_HAS(body, "To pay, sign in to your account and open the Billing page.");
	free(subject);
	free(body);
	render(set, DUN_EMAIL_BAD_DEBT, &v, &subject, &body);
	CHECK_HAS(body, "To settle the balance, contact us at billing@example.com.");
	free(subject);
	free(body);
	v.support_email = NULL;
	render(set, DUN_EMAIL_BAD_DEBT, &v, &subject, &body);
	CHECK_HAS(body, "To settle the balance, please contact our billing team.");
	CHECK_LACKS(body, "contact us at");
	free(subject);
	free(body);
	dun_template_set_destroy(set);
}

static void test_fallbacks(void)
{
	struct dun_template_set *set = load_set();
	if (!set)
		return;
	struct dun_email_vars v = {
	    .account_id = "acct_1", .amount_due_minor = 120000, .currency = "jpy"};
	char *subject, *body;
	render(set, DUN_EMAIL_PAYMENT_FAILED, &v, &subject, &body);
	check_clean("minimal", subject, body);
	CHECK_HAS(body, "Hello there,");
	CHECK_HAS(subject, "120000 JPY");
	CHECK_LACKS(body, "Unpaid invoices");
	CHECK_LACKS(body, "contact us");
	free(subject);
	free(body);
	dun_template_set_destroy(set);
}

static void test_money(void)
{
	char out[64];
	dun_email_money(out, sizeof out, 1234, "usd");
	CHECK_STR(out, "12.34 USD");
	dun_email_money(out, sizeof out, 5, "EUR");
	CHECK_STR(out, "0.05 EUR");
	dun_email_money(out, sizeof out, 1200, "jpy");
	CHECK_STR(out, "1200 JPY");
	dun_email_money(out, sizeof out, 1250, "kwd");
	CHECK_STR(out, "1.250 KWD");
	dun_email_money(out, sizeof out, -250, "chf");
	CHECK_STR(out, "-2.50 CHF");
	dun_email_money(out, sizeof out, 0, "usd");
	CHECK_STR(out, "0.00 USD");
	dun_email_money(out, sizeof out, 100, "");
	CHECK_STR(out, "1.00");
}

/* Parse text as a template named t.txt and expect an error. */
static void expect_error(const char *text, enum dun_err code, const char *message)
{
	struct dun_template *t = (struct dun_template *)1;
	char err[256] = "";
	CHECK_INT(dun_template_parse("t.txt", text, strlen(text), &t, err, sizeof err), code);
	CHECK(t == NULL);
	CHECK_STR(err, message);
}

static void test_errors(void)
{
	expect_error("Subject: Hi\n\nHello {{custmer_name}},\n", DUN_E_CONFIG,
		     "t.txt:3: unknown placeholder {{custmer_name}}");
	expect_error("Subject: Hi {{acount_id}}\n\nHello\n", DUN_E_CONFIG,
		     "t.txt:1: unknown placeholder {{acount_id}}");
	expect_error("# a comment\nSubject: Hi\n\nline\n{{#if pay_url}}\nPay\n", DUN_E_CONFIG,
		     "t.txt:5: {{#if pay_url}} is never closed by {{/if}}");
	expect_error("Subject: Hi\n\nline\n{{/if}}\n", DUN_E_CONFIG,
		     "t.txt:4: {{/if}} without an open {{#if}}");
	expect_error("Subject: Hi\n\n{{else}}\n", DUN_E_CONFIG,
		     "t.txt:3: {{else}} outside an {{#if}} block");
	expect_error("Subject: Hi\n\n{{#if pay_url}}a{{else}}b{{else}}c{{/if}}\n", DUN_E_CONFIG,
		     "t.txt:3: second {{else}} in the {{#if pay_url}} of line 3");
	expect_error("Subject: Hi\n\n{{#if nope}}x{{/if}}\n", DUN_E_CONFIG,
		     "t.txt:3: unknown placeholder in {{#if nope}}");
	expect_error("Subject: Hi\n\n{{#unless pay_url}}x{{/unless}}\n", DUN_E_CONFIG,
		     "t.txt:3: unknown block {{#unless pay_url}} (the only block is {{#if name}})");
	expect_error("Subject: Hi {{#if pay_url}}x\n\nbody\n", DUN_E_CONFIG,
		     "t.txt:1: {{#if pay_url}} is never closed by {{/if}}");
	expect_error("Subject: Hi\n\nHello {{account_id\n", DUN_E_CONFIG,
		     "t.txt:3: '{{' is not closed by '}}' on the same line");
	expect_error("Hello {{customer_name}},\n\nbody\n", DUN_E_CONFIG,
		     "t.txt:1: missing 'Subject:' header (a template starts with 'Subject: ...', "
		     "a blank line, then the body)");
	expect_error("", DUN_E_CONFIG, "t.txt:1: missing 'Subject:' header");
	expect_error("From: a@example.com\nSubject: Hi\n\nbody\n", DUN_E_CONFIG,
		     "t.txt:1: unknown header 'From' (only 'Subject:' is allowed)");
	expect_error("Subject: Hi\nbody\n", DUN_E_CONFIG,
		     "t.txt:2: expected a blank line between the header and the body");
	expect_error("Subject:   \n\nbody\n", DUN_E_CONFIG, "t.txt:1: empty 'Subject:' header");
	expect_error("Subject: Hi\n\n\n  \n", DUN_E_CONFIG, "t.txt:3: the body is empty");
	expect_error("Subject: Hi\nSubject: Again\n\nbody\n", DUN_E_CONFIG,
		     "t.txt:2: second 'Subject:' header");
	expect_error("Subject: {{invoice_list}}\n\nbody\n", DUN_E_CONFIG,
		     "t.txt:1: {{invoice_list}} spans several lines and cannot be used in the "
		     "Subject");
	expect_error("Subject: Hi\n\nbad \xff byte\n", DUN_E_CONFIG, "t.txt:3: is not valid UTF-8");
	expect_error("Subject: Hi\n\n"
		     "{{#if pay_url}}{{#if pay_url}}{{#if pay_url}}{{#if pay_url}}{{#if pay_url}}"
		     "{{#if pay_url}}{{#if pay_url}}{{#if pay_url}}{{#if pay_url}}",
		     DUN_E_CONFIG, "t.txt:3: {{#if}} blocks nested deeper than 8");

	/* A file that is not there: the path and the reason. */
	struct dun_template *t = NULL;
	char err[256] = "";
	CHECK_INT(dun_template_load("/nonexistent/dir/bad_debt.txt", &t, err, sizeof err),
		  DUN_E_CONFIG);
	CHECK_STR(err, "/nonexistent/dir/bad_debt.txt: cannot open template: No such file or "
		       "directory");
	CHECK(t == NULL);

	/* Too big. */
	size_t big = DUN_TEMPLATE_FILE_MAX + 1;
	char *text = dun_malloc(big);
	memset(text, 'a', big);
	CHECK_INT(dun_template_parse("big.txt", text, big, &t, err, sizeof err), DUN_E_TOO_BIG);
	free(text);
}

/* A directory with only some kinds: the set names the first missing file. */
static void test_set_missing_kind(void)
{
	char dir[] = "/tmp/dun-templates-XXXXXX";
	if (!mkdtemp(dir)) {
		CHECK_FAIL_AT("mkdtemp failed");
		return;
	}
	char path[512];
	snprintf(path, sizeof path, "%s/payment_failed.txt", dir);
	FILE *f = fopen(path, "w");
	CHECK(f != NULL);
	if (f) {
		fputs("Subject: Hi\n\nHello\n", f);
		fclose(f);
	}
	struct dun_template_set *set = (struct dun_template_set *)1;
	char err[512] = "", want[600];
	CHECK_INT(dun_template_set_load(dir, &set, err, sizeof err), DUN_E_CONFIG);
	CHECK(set == NULL);
	snprintf(want, sizeof want,
		 "%s/card_update_required.txt: cannot open template: No such file or directory",
		 dir);
	CHECK_STR(err, want);
	unlink(path);
	rmdir(dir);
}

static char *render_text(const char *text, const struct dun_email_vars *v, char **subject)
{
	struct dun_template *t = NULL;
	char err[256] = "", *body = NULL;
	CHECK_INT(dun_template_parse("t.txt", text, strlen(text), &t, err, sizeof err), DUN_OK);
	if (!t) {
		fprintf(stderr, "parse: %s\n", err);
		*subject = dun_strdup("");
		return dun_strdup("");
	}
	CHECK_INT(dun_template_render(t, v, subject, &body), DUN_OK);
	dun_template_destroy(t);
	return body;
}

static void test_blocks(void)
{
	const char *text =
	    "Subject: {{#if pay_url}}Pay{{else}}Call{{/if}} now\n"
	    "\n"
	    "A\n"
	    "  {{#if retries_left}}  \n"
	    "retry {{retries_left}}\n"
	    "{{#if pay_url}}\n"
	    "link {{pay_url}}\n"
	    "{{/if}}\n"
	    "{{else}}\n"
	    "no retry\n"
	    "{{/if}}\n"
	    "inline {{#if next_action_date}}on {{next_action_date}}{{else}}-{{/if}}.\n"
	    "Z\n";
	struct dun_email_vars v = {
	    .pay_url = "https://x", .retries_left = 1, .next_action_at = 1773532800};
	char *subject, *body = render_text(text, &v, &subject);
	CHECK_STR(subject, "Pay now");
	CHECK_STR(body, "A\nretry 1\nlink https://x\ninline on 2026-03-15.\nZ\n");
	free(subject);
	free(body);

	v.pay_url = NULL;
	v.retries_left = 0;
	v.next_action_at = 0;
	body = render_text(text, &v, &subject);
	CHECK_STR(subject, "Call now");
	CHECK_STR(body, "A\nno retry\ninline -.\nZ\n");
	free(subject);
	free(body);

	/* CRLF files read like LF files. */
	body =
	    render_text("Subject: S\r\n\r\nline one\r\n{{#if pay_url}}\r\nx\r\n{{/if}}\r\nend\r\n",
			&v, &subject);
	CHECK_STR(subject, "S");
	CHECK_STR(body, "line one\nend\n");
	free(subject);
	free(body);

	/* A value is inserted as it is, never expanded again. */
	v.customer_name = "{{pay_url}}";
	body = render_text("Subject: S\n\nHi {{customer_name}}\n", &v, &subject);
	CHECK_STR(body, "Hi {{pay_url}}\n");
	free(subject);
	free(body);
}

static void test_sanitize(void)
{
	const char *text = "Subject: Notice for {{customer_name}} ({{account_id}})\n"
			   "\n"
			   "Hello {{customer_name}},\n"
			   "{{invoice_list}}\n";
	struct dun_email_invoice inv[] = {{"in_1\r\nX-Evil: 1", 100, "usd", 0}};
	struct dun_email_vars v = {
	    .account_id = "acct\n_7",
	    .customer_name = "Eve\r\nBcc: victim@example.com\x01\x7f",
	    .invoices = inv,
	    .n_invoices = 1,
	    .currency = "usd",
	};
	char *subject, *body = render_text(text, &v, &subject);
	CHECK_STR(subject, "Notice for Eve Bcc: victim@example.com (acct _7)");
	CHECK_STR(body, "Hello Eve  Bcc: victim@example.com  ,\n- in_1  X-Evil: 1: 1.00 USD\n");
	free(subject);
	free(body);

	/* Invalid UTF-8 becomes '?', valid UTF-8 stays. */
	v.customer_name = "Jos\xc3\xa9 \xff\xfe";
	body = render_text("Subject: S\n\n{{customer_name}}\n", &v, &subject);
	CHECK_STR(body, "Jos\xc3\xa9 ??\n");
	free(subject);
	free(body);

	/* Long values are capped; the subject is capped on a character boundary. */
	char name[2000];
	for (size_t i = 0; i + 2 < sizeof name; i += 2) {
		name[i] = '\xc3';
		name[i + 1] = '\xa9';
	}
	name[sizeof name - 2] = '\0';
	v.customer_name = name;
	body = render_text("Subject: {{customer_name}}\n\n{{customer_name}}\n", &v, &subject);
	CHECK_INT(strlen(subject), DUN_TEMPLATE_SUBJECT_MAX);
	CHECK_INT(strlen(body), DUN_TEMPLATE_VALUE_MAX + 1);
	free(subject);
	free(body);
}

/* The resolved email never says "Payment received" for a debt nobody paid. */
static void test_resolved_says_how_the_debt_ended(void)
{
	struct dun_template_set *set = load_set();
	if (!set)
		return;
	static const struct {
		const char *reason, *subject, *body, *not_body;
	} cases[] = {
	    {"paid", "Payment received", "Thank you. The outstanding balance", "written off"},
	    {"written_off", "is in good standing", "We have written off the outstanding balance",
	     "Thank you. The outstanding"},
	    {"other", "is in good standing", "Nothing is owed on account acct_42 any more",
	     "written off"},
	};
	for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
		struct dun_email_vars v = last_vars();
		v.exit_reason = cases[i].reason;
		v.voided_invoice = "in_bd7";
		char *subject = NULL, *body = NULL;
		render(set, DUN_EMAIL_RESOLVED, &v, &subject, &body);
		if (!subject || !body)
			continue;
		check_clean(cases[i].reason, subject, body);
		CHECK_HAS(subject, cases[i].subject);
		CHECK_HAS(body, cases[i].body);
		CHECK_LACKS(body, cases[i].not_body);
		CHECK_HAS(body, "Invoice in_bd7, which combined your unpaid invoices, has been "
				"cancelled: please do not pay it.");
		if (strcmp(cases[i].reason, "paid") != 0)
			CHECK_LACKS(subject, "Payment received");
		free(subject);
		free(body);
	}
	dun_template_set_destroy(set);
}

int main(int argc, char **argv)
{
	if (argc != 2) {
		fprintf(stderr, "usage: %s TEMPLATE_DIR\n", argv[0]);
		return 2;
	}
	template_dir = argv[1];
	test_all_kinds_render();
	test_mid_schedule_wording();
	test_last_notice();
	test_retries_by_stripe_are_not_counted();
	test_empty_pay_url();
	test_fallbacks();
	test_money();
	test_errors();
	test_set_missing_kind();
	test_blocks();
	test_sanitize();
	test_resolved_says_how_the_debt_ended();
	return CHECK_DONE();
}
