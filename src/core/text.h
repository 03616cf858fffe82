/*
 * text.h — a bounded string builder for the pure core.
 *
 * The core may not use stdio, so reasons and keys are built with these few
 * appenders. Output is always NUL-terminated and silently truncated at the
 * buffer's end (a reason line is informative, never parsed).
 */
#ifndef DUN_TEXT_H
#define DUN_TEXT_H

#include <stddef.h>
#include <stdint.h>
#include <stdbool.h>

struct dun_text {
	char *buf;
	size_t cap;
	size_t len;
};

/* Point t at buf (cap bytes, cap >= 1) and make it the empty string. */
void dun_text_init(struct dun_text *t, char *buf, size_t cap);
void dun_text_str(struct dun_text *t, const char *s);
void dun_text_i64(struct dun_text *t, int64_t v);
/* A duration in seconds by its two largest units: "7d", "1d 12h", "1h 30m", "45s". */
void dun_text_duration(struct dun_text *t, int64_t seconds);
/* A duration exactly, in its largest exact unit: "7d", "36h", "90m", "45s" (policy files). */
void dun_text_duration_exact(struct dun_text *t, int64_t seconds);
/* An amount in minor units as "12.34 USD" (two decimals; currency upper-cased). */
void dun_text_money(struct dun_text *t, int64_t minor, const char *currency);

/*
 * s as one part of an idempotency key: printable ASCII, never '/', so parts
 * joined by '/' can be told apart whatever the ids contain. Every byte that
 * is printable ASCII other than '/', '%', '~' is kept (so the keys of
 * ordinary ids are unchanged); any other byte is written %XX; a part whose
 * escaped form is longer than DUN_KEY_PART_MAX is written ~ and a stable
 * 64-bit hash (FNV-1a) of its bytes instead. The three forms cannot meet:
 * only escaped parts hold '%', only hashed parts start with '~'.
 */
#define DUN_KEY_PART_MAX 63
void dun_text_key_part(struct dun_text *t, const char *s);

/* Copy src into dst (size bytes), truncating; dst is always terminated. */
void dun_strlcpy(char *dst, const char *src, size_t size);

/* Whether the comma-separated list has the item p (its first n bytes). */
bool dun_list_has(const char *list, const char *p, size_t n);

#endif
