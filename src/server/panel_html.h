/*
 * panel_html.h — the small parsers and writers of the support panel that
 * touch outside input: HTML escaping, URL encoding, form bodies
 * (application/x-www-form-urlencoded) and the Cookie header. Pure (no I/O),
 * so a fuzz target (tests/fuzz/fuzz_panel_form.c) can drive all of it.
 */
#ifndef DUN_PANEL_HTML_H
#define DUN_PANEL_HTML_H

#include <stdbool.h>
#include <stddef.h>

#include "util/buf.h"

/* Append s with & < > " ' escaped: safe in element text and in a quoted attribute. */
void dun_html_text(struct dun_buf *b, const char *s);
/* Append s percent-encoded as one URL path segment or query value (all but A-Z a-z 0-9 - . _ ~). */
void dun_html_url(struct dun_buf *b, const char *s);

/* What dun_form_get() and dun_cookie_get() found. */
enum dun_form_result {
	DUN_FORM_FOUND,
	DUN_FORM_ABSENT,
	DUN_FORM_MALFORMED, /* a bad %-escape, %00, or a control byte */
	DUN_FORM_TOO_LONG,  /* the value does not fit out */
};

/*
 * The value of key in a form body (len bytes, need not be NUL-terminated),
 * decoded ('+' is a space, %XX a byte) into out. The first occurrence
 * counts. A value may hold tabs and line breaks (a reason typed in a text
 * area) but no other control byte.
 */
enum dun_form_result dun_form_get(const char *body, size_t len, const char *key, char *out,
				  size_t out_size);

/* The value of cookie name in a Cookie header ("a=1; b=2"), taken as is. */
enum dun_form_result dun_cookie_get(const char *header, const char *name, char *out,
				    size_t out_size);

#endif
