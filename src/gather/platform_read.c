/*
 * platform_read.c — GATHER reads the user's platform (see platform_read.h).
 *
 * Design
 * ------
 * A recompute must not decide on a platform it could not read: a ban
 * lifted by hand, a restriction a legacy handler placed, or resource flags
 * an admin put back are only seen by asking. So for an HTTP platform every
 * GATHER asks GET {base_url}/accounts/{id}; the request is started
 * (libcurl's multi interface, one easy handle per engine, connections kept
 * alive) before the engine's own tables are read and collected after, so
 * the two reads overlap. The whole read has one budget
 * ([platform] read_timeout_ms, connection included); a read that does not
 * finish in it, any answer but 200, or a body platform_view.c refuses, is
 * DUN_E_PLATFORM and the recompute fails as retryable, deciding nothing.
 *
 * What GATHER compares is the platform's answer with the account's calls
 * still pending in platform_outbox applied on top, in queue order: a call
 * dunning already decided is on its way, so it is neither drift nor planned
 * again under a new key. Dead calls are not applied: they will never
 * arrive, so the platform's own state is the truth for them.
 *
 * The drift scan reads accounts in batches (POST {base_url}/accounts/read),
 * the same decoding and overlay for each.
 *
 * The embedded local platform is the engine's own tables: `platform` is the
 * restriction for non-payment (and the resource flags), platform_restrictions
 * holds everybody else's. Both are read here into the same view.
 */
#include "platform_read.h"
#include "core/text.h"
#include "util/mem.h"

#include <curl/curl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Largest answer accepted: a batch of 1,000 accounts with their restrictions. */
#define BODY_MAX (16u << 20)

struct dun_platform_conn {
	const struct dun_platform_reader *r;
	CURLM *multi;
	CURL *easy;
	struct curl_slist *headers;
	bool running;
	char *body;
	size_t len, cap;
	bool too_big;
	char errbuf[CURL_ERROR_SIZE];
	char account[DUN_ID_MAX];
	char *post; /* the batch request's body */
	int64_t requests;
};

static size_t on_body(char *p, size_t size, size_t n, void *arg)
{
	struct dun_platform_conn *c = arg;
	size_t add = size * n;
	if (c->len + add + 1 > BODY_MAX) {
		c->too_big = true;
		return 0;
	}
	if (c->len + add + 1 > c->cap) {
		c->cap = (c->len + add + 1) * 2;
		c->body = dun_realloc(c->body, c->cap);
	}
	memcpy(c->body + c->len, p, add);
	c->len += add;
	c->body[c->len] = '\0';
	return add;
}

struct dun_platform_conn *dun_platform_conn_new(const struct dun_platform_reader *r)
{
	struct dun_platform_conn *c = dun_calloc(1, sizeof *c);
	c->r = r;
	c->multi = curl_multi_init();
	c->easy = curl_easy_init();
	if (!c->multi || !c->easy)
		dun_oom();
	char auth[300];
	c->headers = curl_slist_append(NULL, "Accept: application/json");
	if (r->token[0]) {
		snprintf(auth, sizeof auth, "Authorization: Bearer %s", r->token);
		c->headers = curl_slist_append(c->headers, auth);
	}
	c->headers = curl_slist_append(c->headers, "Content-Type: application/json");
	c->headers = curl_slist_append(c->headers, "Expect:");
	if (!c->headers)
		dun_oom();
	return c;
}

void dun_platform_conn_free(struct dun_platform_conn *c)
{
	if (!c)
		return;
	if (c->running)
		curl_multi_remove_handle(c->multi, c->easy);
	curl_easy_cleanup(c->easy);
	curl_multi_cleanup(c->multi);
	curl_slist_free_all(c->headers);
	free(c->body);
	free(c->post);
	free(c);
}

int64_t dun_platform_conn_requests(const struct dun_platform_conn *c)
{
	return c ? c->requests : 0;
}

/* base_url without its trailing slashes, then path. */
static void make_url(const struct dun_platform_reader *r, const char *path, char *url, size_t size)
{
	size_t n = strlen(r->base_url);
	while (n > 0 && r->base_url[n - 1] == '/')
		n--;
	snprintf(url, size, "%.*s%s", (int)n, r->base_url, path);
}

static void start(struct dun_platform_conn *c, const char *url, const char *post)
{
	CURL *h = c->easy;
	curl_easy_reset(h);
	c->len = 0;
	c->too_big = false;
	c->errbuf[0] = '\0';
	if (c->body)
		c->body[0] = '\0';
	curl_easy_setopt(h, CURLOPT_URL, url);
#if LIBCURL_VERSION_NUM >= 0x075500
	curl_easy_setopt(h, CURLOPT_PROTOCOLS_STR, "http,https");
#else
	curl_easy_setopt(h, CURLOPT_PROTOCOLS, (long)(CURLPROTO_HTTP | CURLPROTO_HTTPS));
#endif
	curl_easy_setopt(h, CURLOPT_NOSIGNAL, 1L);
	curl_easy_setopt(h, CURLOPT_FOLLOWLOCATION, 0L);
	curl_easy_setopt(h, CURLOPT_TIMEOUT_MS, c->r->budget_ms);
	curl_easy_setopt(h, CURLOPT_CONNECTTIMEOUT_MS, c->r->budget_ms);
	curl_easy_setopt(h, CURLOPT_HTTPHEADER, c->headers);
	curl_easy_setopt(h, CURLOPT_USERAGENT, "dunning");
	curl_easy_setopt(h, CURLOPT_ERRORBUFFER, c->errbuf);
	curl_easy_setopt(h, CURLOPT_WRITEFUNCTION, on_body);
	curl_easy_setopt(h, CURLOPT_WRITEDATA, c);
	if (post) {
		curl_easy_setopt(h, CURLOPT_POST, 1L);
		curl_easy_setopt(h, CURLOPT_POSTFIELDS, post);
		curl_easy_setopt(h, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)strlen(post));
	} else {
		curl_easy_setopt(h, CURLOPT_HTTPGET, 1L);
	}
	c->requests++;
	if (curl_multi_add_handle(c->multi, h) != CURLM_OK)
		dun_oom();
	c->running = true;
	int still = 0;
	curl_multi_perform(c->multi, &still);
}

/* Wait for the request started last; DUN_OK with a 200 answer in c->body. */
static enum dun_err finish(struct dun_platform_conn *c, const char *what, char *err,
			   size_t err_size)
{
	if (!c->running) {
		snprintf(err, err_size, "platform: %s: no read was started", what);
		return DUN_E_PLATFORM;
	}
	int still = 1;
	CURLcode rc = CURLE_OK;
	while (still) {
		if (curl_multi_perform(c->multi, &still) != CURLM_OK)
			break;
		if (still)
			curl_multi_poll(c->multi, NULL, 0, 1000, NULL);
	}
	int left;
	CURLMsg *m;
	while ((m = curl_multi_info_read(c->multi, &left)))
		if (m->msg == CURLMSG_DONE)
			rc = m->data.result;
	curl_multi_remove_handle(c->multi, c->easy);
	c->running = false;
	if (rc != CURLE_OK) {
		snprintf(err, err_size, "platform: %s: %s%s%.120s", what,
			 rc == CURLE_OPERATION_TIMEDOUT ? "no answer within the read budget"
			 : c->too_big			? "answer too large"
							: curl_easy_strerror(rc),
			 c->errbuf[0] ? ": " : "", c->errbuf);
		return rc == CURLE_OPERATION_TIMEDOUT ? DUN_E_TIMEOUT : DUN_E_PLATFORM;
	}
	long status = 0;
	curl_easy_getinfo(c->easy, CURLINFO_RESPONSE_CODE, &status);
	if (status != 200) {
		snprintf(err, err_size, "platform: %s: HTTP %ld", what, status);
		return DUN_E_PLATFORM;
	}
	return DUN_OK;
}

/* RFC 3986 unreserved bytes stay, everything else is %XX (out holds 3x + 1). */
static void pct_encode(const char *in, char *out, size_t out_size)
{
	static const char hex[] = "0123456789ABCDEF";
	size_t n = 0;
	for (const unsigned char *p = (const unsigned char *)in; *p && n + 4 <= out_size; p++) {
		if ((*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z') ||
		    (*p >= '0' && *p <= '9') || *p == '-' || *p == '_' || *p == '.' || *p == '~') {
			out[n++] = (char)*p;
		} else {
			out[n++] = '%';
			out[n++] = hex[*p >> 4];
			out[n++] = hex[*p & 15];
		}
	}
	out[n] = '\0';
}

void dun_platform_read_begin(struct dun_platform_conn *c, const char *account_id)
{
	if (c->running) {
		curl_multi_remove_handle(c->multi, c->easy);
		c->running = false;
	}
	dun_strlcpy(c->account, account_id, sizeof c->account);
	char id[3 * DUN_ID_MAX + 1];
	pct_encode(account_id, id, sizeof id);
	char path[3 * DUN_ID_MAX + 32];
	snprintf(path, sizeof path, "/accounts/%s", id);
	char url[sizeof c->r->base_url + sizeof path];
	make_url(c->r, path, url, sizeof url);
	start(c, url, NULL);
}

/* Apply the pending outbox calls of v's account on top of it, in queue order. */
static enum dun_err overlay_pending(struct dun_db *db, struct dun_platform_view *v)
{
	struct dun_stmt *st =
	    dun_db_stmt(db, "SELECT op, value FROM platform_outbox WHERE account_id = ?1"
			    " AND state = 'pending' ORDER BY id");
	dun_stmt_bind_text(st, 1, v->account_id);
	int rc;
	while ((rc = dun_stmt_step(st)) == DUN_STEP_ROW)
		dun_platform_view_apply(v, dun_stmt_col_text(st, 0), dun_stmt_col_text(st, 1));
	enum dun_err e = rc == DUN_STEP_DONE ? DUN_OK : dun_stmt_err(st);
	dun_stmt_reset(st);
	return e;
}

void dun_platform_view_to_snapshot(const struct dun_platform_view *v, struct dun_snapshot *snap)
{
	snap->platform = *v;
	snap->state.banned = v->banned;
	snap->state.entitlement = v->entitlement;
	snap->state.has_resource_flags = v->resource_flags > 0;
}

enum dun_err dun_platform_read_end(struct dun_platform_conn *c, struct dun_db *db,
				   struct dun_snapshot *snap, char *err, size_t err_size)
{
	char what[DUN_ID_MAX + 32];
	snprintf(what, sizeof what, "GET /accounts/%.*s", 96, c->account);
	enum dun_err e = finish(c, what, err, err_size);
	if (e != DUN_OK)
		return e == DUN_E_TIMEOUT ? DUN_E_PLATFORM : e;
	struct dun_platform_view v;
	char why[256];
	if (dun_platform_view_parse(c->body, c->len, c->account, &v, why, sizeof why) != DUN_OK) {
		snprintf(err, err_size, "platform: %s: malformed answer: %s", what, why);
		return DUN_E_PLATFORM;
	}
	e = overlay_pending(db, &v);
	if (e == DUN_OK)
		dun_platform_view_to_snapshot(&v, snap);
	return e;
}

enum dun_err dun_platform_read_local_kept(struct dun_db *db, struct dun_platform_view *v)
{
	struct dun_stmt *st =
	    dun_db_stmt(db, "SELECT kind, level, reason, placed_by FROM platform_restrictions"
			    " WHERE account_id = ?1 ORDER BY kind, reason");
	dun_stmt_bind_text(st, 1, v->account_id);
	int rc;
	while ((rc = dun_stmt_step(st)) == DUN_STEP_ROW) {
		v->n_others++;
		if (v->n_kept >= DUN_KEPT_MAX)
			continue;
		struct dun_kept_restriction *k = &v->kept[v->n_kept++];
		dun_stmt_col_copy(st, 0, k->kind, sizeof k->kind);
		k->level = DUN_ENTITLEMENT_FULL;
		dun_entitlement_parse(dun_stmt_col_text(st, 1), &k->level);
		dun_stmt_col_copy(st, 2, k->reason, sizeof k->reason);
		dun_stmt_col_copy(st, 3, k->placed_by, sizeof k->placed_by);
	}
	enum dun_err e = rc == DUN_STEP_DONE ? DUN_OK : dun_stmt_err(st);
	dun_stmt_reset(st);
	return e;
}

enum dun_err dun_platform_read_local(struct dun_db *db, struct dun_snapshot *snap)
{
	struct dun_platform_view v;
	const struct dun_state *s = &snap->state;
	dun_platform_view_init(&v, s->account_id);
	v.banned = s->banned;
	v.entitlement = s->entitlement;
	v.resource_flags = snap->local_resource_flags;
	dun_strlcpy(v.placed_by, snap->local_placed_by, sizeof v.placed_by);
	enum dun_err e = dun_platform_read_local_kept(db, &v);
	if (e == DUN_OK)
		snap->platform = v;
	return e;
}

enum dun_err dun_platform_read_batch(struct dun_platform_conn *c, struct dun_db *db,
				     const char *const *ids, int n, struct dun_platform_view *out,
				     char *err, size_t err_size)
{
	json_t *list = json_array();
	for (int i = 0; i < n; i++)
		json_array_append_new(list, json_string(ids[i]));
	json_t *req = json_pack("{s:o}", "account_ids", list);
	free(c->post);
	c->post = json_dumps(req, JSON_COMPACT);
	json_decref(req);
	if (!c->post)
		dun_oom();
	char url[sizeof c->r->base_url + 32];
	make_url(c->r, "/accounts/read", url, sizeof url);
	if (c->running) {
		curl_multi_remove_handle(c->multi, c->easy);
		c->running = false;
	}
	start(c, url, c->post);
	char what[64];
	snprintf(what, sizeof what, "POST /accounts/read (%d accounts)", n);
	enum dun_err e = finish(c, what, err, err_size);
	if (e != DUN_OK)
		return e == DUN_E_TIMEOUT ? DUN_E_PLATFORM : e;
	char why[256];
	if (dun_platform_view_parse_batch(c->body, c->len, ids, n, out, why, sizeof why) !=
	    DUN_OK) {
		snprintf(err, err_size, "platform: %s: malformed answer: %s", what, why);
		return DUN_E_PLATFORM;
	}
	for (int i = 0; i < n && e == DUN_OK; i++)
		e = overlay_pending(db, &out[i]);
	return e;
}
