/*
 * http.c — the HTTP front of the service over libmicrohttpd (see http.h).
 * It sits before the pipeline: it reads requests, hands them to the
 * webhook or admin handlers, and writes their answers. It never touches
 * the database itself.
 *
 * Threading model: MHD_USE_INTERNAL_POLLING_THREAD with a small pool of
 * polling threads (one per core) and MHD_ALLOW_SUSPEND_RESUME, rather than
 * a thread per connection. A webhook spends almost all of its life waiting
 * for the group commit's fsync; with thread-per-connection every waiting
 * delivery would pin a thread (hundreds of them under a burst, each woken
 * separately), while here a waiting request is only a suspended connection
 * and one batch commit resumes them all, to be answered by the few polling
 * threads. The price is that handlers must never block: anything slow (the
 * database, the provider) runs on another thread while the connection is
 * suspended.
 *
 * poll(), not epoll: with edge-triggered epoll, the libmicrohttpd of Debian
 * 12 (0.9.75) now and then never reads the next request of a connection
 * that went through suspend and resume — under load the request sits in
 * the socket's receive queue while the polling thread waits in
 * epoll_wait — and every suspend and resume costs two epoll_ctl calls.
 * Level-triggered poll() cannot miss the data, and measured faster here
 * (bench/webhook_bench.py); its cost per loop grows with the number of open
 * connections, which for a webhook endpoint is in the hundreds.
 *
 * Request lifetime: created when MHD has read the request line (the URI
 * log callback, which sees the path still percent-encoded), set up at the
 * first access callback (headers read), body appended under the cap,
 * handler called at the end, the answer queued by the handler's callback
 * or, after a suspension, by the callback MHD makes when the connection is
 * resumed. The completion notice logs the request line and frees
 * everything.
 *
 * Paths are routed raw and each captured segment is percent-decoded on its
 * own (util/pct), so "/accounts/a%2Fb" reaches the account "a/b"; a
 * malformed escape anywhere in the path or query is answered 400.
 *
 * Hostile and odd clients, and what libmicrohttpd 0.9.75 does not do for
 * us:
 *  - Connection caps: MHD_OPTION_CONNECTION_LIMIT (total) and
 *    MHD_OPTION_PER_IP_CONNECTION_LIMIT (per source address) from
 *    [server]; MHD refuses a connection over either at accept.
 *  - A header deadline: MHD's timeout is an idle timeout, which a client
 *    sending one byte now and then never reaches. Each connection is
 *    tracked (MHD_OPTION_NOTIFY_CONNECTION) with the time it started
 *    waiting for a request's headers (its opening, or the end of the
 *    previous answer on it); a watchdog thread shuts down the socket of a
 *    connection past the deadline, and MHD then closes it as a hung-up
 *    client. shutdown(), never close(): MHD still owns the descriptor, and
 *    it is only touched under the tracking lock, before MHD's CLOSED notice
 *    (which MHD gives before it closes the socket) removes the entry.
 *  - A stop: the same mechanism cuts connections still sending their
 *    headers or body when the shutdown grace is over.
 *  - Half-closed clients: a suspended connection keeps the poll interest
 *    it had when it was suspended (reading), so after the resume MHD reads
 *    the client's end-of-file and drops the answer. The final access
 *    callback is therefore answered one loop later: MHD has by then put
 *    the connection in its "request complete" state, which does not read,
 *    and the handler suspends from there.
 *  - MHD's own complaints (one per refused connection under a flood) are
 *    logged at most once a second per message, with the number dropped.
 */
#include "http.h"
#include "core/text.h"
#include "util/clock.h"
#include "util/log.h"
#include "util/mem.h"
#include "util/pct.h"

#include <errno.h>
#include <fcntl.h>
#include <microhttpd.h>
#include <netdb.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/types.h>
#include <unistd.h>

#define LOG_FIELDS_MAX	 4
#define HEADERS_MAX	 8
/* How often the watchdog looks for connections past the header deadline, at most. */
#define WATCHDOG_TICK_MS 250
/* MHD's repeated complaints are logged at most this often. */
#define MHD_LOG_EVERY_MS 1000

/* What a connection is doing, for the header deadline and the shutdown cut. */
enum conn_phase {
	PHASE_HEADERS,	/* waiting for a request's headers (or for the next request) */
	PHASE_BODY,	/* headers read, the body is coming */
	PHASE_HANDLING, /* the request is complete: handled, answered */
};

/* One open connection; guarded by dun_http.track_mu. */
struct conn_track {
	int fd;
	enum conn_phase phase;
	int64_t since_ms; /* monotonic: when phase began */
	bool cut;	  /* its socket was shut down by us */
	struct conn_track *prev, *next;
};

struct dun_http {
	struct MHD_Daemon *daemon;
	struct dun_http_config cfg;
	_Atomic bool stopping;
	pthread_mutex_t mu;
	pthread_cond_t idle_cv;
	int64_t inflight; /* guarded by mu */
	/* the open connections and the watchdog */
	pthread_mutex_t track_mu;
	pthread_cond_t track_cv;
	struct conn_track *conns; /* guarded by track_mu */
	bool watchdog_quit;	  /* guarded by track_mu */
	bool watchdog_started;
	pthread_t watchdog;
	/* rate limit of MHD's messages */
	pthread_mutex_t mhd_log_mu;
	char mhd_last[256];  /* guarded by mhd_log_mu */
	int64_t mhd_last_ms; /* guarded by mhd_log_mu */
	int64_t mhd_dropped; /* guarded by mhd_log_mu */
};

struct dun_http_request {
	struct dun_http *h;
	struct MHD_Connection *conn;
	const struct dun_http_route *route;
	char method[16];
	char path[512]; /* raw, as sent (still percent-encoded), without the query */
	bool path_too_long;
	bool query_malformed;
	bool started;  /* the first access callback has run */
	bool deferred; /* the final callback was put off once (see the top) */
	char params[DUN_HTTP_PARAMS_MAX][128];
	char *body;
	size_t len, cap;
	bool too_big;
	bool dispatched;
	bool suspended_in_handler; /* only the request's HTTP thread reads or writes it */
	_Atomic bool ready;	   /* a reply is stored; set last by the replying thread */
	bool sent;
	int64_t start_ms;
	/* the reply */
	unsigned status;
	char *resp;
	size_t resp_len;
	const char *content_type;
	const char *hdr_name[HEADERS_MAX];
	char *hdr_value[HEADERS_MAX];
	int n_hdr;
	/* the log line */
	const char *log_key[LOG_FIELDS_MAX];
	char *log_value[LOG_FIELDS_MAX];
	int n_log;
	void *user;
	void (*user_free)(void *);
	void (*finish)(struct dun_http_request *r, void *user); /* set before a resume */
};

/* ---- listening ---------------------------------------------------------------- */

enum dun_err dun_http_listen(const char *host, int port, int *fd_out, char *addr_out,
			     size_t addr_size, char *err, size_t err_size)
{
	*fd_out = -1;
	char name[128];
	size_t hl = strlen(host);
	/* "[::1]" is how an IPv6 host is written next to a port. */
	if (hl >= 2 && host[0] == '[' && host[hl - 1] == ']')
		snprintf(name, sizeof name, "%.*s", (int)(hl - 2), host + 1);
	else
		snprintf(name, sizeof name, "%s", host);
	char service[16];
	snprintf(service, sizeof service, "%d", port);
	struct addrinfo hints, *res = NULL;
	memset(&hints, 0, sizeof hints);
	hints.ai_family = AF_UNSPEC;
	hints.ai_socktype = SOCK_STREAM;
	hints.ai_flags = AI_PASSIVE | AI_NUMERICSERV;
	int gai = getaddrinfo(name, service, &hints, &res);
	if (gai != 0) {
		snprintf(err, err_size, "[server] listen: cannot resolve \"%s\": %s", host,
			 gai_strerror(gai));
		return DUN_E_CONFIG;
	}
	int fd = socket(res->ai_family, res->ai_socktype | SOCK_CLOEXEC, res->ai_protocol);
	if (fd < 0) {
		snprintf(err, err_size, "[server] listen %s:%d: cannot create a socket: %s", host,
			 port, strerror(errno));
		freeaddrinfo(res);
		return DUN_E_IO;
	}
	int one = 1;
	setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
	if (bind(fd, res->ai_addr, res->ai_addrlen) != 0 || listen(fd, 4096) != 0) {
		snprintf(err, err_size, "[server] listen %s:%d: %s", host, port, strerror(errno));
		close(fd);
		freeaddrinfo(res);
		return DUN_E_IO;
	}
	freeaddrinfo(res);
	int flags = fcntl(fd, F_GETFL, 0);
	fcntl(fd, F_SETFL, flags | O_NONBLOCK);
	struct sockaddr_storage ss;
	socklen_t sl = sizeof ss;
	char ip[INET6_ADDRSTRLEN] = "?", portbuf[16] = "0";
	if (getsockname(fd, (struct sockaddr *)&ss, &sl) == 0)
		getnameinfo((struct sockaddr *)&ss, sl, ip, sizeof ip, portbuf, sizeof portbuf,
			    NI_NUMERICHOST | NI_NUMERICSERV);
	if (ss.ss_family == AF_INET6)
		snprintf(addr_out, addr_size, "[%s]:%s", ip, portbuf);
	else
		snprintf(addr_out, addr_size, "%s:%s", ip, portbuf);
	*fd_out = fd;
	return DUN_OK;
}

/* ---- routing ------------------------------------------------------------------ */

/*
 * Whether the raw path matches pattern; fills the {} captures of r,
 * percent-decoded (the path was checked with dun_pct_valid before). A
 * capture that does not fit is left empty for the handler to refuse.
 */
static bool match(const char *pattern, const char *path, struct dun_http_request *r)
{
	int n = 0;
	const char *p = pattern, *s = path;
	while (*p && *s) {
		if (p[0] == '{' && p[1] == '}') {
			const char *end = strchr(s, '/');
			size_t len = end ? (size_t)(end - s) : strlen(s);
			if (len == 0 || n >= DUN_HTTP_PARAMS_MAX)
				return false;
			bool too_long;
			if (!dun_pct_decode(s, len, r->params[n], sizeof r->params[0], &too_long) &&
			    !too_long)
				return false;
			n++;
			s += len;
			p += 2;
			continue;
		}
		if (*p != *s)
			return false;
		p++;
		s++;
	}
	return !*p && !*s;
}

/* Find the route; 0 when found, else 404 or 405 (with allow filled). */
static unsigned route(struct dun_http_request *r, char *allow, size_t allow_size)
{
	const struct dun_http_config *c = &r->h->cfg;
	allow[0] = '\0';
	bool path_known = false;
	for (int i = 0; i < c->n_routes; i++) {
		if (!match(c->routes[i].pattern, r->path, r))
			continue;
		if (!strcmp(c->routes[i].method, r->method)) {
			r->route = &c->routes[i];
			return 0;
		}
		path_known = true;
		size_t al = strlen(allow);
		snprintf(allow + al, allow_size - al, "%s%s", al ? ", " : "", c->routes[i].method);
	}
	return path_known ? 405 : 404;
}

/* ---- replies ------------------------------------------------------------------ */

void dun_http_reply(struct dun_http_request *r, unsigned status, const char *content_type,
		    char *body, size_t len)
{
	free(r->resp);
	r->status = status;
	r->resp = body;
	r->resp_len = len;
	r->content_type = content_type;
	atomic_store(&r->ready, true);
}

void dun_http_reply_json(struct dun_http_request *r, unsigned status, json_t *v)
{
	char *s = json_dumps(v, JSON_COMPACT | JSON_PRESERVE_ORDER);
	json_decref(v);
	if (!s)
		dun_oom();
	size_t n = strlen(s);
	/* A newline makes curl output readable; JSON parsers ignore it. */
	s = dun_realloc(s, n + 2);
	s[n++] = '\n';
	s[n] = '\0';
	dun_http_reply(r, status, "application/json", s, n);
}

void dun_http_reply_error(struct dun_http_request *r, unsigned status, const char *code,
			  const char *fmt, ...)
{
	char msg[512];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(msg, sizeof msg, fmt, ap);
	va_end(ap);
	dun_http_reply_json(r, status,
			    json_pack("{s:{s:s, s:s}}", "error", "code", code, "message", msg));
	dun_http_log(r, "error", code);
}

void dun_http_add_header(struct dun_http_request *r, const char *name, const char *value)
{
	if (r->n_hdr >= HEADERS_MAX)
		return;
	r->hdr_name[r->n_hdr] = name;
	r->hdr_value[r->n_hdr] = dun_strdup(value);
	r->n_hdr++;
}

void dun_http_log(struct dun_http_request *r, const char *key, const char *value)
{
	for (int i = 0; i < r->n_log; i++)
		if (!strcmp(r->log_key[i], key)) {
			free(r->log_value[i]);
			r->log_value[i] = dun_strdup(value);
			return;
		}
	if (r->n_log >= LOG_FIELDS_MAX)
		return;
	r->log_key[r->n_log] = key;
	r->log_value[r->n_log] = dun_strdup(value);
	r->n_log++;
}

static enum MHD_Result queue(struct dun_http_request *r)
{
	if (r->sent)
		return MHD_YES;
	struct MHD_Response *resp =
	    MHD_create_response_from_buffer(r->resp_len, r->resp, MHD_RESPMEM_MUST_FREE);
	if (!resp)
		return MHD_NO;
	r->resp = NULL; /* MHD frees it */
	MHD_add_response_header(resp, MHD_HTTP_HEADER_CONTENT_TYPE,
				r->content_type ? r->content_type : "text/plain");
	for (int i = 0; i < r->n_hdr; i++)
		MHD_add_response_header(resp, r->hdr_name[i], r->hdr_value[i]);
	enum MHD_Result ok = MHD_queue_response(r->conn, r->status, resp);
	MHD_destroy_response(resp);
	r->sent = true;
	if (r->h->cfg.metrics) {
		dun_metrics_http_status(r->h->cfg.metrics, r->status);
		if (!strncmp(r->path, "/webhooks/", strlen("/webhooks/")))
			dun_metrics_webhook_latency(r->h->cfg.metrics,
						    dun_clock_mono_ms() - r->start_ms);
	}
	return ok;
}

/* ---- request accessors ---------------------------------------------------------- */

const char *dun_http_method(const struct dun_http_request *r)
{
	return r->method;
}

const char *dun_http_path(const struct dun_http_request *r)
{
	return r->path;
}

const char *dun_http_param(const struct dun_http_request *r, int i)
{
	return i >= 0 && i < DUN_HTTP_PARAMS_MAX ? r->params[i] : "";
}

const char *dun_http_query(struct dun_http_request *r, const char *key)
{
	return MHD_lookup_connection_value(r->conn, MHD_GET_ARGUMENT_KIND, key);
}

const char *dun_http_header(struct dun_http_request *r, const char *name)
{
	return MHD_lookup_connection_value(r->conn, MHD_HEADER_KIND, name);
}

const char *dun_http_body(const struct dun_http_request *r, size_t *len)
{
	*len = r->len;
	return r->body ? r->body : "";
}

bool dun_http_body_too_big(const struct dun_http_request *r)
{
	return r->too_big;
}

int64_t dun_http_body_max(const struct dun_http_request *r)
{
	return r->h->cfg.body_max_bytes;
}

void dun_http_set_user(struct dun_http_request *r, void *user, void (*free_fn)(void *))
{
	r->user = user;
	r->user_free = free_fn;
}

void dun_http_suspend(struct dun_http_request *r)
{
	r->suspended_in_handler = true;
	MHD_suspend_connection(r->conn);
}

void dun_http_resume(struct dun_http_request *r)
{
	MHD_resume_connection(r->conn);
}

void dun_http_resume_with(struct dun_http_request *r,
			  void (*finish)(struct dun_http_request *r, void *user))
{
	r->finish = finish;
	MHD_resume_connection(r->conn); /* its lock publishes finish to the HTTP thread */
}

bool dun_http_shutting_down(const struct dun_http *h)
{
	return atomic_load(&h->stopping);
}

/* ---- the MHD callbacks ------------------------------------------------------------ */

static void request_free(struct dun_http_request *r)
{
	if (r->user_free)
		r->user_free(r->user);
	free(r->body);
	free(r->resp);
	for (int i = 0; i < r->n_hdr; i++)
		free(r->hdr_value[i]);
	for (int i = 0; i < r->n_log; i++)
		free(r->log_value[i]);
	free(r);
}

/* ---- connection tracking ------------------------------------------------------------ */

static struct conn_track *track_of(struct MHD_Connection *conn)
{
	const union MHD_ConnectionInfo *ci =
	    MHD_get_connection_info(conn, MHD_CONNECTION_INFO_SOCKET_CONTEXT);
	return ci ? ci->socket_context : NULL;
}

static void set_phase(struct dun_http *h, struct MHD_Connection *conn, enum conn_phase phase)
{
	struct conn_track *t = track_of(conn);
	if (!t)
		return;
	pthread_mutex_lock(&h->track_mu);
	t->phase = phase;
	t->since_ms = dun_clock_mono_ms();
	pthread_mutex_unlock(&h->track_mu);
}

static void on_connection(void *cls, struct MHD_Connection *conn, void **socket_context,
			  enum MHD_ConnectionNotificationCode code)
{
	struct dun_http *h = cls;
	switch (code) {
	case MHD_CONNECTION_NOTIFY_STARTED: {
		const union MHD_ConnectionInfo *ci =
		    MHD_get_connection_info(conn, MHD_CONNECTION_INFO_CONNECTION_FD);
		struct conn_track *t = dun_calloc(1, sizeof *t);
		t->fd = ci ? (int)ci->connect_fd : -1;
		t->phase = PHASE_HEADERS;
		t->since_ms = dun_clock_mono_ms();
		pthread_mutex_lock(&h->track_mu);
		t->next = h->conns;
		if (h->conns)
			h->conns->prev = t;
		h->conns = t;
		pthread_mutex_unlock(&h->track_mu);
		*socket_context = t;
		return;
	}
	case MHD_CONNECTION_NOTIFY_CLOSED: {
		struct conn_track *t = *socket_context;
		if (!t)
			return;
		pthread_mutex_lock(&h->track_mu);
		if (t->prev)
			t->prev->next = t->next;
		else
			h->conns = t->next;
		if (t->next)
			t->next->prev = t->prev;
		pthread_mutex_unlock(&h->track_mu);
		free(t);
		*socket_context = NULL;
		return;
	}
	}
}

/*
 * Shut down the sockets of connections in the given phases (all of them
 * when older_than_ms is 0, else those in it for longer); how many. MHD
 * sees a hung-up client and closes the connection itself.
 */
static int cut(struct dun_http *h, bool headers, bool body, int64_t older_than_ms)
{
	int n = 0;
	int64_t now = dun_clock_mono_ms();
	pthread_mutex_lock(&h->track_mu);
	for (struct conn_track *t = h->conns; t; t = t->next) {
		bool in_phase =
		    (headers && t->phase == PHASE_HEADERS) || (body && t->phase == PHASE_BODY);
		if (t->cut || t->fd < 0 || !in_phase ||
		    (older_than_ms > 0 && now - t->since_ms <= older_than_ms))
			continue;
		shutdown(t->fd, SHUT_RDWR);
		t->cut = true;
		n++;
	}
	pthread_mutex_unlock(&h->track_mu);
	return n;
}

/* Enforces the header deadline until dun_http_stop. */
static void *watchdog_main(void *arg)
{
	struct dun_http *h = arg;
	int64_t tick = h->cfg.header_timeout_ms / 4;
	if (tick > WATCHDOG_TICK_MS)
		tick = WATCHDOG_TICK_MS;
	if (tick < 10)
		tick = 10;
	for (;;) {
		pthread_mutex_lock(&h->track_mu);
		if (!h->watchdog_quit) {
			struct timespec ts;
			clock_gettime(CLOCK_REALTIME, &ts);
			ts.tv_nsec += tick * 1000000;
			ts.tv_sec += ts.tv_nsec / 1000000000;
			ts.tv_nsec %= 1000000000;
			pthread_cond_timedwait(&h->track_cv, &h->track_mu, &ts);
		}
		bool quit = h->watchdog_quit;
		pthread_mutex_unlock(&h->track_mu);
		if (quit)
			return NULL;
		int n = cut(h, true, false, h->cfg.header_timeout_ms);
		if (n > 0) {
			char count[24], ms[24];
			snprintf(count, sizeof count, "%d", n);
			snprintf(ms, sizeof ms, "%lld", (long long)h->cfg.header_timeout_ms);
			dun_log(DUN_LOG_WARN, "http.header_timeout", "connections", count,
				"header_timeout_ms", ms, NULL);
		}
	}
}

int dun_http_cut_unfinished(struct dun_http *h)
{
	return cut(h, true, true, 0);
}

/* ---- the MHD callbacks, continued ------------------------------------------------------ */

/*
 * MHD has read a request line: the request begins here, with the URI as
 * sent. What it returns is the request's context in every later callback.
 */
static void *on_uri(void *cls, const char *uri, struct MHD_Connection *conn)
{
	struct dun_http *h = cls;
	struct dun_http_request *r = dun_calloc(1, sizeof *r);
	r->h = h;
	r->conn = conn;
	r->start_ms = dun_clock_mono_ms();
	const char *q = strchr(uri, '?');
	size_t n = q ? (size_t)(q - uri) : strlen(uri);
	if (n >= sizeof r->path) {
		r->path_too_long = true;
		n = sizeof r->path - 1;
	}
	memcpy(r->path, uri, n);
	r->path[n] = '\0';
	r->query_malformed = q && !dun_pct_valid(q + 1, strlen(q + 1));
	pthread_mutex_lock(&h->mu);
	h->inflight++;
	pthread_mutex_unlock(&h->mu);
	return r;
}

/* Call the handler and queue its answer unless it suspended the request. */
static enum MHD_Result dispatch(struct dun_http_request *r)
{
	r->dispatched = true;
	r->route->handle(r->h->cfg.arg, r);
	if (r->suspended_in_handler)
		return MHD_YES; /* answered after dun_http_resume() */
	if (!atomic_load(&r->ready))
		dun_http_reply_error(r, 500, "internal", "the handler gave no answer");
	return queue(r);
}

static bool append(struct dun_http_request *r, const char *data, size_t n)
{
	size_t max = (size_t)r->h->cfg.body_max_bytes;
	if (r->too_big || r->len + n > max) {
		r->too_big = true; /* keep reading, keep nothing: answered at the end */
		return true;
	}
	if (r->len + n > r->cap) {
		size_t cap = r->cap ? r->cap : 4096;
		while (cap < r->len + n)
			cap *= 2;
		if (cap > max)
			cap = max;
		r->body = dun_realloc(r->body, cap);
		r->cap = cap;
	}
	memcpy(r->body + r->len, data, n);
	r->len += n;
	return true;
}

static enum MHD_Result on_request(void *cls, struct MHD_Connection *conn, const char *url,
				  const char *method, const char *version, const char *upload_data,
				  size_t *upload_data_size, void **con_cls)
{
	(void)version;
	(void)url; /* already decoded by MHD: the raw one came to on_uri */
	struct dun_http *h = cls;
	struct dun_http_request *r = *con_cls;
	if (!r)
		return MHD_NO; /* cannot happen: on_uri made it */
	if (!r->started) {
		r->started = true;
		snprintf(r->method, sizeof r->method, "%s", method);
		set_phase(h, conn, PHASE_BODY);
		if (atomic_load(&h->stopping)) {
			dun_http_add_header(r, MHD_HTTP_HEADER_CONNECTION, "close");
			dun_http_reply_error(r, 503, "shutting_down",
					     "the service is stopping; try again shortly");
			return queue(r);
		}
		if (r->path_too_long) {
			dun_http_reply_error(r, 414, "uri_too_long",
					     "the path is longer than %d bytes",
					     (int)sizeof r->path - 1);
			return queue(r);
		}
		if (!dun_pct_valid(r->path, strlen(r->path)) || r->query_malformed) {
			dun_http_reply_error(
			    r, 400, "malformed_url",
			    "the %s has a malformed percent-encoding (a %% must be "
			    "followed by two hex digits, and %%00 is not allowed)",
			    r->query_malformed ? "query string" : "path");
			return queue(r);
		}
		char allow[64];
		unsigned st = route(r, allow, sizeof allow);
		if (st == 405) {
			dun_http_add_header(r, MHD_HTTP_HEADER_ALLOW, allow);
			dun_http_reply_error(r, 405, "method_not_allowed",
					     "%s is not allowed on %s (allowed: %s)", r->method,
					     r->path, allow);
			return queue(r);
		}
		if (st == 404) {
			dun_http_reply_error(r, 404, "not_found", "no such endpoint: %s %s",
					     r->method, r->path);
			return queue(r);
		}
		/* An announced body over the cap is refused before it is read. */
		const char *cl = MHD_lookup_connection_value(conn, MHD_HEADER_KIND,
							     MHD_HTTP_HEADER_CONTENT_LENGTH);
		if (cl) {
			char *end;
			errno = 0;
			unsigned long long v = strtoull(cl, &end, 10);
			if (errno || *end || v > (unsigned long long)h->cfg.body_max_bytes) {
				r->too_big = true;
				return dispatch(r);
			}
		}
		return MHD_YES;
	}
	if (r->dispatched) {
		if (!atomic_load(&r->ready) && r->finish) {
			void (*finish)(struct dun_http_request *, void *) = r->finish;
			r->finish = NULL;
			finish(r, r->user);
			if (!atomic_load(&r->ready))
				dun_http_reply_error(r, 500, "internal",
						     "the handler gave no answer");
		}
		return atomic_load(&r->ready) ? queue(r) : MHD_YES;
	}
	if (*upload_data_size) {
		append(r, upload_data, *upload_data_size);
		*upload_data_size = 0;
		return MHD_YES;
	}
	/* Put off once, so that a suspension starts from a state that does not read. */
	if (!r->deferred) {
		r->deferred = true;
		set_phase(h, conn, PHASE_HANDLING);
		return MHD_YES;
	}
	return dispatch(r);
}

static void on_completed(void *cls, struct MHD_Connection *conn, void **con_cls,
			 enum MHD_RequestTerminationCode toe)
{
	struct dun_http *h = cls;
	struct dun_http_request *r = *con_cls;
	if (!r)
		return;
	*con_cls = NULL;
	/* The connection now waits for its next request's headers. */
	set_phase(h, conn, PHASE_HEADERS);
	char status[8], ms[24];
	snprintf(status, sizeof status, "%u", r->sent ? r->status : 0);
	snprintf(ms, sizeof ms, "%lld", (long long)(dun_clock_mono_ms() - r->start_ms));
	if (!r->method[0])
		snprintf(r->method, sizeof r->method, "?"); /* ended before its headers */
	const char *k[LOG_FIELDS_MAX + 1] = {NULL};
	const char *v[LOG_FIELDS_MAX + 1] = {NULL};
	int n = 0;
	for (int i = 0; i < r->n_log; i++) {
		k[n] = r->log_key[i];
		v[n++] = r->log_value[i];
	}
	if (toe != MHD_REQUEST_TERMINATED_COMPLETED_OK) {
		k[n] = "termination";
		v[n++] = toe == MHD_REQUEST_TERMINATED_CLIENT_ABORT	 ? "client_abort"
			 : toe == MHD_REQUEST_TERMINATED_TIMEOUT_REACHED ? "timeout"
			 : toe == MHD_REQUEST_TERMINATED_DAEMON_SHUTDOWN ? "shutdown"
									 : "error";
	}
	enum dun_log_level lvl = r->sent && r->status >= 500 ? DUN_LOG_WARN : DUN_LOG_INFO;
	dun_log(lvl, "http.request", "method", r->method, "path", r->path, "status", status,
		"duration_ms", ms, k[0], v[0], k[1], v[1], k[2], v[2], k[3], v[3], k[4], v[4],
		NULL);
	request_free(r);
	pthread_mutex_lock(&h->mu);
	if (--h->inflight == 0)
		pthread_cond_broadcast(&h->idle_cv);
	pthread_mutex_unlock(&h->mu);
}

/*
 * libmicrohttpd's own messages, printf-style, into our log. A message equal
 * to the last one within MHD_LOG_EVERY_MS is counted, not logged: a flood
 * of refused connections makes one line a second, not one per connection.
 */
__attribute__((format(printf, 2, 0))) static void on_mhd_log(void *cls, const char *fmt, va_list ap)
{
	struct dun_http *h = cls;
	char msg[512];
	vsnprintf(msg, sizeof msg, fmt, ap);
	size_t n = strlen(msg);
	while (n && (msg[n - 1] == '\n' || msg[n - 1] == '\r'))
		msg[--n] = '\0';
	int64_t now = dun_clock_mono_ms();
	pthread_mutex_lock(&h->mhd_log_mu);
	bool same = !strncmp(msg, h->mhd_last, sizeof h->mhd_last - 1);
	if (same && now - h->mhd_last_ms < MHD_LOG_EVERY_MS) {
		h->mhd_dropped++;
		pthread_mutex_unlock(&h->mhd_log_mu);
		return;
	}
	int64_t dropped = h->mhd_dropped;
	h->mhd_dropped = 0;
	h->mhd_last_ms = now;
	dun_strlcpy(h->mhd_last, msg, sizeof h->mhd_last);
	pthread_mutex_unlock(&h->mhd_log_mu);
	char repeated[24];
	snprintf(repeated, sizeof repeated, "%lld", (long long)dropped);
	if (dropped)
		dun_log(DUN_LOG_WARN, "http.mhd", "message", msg, "repeated_before", repeated,
			NULL);
	else
		dun_log(DUN_LOG_WARN, "http.mhd", "message", msg, NULL);
}

enum dun_err dun_http_start(const struct dun_http_config *cfg, struct dun_http **out, char *err,
			    size_t err_size)
{
	*out = NULL;
	struct dun_http *h = dun_calloc(1, sizeof *h);
	h->cfg = *cfg;
	pthread_mutex_init(&h->mu, NULL);
	pthread_cond_init(&h->idle_cv, NULL);
	pthread_mutex_init(&h->track_mu, NULL);
	pthread_cond_init(&h->track_cv, NULL);
	pthread_mutex_init(&h->mhd_log_mu, NULL);
	unsigned flags = MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_POLL | MHD_ALLOW_SUSPEND_RESUME |
			 MHD_USE_ITC | MHD_USE_ERROR_LOG;
	/* The logger goes first, so that MHD's complaints about later options reach it. */
	h->daemon = MHD_start_daemon(
	    flags, 0, NULL, NULL, on_request, h, MHD_OPTION_EXTERNAL_LOGGER, on_mhd_log, h,
	    MHD_OPTION_LISTEN_SOCKET, (MHD_socket)cfg->listen_fd, MHD_OPTION_THREAD_POOL_SIZE,
	    (unsigned)(cfg->threads > 0 ? cfg->threads : 1), MHD_OPTION_CONNECTION_LIMIT,
	    (unsigned)cfg->max_connections, MHD_OPTION_PER_IP_CONNECTION_LIMIT,
	    (unsigned)cfg->max_connections_per_client, MHD_OPTION_CONNECTION_TIMEOUT,
	    (unsigned)cfg->idle_timeout_s, MHD_OPTION_URI_LOG_CALLBACK, on_uri, h,
	    MHD_OPTION_NOTIFY_CONNECTION, on_connection, h, MHD_OPTION_NOTIFY_COMPLETED,
	    on_completed, h, MHD_OPTION_END);
	if (h->daemon && pthread_create(&h->watchdog, NULL, watchdog_main, h) == 0)
		h->watchdog_started = true;
	if (!h->watchdog_started) {
		snprintf(err, err_size, "cannot start the HTTP server (%s)",
			 h->daemon ? "no watchdog thread" : "libmicrohttpd refused");
		if (h->daemon)
			MHD_stop_daemon(h->daemon);
		pthread_mutex_destroy(&h->mhd_log_mu);
		pthread_cond_destroy(&h->track_cv);
		pthread_mutex_destroy(&h->track_mu);
		pthread_cond_destroy(&h->idle_cv);
		pthread_mutex_destroy(&h->mu);
		free(h);
		return DUN_E_IO;
	}
	*out = h;
	return DUN_OK;
}

void dun_http_begin_shutdown(struct dun_http *h)
{
	atomic_store(&h->stopping, true);
	MHD_socket fd = MHD_quiesce_daemon(h->daemon);
	if (fd != MHD_INVALID_SOCKET)
		close(fd);
}

bool dun_http_wait_idle(struct dun_http *h, int64_t timeout_ms)
{
	int64_t deadline = dun_clock_mono_ms() + timeout_ms;
	pthread_mutex_lock(&h->mu);
	while (h->inflight > 0) {
		int64_t left = deadline - dun_clock_mono_ms();
		if (left <= 0)
			break;
		struct timespec ts;
		clock_gettime(CLOCK_REALTIME, &ts);
		int64_t step = left < 100 ? left : 100;
		ts.tv_nsec += step * 1000000;
		ts.tv_sec += ts.tv_nsec / 1000000000;
		ts.tv_nsec %= 1000000000;
		pthread_cond_timedwait(&h->idle_cv, &h->mu, &ts);
	}
	bool idle = h->inflight == 0;
	pthread_mutex_unlock(&h->mu);
	return idle;
}

void dun_http_stop(struct dun_http *h)
{
	if (!h)
		return;
	pthread_mutex_lock(&h->track_mu);
	h->watchdog_quit = true;
	pthread_cond_broadcast(&h->track_cv);
	pthread_mutex_unlock(&h->track_mu);
	pthread_join(h->watchdog, NULL);
	MHD_stop_daemon(h->daemon);
	pthread_mutex_destroy(&h->mhd_log_mu);
	pthread_cond_destroy(&h->track_cv);
	pthread_mutex_destroy(&h->track_mu);
	pthread_cond_destroy(&h->idle_cv);
	pthread_mutex_destroy(&h->mu);
	free(h);
}
