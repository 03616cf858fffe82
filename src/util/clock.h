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
/* The same clock in microseconds: for bounding short work (a batch's budget). */
int64_t dun_clock_mono_us(void);
/*
 * Microseconds of CPU the calling thread has used: for bounding work by
 * what it costs rather than by how long it waited for busy CPUs.
 */
int64_t dun_clock_thread_cpu_us(void);
/* Fix the clock at t (unix seconds). */
void dun_clock_set(int64_t t);
/* Move a fixed clock forward by seconds (no-op on the wall clock). */
void dun_clock_advance(int64_t seconds);
/* Back to the wall clock. */
void dun_clock_reset(void);
bool dun_clock_is_fixed(void);
/* The range dun_clock_parse() accepts: 1970-01-01T00:00:01Z to 9999-12-31T23:59:59Z. */
#define DUN_CLOCK_MIN 1
#define DUN_CLOCK_MAX 253402300799LL
/*
 * Parse a time given on the command line: unix seconds (digits only),
 * "YYYY-MM-DD" or "YYYY-MM-DDTHH:MM:SS[Z]" (UTC; a space may stand for the
 * T). Returns false on anything else, on dates that do not exist
 * (2026-02-30) and outside DUN_CLOCK_MIN..DUN_CLOCK_MAX: 0 means "the wall
 * clock" to dun_clock_set(), so 1970-01-01T00:00:00Z cannot be a fixed time.
 */
bool dun_clock_parse(const char *s, int64_t *out);
/* Format t as "YYYY-MM-DDTHH:MM:SSZ" into out (at least 21 bytes). */
void dun_clock_format(int64_t t, char *out, unsigned long out_size);

#endif
