/*
 * buf.h — a growable, always NUL-terminated byte string for the shell
 * (the pure core uses core/text.h instead). Allocation failure aborts
 * through util/mem.h; p is NULL until the first append.
 */
#ifndef DUN_BUF_H
#define DUN_BUF_H

#include <stddef.h>

struct dun_buf {
	char *p;
	size_t len;
	size_t cap;
};

/* Append n bytes of s. */
void dun_buf_add(struct dun_buf *b, const char *s, size_t n);
/* Append the string s. */
void dun_buf_str(struct dun_buf *b, const char *s);

#endif
