/*
 * smtp.h — send one rendered email through an SMTP server (libcurl).
 *
 * The applier calls dun_smtp_send() for a DUN_C_SEND_EMAIL consequence after
 * it has recorded the intent under the email's dedup key; start-up and
 * `dunning config check` call dun_smtp_check() so a wrong host or password
 * stops the service before the first notice is due.
 *
 * Failures are mapped to the project's error codes here, once:
 *   DUN_E_EMAIL    (retryable) connection refused or lost, DNS failure, TLS
 *                  handshake failure, any 4xx reply (greylisting, mailbox
 *                  busy, 454 temporary authentication failure)
 *   DUN_E_TIMEOUT  (retryable) the server did not answer within timeout_ms
 *   DUN_E_CONFIG   (terminal) the server refuses us, not this message: 5xx to
 *                  AUTH (535 bad credentials, 530 authentication required),
 *                  to EHLO or MAIL FROM (sender not allowed), STARTTLS
 *                  required but not offered, certificate not trusted, a
 *                  malformed smtp_url; waiting will not help, an operator must
 *   DUN_E_INVALID  (terminal) the server refuses this message for good: 5xx to
 *                  RCPT TO (550 no such mailbox, 553 bad address) or to the
 *                  message itself (552 too big, 554 rejected); also a bad
 *                  address, Message-ID or header value passed in
 *   DUN_E_TOO_BIG  (terminal) the body is over DUN_SMTP_BODY_MAX
 * Error texts name the URL, the recipient, curl's reason and the server's
 * reply line; they never contain the password (credentials are refused in
 * smtp_url, and AUTH exchanges are never recorded).
 *
 * Each call opens its own connection. The process must have called
 * curl_global_init() once at start-up, before any thread starts.
 */
#ifndef DUN_EMAIL_SMTP_H
#define DUN_EMAIL_SMTP_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "util/err.h"

#define DUN_SMTP_TIMEOUT_MS_DEFAULT 30000
#define DUN_SMTP_BODY_MAX	    (256 * 1024) /* bytes of a body */
#define DUN_SMTP_LINE_MAX	    998		 /* bytes of a line, without CRLF (RFC 5322) */
#define DUN_SMTP_ADDRESS_MAX	    254		 /* bytes of an address (RFC 5321 path) */
#define DUN_SMTP_MESSAGE_ID_MAX	    250		 /* bytes of a Message-ID, without <> */

/*
 * How the connection is protected (config key smtp_tls):
 *   none      plain SMTP; refused with a password unless the host is loopback
 *   starttls  smtp:// upgraded with STARTTLS; fails if the server lacks it
 *   implicit  smtps://, TLS from the first byte
 */
enum dun_smtp_tls { DUN_SMTP_TLS_NONE, DUN_SMTP_TLS_STARTTLS, DUN_SMTP_TLS_IMPLICIT };

/*
 * The SMTP settings. Every string is borrowed for the duration of each call
 * that takes the struct; NULL and "" mean "not set".
 */
struct dun_smtp_config {
	const char *url;      /* smtp://host:port or smtps://host:port (smtp_url) */
	const char *from;     /* envelope and From: address, "billing@example.com" */
	const char *username; /* optional; AUTH is used when set */
	const char *password; /* required with username */
	enum dun_smtp_tls tls;
	long timeout_ms;     /* whole exchange; > 0 */
	const char *ca_file; /* PEM bundle to trust instead of the system's */
};

/* "none", "starttls", "implicit"; a static string. */
const char *dun_smtp_tls_name(enum dun_smtp_tls t);
/* Parse a smtp_tls value; false (and *out untouched) for anything else. */
bool dun_smtp_tls_parse(const char *s, enum dun_smtp_tls *out);

/*
 * Check the settings without touching the network: URL scheme and TLS mode
 * agree, no credentials inside the URL, the From address is well formed, a
 * password comes with the username, and no password would travel in clear
 * text to a host other than loopback. DUN_E_CONFIG with a message naming the
 * config key on failure.
 */
enum dun_err dun_smtp_config_validate(const struct dun_smtp_config *cfg, char *err,
				      size_t err_size);

/*
 * Derive the Message-ID (without angle brackets) of the email with this
 * dedup key: "dunning." + the key + "@" + the domain of from. Letters,
 * digits, '-', '_' and '/' of the key are kept; any other byte is written as
 * "=XX" (hex), so two keys never give the same id and the same key always
 * gives the same id. Writes into out (out_size bytes). DUN_E_INVALID for an
 * empty key or a from without a domain, DUN_E_TOO_BIG if it does not fit in
 * out or in DUN_SMTP_MESSAGE_ID_MAX.
 */
enum dun_err dun_smtp_message_id(const char *dedup_key, const char *from, char *out,
				 size_t out_size);

/*
 * Build the RFC 5322 message dun_smtp_send() transmits: Date (from
 * date_unix), From, To, Subject (RFC 2047 encoded when not ASCII, folded),
 * Message-ID, MIME-Version, Content-Type text/plain UTF-8, 8bit,
 * Auto-Submitted; lines end in CRLF. *out is a new heap string the caller
 * frees with free(). DUN_E_INVALID for a malformed address or Message-ID, a
 * control character in the subject or a body line over DUN_SMTP_LINE_MAX;
 * DUN_E_TOO_BIG for a body over DUN_SMTP_BODY_MAX.
 */
enum dun_err dun_smtp_build_message(const char *from, const char *to, const char *subject,
				    const char *body, const char *message_id, int64_t date_unix,
				    char **out, char *err, size_t err_size);

/*
 * Send one email to one recipient. subject is one line, body uses "\n" or
 * "\r\n" line ends, message_id is the stable id of dun_smtp_message_id()
 * (with or without its angle brackets). The Date header is dun_clock_now(). Blocks for at
 * most about cfg->timeout_ms. Borrows everything for the call; err receives a
 * one-line reason on failure. Error codes: see the top of this file.
 */
enum dun_err dun_smtp_send(const struct dun_smtp_config *cfg, const char *to, const char *subject,
			   const char *body, const char *message_id, char *err, size_t err_size);

/*
 * Connect, greet, negotiate TLS as configured and authenticate, then send
 * NOOP and QUIT: nothing is delivered. Fails with DUN_E_CONFIG as well when
 * a username is configured but the server offered no AUTH, since sends would
 * then go out unauthenticated or be refused later. Same error mapping as
 * dun_smtp_send().
 */
enum dun_err dun_smtp_check(const struct dun_smtp_config *cfg, char *err, size_t err_size);

#endif
