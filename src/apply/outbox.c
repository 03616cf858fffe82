/*
 * outbox.c — the HTTP call, classification and backoff the two senders
 * share (see outbox.h).
 *
 * libcurl's codes are mapped here, once: a refused or unresolved
 * connection, a timeout and any other failure below HTTP each become one
 * dun_http_outcome, and the senders only ever look at that and the status.
 * The process calls curl_global_init() at start-up, before threads start.
 */
#include "outbox.h"
#include "util/input.h"
#include "util/mem.h"

#include <ctype.h>
#include <curl/curl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

const char *dun_outbox_verdict_name(enum dun_outbox_verdict v)
{
	switch (v) {
	case DUN_OUTBOX_SENT:
		return "sent";
	case DUN_OUTBOX_RETRY:
		return "retry";
	case DUN_OUTBOX_DEAD:
		return "dead";
	}
	return "?";
}

enum dun_outbox_verdict dun_outbox_classify_platform(const struct dun_http_reply *r)
{
	switch (r->outcome) {
	case DUN_HTTP_ANSWERED:
		break;
	case DUN_HTTP_CONNECT:
	case DUN_HTTP_TIMEOUT:
	case DUN_HTTP_TRANSPORT:
		return DUN_OUTBOX_RETRY;
	}
	long s = r->status;
	if ((s >= 200 && s < 300) || s == 409)
		return DUN_OUTBOX_SENT;
	if (s == 408 || s == 425 || s == 429 || (s >= 500 && s < 600))
		return DUN_OUTBOX_RETRY;
	return DUN_OUTBOX_DEAD;
}

enum dun_outbox_verdict dun_outbox_classify_event(const struct dun_http_reply *r, int attempts)
{
	if (r->outcome == DUN_HTTP_ANSWERED && r->status >= 200 && r->status < 300)
		return DUN_OUTBOX_SENT;
	if (r->outcome == DUN_HTTP_ANSWERED && r->status == 410)
		return DUN_OUTBOX_DEAD;
	return attempts >= DUN_EVENTS_MAX_ATTEMPTS ? DUN_OUTBOX_DEAD : DUN_OUTBOX_RETRY;
}

int64_t dun_outbox_backoff_s(int attempts, int64_t base_s, int64_t cap_s, uint64_t seed)
{
	if (base_s < 1)
		base_s = 1;
	if (cap_s < base_s)
		cap_s = base_s;
	int64_t d = base_s;
	for (int i = 1; i < attempts && d < cap_s; i++)
		d *= 2;
	if (d > cap_s)
		d = cap_s;
	/* splitmix64 finalizer: neighbouring seeds give unrelated jitter */
	seed += 0x9e3779b97f4a7c15ULL;
	seed = (seed ^ (seed >> 30)) * 0xbf58476d1ce4e5b9ULL;
	seed = (seed ^ (seed >> 27)) * 0x94d049bb133111ebULL;
	seed ^= seed >> 31;
	int64_t half = d / 2;
	d = half + (int64_t)(seed % (uint64_t)(d - half + 1));
	return d > 0 ? d : 1;
}

int64_t dun_outbox_retry_delay_s(const struct dun_http_reply *r, int attempts, int64_t base_s,
				 int64_t cap_s, uint64_t seed)
{
	int64_t d = dun_outbox_backoff_s(attempts, base_s, cap_s, seed);
	if (r->retry_after_s > d)
		d = r->retry_after_s < cap_s ? r->retry_after_s : cap_s;
	return d;
}

static bool is_loopback(const char *host)
{
	return !strcasecmp(host, "localhost") || !strncmp(host, "127.", 4) ||
	       !strcmp(host, "[::1]") || !strcmp(host, "::1");
}

enum dun_err dun_http_url_check(const char *url, const char *what, bool no_query,
				bool carries_secret, char *err, size_t err_size)
{
	if (!url || !url[0]) {
		snprintf(err, err_size, "%s: no URL given", what);
		return DUN_E_CONFIG;
	}
	CURLU *u = curl_url();
	if (!u)
		dun_oom();
	enum dun_err e = DUN_E_CONFIG;
	char *scheme = NULL, *host = NULL, *user = NULL, *query = NULL, *fragment = NULL;
	/* Messages show the URL without its userinfo, query or fragment: secrets live there. */
	char shown[512];
	dun_input_redact_url(url, shown, sizeof shown);
	CURLUcode rc = curl_url_set(u, CURLUPART_URL, url, 0);
	if (rc != CURLUE_OK) {
		snprintf(err, err_size, "%s: \"%s\" is not a URL (%s)", what, shown,
			 curl_url_strerror(rc));
		goto free_url;
	}
	curl_url_get(u, CURLUPART_SCHEME, &scheme, 0);
	curl_url_get(u, CURLUPART_HOST, &host, 0);
	curl_url_get(u, CURLUPART_USER, &user, 0);
	curl_url_get(u, CURLUPART_QUERY, &query, 0);
	curl_url_get(u, CURLUPART_FRAGMENT, &fragment, 0);
	if (!scheme || (strcmp(scheme, "http") && strcmp(scheme, "https"))) {
		snprintf(err, err_size, "%s: \"%s\": only http:// and https:// URLs are supported",
			 what, shown);
		goto free_url;
	}
	if (!host || !host[0]) {
		snprintf(err, err_size, "%s: \"%s\" has no host", what, shown);
		goto free_url;
	}
	if (user) {
		snprintf(err, err_size,
			 "%s: credentials inside the URL are refused; use the token setting", what);
		goto free_url;
	}
	if (no_query && (query || fragment)) {
		snprintf(err, err_size, "%s: \"%s\" must not have a query or fragment", what,
			 shown);
		goto free_url;
	}
	if (carries_secret && !strcmp(scheme, "http") && !is_loopback(host)) {
		snprintf(err, err_size,
			 "%s: \"%s\" is plain http to another host: the token would travel in "
			 "clear text; use https",
			 what, shown);
		goto free_url;
	}
	e = DUN_OK;
free_url:
	curl_free(scheme);
	curl_free(host);
	curl_free(user);
	curl_free(query);
	curl_free(fragment);
	curl_url_cleanup(u);
	return e;
}

struct dun_http_client {
	CURL *h;
	long timeout_ms;
};

struct dun_http_client *dun_http_client_new(long timeout_ms)
{
	struct dun_http_client *c = dun_calloc(1, sizeof *c);
	c->h = curl_easy_init();
	if (!c->h)
		dun_oom();
	c->timeout_ms = timeout_ms > 0 ? timeout_ms : 10000;
	return c;
}

void dun_http_client_destroy(struct dun_http_client *c)
{
	if (!c)
		return;
	curl_easy_cleanup(c->h);
	free(c);
}

struct sink {
	char body[DUN_HTTP_BODY_KEEP + 1];
	size_t len;
	int64_t retry_after_s;
};

static size_t on_body(char *data, size_t size, size_t n, void *user)
{
	struct sink *k = user;
	size_t total = size * n;
	size_t room = DUN_HTTP_BODY_KEEP - k->len;
	size_t take = total < room ? total : room;
	memcpy(k->body + k->len, data, take);
	k->len += take;
	k->body[k->len] = '\0';
	return total;
}

static size_t on_header(char *data, size_t size, size_t n, void *user)
{
	struct sink *k = user;
	size_t total = size * n;
	static const char name[] = "retry-after:";
	if (total > sizeof name - 1 && !strncasecmp(data, name, sizeof name - 1)) {
		char v[32];
		size_t len = total - (sizeof name - 1);
		if (len >= sizeof v)
			len = sizeof v - 1;
		memcpy(v, data + sizeof name - 1, len);
		v[len] = '\0';
		char *end;
		long long s = strtoll(v, &end, 10);
		while (*end == ' ' || *end == '\r' || *end == '\n')
			end++;
		/* Only the delta-seconds form; an HTTP date is ignored. */
		if (s > 0 && !*end)
			k->retry_after_s = s;
	}
	return total;
}

/* The URL without its query, for messages: a query may carry a token. */
static void url_for_log(const char *url, char *out, size_t out_size)
{
	size_t n = strcspn(url, "?#");
	snprintf(out, out_size, "%.*s", (int)n, url);
}

/* One printable line: control characters and runs of blanks become one space. */
static void one_line(char *s)
{
	char *w = s;
	bool blank = false;
	for (char *r = s; *r; r++) {
		unsigned char ch = (unsigned char)*r;
		if (ch < 0x20 || ch == 0x7f || ch == ' ') {
			if (!blank && w != s)
				*w++ = ' ';
			blank = true;
			continue;
		}
		*w++ = (char)ch;
		blank = false;
	}
	while (w > s && w[-1] == ' ')
		w--;
	*w = '\0';
}

enum dun_err dun_http_client_send(struct dun_http_client *c, const char *method, const char *url,
				  const char *const *headers, int n_headers, const char *body,
				  size_t len, struct dun_http_reply *out)
{
	memset(out, 0, sizeof *out);
	CURL *h = c->h;
	curl_easy_reset(h);
	struct sink k = {.len = 0};
	char errbuf[CURL_ERROR_SIZE] = "";
	struct curl_slist *list = NULL;
	for (int i = 0; i < n_headers; i++) {
		struct curl_slist *next = curl_slist_append(list, headers[i]);
		if (!next)
			dun_oom();
		list = next;
	}
	/* No "Expect: 100-continue" round trip for small JSON bodies. */
	struct curl_slist *next = curl_slist_append(list, "Expect:");
	if (!next)
		dun_oom();
	list = next;
	curl_easy_setopt(h, CURLOPT_URL, url);
#if LIBCURL_VERSION_NUM >= 0x075500
	curl_easy_setopt(h, CURLOPT_PROTOCOLS_STR, "http,https");
#else
	curl_easy_setopt(h, CURLOPT_PROTOCOLS, (long)(CURLPROTO_HTTP | CURLPROTO_HTTPS));
#endif
	curl_easy_setopt(h, CURLOPT_NOSIGNAL, 1L);
	curl_easy_setopt(h, CURLOPT_FOLLOWLOCATION, 0L);
	curl_easy_setopt(h, CURLOPT_TIMEOUT_MS, c->timeout_ms);
	curl_easy_setopt(h, CURLOPT_CONNECTTIMEOUT_MS,
			 c->timeout_ms < 10000 ? c->timeout_ms : 10000L);
	curl_easy_setopt(h, CURLOPT_HTTPHEADER, list);
	curl_easy_setopt(h, CURLOPT_USERAGENT, "dunning");
	curl_easy_setopt(h, CURLOPT_ERRORBUFFER, errbuf);
	curl_easy_setopt(h, CURLOPT_WRITEFUNCTION, on_body);
	curl_easy_setopt(h, CURLOPT_WRITEDATA, &k);
	curl_easy_setopt(h, CURLOPT_HEADERFUNCTION, on_header);
	curl_easy_setopt(h, CURLOPT_HEADERDATA, &k);
	if (!strcmp(method, "GET")) {
		curl_easy_setopt(h, CURLOPT_HTTPGET, 1L);
	} else {
		if (strcmp(method, "POST") != 0)
			curl_easy_setopt(h, CURLOPT_CUSTOMREQUEST, method);
		curl_easy_setopt(h, CURLOPT_POST, 1L);
		curl_easy_setopt(h, CURLOPT_POSTFIELDS, body ? body : "");
		curl_easy_setopt(h, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)(body ? len : 0));
	}
	CURLcode rc = curl_easy_perform(h);
	curl_slist_free_all(list);
	char where[160];
	url_for_log(url, where, sizeof where);
	if (rc == CURLE_OK) {
		out->outcome = DUN_HTTP_ANSWERED;
		curl_easy_getinfo(h, CURLINFO_RESPONSE_CODE, &out->status);
		out->retry_after_s = k.retry_after_s;
		if (out->status < 200 || out->status >= 300) {
			one_line(k.body);
			snprintf(out->error, sizeof out->error, "%.8s %.120s: HTTP %ld%s%.100s",
				 method, where, out->status, k.body[0] ? ": " : "", k.body);
		}
		return DUN_OK;
	}
	/* CURLcode has ~100 values: an if chain, not a switch without default. */
	enum dun_err e = DUN_E_PLATFORM;
	if (rc == CURLE_COULDNT_CONNECT || rc == CURLE_COULDNT_RESOLVE_HOST ||
	    rc == CURLE_COULDNT_RESOLVE_PROXY) {
		out->outcome = DUN_HTTP_CONNECT;
	} else if (rc == CURLE_OPERATION_TIMEDOUT) {
		out->outcome = DUN_HTTP_TIMEOUT;
		e = DUN_E_TIMEOUT;
	} else {
		out->outcome = DUN_HTTP_TRANSPORT;
	}
	one_line(errbuf);
	snprintf(out->error, sizeof out->error, "%.8s %.100s: %.60s%s%.80s", method, where,
		 curl_easy_strerror(rc), errbuf[0] ? " (" : "", errbuf[0] ? errbuf : "");
	if (errbuf[0])
		strncat(out->error, ")", sizeof out->error - strlen(out->error) - 1);
	return e;
}
