/*
 * check.h — the assertions of the C unit tests.
 *
 * Each CHECK_* prints both sides on failure, counts the failure and goes on,
 * so one run reports every broken expectation. A test binary ends with
 * CHECK_DONE(), which prints "N passed, N failed" and returns non-zero when
 * anything failed.
 */
#ifndef DUN_CHECK_H
#define DUN_CHECK_H

#include <inttypes.h>
#include <stdio.h>
#include <string.h>

static int check_passed, check_failed;

#define CHECK_FAIL_AT(...)                                      \
	do {                                                    \
		check_failed++;                                 \
		fprintf(stderr, "%s:%d: ", __FILE__, __LINE__); \
		fprintf(stderr, __VA_ARGS__);                   \
		fputc('\n', stderr);                            \
	} while (0)

#define CHECK(cond)                                               \
	do {                                                      \
		if (cond)                                         \
			check_passed++;                           \
		else                                              \
			CHECK_FAIL_AT("CHECK(%s) failed", #cond); \
	} while (0)

#define CHECK_INT(a, b)                                                                       \
	do {                                                                                  \
		int64_t ca_ = (int64_t)(a), cb_ = (int64_t)(b);                               \
		if (ca_ == cb_)                                                               \
			check_passed++;                                                       \
		else                                                                          \
			CHECK_FAIL_AT("%s == %s: %" PRId64 " != %" PRId64, #a, #b, ca_, cb_); \
	} while (0)

#define CHECK_STR(a, b)                                                                           \
	do {                                                                                      \
		const char *ca_ = (a), *cb_ = (b);                                                \
		if (ca_ && cb_ && strcmp(ca_, cb_) == 0)                                          \
			check_passed++;                                                           \
		else                                                                              \
			CHECK_FAIL_AT("%s == %s: \"%s\" != \"%s\"", #a, #b, ca_ ? ca_ : "(null)", \
				      cb_ ? cb_ : "(null)");                                      \
	} while (0)

#define CHECK_DONE() \
	(printf("%d passed, %d failed\n", check_passed, check_failed), check_failed ? 1 : 0)

#endif
