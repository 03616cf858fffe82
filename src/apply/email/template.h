/*
 * template.h — the text of the dunning emails, one template file per kind.
 *
 * A template file (templates/<kind>.txt) is a header block, a blank line and
 * the body:
 *
 *   # Comment lines (starting with '#') are allowed in the header block.
 *   Subject: Your payment of {{amount_due}} could not be processed
 *
 *   Hello {{customer_name}},
 *   {{#if pay_url}}
 *   Pay here: {{pay_url}}
 *   {{else}}
 *   Sign in to your account to pay.
 *   {{/if}}
 *
 * {{name}} inserts a value, {{#if name}} ... {{else}} ... {{/if}} keeps one
 * branch (blocks nest; {{else}} is optional). A line holding nothing but one
 * block tag disappears with its line break, so blocks can sit on their own
 * lines. The placeholders and what makes them "true" in an {{#if}} are listed
 * in docs/email.md and in the table in template.c.
 *
 * Templates are checked when they are loaded, not when an email is due: an
 * unknown placeholder, an unbalanced block or a missing Subject is an error
 * naming the file and the line, so a bad template stops start-up instead of
 * a customer notice. Rendering a loaded template cannot fail.
 *
 * Every inserted value is sanitized: control characters (CR and LF included)
 * become spaces, so a customer name cannot add header lines or fake body
 * lines, and the rendered subject is one line of at most
 * DUN_TEMPLATE_SUBJECT_MAX bytes.
 *
 * This file belongs to EXECUTE: the applier renders the email of a
 * DUN_C_SEND_EMAIL consequence and hands it to smtp.h.
 */
#ifndef DUN_EMAIL_TEMPLATE_H
#define DUN_EMAIL_TEMPLATE_H

#include <stddef.h>
#include <stdint.h>

#include "core/model.h"
#include "util/err.h"

#define DUN_TEMPLATE_FILE_MAX	 (64 * 1024) /* bytes of one template file */
#define DUN_TEMPLATE_SUBJECT_MAX 200	     /* bytes of a rendered subject */
#define DUN_TEMPLATE_VALUE_MAX	 512	     /* bytes of one inserted value */
#define DUN_TEMPLATE_DEPTH_MAX	 8	     /* nesting of {{#if}} blocks */

/* One line of {{invoice_list}}. */
struct dun_email_invoice {
	const char *id;
	int64_t amount_minor;
	const char *currency; /* NULL or "": the email's currency */
	int64_t issued_at;    /* unix seconds; 0: the date is left out */
};

/*
 * The values of one email. All pointers are borrowed for the duration of
 * dun_template_render(); NULL reads as "". A zero or empty value is "false"
 * in an {{#if}}.
 */
struct dun_email_vars {
	const char *account_id;
	const char *customer_name; /* "" renders as "there" ("Hello there,") */
	int64_t amount_due_minor;
	const char *currency; /* ISO 4217 code, any case: "usd", "EUR" */
	const struct dun_email_invoice *invoices;
	int n_invoices;
	/*
	 * The live hosted payment link. The caller passes "" when the invoice
	 * is paid or void, or when there is nothing to pay: templates must read
	 * well without it.
	 */
	const char *pay_url;
	int64_t next_action_at;	 /* unix seconds of the next consequence; 0: none */
	const char *next_action; /* a clause: "your account will be suspended" */
	int retries_left;	 /* automatic payment retries still scheduled */
	/*
	 * Whether retries_left is an exact count: the engine retries. When
	 * the provider does ([retries] owner = stripe), it says only whether
	 * it will try again (retries_left 1) or not (0).
	 */
	bool retries_counted;
	const char *support_email;
	/*
	 * How the debt ended (the resolved email): "paid" by the customer,
	 * "written_off" by the merchant, "other", or "" (not an ending).
	 */
	const char *exit_reason;
	const char *voided_invoice; /* a consolidated invoice voided as nothing is owed, or "" */
};

struct dun_template;

/*
 * Parse a template from memory. name is used in error messages only
 * (normally the file path). On success *out is a new template the caller
 * releases with dun_template_destroy(); on failure *out is NULL and err holds
 * "name:line: what is wrong". text need not be NUL-terminated and is copied.
 * Errors: DUN_E_CONFIG (bad template), DUN_E_TOO_BIG (over
 * DUN_TEMPLATE_FILE_MAX).
 */
enum dun_err dun_template_parse(const char *name, const char *text, size_t len,
				struct dun_template **out, char *err, size_t err_size);

/*
 * Read and parse the template file at path (see dun_template_parse). A file
 * that cannot be opened is DUN_E_CONFIG with the path and strerror; a read
 * error is DUN_E_IO.
 */
enum dun_err dun_template_load(const char *path, struct dun_template **out, char *err,
			       size_t err_size);

/* Release a template; NULL is a no-op. */
void dun_template_destroy(struct dun_template *t);

/*
 * Render t with v. *subject and *body are new heap strings the caller frees
 * with free(); the subject is one sanitized line, the body uses "\n" line
 * ends (smtp.h turns them into CRLF). Borrows t and v for the call only.
 * Returns DUN_E_INVALID only for a NULL argument.
 */
enum dun_err dun_template_render(const struct dun_template *t, const struct dun_email_vars *v,
				 char **subject, char **body);

/*
 * Format an amount for an email: "12.34 USD", "1200 JPY", "1.250 KWD" — the
 * number with the currency's own number of decimals (none for zero-decimal
 * currencies such as jpy, three for bhd, jod, kwd, omr, tnd, two otherwise),
 * no thousands separator, a space, and the upper-case ISO code. Writes at
 * most out_size bytes, always terminated.
 */
void dun_email_money(char *out, size_t out_size, int64_t minor, const char *currency);

/* The templates of all email kinds, loaded from one directory. */
struct dun_template_set;

/*
 * Load <dir>/<kind>.txt for every enum dun_email_kind. Fails on the first
 * missing or invalid file, naming it; on success *out is a new set the
 * caller releases with dun_template_set_destroy().
 */
enum dun_err dun_template_set_load(const char *dir, struct dun_template_set **out, char *err,
				   size_t err_size);

/* The template of one kind; lives as long as the set. Never NULL. */
const struct dun_template *dun_template_set_get(const struct dun_template_set *s,
						enum dun_email_kind kind);

/* Release a set and its templates; NULL is a no-op. */
void dun_template_set_destroy(struct dun_template_set *s);

#endif
