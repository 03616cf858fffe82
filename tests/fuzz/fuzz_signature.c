/*
 * fuzz_signature.c — fuzz target for the Stripe-Signature check.
 *
 * The signature check is the first parser of outside input a webhook meets.
 * An input is split at its first newline: the part before is the header
 * value, the rest is the raw body. Besides running under the sanitizers,
 * each input checks what must always hold: only DUN_OK or DUN_E_SIGNATURE
 * comes back for well-configured secrets, the reason is terminated and never
 * names a secret, and a header this file signs itself over the same body is
 * accepted while the same header over a different body is not.
 */
#include "fuzz_target.h"
#include "server/signature.h"

#include <stdlib.h>
#include <string.h>

#define NOW	 1700000000
#define SECRET_A "whsec_test_secret"
#define SECRET_B "whsec_fuzz_other"

static void require(bool cond)
{
	if (!cond)
		abort();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	static const char *const secrets[] = {SECRET_A, SECRET_B};
	const uint8_t *nl = memchr(data, '\n', size);
	size_t header_len = nl ? (size_t)(nl - data) : size;
	const unsigned char *body = nl ? nl + 1 : data + size;
	size_t body_len = size - (size_t)(body - data);

	/* An exact-size copy, so a read past the header's end is caught. */
	char *header = malloc(header_len + 1);
	require(header != NULL);
	memcpy(header, data, header_len);
	header[header_len] = '\0';

	char why[128];
	enum dun_err rc = dun_signature_verify(header, body, body_len, secrets, 2, NOW,
					       DUN_SIGNATURE_TOLERANCE_S, why, sizeof why);
	require(rc == DUN_OK || rc == DUN_E_SIGNATURE);
	require(memchr(why, '\0', sizeof why) != NULL);
	require(strstr(why, "whsec_") == NULL);
	require(rc != DUN_OK || why[0] == '\0');
	free(header);

	char own[DUN_SIGNATURE_HEADER_SIZE];
	require(dun_signature_header(SECRET_B, NOW, body, body_len, own, sizeof own) == DUN_OK);
	require(dun_signature_verify(own, body, body_len, secrets, 2, NOW, 0, why, sizeof why) ==
		DUN_OK);
	/* The same signature over the header bytes instead must be refused. */
	if (header_len != body_len || memcmp(data, body, body_len) != 0) {
		rc = dun_signature_verify(own, data, header_len, secrets, 2, NOW, 0, why,
					  sizeof why);
		require(rc == DUN_E_SIGNATURE);
	}
	return 0;
}
