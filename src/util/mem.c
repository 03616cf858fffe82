/*
 * mem.c — the allocation wrappers (see mem.h).
 */
#include "mem.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

_Noreturn void dun_oom(void)
{
	static const char msg[] = "dunning: out of memory\n";
	ssize_t w = write(2, msg, sizeof msg - 1);
	(void)w;
	abort();
}

void *dun_malloc(size_t n)
{
	void *p = malloc(n ? n : 1);
	if (!p)
		dun_oom();
	return p;
}

void *dun_calloc(size_t count, size_t size)
{
	void *p = calloc(count ? count : 1, size ? size : 1);
	if (!p)
		dun_oom();
	return p;
}

void *dun_realloc(void *p, size_t n)
{
	void *q = realloc(p, n ? n : 1);
	if (!q)
		dun_oom();
	return q;
}

char *dun_strdup(const char *s)
{
	size_t n = strlen(s) + 1;
	char *p = dun_malloc(n);
	memcpy(p, s, n);
	return p;
}

char *dun_asprintf(const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	char *out = NULL;
	int n = vasprintf(&out, fmt, ap);
	va_end(ap);
	if (n < 0)
		dun_oom();
	return out;
}
