/*
 * text.c — bounded string building for the pure core (see text.h).
 */
#include "text.h"

#include <string.h>

void dun_text_init(struct dun_text *t, char *buf, size_t cap)
{
	t->buf = buf;
	t->cap = cap;
	t->len = 0;
	if (cap)
		buf[0] = '\0';
}

void dun_text_str(struct dun_text *t, const char *s)
{
	if (!t->cap)
		return;
	while (*s && t->len + 1 < t->cap)
		t->buf[t->len++] = *s++;
	t->buf[t->len] = '\0';
}

static bool key_plain(unsigned char c)
{
	return c > 0x20 && c < 0x7f && c != '/' && c != '%' && c != '~';
}

void dun_text_key_part(struct dun_text *t, const char *s)
{
	static const char hex[] = "0123456789abcdef";
	size_t n = 0;
	for (const unsigned char *p = (const unsigned char *)s; *p; p++)
		n += key_plain(*p) ? 1 : 3;
	char part[DUN_KEY_PART_MAX + 1];
	size_t k = 0;
	if (n <= DUN_KEY_PART_MAX) {
		for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
			if (key_plain(*p)) {
				part[k++] = (char)*p;
			} else {
				part[k++] = '%';
				part[k++] = hex[*p >> 4];
				part[k++] = hex[*p & 15];
			}
		}
	} else {
		uint64_t h = 14695981039346656037ULL;
		for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
			h ^= *p;
			h *= 1099511628211ULL;
		}
		part[k++] = '~';
		for (int i = 15; i >= 0; i--)
			part[k++] = hex[(h >> (i * 4)) & 15];
	}
	part[k] = '\0';
	dun_text_str(t, part);
}

void dun_text_i64(struct dun_text *t, int64_t v)
{
	char tmp[24];
	int i = 0;
	uint64_t u = v < 0 ? (uint64_t)0 - (uint64_t)v : (uint64_t)v;
	do {
		tmp[i++] = (char)('0' + u % 10);
		u /= 10;
	} while (u);
	if (v < 0)
		tmp[i++] = '-';
	char out[24];
	int j = 0;
	while (i)
		out[j++] = tmp[--i];
	out[j] = '\0';
	dun_text_str(t, out);
}

void dun_text_duration(struct dun_text *t, int64_t s)
{
	/* The two largest non-zero units: "7d", "1d 4h", "1h 58m", "45s". */
	static const struct {
		int64_t seconds;
		const char *unit;
	} units[] = {{86400, "d"}, {3600, "h"}, {60, "m"}, {1, "s"}};
	if (s < 0) {
		dun_text_str(t, "-");
		s = -s;
	}
	if (s == 0) {
		dun_text_str(t, "0s");
		return;
	}
	int shown = 0;
	for (size_t i = 0; i < sizeof units / sizeof units[0] && shown < 2; i++) {
		int64_t n = s / units[i].seconds;
		if (n == 0) {
			if (shown)
				break; /* "1d 0h 5m" would mislead: stop at a gap */
			continue;
		}
		if (shown)
			dun_text_str(t, " ");
		dun_text_i64(t, n);
		dun_text_str(t, units[i].unit);
		s -= n * units[i].seconds;
		shown++;
	}
}

void dun_text_duration_exact(struct dun_text *t, int64_t s)
{
	if (s != 0 && s % 86400 == 0) {
		dun_text_i64(t, s / 86400);
		dun_text_str(t, "d");
	} else if (s != 0 && s % 3600 == 0) {
		dun_text_i64(t, s / 3600);
		dun_text_str(t, "h");
	} else if (s != 0 && s % 60 == 0) {
		dun_text_i64(t, s / 60);
		dun_text_str(t, "m");
	} else {
		dun_text_i64(t, s);
		dun_text_str(t, "s");
	}
}

void dun_text_money(struct dun_text *t, int64_t minor, const char *currency)
{
	uint64_t u = minor < 0 ? (uint64_t)0 - (uint64_t)minor : (uint64_t)minor;
	if (minor < 0)
		dun_text_str(t, "-");
	dun_text_i64(t, (int64_t)(u / 100));
	dun_text_str(t, ".");
	if (u % 100 < 10)
		dun_text_str(t, "0");
	dun_text_i64(t, (int64_t)(u % 100));
	dun_text_str(t, " ");
	char cur[8];
	size_t i;
	for (i = 0; currency && currency[i] && i < sizeof cur - 1; i++) {
		char c = currency[i];
		cur[i] = (c >= 'a' && c <= 'z') ? (char)(c - 'a' + 'A') : c;
	}
	cur[i] = '\0';
	dun_text_str(t, cur);
}

void dun_strlcpy(char *dst, const char *src, size_t size)
{
	if (!size)
		return;
	size_t n = strlen(src);
	if (n >= size)
		n = size - 1;
	memcpy(dst, src, n);
	dst[n] = '\0';
}

bool dun_list_has(const char *list, const char *p, size_t n)
{
	for (const char *q = list; *q;) {
		const char *end = strchr(q, ',');
		size_t len = end ? (size_t)(end - q) : strlen(q);
		if (len == n && !memcmp(q, p, n))
			return true;
		if (!end)
			break;
		q = end + 1;
	}
	return false;
}
