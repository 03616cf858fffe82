/*
 * log.c — logfmt lines to stderr (see log.h). A whole line is built in a
 * buffer and written with one call, so lines of concurrent threads do not
 * interleave. Values are escaped (see put_value): a line is always one
 * line, whatever a client sent.
 */
#include "log.h"
#include "clock.h"

#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

static _Atomic int min_level = DUN_LOG_INFO;

void dun_log_set_level(enum dun_log_level lvl)
{
	atomic_store(&min_level, (int)lvl);
}

static const char *level_name(enum dun_log_level l)
{
	switch (l) {
	case DUN_LOG_DEBUG:
		return "debug";
	case DUN_LOG_INFO:
		return "info";
	case DUN_LOG_WARN:
		return "warn";
	case DUN_LOG_ERROR:
		return "error";
	}
	return "info";
}

/*
 * A value as logfmt: quoted when it holds a space, a quote, "=" or any
 * control character; inside, a quote and a backslash are escaped and every
 * control character (C0 and DEL) is written as an escape (\n, \r, \t or
 * \xHH), so outside input (ids, paths, bodies) can neither break a line
 * nor send escape sequences to an operator's terminal. A value that does
 * not fit is cut at a whole character or escape.
 */
static void put_value(char *buf, size_t cap, size_t *len, const char *v)
{
	bool quote = !*v;
	for (const char *p = v; *p && !quote; p++) {
		unsigned char c = (unsigned char)*p;
		quote = c == ' ' || c == '"' || c == '=' || c < 0x20 || c == 0x7f;
	}
	if (quote && *len < cap)
		buf[(*len)++] = '"';
	/* Room for the longest escape (4 bytes) and the closing quote. */
	for (; *v && *len + 5 < cap; v++) {
		unsigned char c = (unsigned char)*v;
		if (c == '"' || c == '\\') {
			buf[(*len)++] = '\\';
			buf[(*len)++] = (char)c;
		} else if (c == '\n' || c == '\r' || c == '\t') {
			buf[(*len)++] = '\\';
			buf[(*len)++] = c == '\n' ? 'n' : c == '\r' ? 'r' : 't';
		} else if (c < 0x20 || c == 0x7f) {
			static const char digits[] = "0123456789abcdef";
			buf[(*len)++] = '\\';
			buf[(*len)++] = 'x';
			buf[(*len)++] = digits[c >> 4];
			buf[(*len)++] = digits[c & 15];
		} else {
			buf[(*len)++] = (char)c;
		}
	}
	if (quote && *len < cap)
		buf[(*len)++] = '"';
}

void dun_log(enum dun_log_level lvl, const char *event, ...)
{
	if ((int)lvl < atomic_load(&min_level))
		return;
	char buf[2048];
	char ts[32];
	dun_clock_format(dun_clock_now(), ts, sizeof ts);
	int n = snprintf(buf, sizeof buf, "ts=%s level=%s event=%s", ts, level_name(lvl), event);
	size_t len = n > 0 ? (size_t)n : 0;
	va_list ap;
	va_start(ap, event);
	for (;;) {
		const char *k = va_arg(ap, const char *);
		if (!k)
			break;
		const char *v = va_arg(ap, const char *);
		if (len + 4 >= sizeof buf)
			break;
		buf[len++] = ' ';
		size_t kl = strlen(k);
		if (len + kl + 2 >= sizeof buf)
			break;
		memcpy(buf + len, k, kl);
		len += kl;
		buf[len++] = '=';
		put_value(buf, sizeof buf - 1, &len, v ? v : "");
	}
	va_end(ap);
	buf[len++] = '\n';
	ssize_t w = write(2, buf, len);
	(void)w;
}
