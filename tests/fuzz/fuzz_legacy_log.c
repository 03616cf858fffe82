/*
 * fuzz_legacy_log.c — fuzz target for the legacy decision log parser
 * (dun_parity_read_log, src/apply/parity_log.c).
 *
 * The legacy log is outside input: an export of another system, read by
 * `dunning parity`. Each input is the file's bytes. Besides running under
 * the sanitizers, each input checks what the parser promises: the answer is
 * DUN_OK or DUN_E_PARSE; an error names the file and a line; every parsed
 * action has an account, a time, a known action and NUL-terminated fields;
 * and amounts are never negative.
 */
#include "apply/parity_log.h"
#include "fuzz_target.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void require(bool cond)
{
	if (!cond)
		abort();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	FILE *f = fmemopen((void *)(uintptr_t)data, size ? size : 1, "r");
	if (!f)
		return 0;
	if (!size)
		fgetc(f); /* an empty file: fmemopen needs a buffer of at least one byte */
	struct dun_parity_list l = {0};
	char err[600];
	memset(err, 'x', sizeof err);
	enum dun_err e = dun_parity_read_log(f, "fuzz.jsonl", &l, err, sizeof err);
	fclose(f);
	require(e == DUN_OK || e == DUN_E_PARSE);
	if (e != DUN_OK) {
		require(memchr(err, '\0', sizeof err) != NULL);
		require(strncmp(err, "fuzz.jsonl:", 11) == 0);
	}
	for (int i = 0; i < l.n; i++) {
		const struct dun_parity_item *it = &l.items[i];
		require(memchr(it->account, '\0', sizeof it->account) && it->account[0]);
		require(memchr(it->detail, '\0', sizeof it->detail) != NULL);
		require(memchr(it->target, '\0', sizeof it->target) != NULL);
		require(it->at > 0 && it->line >= 1);
		require((int)it->action >= 0 && (int)it->action < DUN_PARITY_ACTION__COUNT);
		require(strcmp(dun_parity_action_name(it->action), "?") != 0);
		require(!it->has_amount || it->amount >= 0);
		require(it->match == -1);
	}
	dun_parity_list_free(&l);
	return 0;
}
