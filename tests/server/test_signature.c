/*
 * test_signature.c — unit tests of the webhook signature check and signer.
 *
 * The anchor is the test vector of STRIPE.md (secret whsec_test_secret,
 * t = 1700000000, the 119 bytes of webhook_test_vector_payload.json, read
 * from the file named by argv[1]). Every other case is built from it, so a
 * mistake in the signed bytes shows up everywhere at once. Each refusal is
 * also checked for what its reason must never contain: the secret or the
 * expected signature.
 */
#include "check.h"
#include "server/signature.h"

#include <stdlib.h>

#define VECTOR_T     1700000000
#define VECTOR_V1    "53e7527ec21ab7237646d2634f9eb0e0255cb678939e8c3dbbec5cf2a639f66f"
#define SECRET	     "whsec_test_secret"
#define OTHER_SECRET "whsec_other_secret"
/* Any well-formed signature that is not the vector's. */
#define WRONG_V1     "0000000000000000000000000000000000000000000000000000000000000000"

static unsigned char body[4096];
static size_t body_len;

static bool read_fixture(const char *path)
{
	FILE *f = fopen(path, "rb");
	if (!f)
		return false;
	body_len = fread(body, 1, sizeof body, f);
	bool ok = !ferror(f) && feof(f);
	fclose(f);
	return ok;
}

/*
 * Verify header against body with the given secrets, expect rc, and when
 * want_why is not NULL expect it inside the reason. The reason must never
 * carry a secret or the expected signature.
 */
static void expect(int line, const char *header, const unsigned char *b, size_t len,
		   const char *const *secrets, int n_secrets, int64_t now, int64_t tolerance_s,
		   enum dun_err want, const char *want_why)
{
	char why[256];
	memset(why, 'x', sizeof why);
	enum dun_err rc = dun_signature_verify(header, b, len, secrets, n_secrets, now, tolerance_s,
					       why, sizeof why);
	if (rc == want) {
		check_passed++;
	} else {
		CHECK_FAIL_AT("line %d: rc %s != %s (why: %s)", line, dun_err_name(rc),
			      dun_err_name(want), why);
	}
	if (memchr(why, '\0', sizeof why) == NULL) {
		CHECK_FAIL_AT("line %d: why is not NUL-terminated", line);
		return;
	}
	if (want == DUN_OK)
		CHECK_STR(why, "");
	if (want_why && !strstr(why, want_why))
		CHECK_FAIL_AT("line %d: why \"%s\" lacks \"%s\"", line, why, want_why);
	CHECK(strstr(why, "whsec_") == NULL);
	CHECK(strstr(why, "test_secret") == NULL);
	CHECK(strstr(why, VECTOR_V1) == NULL);
}

static const char *const one_secret[] = {SECRET};

#define EXPECT(header, want, want_why) \
	expect(__LINE__, header, body, body_len, one_secret, 1, VECTOR_T, 300, want, want_why)

static void test_vector(void)
{
	char hex[DUN_SIGNATURE_HEX_SIZE];
	CHECK_INT(body_len, 119);
	CHECK_INT(dun_signature_sign(SECRET, VECTOR_T, body, body_len, hex), DUN_OK);
	CHECK_STR(hex, VECTOR_V1);

	char header[DUN_SIGNATURE_HEADER_SIZE];
	CHECK_INT(dun_signature_header(SECRET, VECTOR_T, body, body_len, header, sizeof header),
		  DUN_OK);
	CHECK_STR(header, "t=1700000000,v1=" VECTOR_V1);

	EXPECT("t=1700000000,v1=" VECTOR_V1, DUN_OK, NULL);
	/* Stripe sends a v0 alongside in test mode; it is ignored. */
	EXPECT("t=1700000000,v1=" VECTOR_V1 ",v0=" WRONG_V1, DUN_OK, NULL);
	/* Received hex is compared as bytes, so its case does not matter. */
	EXPECT("t=1700000000,v1=53E7527EC21AB7237646D2634F9EB0E0255CB678939E8C3DBBEC5CF2A639F66F",
	       DUN_OK, NULL);
	/* Order of elements does not matter. */
	EXPECT("v1=" VECTOR_V1 ",t=1700000000", DUN_OK, NULL);
	/* t is signed in canonical decimal, as Stripe's libraries do. */
	EXPECT("t=01700000000,v1=" VECTOR_V1, DUN_OK, NULL);
	/* Unknown schemes are ignored. */
	EXPECT("t=1700000000,v2=abc,v1=" VECTOR_V1, DUN_OK, NULL);
	/* A NULL reason buffer is allowed. */
	CHECK_INT(dun_signature_verify("t=1700000000,v1=" VECTOR_V1, body, body_len, one_secret, 1,
				       VECTOR_T, 300, NULL, 0),
		  DUN_OK);
}

static void test_tampered_and_wrong_secret(void)
{
	const char *h = "t=1700000000,v1=" VECTOR_V1;
	unsigned char copy[4096];
	memcpy(copy, body, body_len);
	copy[10] ^= 1;
	expect(__LINE__, h, copy, body_len, one_secret, 1, VECTOR_T, 300, DUN_E_SIGNATURE,
	       "no v1 signature matches");
	/* One byte more (a trailing newline added by a proxy) breaks it too. */
	memcpy(copy, body, body_len);
	copy[body_len] = '\n';
	expect(__LINE__, h, copy, body_len + 1, one_secret, 1, VECTOR_T, 300, DUN_E_SIGNATURE,
	       "no v1 signature matches");
	/* So does a different t with the same signature. */
	expect(__LINE__, "t=1700000001,v1=" VECTOR_V1, body, body_len, one_secret, 1, VECTOR_T, 300,
	       DUN_E_SIGNATURE, "no v1 signature matches");

	const char *const wrong[] = {OTHER_SECRET};
	expect(__LINE__, h, body, body_len, wrong, 1, VECTOR_T, 300, DUN_E_SIGNATURE,
	       "no v1 signature matches");
	/* The key is the whole secret, prefix included. */
	const char *const no_prefix[] = {"test_secret"};
	expect(__LINE__, h, body, body_len, no_prefix, 1, VECTOR_T, 300, DUN_E_SIGNATURE,
	       "no v1 signature matches");
	EXPECT("t=1700000000,v1=" WRONG_V1, DUN_E_SIGNATURE, "no v1 signature matches");
}

static void test_tolerance(void)
{
	const char *h = "t=1700000000,v1=" VECTOR_V1;
	expect(__LINE__, h, body, body_len, one_secret, 1, VECTOR_T + 300, 300, DUN_OK, NULL);
	expect(__LINE__, h, body, body_len, one_secret, 1, VECTOR_T + 301, 300, DUN_E_SIGNATURE,
	       "301 s in the past (tolerance 300 s)");
	expect(__LINE__, h, body, body_len, one_secret, 1, VECTOR_T + 86400, 300, DUN_E_SIGNATURE,
	       "in the past");
	expect(__LINE__, h, body, body_len, one_secret, 1, VECTOR_T - 300, 300, DUN_OK, NULL);
	/* Ahead of our clock is accepted, as by Stripe's libraries: only age is judged. */
	expect(__LINE__, h, body, body_len, one_secret, 1, VECTOR_T - 301, 300, DUN_OK, NULL);
	expect(__LINE__, h, body, body_len, one_secret, 1, VECTOR_T - 86400, 300, DUN_OK, NULL);
	/* Configurable. */
	expect(__LINE__, h, body, body_len, one_secret, 1, VECTOR_T + 301, 600, DUN_OK, NULL);
	/* Zero means zero, not "unchecked". */
	expect(__LINE__, h, body, body_len, one_secret, 1, VECTOR_T, 0, DUN_OK, NULL);
	expect(__LINE__, h, body, body_len, one_secret, 1, VECTOR_T + 1, 0, DUN_E_SIGNATURE,
	       "in the past");
	expect(__LINE__, h, body, body_len, one_secret, 1, VECTOR_T - 1, 0, DUN_OK, NULL);
	expect(__LINE__, h, body, body_len, one_secret, 1, VECTOR_T, -1, DUN_E_INVALID, NULL);
	expect(__LINE__, h, body, body_len, one_secret, 1, -1, 300, DUN_E_INVALID, NULL);
	/* A forged and stale header is reported as forged. */
	expect(__LINE__, "t=1700000000,v1=" WRONG_V1, body, body_len, one_secret, 1,
	       VECTOR_T + 1000, 300, DUN_E_SIGNATURE, "no v1 signature matches");
}

static void test_missing_and_v0(void)
{
	expect(__LINE__, NULL, body, body_len, one_secret, 1, VECTOR_T, 300, DUN_E_SIGNATURE,
	       "missing Stripe-Signature header");
	EXPECT("", DUN_E_SIGNATURE, "missing Stripe-Signature header");
	/* A v0, even one carrying the right HMAC, is a downgrade: refused. */
	EXPECT("t=1700000000,v0=" VECTOR_V1, DUN_E_SIGNATURE, "no v1 signature");
	EXPECT("t=1700000000", DUN_E_SIGNATURE, "no v1 signature");
	/* Keys are case-sensitive: V1 is an unknown scheme. */
	EXPECT("t=1700000000,V1=" VECTOR_V1, DUN_E_SIGNATURE, "no v1 signature");
}

static void test_several_v1_and_rotation(void)
{
	EXPECT("t=1700000000,v1=" WRONG_V1 ",v1=" VECTOR_V1, DUN_OK, NULL);
	EXPECT("t=1700000000,v1=" VECTOR_V1 ",v1=" WRONG_V1, DUN_OK, NULL);
	EXPECT("t=1700000000,v1=" WRONG_V1 ",v1=" WRONG_V1 ",v0=" VECTOR_V1, DUN_E_SIGNATURE,
	       "no v1 signature matches");

	const char *const rotating[] = {OTHER_SECRET, SECRET};
	const char *const rotating_rev[] = {SECRET, OTHER_SECRET};
	const char *h = "t=1700000000,v1=" VECTOR_V1;
	expect(__LINE__, h, body, body_len, rotating, 2, VECTOR_T, 300, DUN_OK, NULL);
	expect(__LINE__, h, body, body_len, rotating_rev, 2, VECTOR_T, 300, DUN_OK, NULL);

	char other[DUN_SIGNATURE_HEADER_SIZE];
	CHECK_INT(dun_signature_header(OTHER_SECRET, VECTOR_T, body, body_len, other, sizeof other),
		  DUN_OK);
	expect(__LINE__, other, body, body_len, rotating, 2, VECTOR_T, 300, DUN_OK, NULL);
	expect(__LINE__, other, body, body_len, one_secret, 1, VECTOR_T, 300, DUN_E_SIGNATURE,
	       "no v1 signature matches");

	/* Stripe signing with both secrets while we know only the new one. */
	char both[256];
	snprintf(both, sizeof both, "%s,v1=%s", other, VECTOR_V1);
	expect(__LINE__, both, body, body_len, one_secret, 1, VECTOR_T, 300, DUN_OK, NULL);
}

static void test_malformed(void)
{
	EXPECT("v1=" VECTOR_V1, DUN_E_SIGNATURE, "no t element");
	EXPECT("t=abc,v1=" VECTOR_V1, DUN_E_SIGNATURE, "t is not a unix timestamp");
	EXPECT("t=,v1=" VECTOR_V1, DUN_E_SIGNATURE, "t is not a unix timestamp");
	EXPECT("t=-1700000000,v1=" VECTOR_V1, DUN_E_SIGNATURE, "t is not a unix timestamp");
	EXPECT("t=+1700000000,v1=" VECTOR_V1, DUN_E_SIGNATURE, "t is not a unix timestamp");
	EXPECT("t= 1700000000,v1=" VECTOR_V1, DUN_E_SIGNATURE, "t is not a unix timestamp");
	EXPECT("t=1700000000x,v1=" VECTOR_V1, DUN_E_SIGNATURE, "t is not a unix timestamp");
	EXPECT("t=99999999999999999999,v1=" VECTOR_V1, DUN_E_SIGNATURE,
	       "t is not a unix timestamp");
	EXPECT("t=1700000000,t=1700000000,v1=" VECTOR_V1, DUN_E_SIGNATURE, "t appears twice");
	EXPECT("t=1700000000,v1=" VECTOR_V1 ",t=1", DUN_E_SIGNATURE, "t appears twice");
	EXPECT("t=1700000000,v1=abc", DUN_E_SIGNATURE, "v1 is not 64 hex digits");
	EXPECT("t=1700000000,v1=", DUN_E_SIGNATURE, "v1 is not 64 hex digits");
	EXPECT("t=1700000000,v1=" VECTOR_V1 "0", DUN_E_SIGNATURE, "v1 is not 64 hex digits");
	EXPECT("t=1700000000,v1=g3e7527ec21ab7237646d2634f9eb0e0255cb678939e8c3dbbec5cf2a639f66f",
	       DUN_E_SIGNATURE, "v1 is not 64 hex digits");
	/* One malformed v1 spoils the header even next to a valid one. */
	EXPECT("t=1700000000,v1=" VECTOR_V1 ",v1=xyz", DUN_E_SIGNATURE, "v1 is not 64 hex digits");
	EXPECT("t=1700000000,v1=" VECTOR_V1 ",", DUN_E_SIGNATURE, "not key=value");
	EXPECT(",t=1700000000,v1=" VECTOR_V1, DUN_E_SIGNATURE, "not key=value");
	EXPECT("t=1700000000,,v1=" VECTOR_V1, DUN_E_SIGNATURE, "not key=value");
	EXPECT("t=1700000000,junk,v1=" VECTOR_V1, DUN_E_SIGNATURE, "not key=value");
	EXPECT(",", DUN_E_SIGNATURE, "not key=value");
	EXPECT("=", DUN_E_SIGNATURE, "no t element");
	/* Split on the first '=': the value of t is "1700000000=1", not a number. */
	EXPECT("t=1700000000=1,v1=" VECTOR_V1, DUN_E_SIGNATURE, "t is not a unix timestamp");
}

static void test_size_limit(void)
{
	/* A valid header padded with an ignored element to exactly the limit. */
	size_t cap = DUN_SIGNATURE_HEADER_MAX_BYTES + 2;
	char *h = malloc(cap);
	CHECK(h != NULL);
	if (!h)
		return;
	const char *start = "t=1700000000,v1=" VECTOR_V1 ",x=";
	size_t n = strlen(start);
	memcpy(h, start, n);
	memset(h + n, 'a', DUN_SIGNATURE_HEADER_MAX_BYTES - n);
	h[DUN_SIGNATURE_HEADER_MAX_BYTES] = '\0';
	EXPECT(h, DUN_OK, NULL);
	h[DUN_SIGNATURE_HEADER_MAX_BYTES] = 'a';
	h[DUN_SIGNATURE_HEADER_MAX_BYTES + 1] = '\0';
	EXPECT(h, DUN_E_SIGNATURE, "longer than 8192 bytes");
	free(h);
}

static void test_config_and_arguments(void)
{
	const char *h = "t=1700000000,v1=" VECTOR_V1;
	expect(__LINE__, h, body, body_len, NULL, 0, VECTOR_T, 300, DUN_E_CONFIG, "no webhook");
	expect(__LINE__, h, body, body_len, one_secret, 0, VECTOR_T, 300, DUN_E_CONFIG,
	       "no webhook");
	const char *const with_empty[] = {SECRET, ""};
	expect(__LINE__, h, body, body_len, with_empty, 2, VECTOR_T, 300, DUN_E_CONFIG,
	       "secret 2 is empty");
	const char *const with_null[] = {NULL};
	expect(__LINE__, h, body, body_len, with_null, 1, VECTOR_T, 300, DUN_E_CONFIG,
	       "secret 1 is empty");
	expect(__LINE__, h, NULL, 5, one_secret, 1, VECTOR_T, 300, DUN_E_INVALID, NULL);

	/* An empty body is signed and checked like any other. */
	char empty[DUN_SIGNATURE_HEADER_SIZE];
	CHECK_INT(dun_signature_header(SECRET, VECTOR_T, NULL, 0, empty, sizeof empty), DUN_OK);
	expect(__LINE__, empty, NULL, 0, one_secret, 1, VECTOR_T, 300, DUN_OK, NULL);
	expect(__LINE__, empty, (const unsigned char *)"", 0, one_secret, 1, VECTOR_T, 300, DUN_OK,
	       NULL);
	expect(__LINE__, empty, body, body_len, one_secret, 1, VECTOR_T, 300, DUN_E_SIGNATURE,
	       "no v1 signature matches");

	char hex[DUN_SIGNATURE_HEX_SIZE];
	CHECK_INT(dun_signature_sign("", VECTOR_T, body, body_len, hex), DUN_E_CONFIG);
	CHECK_STR(hex, "");
	CHECK_INT(dun_signature_sign(NULL, VECTOR_T, body, body_len, hex), DUN_E_CONFIG);
	CHECK_INT(dun_signature_sign(SECRET, -1, body, body_len, hex), DUN_E_INVALID);
	CHECK_INT(dun_signature_sign(SECRET, VECTOR_T, NULL, 1, hex), DUN_E_INVALID);

	char small[DUN_SIGNATURE_HEADER_SIZE - 1];
	CHECK_INT(dun_signature_header(SECRET, VECTOR_T, body, body_len, small, sizeof small),
		  DUN_E_TOO_BIG);
	CHECK_STR(small, "");

	/* A short reason buffer is truncated and still terminated. */
	char why[8];
	CHECK_INT(dun_signature_verify(NULL, body, body_len, one_secret, 1, VECTOR_T, 300, why,
				       sizeof why),
		  DUN_E_SIGNATURE);
	CHECK_STR(why, "missing");
}

int main(int argc, char **argv)
{
	if (argc < 2 || !read_fixture(argv[1])) {
		fprintf(stderr, "usage: test_signature webhook_test_vector_payload.json\n");
		return 2;
	}
	test_vector();
	test_tampered_and_wrong_secret();
	test_tolerance();
	test_missing_and_v0();
	test_several_v1_and_rotation();
	test_malformed();
	test_size_limit();
	test_config_and_arguments();
	return CHECK_DONE();
}
