/*
 * panel.c — the support panel: HTML pages under /panel/ of `dunning
 * serve`, for the people who answer customers. It is a front door to the
 * same pipeline as the admin API and the CLI, never a second one: the
 * account page is the explain trace (apply/explain.c) rendered for people;
 * "recompute" queues the same support_recompute trigger the admin API
 * queues and the workers settle it; the pay-bad-debt link is
 * dun_pay_bad_debt(); a retry is dun_inbox_requeue(). What the panel adds is
 * who pressed what: every action is a row of panel_actions with the name
 * of the person signed in.
 *
 * Security, in the order a request meets it:
 *   - the panel is off (503) until [panel] users_file names a users file;
 *   - a person signs in with a name and password checked against that file
 *     (app/users.c, yescrypt); the session is a random 256-bit id held in
 *     memory here, sent as a cookie that is HttpOnly, SameSite=Strict,
 *     Path=/panel/, and Secure when [panel] cookie_secure is 1 or the
 *     request came through a TLS proxy (X-Forwarded-Proto: https);
 *     sessions end after [panel] session_idle_s unused or session_max_s in
 *     all, timed by the monotonic clock (never by the settable --now);
 *   - every POST must come from the panel's own origin (Origin, or
 *     Referer when a browser sends no Origin, must name the Host asked for;
 *     Sec-Fetch-Site, when sent, must be same-origin) and carry the
 *     session's CSRF token in its form; the sign-in form carries a token
 *     bound to a cookie of its own;
 *   - every value printed goes through dun_html_text() or dun_html_url();
 *     the Content-Security-Policy allows no script at all, so even a value
 *     that escaped escaping could not run.
 *
 * Threads: handlers run on HTTP threads, check the request and the
 * session, and hand everything that reads the database (and the password
 * hashing, which takes tens of milliseconds on purpose) to the admin lane.
 */
#include "panel.h"
#include "app/users.h"
#include "apply/explain.h"
#include "apply/paybaddebt.h"
#include "core/drift.h"
#include "core/text.h"
#include "inbox/inbox.h"
#include "inbox/scan.h"
#include "report/scans.h"
#include "server/lane.h"
#include "server/panel_html.h"
#include "server/service.h"
#include "server/shared_provider.h"
#include "server/workers.h"
#include "util/clock.h"
#include "util/log.h"
#include "util/mem.h"

#include <openssl/crypto.h>
#include <openssl/rand.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#define SESSIONS_MAX	  1024
#define TOKEN_HEX	  64 /* 32 random bytes */
#define COOKIE_SESSION	  "dunning_panel"
#define COOKIE_LOGIN	  "dunning_login"
#define REASON_MAX	  500
#define QUERY_MAX	  200
#define TIMELINE_MAX	  200
#define LIST_MAX	  200
#define LOGIN_COOKIE_MAX  600 /* seconds a sign-in form stays valid */
#define FAILURES_MAX	  256
#define LOCKOUT_FAILURES  5
#define LOCKOUT_WINDOW_MS (15 * 60 * 1000)
#define LOCKOUT_MS	  (15 * 60 * 1000)

static const char CSP[] = "default-src 'none'; style-src 'self'; img-src 'self'; "
			  "form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

struct session {
	bool live;
	char id[TOKEN_HEX + 1];
	char csrf[TOKEN_HEX + 1];
	char user[DUN_USER_NAME_MAX];
	int64_t created_ms, used_ms;
};

struct dun_panel {
	struct dun_service *svc;
	pthread_mutex_t mu;
	struct session sessions[SESSIONS_MAX]; /* guarded by mu */
	/* the last drift scan run from the panel (guarded by mu) */
	json_t *last_scan;
	/* failed sign-ins per name (guarded by mu), for the lockout */
	struct failures {
		char name[DUN_USER_NAME_MAX];
		int count;
		int64_t first_ms, locked_until_ms;
	} failures[FAILURES_MAX];
};

/*
 * Sign-in throttling: after LOCKOUT_FAILURES wrong passwords for one name
 * within LOCKOUT_WINDOW_MS, that name cannot sign in for LOCKOUT_MS (even
 * with the right password), so a password cannot be guessed at the speed
 * of the hash. Kept per name, in memory; a restart forgets it.
 */
static bool locked_out(struct dun_panel *p, const char *name, int64_t now_ms)
{
	bool locked = false;
	pthread_mutex_lock(&p->mu);
	for (int i = 0; i < FAILURES_MAX; i++)
		if (p->failures[i].name[0] && !strcmp(p->failures[i].name, name))
			locked = p->failures[i].locked_until_ms > now_ms;
	pthread_mutex_unlock(&p->mu);
	return locked;
}

static void note_sign_in(struct dun_panel *p, const char *name, bool ok, int64_t now_ms)
{
	pthread_mutex_lock(&p->mu);
	int slot = -1, oldest = 0;
	for (int i = 0; i < FAILURES_MAX; i++) {
		if (p->failures[i].name[0] && !strcmp(p->failures[i].name, name))
			slot = i;
		if (p->failures[i].first_ms < p->failures[oldest].first_ms)
			oldest = i;
	}
	if (ok) {
		if (slot >= 0)
			memset(&p->failures[slot], 0, sizeof p->failures[slot]);
	} else {
		if (slot < 0 || now_ms - p->failures[slot].first_ms > LOCKOUT_WINDOW_MS) {
			if (slot < 0)
				slot = oldest;
			memset(&p->failures[slot], 0, sizeof p->failures[slot]);
			dun_strlcpy(p->failures[slot].name, name, sizeof p->failures[slot].name);
			p->failures[slot].first_ms = now_ms;
		}
		if (++p->failures[slot].count >= LOCKOUT_FAILURES)
			p->failures[slot].locked_until_ms = now_ms + LOCKOUT_MS;
	}
	pthread_mutex_unlock(&p->mu);
}

struct dun_panel *dun_panel_new(struct dun_service *svc)
{
	struct dun_panel *p = dun_calloc(1, sizeof *p);
	p->svc = svc;
	pthread_mutex_init(&p->mu, NULL);
	return p;
}

void dun_panel_destroy(struct dun_panel *p)
{
	if (!p)
		return;
	json_decref(p->last_scan);
	explicit_bzero(p->sessions, sizeof p->sessions);
	pthread_mutex_destroy(&p->mu);
	free(p);
}

/* ---- tokens and sessions -------------------------------------------------------- */

static bool random_token(char out[TOKEN_HEX + 1])
{
	static const char hex[] = "0123456789abcdef";
	unsigned char raw[TOKEN_HEX / 2];
	if (RAND_bytes(raw, sizeof raw) != 1)
		return false;
	for (size_t i = 0; i < sizeof raw; i++) {
		out[2 * i] = hex[raw[i] >> 4];
		out[2 * i + 1] = hex[raw[i] & 15];
	}
	out[TOKEN_HEX] = '\0';
	explicit_bzero(raw, sizeof raw);
	return true;
}

static bool token_equal(const char *a, const char *b)
{
	return strlen(a) == TOKEN_HEX && strlen(b) == TOKEN_HEX &&
	       CRYPTO_memcmp(a, b, TOKEN_HEX) == 0;
}

static bool session_expired(const struct dun_config *cfg, const struct session *s, int64_t now_ms)
{
	return now_ms - s->used_ms > cfg->panel_session_idle_s * 1000 ||
	       now_ms - s->created_ms > cfg->panel_session_max_s * 1000;
}

/* Create a session for user; false when the system has no random bytes. */
static bool session_create(struct dun_panel *p, const char *user, struct session *out)
{
	struct session s;
	memset(&s, 0, sizeof s);
	if (!random_token(s.id) || !random_token(s.csrf))
		return false;
	s.live = true;
	dun_strlcpy(s.user, user, sizeof s.user);
	s.created_ms = s.used_ms = dun_clock_mono_ms();
	pthread_mutex_lock(&p->mu);
	/* A free slot, else an expired one, else the least recently used. */
	int pick = -1;
	for (int i = 0; i < SESSIONS_MAX && pick < 0; i++)
		if (!p->sessions[i].live ||
		    session_expired(&p->svc->cfg, &p->sessions[i], s.created_ms))
			pick = i;
	if (pick < 0) {
		pick = 0;
		for (int i = 1; i < SESSIONS_MAX; i++)
			if (p->sessions[i].used_ms < p->sessions[pick].used_ms)
				pick = i;
	}
	p->sessions[pick] = s;
	pthread_mutex_unlock(&p->mu);
	*out = s;
	return true;
}

/* The live session of the request's cookie, copied into *out (and touched). */
static bool session_find(struct dun_panel *p, struct dun_http_request *req, struct session *out)
{
	char id[TOKEN_HEX + 1];
	if (dun_cookie_get(dun_http_header(req, "Cookie"), COOKIE_SESSION, id, sizeof id) !=
		DUN_FORM_FOUND ||
	    strlen(id) != TOKEN_HEX)
		return false;
	int64_t now = dun_clock_mono_ms();
	bool found = false;
	pthread_mutex_lock(&p->mu);
	for (int i = 0; i < SESSIONS_MAX; i++) {
		struct session *s = &p->sessions[i];
		if (!s->live || !token_equal(s->id, id))
			continue;
		if (session_expired(&p->svc->cfg, s, now)) {
			s->live = false;
			break;
		}
		s->used_ms = now;
		*out = *s;
		found = true;
		break;
	}
	pthread_mutex_unlock(&p->mu);
	return found;
}

static void session_end(struct dun_panel *p, const char *id)
{
	pthread_mutex_lock(&p->mu);
	for (int i = 0; i < SESSIONS_MAX; i++)
		if (p->sessions[i].live && token_equal(p->sessions[i].id, id))
			p->sessions[i].live = false;
	pthread_mutex_unlock(&p->mu);
}

/* ---- HTML pieces -------------------------------------------------------------------- */

/* Raw HTML (literals of this file only). */
static void h(struct dun_buf *b, const char *s)
{
	dun_buf_str(b, s);
}

/* Escaped text. */
static void t(struct dun_buf *b, const char *s)
{
	dun_html_text(b, s);
}

/* Formatted raw HTML: numbers only, never a %s of data (that goes through t()). */
static void hf(struct dun_buf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void hf(struct dun_buf *b, const char *fmt, ...)
{
	char tmp[256];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(tmp, sizeof tmp, fmt, ap);
	va_end(ap);
	dun_buf_str(b, tmp);
}

static void when(struct dun_buf *b, int64_t ts)
{
	if (ts <= 0) {
		h(b, "<span class=\"dim\">—</span>");
		return;
	}
	char iso[32];
	dun_clock_format(ts, iso, sizeof iso);
	hf(b, "<time datetime=\"%s\">%.10s %.5s</time>", iso, iso, iso + 11);
}

/* Currencies without minor units (Stripe's list of zero-decimal currencies). */
static bool zero_decimal(const char *cur)
{
	static const char *const z[] = {"bif", "clp", "djf", "gnf", "jpy", "kmf", "krw", "mga",
					"pyg", "rwf", "ugx", "vnd", "vuv", "xaf", "xof", "xpf"};
	for (size_t i = 0; i < sizeof z / sizeof z[0]; i++)
		if (!strcasecmp(cur, z[i]))
			return true;
	return false;
}

static void money(struct dun_buf *b, int64_t minor, const char *currency)
{
	if (zero_decimal(currency))
		hf(b, "%lld ", (long long)minor);
	else
		hf(b, "%s%lld.%02lld ", minor < 0 ? "-" : "",
		   (long long)(minor < 0 ? -minor : minor) / 100,
		   (long long)(minor < 0 ? -minor : minor) % 100);
	char up[16];
	size_t i = 0;
	for (; currency[i] && i < sizeof up - 1; i++)
		up[i] = (char)(currency[i] >= 'a' && currency[i] <= 'z' ? currency[i] - 32
									: currency[i]);
	up[i] = '\0';
	t(b, up);
}

static const char *js(json_t *o, const char *k)
{
	const char *s = json_string_value(json_object_get(o, k));
	return s ? s : "";
}

static int64_t ji(json_t *o, const char *k)
{
	json_t *v = json_object_get(o, k);
	if (json_is_boolean(v))
		return json_is_true(v);
	return (int64_t)json_integer_value(v);
}

static bool jb(json_t *o, const char *k)
{
	json_t *v = json_object_get(o, k);
	return json_is_true(v) || (json_is_integer(v) && json_integer_value(v) != 0);
}

static void account_link(struct dun_buf *b, const char *id)
{
	h(b, "<a href=\"/panel/accounts/");
	dun_html_url(b, id);
	h(b, "\">");
	t(b, id);
	h(b, "</a>");
}

static void badge(struct dun_buf *b, const char *cls, const char *text)
{
	h(b, "<span class=\"badge ");
	t(b, cls);
	h(b, "\">");
	t(b, text);
	h(b, "</span>");
}

/* ---- requests and jobs -------------------------------------------------------------- */

enum page {
	PAGE_HOME,
	PAGE_SEARCH,
	PAGE_ACCOUNT,
	PAGE_PREVIEW,
	PAGE_TRIGGERS,
	PAGE_OUTBOXES,
	PAGE_ROLLOUT,
	PAGE_DRIFT,
	PAGE_ACTIONS,
	DO_LOGIN,
	DO_RECOMPUTE,
	DO_PAY,
	DO_KILL,
	DO_RETRY,
	DO_SCAN,
};

struct panel_job {
	struct dun_lane_job lane; /* first: the lane hands back this pointer */
	enum page page;
	struct dun_service *svc;
	struct dun_http_request *req;
	struct session s; /* the person signed in (not for DO_LOGIN) */
	bool secure;	  /* cookies get Secure */
	char account[DUN_ID_MAX];
	char q[QUERY_MAX + 1];
	char reason[REASON_MAX + 1];
	char password[DUN_USER_PASSWORD_MAX + 1];
	bool on;
	int64_t id;
};

static void job_free(void *p)
{
	struct panel_job *job = p;
	explicit_bzero(job->password, sizeof job->password);
	free(job);
}

static void common_headers(struct dun_http_request *req)
{
	dun_http_add_header(req, "Content-Security-Policy", CSP);
	dun_http_add_header(req, "Cache-Control", "no-store");
	dun_http_add_header(req, "X-Content-Type-Options", "nosniff");
	dun_http_add_header(req, "Referrer-Policy", "same-origin");
	dun_http_add_header(req, "X-Frame-Options", "DENY");
}

static void reply_html(struct dun_http_request *req, unsigned status, struct dun_buf *b)
{
	common_headers(req);
	if (!b->p)
		dun_buf_str(b, "");
	dun_http_reply(req, status, "text/html; charset=utf-8", b->p, b->len);
	b->p = NULL;
}

static void redirect(struct dun_http_request *req, const char *location)
{
	common_headers(req);
	dun_http_add_header(req, "Location", location);
	dun_http_reply(req, 303, "text/plain; charset=utf-8", dun_strdup("see other\n"), 10);
}

static void set_cookie(struct dun_http_request *req, bool secure, const char *name,
		       const char *value, int64_t max_age_s)
{
	char c[256];
	snprintf(c, sizeof c, "%s=%s; Path=/panel/; Max-Age=%lld; HttpOnly; SameSite=Strict%s",
		 name, value, (long long)max_age_s, secure ? "; Secure" : "");
	dun_http_add_header(req, "Set-Cookie", c);
}

static void page_begin(struct dun_buf *b, const char *title, const struct panel_job *job,
		       const char *refresh)
{
	h(b, "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
	     "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">");
	if (refresh)
		h(b, refresh);
	h(b, "<title>");
	t(b, title);
	h(b, " · dunning</title><link rel=\"stylesheet\" href=\"/panel/style.css\"></head>"
	     "<body><header><a class=\"brand\" href=\"/panel/\">dunning</a>");
	if (job && job->s.live) {
		h(b,
		  "<nav><a href=\"/panel/\">Search</a><a href=\"/panel/triggers\">Triggers</a>"
		  "<a href=\"/panel/outboxes\">Outboxes</a><a href=\"/panel/rollout\">Rollout</a>"
		  "<a href=\"/panel/drift\">Drift</a><a href=\"/panel/actions\">Actions</a></nav>"
		  "<form class=\"who\" method=\"post\" action=\"/panel/logout\">"
		  "<span>signed in as <b id=\"user\">");
		t(b, job->s.user);
		h(b, "</b></span><input type=\"hidden\" name=\"csrf\" value=\"");
		t(b, job->s.csrf);
		h(b, "\"><button type=\"submit\">Sign out</button></form>");
	}
	h(b, "</header><main>");
}

static void page_end(struct dun_buf *b)
{
	h(b, "</main></body></html>\n");
}

static void csrf_field(struct dun_buf *b, const struct panel_job *job)
{
	h(b, "<input type=\"hidden\" name=\"csrf\" value=\"");
	t(b, job->s.csrf);
	h(b, "\">");
}

/* A page that only says something (an error, a refusal). */
static void reply_message(struct dun_http_request *req, const struct panel_job *job,
			  unsigned status, const char *title, const char *text)
{
	struct dun_buf b = {0};
	page_begin(&b, title, job, NULL);
	h(&b, "<h1>");
	t(&b, title);
	h(&b, "</h1><p class=\"msg\">");
	t(&b, text);
	h(&b, "</p>");
	if (job && job->s.live)
		h(&b, "<p><a href=\"/panel/\">Back to search</a></p>");
	else
		h(&b, "<p><a href=\"/panel/login\">Sign in</a></p>");
	page_end(&b);
	reply_html(req, status, &b);
}

/* ---- the record of who pressed what ------------------------------------------------- */

static enum dun_err record_action(struct dun_db *db, const char *user, const char *action,
				  const char *account, const char *detail, const char *outcome)
{
	struct dun_stmt *st =
	    dun_db_stmt(db, "INSERT INTO panel_actions(at, user_name, action, account_id, detail,"
			    " outcome) VALUES (?1, ?2, ?3, ?4, ?5, ?6)");
	dun_stmt_bind_int64(st, 1, dun_clock_now());
	dun_stmt_bind_text(st, 2, user);
	dun_stmt_bind_text(st, 3, action);
	dun_stmt_bind_text(st, 4, account ? account : "");
	dun_stmt_bind_text(st, 5, detail ? detail : "");
	dun_stmt_bind_text(st, 6, outcome ? outcome : "");
	enum dun_err e = dun_stmt_done(st);
	if (e != DUN_OK)
		dun_log(DUN_LOG_ERROR, "panel.action_not_recorded", "user", user, "action", action,
			"account", account ? account : "", "error", dun_err_str(e), NULL);
	return e;
}

static void actions_table(struct dun_buf *b, struct dun_db *db, const char *account)
{
	struct dun_stmt *st = dun_db_stmt(
	    db, "SELECT at, user_name, action, account_id, detail, outcome FROM panel_actions"
		" WHERE (?1 IS NULL OR account_id = ?1) ORDER BY id DESC LIMIT 200");
	dun_stmt_bind_text_copy(st, 1, account);
	h(b, "<table class=\"actions\"><thead><tr><th>when</th><th>who</th><th>action</th>");
	if (!account)
		h(b, "<th>account</th>");
	h(b, "<th>detail</th><th>outcome</th></tr></thead><tbody>");
	int n = 0;
	while (dun_stmt_row(st)) {
		n++;
		h(b, "<tr><td>");
		when(b, dun_stmt_col_int64(st, 0));
		h(b, "</td><td>");
		t(b, dun_stmt_col_text(st, 1));
		h(b, "</td><td>");
		t(b, dun_stmt_col_text(st, 2));
		h(b, "</td>");
		if (!account) {
			h(b, "<td>");
			const char *a = dun_stmt_col_text(st, 3);
			if (a && a[0])
				account_link(b, a);
			h(b, "</td>");
		}
		h(b, "<td>");
		t(b, dun_stmt_col_text(st, 4));
		h(b, "</td><td>");
		t(b, dun_stmt_col_text(st, 5));
		h(b, "</td></tr>");
	}
	dun_stmt_reset(st);
	if (!n)
		hf(b, "<tr><td colspan=\"%d\" class=\"dim\">nothing pressed yet</td></tr>",
		   account ? 5 : 6);
	h(b, "</tbody></table>");
}

/* ---- pages -------------------------------------------------------------------------- */

static void search_form(struct dun_buf *b, const char *q)
{
	h(b, "<form class=\"search\" method=\"get\" action=\"/panel/search\">"
	     "<label for=\"q\">Account id, customer id or email</label>"
	     "<input id=\"q\" name=\"q\" type=\"search\" autofocus maxlength=\"200\" value=\"");
	t(b, q);
	h(b, "\"><button type=\"submit\">Find</button></form>");
}

static void page_home(struct panel_job *job, struct dun_engine_ctx *ctx)
{
	struct dun_buf b = {0};
	page_begin(&b, "Search", job, NULL);
	h(&b, "<h1>Find an account</h1>");
	search_form(&b, "");
	struct dun_inbox_counts c;
	if (dun_inbox_counts(ctx->db, &c) == DUN_OK)
		hf(&b,
		   "<p class=\"dim\">Inbox: %lld received, %lld processing, %lld retrying, "
		   "<a href=\"/panel/triggers\">%lld dead</a>.</p>",
		   (long long)c.received, (long long)c.processing, (long long)c.retrying,
		   (long long)c.dead);
	page_end(&b);
	reply_html(job->req, 200, &b);
}

/* q with LIKE's wildcards escaped and a % appended: a prefix pattern. */
static void like_prefix(const char *q, char *out, size_t size)
{
	size_t o = 0;
	for (; *q && o + 3 < size; q++) {
		if (*q == '%' || *q == '_' || *q == '\\')
			out[o++] = '\\';
		out[o++] = *q;
	}
	out[o++] = '%';
	out[o] = '\0';
}

static void page_search(struct panel_job *job, struct dun_engine_ctx *ctx)
{
	char like[2 * QUERY_MAX + 4];
	like_prefix(job->q, like, sizeof like);
	struct dun_stmt *st = dun_db_stmt(
	    ctx->db, "SELECT a.id, a.name, a.email, COALESCE(d.stage, 'none'), a.kill_switch,"
		     " CASE WHEN a.id = ?1 OR LOWER(a.email) = LOWER(?1)"
		     "  OR a.id IN (SELECT account_id FROM customers WHERE id = ?1)"
		     "  OR a.id IN (SELECT account_id FROM p_customers WHERE id = ?1"
		     "   OR LOWER(email) = LOWER(?1)) THEN 1 ELSE 0 END"
		     " FROM accounts a LEFT JOIN dunning d ON d.account_id = a.id"
		     " WHERE a.id = ?1 OR LOWER(a.email) = LOWER(?1)"
		     " OR a.id IN (SELECT account_id FROM customers WHERE id = ?1)"
		     " OR a.id IN (SELECT account_id FROM p_customers WHERE id = ?1"
		     "  OR LOWER(email) = LOWER(?1))"
		     " OR a.id LIKE ?2 ESCAPE '\\' OR LOWER(a.email) LIKE LOWER(?2) ESCAPE '\\'"
		     " ORDER BY 6 DESC, a.id LIMIT 51");
	dun_stmt_bind_text(st, 1, job->q);
	dun_stmt_bind_text(st, 2, like);
	struct dun_buf rows = {0};
	int n = 0, exact = 0;
	char only[DUN_ID_MAX] = "";
	while (dun_stmt_row(st)) {
		if (++n > 50)
			break;
		const char *id = dun_stmt_col_text(st, 0);
		if (dun_stmt_col_int(st, 5)) {
			exact++;
			dun_strlcpy(only, id ? id : "", sizeof only);
		}
		h(&rows, "<tr><td>");
		account_link(&rows, id);
		h(&rows, "</td><td>");
		t(&rows, dun_stmt_col_text(st, 1));
		h(&rows, "</td><td>");
		t(&rows, dun_stmt_col_text(st, 2));
		h(&rows, "</td><td>");
		badge(&rows, dun_stmt_col_text(st, 3), dun_stmt_col_text(st, 3));
		h(&rows, "</td><td>");
		if (dun_stmt_col_int(st, 4))
			badge(&rows, "kill", "kill switch on");
		h(&rows, "</td></tr>");
	}
	dun_stmt_reset(st);
	if (exact == 1 && n == 1) {
		free(rows.p);
		struct dun_buf loc = {0};
		h(&loc, "/panel/accounts/");
		dun_html_url(&loc, only);
		redirect(job->req, loc.p);
		free(loc.p);
		return;
	}
	struct dun_buf b = {0};
	page_begin(&b, "Search", job, NULL);
	h(&b, "<h1>Find an account</h1>");
	search_form(&b, job->q);
	if (n == 0) {
		h(&b, "<p class=\"msg\">No account matches <q>");
		t(&b, job->q);
		h(&b, "</q>.</p>");
	} else {
		h(&b, "<table><thead><tr><th>account</th><th>name</th><th>email</th>"
		      "<th>stage</th><th></th></tr></thead><tbody>");
		dun_buf_str(&b, rows.p);
		h(&b, "</tbody></table>");
		if (n > 50)
			h(&b, "<p class=\"dim\">More than 50 match; type more of the id or "
			      "email.</p>");
	}
	free(rows.p);
	page_end(&b);
	reply_html(job->req, 200, &b);
}

/* The state of a recompute this page was asked to follow (?trigger=N). */
static void trigger_banner(struct dun_buf *b, struct panel_job *job, struct dun_engine_ctx *ctx,
			   bool *pending)
{
	*pending = false;
	if (job->id <= 0)
		return;
	struct dun_stmt *st = dun_db_stmt(
	    ctx->db,
	    "SELECT state, attempts, last_error FROM inbox WHERE id = ?1 AND account_id = ?2");
	dun_stmt_bind_int64(st, 1, job->id);
	dun_stmt_bind_text(st, 2, job->account);
	if (!dun_stmt_row(st)) {
		dun_stmt_reset(st);
		return;
	}
	char state[16] = "", error[256] = "";
	dun_stmt_col_copy(st, 0, state, sizeof state);
	dun_stmt_col_copy(st, 2, error, sizeof error);
	dun_stmt_reset(st);
	*pending = !strcmp(state, "received") || !strcmp(state, "processing");
	h(b, "<div id=\"recompute-status\" class=\"banner ");
	t(b, state);
	hf(b, "\">Recompute (trigger %lld): <b>", (long long)job->id);
	t(b, state);
	h(b, "</b>");
	if (*pending) {
		h(b, " — this page reloads until it is done.");
	} else if (!strcmp(state, "done")) {
		st = dun_db_stmt(ctx->db,
				 "SELECT stage_from, stage_to, n_planned, n_applied, outcome"
				 " FROM decisions WHERE trigger_id = ?1 ORDER BY id DESC"
				 " LIMIT 1");
		dun_stmt_bind_int64(st, 1, job->id);
		if (dun_stmt_row(st)) {
			h(b, " — stage ");
			t(b, dun_stmt_col_text(st, 0));
			h(b, " → ");
			t(b, dun_stmt_col_text(st, 1));
			hf(b, ", %lld planned, %lld applied, ",
			   (long long)dun_stmt_col_int64(st, 2),
			   (long long)dun_stmt_col_int64(st, 3));
			t(b, dun_stmt_col_text(st, 4));
			h(b, ".");
		} else {
			h(b, " — coalesced into another recompute of the account.");
		}
		dun_stmt_reset(st);
	} else if (error[0]) {
		h(b, " — ");
		t(b, error);
	}
	h(b, "</div>");
}

static void reasons_list(struct dun_buf *b, json_t *reasons)
{
	size_t i;
	json_t *r;
	h(b, "<ul class=\"reasons\">");
	json_array_foreach(reasons, i, r)
	{
		h(b, "<li><code>");
		t(b, js(r, "rule"));
		h(b, "</code> ");
		t(b, js(r, "text"));
		h(b, "</li>");
	}
	if (!json_array_size(reasons))
		h(b, "<li class=\"dim\">no rule matched: nothing is owed</li>");
	h(b, "</ul>");
}

static void plan_list(struct dun_buf *b, json_t *plan)
{
	size_t i;
	json_t *c;
	h(b, "<ol class=\"plan\">");
	json_array_foreach(plan, i, c)
	{
		h(b, "<li><code>");
		t(b, js(c, "text"));
		h(b, "</code> <span class=\"dim\">(");
		t(b, js(c, "store"));
		h(b, ")</span></li>");
	}
	h(b, "</ol>");
	if (!json_array_size(plan))
		h(b, "<p class=\"ok\" id=\"no-plan\">Nothing to do: the stores agree with the "
		     "policy.</p>");
}

static void invoices_table(struct dun_buf *b, json_t *invoices)
{
	size_t i;
	json_t *v;
	h(b, "<table id=\"invoices\"><thead><tr><th>invoice</th><th>shown as</th><th>status</th>"
	     "<th>due</th><th>remaining</th><th>created</th><th>attempts</th><th>next retry</th>"
	     "<th></th></tr></thead><tbody>");
	json_array_foreach(invoices, i, v)
	{
		const char *display = js(v, "display");
		h(b, "<tr><td><code>");
		t(b, js(v, "id"));
		h(b, "</code></td><td>");
		badge(b, display, display);
		h(b, "</td><td>");
		t(b, js(v, "status"));
		h(b, "</td><td>");
		money(b, ji(v, "amount_due"), js(v, "currency"));
		h(b, "</td><td>");
		money(b, ji(v, "amount_remaining"), js(v, "currency"));
		h(b, "</td><td>");
		when(b, ji(v, "created"));
		hf(b, "</td><td>%lld</td><td>", (long long)ji(v, "attempt_count"));
		when(b, ji(v, "next_retry_at"));
		h(b, "</td><td>");
		if (jb(v, "consolidated"))
			badge(b, "info", "consolidated");
		if (jb(v, "failing"))
			badge(b, "warn", "failing");
		if (jb(v, "hard_decline"))
			badge(b, "warn", "hard decline");
		if (jb(v, "upgrade"))
			badge(b, "info", "upgrade");
		if (jb(v, "processing"))
			badge(b, "info", "processing");
		h(b, "</td></tr>");
	}
	if (!json_array_size(invoices))
		h(b, "<tr><td colspan=\"9\" class=\"dim\">no invoices</td></tr>");
	h(b, "</tbody></table>");
}

static void timeline(struct dun_buf *b, struct dun_db *db, const char *account)
{
	struct dun_stmt *st = dun_db_stmt(
	    db,
	    "SELECT at, what, title, detail FROM ("
	    " SELECT received_at AS at, 'webhook' AS what, type AS title,"
	    "  id || CASE WHEN outcome <> '' THEN ' · ' || outcome ELSE '' END AS detail"
	    "  FROM events_raw WHERE account_id = ?1"
	    " UNION ALL SELECT at, 'decision', trigger_kind || ': ' || stage_from || ' → '"
	    "  || stage_to, mode || ' · ' || outcome || ' · ' || CAST(n_applied AS TEXT) || ' of '"
	    "  || CAST(n_planned AS TEXT) || ' applied'"
	    "  || CASE WHEN held <> 0 THEN ' · held' ELSE '' END"
	    "  || CASE WHEN error <> '' THEN ' · ' || error ELSE '' END"
	    "  FROM decisions WHERE account_id = ?1"
	    " UNION ALL SELECT at, 'consequence', type, key || ' · ' || outcome"
	    "  || CASE WHEN error <> '' THEN ' · ' || error ELSE '' END"
	    "  FROM applied WHERE account_id = ?1"
	    " UNION ALL SELECT created_at, 'email', kind, state || ' · ' || to_addr"
	    "  || CASE WHEN last_error <> '' THEN ' · ' || last_error ELSE '' END"
	    "  FROM emails WHERE account_id = ?1"
	    " UNION ALL SELECT at, 'panel', action, user_name || ' · ' || outcome"
	    "  || CASE WHEN detail <> '' THEN ' · ' || detail ELSE '' END"
	    "  FROM panel_actions WHERE account_id = ?1"
	    ") tl ORDER BY at DESC, what LIMIT 200");
	dun_stmt_bind_text(st, 1, account);
	h(b, "<table id=\"timeline\"><thead><tr><th>when</th><th>what</th><th></th><th></th>"
	     "</tr></thead><tbody>");
	int n = 0;
	while (dun_stmt_row(st)) {
		n++;
		const char *what = dun_stmt_col_text(st, 1);
		h(b, "<tr class=\"tl-");
		t(b, what);
		h(b, "\"><td>");
		when(b, dun_stmt_col_int64(st, 0));
		h(b, "</td><td>");
		badge(b, what, what);
		h(b, "</td><td>");
		t(b, dun_stmt_col_text(st, 2));
		h(b, "</td><td class=\"detail\">");
		t(b, dun_stmt_col_text(st, 3));
		h(b, "</td></tr>");
	}
	enum dun_err e = dun_stmt_err(st);
	dun_stmt_reset(st);
	if (e != DUN_OK)
		h(b, "<tr><td colspan=\"4\" class=\"err\">the timeline cannot be read</td></tr>");
	else if (!n)
		h(b, "<tr><td colspan=\"4\" class=\"dim\">nothing happened yet</td></tr>");
	h(b, "</tbody></table>");
}

static void rows_table(struct dun_buf *b, const char *id, json_t *rows, const char *const *cols,
		       const char *empty, const struct panel_job *job, bool retry_dead)
{
	h(b, "<table id=\"");
	t(b, id);
	h(b, "\"><thead><tr>");
	for (int c = 0; cols[c]; c++) {
		h(b, "<th>");
		t(b, cols[c]);
		h(b, "</th>");
	}
	if (retry_dead)
		h(b, "<th></th>");
	h(b, "</tr></thead><tbody>");
	size_t i;
	json_t *r;
	json_array_foreach(rows, i, r)
	{
		h(b, "<tr>");
		for (int c = 0; cols[c]; c++) {
			json_t *v = json_object_get(r, cols[c]);
			h(b, "<td>");
			if (json_is_integer(v) &&
			    (strstr(cols[c], "_at") || !strcmp(cols[c], "at") ||
			     !strcmp(cols[c], "not_before")))
				when(b, json_integer_value(v));
			else if (json_is_integer(v))
				hf(b, "%lld", (long long)json_integer_value(v));
			else if (json_is_string(v))
				t(b, json_string_value(v));
			h(b, "</td>");
		}
		if (retry_dead) {
			h(b, "<td>");
			const char *state = js(r, "state");
			if (!strcmp(state, "dead") || !strcmp(state, "retrying")) {
				hf(b,
				   "<form method=\"post\" action=\"/panel/triggers/%lld/retry\">",
				   (long long)ji(r, "id"));
				csrf_field(b, job);
				h(b, "<button type=\"submit\">Retry</button></form>");
			}
			h(b, "</td>");
		}
		h(b, "</tr>");
	}
	if (!json_array_size(rows)) {
		int n = 0;
		while (cols[n])
			n++;
		hf(b, "<tr><td colspan=\"%d\" class=\"dim\">", n + (retry_dead ? 1 : 0));
		t(b, empty);
		h(b, "</td></tr>");
	}
	h(b, "</tbody></table>");
}

static void page_account(struct panel_job *job, struct dun_engine_ctx *ctx)
{
	json_t *o = NULL;
	enum dun_err e = dun_explain_json(&ctx->engine, job->account, dun_clock_now(), &o);
	if (e == DUN_E_NOT_FOUND) {
		char msg[DUN_ID_MAX + 64];
		snprintf(msg, sizeof msg, "There is no account \"%s\".", job->account);
		reply_message(job->req, job, 404, "No such account", msg);
		return;
	}
	if (e != DUN_OK) {
		char msg[256];
		snprintf(msg, sizeof msg, "The account cannot be read now: %s. Try again.",
			 dun_err_str(e));
		reply_message(job->req, job, dun_err_is_retryable(e) ? 503 : 500, "Cannot read",
			      msg);
		return;
	}
	unsigned drift = dun_drift_classify(&ctx->engine.snap.state, &ctx->engine.desired);
	json_t *acct = json_object_get(o, "account");
	json_t *dun = json_object_get(o, "dunning");
	json_t *ev = json_object_get(o, "evaluation");
	json_t *plan = json_object_get(o, "plan");
	bool observe = !strcmp(js(o, "view"), "shadow");

	struct dun_buf b = {0};
	bool pending = false;
	struct dun_buf banner = {0};
	trigger_banner(&banner, job, ctx, &pending);
	page_begin(&b, job->account, job,
		   pending ? "<meta http-equiv=\"refresh\" content=\"1\">" : NULL);
	if (banner.p)
		dun_buf_str(&b, banner.p);
	free(banner.p);

	h(&b, "<h1 id=\"account-id\">");
	t(&b, job->account);
	h(&b, "</h1><p class=\"sub\"><span id=\"account-name\">");
	t(&b, js(acct, "name"));
	h(&b, "</span> · <span id=\"account-email\">");
	t(&b, js(acct, "email"));
	h(&b, "</span> · ");
	t(&b, js(acct, "segment"));
	json_t *cus = json_object_get(o, "customer");
	if (json_is_object(cus)) {
		h(&b, " · customer <code>");
		t(&b, js(cus, "id"));
		h(&b, "</code>");
	}
	h(&b, "</p><p>");
	badge(&b, js(ev, "mode"), js(ev, "mode"));
	h(&b, " <span class=\"dim\">");
	t(&b, js(ev, "mode_why"));
	h(&b, "</span>");
	if (jb(acct, "kill_switch"))
		badge(&b, "kill", "kill switch on: the engine does not touch this account");
	h(&b, "</p>");

	/* Stage, since when and why. */
	h(&b, observe ? "<section class=\"cards\"><div class=\"card\"><h2>Stage (shadow)</h2>"
		      : "<section class=\"cards\"><div class=\"card\"><h2>Stage</h2>");
	h(&b, "<p class=\"stage\" id=\"stage\">");
	badge(&b, js(dun, "stage"), js(dun, "stage"));
	h(&b, "</p><p>since ");
	when(&b, ji(dun, "since"));
	hf(&b, " · episode %lld</p>", (long long)ji(dun, "episode"));
	hf(&b, "<p>%lld days delinquent", (long long)ji(ev, "days_delinquent"));
	if (ji(ev, "delinquent_since") > 0) {
		h(&b, " (since ");
		when(&b, ji(ev, "delinquent_since"));
		h(&b, ")");
	}
	h(&b, "</p><p>the policy says <b id=\"policy-stage\">");
	t(&b, js(ev, "stage"));
	h(&b, "</b>");
	if (jb(ev, "held"))
		h(&b, " — <b>held</b>: a payment is in flight or a consolidated invoice is new");
	if (jb(ev, "skipped"))
		h(&b, " — <b>skipped</b> (segment or kill switch)");
	h(&b, "</p><p>next recheck ");
	when(&b, ji(ev, "next_recheck_at"));
	h(&b, "</p></div>");

	json_t *plat = json_object_get(o, "platform");
	h(&b, observe ? "<div class=\"card\"><h2>Stores (shadow)</h2><ul class=\"kv\">"
		      : "<div class=\"card\"><h2>Stores</h2><ul class=\"kv\">");
	hf(&b, "<li>account bad_debt <b>%s</b></li>", jb(acct, "bad_debt") ? "yes" : "no");
	if (json_is_object(cus))
		hf(&b, "<li>customer bad_debt <b>%s</b>, provider metadata <b>%s</b></li>",
		   jb(cus, "bad_debt") ? "yes" : "no",
		   jb(cus, "provider_metadata_bad_debt") ? "yes" : "no");
	hf(&b, "<li>banned <b>%s</b></li>", jb(plat, "banned") ? "yes" : "no");
	h(&b, "<li>entitlement <b>");
	t(&b, js(plat, "entitlement"));
	hf(&b, "</b></li><li>resource flags <b>%s</b></li>",
	   jb(plat, "resource_flags") ? "present" : "removed");
	hf(&b, "<li>no_successful_payment <b>%s</b></li></ul></div>",
	   jb(acct, "no_successful_payment") ? "yes" : "no");

	/* Drift. */
	h(&b, drift ? "<div class=\"card bad\" id=\"drift\"><h2>Drift</h2>"
		    : "<div class=\"card\" id=\"drift\"><h2>Drift</h2>");
	if (!drift) {
		h(&b, "<p class=\"ok\" id=\"drift-none\">none: the stores agree with the "
		      "policy</p>");
	} else {
		h(&b, "<ul class=\"drift\">");
		for (int c = 0; c < DUN_DRIFT__COUNT; c++)
			if (drift & (1u << c)) {
				h(&b, "<li><b>");
				t(&b, dun_drift_name((enum dun_drift_class)c));
				h(&b, "</b>: ");
				t(&b, dun_drift_text((enum dun_drift_class)c));
				h(&b, "</li>");
			}
		h(&b, "</ul>");
	}
	h(&b, "</div></section>");

	h(&b, "<section><h2>Why: the rules that matched</h2>");
	reasons_list(&b, json_object_get(o, "reasons"));
	h(&b, "<h2>What a recompute would do now</h2>");
	plan_list(&b, plan);
	h(&b, "</section>");

	if (observe) {
		json_t *real = json_object_get(o, "real");
		json_t *rd = json_object_get(real, "dunning");
		json_t *rp = json_object_get(real, "platform");
		h(&b,
		  "<section class=\"observe\" id=\"shadow\"><h2>Observe mode: the shadow "
		  "decision</h2><p>This account is observed: the engine writes nothing and "
		  "keeps a shadow of what it would have done. The stage and stores above are "
		  "the shadow's. The real stores (the legacy system's until cutover) say: stage "
		  "<b id=\"real-stage\">");
		t(&b, js(rd, "stage"));
		hf(&b, "</b>, account bad_debt <b>%s</b>, banned <b>%s</b>, entitlement <b>",
		   jb(real, "account_bad_debt") ? "yes" : "no", jb(rp, "banned") ? "yes" : "no");
		t(&b, js(rp, "entitlement"));
		h(&b, "</b>.</p><h3>What the shadow did, and when</h3>");
		static const char *const cols[] = {"at", "type", "target", "value", "kind", NULL};
		rows_table(&b, "shadow-consequences", json_object_get(o, "shadow_consequences"),
			   cols, "the shadow has done nothing", job, false);
		h(&b, "</section>");
	}

	/* Actions. */
	h(&b, "<section class=\"buttons\"><h2>Actions</h2><div class=\"row\">"
	      "<a class=\"button\" id=\"recompute\" href=\"/panel/accounts/");
	dun_html_url(&b, job->account);
	h(&b, "/recompute\">Recompute…</a>");
	h(&b, "<form method=\"post\" action=\"/panel/accounts/");
	dun_html_url(&b, job->account);
	h(&b, "/pay-bad-debt\">");
	csrf_field(&b, job);
	h(&b, "<button type=\"submit\" id=\"pay-bad-debt\">Create or show the pay-bad-debt "
	      "link</button></form></div>");
	h(&b, "<form class=\"kill\" method=\"post\" action=\"/panel/accounts/");
	dun_html_url(&b, job->account);
	h(&b, "/kill-switch\">");
	csrf_field(&b, job);
	bool kill = jb(acct, "kill_switch");
	hf(&b, "<input type=\"hidden\" name=\"on\" value=\"%d\">", kill ? 0 : 1);
	h(&b, "<label for=\"reason\">Reason (recorded)</label><input id=\"reason\" "
	      "name=\"reason\" required maxlength=\"500\">");
	hf(&b, "<button type=\"submit\" id=\"kill-switch\" class=\"%s\">%s</button></form>",
	   kill ? "" : "danger", kill ? "Turn the kill switch off" : "Turn the kill switch on");
	h(&b, "</section>");

	h(&b, "<section><h2>Invoices</h2>");
	invoices_table(&b, json_object_get(o, "invoices"));
	h(&b, "</section>");

	h(&b, "<section><h2>Pending and dead triggers</h2>");
	static const char *const tcols[] = {"id",	"kind",	      "source",	    "state",
					    "attempts", "last_error", "not_before", NULL};
	rows_table(&b, "triggers", json_object_get(o, "pending_triggers"), tcols,
		   "no trigger waiting", job, true);
	h(&b, "<h2>Outbox</h2>");
	static const char *const ocols[] = {"id",	"op",	       "value",	     "state",
					    "attempts", "last_status", "last_error", NULL};
	rows_table(&b, "platform-outbox", json_object_get(o, "platform_outbox"), ocols,
		   "no platform call on its way", job, false);
	h(&b, "<h2>Emails</h2>");
	static const char *const ecols[] = {"created_at", "kind",    "invoice_id", "state",
					    "attempts",	  "sent_at", NULL};
	rows_table(&b, "emails", json_object_get(o, "emails"), ecols, "no email", job, false);
	h(&b, "<h2>Bad-debt episodes</h2>");
	static const char *const bcols[] = {"episode",	    "entered_at", "reason",	 "products",
					    "amount_minor", "exited_at",  "exit_reason", NULL};
	rows_table(&b, "episodes", json_object_get(o, "bad_debt_episodes"), bcols,
		   "never in bad debt", job, false);
	h(&b, "</section>");

	h(&b, "<section><h2>Timeline</h2>");
	timeline(&b, ctx->db, job->account);
	h(&b, "<h2>Pressed in the panel</h2>");
	actions_table(&b, ctx->db, job->account);
	h(&b, "</section>");
	page_end(&b);
	json_decref(o);
	reply_html(job->req, 200, &b);
}

static void page_preview(struct panel_job *job, struct dun_engine_ctx *ctx)
{
	json_t *o = NULL;
	enum dun_err e = dun_explain_json(&ctx->engine, job->account, dun_clock_now(), &o);
	if (e != DUN_OK) {
		char msg[DUN_ID_MAX + 96];
		snprintf(msg, sizeof msg, "Cannot evaluate \"%s\": %s.", job->account,
			 dun_err_str(e));
		reply_message(job->req, job, e == DUN_E_NOT_FOUND ? 404 : 503, "Cannot recompute",
			      msg);
		return;
	}
	json_t *ev = json_object_get(o, "evaluation");
	struct dun_buf b = {0};
	page_begin(&b, "Recompute", job, NULL);
	h(&b, "<h1>Recompute ");
	account_link(&b, job->account);
	h(&b, "</h1><p>A dry run, nothing written yet. The stage would go from <b>");
	t(&b, js(json_object_get(o, "dunning"), "stage"));
	h(&b, "</b> to <b id=\"preview-stage\">");
	t(&b, js(ev, "stage"));
	h(&b, "</b>, because:</p>");
	reasons_list(&b, json_object_get(o, "reasons"));
	h(&b, "<h2>The plan</h2>");
	plan_list(&b, json_object_get(o, "plan"));
	if (!strcmp(js(o, "view"), "shadow"))
		h(&b, "<p class=\"banner observe\">This account is in observe mode: applying "
		      "updates the shadow only, the real stores are not written.</p>");
	h(&b, "<p class=\"dim\">Applying queues the recompute for the workers: they read the "
	      "account afresh, so the plan applied is the one true at that moment.</p>"
	      "<form method=\"post\" action=\"/panel/accounts/");
	dun_html_url(&b, job->account);
	h(&b, "/recompute\">");
	csrf_field(&b, job);
	h(&b, "<button type=\"submit\" id=\"apply\" class=\"primary\">Apply</button> "
	      "<a href=\"/panel/accounts/");
	dun_html_url(&b, job->account);
	h(&b, "\">Cancel</a></form>");
	page_end(&b);
	json_decref(o);
	reply_html(job->req, 200, &b);
}

static void do_recompute(struct panel_job *job, struct dun_engine_ctx *ctx)
{
	struct dun_stmt *st = dun_db_stmt(ctx->db, "SELECT 1 FROM accounts WHERE id = ?1");
	dun_stmt_bind_text(st, 1, job->account);
	bool exists = dun_stmt_row(st);
	dun_stmt_reset(st);
	if (!exists) {
		reply_message(job->req, job, 404, "No such account", "There is no such account.");
		return;
	}
	int64_t trigger = 0;
	bool inserted = false;
	char detail[48];
	enum dun_err e = dun_db_begin(ctx->db);
	if (e == DUN_OK)
		e = dun_inbox_enqueue(ctx->db, job->account, "support_recompute", "panel", "", NULL,
				      0, &inserted, &trigger);
	snprintf(detail, sizeof detail, "trigger %lld", (long long)trigger);
	if (e == DUN_OK)
		e = record_action(ctx->db, job->s.user, "recompute", job->account, detail,
				  "queued");
	if (e == DUN_OK)
		e = dun_db_commit(ctx->db);
	if (e != DUN_OK) {
		dun_db_rollback(ctx->db);
		char msg[160];
		snprintf(msg, sizeof msg,
			 "The recompute could not be queued: %s. Nothing was "
			 "written; try again.",
			 dun_err_str(e));
		reply_message(job->req, job, 503, "Not queued", msg);
		return;
	}
	dun_log(DUN_LOG_INFO, "panel.action", "user", job->s.user, "action", "recompute", "account",
		job->account, "detail", detail, NULL);
	dun_workers_wake(job->svc->workers);
	struct dun_buf loc = {0};
	h(&loc, "/panel/accounts/");
	dun_html_url(&loc, job->account);
	hf(&loc, "?trigger=%lld", (long long)trigger);
	redirect(job->req, loc.p);
	free(loc.p);
}

static void do_pay(struct panel_job *job, struct dun_engine_ctx *ctx)
{
	json_t *inv = NULL;
	char err[512] = "";
	enum dun_err e =
	    dun_pay_bad_debt(&ctx->engine, job->account, dun_clock_now(), &inv, err, sizeof err);
	char detail[600];
	if (e == DUN_OK)
		snprintf(detail, sizeof detail, "%s %s", js(inv, "id"),
			 jb(inv, "created") ? "created" : "shown");
	else
		snprintf(detail, sizeof detail, "%s", err[0] ? err : dun_err_str(e));
	record_action(ctx->db, job->s.user, "pay_bad_debt_link", job->account, detail,
		      e == DUN_OK ? "ok" : dun_err_name(e));
	dun_log(DUN_LOG_INFO, "panel.action", "user", job->s.user, "action", "pay_bad_debt_link",
		"account", job->account, "detail", detail, NULL);
	if (e != DUN_OK) {
		reply_message(job->req, job,
			      e == DUN_E_GUARD	     ? 409
			      : e == DUN_E_NOT_FOUND ? 404
						     : 502,
			      "No pay-bad-debt link", err[0] ? err : dun_err_str(e));
		return;
	}
	/* The simulated provider's events for the new invoice, as Stripe would send them. */
	dun_shared_provider_deliver(job->svc->provider, NULL);
	struct dun_buf b = {0};
	page_begin(&b, "Pay-bad-debt link", job, NULL);
	h(&b, "<h1>Pay-bad-debt link for ");
	account_link(&b, job->account);
	h(&b, "</h1><p>Consolidated invoice <code id=\"pay-invoice\">");
	t(&b, js(inv, "id"));
	h(&b, "</code> (");
	t(&b, jb(inv, "created") ? "created now" : "already open");
	h(&b, "), ");
	money(&b, ji(inv, "amount_due"), js(inv, "currency"));
	h(&b, ", covering ");
	size_t i;
	json_t *c;
	json_array_foreach(json_object_get(inv, "covers"), i, c)
	{
		h(&b, i ? ", <code>" : "<code>");
		t(&b, json_string_value(c));
		h(&b, "</code>");
	}
	h(&b, ".</p>");
	const char *url = js(inv, "hosted_invoice_url");
	if (url[0]) {
		h(&b,
		  "<p>Link for the customer: <input id=\"pay-url\" readonly size=\"60\" value=\"");
		t(&b, url);
		h(&b, "\"></p>");
	} else {
		h(&b, "<p class=\"dim\">The provider gave no hosted link for it.</p>");
	}
	h(&b, "<p><a href=\"/panel/accounts/");
	dun_html_url(&b, job->account);
	h(&b, "\">Back to the account</a></p>");
	page_end(&b);
	json_decref(inv);
	reply_html(job->req, 200, &b);
}

static void do_kill(struct panel_job *job, struct dun_engine_ctx *ctx)
{
	enum dun_err e = dun_db_begin(ctx->db);
	struct dun_stmt *st =
	    dun_db_stmt(ctx->db, "UPDATE accounts SET kill_switch = ?2 WHERE id = ?1");
	dun_stmt_bind_text(st, 1, job->account);
	dun_stmt_bind_int(st, 2, job->on ? 1 : 0);
	if (e == DUN_OK)
		e = dun_stmt_done(st);
	bool found = e == DUN_OK && dun_db_changes(ctx->db) > 0;
	/* Let the engine act on the change, as `dunning account set` does. */
	if (found)
		e = dun_inbox_enqueue(ctx->db, job->account, "support_recompute", "panel", "", NULL,
				      0, NULL, NULL);
	if (found && e == DUN_OK)
		e = record_action(ctx->db, job->s.user,
				  job->on ? "kill_switch_on" : "kill_switch_off", job->account,
				  job->reason, "ok");
	if (found && e == DUN_OK)
		e = dun_db_commit(ctx->db);
	if (!found || e != DUN_OK) {
		dun_db_rollback(ctx->db);
		if (!found && e == DUN_OK)
			reply_message(job->req, job, 404, "No such account",
				      "There is no such account.");
		else
			reply_message(job->req, job, 503, "Not changed",
				      "The kill switch could not be changed; nothing was written. "
				      "Try again.");
		return;
	}
	dun_log(DUN_LOG_INFO, "panel.action", "user", job->s.user, "action",
		job->on ? "kill_switch_on" : "kill_switch_off", "account", job->account, "detail",
		job->reason, NULL);
	dun_workers_wake(job->svc->workers);
	struct dun_buf loc = {0};
	h(&loc, "/panel/accounts/");
	dun_html_url(&loc, job->account);
	redirect(job->req, loc.p);
	free(loc.p);
}

static void do_retry(struct panel_job *job, struct dun_engine_ctx *ctx)
{
	struct dun_stmt *st =
	    dun_db_stmt(ctx->db, "SELECT state, account_id FROM inbox WHERE id = ?1");
	dun_stmt_bind_int64(st, 1, job->id);
	char state[16] = "", account[DUN_ID_MAX] = "";
	bool found = dun_stmt_row(st);
	if (found) {
		dun_stmt_col_copy(st, 0, state, sizeof state);
		dun_stmt_col_copy(st, 1, account, sizeof account);
	}
	dun_stmt_reset(st);
	if (!found) {
		reply_message(job->req, job, 404, "No such trigger", "There is no such trigger.");
		return;
	}
	if (strcmp(state, "dead") && strcmp(state, "retrying")) {
		reply_message(job->req, job, 409, "Not retried",
			      "Only a dead or retrying trigger can be retried.");
		return;
	}
	int n = 0;
	char detail[48];
	snprintf(detail, sizeof detail, "trigger %lld (was %s)", (long long)job->id, state);
	enum dun_err e = dun_db_begin(ctx->db);
	if (e == DUN_OK)
		e = dun_inbox_requeue(ctx->db, job->id, dun_clock_now(), &n);
	if (e == DUN_OK)
		e = record_action(ctx->db, job->s.user, "retry_trigger", account, detail,
				  n ? "requeued" : "unchanged");
	if (e == DUN_OK)
		e = dun_db_commit(ctx->db);
	if (e != DUN_OK) {
		dun_db_rollback(ctx->db);
		reply_message(job->req, job, 503, "Not retried",
			      "The trigger could not be requeued; nothing was written.");
		return;
	}
	dun_log(DUN_LOG_INFO, "panel.action", "user", job->s.user, "action", "retry_trigger",
		"account", account, "detail", detail, NULL);
	dun_workers_wake(job->svc->workers);
	redirect(job->req, "/panel/triggers");
}

static void page_triggers(struct panel_job *job, struct dun_engine_ctx *ctx)
{
	struct dun_buf b = {0};
	page_begin(&b, "Triggers", job, NULL);
	h(&b, "<h1>Dead and retrying triggers</h1><p class=\"dim\">A trigger is dead after "
	      "[inbox] max_attempts failures. Retry puts it back as received; the worker "
	      "reads the account afresh.</p>");
	struct dun_stmt *st = dun_db_stmt(
	    ctx->db, "SELECT id, account_id, kind, source, state, attempts, last_error, updated_at"
		     " FROM inbox WHERE state IN ('dead', 'retrying') ORDER BY id DESC LIMIT 200");
	h(&b, "<table id=\"dead-triggers\"><thead><tr><th>id</th><th>account</th><th>kind</th>"
	      "<th>source</th><th>state</th><th>attempts</th><th>last error</th><th>updated</th>"
	      "<th></th></tr></thead><tbody>");
	int n = 0;
	while (dun_stmt_row(st)) {
		n++;
		long long id = (long long)dun_stmt_col_int64(st, 0);
		hf(&b, "<tr><td>%lld</td><td>", id);
		account_link(&b, dun_stmt_col_text(st, 1));
		h(&b, "</td><td>");
		t(&b, dun_stmt_col_text(st, 2));
		h(&b, "</td><td>");
		t(&b, dun_stmt_col_text(st, 3));
		h(&b, "</td><td>");
		badge(&b, dun_stmt_col_text(st, 4), dun_stmt_col_text(st, 4));
		hf(&b, "</td><td>%lld</td><td class=\"detail\">",
		   (long long)dun_stmt_col_int64(st, 5));
		t(&b, dun_stmt_col_text(st, 6));
		h(&b, "</td><td>");
		when(&b, dun_stmt_col_int64(st, 7));
		hf(&b, "</td><td><form method=\"post\" action=\"/panel/triggers/%lld/retry\">", id);
		csrf_field(&b, job);
		h(&b, "<button type=\"submit\">Retry</button></form></td></tr>");
	}
	dun_stmt_reset(st);
	if (!n)
		h(&b, "<tr><td colspan=\"9\" class=\"dim\">no dead or retrying trigger</td></tr>");
	h(&b, "</tbody></table>");
	page_end(&b);
	reply_html(job->req, 200, &b);
}

static void page_outboxes(struct panel_job *job, struct dun_engine_ctx *ctx)
{
	struct dun_buf b = {0};
	page_begin(&b, "Outboxes", job, NULL);
	h(&b, "<h1>Outboxes</h1><p class=\"dim\">What the engine has decided and is still "
	      "delivering: platform calls, emails, payment-outcome events. Requeue dead rows "
	      "with <code>dunning outbox --requeue</code> and <code>dunning emails "
	      "--requeue</code> after fixing the cause.</p>");
	struct {
		const char *title, *id, *sql;
	} q[] = {
	    {"Platform calls", "outbox-platform",
	     "SELECT account_id, op || ' ' || value, state, attempts, last_error, created_at"
	     " FROM platform_outbox WHERE state <> 'sent' ORDER BY id DESC LIMIT 200"},
	    {"Emails", "outbox-emails",
	     "SELECT account_id, kind || ' ' || invoice_id, state, attempts, last_error,"
	     " created_at FROM emails WHERE state <> 'sent' ORDER BY id DESC LIMIT 200"},
	    {"Payment-outcome events", "outbox-events",
	     "SELECT account_id, endpoint || ' #' || CAST(event_id AS TEXT), state, attempts,"
	     " last_error, created_at FROM outcome_deliveries WHERE state <> 'sent'"
	     " ORDER BY created_at DESC LIMIT 200"},
	};
	for (size_t k = 0; k < sizeof q / sizeof q[0]; k++) {
		h(&b, "<h2>");
		t(&b, q[k].title);
		h(&b, "</h2><table id=\"");
		t(&b, q[k].id);
		h(&b, "\"><thead><tr><th>account</th><th>what</th><th>state</th><th>attempts</th>"
		      "<th>last error</th><th>queued</th></tr></thead><tbody>");
		struct dun_stmt *st = NULL;
		int n = 0;
		if (dun_db_prepare(ctx->db, q[k].sql, &st) == DUN_OK) {
			while (dun_stmt_row(st)) {
				n++;
				h(&b, "<tr><td>");
				account_link(&b, dun_stmt_col_text(st, 0));
				h(&b, "</td><td>");
				t(&b, dun_stmt_col_text(st, 1));
				h(&b, "</td><td>");
				badge(&b, dun_stmt_col_text(st, 2), dun_stmt_col_text(st, 2));
				hf(&b, "</td><td>%lld</td><td class=\"detail\">",
				   (long long)dun_stmt_col_int64(st, 3));
				t(&b, dun_stmt_col_text(st, 4));
				h(&b, "</td><td>");
				when(&b, dun_stmt_col_int64(st, 5));
				h(&b, "</td></tr>");
			}
			dun_stmt_finalize(st);
		}
		if (!n)
			h(&b, "<tr><td colspan=\"6\" class=\"dim\">empty: everything was "
			      "delivered</td></tr>");
		h(&b, "</tbody></table>");
	}
	page_end(&b);
	reply_html(job->req, 200, &b);
}

static void page_rollout(struct panel_job *job, struct dun_engine_ctx *ctx)
{
	struct dun_rollout r;
	struct dun_buf b = {0};
	page_begin(&b, "Rollout", job, NULL);
	h(&b, "<h1>Rollout</h1>");
	if (dun_rollout_load(ctx->db, &r) == DUN_OK) {
		h(&b, "<p id=\"rollout-mode\">Mode ");
		badge(&b, r.global_observe ? "observe" : "active",
		      r.global_observe ? "observe" : "active");
		hf(&b, " at <b>%g%%</b> of accounts%s.</p>", r.percent,
		   r.mode_stored ? "" : " (never set: the safe default)");
	}
	const struct dun_config *cfg = &job->svc->cfg;
	struct dun_rollout_gate g = {cfg->rollout_parity_window_days * 86400,
				     cfg->rollout_parity_max_age_hours * 3600};
	int64_t report = 0;
	char why[512] = "";
	enum dun_err e =
	    dun_rollout_gate_check(ctx->db, dun_clock_now(), &g, &report, why, sizeof why);
	h(&b, "<h2>The gate</h2><p id=\"gate\">");
	if (e == DUN_OK) {
		hf(&b,
		   "<span class=\"badge ok\">open</span> parity report %lld passed; the "
		   "percentage may go up.",
		   (long long)report);
	} else {
		h(&b, "<span class=\"badge warn\">closed</span> ");
		t(&b, why);
	}
	h(&b, "</p><h2>The last parity report</h2>");
	struct dun_stmt *st = dun_db_stmt(
	    ctx->db, "SELECT id, created_at, window_from, window_to, source, passed, summary"
		     " FROM parity_reports ORDER BY id DESC LIMIT 1");
	if (dun_stmt_row(st)) {
		hf(&b, "<p id=\"parity\">Report %lld of ", (long long)dun_stmt_col_int64(st, 0));
		when(&b, dun_stmt_col_int64(st, 1));
		h(&b, " from ");
		t(&b, dun_stmt_col_text(st, 4));
		h(&b, ", window ");
		when(&b, dun_stmt_col_int64(st, 2));
		h(&b, " – ");
		when(&b, dun_stmt_col_int64(st, 3));
		h(&b, ": ");
		badge(&b, dun_stmt_col_int(st, 5) ? "ok" : "warn",
		      dun_stmt_col_int(st, 5) ? "passed" : "failed");
		h(&b, "</p>");
		json_t *sum = json_loads(dun_stmt_col_text(st, 6), 0, NULL);
		if (json_is_object(sum)) {
			h(&b, "<table id=\"parity-summary\"><tbody>");
			const char *k;
			json_t *v;
			json_object_foreach(sum, k, v)
			{
				if (json_is_object(v) || json_is_array(v))
					continue;
				h(&b, "<tr><th>");
				t(&b, k);
				h(&b, "</th><td>");
				char *s = json_dumps(v, JSON_ENCODE_ANY);
				t(&b, s);
				free(s);
				h(&b, "</td></tr>");
			}
			h(&b, "</tbody></table>");
		}
		json_decref(sum);
	} else {
		h(&b, "<p id=\"parity\" class=\"dim\">No parity report yet (<code>dunning "
		      "parity</code> makes one).</p>");
	}
	dun_stmt_reset(st);
	h(&b, "<h2>Changes</h2><table id=\"rollout-log\"><thead><tr><th>when</th><th>action</th>"
	      "<th>value</th><th>forced</th><th>note</th></tr></thead><tbody>");
	st = dun_db_stmt(ctx->db, "SELECT at, action, value, forced, note FROM rollout_log"
				  " ORDER BY id DESC LIMIT 50");
	while (dun_stmt_row(st)) {
		h(&b, "<tr><td>");
		when(&b, dun_stmt_col_int64(st, 0));
		h(&b, "</td><td>");
		t(&b, dun_stmt_col_text(st, 1));
		h(&b, "</td><td>");
		t(&b, dun_stmt_col_text(st, 2));
		hf(&b, "</td><td>%s</td><td>", dun_stmt_col_int(st, 3) ? "forced" : "");
		t(&b, dun_stmt_col_text(st, 4));
		h(&b, "</td></tr>");
	}
	dun_stmt_reset(st);
	h(&b, "</tbody></table><h2>Allow and deny lists</h2><ul>");
	st = dun_db_stmt(ctx->db,
			 "SELECT account_id, list FROM rollout_list ORDER BY list, account_id"
			 " LIMIT 200");
	while (dun_stmt_row(st)) {
		h(&b, "<li>");
		t(&b, dun_stmt_col_text(st, 1));
		h(&b, ": ");
		account_link(&b, dun_stmt_col_text(st, 0));
		h(&b, "</li>");
	}
	dun_stmt_reset(st);
	h(&b, "</ul>");
	page_end(&b);
	reply_html(job->req, 200, &b);
}

static void scan_table(struct dun_buf *b, json_t *scan)
{
	h(b, "<p id=\"scan-when\">Scanned ");
	when(b, ji(scan, "at"));
	h(b, " by ");
	t(b, js(scan, "by"));
	hf(b, ": %lld accounts, <b id=\"scan-drifting\">%lld drifting</b>.</p>",
	   (long long)ji(scan, "accounts"), (long long)ji(scan, "drifting"));
	h(b, "<table id=\"drift-classes\"><thead><tr><th>class</th><th>accounts</th>"
	     "<th>meaning</th></tr></thead><tbody>");
	json_t *per = json_object_get(scan, "per_class");
	for (int c = 0; c < DUN_DRIFT__COUNT; c++) {
		const char *name = dun_drift_name((enum dun_drift_class)c);
		h(b, "<tr><th>");
		t(b, name);
		hf(b, "</th><td>%lld</td><td class=\"dim\">", (long long)ji(per, name));
		t(b, dun_drift_text((enum dun_drift_class)c));
		h(b, "</td></tr>");
	}
	h(b, "</tbody></table>");
	json_t *ex = json_object_get(scan, "examples");
	if (json_array_size(ex)) {
		h(b, "<h2>Drifting accounts</h2><ul id=\"drift-examples\">");
		size_t i;
		json_t *x;
		json_array_foreach(ex, i, x)
		{
			const char *id =
			    json_is_string(x) ? json_string_value(x) : js(x, "account");
			h(b, "<li>");
			account_link(b, id);
			json_t *cl = json_object_get(x, "classes");
			if (json_is_array(cl)) {
				size_t k;
				json_t *c;
				h(b, " <span class=\"dim\">");
				json_array_foreach(cl, k, c)
				{
					if (k)
						h(b, ", ");
					t(b, json_string_value(c));
				}
				h(b, "</span>");
			}
			h(b, "</li>");
		}
		h(b, "</ul>");
	}
}

/*
 * The last scan recorded in the database (by `dunning scan`, the service or
 * the panel), in the shape scan_table() shows; NULL when none was recorded
 * or it cannot be read. It has no examples: only the counts are recorded.
 */
static json_t *recorded_scan(struct dun_db *db)
{
	struct dun_scan_record r;
	if (dun_scans_last(db, &r) != DUN_OK || !r.found)
		return NULL;
	json_t *per = json_object();
	for (int c = 0; c < DUN_DRIFT__COUNT; c++)
		json_object_set_new(per, dun_drift_name((enum dun_drift_class)c),
				    json_integer(r.per_class[c]));
	return json_pack("{s:I, s:s, s:I, s:I, s:o, s:[]}", "at", (json_int_t)r.at, "by",
			 "a recorded scan", "accounts", (json_int_t)r.accounts, "drifting",
			 (json_int_t)r.drifting, "per_class", per, "examples");
}

static void page_drift(struct panel_job *job, struct dun_engine_ctx *ctx, json_t *fresh)
{
	struct dun_panel *p = job->svc->panel;
	json_t *scan = fresh;
	if (!scan) {
		pthread_mutex_lock(&p->mu);
		scan = json_incref(p->last_scan);
		pthread_mutex_unlock(&p->mu);
	}
	/* A newer scan recorded since (the CLI's, a cron job's) wins. */
	json_t *recorded = fresh ? NULL : recorded_scan(ctx->db);
	if (recorded && (!scan || ji(recorded, "at") > ji(scan, "at"))) {
		json_decref(scan);
		scan = recorded;
	} else {
		json_decref(recorded);
	}
	struct dun_buf b = {0};
	page_begin(&b, "Drift", job, NULL);
	h(&b, "<h1>Drift</h1><p class=\"dim\">A scan evaluates every account and counts "
	      "those whose stores disagree with the policy. It only reads.</p>");
	h(&b, "<form method=\"post\" action=\"/panel/drift/scan\">");
	csrf_field(&b, job);
	h(&b, "<button type=\"submit\" id=\"scan\">Scan now</button></form>");
	if (scan)
		scan_table(&b, scan);
	else
		h(&b, "<p id=\"scan-when\" class=\"dim\">No scan has been recorded yet.</p>");
	page_end(&b);
	json_decref(scan);
	reply_html(job->req, 200, &b);
}

static void do_scan(struct panel_job *job, struct dun_engine_ctx *ctx)
{
	struct dun_scan_result r;
	memset(&r, 0, sizeof r);
	enum dun_err e = dun_scan_run(&ctx->engine, dun_clock_now(), false, NULL, NULL, &r);
	if (e != DUN_OK) {
		json_decref(r.examples);
		char msg[160];
		snprintf(msg, sizeof msg, "The scan failed: %s. Try again.", dun_err_str(e));
		reply_message(job->req, job, dun_err_is_retryable(e) ? 503 : 500, "Scan failed",
			      msg);
		return;
	}
	json_t *per = json_object();
	for (int c = 0; c < DUN_DRIFT__COUNT; c++)
		json_object_set_new(per, dun_drift_name((enum dun_drift_class)c),
				    json_integer(r.per_class[c]));
	json_t *scan = json_pack(
	    "{s:I, s:s, s:I, s:I, s:o, s:o}", "at", (json_int_t)dun_clock_now(), "by", job->s.user,
	    "accounts", (json_int_t)r.accounts, "drifting", (json_int_t)r.drifting, "per_class",
	    per, "examples", r.examples ? r.examples : json_array());
	char detail[64];
	snprintf(detail, sizeof detail, "%lld of %lld drifting", (long long)r.drifting,
		 (long long)r.accounts);
	record_action(ctx->db, job->s.user, "drift_scan", "", detail, "ok");
	/* Recorded like any scan: /metrics and `dunning report` see it too. */
	enum dun_err re = dun_scans_record(ctx->db, dun_clock_now(), &r, NULL);
	if (re != DUN_OK)
		dun_log(DUN_LOG_WARN, "panel.scan_not_recorded", "error", dun_err_str(re), NULL);
	struct dun_panel *p = job->svc->panel;
	pthread_mutex_lock(&p->mu);
	json_decref(p->last_scan);
	p->last_scan = json_incref(scan);
	pthread_mutex_unlock(&p->mu);
	page_drift(job, ctx, scan);
}

static void page_actions(struct panel_job *job, struct dun_engine_ctx *ctx)
{
	struct dun_buf b = {0};
	page_begin(&b, "Actions", job, NULL);
	h(&b, "<h1>Who pressed what</h1>");
	actions_table(&b, ctx->db, NULL);
	page_end(&b);
	reply_html(job->req, 200, &b);
}

/* ---- signing in ---------------------------------------------------------------------- */

static void login_page(struct dun_http_request *req, bool secure, unsigned status,
		       const char *message)
{
	char nonce[TOKEN_HEX + 1];
	if (!random_token(nonce)) {
		dun_http_reply_error(req, 503, "no_randomness", "no random bytes; try again");
		return;
	}
	set_cookie(req, secure, COOKIE_LOGIN, nonce, LOGIN_COOKIE_MAX);
	struct dun_buf b = {0};
	page_begin(&b, "Sign in", NULL, NULL);
	h(&b, "<form class=\"login\" method=\"post\" action=\"/panel/login\"><h1>Sign in</h1>");
	if (message) {
		h(&b, "<p class=\"err\" id=\"login-error\">");
		t(&b, message);
		h(&b, "</p>");
	}
	h(&b, "<input type=\"hidden\" name=\"csrf\" value=\"");
	t(&b, nonce);
	h(&b, "\"><label for=\"name\">Name</label><input id=\"name\" name=\"name\" required "
	      "autocomplete=\"username\" autofocus maxlength=\"64\"><label for=\"password\">"
	      "Password</label><input id=\"password\" name=\"password\" type=\"password\" "
	      "required autocomplete=\"current-password\" maxlength=\"1024\">"
	      "<button type=\"submit\" class=\"primary\">Sign in</button></form>");
	page_end(&b);
	reply_html(req, status, &b);
}

static void do_login(struct panel_job *job, struct dun_engine_ctx *ctx)
{
	const struct dun_config *cfg = &job->svc->cfg;
	char hash[DUN_USER_HASH_MAX] = "", err[512] = "";
	bool found = false;
	enum dun_err e = dun_users_lookup(cfg->panel_users_file, job->q, hash, sizeof hash, &found,
					  err, sizeof err);
	if (e != DUN_OK) {
		dun_log(DUN_LOG_ERROR, "panel.users_file_unreadable", "error", err, NULL);
		login_page(job->req, job->secure, 503,
			   "Sign-in is not possible now: the users file cannot be read (see the "
			   "service's log).");
		return;
	}
	struct dun_panel *p = job->svc->panel;
	int64_t now_ms = dun_clock_mono_ms();
	if (locked_out(p, job->q, now_ms)) {
		explicit_bzero(job->password, sizeof job->password);
		dun_log(DUN_LOG_WARN, "panel.sign_in_locked", "user", job->q, NULL);
		login_page(
		    job->req, job->secure, 429,
		    "Too many wrong passwords for this name: signing in with it is paused for "
		    "15 minutes.");
		return;
	}
	bool ok;
	if (found) {
		ok = dun_users_verify(job->password, hash);
	} else {
		dun_users_verify_nobody(job->password);
		ok = false;
	}
	explicit_bzero(job->password, sizeof job->password);
	explicit_bzero(hash, sizeof hash);
	note_sign_in(p, job->q, ok, now_ms);
	if (!ok) {
		dun_log(DUN_LOG_WARN, "panel.sign_in_failed", "user", job->q, NULL);
		login_page(job->req, job->secure, 401, "The name or the password is wrong.");
		return;
	}
	struct session s;
	if (!session_create(job->svc->panel, job->q, &s)) {
		login_page(job->req, job->secure, 503, "No random bytes for a session; try again.");
		return;
	}
	record_action(ctx->db, s.user, "sign_in", "", "", "ok");
	dun_log(DUN_LOG_INFO, "panel.signed_in", "user", s.user, NULL);
	set_cookie(job->req, job->secure, COOKIE_SESSION, s.id, cfg->panel_session_max_s);
	set_cookie(job->req, job->secure, COOKIE_LOGIN, "", 0);
	redirect(job->req, "/panel/");
}

/* ---- dispatch ------------------------------------------------------------------------ */

static void run_job(struct dun_lane_job *lj, struct dun_engine_ctx *ctx)
{
	struct panel_job *job = (struct panel_job *)lj;
	switch (job->page) {
	case PAGE_HOME:
		page_home(job, ctx);
		break;
	case PAGE_SEARCH:
		page_search(job, ctx);
		break;
	case PAGE_ACCOUNT:
		page_account(job, ctx);
		break;
	case PAGE_PREVIEW:
		page_preview(job, ctx);
		break;
	case PAGE_TRIGGERS:
		page_triggers(job, ctx);
		break;
	case PAGE_OUTBOXES:
		page_outboxes(job, ctx);
		break;
	case PAGE_ROLLOUT:
		page_rollout(job, ctx);
		break;
	case PAGE_DRIFT:
		page_drift(job, ctx, NULL);
		break;
	case PAGE_ACTIONS:
		page_actions(job, ctx);
		break;
	case DO_LOGIN:
		do_login(job, ctx);
		break;
	case DO_RECOMPUTE:
		do_recompute(job, ctx);
		break;
	case DO_PAY:
		do_pay(job, ctx);
		break;
	case DO_KILL:
		do_kill(job, ctx);
		break;
	case DO_RETRY:
		do_retry(job, ctx);
		break;
	case DO_SCAN:
		do_scan(job, ctx);
		break;
	}
	dun_http_resume(job->req); /* last touch */
}

static void submit(struct dun_service *svc, struct dun_http_request *req, struct panel_job *job,
		   enum page page)
{
	job->lane.run = run_job;
	job->page = page;
	job->svc = svc;
	job->req = req;
	dun_http_set_user(req, job, job_free);
	dun_http_suspend(req);
	dun_lane_submit(svc->lane, &job->lane);
}

static bool behind_tls(struct dun_service *svc, struct dun_http_request *req)
{
	const char *proto = dun_http_header(req, "X-Forwarded-Proto");
	return svc->cfg.panel_cookie_secure || (proto && !strcasecmp(proto, "https"));
}

/* Whether the panel is on; answers 503 when it is not. */
static bool panel_on(struct dun_service *svc, struct dun_http_request *req)
{
	if (dun_http_body_too_big(req)) {
		dun_http_reply_error(req, 413, "payload_too_large", "the body is too large");
		return false;
	}
	if (svc->cfg.panel_users_file[0])
		return true;
	reply_message(req, NULL, 503, "The panel is off",
		      "The support panel is off: the service has no [panel] users_file.");
	return false;
}

/* After "http://" or "https://"; NULL for anything else. */
static const char *after_scheme(const char *url)
{
	if (!strncasecmp(url, "http://", 7))
		return url + 7;
	if (!strncasecmp(url, "https://", 8))
		return url + 8;
	return NULL;
}

/*
 * Whether a POST comes from a page of this panel: Origin (or, when a
 * browser sent none, Referer) must name the host the request was sent to,
 * and Sec-Fetch-Site, when present, must say same-origin.
 */
static bool same_origin(struct dun_http_request *req)
{
	const char *host = dun_http_header(req, "Host");
	if (!host || !host[0])
		return false;
	const char *site = dun_http_header(req, "Sec-Fetch-Site");
	if (site && strcmp(site, "same-origin") != 0)
		return false;
	const char *origin = dun_http_header(req, "Origin");
	if (origin) {
		const char *rest = after_scheme(origin);
		return rest && !strcasecmp(rest, host);
	}
	const char *referer = dun_http_header(req, "Referer");
	const char *rest = referer ? after_scheme(referer) : NULL;
	size_t hl = strlen(host);
	return rest && !strncasecmp(rest, host, hl) && (rest[hl] == '/' || rest[hl] == '\0');
}

static bool form_field(struct dun_http_request *req, const char *key, char *out, size_t size,
		       bool required)
{
	size_t len = 0;
	const char *body = dun_http_body(req, &len);
	enum dun_form_result r = dun_form_get(body ? body : "", body ? len : 0, key, out, size);
	switch (r) {
	case DUN_FORM_FOUND:
		return true;
	case DUN_FORM_ABSENT:
		if (!required) {
			out[0] = '\0';
			return true;
		}
		dun_http_reply_error(req, 400, "invalid_form", "the form has no field %s", key);
		return false;
	case DUN_FORM_MALFORMED:
		dun_http_reply_error(req, 400, "invalid_form", "the field %s is malformed", key);
		return false;
	case DUN_FORM_TOO_LONG:
		dun_http_reply_error(req, 400, "invalid_form", "the field %s is too long", key);
		return false;
	}
	return false;
}

static void refuse(struct dun_http_request *req, const char *why)
{
	common_headers(req);
	dun_http_log(req, "refused", why);
	struct dun_buf b = {0};
	page_begin(&b, "Refused", NULL, NULL);
	h(&b, "<h1>Refused</h1><p class=\"err\">");
	t(&b, why);
	h(&b, "</p><p><a href=\"/panel/\">Back to the panel</a></p>");
	page_end(&b);
	dun_http_reply(req, 403, "text/html; charset=utf-8", b.p, b.len);
}

static const char STYLE[] =
    ":root{--fg:#1d2330;--dim:#6b7385;--line:#dfe3ea;--bg:#f6f7f9;--accent:#2f5bd3;"
    "--warn:#b45309;--bad:#b42318;--good:#1a7f37}"
    "*{box-sizing:border-box}body{margin:0;font:15px/1.45 system-ui,sans-serif;color:var(--fg);"
    "background:var(--bg)}header{display:flex;gap:1.5em;align-items:center;padding:.6em 1.5em;"
    "background:#1d2330;color:#fff;flex-wrap:wrap}header a{color:#dbe4ff;text-decoration:none}"
    "header a:hover{text-decoration:underline}.brand{font-weight:700;color:#fff}"
    "nav{display:flex;gap:1em;flex:1}.who{display:flex;gap:.6em;align-items:center;margin:0}"
    ".who button{background:transparent;color:#dbe4ff;border:1px solid #56607a}"
    "main{max-width:1200px;margin:0 auto;padding:1em 1.5em 3em}h1{font-size:1.5em;"
    "margin:.6em 0 .2em;overflow-wrap:anywhere}h2{font-size:1.1em;margin:1.4em 0 .4em}"
    "h3{font-size:1em;margin:1em 0 .4em}"
    ".sub{color:var(--dim);margin:0 0 .4em;overflow-wrap:anywhere}"
    "table{border-collapse:collapse;width:100%;background:#fff;border:1px solid var(--line);"
    "font-size:.92em}th,td{text-align:left;padding:.35em .6em;border-bottom:1px solid "
    "var(--line);vertical-align:top;overflow-wrap:anywhere}thead th{background:#eef1f6}"
    ".detail{color:var(--dim);font-size:.92em}.dim{color:var(--dim)}"
    ".cards{display:grid;grid-template-columns:repeat(auto-fit,minmax(260px,1fr));gap:1em}"
    ".card{background:#fff;border:1px solid var(--line);border-radius:6px;padding:.4em 1em}"
    ".card.bad{border-color:#f1a7a2;background:#fff7f6}.card.bad h2{color:var(--bad)}"
    ".card h2{margin:.4em 0}.card p{margin:.3em 0}.kv{padding-left:1.1em;margin:.3em 0}"
    ".stage .badge{font-size:1.2em}"
    ".badge{display:inline-block;padding:.05em .5em;border-radius:999px;font-size:.85em;"
    "background:#e6e9f0;margin-right:.3em;white-space:nowrap}"
    ".badge.bad_debt,.badge.dead,.badge.kill,.badge.failed,.badge.warn{background:#fde2e1;"
    "color:var(--bad)}.badge.suspended,.badge.restricted,.badge.retrying,.badge.pending,"
    ".badge.observe{background:#fdf0d5;color:var(--warn)}.badge.notified{background:#e8eefc;"
    "color:var(--accent)}.badge.none,.badge.Paid,.badge.ok,.badge.active,.badge.done,"
    ".badge.sent{background:#dcf5e3;color:var(--good)}.badge.Resolved{background:#e6e9f0}"
    ".ok{color:var(--good)}.err{color:var(--bad)}.msg{font-size:1.05em}"
    ".banner{padding:.6em 1em;border-radius:6px;background:#e8eefc;margin:.8em 0}"
    ".banner.done{background:#dcf5e3}.banner.dead,.banner.retrying{background:#fde2e1}"
    ".observe{background:#fffaf0;border:1px solid #f3d9a4;border-radius:6px;padding:.2em 1em}"
    "form{margin:0}.row{display:flex;gap:.8em;flex-wrap:wrap;align-items:center}"
    ".buttons form.kill{display:flex;gap:.6em;align-items:center;margin-top:.8em;"
    "flex-wrap:wrap}"
    "button,.button{font:inherit;padding:.35em .9em;border:1px solid #aab3c5;border-radius:5px;"
    "background:#fff;color:var(--fg);cursor:pointer;text-decoration:none;display:inline-block}"
    "button.primary,.button.primary{background:var(--accent);color:#fff;border-color:"
    "var(--accent)}button.danger{border-color:var(--bad);color:var(--bad)}"
    "input{font:inherit;padding:.35em .5em;border:1px solid #aab3c5;border-radius:5px}"
    ".search{display:flex;gap:.6em;align-items:center;flex-wrap:wrap;margin:1em 0}"
    ".search input{min-width:24em}"
    ".login{max-width:22em;margin:4em auto;background:#fff;padding:1.5em;border:1px solid "
    "var(--line);border-radius:8px;display:flex;flex-direction:column;gap:.4em}"
    ".login button{margin-top:.8em}.reasons li,.plan li{margin:.15em 0}"
    "code{font-size:.92em;overflow-wrap:anywhere}time{white-space:nowrap}\n";

static void serve_style(struct dun_http_request *req)
{
	common_headers(req);
	dun_http_reply(req, 200, "text/css; charset=utf-8", dun_strdup(STYLE), sizeof STYLE - 1);
}

/* Account id of the route (param 0); answers 400 when it cannot be one. */
static bool account_param(struct dun_http_request *req, char *out)
{
	const char *id = dun_http_param(req, 0);
	if (!id[0] || strlen(id) >= DUN_ID_MAX) {
		refuse(req, "an account id has 1 to 63 characters");
		return false;
	}
	dun_strlcpy(out, id, DUN_ID_MAX);
	return true;
}

static bool ends_with(const char *s, const char *suffix)
{
	size_t n = strlen(s), m = strlen(suffix);
	return n >= m && !strcmp(s + n - m, suffix);
}

void dun_panel_get(void *arg, struct dun_http_request *req)
{
	struct dun_service *svc = arg;
	const char *path = dun_http_path(req);
	if (!strcmp(path, "/panel") || !strcmp(path, "/")) {
		redirect(req, "/panel/");
		return;
	}
	if (!strcmp(path, "/panel/style.css")) {
		serve_style(req);
		return;
	}
	if (!panel_on(svc, req))
		return;
	bool secure = behind_tls(svc, req);
	if (!strcmp(path, "/panel/login")) {
		login_page(req, secure, 200, NULL);
		return;
	}
	struct panel_job *job = dun_calloc(1, sizeof *job);
	job->secure = secure;
	if (!session_find(svc->panel, req, &job->s)) {
		free(job);
		redirect(req, "/panel/login");
		return;
	}
	dun_http_log(req, "user", job->s.user);
	enum page page;
	if (!strcmp(path, "/panel/")) {
		page = PAGE_HOME;
	} else if (!strcmp(path, "/panel/search")) {
		const char *q = dun_http_query(req, "q");
		size_t n = q ? strlen(q) : 0;
		while (q && (*q == ' ' || *q == '\t'))
			q++, n--;
		while (n && (q[n - 1] == ' ' || q[n - 1] == '\t'))
			n--;
		if (!q || n == 0) {
			free(job);
			redirect(req, "/panel/");
			return;
		}
		if (n > QUERY_MAX) {
			free(job);
			refuse(req, "a search has at most 200 characters");
			return;
		}
		memcpy(job->q, q, n);
		job->q[n] = '\0';
		page = PAGE_SEARCH;
	} else if (!strncmp(path, "/panel/accounts/", 16)) {
		if (!account_param(req, job->account)) {
			free(job);
			return;
		}
		page = ends_with(path, "/recompute") ? PAGE_PREVIEW : PAGE_ACCOUNT;
		const char *tr = dun_http_query(req, "trigger");
		if (tr) {
			char *end;
			long long v = strtoll(tr, &end, 10);
			job->id = (*end || v <= 0) ? 0 : v;
		}
	} else if (!strcmp(path, "/panel/triggers")) {
		page = PAGE_TRIGGERS;
	} else if (!strcmp(path, "/panel/outboxes")) {
		page = PAGE_OUTBOXES;
	} else if (!strcmp(path, "/panel/rollout")) {
		page = PAGE_ROLLOUT;
	} else if (!strcmp(path, "/panel/drift")) {
		page = PAGE_DRIFT;
	} else if (!strcmp(path, "/panel/actions")) {
		page = PAGE_ACTIONS;
	} else {
		free(job);
		reply_message(req, NULL, 404, "Not found", "There is no such page.");
		return;
	}
	submit(svc, req, job, page);
}

void dun_panel_post(void *arg, struct dun_http_request *req)
{
	struct dun_service *svc = arg;
	const char *path = dun_http_path(req);
	if (!panel_on(svc, req))
		return;
	bool secure = behind_tls(svc, req);
	if (!same_origin(req)) {
		refuse(req, "This form was not sent from a page of this panel (Origin check).");
		return;
	}
	const char *ct = dun_http_header(req, "Content-Type");
	if (!ct || strncasecmp(ct, "application/x-www-form-urlencoded", 33) != 0) {
		refuse(req, "Expected a form (application/x-www-form-urlencoded).");
		return;
	}
	char csrf[TOKEN_HEX + 1];
	if (!strcmp(path, "/panel/login")) {
		char nonce[TOKEN_HEX + 1];
		size_t len = 0;
		const char *body = dun_http_body(req, &len);
		if (dun_cookie_get(dun_http_header(req, "Cookie"), COOKIE_LOGIN, nonce,
				   sizeof nonce) != DUN_FORM_FOUND ||
		    dun_form_get(body ? body : "", body ? len : 0, "csrf", csrf, sizeof csrf) !=
			DUN_FORM_FOUND ||
		    !token_equal(nonce, csrf)) {
			login_page(req, secure, 403,
				   "The sign-in form was stale or not from this panel; try again.");
			return;
		}
		struct panel_job *job = dun_calloc(1, sizeof *job);
		job->secure = secure;
		if (!form_field(req, "name", job->q, DUN_USER_NAME_MAX, true) ||
		    !form_field(req, "password", job->password, sizeof job->password, true)) {
			job_free(job);
			return;
		}
		if (!dun_users_name_valid(job->q)) {
			job_free(job);
			login_page(req, secure, 401, "The name or the password is wrong.");
			return;
		}
		submit(svc, req, job, DO_LOGIN);
		return;
	}
	struct panel_job *job = dun_calloc(1, sizeof *job);
	job->secure = secure;
	if (!session_find(svc->panel, req, &job->s)) {
		free(job);
		refuse(req, "You are not signed in (or the session ended). Sign in again.");
		return;
	}
	dun_http_log(req, "user", job->s.user);
	if (!form_field(req, "csrf", csrf, sizeof csrf, false)) {
		free(job);
		return;
	}
	if (!token_equal(csrf, job->s.csrf)) {
		free(job);
		refuse(req, "The form's CSRF token is missing or wrong; reload the page.");
		return;
	}
	if (!strcmp(path, "/panel/logout")) {
		session_end(svc->panel, job->s.id);
		set_cookie(req, secure, COOKIE_SESSION, "", 0);
		free(job);
		redirect(req, "/panel/login");
		return;
	}
	enum page page;
	if (!strncmp(path, "/panel/accounts/", 16)) {
		if (!account_param(req, job->account)) {
			free(job);
			return;
		}
		dun_http_log(req, "account", job->account);
		if (ends_with(path, "/recompute")) {
			page = DO_RECOMPUTE;
		} else if (ends_with(path, "/pay-bad-debt")) {
			page = DO_PAY;
		} else {
			char on[4];
			if (!form_field(req, "on", on, sizeof on, true) ||
			    !form_field(req, "reason", job->reason, sizeof job->reason, true)) {
				free(job);
				return;
			}
			if (strcmp(on, "0") && strcmp(on, "1")) {
				free(job);
				refuse(req, "on is 0 or 1");
				return;
			}
			const char *r = job->reason;
			while (*r == ' ' || *r == '\t' || *r == '\r' || *r == '\n')
				r++;
			if (!*r) {
				free(job);
				refuse(req, "Say why: the kill switch needs a reason.");
				return;
			}
			job->on = on[0] == '1';
			page = DO_KILL;
		}
	} else if (!strncmp(path, "/panel/triggers/", 16)) {
		const char *s = dun_http_param(req, 0);
		char *end;
		long long id = strtoll(s, &end, 10);
		if (end == s || *end || id <= 0) {
			free(job);
			refuse(req, "A trigger id is a positive whole number.");
			return;
		}
		job->id = id;
		page = DO_RETRY;
	} else if (!strcmp(path, "/panel/drift/scan")) {
		page = DO_SCAN;
	} else {
		free(job);
		reply_message(req, NULL, 404, "Not found", "There is no such form.");
		return;
	}
	submit(svc, req, job, page);
}
