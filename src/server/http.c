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
 * Request lifetime: created at the first callback (headers read), body
 * appended under the cap, handler called at the end, the answer queued by
 * the handler's callback or, after a suspension, by the callback MHD makes
 * when the connection is resumed. The completion notice logs the request
 * line and frees everything.
 */
#include "http.h"
#include "util/clock.h"
#include "util/log.h"
#include "util/mem.h"

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

#define LOG_FIELDS_MAX 4
#define HEADERS_MAX    2

struct dun_http {
	struct MHD_Daemon *daemon;
	struct dun_http_config cfg;
	_Atomic bool stopping;
	pthread_mutex_t mu;
	pthread_cond_t idle_cv;
	int64_t inflight; /* guarded by mu */
};

struct dun_http_request {
	struct dun_http *h;
	struct MHD_Connection *conn;
	const struct dun_http_route *route;
	char method[16];
	char path[512];
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

/* Whether path matches pattern; fills the {} captures of r. */
static bool match(const char *pattern, const char *path, struct dun_http_request *r)
{
	int n = 0;
	const char *p = pattern, *s = path;
	while (*p && *s) {
		if (p[0] == '{' && p[1] == '}') {
			const char *end = strchr(s, '/');
			size_t len = end ? (size_t)(end - s) : strlen(s);
			if (len == 0 || len >= sizeof r->params[0] || n >= DUN_HTTP_PARAMS_MAX)
				return false;
			memcpy(r->params[n], s, len);
			r->params[n][len] = '\0';
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
	if (r->h->cfg.metrics)
		dun_metrics_http_status(r->h->cfg.metrics, r->status);
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

static struct dun_http_request *request_new(struct dun_http *h, struct MHD_Connection *conn,
					    const char *url, const char *method)
{
	struct dun_http_request *r = dun_calloc(1, sizeof *r);
	r->h = h;
	r->conn = conn;
	r->start_ms = dun_clock_mono_ms();
	snprintf(r->method, sizeof r->method, "%s", method);
	snprintf(r->path, sizeof r->path, "%s", url);
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
	struct dun_http *h = cls;
	struct dun_http_request *r = *con_cls;
	if (!r) {
		r = request_new(h, conn, url, method);
		*con_cls = r;
		if (atomic_load(&h->stopping)) {
			dun_http_add_header(r, MHD_HTTP_HEADER_CONNECTION, "close");
			dun_http_reply_error(r, 503, "shutting_down",
					     "the service is stopping; try again shortly");
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
	return dispatch(r);
}

static void on_completed(void *cls, struct MHD_Connection *conn, void **con_cls,
			 enum MHD_RequestTerminationCode toe)
{
	(void)conn;
	struct dun_http *h = cls;
	struct dun_http_request *r = *con_cls;
	if (!r)
		return;
	*con_cls = NULL;
	char status[8], ms[24];
	snprintf(status, sizeof status, "%u", r->sent ? r->status : 0);
	snprintf(ms, sizeof ms, "%lld", (long long)(dun_clock_mono_ms() - r->start_ms));
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

/* libmicrohttpd's own messages, printf-style, into our log. */
__attribute__((format(printf, 2, 0))) static void on_mhd_log(void *cls, const char *fmt, va_list ap)
{
	(void)cls;
	char msg[512];
	vsnprintf(msg, sizeof msg, fmt, ap);
	size_t n = strlen(msg);
	while (n && (msg[n - 1] == '\n' || msg[n - 1] == '\r'))
		msg[--n] = '\0';
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
	unsigned flags = MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_POLL | MHD_ALLOW_SUSPEND_RESUME |
			 MHD_USE_ITC | MHD_USE_ERROR_LOG;
	/* The logger goes first, so that MHD's complaints about later options reach it. */
	h->daemon = MHD_start_daemon(
	    flags, 0, NULL, NULL, on_request, h, MHD_OPTION_EXTERNAL_LOGGER, on_mhd_log, NULL,
	    MHD_OPTION_LISTEN_SOCKET, (MHD_socket)cfg->listen_fd, MHD_OPTION_THREAD_POOL_SIZE,
	    (unsigned)(cfg->threads > 0 ? cfg->threads : 1), MHD_OPTION_CONNECTION_LIMIT,
	    (unsigned)8192, MHD_OPTION_CONNECTION_TIMEOUT, (unsigned)60,
	    MHD_OPTION_NOTIFY_COMPLETED, on_completed, h, MHD_OPTION_END);
	if (!h->daemon) {
		snprintf(err, err_size, "cannot start the HTTP server (libmicrohttpd refused)");
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
	MHD_stop_daemon(h->daemon);
	pthread_cond_destroy(&h->idle_cv);
	pthread_mutex_destroy(&h->mu);
	free(h);
}
