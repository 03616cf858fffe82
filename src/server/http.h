/*
 * http.h — the HTTP front of `dunning serve`: a libmicrohttpd daemon, a
 * route table, request bodies read under a size cap, JSON answers, one log
 * line per request, and suspend/resume so a request can wait for another
 * thread (the webhook committer, the admin lane, a worker) without holding
 * an HTTP thread.
 *
 * A handler is called once per request, when the body has been read (or
 * as soon as the headers announce a body over the cap, with
 * dun_http_body_too_big() true). It must either reply before returning, or
 * call dun_http_suspend() and make sure someone later calls a dun_http_reply
 * function and then dun_http_resume(), from any thread.
 */
#ifndef DUN_HTTP_H
#define DUN_HTTP_H

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "server/metrics.h"
#include "util/err.h"

struct dun_http;
struct dun_http_request;

typedef void (*dun_http_handler_fn)(void *arg, struct dun_http_request *req);

struct dun_http_route {
	const char *method;  /* "GET", "POST" */
	const char *pattern; /* "/accounts/{}/recompute": {} is one non-empty path segment */
	dun_http_handler_fn handle;
};

#define DUN_HTTP_PARAMS_MAX 2

struct dun_http_config {
	int listen_fd; /* bound and listening (dun_http_listen); the daemon takes it */
	int threads;   /* polling threads */
	int64_t body_max_bytes;
	int max_connections;		     /* open connections at most, all clients together */
	int max_connections_per_client;	     /* per source address; 0 = no cap */
	int64_t header_timeout_ms;	     /* a request's headers must be read within this */
	int idle_timeout_s;		     /* a connection with no traffic is closed after this */
	const struct dun_http_route *routes; /* borrowed, must outlive the daemon */
	int n_routes;
	void *arg; /* handed to every handler */
	struct dun_metrics *metrics;
};

/*
 * Bind host:port (port 0: a free one) and listen. *fd_out is the socket;
 * addr_out gets the address actually bound, "127.0.0.1:40123" or
 * "[::1]:40123". err says what failed, e.g. the address is in use.
 */
enum dun_err dun_http_listen(const char *host, int port, int *fd_out, char *addr_out,
			     size_t addr_size, char *err, size_t err_size);

enum dun_err dun_http_start(const struct dun_http_config *cfg, struct dun_http **out, char *err,
			    size_t err_size);
/*
 * Stop accepting connections (the listening socket is closed). Requests
 * already being read or answered go on; a new request on a kept-alive
 * connection is answered 503 with Connection: close.
 */
void dun_http_begin_shutdown(struct dun_http *h);
bool dun_http_shutting_down(const struct dun_http *h);
/*
 * Shut down every connection still sending a request (its headers or its
 * body), so that a stop is not held up by slow clients; requests already
 * complete are left to be answered. Returns how many were cut.
 */
int dun_http_cut_unfinished(struct dun_http *h);
/* Wait until no request is in flight; false when timeout_ms passed first. */
bool dun_http_wait_idle(struct dun_http *h, int64_t timeout_ms);
/* Close every connection and free the daemon. Only when idle (suspended requests are not). */
void dun_http_stop(struct dun_http *h);

/* ---- the request, for handlers ---------------------------------------------- */

const char *dun_http_method(const struct dun_http_request *r);
/* The path as sent (still percent-encoded), without the query string. */
const char *dun_http_path(const struct dun_http_request *r);
/* The i-th {} segment of the route's pattern. */
const char *dun_http_param(const struct dun_http_request *r, int i);
/* A query argument or header; NULL when absent. Only inside the handler call. */
const char *dun_http_query(struct dun_http_request *r, const char *key);
const char *dun_http_header(struct dun_http_request *r, const char *name);
/* The raw body as received (not NUL-terminated); lives as long as the request. */
const char *dun_http_body(const struct dun_http_request *r, size_t *len);
bool dun_http_body_too_big(const struct dun_http_request *r);
int64_t dun_http_body_max(const struct dun_http_request *r);

/* Add key=value to the request's log line (key static, value copied; at most 4). */
void dun_http_log(struct dun_http_request *r, const char *key, const char *value);
/* Add a response header (name static, value copied; at most 8). */
void dun_http_add_header(struct dun_http_request *r, const char *name, const char *value);

/* Answer with body (heap, taken) of content_type (static). */
void dun_http_reply(struct dun_http_request *r, unsigned status, const char *content_type,
		    char *body, size_t len);
/* Answer with v serialized (v taken). */
void dun_http_reply_json(struct dun_http_request *r, unsigned status, json_t *v);
/* Answer {"error":{"code":code,"message":...}}. */
void dun_http_reply_error(struct dun_http_request *r, unsigned status, const char *code,
			  const char *fmt, ...) __attribute__((format(printf, 4, 5)));

/* Inside the handler: the answer will come later, from dun_http_resume(). */
void dun_http_suspend(struct dun_http_request *r);
/* After a reply to a suspended request: hand it back to its HTTP thread. Any thread. */
void dun_http_resume(struct dun_http_request *r);
/*
 * Hand a suspended request back without a reply: finish(r, user) is called
 * on its HTTP thread and must reply there. Lets a serial thread (the
 * committer) leave the building of answers to the HTTP threads. Any thread.
 */
void dun_http_resume_with(struct dun_http_request *r,
			  void (*finish)(struct dun_http_request *r, void *user));

/* Attach handler state, freed with free_fn when the request is done (after the answer). */
void dun_http_set_user(struct dun_http_request *r, void *user, void (*free_fn)(void *));

#endif
