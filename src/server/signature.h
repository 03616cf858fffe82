/*
 * signature.h — Stripe webhook signatures: verify incoming, sign outgoing.
 *
 * A webhook is only believed when its `Stripe-Signature` header carries an
 * HMAC-SHA256 of `<t>.<raw body>` made with one of our endpoint secrets, and
 * when `t` is close enough to our clock. The engine signs the payment-outcome
 * events it emits the same way, so one receiver can check both.
 *
 * Header format: `t=<unix seconds>,v1=<hex>[,v1=<hex>...][,v0=<hex>]`, split
 * on `,` then on the first `=`. Only `v1` counts; every other scheme (`v0`
 * included) is ignored, so a header that carries no `v1` fails. Several `v1`
 * appear while a secret is being rolled; the header is accepted when ANY of
 * them matches ANY configured secret.
 *
 * Nothing here logs, allocates or reads the clock: `now` is handed in.
 */
#ifndef DUN_SIGNATURE_H
#define DUN_SIGNATURE_H

#include "util/err.h"

#include <stddef.h>
#include <stdint.h>

/* Stripe's libraries reject events older than this by default. */
#define DUN_SIGNATURE_TOLERANCE_S      300
/* A longer Stripe-Signature header is refused without being parsed. */
#define DUN_SIGNATURE_HEADER_MAX_BYTES 8192
/* Lowercase hex of an HMAC-SHA256, plus the terminating NUL. */
#define DUN_SIGNATURE_HEX_SIZE	       65
/* Room for `t=<int64>,v1=<64 hex>` and the NUL. */
#define DUN_SIGNATURE_HEADER_SIZE      96

/*
 * Check a Stripe-Signature header against the raw request body.
 *
 * header     the header value as received (NUL-terminated); NULL or empty
 *            means the header was missing.
 * body       the raw request body, exactly as received (not re-serialised);
 *            may be NULL when body_len is 0.
 * secrets    n_secrets endpoint secrets (`whsec_...`), used whole as HMAC
 *            keys. More than one while a secret is being rotated.
 * now        the current unix time (from dun_clock_now()).
 * tolerance_s how far `t` may be from `now`, in either direction, in
 *            seconds. Rejected when now - t > tolerance_s or
 *            t - now > tolerance_s. 0 means zero tolerance (t must equal
 *            now), never "unchecked"; negative is DUN_E_INVALID.
 * why        if not NULL, receives a one-line reason (NUL-terminated,
 *            truncated to why_size) on every return; "" on success. It never
 *            contains a secret or an expected signature, so it may be logged
 *            or sent back to the caller.
 *
 * Returns DUN_OK when the header is well formed, a v1 matches and t is within
 * tolerance; DUN_E_SIGNATURE for a missing, malformed, too long, wrongly
 * signed or stale header; DUN_E_CONFIG when no usable secret is configured
 * (none, NULL or empty); DUN_E_INVALID for a negative tolerance or now, or a
 * NULL body with a length; DUN_E_UNSUPPORTED when OpenSSL cannot compute
 * HMAC-SHA256. Borrows everything; keeps nothing. Thread-safe.
 */
enum dun_err dun_signature_verify(const char *header, const unsigned char *body, size_t body_len,
				  const char *const *secrets, int n_secrets, int64_t now,
				  int64_t tolerance_s, char *why, size_t why_size);

/*
 * Compute the v1 signature of body at time t with secret: lowercase hex of
 * HMAC-SHA256(secret, "<t>.<body>") into out_hex (NUL-terminated).
 * Returns DUN_E_CONFIG for a NULL or empty secret, DUN_E_INVALID for a
 * negative t or a NULL body with a length, DUN_E_UNSUPPORTED when OpenSSL
 * fails; out_hex is then the empty string. Borrows everything.
 */
enum dun_err dun_signature_sign(const char *secret, int64_t t, const unsigned char *body,
				size_t len, char out_hex[DUN_SIGNATURE_HEX_SIZE]);

/*
 * Build a whole header value `t=<t>,v1=<hex>` for an outgoing event into out
 * (at least DUN_SIGNATURE_HEADER_SIZE bytes, else DUN_E_TOO_BIG). Errors as
 * dun_signature_sign; out is then the empty string when out_size > 0.
 */
enum dun_err dun_signature_header(const char *secret, int64_t t, const unsigned char *body,
				  size_t len, char *out, size_t out_size);

#endif
