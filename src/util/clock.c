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

bool dun_clock_parse(const char *s, int64_t *out)
{
	if (!s || !*s)
		return false;
	char *end;
	long long v = strtoll(s, &end, 10);
	if (*end == '\0' && v > 0) {
		*out = v;
		return true;
	}
	struct tm tm;
	memset(&tm, 0, sizeof tm);
	const char *rest = strptime(s, "%Y-%m-%d", &tm);
	if (!rest)
		return false;
	if (*rest == 'T' || *rest == ' ') {
		rest = strptime(rest + 1, "%H:%M:%S", &tm);
		if (!rest)
			return false;
		if (*rest == 'Z')
			rest++;
	}
	if (*rest)
		return false;
	*out = (int64_t)timegm(&tm);
	return true;
}

void dun_clock_format(int64_t t, char *out, unsigned long out_size)
{
	time_t tt = (time_t)t;
	struct tm tm;
	gmtime_r(&tt, &tm);
	strftime(out, out_size, "%Y-%m-%dT%H:%M:%SZ", &tm);
}
