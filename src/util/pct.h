/*
 * pct.h — percent-decoding of one URL path segment (RFC 3986, section 2.1).
 *
 * The HTTP front routes on the raw request path and decodes each segment
 * on its own, so that an account id containing "/" can be written "%2F"
 * without splitting the path. Decoding is strict: a "%" not followed by two
 * hex digits is malformed, and so is "%00" (ids are C strings).
 */
#ifndef DUN_PCT_H
#define DUN_PCT_H

#include <stdbool.h>
#include <stddef.h>

/*
 * Decode the n bytes at in into out (out_size bytes, NUL-terminated).
 * False when the input is malformed (see above) or the result does not fit;
 * *too_long tells the two apart. Borrows in and out.
 */
bool dun_pct_decode(const char *in, size_t n, char *out, size_t out_size, bool *too_long);

/* Whether every "%" of the n bytes at in starts a valid escape (and none is %00). */
bool dun_pct_valid(const char *in, size_t n);

#endif
