/*
 * panel_html.c — escaping and the form and cookie parsers of the support
 * panel (see panel_html.h). Every value the panel prints goes through
 * dun_html_text() or dun_html_url(); every value it reads from a browser
 * comes through dun_form_get() or dun_cookie_get(), which refuse anything
 * malformed rather than guess.
 */
#include "panel_html.h"

#include <string.h>

void dun_html_text(struct dun_buf *b, const char *s)
{
	if (!s)
		return;
	const char *run = s;
	for (; *s; s++) {
		const char *rep = NULL;
		switch (*s) {
		case '&':
			rep = "&amp;";
			break;
		case '<':
			rep = "&lt;";
			break;
		case '>':
			rep = "&gt;";
			break;
		case '"':
			rep = "&quot;";
			break;
		case '\'':
			rep = "&#39;";
			break;
		}
		if (!rep)
			continue;
		dun_buf_add(b, run, (size_t)(s - run));
		dun_buf_str(b, rep);
		run = s + 1;
	}
	dun_buf_add(b, run, (size_t)(s - run));
}

void dun_html_url(struct dun_buf *b, const char *s)
{
	static const char hex[] = "0123456789ABCDEF";
	if (!s)
		return;
	for (; *s; s++) {
		unsigned char c = (unsigned char)*s;
		bool plain = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
			     (c >= '0' && c <= '9') || c == '-' || c == '.' || c == '_' || c == '~';
		if (plain) {
			dun_buf_add(b, s, 1);
		} else {
			char e[3] = {'%', hex[c >> 4], hex[c & 15]};
			dun_buf_add(b, e, 3);
		}
	}
}

static int hexval(char c)
{
	if (c >= '0' && c <= '9')
		return c - '0';
	if (c >= 'a' && c <= 'f')
		return c - 'a' + 10;
	if (c >= 'A' && c <= 'F')
		return c - 'A' + 10;
	return -1;
}

/* Decode n bytes of a form value into out. */
static enum dun_form_result decode(const char *s, size_t n, char *out, size_t out_size)
{
	size_t o = 0;
	for (size_t i = 0; i < n; i++) {
		unsigned char c = (unsigned char)s[i];
		if (c == '+') {
			c = ' ';
		} else if (c == '%') {
			if (i + 2 >= n)
				return DUN_FORM_MALFORMED;
			int hi = hexval(s[i + 1]), lo = hexval(s[i + 2]);
			if (hi < 0 || lo < 0)
				return DUN_FORM_MALFORMED;
			c = (unsigned char)(hi * 16 + lo);
			i += 2;
		}
		if (c == 0 || (c < 0x20 && c != '\t' && c != '\n' && c != '\r') || c == 0x7f)
			return DUN_FORM_MALFORMED;
		if (o + 1 >= out_size)
			return DUN_FORM_TOO_LONG;
		out[o++] = (char)c;
	}
	if (out_size == 0)
		return DUN_FORM_TOO_LONG;
	out[o] = '\0';
	return DUN_FORM_FOUND;
}

enum dun_form_result dun_form_get(const char *body, size_t len, const char *key, char *out,
				  size_t out_size)
{
	size_t kl = strlen(key);
	size_t pos = 0;
	while (pos < len) {
		const char *s = body + pos;
		const char *amp = memchr(s, '&', len - pos);
		size_t n = amp ? (size_t)(amp - s) : len - pos;
		pos += n + (amp ? 1 : 0);
		if (n > kl && !memcmp(s, key, kl) && s[kl] == '=')
			return decode(s + kl + 1, n - kl - 1, out, out_size);
		if (n == kl && !memcmp(s, key, kl))
			return decode(s, 0, out, out_size);
	}
	return DUN_FORM_ABSENT;
}

enum dun_form_result dun_cookie_get(const char *header, const char *name, char *out,
				    size_t out_size)
{
	if (!header)
		return DUN_FORM_ABSENT;
	size_t nl = strlen(name);
	const char *p = header;
	while (*p) {
		while (*p == ' ' || *p == ';' || *p == '\t')
			p++;
		const char *end = strchr(p, ';');
		size_t n = end ? (size_t)(end - p) : strlen(p);
		if (n > nl && !memcmp(p, name, nl) && p[nl] == '=') {
			size_t vl = n - nl - 1;
			const char *v = p + nl + 1;
			while (vl && (v[vl - 1] == ' ' || v[vl - 1] == '\t'))
				vl--;
			if (vl >= out_size)
				return DUN_FORM_TOO_LONG;
			for (size_t i = 0; i < vl; i++)
				if ((unsigned char)v[i] < 0x21 || (unsigned char)v[i] > 0x7e)
					return DUN_FORM_MALFORMED;
			memcpy(out, v, vl);
			out[vl] = '\0';
			return DUN_FORM_FOUND;
		}
		p += n;
	}
	return DUN_FORM_ABSENT;
}
