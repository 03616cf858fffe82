/*
 * err.h — the one error enum of the project.
 *
 * Every fallible function returns an enum dun_err. The list below is the only
 * place codes are defined; codes are append-only because they are stored in
 * the inbox and the consequence log. Each code carries a message and whether
 * a failure with that code is worth retrying (a timeout is, a malformed
 * policy file is not). Third-party codes (SQLite rc, CURLcode, HTTP status)
 * are mapped to these at the module boundary, once.
 *
 * This header is pure: the core uses it too.
 */
#ifndef DUN_ERR_H
#define DUN_ERR_H

#include <stdbool.h>

/* X(name, value, retryable, message) */
#define DUN_ERR_LIST(X)                                                                 \
	X(DUN_OK, 0, false, "ok")                                                       \
	X(DUN_E_INVALID, 1, false, "invalid argument")                                  \
	X(DUN_E_NOT_FOUND, 2, false, "not found")                                       \
	X(DUN_E_TOO_BIG, 3, false, "too big")                                           \
	X(DUN_E_PARSE, 4, false, "malformed input")                                     \
	X(DUN_E_CONFIG, 5, false, "bad configuration")                                  \
	X(DUN_E_STORE, 6, true, "store error")                                          \
	X(DUN_E_BUSY, 7, true, "store busy")                                            \
	X(DUN_E_SCHEMA, 8, false, "database schema is newer than this binary")          \
	X(DUN_E_IO, 9, true, "i/o error")                                               \
	X(DUN_E_PROVIDER, 10, true, "payment provider error")                           \
	X(DUN_E_PROVIDER_REJECTED, 11, false, "payment provider rejected the request")  \
	X(DUN_E_PLATFORM, 12, true, "platform error")                                   \
	X(DUN_E_EMAIL, 13, true, "email delivery error")                                \
	X(DUN_E_GUARD, 14, false, "refused by a guard")                                 \
	X(DUN_E_CONFLICT, 15, true, "state changed underneath; recompute")              \
	X(DUN_E_SIGNATURE, 16, false, "bad signature")                                  \
	X(DUN_E_TIMEOUT, 17, true, "timed out")                                         \
	X(DUN_E_UNSUPPORTED, 18, false, "unsupported")                                  \
	X(DUN_E_CORRUPT, 19, false, "the database file is corrupt or not a database")   \
	X(DUN_E_UNAVAILABLE, 20, true, "database unreachable")                          \
	X(DUN_E_FENCED, 21, false, "the account's claim is held by another worker now") \
	X(DUN_E_INCOMPLETE, 22, true, "a store could not be read: the snapshot is incomplete")

enum dun_err {
#define DUN_ERR_ENUM(name, value, retry, msg) name = value,
	DUN_ERR_LIST(DUN_ERR_ENUM)
#undef DUN_ERR_ENUM
};

/* A static string describing the code; never NULL. */
const char *dun_err_str(enum dun_err e);
/* The stable symbolic name ("DUN_E_STORE"); never NULL. */
const char *dun_err_name(enum dun_err e);
/* Whether a failure with this code may succeed when tried again. */
bool dun_err_is_retryable(enum dun_err e);

#endif
