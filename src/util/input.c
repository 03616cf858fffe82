/*
 * input.c — strict readers of typed values and URL redaction (see
 * input.h). Used by the CLI's argument parsing and by every module that
 * puts a configured URL into an error message, before anything reaches the
 * pipeline.
 */
#include "input.h"

#include <stdlib.h>
#include <string.h>

static bool is_digit(char c)
{
	return c >= '0' && c <= '9';
}

bool dun_input_parse_decimal(const char *s, double *out)
{
	if (!s || !is_digit(s[0]) || strlen(s) > 15)
		return false;
	const char *p = s;
	while (is_digit(*p))
		p++;
	if (*p == '.') {
		p++;
		if (!is_digit(*p))
			return false;
		while (is_digit(*p))
			p++;
	}
	if (*p)
		return false;
	*out = strtod(s, NULL);
	return true;
}

bool dun_input_parse_count(const char *s, int64_t max, int64_t *out)
{
	if (!s || !*s)
		return false;
	int64_t v = 0;
	for (const char *p = s; *p; p++) {
		if (!is_digit(*p))
			return false;
		int d = *p - '0';
		if (v > (max - d) / 10)
			return false;
		v = v * 10 + d;
	}
	*out = v;
	return true;
}

/* Append n bytes of s to out at *len, keeping room for the NUL. */
static void put(char *out, size_t out_size, size_t *len, const char *s, size_t n)
{
	if (*len + 1 >= out_size)
		return;
	size_t room = out_size - 1 - *len;
	if (n > room)
		n = room;
	memcpy(out + *len, s, n);
	*len += n;
	out[*len] = '\0';
}

void dun_input_redact_url(const char *url, char *out, size_t out_size)
{
	if (!out_size)
		return;
	out[0] = '\0';
	if (!url)
		return;
	size_t len = 0;
	const char *p = url;
	const char *scheme_end = strstr(url, "://");
	if (scheme_end) {
		put(out, out_size, &len, url, (size_t)(scheme_end + 3 - url));
		p = scheme_end + 3;
	}
	/* The authority runs to the first '/', '?' or '#'. */
	size_t auth_len = strcspn(p, "/?#");
	const char *at = NULL;
	for (size_t i = 0; i < auth_len; i++)
		if (p[i] == '@')
			at = p + i;
	if (at) {
		put(out, out_size, &len, "***", 3);
		put(out, out_size, &len, at, (size_t)(p + auth_len - at));
	} else {
		put(out, out_size, &len, p, auth_len);
	}
	p += auth_len;
	size_t path_len = strcspn(p, "?#");
	put(out, out_size, &len, p, path_len);
	p += path_len;
	if (*p == '?') {
		put(out, out_size, &len, "?***", 4);
		p += strcspn(p, "#");
	}
	if (*p == '#')
		put(out, out_size, &len, "#***", 4);
}
