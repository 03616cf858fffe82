/*
 * pct.c — strict percent-decoding of URL path segments (see pct.h). It
 * sits in front of routing: the HTTP server validates the raw path with it
 * and decodes the captured segments before a handler sees them.
 */
#include "pct.h"

static int hex(char c)
{
	if (c >= '0' && c <= '9')
		return c - '0';
	if (c >= 'a' && c <= 'f')
		return c - 'a' + 10;
	if (c >= 'A' && c <= 'F')
		return c - 'A' + 10;
	return -1;
}

/* The byte of the escape at s (s[0] == '%'), or -1 when malformed or NUL. */
static int escape_at(const char *s, size_t left)
{
	if (left < 3)
		return -1;
	int hi = hex(s[1]), lo = hex(s[2]);
	if (hi < 0 || lo < 0 || (hi == 0 && lo == 0))
		return -1;
	return hi * 16 + lo;
}

bool dun_pct_valid(const char *in, size_t n)
{
	for (size_t i = 0; i < n; i++) {
		if (in[i] == '\0')
			return false;
		if (in[i] != '%')
			continue;
		if (escape_at(in + i, n - i) < 0)
			return false;
		i += 2;
	}
	return true;
}

bool dun_pct_decode(const char *in, size_t n, char *out, size_t out_size, bool *too_long)
{
	*too_long = false;
	if (out_size == 0)
		return false;
	size_t o = 0;
	for (size_t i = 0; i < n; i++) {
		int c = (unsigned char)in[i];
		if (c == '\0')
			goto malformed;
		if (c == '%') {
			c = escape_at(in + i, n - i);
			if (c < 0)
				goto malformed;
			i += 2;
		}
		if (o + 1 >= out_size) {
			*too_long = true;
			goto malformed;
		}
		out[o++] = (char)c;
	}
	out[o] = '\0';
	return true;
malformed:
	out[0] = '\0';
	return false;
}
