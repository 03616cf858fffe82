/*
 * test_effects.c — unit tests of the real effects (src/apply): backoff,
 * classification, request lines and URL checks of the senders; the email
 * log's claim protocol; and the two senders against a small HTTP server in
 * a thread of this process, which answers from a script and records what
 * it received (order, headers, bodies).
 */
#include "check.h"
#include "testdb.h"

#include "apply/email_log.h"
#include "apply/events_sender.h"
#include "apply/outbox_sender.h"
#include "apply/platform_http.h"
#include "config/config.h"
#include "server/signature.h"

#include <arpa/inet.h>
#include <curl/curl.h>
#include <netinet/in.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <sys/socket.h>
#include <sys/wait.h>

#define T0 1767600000 /* 2026-01-05 08:00:00Z */

/* ---- pure parts ----------------------------------------------------------- */

static void test_backoff(void)
{
	for (int attempts = 1; attempts <= 14; attempts++) {
		int64_t d = 1;
		for (int i = 1; i < attempts && d < 300; i++)
			d *= 2;
		if (d > 300)
			d = 300;
		for (uint64_t seed = 0; seed < 50; seed++) {
			int64_t got = dun_outbox_backoff_s(attempts, 1, 300, seed);
			if (got < (d / 2 > 0 ? d / 2 : 1) || got > d)
				CHECK_FAIL_AT("attempt %d seed %llu: %lld not in [%lld, %lld]",
					      attempts, (unsigned long long)seed, (long long)got,
					      (long long)(d / 2), (long long)d);
			else
				check_passed++;
		}
		/* deterministic in its seed */
		CHECK_INT(dun_outbox_backoff_s(attempts, 1, 300, 77),
			  dun_outbox_backoff_s(attempts, 1, 300, 77));
	}
	/* capped, and jitter really spreads */
	CHECK(dun_outbox_backoff_s(40, 2, 3600, 1) <= 3600);
	int64_t lo = INT64_MAX, hi = 0;
	for (uint64_t seed = 0; seed < 200; seed++) {
		int64_t v = dun_outbox_backoff_s(10, 1, 300, seed);
		lo = v < lo ? v : lo;
		hi = v > hi ? v : hi;
	}
	CHECK(lo < 200 && hi > 250);
	/* a longer Retry-After wins, up to the cap */
	struct dun_http_reply r = {
	    .outcome = DUN_HTTP_ANSWERED, .status = 429, .retry_after_s = 120};
	CHECK_INT(dun_outbox_retry_delay_s(&r, 1, 1, 300, 5), 120);
	r.retry_after_s = 100000;
	CHECK_INT(dun_outbox_retry_delay_s(&r, 1, 1, 300, 5), 300);
}

static enum dun_outbox_verdict platform_verdict(enum dun_http_outcome o, long status)
{
	struct dun_http_reply r = {.outcome = o, .status = status};
	return dun_outbox_classify_platform(&r);
}

static void test_classify(void)
{
	CHECK_INT(platform_verdict(DUN_HTTP_ANSWERED, 200), DUN_OUTBOX_SENT);
	CHECK_INT(platform_verdict(DUN_HTTP_ANSWERED, 204), DUN_OUTBOX_SENT);
	CHECK_INT(platform_verdict(DUN_HTTP_ANSWERED, 409), DUN_OUTBOX_SENT);
	CHECK_INT(platform_verdict(DUN_HTTP_ANSWERED, 408), DUN_OUTBOX_RETRY);
	CHECK_INT(platform_verdict(DUN_HTTP_ANSWERED, 425), DUN_OUTBOX_RETRY);
	CHECK_INT(platform_verdict(DUN_HTTP_ANSWERED, 429), DUN_OUTBOX_RETRY);
	CHECK_INT(platform_verdict(DUN_HTTP_ANSWERED, 500), DUN_OUTBOX_RETRY);
	CHECK_INT(platform_verdict(DUN_HTTP_ANSWERED, 503), DUN_OUTBOX_RETRY);
	CHECK_INT(platform_verdict(DUN_HTTP_ANSWERED, 400), DUN_OUTBOX_DEAD);
	CHECK_INT(platform_verdict(DUN_HTTP_ANSWERED, 401), DUN_OUTBOX_DEAD);
	CHECK_INT(platform_verdict(DUN_HTTP_ANSWERED, 404), DUN_OUTBOX_DEAD);
	CHECK_INT(platform_verdict(DUN_HTTP_ANSWERED, 422), DUN_OUTBOX_DEAD);
	CHECK_INT(platform_verdict(DUN_HTTP_ANSWERED, 301), DUN_OUTBOX_DEAD);
	CHECK_INT(platform_verdict(DUN_HTTP_CONNECT, 0), DUN_OUTBOX_RETRY);
	CHECK_INT(platform_verdict(DUN_HTTP_TIMEOUT, 0), DUN_OUTBOX_RETRY);
	CHECK_INT(platform_verdict(DUN_HTTP_TRANSPORT, 0), DUN_OUTBOX_RETRY);

	struct dun_http_reply r = {.outcome = DUN_HTTP_ANSWERED, .status = 200};
	CHECK_INT(dun_outbox_classify_event(&r, 1), DUN_OUTBOX_SENT);
	r.status = 400;
	CHECK_INT(dun_outbox_classify_event(&r, 1), DUN_OUTBOX_RETRY);
	CHECK_INT(dun_outbox_classify_event(&r, DUN_EVENTS_MAX_ATTEMPTS), DUN_OUTBOX_DEAD);
	r.status = 410;
	CHECK_INT(dun_outbox_classify_event(&r, 1), DUN_OUTBOX_DEAD);
	r.outcome = DUN_HTTP_CONNECT;
	r.status = 0;
	CHECK_INT(dun_outbox_classify_event(&r, 3), DUN_OUTBOX_RETRY);
}

static void test_request_line(void)
{
	const char *m = NULL;
	char url[256];
	CHECK_INT(
	    dun_outbox_request_line("https://p.example/v1/", "ban", "acct_1", &m, url, sizeof url),
	    DUN_OK);
	CHECK_STR(m, "POST");
	CHECK_STR(url, "https://p.example/v1/accounts/acct_1/ban");
	dun_outbox_request_line("https://p.example/v1", "unban", "acct_1", &m, url, sizeof url);
	CHECK_STR(url, "https://p.example/v1/accounts/acct_1/unban");
	dun_outbox_request_line("https://p.example", "set_entitlement", "a b/c", &m, url,
				sizeof url);
	CHECK_STR(m, "PUT");
	CHECK_STR(url, "https://p.example/accounts/a%20b%2Fc/entitlement");
	dun_outbox_request_line("https://p.example", "remove_resource_flags", "x", &m, url,
				sizeof url);
	CHECK_STR(url, "https://p.example/accounts/x/resource-flags/remove");
	CHECK_INT(dun_outbox_request_line("https://p.example", "nuke", "x", &m, url, sizeof url),
		  DUN_E_INVALID);
	CHECK_INT(dun_outbox_request_line("https://p.example", "ban", "x", &m, url, 10),
		  DUN_E_TOO_BIG);
}

static void test_url_check(void)
{
	char err[256];
	CHECK_INT(dun_http_url_check("https://p.example/v1", "w", true, true, err, sizeof err),
		  DUN_OK);
	CHECK_INT(dun_http_url_check("http://127.0.0.1:9/v1", "w", true, true, err, sizeof err),
		  DUN_OK);
	CHECK_INT(dun_http_url_check("http://localhost/", "w", true, true, err, sizeof err),
		  DUN_OK);
	CHECK_INT(dun_http_url_check("http://p.example/v1", "w", true, true, err, sizeof err),
		  DUN_E_CONFIG);
	CHECK(strstr(err, "clear text") != NULL);
	CHECK_INT(dun_http_url_check("http://p.example/v1", "w", true, false, err, sizeof err),
		  DUN_OK);
	CHECK_INT(dun_http_url_check("ftp://p.example/", "[x] y", true, false, err, sizeof err),
		  DUN_E_CONFIG);
	CHECK(strncmp(err, "[x] y: ", 7) == 0);
	CHECK_INT(dun_http_url_check("p.example/hook", "w", false, false, err, sizeof err),
		  DUN_E_CONFIG);
	CHECK_INT(dun_http_url_check("https://u:pw@p.example/", "w", true, false, err, sizeof err),
		  DUN_E_CONFIG);
	CHECK(strstr(err, "pw") == NULL);
	CHECK_INT(dun_http_url_check("https://p.example/?t=1", "w", true, false, err, sizeof err),
		  DUN_E_CONFIG);
	CHECK_INT(dun_http_url_check("https://p.example/?t=1", "w", false, false, err, sizeof err),
		  DUN_OK);
	CHECK_INT(dun_http_url_check("", "w", true, false, err, sizeof err), DUN_E_CONFIG);
}

static void test_event_id(void)
{
	char a[DUN_EVENT_ID_SIZE], b[DUN_EVENT_ID_SIZE], c[DUN_EVENT_ID_SIZE];
	dun_event_id("acct_1/outcome/none@0/notified", a);
	dun_event_id("acct_1/outcome/none@0/notified", b);
	dun_event_id("acct_2/outcome/none@0/notified", c);
	CHECK_STR(a, b);
	CHECK(strcmp(a, c) != 0);
	CHECK_INT(strlen(a), 36);
	CHECK(strncmp(a, "evt_", 4) == 0);
	/* SHA-256("abc") starts ba7816bf8f01cfea414140de5dae2223 */
	dun_event_id("abc", a);
	CHECK_STR(a, "evt_ba7816bf8f01cfea414140de5dae2223");
}

/* ---- the email log's claims ------------------------------------------------- */

static struct dun_email_intent intent(const char *key, const char *mid)
{
	struct dun_email_intent in = {.key = key,
				      .account_id = "acct_1",
				      .kind = "bad_debt",
				      .to = "ada@example.com",
				      .subject = "s",
				      .body = "b",
				      .message_id = mid};
	return in;
}

static void test_email_claims(struct dun_db *db)
{
	struct dun_email_claim c;
	struct dun_email_intent in = intent("acct_1/email/bad_debt/bd1", "<first@x>");
	CHECK_INT(dun_email_claim(db, &in, "A", T0, T0, 900, &c), DUN_OK);
	CHECK_INT(c.result, DUN_EMAIL_CLAIMED);
	CHECK_STR(c.message_id, "<first@x>");
	/* A second claimer loses while A's claim is live. */
	in.message_id = "<second@x>";
	CHECK_INT(dun_email_claim(db, &in, "B", T0 + 10, T0 + 10, 900, &c), DUN_OK);
	CHECK_INT(c.result, DUN_EMAIL_BUSY);
	CHECK_STR(c.owner, "A");
	CHECK_INT(c.claimed_at, T0);
	/* Only the owner settles a failure; then B may claim, with the first Message-ID. */
	CHECK_INT(dun_email_settle(db, in.key, "B", false, "nope", T0 + 11), DUN_OK);
	CHECK_INT(dun_email_claim(db, &in, "B", T0 + 12, T0 + 12, 900, &c), DUN_OK);
	CHECK_INT(c.result, DUN_EMAIL_BUSY);
	CHECK_INT(dun_email_settle(db, in.key, "A", false, "421 try later", T0 + 13), DUN_OK);
	char buf[128];
	CHECK_STR(testdb_text(db, "SELECT state || ' ' || last_error FROM emails WHERE key = ?1",
			      in.key, buf, sizeof buf),
		  "failed 421 try later");
	CHECK_INT(dun_email_claim(db, &in, "B", T0 + 14, T0 + 14, 900, &c), DUN_OK);
	CHECK_INT(c.result, DUN_EMAIL_CLAIMED);
	CHECK_STR(c.message_id, "<first@x>");
	CHECK_INT(dun_email_settle(db, in.key, "B", true, "", T0 + 15), DUN_OK);
	CHECK_INT(dun_email_claim(db, &in, "A", T0 + 16, T0 + 16, 900, &c), DUN_OK);
	CHECK_INT(c.result, DUN_EMAIL_ALREADY_SENT);
	CHECK_INT(testdb_int(db, "SELECT attempts FROM emails WHERE key = ?1", in.key), 2);
	CHECK_INT(testdb_int(db, "SELECT sent_at FROM emails WHERE key = ?1", in.key), T0 + 15);

	/* A claim ends with its lease. */
	struct dun_email_intent in2 = intent("acct_1/email/restricted/ep1", "<r@x>");
	CHECK_INT(dun_email_claim(db, &in2, "far-away-host:1:42", T0, T0, 900, &c), DUN_OK);
	CHECK_INT(c.result, DUN_EMAIL_CLAIMED);
	CHECK_INT(dun_email_claim(db, &in2, "C", T0 + 899, T0 + 899, 900, &c), DUN_OK);
	CHECK_INT(c.result, DUN_EMAIL_BUSY);
	CHECK_INT(dun_email_claim(db, &in2, "C", T0 + 900, T0 + 900, 900, &c), DUN_OK);
	CHECK_INT(c.result, DUN_EMAIL_CLAIMED);
	CHECK_STR(c.message_id, "<r@x>");

	/* A claim whose owner process is gone ends at once. */
	char self[DUN_EMAIL_OWNER_MAX], dead[DUN_EMAIL_OWNER_MAX];
	dun_email_owner_self(self, sizeof self);
	CHECK(!dun_email_owner_is_gone(self));
	CHECK(!dun_email_owner_is_gone("legacy"));
	CHECK(!dun_email_owner_is_gone("other-host:4026531836:1"));
	pid_t child = fork();
	if (child == 0)
		_exit(0);
	waitpid(child, NULL, 0);
	snprintf(dead, sizeof dead, "%.*s:%ld", (int)(strrchr(self, ':') - self), self,
		 (long)child);
	CHECK(dun_email_owner_is_gone(dead));
	struct dun_email_intent in3 = intent("acct_1/email/suspended/ep1", "<s@x>");
	CHECK_INT(dun_email_claim(db, &in3, dead, T0, T0, 900, &c), DUN_OK);
	CHECK_INT(c.result, DUN_EMAIL_CLAIMED);
	CHECK_INT(dun_email_claim(db, &in3, self, T0 + 1, T0 + 1, 900, &c), DUN_OK);
	CHECK_INT(c.result, DUN_EMAIL_CLAIMED);
	CHECK_STR(testdb_text(db, "SELECT claimed_by FROM emails WHERE key = ?1", in3.key, buf,
			      sizeof buf),
		  self);

	/* A legacy system recording after the fact. */
	struct dun_email_intent in4 = intent("acct_1/email/resolved/ep1", "<l@x>");
	in4.source = "legacy";
	bool was_sent = true;
	CHECK_INT(dun_email_record_sent(db, &in4, T0, &was_sent), DUN_OK);
	CHECK(!was_sent);
	CHECK_INT(dun_email_record_sent(db, &in4, T0 + 1, &was_sent), DUN_OK);
	CHECK(was_sent);
	CHECK_STR(testdb_text(db, "SELECT state || ' ' || source FROM emails WHERE key = ?1",
			      in4.key, buf, sizeof buf),
		  "sent legacy");
	CHECK_INT(dun_email_claim(db, &in4, "A", T0 + 2, T0 + 2, 900, &c), DUN_OK);
	CHECK_INT(c.result, DUN_EMAIL_ALREADY_SENT);
}

/* ---- a scripted HTTP server ---------------------------------------------------- */

#define SCRIPT_MAX 32
#define LOG_MAX	   64

struct request {
	char line[256]; /* "POST /v1/accounts/acct_1/ban" */
	char idem[256]; /* Idempotency-Key */
	char auth[128]; /* Authorization */
	char sig[160];	/* Dunning-Signature */
	char body[1024];
};

struct server {
	int fd;
	int port;
	pthread_t thread;
	atomic_bool stop;
	/* answers, in order; past the end: 200 */
	int status[SCRIPT_MAX];
	int retry_after[SCRIPT_MAX];
	int n_script;
	pthread_mutex_t lock;
	struct request log[LOG_MAX];
	int n_log;
};

static void header_value(const char *head, const char *name, char *out, size_t size)
{
	out[0] = '\0';
	size_t n = strlen(name);
	for (const char *p = head; p && *p; p = strstr(p, "\r\n") ? strstr(p, "\r\n") + 2 : NULL) {
		if (!strncasecmp(p, name, n) && p[n] == ':') {
			const char *v = p + n + 1;
			while (*v == ' ')
				v++;
			size_t len = strcspn(v, "\r\n");
			snprintf(out, size, "%.*s", (int)len, v);
			return;
		}
	}
}

static void *serve(void *arg)
{
	struct server *s = arg;
	while (!atomic_load(&s->stop)) {
		int c = accept(s->fd, NULL, NULL);
		if (c < 0)
			break;
		char buf[8192];
		size_t len = 0;
		char *end = NULL;
		while (len < sizeof buf - 1) {
			ssize_t n = recv(c, buf + len, sizeof buf - 1 - len, 0);
			if (n <= 0)
				break;
			len += (size_t)n;
			buf[len] = '\0';
			end = strstr(buf, "\r\n\r\n");
			if (end) {
				char cl[32];
				header_value(buf, "Content-Length", cl, sizeof cl);
				size_t want = (size_t)(end + 4 - buf) + (size_t)atol(cl);
				if (len >= want)
					break;
			}
		}
		if (!end) {
			close(c);
			continue;
		}
		pthread_mutex_lock(&s->lock);
		int i = s->n_log;
		int status = i < s->n_script ? s->status[i] : 200;
		int retry_after = i < s->n_script ? s->retry_after[i] : 0;
		if (i < LOG_MAX) {
			struct request *r = &s->log[i];
			snprintf(r->line, sizeof r->line, "%.*s", (int)strcspn(buf, "\r"), buf);
			char *sp = strrchr(r->line, ' '); /* drop " HTTP/1.1" */
			if (sp)
				*sp = '\0';
			header_value(buf, "Idempotency-Key", r->idem, sizeof r->idem);
			header_value(buf, "Authorization", r->auth, sizeof r->auth);
			header_value(buf, "Dunning-Signature", r->sig, sizeof r->sig);
			snprintf(r->body, sizeof r->body, "%s", end + 4);
			s->n_log++;
		}
		pthread_mutex_unlock(&s->lock);
		char reply[256];
		int n =
		    snprintf(reply, sizeof reply,
			     "HTTP/1.1 %d X\r\nContent-Length: 2\r\nConnection: close\r\n", status);
		if (retry_after)
			n += snprintf(reply + n, sizeof reply - (size_t)n, "Retry-After: %d\r\n",
				      retry_after);
		n += snprintf(reply + n, sizeof reply - (size_t)n, "\r\n{}");
		if (send(c, reply, (size_t)n, MSG_NOSIGNAL) < 0)
			perror("send");
		close(c);
	}
	return NULL;
}

static void server_start(struct server *s)
{
	memset(s, 0, sizeof *s);
	pthread_mutex_init(&s->lock, NULL);
	s->fd = socket(AF_INET, SOCK_STREAM, 0);
	struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = 0};
	a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	socklen_t alen = sizeof a;
	if (s->fd < 0 || bind(s->fd, (struct sockaddr *)&a, sizeof a) != 0 ||
	    listen(s->fd, 16) != 0 || getsockname(s->fd, (struct sockaddr *)&a, &alen) != 0) {
		perror("test server");
		abort();
	}
	s->port = ntohs(a.sin_port);
	atomic_init(&s->stop, false);
	pthread_create(&s->thread, NULL, serve, s);
}

static void server_stop(struct server *s)
{
	atomic_store(&s->stop, true);
	shutdown(s->fd, SHUT_RDWR);
	close(s->fd);
	pthread_join(s->thread, NULL);
	pthread_mutex_destroy(&s->lock);
}

static int closed_port(void)
{
	int fd = socket(AF_INET, SOCK_STREAM, 0);
	struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = 0};
	a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	socklen_t alen = sizeof a;
	bind(fd, (struct sockaddr *)&a, sizeof a);
	getsockname(fd, (struct sockaddr *)&a, &alen);
	close(fd);
	return ntohs(a.sin_port);
}

/* ---- the platform outbox sender -------------------------------------------------- */

static void platform_config(struct dun_config *cfg, int port)
{
	dun_config_defaults(cfg);
	snprintf(cfg->platform_kind, sizeof cfg->platform_kind, "http");
	snprintf(cfg->platform_base_url, sizeof cfg->platform_base_url, "http://127.0.0.1:%d/v1/",
		 port);
	snprintf(cfg->platform_token, sizeof cfg->platform_token, "tok_unit");
	cfg->platform_timeout_ms = 2000;
}

static void queue(struct dun_db *db, const char *account, int op, const char *key, int64_t decision)
{
	struct dun_platform p = dun_http_platform(db);
	char err[256] = "";
	enum dun_err e = DUN_E_INVALID;
	if (op == 0)
		e = p.ops->ban(p.self, account, true, key, decision, err, sizeof err);
	else if (op == 1)
		e = p.ops->ban(p.self, account, false, key, decision, err, sizeof err);
	else if (op == 2)
		e = p.ops->set_entitlement(p.self, account, DUN_ENTITLEMENT_RESTRICTED, key,
					   decision, err, sizeof err);
	else
		e = p.ops->remove_resource_flags(p.self, account, key, decision, err, sizeof err);
	CHECK_INT(e, DUN_OK);
}

static void test_outbox_order_retry_and_dead(struct dun_db *db)
{
	testdb_exec(db, "DELETE FROM platform_outbox");
	queue(db, "acct_A", 0, "acct_A/ban/d1", 1); /* id 1 */
	queue(db, "acct_A", 0, "acct_A/ban/d1", 1); /* a repeat: ignored */
	queue(db, "acct_B", 2, "acct_B/set_entitlement/d2", 2);
	queue(db, "acct_A", 1, "acct_A/unban/d3", 3);
	queue(db, "acct_C", 0, "acct_C/ban/d4", 4);
	queue(db, "acct_C", 3, "acct_C/remove_resource_flags/d4", 4);
	CHECK_INT(testdb_int(db, "SELECT COUNT(*) FROM platform_outbox", NULL), 5);
	/* The engine's view is set with the intent. */
	CHECK_INT(testdb_int(db, "SELECT banned FROM platform WHERE account_id = ?1", "acct_A"), 0);
	CHECK_INT(testdb_int(db, "SELECT banned FROM platform WHERE account_id = ?1", "acct_C"), 1);

	struct server s;
	server_start(&s);
	/* acct_A's ban: 503; acct_B: 200; acct_C's ban: 400 (dead); then 200. */
	s.status[0] = 503;
	s.status[1] = 200;
	s.status[2] = 400;
	s.n_script = 3;
	struct dun_config cfg;
	platform_config(&cfg, s.port);
	struct dun_outbox_stats st;
	CHECK_INT(dun_outbox_sender_run_once(db, &cfg, T0, &st), DUN_OK);
	/* The unban did not overtake the failed ban; a dead row holds nothing back. */
	CHECK_INT(s.n_log, 4);
	CHECK_STR(s.log[0].line, "POST /v1/accounts/acct_A/ban");
	CHECK_STR(s.log[1].line, "PUT /v1/accounts/acct_B/entitlement");
	CHECK_STR(s.log[2].line, "POST /v1/accounts/acct_C/ban");
	CHECK_STR(s.log[3].line, "POST /v1/accounts/acct_C/resource-flags/remove");
	CHECK_STR(s.log[0].idem, "acct_A/ban/d1");
	CHECK_STR(s.log[0].auth, "Bearer tok_unit");
	CHECK(strstr(s.log[1].body, "\"level\":\"restricted\"") != NULL);
	CHECK(strstr(s.log[1].body, "\"decision_id\":2") != NULL);
	CHECK(strstr(s.log[1].body, "\"idempotency_key\":\"acct_B/set_entitlement/d2\"") != NULL);
	CHECK_INT(st.sent, 2);
	CHECK_INT(st.retried, 1);
	CHECK_INT(st.dead, 1);
	CHECK_INT(st.pending, 2);
	CHECK_INT(st.dead_total, 1);
	char buf[256];
	CHECK_STR(testdb_text(db,
			      "SELECT state || ' ' || last_status FROM platform_outbox"
			      " WHERE account_id = 'acct_C' AND op = 'ban'",
			      NULL, buf, sizeof buf),
		  "dead 400");
	int64_t nb = testdb_int(db, "SELECT not_before FROM platform_outbox WHERE id = 1", NULL);
	CHECK(nb >= T0 + 1 && nb <= T0 + 1);
	CHECK_INT(testdb_int(db, "SELECT attempts FROM platform_outbox WHERE id = 1", NULL), 1);
	/* Not due yet: nothing is sent. */
	CHECK_INT(dun_outbox_sender_run_once(db, &cfg, T0, &st), DUN_OK);
	CHECK_INT(st.attempted, 0);
	/* Due: the ban, then the unban, in one run. */
	CHECK_INT(dun_outbox_sender_run_once(db, &cfg, T0 + 2, &st), DUN_OK);
	CHECK_INT(s.n_log, 6);
	CHECK_STR(s.log[4].line, "POST /v1/accounts/acct_A/ban");
	CHECK_STR(s.log[4].idem, "acct_A/ban/d1");
	CHECK_STR(s.log[5].line, "POST /v1/accounts/acct_A/unban");
	CHECK_INT(st.pending, 0);
	/* Requeued, the dead ban goes again; a dead ban overtaken by a sent unban would not. */
	int n = 0;
	CHECK_INT(dun_outbox_requeue_dead(db, 0, T0 + 3, &n), DUN_OK);
	CHECK_INT(n, 1);
	CHECK_INT(dun_outbox_sender_run_once(db, &cfg, T0 + 3, &st), DUN_OK);
	CHECK_INT(st.sent, 1);
	testdb_exec(db, "UPDATE platform_outbox SET state = 'dead' WHERE id = 1");
	CHECK_INT(dun_outbox_requeue_dead(db, 1, T0 + 4, &n), DUN_OK);
	CHECK_INT(n, 0);
	server_stop(&s);
}

static void test_outbox_claims_retry_after_and_unreachable(struct dun_db *db)
{
	testdb_exec(db, "DELETE FROM platform_outbox");
	queue(db, "acct_D", 0, "acct_D/ban/d9", 9);
	queue(db, "acct_E", 0, "acct_E/ban/d9", 9);
	queue(db, "acct_F", 0, "acct_F/ban/d9", 9);
	/* Another sender holds acct_D's call: nobody else sends it, nor what follows. */
	testdb_exec(db, "UPDATE platform_outbox SET not_before = 1767600100 WHERE account_id ="
			" 'acct_D'");
	struct server s;
	server_start(&s);
	s.status[0] = 429;
	s.retry_after[0] = 60;
	s.status[1] = 409; /* already done: sent */
	s.n_script = 2;
	struct dun_config cfg;
	platform_config(&cfg, s.port);
	struct dun_outbox_stats st;
	CHECK_INT(dun_outbox_sender_run_once(db, &cfg, T0, &st), DUN_OK);
	CHECK_INT(s.n_log, 2);
	CHECK_STR(s.log[0].line, "POST /v1/accounts/acct_E/ban");
	CHECK_STR(s.log[1].line, "POST /v1/accounts/acct_F/ban");
	CHECK_INT(testdb_int(db, "SELECT not_before FROM platform_outbox WHERE account_id = ?1",
			     "acct_E"),
		  T0 + 60);
	CHECK_INT(testdb_int(db,
			     "SELECT state = 'sent' FROM platform_outbox WHERE"
			     " account_id = ?1",
			     "acct_F"),
		  1);
	server_stop(&s);

	/* Nobody listening: one attempt, and the run stops. */
	testdb_exec(db, "UPDATE platform_outbox SET not_before = 0 WHERE state = 'pending'");
	platform_config(&cfg, closed_port());
	CHECK_INT(dun_outbox_sender_run_once(db, &cfg, T0 + 200, &st), DUN_OK);
	CHECK_INT(st.attempted, 1);
	CHECK(st.stopped_early);
	CHECK_INT(st.pending, 2);
	char buf[256];
	testdb_text(db,
		    "SELECT last_error FROM platform_outbox WHERE attempts > 0 AND"
		    " state = 'pending' ORDER BY id LIMIT 1",
		    NULL, buf, sizeof buf);
	CHECK(strstr(buf, "connect") != NULL || strstr(buf, "Connect") != NULL);
	/* kind = local: nothing is sent, rows wait. */
	snprintf(cfg.platform_kind, sizeof cfg.platform_kind, "local");
	CHECK_INT(dun_outbox_sender_run_once(db, &cfg, T0 + 10000, &st), DUN_OK);
	CHECK_INT(st.attempted, 0);
	CHECK_INT(st.pending, 2);
}

/* ---- the outcome-event sender --------------------------------------------------- */

static void add_event(struct dun_db *db, const char *account, const char *key)
{
	char id[DUN_EVENT_ID_SIZE], payload[512], sql[1024];
	dun_event_id(key, id);
	snprintf(payload, sizeof payload,
		 "{\"account_id\":\"%s\",\"id\":\"%s\",\"key\":\"%s\",\"type\":"
		 "\"dunning.stage_changed\"}",
		 account, id, key);
	snprintf(sql, sizeof sql,
		 "INSERT INTO outcome_events(key, account_id, type, payload, created_at)"
		 " VALUES ('%s', '%s', 'dunning.stage_changed', '%s', %d)",
		 key, account, payload, T0);
	testdb_exec(db, sql);
}

static void test_events(struct dun_db *db)
{
	add_event(db, "acct_1", "acct_1/outcome/none@0/notified");
	add_event(db, "acct_2", "acct_2/outcome/none@0/notified");
	add_event(db, "acct_1", "acct_1/outcome/notified@1/restricted");
	struct server a, b;
	server_start(&a);
	server_start(&b);
	a.status[0] = 500; /* acct_1's first event, first try */
	a.n_script = 1;
	struct dun_config cfg;
	dun_config_defaults(&cfg);
	snprintf(cfg.event_endpoints[0], sizeof cfg.event_endpoints[0], "http://127.0.0.1:%d/h",
		 a.port);
	snprintf(cfg.event_endpoints[1], sizeof cfg.event_endpoints[1], "http://127.0.0.1:%d/h",
		 b.port);
	cfg.n_event_endpoints = 2;
	struct dun_events_stats st;
	/* No secret: refused. */
	CHECK_INT(dun_events_sender_run_once(db, &cfg, T0, &st), DUN_E_CONFIG);
	snprintf(cfg.event_secret, sizeof cfg.event_secret, "whsec_unit_test_secret");
	CHECK_INT(dun_events_sender_run_once(db, &cfg, T0, &st), DUN_OK);
	CHECK_INT(st.queued, 6);
	/* a: the 500, then acct_2's only (acct_1's second waits behind its first). */
	CHECK_INT(a.n_log, 2);
	CHECK_INT(b.n_log, 3);
	CHECK_INT(st.sent, 4);
	CHECK_INT(st.retried, 1);
	CHECK_INT(st.pending, 2);
	CHECK_INT(
	    testdb_int(db, "SELECT COUNT(*) FROM outcome_events WHERE delivered_at > 0", NULL), 1);
	CHECK_INT(dun_events_sender_run_once(db, &cfg, T0 + 10, &st), DUN_OK);
	CHECK_INT(a.n_log, 4);
	CHECK_INT(st.pending, 0);
	CHECK_INT(
	    testdb_int(db, "SELECT COUNT(*) FROM outcome_events WHERE delivered_at = 0", NULL), 0);
	/* Retried with the same body; in order per account; every signature checks. */
	CHECK_STR(a.log[0].body, a.log[2].body);
	CHECK(strstr(a.log[2].body, "none@0/notified") != NULL);
	CHECK(strstr(a.log[3].body, "notified@1/restricted") != NULL);
	const char *secrets[] = {"whsec_unit_test_secret"};
	for (int i = 0; i < a.n_log; i++) {
		char why[128];
		int64_t t = i < 2 ? T0 : T0 + 10;
		CHECK_INT(dun_signature_verify(a.log[i].sig, (const unsigned char *)a.log[i].body,
					       strlen(a.log[i].body), secrets, 1, t, 0, why,
					       sizeof why),
			  DUN_OK);
	}
	/* A new event, a new run: only it goes out. */
	add_event(db, "acct_2", "acct_2/outcome/notified@5/none");
	CHECK_INT(dun_events_sender_run_once(db, &cfg, T0 + 20, &st), DUN_OK);
	CHECK_INT(st.queued, 2);
	CHECK_INT(a.n_log, 5);
	CHECK_INT(b.n_log, 4);
	/*
	 * An event that commits below one already queued (recomputes of several
	 * processes commit side by side on PostgreSQL: ids do not commit in
	 * order) is still queued and sent, to both endpoints.
	 */
	int64_t top = testdb_int(db, "SELECT MAX(id) FROM outcome_events", NULL);
	testdb_exec(db, "INSERT INTO outcome_events(id, key, account_id, type, payload, created_at)"
			" VALUES (1000, 'late/high', 'acct_3', 'dunning.stage_changed', '{}', 0)");
	CHECK_INT(dun_events_sender_run_once(db, &cfg, T0 + 30, &st), DUN_OK);
	CHECK_INT(st.queued, 2);
	char late[256];
	snprintf(late, sizeof late,
		 "INSERT INTO outcome_events(id, key, account_id, type, payload, created_at)"
		 " VALUES (%lld, 'late/low', 'acct_4', 'dunning.stage_changed', '{\"late\":1}', 0)",
		 (long long)top + 1);
	testdb_exec(db, late);
	CHECK_INT(dun_events_sender_run_once(db, &cfg, T0 + 40, &st), DUN_OK);
	CHECK_INT(st.queued, 2);
	CHECK_INT(a.n_log, 7);
	CHECK_INT(b.n_log, 6);
	CHECK(strstr(a.log[6].body, "\"late\"") != NULL);
	CHECK(strstr(b.log[5].body, "\"late\"") != NULL);
	CHECK_INT(
	    testdb_int(db, "SELECT COUNT(*) FROM outcome_events WHERE delivered_at = 0", NULL), 0);
	/* An endpoint added later gets the history, from the first event on. */
	struct server c;
	server_start(&c);
	snprintf(cfg.event_endpoints[2], sizeof cfg.event_endpoints[2], "http://127.0.0.1:%d/h",
		 c.port);
	cfg.n_event_endpoints = 3;
	CHECK_INT(dun_events_sender_run_once(db, &cfg, T0 + 50, &st), DUN_OK);
	CHECK_INT(st.queued, 6);
	CHECK_INT(c.n_log, 6);
	server_stop(&c);
	server_stop(&a);
	server_stop(&b);
}

int main(void)
{
	curl_global_init(CURL_GLOBAL_DEFAULT);
	test_backoff();
	test_classify();
	test_request_line();
	test_url_check();
	test_event_id();
	char dir[256], path[300];
	testdb_mkdir(dir, sizeof dir);
	snprintf(path, sizeof path, "%s/effects.db", dir);
	struct dun_db *db = testdb_open(path);
	test_email_claims(db);
	test_outbox_order_retry_and_dead(db);
	test_outbox_claims_retry_after_and_unreachable(db);
	test_events(db);
	dun_db_close(db);
	testdb_unlink(path);
	rmdir(dir);
	curl_global_cleanup();
	return CHECK_DONE();
}
