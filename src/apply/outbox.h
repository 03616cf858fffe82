/*
 * outbox.h — EXECUTE: what the two senders share.
 *
 * The platform outbox (outbox_sender.c) and the payment-outcome events
 * (events_sender.c) both deliver, over HTTP and at least once, rows that a
 * transaction of the applier wrote. This is their common part: one HTTP
 * call through libcurl with every outcome mapped once (connection refused,
 * timeout, status code, Retry-After), the classification of an outcome into
 * sent / retry / dead, the capped exponential backoff with jitter, and the
 * checks of configured URLs.
 *
 * Everything except the client is pure, so tests/effects checks it directly.
 */
#ifndef DUN_OUTBOX_H
#define DUN_OUTBOX_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "util/err.h"

/* What becomes of a row after one attempt. */
enum dun_outbox_verdict {
	DUN_OUTBOX_SENT,  /* delivered (or already done): final */
	DUN_OUTBOX_RETRY, /* try again after a backoff */
	DUN_OUTBOX_DEAD,  /* will never succeed as it is: final, visible, counted */
};

/* "sent", "retry", "dead"; a static string. */
const char *dun_outbox_verdict_name(enum dun_outbox_verdict v);

/* How far one call got. */
enum dun_http_outcome {
	DUN_HTTP_ANSWERED,  /* a status line came back (any status) */
	DUN_HTTP_CONNECT,   /* no connection: refused, unreachable, name not resolved */
	DUN_HTTP_TIMEOUT,   /* connected or not, no full answer within the timeout */
	DUN_HTTP_TRANSPORT, /* anything else below HTTP: TLS, reset, malformed answer */
};

#define DUN_HTTP_ERROR_MAX 256
#define DUN_HTTP_BODY_KEEP 200 /* bytes of an error answer kept for last_error */

struct dun_http_reply {
	enum dun_http_outcome outcome;
	long status;			/* ANSWERED: the HTTP status; 0 otherwise */
	int64_t retry_after_s;		/* a Retry-After in seconds, 0 when absent */
	char error[DUN_HTTP_ERROR_MAX]; /* one line for last_error; "" on a 2xx */
};

/*
 * The platform contract (docs/platform-api.md): 2xx and 409 (already done)
 * are sent; 408, 425, 429, 5xx and every failure below HTTP are retried;
 * any other status (other 4xx, an unfollowed 3xx, 1xx) is dead.
 */
enum dun_outbox_verdict dun_outbox_classify_platform(const struct dun_http_reply *r);

/* Attempts after which an event delivery is given up (dead). */
#define DUN_EVENTS_MAX_ATTEMPTS 80

/*
 * Outcome events (docs/events.md): 2xx is sent; 410 Gone is dead (the
 * receiver asks us to stop); anything else is retried, until attempts
 * reaches DUN_EVENTS_MAX_ATTEMPTS (about three days of backoff), then dead.
 */
enum dun_outbox_verdict dun_outbox_classify_event(const struct dun_http_reply *r, int attempts);

/*
 * The delay before attempt attempts + 1, in seconds: base_s × 2^(attempts-1)
 * capped at cap_s, then "equal jitter" — uniformly in [d/2, d] — so rows that
 * failed together do not come back together. Deterministic in seed (the row
 * id and attempt, mixed), so tests can predict it. At least 1.
 */
int64_t dun_outbox_backoff_s(int attempts, int64_t base_s, int64_t cap_s, uint64_t seed);

/*
 * The delay to use after reply r: the backoff, or the server's Retry-After
 * when that is longer (at most cap_s).
 */
int64_t dun_outbox_retry_delay_s(const struct dun_http_reply *r, int attempts, int64_t base_s,
				 int64_t cap_s, uint64_t seed);

/*
 * Check a configured URL: http or https, a host, no user or password inside
 * it, and (when no_query) no query or fragment. With carries_secret, a
 * plain-http URL is refused unless the host is loopback, since the secret
 * would cross the network in clear text. what names the setting in err.
 */
enum dun_err dun_http_url_check(const char *url, const char *what, bool no_query,
				bool carries_secret, char *err, size_t err_size);

/* A reusable HTTP client (one libcurl handle: connections are kept alive). */
struct dun_http_client;

/* A client whose calls take at most timeout_ms each. Never NULL. */
struct dun_http_client *dun_http_client_new(long timeout_ms);
/* Release; NULL is a no-op. */
void dun_http_client_destroy(struct dun_http_client *c);

/*
 * One request: method ("GET", "POST", "PUT") to url with n_headers header
 * lines ("Name: value") and body (len bytes, may be NULL for none). The
 * reply is always filled in; the return value is DUN_OK when a status line
 * came back, DUN_E_TIMEOUT or DUN_E_PLATFORM otherwise (the reply says more).
 * Borrows everything for the call. Redirects are not followed; only http
 * and https are spoken.
 */
enum dun_err dun_http_client_send(struct dun_http_client *c, const char *method, const char *url,
				  const char *const *headers, int n_headers, const char *body,
				  size_t len, struct dun_http_reply *out);

#endif
