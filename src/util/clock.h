/*
 * clock.h — the one clock of the process.
 *
 * Every component asks dun_clock_now() for the time; nothing calls time()
 * directly. Tests and the demo set it (`--now`, or advancing simulated days);
 * a service leaves it on the wall clock. Thread-safe.
 */
#ifndef DUN_CLOCK_H
#define DUN_CLOCK_H

#include <stdbool.h>
#include <stdint.h>

/* Unix seconds: the fixed time if one is set, the wall clock otherwise. */
int64_t dun_clock_now(void);
/*
 * Milliseconds of the wall clock (unix epoch), never the fixed time: leases
 * and claims are timed by it, so a process with `--now` in the future
 * cannot take another process's live claims.
 */
int64_t dun_clock_wall_ms(void);
/* Milliseconds of a monotonic clock, for timeouts and latency only. */
int64_t dun_clock_mono_ms(void);
/* Fix the clock at t (unix seconds). */
void dun_clock_set(int64_t t);
/* Move a fixed clock forward by seconds (no-op on the wall clock). */
void dun_clock_advance(int64_t seconds);
/* Back to the wall clock. */
void dun_clock_reset(void);
bool dun_clock_is_fixed(void);
/*
 * Parse a time given on the command line: unix seconds, "YYYY-MM-DD" or
 * "YYYY-MM-DDTHH:MM:SSZ" (UTC). Returns false on anything else.
 */
bool dun_clock_parse(const char *s, int64_t *out);
/* Format t as "YYYY-MM-DDTHH:MM:SSZ" into out (at least 21 bytes). */
void dun_clock_format(int64_t t, char *out, unsigned long out_size);

#endif
