/*
 * stripe.c — the Stripe API client and the provider over it (see stripe.h).
 *
 * It sits at the right edge of the pipeline: the applier (EXECUTE) writes
 * through the provider ops at the bottom of this file, the re-check before
 * destructive consequences reads through list_invoices, and `dunning sync`
 * and `dunning backfill` read through dun_stripe_list. Every request of the
 * project to Stripe goes through run(), so the rules below hold everywhere.
 *
 * Requests
 * --------
 * A request is a struct call: method, URL, form body, the base of its
 * Idempotency-Key. run() drives any number of them at once with one curl
 * multi handle (at most PARALLEL_MAX in flight), which is how the invoice
 * payments of many invoices are fetched in parallel; a single request is a
 * batch of one. Each transfer first takes a token from the client's bucket,
 * shared by every thread, so the configured rate is never exceeded however
 * many threads and batches run.
 *
 * Retries
 * -------
 * Connection errors, timeouts, 409, 429 and 5xx are tried again, up to
 * [stripe] max_retries times, after 0.5 s, 1 s, 2 s, ... (capped at 8 s,
 * jittered down to between half and all of that), unless Stripe says
 * otherwise in Stripe-Should-Retry, which wins both ways. Other 4xx are
 * terminal. A Retry-After header (seconds, at most a minute) is the
 * shortest wait before the next try. A retry keeps the request's Idempotency-Key: Stripe stores the
 * answer of a request that began executing, so a retry of one that did
 * (a 500, a lost reply) gets that answer instead of acting twice, and one
 * that did not (409, 429) has nothing stored and simply runs.
 *
 * Idempotency keys
 * ----------------
 * The key of a POST is the consequence key the applier passes in (plus a
 * step name for the consolidated invoice's three requests), at a
 * generation: the base alone, then base/r1, base/r2, ... A key whose
 * stored answer is an error is useless — sending it again only replays the
 * error — so a NEW generation is used the next time:
 *   - after a terminal 4xx (or a 5xx with Stripe-Should-Retry: false) the
 *     client remembers, for as long as it lives, that this base goes on
 *     at the next generation;
 *   - a process that does not remember (a new CLI run) sends the old key,
 *     gets the stored error back marked Idempotent-Replayed: true, and
 *     moves on to the next generation at once. A replayed success stops
 *     the walk, so a request that succeeded is never executed again.
 * Both rules are what "use a new key after a 4xx" needs to mean when the
 * caller is a level-triggered engine that asks again with the same key.
 *
 * Shapes
 * ------
 * The API version is pinned ([stripe] version, 2025-03-31.basil by
 * default): invoices carry their subscription under parent and list their
 * payments at /v1/invoice_payments. list_invoices returns invoices, then
 * the invoice_payment objects of the open and uncollectible ones, each
 * followed by its expanded payment intent, all of which the mirror folds.
 * refresh_invoices (GATHER's targeted refresh, gather/refresh.h) reads
 * the same for a few named invoices and adds every charge of their
 * payment intents, so the mirror learns each attempt and its decline code,
 * earlier attempts included.
 */
#include "stripe.h"
#include "core/model.h"
#include "core/text.h"
#include "util/input.h"
#include "util/log.h"
#include "util/mem.h"

#include <curl/curl.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>
#include <unistd.h>

#define PARALLEL_MAX	  8		     /* transfers in flight per batch */
#define BATCH_MAX	  64		     /* calls prepared at once */
#define REPLY_MAX_BYTES	  (16 * 1024 * 1024) /* a larger reply is refused, not buffered */
#define WALKS_MAX	  8		     /* new keys taken after replayed errors, per call */
#define BACKOFF_BASE_MS	  500
#define BACKOFF_MAX_MS	  8000
#define CONNECT_MAX_MS	  10000
#define GEN_SLOTS	  512 /* remembered bases that met an error */
#define COVERS_VALUE_MAX  500
#define COVERS_KEYS_MAX	  40
#define RATE_HEADROOM	  1.10 /* see dun_stripe_bucket_rate */
#define ERR_TEXT_MAX	  512
#define RETRY_AFTER_MAX_S 60 /* a longer Retry-After is waited only this long */

/* ---- form encoding --------------------------------------------------------- */

void dun_form_init(struct dun_form *f)
{
	memset(f, 0, sizeof *f);
}

void dun_form_free(struct dun_form *f)
{
	free(f->buf);
	memset(f, 0, sizeof *f);
}

static void form_reserve(struct dun_form *f, size_t more)
{
	if (f->len + more + 1 <= f->cap)
		return;
	size_t cap = f->cap ? f->cap : 64;
	while (cap < f->len + more + 1)
		cap *= 2;
	f->buf = dun_realloc(f->buf, cap);
	f->cap = cap;
}

static bool unreserved(unsigned char c)
{
	return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') ||
	       c == '-' || c == '.' || c == '_' || c == '~';
}

static void form_escape(struct dun_form *f, const char *s, bool keep_brackets)
{
	static const char hex[] = "0123456789ABCDEF";
	for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
		form_reserve(f, 3);
		if (unreserved(*p) || (keep_brackets && (*p == '[' || *p == ']'))) {
			f->buf[f->len++] = (char)*p;
		} else {
			f->buf[f->len++] = '%';
			f->buf[f->len++] = hex[*p >> 4];
			f->buf[f->len++] = hex[*p & 15];
		}
	}
	form_reserve(f, 0);
	f->buf[f->len] = '\0';
}

static void form_raw(struct dun_form *f, const char *s)
{
	size_t n = strlen(s);
	form_reserve(f, n);
	memcpy(f->buf + f->len, s, n + 1);
	f->len += n;
}

static void form_sep(struct dun_form *f)
{
	if (f->len)
		form_raw(f, "&");
}

void dun_form_add(struct dun_form *f, const char *key, const char *value)
{
	form_sep(f);
	form_escape(f, key, true);
	form_raw(f, "=");
	form_escape(f, value, false);
}

void dun_form_add_sub(struct dun_form *f, const char *parent, const char *sub, const char *value)
{
	form_sep(f);
	form_escape(f, parent, true);
	form_raw(f, "[");
	form_escape(f, sub, false);
	form_raw(f, "]=");
	form_escape(f, value, false);
}

void dun_form_add_i64(struct dun_form *f, const char *key, int64_t value)
{
	char num[32];
	snprintf(num, sizeof num, "%" PRId64, value);
	dun_form_add(f, key, num);
}

const char *dun_form_str(const struct dun_form *f)
{
	return f->buf ? f->buf : "";
}

/* Append everything of src to dst. */
static void form_append(struct dun_form *dst, const struct dun_form *src)
{
	if (!src || !src->len)
		return;
	form_sep(dst);
	form_raw(dst, src->buf);
}

enum dun_err dun_stripe_form_covers(struct dun_form *f, const char *const *ids, int n)
{
	struct dun_form tmp;
	dun_form_init(&tmp);
	char value[COVERS_VALUE_MAX + 1];
	size_t len = 0;
	int part = 0;
	enum dun_err e = DUN_OK;
	for (int i = 0; i <= n && e == DUN_OK; i++) {
		size_t k = i < n ? strlen(ids[i]) : 0;
		if (k > COVERS_VALUE_MAX) {
			e = DUN_E_TOO_BIG;
			break;
		}
		/* Flush the value when the next id no longer fits, and at the end. */
		if (len && (i == n || len + 1 + k > COVERS_VALUE_MAX)) {
			char key[40];
			if (++part > COVERS_KEYS_MAX) {
				e = DUN_E_TOO_BIG;
				break;
			}
			if (part == 1)
				snprintf(key, sizeof key, "bad_debt_invoices");
			else
				snprintf(key, sizeof key, "bad_debt_invoices_%d", part);
			dun_form_add_sub(&tmp, "metadata", key, value);
			len = 0;
		}
		if (i < n) {
			if (len)
				value[len++] = ',';
			memcpy(value + len, ids[i], k + 1);
			len += k;
		}
	}
	if (e == DUN_OK)
		form_append(f, &tmp);
	dun_form_free(&tmp);
	return e;
}

/* ---- rate, backoff, keys --------------------------------------------------- */

void dun_stripe_bucket_init(struct dun_stripe_bucket *b, double rate_per_s, double capacity,
			    int64_t now_us)
{
	b->rate_per_s = rate_per_s;
	b->capacity = capacity;
	b->tokens = capacity;
	b->updated_us = now_us;
}

int64_t dun_stripe_bucket_take(struct dun_stripe_bucket *b, int64_t now_us)
{
	if (now_us > b->updated_us) {
		b->tokens += (double)(now_us - b->updated_us) * b->rate_per_s / 1e6;
		if (b->tokens > b->capacity)
			b->tokens = b->capacity;
		b->updated_us = now_us;
	}
	b->tokens -= 1.0;
	if (b->tokens >= 0)
		return 0;
	/* Rounded up: sending a microsecond late is harmless, early is not. */
	return (int64_t)(-b->tokens * 1e6 / b->rate_per_s) + 1;
}

double dun_stripe_bucket_rate(double limit_per_s)
{
	/*
	 * With one token of capacity, any window shorter than 1.1 s holds
	 * fewer than 1 + limit_per_s tokens' worth, so at most limit_per_s
	 * requests start in it: 100 ms of jitter are absorbed (delays in our
	 * own scheduling, the network, the server's). 2.5 % was not enough
	 * on a loaded machine.
	 */
	return limit_per_s / RATE_HEADROOM;
}

int64_t dun_stripe_backoff_ms(int retry, double u01)
{
	int64_t d = BACKOFF_BASE_MS;
	for (int i = 1; i < retry && d < BACKOFF_MAX_MS; i++)
		d *= 2;
	if (d > BACKOFF_MAX_MS)
		d = BACKOFF_MAX_MS;
	if (!(u01 >= 0))
		u01 = 0;
	if (u01 >= 1)
		u01 = 0.999999;
	return d / 2 + (int64_t)((double)(d - d / 2) * u01);
}

static uint64_t fnv1a(uint64_t h, const char *s)
{
	for (; *s; s++) {
		h ^= (unsigned char)*s;
		h *= 1099511628211ULL;
	}
	return h;
}

void dun_stripe_idem_key(const char *base, int gen, char *out)
{
	char suffix[24] = "";
	if (gen > 0)
		snprintf(suffix, sizeof suffix, "/r%d", gen);
	size_t b = strlen(base), sl = strlen(suffix);
	bool printable = true;
	for (const unsigned char *p = (const unsigned char *)base; *p && printable; p++)
		printable = *p > 0x20 && *p < 0x7f;
	if (printable && b + sl < DUN_STRIPE_IDEM_MAX) {
		memcpy(out, base, b);
		memcpy(out + b, suffix, sl + 1);
		return;
	}
	uint64_t h = fnv1a(fnv1a(14695981039346656037ULL, base), suffix);
	/* Too long, or not printable ASCII (the core's keys always are): a
	 * printable prefix and a hash of the whole. */
	size_t k = 0;
	for (const unsigned char *p = (const unsigned char *)base; *p && k < 238; p++)
		out[k++] = *p > 0x20 && *p < 0x7f ? (char)*p : '_';
	snprintf(out + k, DUN_STRIPE_IDEM_MAX - k, "~%016" PRIx64, h);
}

/* ---- the client ------------------------------------------------------------- */

struct gen_slot {
	uint64_t hash; /* of the key base; 0 = free */
	int gen;
};

struct dun_stripe {
	char api_key[256];
	char base_url[DUN_CONFIG_STR];
	char version[64];
	long timeout_ms;
	long connect_timeout_ms;
	int max_retries;
	CURLSH *share; /* the DNS cache of every thread */
	pthread_mutex_t share_mu[CURL_LOCK_DATA_LAST];
	pthread_mutex_t mu; /* guards what follows */
	/*
	 * Multi handles not in use, each with its cache of open connections.
	 * A call takes one and gives it back, so connections are reused
	 * across calls while a handle is never used by two threads at once
	 * (libcurl does not support sharing a connection cache between
	 * threads).
	 */
	CURLM **idle;
	int n_idle, cap_idle;
	struct dun_stripe_bucket bucket;
	uint64_t rng;
	struct gen_slot gens[GEN_SLOTS];
	int gen_next; /* the slot a new base takes: the oldest */
};

static int64_t mono_us(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

static pthread_once_t curl_once = PTHREAD_ONCE_INIT;
static CURLcode curl_init_rc = CURLE_OK;

static void curl_init(void)
{
	curl_init_rc = curl_global_init(CURL_GLOBAL_DEFAULT);
}

static void share_lock(CURL *h, curl_lock_data data, curl_lock_access access, void *user)
{
	struct dun_stripe *s = user;
	(void)h;
	(void)access;
	if ((int)data >= 0 && (int)data < (int)CURL_LOCK_DATA_LAST)
		pthread_mutex_lock(&s->share_mu[data]);
}

static void share_unlock(CURL *h, curl_lock_data data, void *user)
{
	struct dun_stripe *s = user;
	(void)h;
	if ((int)data >= 0 && (int)data < (int)CURL_LOCK_DATA_LAST)
		pthread_mutex_unlock(&s->share_mu[data]);
}

/* Whether url is plain http to a loopback address (tests, a local proxy). */
static bool loopback_http(const char *url)
{
	static const char *const hosts[] = {"http://127.0.0.1", "http://localhost", "http://[::1]"};
	for (size_t i = 0; i < sizeof hosts / sizeof hosts[0]; i++) {
		size_t n = strlen(hosts[i]);
		if (!strncmp(url, hosts[i], n) &&
		    (url[n] == '\0' || url[n] == ':' || url[n] == '/'))
			return true;
	}
	return false;
}

static bool header_safe(const char *s)
{
	for (const unsigned char *p = (const unsigned char *)s; *p; p++)
		if (*p <= ' ' || *p >= 127)
			return false;
	return true;
}

enum dun_err dun_stripe_new(const struct dun_config *cfg, struct dun_stripe **out, char *err,
			    size_t err_size)
{
	*out = NULL;
	if (!cfg->stripe_api_key[0]) {
		snprintf(err, err_size,
			 "[stripe] api_key is empty (set it in the configuration or in "
			 "STRIPE_API_KEY)");
		return DUN_E_CONFIG;
	}
	if (!header_safe(cfg->stripe_api_key)) {
		snprintf(err, err_size,
			 "[stripe] api_key contains spaces or control characters; it cannot be "
			 "sent");
		return DUN_E_CONFIG;
	}
	const char *base = cfg->stripe_api_base;
	char shown[DUN_CONFIG_STR];
	dun_input_redact_url(base, shown, sizeof shown); /* secrets stay out of messages */
	if (strncmp(base, "https://", 8) != 0 && !loopback_http(base)) {
		snprintf(err, err_size,
			 "[stripe] api_base must be an https:// URL (plain http only to "
			 "127.0.0.1, localhost or [::1]), not \"%s\"",
			 shown);
		return DUN_E_CONFIG;
	}
	if (!header_safe(base) || strchr(base, '?') || strchr(base, '#') || strchr(base, '@')) {
		snprintf(err, err_size, "[stripe] api_base \"%s\" is not a plain base URL", shown);
		return DUN_E_CONFIG;
	}
	if (!cfg->stripe_version[0] || !header_safe(cfg->stripe_version)) {
		snprintf(err, err_size,
			 "[stripe] version must be an API version such as "
			 "2025-03-31.basil");
		return DUN_E_CONFIG;
	}
	if (!(cfg->stripe_rate_limit_per_s > 0) || cfg->stripe_timeout_ms <= 0 ||
	    cfg->stripe_max_retries < 0) {
		snprintf(err, err_size,
			 "[stripe] rate_limit_per_s and timeout_ms must be positive, "
			 "max_retries not negative");
		return DUN_E_CONFIG;
	}
	pthread_once(&curl_once, curl_init);
	if (curl_init_rc != CURLE_OK) {
		snprintf(err, err_size, "libcurl: %s", curl_easy_strerror(curl_init_rc));
		return DUN_E_IO;
	}
	struct dun_stripe *s = dun_calloc(1, sizeof *s);
	dun_strlcpy(s->api_key, cfg->stripe_api_key, sizeof s->api_key);
	dun_strlcpy(s->base_url, base, sizeof s->base_url);
	size_t n = strlen(s->base_url);
	while (n > 0 && s->base_url[n - 1] == '/')
		s->base_url[--n] = '\0';
	dun_strlcpy(s->version, cfg->stripe_version, sizeof s->version);
	s->timeout_ms = (long)cfg->stripe_timeout_ms;
	s->connect_timeout_ms = s->timeout_ms < CONNECT_MAX_MS ? s->timeout_ms : CONNECT_MAX_MS;
	s->max_retries = cfg->stripe_max_retries;
	pthread_mutex_init(&s->mu, NULL);
	for (int i = 0; i < (int)CURL_LOCK_DATA_LAST; i++)
		pthread_mutex_init(&s->share_mu[i], NULL);
	s->share = curl_share_init();
	if (!s->share)
		dun_oom();
	curl_share_setopt(s->share, CURLSHOPT_LOCKFUNC, share_lock);
	curl_share_setopt(s->share, CURLSHOPT_UNLOCKFUNC, share_unlock);
	curl_share_setopt(s->share, CURLSHOPT_USERDATA, s);
	curl_share_setopt(s->share, CURLSHOPT_SHARE, CURL_LOCK_DATA_DNS);
	int64_t now = mono_us();
	dun_stripe_bucket_init(&s->bucket, dun_stripe_bucket_rate(cfg->stripe_rate_limit_per_s),
			       1.0, now);
	s->rng = (uint64_t)now ^ ((uint64_t)getpid() << 32) ^ (uint64_t)(uintptr_t)s;
	if (!s->rng)
		s->rng = 88172645463325252ULL;
	*out = s;
	return DUN_OK;
}

void dun_stripe_destroy(struct dun_stripe *s)
{
	if (!s)
		return;
	for (int i = 0; i < s->n_idle; i++)
		curl_multi_cleanup(s->idle[i]);
	free(s->idle);
	curl_share_cleanup(s->share);
	for (int i = 0; i < (int)CURL_LOCK_DATA_LAST; i++)
		pthread_mutex_destroy(&s->share_mu[i]);
	pthread_mutex_destroy(&s->mu);
	explicit_bzero(s->api_key, sizeof s->api_key);
	free(s);
}

static CURLM *multi_take(struct dun_stripe *s)
{
	CURLM *m = NULL;
	pthread_mutex_lock(&s->mu);
	if (s->n_idle)
		m = s->idle[--s->n_idle];
	pthread_mutex_unlock(&s->mu);
	if (!m) {
		m = curl_multi_init();
		if (!m)
			dun_oom();
		curl_multi_setopt(m, CURLMOPT_MAXCONNECTS, (long)PARALLEL_MAX);
	}
	return m;
}

static void multi_give(struct dun_stripe *s, CURLM *m)
{
	pthread_mutex_lock(&s->mu);
	if (s->n_idle == s->cap_idle) {
		s->cap_idle = s->cap_idle ? s->cap_idle * 2 : 4;
		s->idle = dun_realloc(s->idle, (size_t)s->cap_idle * sizeof *s->idle);
	}
	s->idle[s->n_idle++] = m;
	pthread_mutex_unlock(&s->mu);
}

/* How long to wait (µs) before the next transfer may start. */
static int64_t take_token(struct dun_stripe *s)
{
	pthread_mutex_lock(&s->mu);
	int64_t wait = dun_stripe_bucket_take(&s->bucket, mono_us());
	pthread_mutex_unlock(&s->mu);
	return wait;
}

/* A uniform random number in [0, 1) for jitter (xorshift64*). */
static double random01(struct dun_stripe *s)
{
	pthread_mutex_lock(&s->mu);
	uint64_t x = s->rng;
	x ^= x >> 12;
	x ^= x << 25;
	x ^= x >> 27;
	s->rng = x;
	pthread_mutex_unlock(&s->mu);
	return (double)((x * 2685821657736338717ULL) >> 11) / 9007199254740992.0;
}

static uint64_t base_hash(const char *base)
{
	uint64_t h = fnv1a(14695981039346656037ULL, base);
	return h ? h : 1;
}

/* The generation a key base continues at (0 unless it met an error). */
static int gen_get(struct dun_stripe *s, const char *base)
{
	uint64_t h = base_hash(base);
	int gen = 0;
	pthread_mutex_lock(&s->mu);
	for (int i = 0; i < GEN_SLOTS; i++)
		if (s->gens[i].hash == h) {
			gen = s->gens[i].gen;
			break;
		}
	pthread_mutex_unlock(&s->mu);
	return gen;
}

static void gen_put(struct dun_stripe *s, const char *base, int gen)
{
	uint64_t h = base_hash(base);
	pthread_mutex_lock(&s->mu);
	int slot = -1;
	for (int i = 0; i < GEN_SLOTS && slot < 0; i++)
		if (s->gens[i].hash == h)
			slot = i;
	if (slot < 0) {
		slot = s->gen_next;
		s->gen_next = (s->gen_next + 1) % GEN_SLOTS;
		s->gens[slot].hash = h;
	}
	if (gen > s->gens[slot].gen)
		s->gens[slot].gen = gen;
	pthread_mutex_unlock(&s->mu);
}

/* Replace every occurrence of the API key in text by a masked form. */
static void scrub(const struct dun_stripe *s, char *text, size_t size)
{
	size_t klen = strlen(s->api_key);
	if (!klen || !strstr(text, s->api_key))
		return;
	char mask[16];
	snprintf(mask, sizeof mask, "%.7s_****", s->api_key);
	char *out = dun_malloc(size);
	size_t o = 0;
	for (const char *p = text; *p && o + 1 < size;) {
		if (!strncmp(p, s->api_key, klen)) {
			for (const char *m = mask; *m && o + 1 < size; m++)
				out[o++] = *m;
			p += klen;
		} else {
			out[o++] = *p++;
		}
	}
	out[o] = '\0';
	memcpy(text, out, o + 1);
	free(out);
}

/* ---- one request ------------------------------------------------------------- */

struct call {
	/* what */
	const char *method;
	char path[512]; /* without the query: what messages and logs name */
	char *url;
	char *body;				 /* POST only */
	char idem_base[DUN_STRIPE_IDEM_MAX * 2]; /* POST only */
	int gen;
	bool is_post;
	bool card_error_ok; /* a 402 card_error is an answer (the pay endpoint) */
	/* progress */
	int tries;
	int walks;
	int64_t not_before_us;
	bool reserved; /* holds a rate token for not_before_us */
	CURL *easy;
	struct curl_slist *hdrs;
	int64_t started_us;
	char *reply;
	size_t reply_len, reply_cap;
	bool too_big;
	char should_retry; /* 0 (no header), 't' or 'f' */
	int retry_after_s; /* Retry-After in seconds, 0 when absent */
	bool replayed;
	char request_id[64];
	char curl_err[CURL_ERROR_SIZE];
	char key[DUN_STRIPE_IDEM_MAX];
	/* outcome */
	bool done;
	long status;
	bool card_declined;
	enum dun_err e;
	json_t *obj;
	char err[ERR_TEXT_MAX];
};

static enum dun_err call_init(struct dun_stripe *s, struct call *c, const char *method,
			      const char *path, const struct dun_form *params,
			      const char *idem_base, char *err, size_t err_size)
{
	memset(c, 0, sizeof *c);
	c->method = method;
	c->is_post = !strcmp(method, "POST");
	if (strlen(path) >= sizeof c->path || path[0] != '/') {
		snprintf(err, err_size, "%s %.64s...: not an API path", method, path);
		return DUN_E_INVALID;
	}
	snprintf(c->path, sizeof c->path, "%s", path);
	const char *q = params ? dun_form_str(params) : "";
	if (c->is_post) {
		if (!idem_base || !idem_base[0]) {
			snprintf(err, err_size, "POST %s: no idempotency key given", path);
			return DUN_E_INVALID;
		}
		dun_strlcpy(c->idem_base, idem_base, sizeof c->idem_base);
		c->gen = gen_get(s, c->idem_base);
		c->body = dun_strdup(q);
		c->url = dun_asprintf("%s%s", s->base_url, path);
	} else {
		c->url = dun_asprintf("%s%s%s%s", s->base_url, path, q[0] ? "?" : "", q);
	}
	c->e = DUN_E_PROVIDER;
	return DUN_OK;
}

static void call_free(struct call *c)
{
	free(c->url);
	free(c->body);
	free(c->reply);
	json_decref(c->obj);
	c->url = c->body = c->reply = NULL;
	c->obj = NULL;
}

static size_t on_body(char *data, size_t size, size_t n, void *user)
{
	struct call *c = user;
	size_t k = size * n;
	if (c->reply_len + k > REPLY_MAX_BYTES) {
		c->too_big = true;
		return 0;
	}
	if (c->reply_len + k + 1 > c->reply_cap) {
		size_t cap = c->reply_cap ? c->reply_cap : 4096;
		while (cap < c->reply_len + k + 1)
			cap *= 2;
		c->reply = dun_realloc(c->reply, cap);
		c->reply_cap = cap;
	}
	memcpy(c->reply + c->reply_len, data, k);
	c->reply_len += k;
	c->reply[c->reply_len] = '\0';
	return k;
}

/* If line is "name: value", copy the value (trimmed) into out. */
static bool header_value(const char *line, size_t len, const char *name, char *out, size_t out_size)
{
	size_t n = strlen(name);
	if (len <= n || strncasecmp(line, name, n) != 0 || line[n] != ':')
		return false;
	const char *p = line + n + 1, *end = line + len;
	while (p < end && (*p == ' ' || *p == '\t'))
		p++;
	while (end > p && (end[-1] == '\r' || end[-1] == '\n' || end[-1] == ' '))
		end--;
	size_t m = (size_t)(end - p);
	if (m >= out_size)
		m = out_size - 1;
	memcpy(out, p, m);
	out[m] = '\0';
	return true;
}

static size_t on_header(char *data, size_t size, size_t n, void *user)
{
	struct call *c = user;
	size_t k = size * n;
	char v[64];
	if (k >= 5 && !strncmp(data, "HTTP/", 5)) {
		/* A new response (after a 100 Continue): forget the last one's headers. */
		c->should_retry = 0;
		c->retry_after_s = 0;
		c->replayed = false;
		c->request_id[0] = '\0';
	} else if (header_value(data, k, "Stripe-Should-Retry", v, sizeof v)) {
		c->should_retry = !strcasecmp(v, "true") ? 't' : !strcasecmp(v, "false") ? 'f' : 0;
	} else if (header_value(data, k, "Retry-After", v, sizeof v)) {
		/* Seconds only; an HTTP date (never sent by Stripe) is ignored. */
		char *end = NULL;
		long secs = strtol(v, &end, 10);
		c->retry_after_s = end != v && *end == '\0' && secs > 0
				       ? (int)(secs < RETRY_AFTER_MAX_S ? secs : RETRY_AFTER_MAX_S)
				       : 0;
	} else if (header_value(data, k, "Idempotent-Replayed", v, sizeof v)) {
		c->replayed = !strcasecmp(v, "true");
	} else {
		header_value(data, k, "Request-Id", c->request_id, sizeof c->request_id);
	}
	return k;
}

static struct curl_slist *add_header(struct curl_slist *list, const char *line)
{
	struct curl_slist *l = curl_slist_append(list, line);
	if (!l)
		dun_oom();
	return l;
}

static void start(struct dun_stripe *s, CURLM *m, struct call *c)
{
	c->reply_len = 0;
	if (c->reply)
		c->reply[0] = '\0';
	c->too_big = false;
	c->should_retry = 0;
	c->retry_after_s = 0;
	c->replayed = false;
	c->request_id[0] = '\0';
	c->curl_err[0] = '\0';
	CURL *e = curl_easy_init();
	if (!e)
		dun_oom();
	char line[DUN_STRIPE_IDEM_MAX + 320];
	struct curl_slist *h = NULL;
	snprintf(line, sizeof line, "Authorization: Bearer %s", s->api_key);
	h = add_header(h, line);
	explicit_bzero(line, sizeof line);
	snprintf(line, sizeof line, "Stripe-Version: %s", s->version);
	h = add_header(h, line);
	h = add_header(h, "Accept: application/json");
	h = add_header(h, "User-Agent: dunning-stripe/1");
	h = add_header(h, "Expect:"); /* no 100-continue round trip */
	if (c->is_post) {
		h = add_header(h, "Content-Type: application/x-www-form-urlencoded");
		dun_stripe_idem_key(c->idem_base, c->gen, c->key);
		snprintf(line, sizeof line, "Idempotency-Key: %s", c->key);
		h = add_header(h, line);
		curl_easy_setopt(e, CURLOPT_POST, 1L);
		curl_easy_setopt(e, CURLOPT_POSTFIELDS, c->body);
		curl_easy_setopt(e, CURLOPT_POSTFIELDSIZE, (long)strlen(c->body));
	} else if (!strcmp(c->method, "DELETE")) {
		curl_easy_setopt(e, CURLOPT_CUSTOMREQUEST, "DELETE");
	} else {
		curl_easy_setopt(e, CURLOPT_HTTPGET, 1L);
	}
	c->hdrs = h;
	curl_easy_setopt(e, CURLOPT_URL, c->url);
	curl_easy_setopt(e, CURLOPT_HTTPHEADER, h);
	curl_easy_setopt(e, CURLOPT_SHARE, s->share);
	curl_easy_setopt(e, CURLOPT_NOSIGNAL, 1L);
	curl_easy_setopt(e, CURLOPT_TIMEOUT_MS, s->timeout_ms);
	curl_easy_setopt(e, CURLOPT_CONNECTTIMEOUT_MS, s->connect_timeout_ms);
#if LIBCURL_VERSION_NUM >= 0x075500
	curl_easy_setopt(e, CURLOPT_PROTOCOLS_STR, "http,https");
#endif
	curl_easy_setopt(e, CURLOPT_FOLLOWLOCATION, 0L);
	curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, on_body);
	curl_easy_setopt(e, CURLOPT_WRITEDATA, c);
	curl_easy_setopt(e, CURLOPT_HEADERFUNCTION, on_header);
	curl_easy_setopt(e, CURLOPT_HEADERDATA, c);
	curl_easy_setopt(e, CURLOPT_ERRORBUFFER, c->curl_err);
	curl_easy_setopt(e, CURLOPT_PRIVATE, c);
	c->easy = e;
	c->started_us = mono_us();
	c->tries++;
	curl_multi_add_handle(m, e);
}

/* Map a transport failure once; *retry says whether trying again may help. */
static enum dun_err transport_err(const struct call *c, CURLcode cc, bool *retry)
{
	*retry = false;
	if (cc == CURLE_OPERATION_TIMEDOUT) {
		*retry = true;
		return DUN_E_TIMEOUT;
	}
	if (cc == CURLE_WRITE_ERROR && c->too_big)
		return DUN_E_TOO_BIG;
	if (cc == CURLE_URL_MALFORMAT || cc == CURLE_UNSUPPORTED_PROTOCOL)
		return DUN_E_CONFIG;
	if (cc == CURLE_COULDNT_RESOLVE_HOST || cc == CURLE_COULDNT_RESOLVE_PROXY ||
	    cc == CURLE_COULDNT_CONNECT || cc == CURLE_SEND_ERROR || cc == CURLE_RECV_ERROR ||
	    cc == CURLE_GOT_NOTHING || cc == CURLE_PARTIAL_FILE || cc == CURLE_SSL_CONNECT_ERROR ||
	    cc == CURLE_HTTP2 || cc == CURLE_HTTP2_STREAM)
		*retry = true;
	return DUN_E_PROVIDER;
}

static const char *jstr(json_t *o, const char *k)
{
	json_t *v = json_object_get(o, k);
	return json_is_string(v) ? json_string_value(v) : "";
}

/* Describe an error reply in c->err from Stripe's {"error": {...}}. */
static void describe_error(struct call *c)
{
	json_t *root = c->reply ? json_loads(c->reply, 0, NULL) : NULL;
	json_t *eo = json_object_get(root, "error");
	const char *type = jstr(eo, "type"), *code = jstr(eo, "code");
	const char *decline = jstr(eo, "decline_code"), *msg = jstr(eo, "message");
	c->card_declined = c->status == 402 && !strcmp(type, "card_error");
	struct dun_text t;
	dun_text_init(&t, c->err, sizeof c->err);
	dun_text_str(&t, c->method);
	dun_text_str(&t, " ");
	dun_text_str(&t, c->path);
	dun_text_str(&t, ": HTTP ");
	dun_text_i64(&t, c->status);
	if (type[0]) {
		dun_text_str(&t, " ");
		dun_text_str(&t, type);
	}
	if (code[0] || decline[0]) {
		dun_text_str(&t, " (");
		dun_text_str(&t, code[0] ? code : decline);
		if (code[0] && decline[0] && strcmp(code, decline) != 0) {
			dun_text_str(&t, ", decline_code ");
			dun_text_str(&t, decline);
		}
		dun_text_str(&t, ")");
	}
	dun_text_str(&t, ": ");
	dun_text_str(&t, msg[0] ? msg : eo ? "no message" : "the reply is not a Stripe error");
	if (c->status == 401)
		dun_text_str(&t, " (check [stripe] api_key)");
	json_decref(root);
}

/* c->err = "METHOD /path: what[: detail]". */
static void err_text(struct call *c, const char *what, const char *detail)
{
	struct dun_text t;
	dun_text_init(&t, c->err, sizeof c->err);
	dun_text_str(&t, c->method);
	dun_text_str(&t, " ");
	dun_text_str(&t, c->path);
	dun_text_str(&t, ": ");
	if (c->status) {
		dun_text_str(&t, "HTTP ");
		dun_text_i64(&t, c->status);
		dun_text_str(&t, ": ");
	}
	dun_text_str(&t, what);
	if (detail[0]) {
		dun_text_str(&t, ": ");
		dun_text_str(&t, detail);
	}
}

static void log_request(const struct call *c, int64_t ms)
{
	char status[16], dur[24], tries[16];
	snprintf(status, sizeof status, "%ld", c->status);
	snprintf(dur, sizeof dur, "%" PRId64, ms);
	snprintf(tries, sizeof tries, "%d", c->tries);
	dun_log(DUN_LOG_DEBUG, "stripe.request", "method", c->method, "path", c->path, "status",
		status, "ms", dur, "try", tries, "idempotency_key", c->is_post ? c->key : "",
		"request_id", c->request_id, "replayed", c->replayed ? "true" : "false", NULL);
}

/*
 * A transfer of c ended with cc: classify it, and either settle the call
 * or schedule it again (retry with the same key, or a new key after a
 * replayed error).
 */
static void finish(struct dun_stripe *s, CURLM *m, struct call *c, CURLcode cc)
{
	long status = 0;
	curl_easy_getinfo(c->easy, CURLINFO_RESPONSE_CODE, &status);
	curl_multi_remove_handle(m, c->easy);
	curl_easy_cleanup(c->easy);
	c->easy = NULL;
	curl_slist_free_all(c->hdrs);
	c->hdrs = NULL;
	int64_t now = mono_us();
	c->status = status;
	c->card_declined = false;
	bool retry = false, by_status = false;
	json_decref(c->obj);
	c->obj = NULL;
	if (cc != CURLE_OK) {
		c->status = 0;
		c->e = transport_err(c, cc, &retry);
		err_text(c,
			 c->e == DUN_E_TIMEOUT ? "no answer in time"
			 : c->too_big	       ? "the reply is larger than 16 MiB"
					       : "cannot reach Stripe",
			 c->curl_err[0] ? c->curl_err : curl_easy_strerror(cc));
	} else if (status >= 200 && status < 300) {
		c->obj = c->reply ? json_loads(c->reply, 0, NULL) : NULL;
		if (json_is_object(c->obj)) {
			c->e = DUN_OK;
			c->err[0] = '\0';
		} else {
			json_decref(c->obj);
			c->obj = NULL;
			c->e = DUN_E_PARSE;
			err_text(c, "the reply is not a JSON object", "");
		}
	} else {
		describe_error(c);
		by_status = status == 409 || status == 429 || status >= 500;
		retry = c->should_retry == 't' || (by_status && c->should_retry != 'f');
		c->e = status == 401 ? DUN_E_CONFIG
		       : by_status   ? DUN_E_PROVIDER
				     : DUN_E_PROVIDER_REJECTED;
		if (c->card_declined && c->card_error_ok)
			retry = false;
	}
	scrub(s, c->err, sizeof c->err);
	log_request(c, (now - c->started_us) / 1000);
	bool post_error = c->is_post && c->e != DUN_OK && c->status >= 400 &&
			  !(c->card_declined && c->card_error_ok);
	if (post_error && c->replayed && c->walks < WALKS_MAX) {
		/* The stored answer of an earlier call: ask again under a new key. */
		char old[DUN_STRIPE_IDEM_MAX];
		memcpy(old, c->key, sizeof old);
		c->gen++;
		c->walks++;
		gen_put(s, c->idem_base, c->gen);
		dun_stripe_idem_key(c->idem_base, c->gen, c->key);
		dun_log(DUN_LOG_INFO, "stripe.new_key", "method", c->method, "path", c->path,
			"replayed_key", old, "idempotency_key", c->key, "error", c->err, NULL);
		c->tries = 0;
		c->not_before_us = now;
		c->reserved = false;
		return;
	}
	if (retry && c->tries <= s->max_retries) {
		int64_t wait_ms = dun_stripe_backoff_ms(c->tries, random01(s));
		if (wait_ms < (int64_t)c->retry_after_s * 1000)
			wait_ms = (int64_t)c->retry_after_s * 1000; /* Stripe's advice is a floor */
		char w[24], tries[16];
		snprintf(w, sizeof w, "%" PRId64, wait_ms);
		snprintf(tries, sizeof tries, "%d", c->tries);
		dun_log(DUN_LOG_INFO, "stripe.retry", "method", c->method, "path", c->path, "try",
			tries, "backoff_ms", w, "idempotency_key", c->is_post ? c->key : "",
			"error", c->err, NULL);
		c->not_before_us = now + wait_ms * 1000;
		c->reserved = false;
		return;
	}
	if (post_error && status != 401 && !by_status) {
		/* The key now holds (or may hold) an error: the next call takes a new one. */
		gen_put(s, c->idem_base, c->gen + 1);
	} else if (post_error && status >= 500 && c->should_retry == 'f') {
		gen_put(s, c->idem_base, c->gen + 1);
	}
	if (c->e != DUN_OK && c->tries > 1) {
		size_t len = strlen(c->err);
		snprintf(c->err + len, sizeof c->err - len, " (after %d tries)", c->tries);
	}
	c->done = true;
}

/* Run every call of calls to completion (success or a final error). */
static void run(struct dun_stripe *s, struct call *calls, int n)
{
	CURLM *m = multi_take(s);
	int left = n, flying = 0;
	for (int i = 0; i < n; i++)
		if (calls[i].done)
			left--;
	while (left > 0) {
		int64_t now = mono_us();
		int64_t wake = now + 1000000;
		for (int i = 0; i < n && flying < PARALLEL_MAX; i++) {
			struct call *c = &calls[i];
			if (c->done || c->easy)
				continue;
			if (!c->reserved) {
				if (now < c->not_before_us) {
					if (c->not_before_us < wake)
						wake = c->not_before_us;
					continue;
				}
				c->not_before_us = now + take_token(s);
				c->reserved = true;
			}
			if (now < c->not_before_us) {
				if (c->not_before_us < wake)
					wake = c->not_before_us;
				continue;
			}
			c->reserved = false;
			start(s, m, c);
			flying++;
		}
		int running = 0;
		curl_multi_perform(m, &running);
		CURLMsg *msg;
		int queued;
		while ((msg = curl_multi_info_read(m, &queued)) != NULL) {
			if (msg->msg != CURLMSG_DONE)
				continue;
			void *priv = NULL;
			CURLcode cc = msg->data.result;
			curl_easy_getinfo(msg->easy_handle, CURLINFO_PRIVATE, &priv);
			struct call *c = priv;
			flying--;
			finish(s, m, c, cc);
			if (c->done)
				left--;
		}
		if (left == 0)
			break;
		now = mono_us();
		int64_t wait_ms = wake > now ? (wake - now + 999) / 1000 : 0;
		if (wait_ms > 1000)
			wait_ms = 1000;
		if (flying > 0 || wait_ms > 0)
			curl_multi_poll(m, NULL, 0, (int)wait_ms, NULL);
	}
	multi_give(s, m);
}

/* Run one prepared call; hand over its object and error. */
static enum dun_err run_one(struct dun_stripe *s, struct call *c, json_t **obj_out, char *err,
			    size_t err_size)
{
	run(s, c, 1);
	if (obj_out) {
		*obj_out = c->obj;
		c->obj = NULL;
	}
	if (c->e != DUN_OK && err && err_size)
		snprintf(err, err_size, "%s", c->err);
	return c->e;
}

enum dun_err dun_stripe_call(struct dun_stripe *s, const char *method, const char *path,
			     const struct dun_form *params, const char *idem_base, json_t **obj_out,
			     char *err, size_t err_size)
{
	*obj_out = NULL;
	struct call c;
	enum dun_err e = call_init(s, &c, method, path, params, idem_base, err, err_size);
	if (e == DUN_OK)
		e = run_one(s, &c, obj_out, err, err_size);
	call_free(&c);
	return e;
}

/* Like dun_stripe_list, continuing after the id after ("" = from the start). */
static enum dun_err list_from(struct dun_stripe *s, const char *path, const struct dun_form *params,
			      const char *after_id, enum dun_err (*page)(void *user, json_t *data),
			      void *user, char *err, size_t err_size)
{
	char after[DUN_ID_MAX * 4];
	dun_strlcpy(after, after_id, sizeof after);
	for (;;) {
		struct dun_form q;
		dun_form_init(&q);
		form_append(&q, params);
		dun_form_add(&q, "limit", "100");
		if (after[0])
			dun_form_add(&q, "starting_after", after);
		json_t *list = NULL;
		enum dun_err e = dun_stripe_call(s, "GET", path, &q, NULL, &list, err, err_size);
		dun_form_free(&q);
		if (e != DUN_OK)
			return e;
		json_t *data = json_object_get(list, "data");
		if (!json_is_array(data)) {
			json_decref(list);
			snprintf(err, err_size, "GET %s: the reply is not a list", path);
			return DUN_E_PARSE;
		}
		e = page(user, data);
		bool more = json_is_true(json_object_get(list, "has_more"));
		size_t n = json_array_size(data);
		const char *last = n ? jstr(json_array_get(data, n - 1), "id") : "";
		bool stuck = more && (!last[0] || !strcmp(last, after));
		if (e == DUN_OK && more && !stuck)
			dun_strlcpy(after, last, sizeof after);
		json_decref(list);
		if (e != DUN_OK || !more)
			return e;
		if (stuck) {
			snprintf(err, err_size,
				 "GET %s: has_more without a new id to continue after", path);
			return DUN_E_PARSE;
		}
	}
}

enum dun_err dun_stripe_list(struct dun_stripe *s, const char *path, const struct dun_form *params,
			     enum dun_err (*page)(void *user, json_t *data), void *user, char *err,
			     size_t err_size)
{
	return list_from(s, path, params, "", page, user, err, err_size);
}

/* Append an invoice_payment and its expanded payment intent to the array user. */
static enum dun_err append_payments(void *user, json_t *data)
{
	json_t *out = user;
	size_t i;
	json_t *ip;
	json_array_foreach(data, i, ip)
	{
		json_array_append(out, ip);
		json_t *pay = json_object_get(ip, "payment");
		json_t *pi = json_object_get(pay, "payment_intent");
		if (json_is_object(pi))
			json_array_append(out, pi);
	}
	return DUN_OK;
}

static void payments_query(struct dun_form *q, const char *invoice_id)
{
	dun_form_add(q, "invoice", invoice_id);
	dun_form_add(q, "expand[]", "data.payment.payment_intent");
}

enum dun_err dun_stripe_invoice_payments(struct dun_stripe *s, const char *const *invoice_ids,
					 int n, json_t *out, char *err, size_t err_size)
{
	struct call *calls = dun_calloc(BATCH_MAX, sizeof *calls);
	enum dun_err result = DUN_OK;
	for (int at = 0; at < n && result == DUN_OK; at += BATCH_MAX) {
		int k = n - at < BATCH_MAX ? n - at : BATCH_MAX;
		int ready = 0;
		for (int i = 0; i < k && result == DUN_OK; i++) {
			struct dun_form q;
			dun_form_init(&q);
			payments_query(&q, invoice_ids[at + i]);
			dun_form_add(&q, "limit", "100");
			result = call_init(s, &calls[i], "GET", "/v1/invoice_payments", &q, NULL,
					   err, err_size);
			dun_form_free(&q);
			if (result == DUN_OK)
				ready++;
		}
		if (result == DUN_OK)
			run(s, calls, k);
		for (int i = 0; i < ready; i++) {
			struct call *c = &calls[i];
			if (result == DUN_OK && c->e != DUN_OK) {
				result = c->e;
				snprintf(err, err_size, "%s", c->err);
			}
			if (result == DUN_OK) {
				json_t *data = json_object_get(c->obj, "data");
				append_payments(out, data);
				size_t m = json_array_size(data);
				if (json_is_true(json_object_get(c->obj, "has_more")) && m) {
					/* Rare: more than 100 payments on one invoice. */
					struct dun_form q;
					dun_form_init(&q);
					payments_query(&q, invoice_ids[at + i]);
					result = list_from(s, "/v1/invoice_payments", &q,
							   jstr(json_array_get(data, m - 1), "id"),
							   append_payments, out, err, err_size);
					dun_form_free(&q);
				}
			}
			call_free(c);
		}
	}
	free(calls);
	return result;
}

/* ---- the provider ops ---------------------------------------------------------- */

/* Whether id can stand in a URL path as is (Stripe ids are [A-Za-z0-9_]). */
static bool valid_id(const char *id, char *err, size_t err_size)
{
	size_t n = id ? strlen(id) : 0;
	bool ok = n > 0 && n < DUN_ID_MAX;
	for (size_t i = 0; ok && i < n; i++)
		ok = unreserved((unsigned char)id[i]) && id[i] != '.' && id[i] != '~';
	if (!ok && err && err_size)
		snprintf(err, err_size, "\"%.64s\" is not a Stripe object id", id ? id : "");
	return ok;
}

static enum dun_err post(struct dun_stripe *s, const char *path, const struct dun_form *body,
			 const char *idem, json_t **out, char *err, size_t es)
{
	return dun_stripe_call(s, "POST", path, body, idem, out, err, es);
}

static enum dun_err set_metadata(struct dun_stripe *s, const char *collection, const char *id,
				 const char *key, const char *value, const char *idem, json_t **out,
				 char *err, size_t es)
{
	*out = NULL;
	if (!valid_id(id, err, es))
		return DUN_E_INVALID;
	char path[128];
	snprintf(path, sizeof path, "/v1/%s/%s", collection, id);
	struct dun_form f;
	dun_form_init(&f);
	dun_form_add_sub(&f, "metadata", key, value);
	enum dun_err e = post(s, path, &f, idem, out, err, es);
	dun_form_free(&f);
	return e;
}

static enum dun_err op_set_customer_metadata(void *self, const char *customer_id, const char *key,
					     const char *value, const char *idem, json_t **out,
					     char *err, size_t es)
{
	return set_metadata(self, "customers", customer_id, key, value, idem, out, err, es);
}

static enum dun_err op_set_invoice_metadata(void *self, const char *invoice_id, const char *key,
					    const char *value, const char *idem, json_t **out,
					    char *err, size_t es)
{
	return set_metadata(self, "invoices", invoice_id, key, value, idem, out, err, es);
}

/* GET path; the object when its status is one of want (NULL-terminated). */
static json_t *get_if_status(struct dun_stripe *s, const char *path, const char *const *want)
{
	json_t *o = NULL;
	char err[ERR_TEXT_MAX];
	if (dun_stripe_call(s, "GET", path, NULL, NULL, &o, err, sizeof err) != DUN_OK)
		return NULL;
	for (const char *const *w = want; *w; w++)
		if (!strcmp(jstr(o, "status"), *w))
			return o;
	json_decref(o);
	return NULL;
}

/*
 * POST /v1/invoices/{id}/{action} with an empty body. A transition is its
 * own proof: when the answer is an error that may hide an execution (a
 * 5xx, a lost reply) or a refusal because the invoice moved on (a 400),
 * the invoice's status says whether the transition happened, and if it
 * did, that is success; the next call under a new key would only be
 * refused by Stripe's state rules.
 */
static enum dun_err invoice_action(struct dun_stripe *s, const char *invoice_id, const char *action,
				   const char *target, const char *idem, json_t **out, char *err,
				   size_t es)
{
	*out = NULL;
	if (!valid_id(invoice_id, err, es))
		return DUN_E_INVALID;
	char path[128], inv_path[128];
	snprintf(path, sizeof path, "/v1/invoices/%s/%s", invoice_id, action);
	snprintf(inv_path, sizeof inv_path, "/v1/invoices/%s", invoice_id);
	enum dun_err e = post(s, path, NULL, idem, out, err, es);
	if (e == DUN_E_PROVIDER || e == DUN_E_PROVIDER_REJECTED || e == DUN_E_TIMEOUT) {
		const char *const want[] = {target, NULL};
		json_t *inv = get_if_status(s, inv_path, want);
		if (inv) {
			*out = inv;
			return DUN_OK;
		}
	}
	return e;
}

static enum dun_err op_mark_uncollectible(void *self, const char *invoice_id, const char *idem,
					  json_t **out, char *err, size_t es)
{
	return invoice_action(self, invoice_id, "mark_uncollectible", "uncollectible", idem, out,
			      err, es);
}

static enum dun_err op_void_invoice(void *self, const char *invoice_id, const char *idem,
				    json_t **out, char *err, size_t es)
{
	return invoice_action(self, invoice_id, "void", "void", idem, out, err, es);
}

static enum dun_err op_cancel_subscription(void *self, const char *sub_id, const char *idem,
					   json_t **out, char *err, size_t es)
{
	struct dun_stripe *s = self;
	*out = NULL;
	(void)idem; /* a DELETE is idempotent by itself; Stripe ignores keys on it */
	if (!valid_id(sub_id, err, es))
		return DUN_E_INVALID;
	char path[128];
	snprintf(path, sizeof path, "/v1/subscriptions/%s", sub_id);
	enum dun_err e = dun_stripe_call(s, "DELETE", path, NULL, NULL, out, err, es);
	if (e == DUN_E_PROVIDER_REJECTED) {
		/* Canceled already (by us before a lost reply, or by someone else): done. */
		static const char *const ended[] = {"canceled", "incomplete_expired", NULL};
		json_t *sub = get_if_status(s, path, ended);
		if (sub) {
			*out = sub;
			return DUN_OK;
		}
	}
	return e;
}

static enum dun_err op_pay_invoice(void *self, const char *invoice_id, const char *idem,
				   json_t **out, char *err, size_t es)
{
	struct dun_stripe *s = self;
	*out = NULL;
	if (!valid_id(invoice_id, err, es))
		return DUN_E_INVALID;
	char path[128], inv_path[128];
	snprintf(path, sizeof path, "/v1/invoices/%s/pay", invoice_id);
	snprintf(inv_path, sizeof inv_path, "/v1/invoices/%s", invoice_id);
	struct call c;
	enum dun_err e = call_init(s, &c, "POST", path, NULL, idem, err, es);
	if (e != DUN_OK) {
		call_free(&c);
		return e;
	}
	c.card_error_ok = true;
	e = run_one(s, &c, out, err, es);
	bool declined = c.card_declined;
	call_free(&c);
	if (e == DUN_OK)
		return DUN_OK;
	if (declined) {
		/*
		 * The attempt was made and the card declined: that is the
		 * outcome of a payment retry, not a failure to make one. The
		 * invoice (attempt_count, next_payment_attempt) is the answer.
		 */
		return dun_stripe_call(s, "GET", inv_path, NULL, NULL, out, err, es);
	}
	if (e == DUN_E_PROVIDER_REJECTED || e == DUN_E_PROVIDER || e == DUN_E_TIMEOUT) {
		/*
		 * Paid meanwhile (out of band, by the customer), or by this very
		 * request before its answer was lost (a 500 after executing, which
		 * Stripe stores under the key): the fresh invoice says so, and a
		 * paid invoice can never be charged again.
		 */
		static const char *const paid[] = {"paid", NULL};
		json_t *inv = get_if_status(s, inv_path, paid);
		if (inv) {
			*out = inv;
			return DUN_OK;
		}
	}
	return e;
}

/* metadata[md_key] of o, or "" */
static const char *jmeta(json_t *o, const char *md_key)
{
	return jstr(json_object_get(o, "metadata"), md_key);
}

struct md_search {
	const char *md_key, *md_value;
	json_t *found; /* the first match (owned), or NULL */
	json_t *all;   /* every match's metadata[md_collect] value, when md_collect */
	const char *md_collect;
};

static enum dun_err md_page(void *user, json_t *data)
{
	struct md_search *q = user;
	size_t i;
	json_t *o;
	json_array_foreach(data, i, o)
	{
		/* A voided object did nothing that could happen twice. */
		if (strcmp(jmeta(o, q->md_key), q->md_value) || !strcmp(jstr(o, "status"), "void"))
			continue;
		if (!q->found)
			q->found = json_incref(o);
		if (q->md_collect)
			json_array_append_new(q->all, json_string(jmeta(o, q->md_collect)));
	}
	return DUN_OK;
}

/*
 * Whether an earlier run already created the object a create would make:
 * the objects of path filtered by (filter, value), searched for the
 * metadata the create sets. Lists are read-after-write consistent (the
 * search API is not, so it is never used for this).
 */
static enum dun_err find_created(struct dun_stripe *s, const char *path, const char *filter,
				 const char *value, const char *filter2, const char *value2,
				 struct md_search *q, char *err, size_t es)
{
	struct dun_form f;
	dun_form_init(&f);
	dun_form_add(&f, filter, value);
	if (filter2)
		dun_form_add(&f, filter2, value2);
	enum dun_err e = dun_stripe_list(s, path, &f, md_page, q, err, es);
	dun_form_free(&f);
	return e;
}

static bool json_has_string(json_t *arr, const char *v)
{
	size_t i;
	json_t *x;
	json_array_foreach(arr, i, x)
	{
		if (json_is_string(x) && !strcmp(json_string_value(x), v))
			return true;
	}
	return false;
}

/*
 * The consolidated invoice: create a draft that lists the originals in its
 * metadata, add one item per original, finalize. Each step has its own key
 * derived from the consequence key; the items' and the finalization's keys
 * also name the draft, so a draft created under a new key never meets the
 * stored answers of another draft's steps. Asked again with the same key,
 * every step replays and the same invoice comes back.
 *
 * A key is not proof enough that a create ran once: Stripe answers a
 * request that executed and then failed with a 500 (Stripe-Should-Retry:
 * false) that it stores under the key, so the client moves to a new key,
 * and a new key runs the create again. So before creating anything, the
 * client looks for what an earlier run made: the draft carries
 * metadata[dunning_key] = the consequence key and is found among the
 * customer's send_invoice invoices; each item carries
 * metadata[dunning_covers] = its original and is found among the draft's
 * items. Only what is not there is created.
 */
static enum dun_err op_create_consolidated(void *self, const struct dun_consolidated_req *req,
					   const char *idem, json_t **out, char *err, size_t es)
{
	struct dun_stripe *s = self;
	*out = NULL;
	if (!valid_id(req->customer_id, err, es))
		return DUN_E_INVALID;
	if (req->n_originals < 1) {
		snprintf(err, es, "a consolidated invoice needs at least one original invoice");
		return DUN_E_INVALID;
	}
	for (int i = 0; i < req->n_originals; i++)
		if (!valid_id(req->original_ids[i], err, es))
			return DUN_E_INVALID;
	char key[DUN_STRIPE_IDEM_MAX * 2];
	struct dun_form f;
	dun_form_init(&f);
	dun_form_add(&f, "customer", req->customer_id);
	dun_form_add(&f, "collection_method", "send_invoice");
	dun_form_add_i64(&f, "days_until_due", req->days_until_due);
	dun_form_add(&f, "pending_invoice_items_behavior", "exclude");
	dun_form_add(&f, "currency", req->currency);
	char desc[128];
	snprintf(desc, sizeof desc, "Outstanding balance of %d unpaid invoice%s", req->n_originals,
		 req->n_originals == 1 ? "" : "s");
	dun_form_add(&f, "description", desc);
	enum dun_err e = dun_stripe_form_covers(&f, req->original_ids, req->n_originals);
	if (e != DUN_OK) {
		snprintf(err, es, "%d original invoices do not fit in the invoice's metadata",
			 req->n_originals);
		dun_form_free(&f);
		return e;
	}
	dun_form_add_sub(&f, "metadata", "dunning_key", idem);
	snprintf(key, sizeof key, "%s/create", idem);
	struct md_search found = {.md_key = "dunning_key", .md_value = idem};
	e = find_created(s, "/v1/invoices", "customer", req->customer_id, "collection_method",
			 "send_invoice", &found, err, es);
	if (e != DUN_OK) {
		dun_form_free(&f);
		return e;
	}
	json_t *draft = found.found;
	if (draft) {
		dun_log(DUN_LOG_INFO, "stripe.found_created", "path", "/v1/invoices", "id",
			jstr(draft, "id"), "idempotency_key", key, NULL);
	} else {
		e = post(s, "/v1/invoices", &f, key, &draft, err, es);
	}
	dun_form_free(&f);
	if (e != DUN_OK)
		return e;
	char draft_id[DUN_ID_MAX];
	dun_strlcpy(draft_id, jstr(draft, "id"), sizeof draft_id);
	bool is_draft = !strcmp(jstr(draft, "status"), "draft");
	json_decref(draft);
	if (!valid_id(draft_id, err, es))
		return DUN_E_PARSE;
	char inv_path[128];
	snprintf(inv_path, sizeof inv_path, "/v1/invoices/%s", draft_id);
	static const char *const finalized[] = {"open", "paid", "uncollectible", NULL};
	if (!is_draft) {
		/* Found finalized (or voided): an earlier run finished it. */
		*out = get_if_status(s, inv_path, finalized);
		if (*out)
			return DUN_OK;
		snprintf(err, es, "consolidated invoice %s of %s is neither a draft nor open",
			 draft_id, idem);
		return DUN_E_PROVIDER_REJECTED;
	}
	struct md_search items = {.md_key = "dunning_key",
				  .md_value = idem,
				  .all = json_array(),
				  .md_collect = "dunning_covers"};
	e = find_created(s, "/v1/invoiceitems", "invoice", draft_id, NULL, NULL, &items, err, es);
	json_decref(items.found);
	if (e != DUN_OK) {
		json_decref(items.all);
		return e;
	}
	for (int i = 0; i < req->n_originals; i++) {
		const char *orig = req->original_ids[i];
		if (json_has_string(items.all, orig))
			continue; /* added by an earlier run */
		dun_form_init(&f);
		dun_form_add(&f, "customer", req->customer_id);
		dun_form_add(&f, "invoice", draft_id);
		dun_form_add_i64(&f, "amount", req->original_amounts_minor[i]);
		dun_form_add(&f, "currency", req->currency);
		snprintf(desc, sizeof desc, "Unpaid invoice %s", orig);
		dun_form_add(&f, "description", desc);
		dun_form_add_sub(&f, "metadata", "dunning_key", idem);
		dun_form_add_sub(&f, "metadata", "dunning_covers", orig);
		snprintf(key, sizeof key, "%s/%s/item/%s", idem, draft_id, orig);
		json_t *item = NULL;
		e = post(s, "/v1/invoiceitems", &f, key, &item, err, es);
		dun_form_free(&f);
		json_decref(item);
		if (e == DUN_E_PROVIDER_REJECTED) {
			/* Finalized by an earlier run whose answer was lost: it is done. */
			*out = get_if_status(s, inv_path, finalized);
			if (*out) {
				json_decref(items.all);
				return DUN_OK;
			}
		}
		if (e != DUN_OK) {
			json_decref(items.all);
			return e;
		}
	}
	json_decref(items.all);
	char path[128];
	snprintf(path, sizeof path, "/v1/invoices/%s/finalize", draft_id);
	snprintf(key, sizeof key, "%s/%s/finalize", idem, draft_id);
	e = post(s, path, NULL, key, out, err, es);
	if (e == DUN_E_PROVIDER_REJECTED || e == DUN_E_PROVIDER || e == DUN_E_TIMEOUT) {
		json_t *inv = get_if_status(s, inv_path, finalized);
		if (inv) {
			*out = inv;
			return DUN_OK;
		}
	}
	return e;
}

static enum dun_err append_all(void *user, json_t *data)
{
	json_array_extend(user, data);
	return DUN_OK;
}

static enum dun_err op_list_invoices(void *self, const char *customer_id, json_t **list_out,
				     char *err, size_t es)
{
	struct dun_stripe *s = self;
	*list_out = NULL;
	if (!valid_id(customer_id, err, es))
		return DUN_E_INVALID;
	struct dun_form q;
	dun_form_init(&q);
	dun_form_add(&q, "customer", customer_id);
	json_t *arr = json_array();
	enum dun_err e = dun_stripe_list(s, "/v1/invoices", &q, append_all, arr, err, es);
	dun_form_free(&q);
	if (e != DUN_OK) {
		json_decref(arr);
		return e;
	}
	size_t n = json_array_size(arr), k = 0;
	const char **ids = dun_calloc(n + 1, sizeof *ids);
	for (size_t i = 0; i < n; i++) {
		json_t *inv = json_array_get(arr, i);
		const char *st = jstr(inv, "status");
		if (!strcmp(st, "open") || !strcmp(st, "uncollectible"))
			ids[k++] = jstr(inv, "id");
	}
	e = dun_stripe_invoice_payments(s, ids, (int)k, arr, err, es);
	free(ids);
	if (e != DUN_OK) {
		json_decref(arr);
		return e;
	}
	*list_out = arr;
	return DUN_OK;
}

/* ---- the targeted refresh (provider.h refresh_invoices) ------------------------ */

#define REFRESH_CHUNK (BATCH_MAX / 2) /* invoices per round: two reads each */

/*
 * A read of the second round: every charge of one payment intent (a list),
 * or the single charge an invoice_payment names instead of a payment
 * intent (older, non-PaymentIntent payments).
 */
struct refresh_read {
	int invoice;	     /* index into the chunk's invoices */
	json_t *pi;	     /* the expanded payment intent (borrowed), or NULL */
	char id[DUN_ID_MAX]; /* the payment intent, or the charge */
	bool single_charge;
	json_t *charges; /* what the read found, newest first (owned) */
};

/*
 * Name invoice_id in obj's pre-basil "invoice" field when the API version
 * left it out. The client knows the link for certain (it reached obj
 * through the invoice's invoice_payment), and with it the mirror ties
 * every attempt to its invoice, even one made through a second payment
 * intent that p_invoices.payment_intent does not name.
 */
static void tie_to_invoice(json_t *obj, const char *invoice_id)
{
	json_t *v = json_object_get(obj, "invoice");
	if (json_is_object(v) || (json_is_string(v) && json_string_length(v)))
		return;
	json_object_set_new(obj, "invoice", json_string(invoice_id));
}

/* Append the data of list reply c to out, then the pages after it while has_more. */
static enum dun_err take_list(struct dun_stripe *s, const struct call *c, const char *path,
			      const struct dun_form *params, json_t *out, char *err, size_t es)
{
	json_t *data = json_object_get(c->obj, "data");
	if (!json_is_array(data)) {
		snprintf(err, es, "GET %s: the reply is not a list", path);
		return DUN_E_PARSE;
	}
	json_array_extend(out, data);
	size_t m = json_array_size(data);
	if (!m || !json_is_true(json_object_get(c->obj, "has_more")))
		return DUN_OK;
	/* Rare: more than 100 payments of one invoice, or charges of one payment intent. */
	return list_from(s, path, params, jstr(json_array_get(data, m - 1), "id"), append_all, out,
			 err, es);
}

/* The first error of the finished calls, copied to err. */
static enum dun_err first_error(const struct call *calls, int n, char *err, size_t es)
{
	for (int i = 0; i < n; i++)
		if (calls[i].e != DUN_OK) {
			snprintf(err, es, "%s", calls[i].err);
			return calls[i].e;
		}
	return DUN_OK;
}

/* Round 1: each invoice, and its invoice_payments with the payment intent expanded. */
static enum dun_err refresh_round1(struct dun_stripe *s, const char *const *ids, int k,
				   json_t **invoices, json_t **payments, char *err, size_t es)
{
	struct call *calls = dun_calloc((size_t)(2 * k), sizeof *calls);
	enum dun_err e = DUN_OK;
	for (int i = 0; i < k && e == DUN_OK; i++) {
		char path[128];
		snprintf(path, sizeof path, "/v1/invoices/%s", ids[i]);
		e = call_init(s, &calls[2 * i], "GET", path, NULL, NULL, err, es);
		struct dun_form q;
		dun_form_init(&q);
		payments_query(&q, ids[i]);
		dun_form_add(&q, "limit", "100");
		if (e == DUN_OK)
			e = call_init(s, &calls[2 * i + 1], "GET", "/v1/invoice_payments", &q, NULL,
				      err, es);
		dun_form_free(&q);
	}
	if (e == DUN_OK) {
		run(s, calls, 2 * k);
		e = first_error(calls, 2 * k, err, es);
	}
	for (int i = 0; i < k && e == DUN_OK; i++) {
		invoices[i] = calls[2 * i].obj;
		calls[2 * i].obj = NULL;
		payments[i] = json_array();
		struct dun_form q;
		dun_form_init(&q);
		payments_query(&q, ids[i]);
		e = take_list(s, &calls[2 * i + 1], "/v1/invoice_payments", &q, payments[i], err,
			      es);
		dun_form_free(&q);
	}
	for (int i = 0; i < 2 * k; i++)
		call_free(&calls[i]);
	free(calls);
	return e;
}

/* The second round's reads for the payments of invoice i, appended to *reads. */
static enum dun_err plan_reads(json_t *payments, int i, struct refresh_read **reads, int *n,
			       int *cap, char *err, size_t es)
{
	size_t j;
	json_t *ip;
	json_array_foreach(payments, j, ip)
	{
		json_t *pay = json_object_get(ip, "payment");
		json_t *pi = json_object_get(pay, "payment_intent");
		json_t *ch = json_object_get(pay, "charge");
		const char *id = json_is_object(pi)   ? jstr(pi, "id")
				 : json_is_string(pi) ? json_string_value(pi)
				 : json_is_object(ch) ? jstr(ch, "id")
				 : json_is_string(ch) ? json_string_value(ch)
						      : "";
		if (!id[0])
			continue;
		if (!valid_id(id, err, es))
			return DUN_E_PARSE;
		if (*n == *cap) {
			*cap = *cap ? *cap * 2 : 8;
			*reads = dun_realloc(*reads, (size_t)*cap * sizeof **reads);
		}
		struct refresh_read *r = &(*reads)[(*n)++];
		memset(r, 0, sizeof *r);
		r->invoice = i;
		r->pi = json_is_object(pi) ? pi : NULL;
		r->single_charge = !json_is_object(pi) && !json_is_string(pi);
		dun_strlcpy(r->id, id, sizeof r->id);
	}
	return DUN_OK;
}

static void charges_query(struct dun_form *q, const char *pi)
{
	dun_form_add(q, "payment_intent", pi);
}

/* Round 2: every charge of each payment intent (or the one charge), BATCH_MAX at a time. */
static enum dun_err refresh_round2(struct dun_stripe *s, struct refresh_read *reads, int n,
				   char *err, size_t es)
{
	struct call *calls = dun_calloc(BATCH_MAX, sizeof *calls);
	enum dun_err e = DUN_OK;
	for (int at = 0; at < n && e == DUN_OK; at += BATCH_MAX) {
		int k = n - at < BATCH_MAX ? n - at : BATCH_MAX;
		memset(calls, 0, (size_t)k * sizeof *calls);
		for (int i = 0; i < k && e == DUN_OK; i++) {
			struct refresh_read *r = &reads[at + i];
			struct dun_form q;
			dun_form_init(&q);
			if (r->single_charge) {
				char path[128];
				snprintf(path, sizeof path, "/v1/charges/%s", r->id);
				e = call_init(s, &calls[i], "GET", path, NULL, NULL, err, es);
			} else {
				charges_query(&q, r->id);
				dun_form_add(&q, "limit", "100");
				e = call_init(s, &calls[i], "GET", "/v1/charges", &q, NULL, err,
					      es);
			}
			dun_form_free(&q);
		}
		if (e == DUN_OK) {
			run(s, calls, k);
			e = first_error(calls, k, err, es);
		}
		for (int i = 0; i < k && e == DUN_OK; i++) {
			struct refresh_read *r = &reads[at + i];
			r->charges = json_array();
			if (r->single_charge) {
				json_array_append(r->charges, calls[i].obj);
				continue;
			}
			struct dun_form q;
			dun_form_init(&q);
			charges_query(&q, r->id);
			e = take_list(s, &calls[i], "/v1/charges", &q, r->charges, err, es);
			dun_form_free(&q);
		}
		for (int i = 0; i < k; i++)
			call_free(&calls[i]);
	}
	free(calls);
	return e;
}

/*
 * Append one invoice's objects to out in fold order: the invoice, its
 * invoice_payments (they link payment intents to it), then per payment
 * intent the payment intent and its charges, oldest first.
 */
static void refresh_emit(const char *invoice_id, json_t *invoice, json_t *payments,
			 const struct refresh_read *reads, int n_reads, int i, json_t *out)
{
	json_array_append(out, invoice);
	json_array_extend(out, payments);
	for (int r = 0; r < n_reads; r++) {
		if (reads[r].invoice != i)
			continue;
		if (reads[r].pi) {
			tie_to_invoice(reads[r].pi, invoice_id);
			json_array_append(out, reads[r].pi);
		}
		for (size_t c = json_array_size(reads[r].charges); c-- > 0;) {
			json_t *ch = json_array_get(reads[r].charges, c);
			if (json_is_object(ch)) {
				tie_to_invoice(ch, invoice_id);
				json_array_append(out, ch);
			}
		}
	}
}

/*
 * The refresh takes two rounds of parallel reads (run() keeps PARALLEL_MAX
 * in flight and the shared bucket paces them): first every invoice and its
 * invoice_payments, then the charges of every payment intent found. An
 * invoice costs three requests with one payment intent, and the latency
 * of two whatever the number of invoices up to REFRESH_CHUNK. Any failure
 * fails the whole refresh: the caller keeps the mirror as it was.
 */
static enum dun_err op_refresh_invoices(void *self, const char *const *invoice_ids, int n,
					json_t **objs_out, char *err, size_t es)
{
	struct dun_stripe *s = self;
	*objs_out = NULL;
	for (int i = 0; i < n; i++)
		if (!valid_id(invoice_ids[i], err, es))
			return DUN_E_INVALID;
	json_t *out = json_array();
	json_t **invoices = dun_calloc(REFRESH_CHUNK, sizeof *invoices);
	json_t **payments = dun_calloc(REFRESH_CHUNK, sizeof *payments);
	struct refresh_read *reads = NULL;
	int cap = 0;
	enum dun_err e = DUN_OK;
	for (int at = 0; at < n && e == DUN_OK; at += REFRESH_CHUNK) {
		int k = n - at < REFRESH_CHUNK ? n - at : REFRESH_CHUNK;
		int n_reads = 0;
		e = refresh_round1(s, invoice_ids + at, k, invoices, payments, err, es);
		for (int i = 0; i < k && e == DUN_OK; i++)
			e = plan_reads(payments[i], i, &reads, &n_reads, &cap, err, es);
		if (e == DUN_OK)
			e = refresh_round2(s, reads, n_reads, err, es);
		for (int i = 0; i < k && e == DUN_OK; i++)
			refresh_emit(invoice_ids[at + i], invoices[i], payments[i], reads, n_reads,
				     i, out);
		for (int r = 0; r < n_reads; r++)
			json_decref(reads[r].charges);
		for (int i = 0; i < k; i++) {
			json_decref(invoices[i]);
			json_decref(payments[i]);
			invoices[i] = payments[i] = NULL;
		}
	}
	free(reads);
	free(invoices);
	free(payments);
	if (e != DUN_OK) {
		json_decref(out);
		return e;
	}
	*objs_out = out;
	return DUN_OK;
}

static void op_destroy(void *self)
{
	dun_stripe_destroy(self);
}

static const struct dun_provider_ops stripe_ops = {
    .name = "stripe",
    .set_customer_metadata = op_set_customer_metadata,
    .set_invoice_metadata = op_set_invoice_metadata,
    .mark_uncollectible = op_mark_uncollectible,
    .void_invoice = op_void_invoice,
    .cancel_subscription = op_cancel_subscription,
    .pay_invoice = op_pay_invoice,
    .create_consolidated = op_create_consolidated,
    .list_invoices = op_list_invoices,
    .refresh_invoices = op_refresh_invoices,
    .destroy = op_destroy,
};

enum dun_err dun_stripe_provider_new(const struct dun_config *cfg, struct dun_provider *out,
				     char *err, size_t err_size)
{
	memset(out, 0, sizeof *out);
	struct dun_stripe *s = NULL;
	enum dun_err e = dun_stripe_new(cfg, &s, err, err_size);
	if (e != DUN_OK)
		return e;
	out->ops = &stripe_ops;
	out->self = s;
	return DUN_OK;
}
