/*
 * mem.h — allocation that never returns NULL.
 *
 * Running out of memory aborts through dun_oom(), the one place that does;
 * size limits on outside input are separate and enforced where the input is
 * read (they answer "too big", they never abort).
 */
#ifndef DUN_MEM_H
#define DUN_MEM_H

#include <stddef.h>

void *dun_malloc(size_t n);
void *dun_calloc(size_t count, size_t size);
void *dun_realloc(void *p, size_t n);
char *dun_strdup(const char *s);
/* printf into a new heap string the caller frees. */
char *dun_asprintf(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
_Noreturn void dun_oom(void);

#endif
