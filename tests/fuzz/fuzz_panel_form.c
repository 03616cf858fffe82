/*
 * fuzz_panel_form.c — fuzz target for what the support panel reads from a
 * browser and writes back into HTML (server/panel_html.c: form bodies, the
 * Cookie header, HTML and URL escaping) and for the panel's users file
 * (app/users.c), which a person edits by hand.
 *
 * Besides running under the sanitizers, each input checks what must always
 * hold: escaped text holds none of < > " ' and no & that does not start an
 * entity; a URL-encoded value holds only unreserved bytes and escapes, and
 * decodes back to the input as a form value; a decoded form value never
 * holds a NUL; the users parser never reports an entry with an invalid name.
 */
#include "app/users.h"
#include "fuzz_target.h"
#include "server/panel_html.h"

#include <stdlib.h>
#include <string.h>

static void require(bool cond)
{
	if (!cond)
		abort();
}

static bool entry_ok(const char *name, const char *hash, void *arg)
{
	(void)arg;
	require(dun_users_name_valid(name));
	require(hash[0] != '\0' && strlen(hash) < DUN_USER_HASH_MAX);
	return true;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	/* An exact-size copy, so a read past the end is caught. */
	char *in = malloc(size ? size : 1);
	require(in != NULL);
	memcpy(in, data, size);

	char out[256];
	static const char *const keys[] = {"csrf", "reason", "name", "", "a"};
	for (size_t k = 0; k < sizeof keys / sizeof keys[0]; k++) {
		enum dun_form_result r = dun_form_get(in, size, keys[k], out, sizeof out);
		if (r == DUN_FORM_FOUND)
			require(strlen(out) < sizeof out);
	}
	char err[256];
	(void)dun_users_parse(in, size, entry_ok, NULL, err, sizeof err);

	/* The rest wants a C string. */
	char *s = malloc(size + 1);
	require(s != NULL);
	memcpy(s, data, size);
	s[size] = '\0';
	(void)dun_cookie_get(s, "dunning_panel", out, sizeof out);

	struct dun_buf b = {0};
	dun_html_text(&b, s);
	if (b.p) {
		require(!strpbrk(b.p, "<>\"'"));
		for (const char *a = strchr(b.p, '&'); a; a = strchr(a + 1, '&'))
			require(!strncmp(a, "&amp;", 5) || !strncmp(a, "&lt;", 4) ||
				!strncmp(a, "&gt;", 4) || !strncmp(a, "&quot;", 6) ||
				!strncmp(a, "&#39;", 5));
	}
	free(b.p);

	struct dun_buf u = {0};
	dun_html_url(&u, s);
	if (u.p) {
		for (const char *p = u.p; *p; p++)
			require(strchr("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
				       "0123456789-._~%",
				       *p));
		/* As a form value it decodes back, unless it holds a control byte. */
		size_t n = strlen(s);
		bool control = false;
		for (size_t i = 0; i < n; i++)
			if (((unsigned char)s[i] < 0x20 && !strchr("\t\n\r", s[i])) || s[i] == 0x7f)
				control = true;
		char *form = malloc(u.len + 3);
		require(form != NULL);
		memcpy(form, "v=", 2);
		memcpy(form + 2, u.p, u.len + 1);
		char *back = malloc(n + 1);
		require(back != NULL);
		enum dun_form_result r = dun_form_get(form, u.len + 2, "v", back, n + 1);
		if (!control) {
			require(r == DUN_FORM_FOUND);
			require(strcmp(back, s) == 0);
		} else {
			require(r == DUN_FORM_MALFORMED);
		}
		free(back);
		free(form);
	}
	free(u.p);
	free(s);
	free(in);
	return 0;
}
