/*
 * test_stripe_unit.c — offline tests of the Stripe client's pure parts:
 * the form encoder (nested keys, escaping), the consolidated invoice's
 * metadata split, the rate limiter's token bucket (simulated clocks: no
 * window of one second ever holds more than the limit, with about 100 ms
 * to spare), the backoff schedule and the idempotency key derivation.
 *
 * The same client against a Stripe-compatible server is tested by
 * tests/integration/test_stripe_client.py.
 */
#include "check.h"
#include "provider/stripe.h"
#include "core/text.h"

#include <stdlib.h>
#include <string.h>

/* ---- helpers ---------------------------------------------------------------- */

static int hexval(char c)
{
	if (c >= '0' && c <= '9')
		return c - '0';
	if (c >= 'A' && c <= 'F')
		return c - 'A' + 10;
	if (c >= 'a' && c <= 'f')
		return c - 'a' + 10;
	return -1;
}

/* Percent-decode s[0..n) into out (NUL-terminated). */
static void decode(const char *s, size_t n, char *out, size_t out_size)
{
	size_t o = 0;
	for (size_t i = 0; i < n && o + 1 < out_size; i++) {
		if (s[i] == '%' && i + 2 < n + 1 && hexval(s[i + 1]) >= 0 &&
		    hexval(s[i + 2]) >= 0) {
			out[o++] = (char)(hexval(s[i + 1]) * 16 + hexval(s[i + 2]));
			i += 2;
		} else {
			out[o++] = s[i];
		}
	}
	out[o] = '\0';
}

/* The decoded value of key in an encoded form, or NULL. */
static const char *form_get(const char *form, const char *key, char *out, size_t out_size)
{
	const char *p = form;
	while (*p) {
		const char *amp = strchr(p, '&');
		size_t len = amp ? (size_t)(amp - p) : strlen(p);
		const char *eq = memchr(p, '=', len);
		if (eq) {
			char k[256];
			decode(p, (size_t)(eq - p), k, sizeof k);
			if (!strcmp(k, key)) {
				decode(eq + 1, len - (size_t)(eq - p) - 1, out, out_size);
				return out;
			}
		}
		p += len + (amp ? 1 : 0);
	}
	return NULL;
}

static int count_pairs(const char *form)
{
	if (!*form)
		return 0;
	int n = 1;
	for (const char *p = form; *p; p++)
		n += *p == '&';
	return n;
}

/* ---- the form encoder -------------------------------------------------------- */

static void test_form(void)
{
	struct dun_form f;
	dun_form_init(&f);
	CHECK_STR(dun_form_str(&f), "");
	dun_form_add(&f, "customer", "cus_123");
	CHECK_STR(dun_form_str(&f), "customer=cus_123");
	dun_form_add_sub(&f, "metadata", "bad_debt", "true");
	CHECK_STR(dun_form_str(&f), "customer=cus_123&metadata[bad_debt]=true");
	dun_form_add(&f, "expand[]", "latest_charge");
	CHECK_STR(dun_form_str(&f),
		  "customer=cus_123&metadata[bad_debt]=true&expand[]=latest_charge");
	dun_form_free(&f);

	/* Values: everything but unreserved characters is escaped, brackets too. */
	dun_form_init(&f);
	dun_form_add(&f, "description", "a b&c=d+e,f/g[h]~i_j.k-l");
	CHECK_STR(dun_form_str(&f), "description=a%20b%26c%3Dd%2Be%2Cf%2Fg%5Bh%5D~i_j.k-l");
	dun_form_free(&f);

	/* UTF-8 goes byte by byte. */
	dun_form_init(&f);
	dun_form_add(&f, "name", "Jos\xc3\xa9");
	CHECK_STR(dun_form_str(&f), "name=Jos%C3%A9");
	dun_form_free(&f);

	/* A metadata key is free text: its own brackets and spaces are escaped. */
	dun_form_init(&f);
	dun_form_add_sub(&f, "metadata", "odd key[x]", "");
	CHECK_STR(dun_form_str(&f), "metadata[odd%20key%5Bx%5D]=");
	dun_form_free(&f);

	/* Deeper nesting, as Stripe's list parameters use it. */
	dun_form_init(&f);
	dun_form_add_i64(&f, "created[gte]", 1700000000);
	dun_form_add_i64(&f, "amount", -1500);
	dun_form_add(&f, "items[0][price]", "price_1");
	CHECK_STR(dun_form_str(&f), "created[gte]=1700000000&amount=-1500&items[0][price]=price_1");
	dun_form_free(&f);

	/* Growth past the first allocation keeps everything. */
	dun_form_init(&f);
	for (int i = 0; i < 500; i++)
		dun_form_add_i64(&f, "n", i);
	CHECK_INT(count_pairs(dun_form_str(&f)), 500);
	CHECK_INT(strlen(dun_form_str(&f)), f.len);
	dun_form_free(&f);
}

/* ---- the consolidated invoice's list of originals ------------------------------ */

static void test_covers(void)
{
	/* A short list: one key. */
	const char *few[] = {"in_1", "in_2", "in_3"};
	struct dun_form f;
	dun_form_init(&f);
	CHECK_INT(dun_stripe_form_covers(&f, few, 3), DUN_OK);
	CHECK_STR(dun_form_str(&f), "metadata[bad_debt_invoices]=in_1%2Cin_2%2Cin_3");
	dun_form_free(&f);

	/* 60 ids of 27 characters: 1679 characters in all, four values. */
	enum { N = 60 };
	char ids[N][32];
	const char *ptrs[N];
	for (int i = 0; i < N; i++) {
		snprintf(ids[i], sizeof ids[i], "in_1PgaxNB7WZ01zgkW%08d", i);
		ptrs[i] = ids[i];
	}
	dun_form_init(&f);
	CHECK_INT(dun_stripe_form_covers(&f, ptrs, N), DUN_OK);
	char joined[4096] = "", value[1024];
	int parts = 0;
	for (int part = 1; part < 10; part++) {
		char key[64];
		if (part == 1)
			snprintf(key, sizeof key, "metadata[bad_debt_invoices]");
		else
			snprintf(key, sizeof key, "metadata[bad_debt_invoices_%d]", part);
		if (!form_get(dun_form_str(&f), key, value, sizeof value))
			break;
		parts++;
		CHECK(strlen(value) <= 500);
		CHECK(strlen(value) > 0);
		/* A value never starts or ends with a comma: no id is split. */
		CHECK(value[0] != ',' && value[strlen(value) - 1] != ',');
		if (joined[0])
			strcat(joined, ",");
		strcat(joined, value);
	}
	CHECK_INT(parts, 4);
	CHECK_INT(count_pairs(dun_form_str(&f)), 4);
	char want[4096] = "";
	for (int i = 0; i < N; i++) {
		if (i)
			strcat(want, ",");
		strcat(want, ids[i]);
	}
	CHECK_STR(joined, want);
	dun_form_free(&f);

	/* Exactly 500 characters fit in one value; one more character does not. */
	char a[251], b[250];
	memset(a, 'a', 250);
	a[250] = '\0';
	memset(b, 'b', 249);
	b[249] = '\0';
	const char *exact[] = {a, b}; /* 250 + 1 + 249 = 500 */
	dun_form_init(&f);
	CHECK_INT(dun_stripe_form_covers(&f, exact, 2), DUN_OK);
	CHECK_INT(count_pairs(dun_form_str(&f)), 1);
	dun_form_free(&f);
	char c[251];
	memset(c, 'c', 250);
	c[250] = '\0';
	const char *over[] = {a, c}; /* 501 */
	dun_form_init(&f);
	CHECK_INT(dun_stripe_form_covers(&f, over, 2), DUN_OK);
	CHECK_INT(count_pairs(dun_form_str(&f)), 2);
	CHECK(form_get(dun_form_str(&f), "metadata[bad_debt_invoices_2]", value, sizeof value) !=
	      NULL);
	CHECK_STR(value, c);
	dun_form_free(&f);

	/* Too many for Stripe's 50 metadata keys: refused, nothing added. */
	enum { MANY = 2000 };
	const char **many = calloc(MANY, sizeof *many);
	for (int i = 0; i < MANY; i++)
		many[i] = ids[i % N];
	dun_form_init(&f);
	dun_form_add(&f, "customer", "cus_1");
	CHECK_INT(dun_stripe_form_covers(&f, many, MANY), DUN_E_TOO_BIG);
	CHECK_STR(dun_form_str(&f), "customer=cus_1");
	dun_form_free(&f);
	free(many);

	/* An id longer than a metadata value is refused too. */
	char huge[600];
	memset(huge, 'x', sizeof huge - 1);
	huge[sizeof huge - 1] = '\0';
	const char *one[] = {huge};
	dun_form_init(&f);
	CHECK_INT(dun_stripe_form_covers(&f, one, 1), DUN_E_TOO_BIG);
	dun_form_free(&f);
}

/* ---- the rate limiter --------------------------------------------------------- */

static int cmp_i64(const void *a, const void *b)
{
	int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
	return (x > y) - (x < y);
}

/*
 * The most send times (µs, sorted) that fall in any window [t, t + window_us).
 * MARGIN_US is the bucket's 100 ms of headroom, less the microsecond a wait
 * may gain by being rounded up.
 */
#define MARGIN_US 99900
static int max_in_window(const int64_t *t, int n, int64_t window_us)
{
	int best = 0, lo = 0;
	for (int hi = 0; hi < n; hi++) {
		while (t[hi] - t[lo] >= window_us)
			lo++;
		if (hi - lo + 1 > best)
			best = hi - lo + 1;
	}
	return best;
}

static uint64_t rng_state = 0x9E3779B97F4A7C15ULL;

static uint64_t rnd(void)
{
	rng_state ^= rng_state << 13;
	rng_state ^= rng_state >> 7;
	rng_state ^= rng_state << 17;
	return rng_state;
}

static void test_bucket(void)
{
	const double limit = 25;
	struct dun_stripe_bucket b;
	enum { N = 1000 };
	int64_t *sent = calloc(N, sizeof *sent);

	/* A burst: N requests asked for at the same instant. */
	int64_t t0 = 5000000;
	dun_stripe_bucket_init(&b, dun_stripe_bucket_rate(limit), 1.0, t0);
	for (int i = 0; i < N; i++)
		sent[i] = t0 + dun_stripe_bucket_take(&b, t0);
	CHECK_INT(sent[0], t0); /* an idle client sends at once */
	qsort(sent, N, sizeof *sent, cmp_i64);
	CHECK(max_in_window(sent, N, 1000000) <= 25);
	CHECK(max_in_window(sent, N, 1000000 + MARGIN_US) <= 25); /* with time to spare */
	CHECK(max_in_window(sent, N, 1000000) >= 22);		  /* and not much slower */
	int64_t span = sent[N - 1] - sent[0];
	double rate = (double)(N - 1) * 1e6 / (double)span;
	CHECK(rate > 22.5 && rate <= 25.0 / 1.1);

	/* Many threads asking at random moments, in clusters and pauses. */
	dun_stripe_bucket_init(&b, dun_stripe_bucket_rate(limit), 1.0, 0);
	int64_t now = 0;
	for (int i = 0; i < N; i++) {
		uint64_t r = rnd();
		if (r % 10 == 0)
			now += (int64_t)(r % 3000000); /* a pause of up to 3 s */
		else
			now += (int64_t)(r % 20000); /* arrivals up to 20 ms apart */
		sent[i] = now + dun_stripe_bucket_take(&b, now);
	}
	qsort(sent, N, sizeof *sent, cmp_i64);
	CHECK(max_in_window(sent, N, 1000000 + MARGIN_US) <= 25);

	/* Other limits hold the same way. */
	const double limits[] = {1, 3, 10, 100};
	for (size_t k = 0; k < sizeof limits / sizeof limits[0]; k++) {
		dun_stripe_bucket_init(&b, dun_stripe_bucket_rate(limits[k]), 1.0, 0);
		now = 0;
		for (int i = 0; i < N; i++) {
			now += (int64_t)(rnd() % 4000);
			sent[i] = now + dun_stripe_bucket_take(&b, now);
		}
		qsort(sent, N, sizeof *sent, cmp_i64);
		int got = max_in_window(sent, N, 1000000 + MARGIN_US);
		if (got > (int)limits[k])
			CHECK_FAIL_AT("limit %g: %d requests in one window", limits[k], got);
		else
			check_passed++;
	}

	/* A long idle period does not store up a burst: capacity is one token. */
	dun_stripe_bucket_init(&b, dun_stripe_bucket_rate(limit), 1.0, 0);
	CHECK_INT(dun_stripe_bucket_take(&b, 100000000), 0);
	CHECK(dun_stripe_bucket_take(&b, 100000000) >= 40000);

	/* A clock that reads earlier than the last update takes nothing back. */
	dun_stripe_bucket_init(&b, 10, 1.0, 1000000);
	CHECK_INT(dun_stripe_bucket_take(&b, 1000000), 0);
	int64_t w = dun_stripe_bucket_take(&b, 900000);
	CHECK(w >= 100000 && w <= 100001);
	free(sent);
}

/* ---- backoff ---------------------------------------------------------------------- */

static void test_backoff(void)
{
	/* retry n waits between half and all of min(8 s, 0.5 s * 2^(n-1)). */
	const int64_t full[] = {500, 1000, 2000, 4000, 8000, 8000, 8000};
	for (int n = 1; n <= 7; n++) {
		int64_t lo = dun_stripe_backoff_ms(n, 0.0);
		int64_t hi = dun_stripe_backoff_ms(n, 0.999999);
		CHECK_INT(lo, full[n - 1] / 2);
		CHECK(hi < full[n - 1] && hi >= full[n - 1] - 1);
		for (int k = 0; k < 100; k++) {
			int64_t d = dun_stripe_backoff_ms(n, (double)(rnd() % 1000000) / 1e6);
			CHECK(d >= full[n - 1] / 2 && d < full[n - 1]);
		}
	}
	/* Out-of-range inputs stay in range. */
	CHECK_INT(dun_stripe_backoff_ms(0, 0.0), 250);
	CHECK(dun_stripe_backoff_ms(1000, 2.0) < 8000);
	CHECK_INT(dun_stripe_backoff_ms(3, -1.0), 1000);
	/* Jitter spreads retries: 100 draws are not all alike. */
	int64_t first = dun_stripe_backoff_ms(3, 0.1);
	bool differ = false;
	for (int k = 0; k < 100 && !differ; k++)
		differ = dun_stripe_backoff_ms(3, (double)(rnd() % 1000000) / 1e6) != first;
	CHECK(differ);
}

/* ---- idempotency keys ---------------------------------------------------------------- */

static void test_idem_key(void)
{
	char k[DUN_STRIPE_IDEM_MAX];
	dun_stripe_idem_key("acct_1/mark_uncollectible/in_1/1/ep1/d42", 0, k);
	CHECK_STR(k, "acct_1/mark_uncollectible/in_1/1/ep1/d42");
	dun_stripe_idem_key("acct_1/retry_payment/in_1/2", 1, k);
	CHECK_STR(k, "acct_1/retry_payment/in_1/2/r1");
	dun_stripe_idem_key("acct_1/retry_payment/in_1/2", 12, k);
	CHECK_STR(k, "acct_1/retry_payment/in_1/2/r12");

	/* 255 characters are kept as they are. */
	char base[400];
	memset(base, 'k', 255);
	base[255] = '\0';
	dun_stripe_idem_key(base, 0, k);
	CHECK_STR(k, base);
	/* Longer ones are shortened to 255, stably, and stay distinct. */
	dun_stripe_idem_key(base, 1, k);
	CHECK_INT(strlen(k), 255);
	CHECK(strncmp(k, base, 238) == 0);
	CHECK(k[238] == '~');
	char k2[DUN_STRIPE_IDEM_MAX], k3[DUN_STRIPE_IDEM_MAX];
	dun_stripe_idem_key(base, 1, k2);
	CHECK_STR(k, k2);
	dun_stripe_idem_key(base, 2, k3);
	CHECK(strcmp(k, k3) != 0);
	memset(base, 'k', 399);
	base[399] = '\0';
	dun_stripe_idem_key(base, 0, k2);
	base[398] = 'j';
	dun_stripe_idem_key(base, 0, k3);
	CHECK_INT(strlen(k2), 255);
	CHECK(strcmp(k2, k3) != 0);

	/* Not printable ASCII: a printable prefix and a hash, distinct per base. */
	dun_stripe_idem_key("acct_\xc3\xa9/x", 0, k2);
	dun_stripe_idem_key("acct_\xc3\xa8/x", 0, k3);
	CHECK(strcmp(k2, k3) != 0);
	for (const char *p = k2; *p; p++)
		CHECK(*p > 0x20 && *p < 0x7f);
}

static void key_of(const char *account, const char *target, char *out, size_t n)
{
	struct dun_text t;
	dun_text_init(&t, out, n);
	dun_text_key_part(&t, account);
	dun_text_str(&t, "/void_invoice/");
	dun_text_key_part(&t, target);
}

static void test_key_part(void)
{
	char a[160], b[160];
	/* Ordinary ids are kept as they are: keys stored by earlier releases match. */
	key_of("acct_1", "in_1", a, sizeof a);
	CHECK_STR(a, "acct_1/void_invoice/in_1");
	key_of("user@example.com", "in_1", a, sizeof a);
	CHECK_STR(a, "user@example.com/void_invoice/in_1");
	/* A '/' in an id cannot make two keys meet. */
	key_of("a/void_invoice/b", "c", a, sizeof a);
	key_of("a", "b/void_invoice/c", b, sizeof b);
	CHECK(strcmp(a, b) != 0);
	CHECK_STR(a, "a%2fvoid_invoice%2fb/void_invoice/c");
	/* '%' is escaped too, so an escaped form is never an id as it is. */
	key_of("a%2fb", "c", b, sizeof b);
	CHECK_STR(b, "a%252fb/void_invoice/c");
	/* Non-ASCII and spaces become printable. */
	key_of("caf\xc3\xa9 1", "c", a, sizeof a);
	CHECK_STR(a, "caf%c3%a9%201/void_invoice/c");
	/* Too long once escaped: a stable hash, distinct per id. */
	char long1[64], long2[64];
	memset(long1, '/', 40);
	long1[40] = '\0';
	memcpy(long2, long1, sizeof long1);
	long2[39] = ' ';
	key_of(long1, "c", a, sizeof a);
	key_of(long2, "c", b, sizeof b);
	CHECK(a[0] == '~' && strlen(a) == 17 + strlen("/void_invoice/c"));
	CHECK(strcmp(a, b) != 0);
	char again[160];
	key_of(long1, "c", again, sizeof again);
	CHECK_STR(a, again);
}

int main(void)
{
	test_form();
	test_covers();
	test_bucket();
	test_backoff();
	test_idem_key();
	test_key_part();
	return CHECK_DONE();
}
