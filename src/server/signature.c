/*
 * signature.c — Stripe webhook signatures (see signature.h).
 *
 * This is the first thing a webhook meets in the server, before the body is
 * parsed or anything lands in the inbox: an unsigned or replayed request is
 * refused here and never becomes a trigger. It is also how the engine signs
 * the payment-outcome events it emits.
 *
 * The header is parsed in place, without allocation, and is checked in full
 * before any HMAC is computed, so a malformed header is always reported as
 * malformed rather than as a mismatch. The signature is checked before the
 * timestamp, as Stripe's libraries do: a forged request is reported as
 * forged, and "outside the tolerance" is only ever said of a genuine one,
 * where it means a clock is off. Received signatures are decoded to bytes
 * and compared with CRYPTO_memcmp, so the time taken does not reveal how
 * much of a guess was right. Reasons written to `why` are built from fixed
 * text and the numbers t and now only: no secret, no expected signature, no
 * echo of the received header.
 */
#include "server/signature.h"

#include <inttypes.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <string.h>

#include <openssl/core_names.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/params.h>

#define MAC_BYTES  32
#define HEX_DIGITS (2 * MAC_BYTES)

/* One `key=value` element of the header, as pointers into it. */
struct element {
	const char *key;
	size_t key_len;
	const char *value;
	size_t value_len;
};

__attribute__((format(printf, 3, 4))) static void say(char *why, size_t why_size, const char *fmt,
						      ...)
{
	if (!why || !why_size)
		return;
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(why, why_size, fmt, ap);
	va_end(ap);
}

static bool key_is(const struct element *e, const char *key)
{
	size_t n = strlen(key);
	return e->key_len == n && memcmp(e->key, key, n) == 0;
}

/*
 * Split the element that starts at *pos (up to the next `,` or the end) on
 * its first `=`, and move *pos past it. Returns false when the element has
 * no `=`, which includes an empty element.
 */
static bool next_element(const char **pos, struct element *e)
{
	const char *s = *pos;
	const char *end = strchr(s, ',');
	if (!end)
		end = s + strlen(s);
	*pos = *end ? end + 1 : end;
	const char *eq = memchr(s, '=', (size_t)(end - s));
	if (!eq)
		return false;
	e->key = s;
	e->key_len = (size_t)(eq - s);
	e->value = eq + 1;
	e->value_len = (size_t)(end - (eq + 1));
	return true;
}

/* Decimal digits only (no sign, no space), within int64. */
static bool parse_unix(const char *s, size_t len, int64_t *out)
{
	if (len == 0)
		return false;
	int64_t v = 0;
	for (size_t i = 0; i < len; i++) {
		if (s[i] < '0' || s[i] > '9')
			return false;
		int d = s[i] - '0';
		if (v > (INT64_MAX - d) / 10)
			return false;
		v = v * 10 + d;
	}
	*out = v;
	return true;
}

static int hex_value(char c)
{
	if (c >= '0' && c <= '9')
		return c - '0';
	if (c >= 'a' && c <= 'f')
		return c - 'a' + 10;
	if (c >= 'A' && c <= 'F')
		return c - 'A' + 10;
	return -1;
}

/* Exactly HEX_DIGITS hex digits (either case) into MAC_BYTES bytes. */
static bool decode_hex(const char *s, size_t len, unsigned char out[MAC_BYTES])
{
	if (len != HEX_DIGITS)
		return false;
	for (size_t i = 0; i < MAC_BYTES; i++) {
		int hi = hex_value(s[2 * i]), lo = hex_value(s[2 * i + 1]);
		if (hi < 0 || lo < 0)
			return false;
		out[i] = (unsigned char)(hi << 4 | lo);
	}
	return true;
}

static void encode_hex(const unsigned char in[MAC_BYTES], char out[DUN_SIGNATURE_HEX_SIZE])
{
	static const char digits[] = "0123456789abcdef";
	for (size_t i = 0; i < MAC_BYTES; i++) {
		out[2 * i] = digits[in[i] >> 4];
		out[2 * i + 1] = digits[in[i] & 0x0f];
	}
	out[HEX_DIGITS] = '\0';
}

/*
 * HMAC-SHA256 keyed with the whole secret over "<t>.<body>". The timestamp
 * is written in canonical decimal, as Stripe's libraries do after parsing
 * it, so `t=01700000000` signs the same bytes as `t=1700000000`.
 */
static enum dun_err mac_compute(const char *secret, int64_t t, const unsigned char *body,
				size_t len, unsigned char out[MAC_BYTES])
{
	enum dun_err rc = DUN_E_UNSUPPORTED;
	char prefix[32];
	int prefix_len = snprintf(prefix, sizeof prefix, "%" PRId64 ".", t);
	char digest[] = "SHA256";
	OSSL_PARAM params[] = {
	    OSSL_PARAM_construct_utf8_string(OSSL_MAC_PARAM_DIGEST, digest, 0),
	    OSSL_PARAM_construct_end(),
	};

	EVP_MAC_CTX *ctx = NULL;
	size_t out_len = 0;

	EVP_MAC *mac = EVP_MAC_fetch(NULL, "HMAC", NULL);
	if (!mac)
		goto out;
	ctx = EVP_MAC_CTX_new(mac);
	if (!ctx)
		goto free_mac;
	if (!EVP_MAC_init(ctx, (const unsigned char *)secret, strlen(secret), params))
		goto free_ctx;
	if (!EVP_MAC_update(ctx, (const unsigned char *)prefix, (size_t)prefix_len))
		goto free_ctx;
	if (len && !EVP_MAC_update(ctx, body, len))
		goto free_ctx;
	if (!EVP_MAC_final(ctx, out, &out_len, MAC_BYTES) || out_len != MAC_BYTES)
		goto free_ctx;
	rc = DUN_OK;
free_ctx:
	EVP_MAC_CTX_free(ctx);
free_mac:
	EVP_MAC_free(mac);
out:
	return rc;
}

/*
 * Walk the whole header once: it must be a list of `key=value` elements
 * with exactly one numeric `t`, at least one `v1`, and every `v1` 64 hex
 * digits. Only then are signatures computed.
 */
static enum dun_err parse_header(const char *header, int64_t *t_out, char *why, size_t why_size)
{
	bool have_t = false;
	int n_v1 = 0;
	const char *pos = header;
	unsigned char scratch[MAC_BYTES];

	while (*pos) {
		struct element e;
		if (!next_element(&pos, &e)) {
			say(why, why_size,
			    "malformed Stripe-Signature header: an element is not key=value");
			return DUN_E_SIGNATURE;
		}
		if (key_is(&e, "t")) {
			if (have_t) {
				say(why, why_size,
				    "malformed Stripe-Signature header: t appears twice");
				return DUN_E_SIGNATURE;
			}
			if (!parse_unix(e.value, e.value_len, t_out)) {
				say(why, why_size,
				    "malformed Stripe-Signature header: t is not a unix timestamp");
				return DUN_E_SIGNATURE;
			}
			have_t = true;
		} else if (key_is(&e, "v1")) {
			if (!decode_hex(e.value, e.value_len, scratch)) {
				say(why, why_size,
				    "malformed Stripe-Signature header: v1 is not 64 hex digits");
				return DUN_E_SIGNATURE;
			}
			n_v1++;
		}
		/* Any other scheme, v0 included, is ignored on purpose. */
	}
	/* A trailing comma leaves an empty last element. */
	if (pos > header && pos[-1] == ',') {
		say(why, why_size,
		    "malformed Stripe-Signature header: an element is not key=value");
		return DUN_E_SIGNATURE;
	}
	if (!have_t) {
		say(why, why_size, "malformed Stripe-Signature header: no t element");
		return DUN_E_SIGNATURE;
	}
	if (n_v1 == 0) {
		say(why, why_size,
		    "Stripe-Signature header has no v1 signature (only v1 is accepted)");
		return DUN_E_SIGNATURE;
	}
	return DUN_OK;
}

/* Whether any v1 of the (already validated) header equals mac. */
static bool any_v1_matches(const char *header, const unsigned char mac[MAC_BYTES])
{
	bool matched = false;
	const char *pos = header;
	unsigned char got[MAC_BYTES];
	struct element e;

	while (*pos) {
		if (!next_element(&pos, &e) || !key_is(&e, "v1"))
			continue;
		if (decode_hex(e.value, e.value_len, got))
			matched |= CRYPTO_memcmp(got, mac, MAC_BYTES) == 0;
	}
	return matched;
}

enum dun_err dun_signature_verify(const char *header, const unsigned char *body, size_t body_len,
				  const char *const *secrets, int n_secrets, int64_t now,
				  int64_t tolerance_s, char *why, size_t why_size)
{
	say(why, why_size, "%s", "");
	if (tolerance_s < 0 || now < 0) {
		say(why, why_size, "signature check called with a negative tolerance or time");
		return DUN_E_INVALID;
	}
	if (!body && body_len) {
		say(why, why_size, "signature check called without a body");
		return DUN_E_INVALID;
	}
	if (!secrets || n_secrets <= 0) {
		say(why, why_size, "no webhook signing secret is configured");
		return DUN_E_CONFIG;
	}
	for (int i = 0; i < n_secrets; i++) {
		if (!secrets[i] || !*secrets[i]) {
			say(why, why_size, "webhook signing secret %d is empty", i + 1);
			return DUN_E_CONFIG;
		}
	}

	if (!header || !*header) {
		say(why, why_size, "missing Stripe-Signature header");
		return DUN_E_SIGNATURE;
	}
	if (strnlen(header, DUN_SIGNATURE_HEADER_MAX_BYTES + 1) > DUN_SIGNATURE_HEADER_MAX_BYTES) {
		say(why, why_size, "Stripe-Signature header is longer than %d bytes",
		    DUN_SIGNATURE_HEADER_MAX_BYTES);
		return DUN_E_SIGNATURE;
	}

	int64_t t = 0;
	enum dun_err rc = parse_header(header, &t, why, why_size);
	if (rc != DUN_OK)
		return rc;

	/* Every secret is tried even after a match, so timing says nothing. */
	bool matched = false;
	unsigned char mac[MAC_BYTES];
	for (int i = 0; i < n_secrets; i++) {
		rc = mac_compute(secrets[i], t, body, body_len, mac);
		if (rc != DUN_OK) {
			OPENSSL_cleanse(mac, sizeof mac);
			say(why, why_size, "HMAC-SHA256 is not available from OpenSSL");
			return rc;
		}
		matched |= any_v1_matches(header, mac);
	}
	OPENSSL_cleanse(mac, sizeof mac);
	if (!matched) {
		say(why, why_size, "no v1 signature matches a configured secret");
		return DUN_E_SIGNATURE;
	}

	/*
	 * Only an old timestamp is refused, as Stripe's libraries do: a
	 * timestamp ahead of our clock is a clock difference, not an attack
	 * (an attacker cannot sign a future t without the secret), and a
	 * replay of a genuine delivery is stopped by its event id, which the
	 * inbox stores once. Both are non-negative, so the difference cannot
	 * overflow.
	 */
	if (t <= now && now - t > tolerance_s) {
		say(why, why_size,
		    "timestamp %" PRId64 " is %" PRId64 " s in the past (tolerance %" PRId64 " s)",
		    t, now - t, tolerance_s);
		return DUN_E_SIGNATURE;
	}
	return DUN_OK;
}

enum dun_err dun_signature_sign(const char *secret, int64_t t, const unsigned char *body,
				size_t len, char out_hex[DUN_SIGNATURE_HEX_SIZE])
{
	out_hex[0] = '\0';
	if (!secret || !*secret)
		return DUN_E_CONFIG;
	if (t < 0 || (!body && len))
		return DUN_E_INVALID;
	unsigned char mac[MAC_BYTES];
	enum dun_err rc = mac_compute(secret, t, body, len, mac);
	if (rc == DUN_OK)
		encode_hex(mac, out_hex);
	OPENSSL_cleanse(mac, sizeof mac);
	return rc;
}

enum dun_err dun_signature_header(const char *secret, int64_t t, const unsigned char *body,
				  size_t len, char *out, size_t out_size)
{
	if (out_size)
		out[0] = '\0';
	if (out_size < DUN_SIGNATURE_HEADER_SIZE)
		return DUN_E_TOO_BIG;
	char hex[DUN_SIGNATURE_HEX_SIZE];
	enum dun_err rc = dun_signature_sign(secret, t, body, len, hex);
	if (rc != DUN_OK)
		return rc;
	snprintf(out, out_size, "t=%" PRId64 ",v1=%s", t, hex);
	return DUN_OK;
}
