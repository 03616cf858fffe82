/*
 * input.h — strict readers of values a person types (command-line
 * arguments, configuration values) and the redaction of what error
 * messages echo back of them.
 *
 * strtod() and strtoll() read far more than a person means: "nan", "inf",
 * "0x10", "1e2", leading blanks and signs all pass. The readers here accept
 * only plain decimal text, so "0x10" is an error instead of 16.
 */
#ifndef DUN_INPUT_H
#define DUN_INPUT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/*
 * Read s as a plain non-negative decimal number: digits, optionally a point
 * and more digits ("25", "2.5", "0.25"); at most 15 significant characters.
 * No sign, exponent, hexadecimal, blanks, "nan" or "inf". Returns false on
 * anything else; *out is untouched then.
 */
bool dun_input_parse_decimal(const char *s, double *out);

/*
 * Read s as a plain non-negative whole number (digits only) no larger than
 * max. Returns false on anything else, including overflow.
 */
bool dun_input_parse_count(const char *s, int64_t max, int64_t *out);

/*
 * Copy url into out (out_size bytes, always NUL-terminated) with what may
 * carry a secret replaced: the userinfo before '@' (the user and password become three stars),
 * the query ("?***") and the fragment ("#***"). Text that is not a URL is
 * copied with the same rules applied to it as a whole, so nothing after a
 * '?' or before an '@' of the authority ever reaches a message.
 */
void dun_input_redact_url(const char *url, char *out, size_t out_size);

#endif
