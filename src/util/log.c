/*
 * log.c — logfmt lines to stderr (see log.h). A whole line is built in a
 * buffer and written with one call, so lines of concurrent threads do not
 * interleave.
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

static void put_value(char *buf, size_t cap, size_t *len, const char *v)
{
	bool quote = !*v || strpbrk(v, " \"=\t\n") != NULL;
	if (quote && *len < cap)
		buf[(*len)++] = '"';
	for (; *v && *len + 2 < cap; v++) {
		if (*v == '"' || *v == '\\')
			buf[(*len)++] = '\\';
		buf[(*len)++] = (*v == '\n') ? ' ' : *v;
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
