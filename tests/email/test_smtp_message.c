/*
 * test_smtp_message.c — the offline half of smtp.c: settings validation,
 * Message-ID derivation and the RFC 5322 message it builds. The network half
 * is tested against a real SMTP server by tests/integration/test_smtp.py.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "apply/email/smtp.h"
#include "check.h"

#define CHECK_HAS(hay, needle)                                                               \
	do {                                                                                 \
		const char *ch_ = (hay), *cn_ = (needle);                                    \
		if (ch_ && strstr(ch_, cn_))                                                 \
			check_passed++;                                                      \
		else                                                                         \
			CHECK_FAIL_AT("expected \"%s\" in:\n%s", cn_, ch_ ? ch_ : "(null)"); \
	} while (0)

static void test_tls_names(void)
{
	enum dun_smtp_tls t = DUN_SMTP_TLS_NONE;
	CHECK(dun_smtp_tls_parse("starttls", &t));
	CHECK_INT(t, DUN_SMTP_TLS_STARTTLS);
	CHECK(dun_smtp_tls_parse("implicit", &t));
	CHECK_INT(t, DUN_SMTP_TLS_IMPLICIT);
	CHECK(dun_smtp_tls_parse("none", &t));
	CHECK_INT(t, DUN_SMTP_TLS_NONE);
	CHECK(!dun_smtp_tls_parse("ssl", &t));
	CHECK_INT(t, DUN_SMTP_TLS_NONE);
	CHECK_STR(dun_smtp_tls_name(DUN_SMTP_TLS_IMPLICIT), "implicit");
}

static void expect_config(struct dun_smtp_config cfg, enum dun_err code, const char *message)
{
	char err[256] = "";
	CHECK_INT(dun_smtp_config_validate(&cfg, err, sizeof err), code);
	if (message)
		CHECK_STR(err, message);
}

static void test_validate(void)
{
	struct dun_smtp_config ok = {.url = "smtp://mail.example.com:587",
				     .from = "billing@example.com",
				     .username = "billing",
				     .password = "s3cret",
				     .tls = DUN_SMTP_TLS_STARTTLS,
				     .timeout_ms = 1000};
	expect_config(ok, DUN_OK, "");

	struct dun_smtp_config c = ok;
	c.url = "smtps://mail.example.com:465";
	c.tls = DUN_SMTP_TLS_IMPLICIT;
	expect_config(c, DUN_OK, "");
	c.tls = DUN_SMTP_TLS_STARTTLS;
	expect_config(c, DUN_E_CONFIG,
		      "smtp_tls=starttls does not go with smtps:// (use smtp_tls=implicit, or "
		      "an smtp:// URL)");
	c = ok;
	c.tls = DUN_SMTP_TLS_IMPLICIT;
	expect_config(c, DUN_E_CONFIG,
		      "smtp_tls=implicit needs an smtps:// URL (or use smtp_tls=starttls with "
		      "smtp://)");
	c = ok;
	c.url = "smtp://billing:hunter2@mail.example.com";
	expect_config(c, DUN_E_CONFIG,
		      "smtp_url must not contain credentials; use smtp_username and "
		      "smtp_password (or DUNNING_SMTP_PASSWORD)");
	c = ok;
	c.url = "http://mail.example.com";
	expect_config(c, DUN_E_CONFIG,
		      "smtp_url 'http://mail.example.com': the scheme must be smtp:// or smtps://");
	c = ok;
	c.url = NULL;
	expect_config(c, DUN_E_CONFIG, "smtp_url is not set");
	c = ok;
	c.from = "Billing <billing@example.com>";
	expect_config(c, DUN_E_CONFIG,
		      "smtp_from 'Billing <billing@example.com>' is not a plain address like "
		      "billing@example.com");
	c = ok;
	c.password = "";
	expect_config(c, DUN_E_CONFIG,
		      "smtp_username is set but no password (smtp_password or "
		      "DUNNING_SMTP_PASSWORD)");
	c = ok;
	c.tls = DUN_SMTP_TLS_NONE;
	expect_config(c, DUN_E_CONFIG,
		      "smtp_tls=none would send the SMTP password in clear text to "
		      "mail.example.com; use starttls or implicit");
	c.url = "smtp://127.0.0.1:2525";
	expect_config(c, DUN_OK, "");
	c.url = "smtp://localhost:2525";
	expect_config(c, DUN_OK, "");
	c = ok;
	c.timeout_ms = 0;
	expect_config(c, DUN_E_CONFIG, "smtp_timeout_ms must be a positive number of milliseconds");
}

static void test_message_id(void)
{
	char id[DUN_SMTP_MESSAGE_ID_MAX + 1];
	CHECK_INT(
	    dun_smtp_message_id("acct_1/email/bad_debt/ep3", "billing@example.com", id, sizeof id),
	    DUN_OK);
	CHECK_STR(id, "dunning.acct_1/email/bad_debt/ep3@example.com");
	/* Stable: the same key gives the same id. */
	char again[DUN_SMTP_MESSAGE_ID_MAX + 1];
	dun_smtp_message_id("acct_1/email/bad_debt/ep3", "billing@example.com", again,
			    sizeof again);
	CHECK_STR(again, id);
	/* Bytes outside the kept set are escaped, so distinct keys stay distinct. */
	CHECK_INT(dun_smtp_message_id("a.b:c d=", "x@mail.example.com", id, sizeof id), DUN_OK);
	CHECK_STR(id, "dunning.a=2Eb=3Ac=20d=3D@mail.example.com");
	CHECK_INT(dun_smtp_message_id("", "x@example.com", id, sizeof id), DUN_E_INVALID);
	CHECK_INT(dun_smtp_message_id("k", "nodomain", id, sizeof id), DUN_E_INVALID);
	char small[16];
	CHECK_INT(
	    dun_smtp_message_id("acct_1/email/bad_debt/ep3", "x@example.com", small, sizeof small),
	    DUN_E_TOO_BIG);
}

static void test_build(void)
{
	char *msg = NULL, err[256] = "";
	/* 2026-11-20T10:00:00Z is a Friday. */
	CHECK_INT(dun_smtp_build_message("billing@example.com", "ada@example.org",
					 "Your payment of 12.34 USD failed",
					 "Hello Ada,\n\n.\n.hidden\nBye\n", "dunning.k@example.com",
					 1795168800, &msg, err, sizeof err),
		  DUN_OK);
	CHECK_STR(msg, "Date: Fri, 20 Nov 2026 10:00:00 +0000\r\n"
		       "From: billing@example.com\r\n"
		       "To: ada@example.org\r\n"
		       "Subject: Your payment of 12.34 USD failed\r\n"
		       "Message-ID: <dunning.k@example.com>\r\n"
		       "MIME-Version: 1.0\r\n"
		       "Content-Type: text/plain; charset=UTF-8\r\n"
		       "Content-Transfer-Encoding: 8bit\r\n"
		       "Auto-Submitted: auto-generated\r\n"
		       "\r\n"
		       "Hello Ada,\r\n\r\n.\r\n.hidden\r\nBye\r\n");
	free(msg);

	/* Long ASCII subjects fold at spaces; non-ASCII ones become encoded-words. */
	CHECK_INT(dun_smtp_build_message("a@example.com", "b@example.com",
					 "Action required: please add a new card for account "
					 "acct_0123456789 before the next attempt",
					 "x\r\ny", "i@example.com", 0, &msg, err, sizeof err),
		  DUN_OK);
	CHECK_HAS(msg, "Subject: Action required: please add a new card for account "
		       "acct_0123456789\r\n before the next attempt\r\n");
	CHECK_HAS(msg, "\r\n\r\nx\r\ny\r\n");
	free(msg);
	CHECK_INT(dun_smtp_build_message("a@example.com", "b@example.com",
					 "Zahlung fehlgeschlagen: 12,34 \xe2\x82\xac", "b",
					 "i@example.com", 0, &msg, err, sizeof err),
		  DUN_OK);
	CHECK_HAS(msg, "Subject: =?UTF-8?B?WmFobHVuZyBmZWhsZ2VzY2hsYWdlbjogMTIsMzQg4oKs?=\r\n");
	free(msg);

	/* Header injection and malformed input are refused, not repaired. */
	CHECK_INT(dun_smtp_build_message("a@example.com", "b@example.com", "Hi\r\nBcc: c@evil", "b",
					 "i@example.com", 0, &msg, err, sizeof err),
		  DUN_E_INVALID);
	CHECK_STR(err, "subject contains a control character (CR, LF, ...)");
	CHECK(msg == NULL);
	CHECK_INT(dun_smtp_build_message("a@example.com", "b@example.com\r\nBcc: c@evil", "Hi", "b",
					 "i@example.com", 0, &msg, err, sizeof err),
		  DUN_E_INVALID);
	CHECK_INT(dun_smtp_build_message("a@example.com", "b@example.com", "Hi", "b",
					 "i@example.com>\r\nBcc: c@evil", 0, &msg, err, sizeof err),
		  DUN_E_INVALID);
	CHECK_INT(dun_smtp_build_message("a@example.com", "two@ats@example.com", "Hi", "b",
					 "i@example.com", 0, &msg, err, sizeof err),
		  DUN_E_INVALID);
	char *long_line = malloc(DUN_SMTP_LINE_MAX + 3);
	memset(long_line, 'x', DUN_SMTP_LINE_MAX + 1);
	strcpy(long_line + DUN_SMTP_LINE_MAX + 1, "\n");
	CHECK_INT(dun_smtp_build_message("a@example.com", "b@example.com", "Hi", long_line,
					 "i@example.com", 0, &msg, err, sizeof err),
		  DUN_E_INVALID);
	CHECK_STR(err, "body line 1 is 999 bytes; SMTP allows 998");
	free(long_line);
}

int main(void)
{
	test_tls_names();
	test_validate();
	test_message_id();
	test_build();
	return CHECK_DONE();
}
