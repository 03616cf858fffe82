/*
 * buf.c — the growable string of util/buf.h.
 */
#include "buf.h"
#include "mem.h"

#include <string.h>

void dun_buf_add(struct dun_buf *b, const char *s, size_t n)
{
	if (b->len + n + 1 > b->cap) {
		size_t cap = b->cap ? b->cap : 256;
		while (cap < b->len + n + 1)
			cap *= 2;
		b->p = dun_realloc(b->p, cap);
		b->cap = cap;
	}
	memcpy(b->p + b->len, s, n);
	b->len += n;
	b->p[b->len] = '\0';
}

void dun_buf_str(struct dun_buf *b, const char *s)
{
	dun_buf_add(b, s, strlen(s));
}
