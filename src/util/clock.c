/*
 * clock.c — the settable process clock (see clock.h).
 */
#include "clock.h"

#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static _Atomic int64_t fixed_now; /* 0: wall clock */

int64_t dun_clock_now(void)
{
	int64_t f = atomic_load(&fixed_now);
	if (f)
		return f;
	return (int64_t)time(NULL);
}

int64_t dun_clock_wall_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_REALTIME, &ts);
	return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

int64_t dun_clock_mono_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

int64_t dun_clock_mono_us(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

int64_t dun_clock_thread_cpu_us(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
	return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

void dun_clock_set(int64_t t)
{
	atomic_store(&fixed_now, t);
}

void dun_clock_advance(int64_t seconds)
{
	if (atomic_load(&fixed_now))
		atomic_fetch_add(&fixed_now, seconds);
}

void dun_clock_reset(void)
{
	atomic_store(&fixed_now, 0);
}

bool dun_clock_is_fixed(void)
{
	return atomic_load(&fixed_now) != 0;
}

/* Whether s is one or more ASCII digits and nothing else. */
static bool all_digits(const char *s)
{
	if (!*s)
		return false;
	for (; *s; s++)
		if (*s < '0' || *s > '9')
			return false;
	return true;
}

/* Read exactly n digits at s into *out. */
static bool digits(const char *s, int n, int *out)
{
	int v = 0;
	for (int i = 0; i < n; i++) {
		if (s[i] < '0' || s[i] > '9')
			return false;
		v = v * 10 + (s[i] - '0');
	}
	*out = v;
	return true;
}

static bool is_leap(int y)
{
	return (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
}

/*
 * A --now of 0 would mean "the wall clock" (see fixed_now), and a time
 * before 1970 or after 9999 is a typo, never a test's intent: both are
 * refused rather than silently read as something else.
 */
bool dun_clock_parse(const char *s, int64_t *out)
{
	if (!s || !*s)
		return false;
	int64_t t;
	if (all_digits(s)) {
		if (strlen(s) > 12)
			return false;
		t = (int64_t)strtoll(s, NULL, 10);
	} else {
		/* YYYY-MM-DD, optionally followed by THH:MM:SS and an optional Z. */
		size_t n = strlen(s);
		int y, mo, d, h = 0, mi = 0, sec = 0;
		if (n < 10 || !digits(s, 4, &y) || s[4] != '-' || !digits(s + 5, 2, &mo) ||
		    s[7] != '-' || !digits(s + 8, 2, &d))
			return false;
		if (n > 10) {
			if ((s[10] != 'T' && s[10] != ' ') || n < 19 || !digits(s + 11, 2, &h) ||
			    s[13] != ':' || !digits(s + 14, 2, &mi) || s[16] != ':' ||
			    !digits(s + 17, 2, &sec))
				return false;
			if (n > 20 || (n == 20 && s[19] != 'Z'))
				return false;
		}
		static const int mdays[12] = {31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31};
		if (mo < 1 || mo > 12 || d < 1 || d > mdays[mo - 1] + (mo == 2 && is_leap(y)) ||
		    h > 23 || mi > 59 || sec > 59)
			return false;
		struct tm tm;
		memset(&tm, 0, sizeof tm);
		tm.tm_year = y - 1900;
		tm.tm_mon = mo - 1;
		tm.tm_mday = d;
		tm.tm_hour = h;
		tm.tm_min = mi;
		tm.tm_sec = sec;
		t = (int64_t)timegm(&tm);
	}
	if (t < DUN_CLOCK_MIN || t > DUN_CLOCK_MAX)
		return false;
	*out = t;
	return true;
}

void dun_clock_format(int64_t t, char *out, unsigned long out_size)
{
	time_t tt = (time_t)t;
	struct tm tm;
	gmtime_r(&tt, &tm);
	strftime(out, out_size, "%Y-%m-%dT%H:%M:%SZ", &tm);
}
