/*
 * err.c — strings and retry classes for the error enum (see err.h).
 * Pure: linked into the core library.
 */
#include "err.h"

const char *dun_err_str(enum dun_err e)
{
	switch (e) {
#define DUN_ERR_STR(name, value, retry, msg) \
	case name:                           \
		return msg;
		DUN_ERR_LIST(DUN_ERR_STR)
#undef DUN_ERR_STR
	}
	return "unknown error";
}

const char *dun_err_name(enum dun_err e)
{
	switch (e) {
#define DUN_ERR_NAME(name, value, retry, msg) \
	case name:                            \
		return #name;
		DUN_ERR_LIST(DUN_ERR_NAME)
#undef DUN_ERR_NAME
	}
	return "DUN_E_UNKNOWN";
}

bool dun_err_is_retryable(enum dun_err e)
{
	switch (e) {
#define DUN_ERR_RETRY(name, value, retry, msg) \
	case name:                             \
		return retry;
		DUN_ERR_LIST(DUN_ERR_RETRY)
#undef DUN_ERR_RETRY
	}
	return false;
}
