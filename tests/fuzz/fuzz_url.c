/*
 * fuzz_url.c — fuzz target for the percent-decoding of request paths
 * (util/pct), the parser every admin URL goes through before routing.
 *
 * Besides running under the sanitizers, each input checks what must always
 * hold: decoding succeeds exactly when the input is valid and fits; the
 * output is NUL-terminated, holds no NUL of its own and is never longer than
 * the input; and re-encoding every byte as an escape decodes back to the
 * same bytes.
 */
#include "fuzz_target.h"
#include "util/pct.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define OUT_MAX 128

static void require(bool cond)
{
	if (!cond)
		abort();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	/* An exact-size copy, so a read past the end is caught. */
	char *in = malloc(size ? size : 1);
	require(in != NULL);
	memcpy(in, data, size);

	char out[OUT_MAX];
	bool too_long = false;
	bool ok = dun_pct_decode(in, size, out, sizeof out, &too_long);
	bool valid = dun_pct_valid(in, size);
	require(memchr(out, '\0', sizeof out) != NULL);
	require(!ok || valid);
	require(ok || too_long || !valid);
	if (ok) {
		size_t n = strlen(out);
		require(n <= size);
		/* Every byte as an escape: the decoder must give the same bytes back. */
		char *enc = malloc(3 * n + 1);
		require(enc != NULL);
		for (size_t i = 0; i < n; i++)
			snprintf(enc + 3 * i, 4, "%%%02X", (unsigned char)out[i]);
		char again[OUT_MAX];
		bool tl;
		require(dun_pct_decode(enc, 3 * n, again, sizeof again, &tl));
		require(strcmp(again, out) == 0);
		free(enc);
	}
	free(in);
	return 0;
}
