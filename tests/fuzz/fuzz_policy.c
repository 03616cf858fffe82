/*
 * fuzz_policy.c — fuzz target for the policy file parser
 * (dun_policy_file_load_string, src/config/policy_file.c).
 *
 * A policy file is outside input: operators write it by hand, and a typo
 * that was silently accepted would change who gets banned. The whole input
 * is the file's text (cut at its first NUL, as a C string would be).
 * Besides running under the sanitizers, each input checks what the loader
 * promises (policy_file.h, docs/policy.md):
 *   - the answer is DUN_OK or DUN_E_CONFIG, and the message is terminated;
 *   - on an error the message names the file and the caller's policy is
 *     left exactly as it was (all or nothing);
 *   - on success the message is empty, the policy obeys the rules the
 *     loader enforces (thresholds in order, bounded lists, upgrades never
 *     reach bad debt), and dumping it gives a file that loads back to the
 *     same dump.
 */
#include "config/policy_file.h"
#include "fuzz_target.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define NAME "fuzz.conf"

static void require(bool cond)
{
	if (!cond)
		abort();
}

/* The dump of p as a heap string; the caller frees it. */
static char *dump(const struct dun_policy *p)
{
	char *text = NULL;
	size_t len = 0;
	FILE *f = open_memstream(&text, &len);
	require(f != NULL);
	dun_policy_file_dump(p, f);
	require(fclose(f) == 0);
	require(text != NULL && strlen(text) == len);
	return text;
}

static void check_invariants(const struct dun_policy *p)
{
	require(p->restricted_after_s >= 0);
	require(p->restricted_after_s < p->suspended_after_s);
	require(p->suspended_after_s < p->bad_debt_after_s);
	require(p->bad_debt_after_s <= DUN_POLICY_DURATION_MAX_S);
	require(p->n_retry_schedule >= 0 && p->n_retry_schedule <= DUN_RETRY_SCHEDULE_MAX);
	for (int i = 1; i < p->n_retry_schedule; i++)
		require(p->retry_schedule_s[i - 1] < p->retry_schedule_s[i]);
	require(p->max_attempts >= 1 && p->max_attempts <= 50);
	require(p->n_upgrade_reasons >= 0 && p->n_upgrade_reasons <= DUN_UPGRADE_REASONS_MAX);
	require(p->upgrade_max_stage != DUN_STAGE_BAD_DEBT);
	require(p->n_declines >= 0 && p->n_declines <= DUN_DECLINE_RULES_MAX);
	for (int i = 0; i < p->n_declines; i++) {
		const char *code = p->declines[i].code;
		require(memchr(code, '\0', sizeof p->declines[i].code) != NULL);
		require(code[0] != '\0');
		require(p->declines[i].min_delay_s >= 0);
	}
	require(p->lifting_window_s >= 0);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	char *text = malloc(size + 1);
	require(text != NULL);
	memcpy(text, data, size);
	text[size] = '\0';

	/* Sentinel bytes: an error must leave every one of them alone. */
	struct dun_policy p, untouched;
	memset(&p, 0xA5, sizeof p);
	memcpy(&untouched, &p, sizeof p);
	char err[512];
	memset(err, 'x', sizeof err);
	enum dun_err rc = dun_policy_file_load_string(text, NAME, &p, err, sizeof err);
	require(rc == DUN_OK || rc == DUN_E_CONFIG);
	require(memchr(err, '\0', sizeof err) != NULL);
	if (rc != DUN_OK) {
		require(strncmp(err, NAME ":", strlen(NAME ":")) == 0);
		require(memcmp(&p, &untouched, sizeof p) == 0);
		free(text);
		return 0;
	}
	require(err[0] == '\0');
	check_invariants(&p);

	/* What `dunning policy show` prints is itself a policy file that means the same. */
	char *first = dump(&p);
	struct dun_policy again;
	rc = dun_policy_file_load_string(first, "dump", &again, err, sizeof err);
	if (rc != DUN_OK)
		fprintf(stderr, "the dump of an accepted policy is refused: %s\n", err);
	require(rc == DUN_OK);
	char *second = dump(&again);
	require(strcmp(first, second) == 0);
	free(second);
	free(first);

	/* The loader is deterministic: the same text gives the same policy. */
	struct dun_policy p2;
	require(dun_policy_file_load_string(text, NAME, &p2, NULL, 0) == DUN_OK);
	first = dump(&p);
	second = dump(&p2);
	require(strcmp(first, second) == 0);
	free(second);
	free(first);
	free(text);
	return 0;
}
