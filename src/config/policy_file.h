/*
 * policy_file.h — the policy file: INI text <-> struct dun_policy.
 *
 * A policy file overrides dun_policy_defaults() key by key; docs/policy.md
 * is the full description of the format and policy/default.conf spells out
 * the defaults. Loading is strict: an unknown section or key, a malformed
 * value, a key given twice or thresholds that contradict each other are
 * errors whose message names the file, the line and the key, because a typo
 * that silently fell back to a default would change who gets banned.
 *
 * This module sits before the pipeline: start-up (and `dunning policy
 * check`) loads the file once, and the pure core only ever sees the
 * resulting struct.
 */
#ifndef DUN_POLICY_FILE_H
#define DUN_POLICY_FILE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "core/policy.h"
#include "util/err.h"

/*
 * Load the policy file at path into *out, starting from the defaults.
 * Borrows path; *out is written only on success. On failure err (err_size
 * bytes; may be NULL when err_size is 0) holds one line such as
 *   policy/x.conf:12: [stages] restricted_after: expected a duration like
 *   7d, 36h, 90m or 45s, got "seven"
 * and the result is DUN_E_NOT_FOUND (no such file), DUN_E_IO (the file
 * could not be read) or DUN_E_CONFIG (the content is wrong). On success
 * err holds the empty string.
 */
enum dun_err dun_policy_file_load(const char *path, struct dun_policy *out, char *err,
				  size_t err_size);

/*
 * The same as dun_policy_file_load() for policy text already in memory
 * (text is NUL-terminated); name is what error messages call it ("<inline>",
 * "case.json policy"). Returns DUN_E_CONFIG on any error.
 */
enum dun_err dun_policy_file_load_string(const char *text, const char *name, struct dun_policy *out,
					 char *err, size_t err_size);

/*
 * Write p to out in the policy file format, every section and key spelled
 * out, so that loading the output gives back exactly p. Borrows both.
 */
void dun_policy_file_dump(const struct dun_policy *p, FILE *out);

/*
 * Parse a duration as the policy file writes it: digits and one unit, d, h,
 * m or s ("7d", "36h", "90m", "45s"). No sign, no spaces, no fractions, at
 * most DUN_POLICY_DURATION_MAX_S. Returns false (leaving *seconds alone) on
 * anything else.
 */
#define DUN_POLICY_DURATION_MAX_S ((int64_t)36500 * 86400) /* 100 years */
bool dun_policy_file_parse_duration(const char *s, int64_t *seconds);

#endif
