/*
 * webhook_load.c — the load generator of bench/webhook_bench.py.
 *
 * It replays pre-built HTTP requests (signed webhook deliveries written by
 * the Python driver) against 127.0.0.1 from many keep-alive connections at
 * once, one request in flight per connection, as Stripe's delivery workers
 * do, and reports throughput and latency as one JSON line. It is C because
 * a Python client cannot produce tens of thousands of requests a second on
 * the same two cores as the server; the signing, the set-up and the
 * comparison stay in Python.
 *
 *   webhook_load PORT CONNECTIONS REQUESTS_FILE
 *
 * REQUESTS_FILE holds records "<length>\n<raw request bytes>". Standard C
 * and Linux only (epoll), so the driver can build it with `cc -O2` alone.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

struct request {
	const char *data;
	size_t len;
};

struct conn {
	int fd;
	long req; /* index being sent/answered, -1 when idle */
	size_t sent;
	char buf[8192];
	size_t have;
	int64_t start_ns;
};

static int64_t now_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

static int cmp_i64(const void *a, const void *b)
{
	int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
	return x < y ? -1 : x > y;
}

static char *read_file(const char *path, size_t *len)
{
	FILE *f = fopen(path, "rb");
	if (!f)
		return NULL;
	fseek(f, 0, SEEK_END);
	long n = ftell(f);
	fseek(f, 0, SEEK_SET);
	char *p = malloc((size_t)n + 1);
	if (!p || fread(p, 1, (size_t)n, f) != (size_t)n) {
		fclose(f);
		free(p);
		return NULL;
	}
	fclose(f);
	*len = (size_t)n;
	return p;
}

static int connect_to(int port)
{
	int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
	struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
	a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	int one = 1;
	setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
	if (connect(fd, (struct sockaddr *)&a, sizeof a) != 0 && errno != EINPROGRESS) {
		close(fd);
		return -1;
	}
	return fd;
}

/* A complete response in c->buf? Returns its status, 0 when incomplete, -1 when garbled. */
static int parse_response(struct conn *c, size_t *consumed)
{
	char *end = memmem(c->buf, c->have, "\r\n\r\n", 4);
	if (!end)
		return c->have == sizeof c->buf ? -1 : 0;
	size_t head = (size_t)(end - c->buf) + 4;
	int status = 0;
	if (sscanf(c->buf, "HTTP/1.%*d %d", &status) != 1)
		return -1;
	size_t body = 0;
	for (char *p = c->buf; p < end; p++) {
		if ((p == c->buf || p[-1] == '\n') && strncasecmp(p, "Content-Length:", 15) == 0) {
			body = strtoul(p + 15, NULL, 10);
			break;
		}
	}
	if (c->have < head + body)
		return 0;
	*consumed = head + body;
	return status;
}

int main(int argc, char **argv)
{
	if (argc != 4) {
		fprintf(stderr, "usage: %s PORT CONNECTIONS REQUESTS_FILE\n", argv[0]);
		return 64;
	}
	int port = atoi(argv[1]);
	int n_conn = atoi(argv[2]);
	size_t flen;
	char *file = read_file(argv[3], &flen);
	if (!file || n_conn < 1) {
		fprintf(stderr, "cannot read %s\n", argv[3]);
		return 66;
	}
	/* Index the records. */
	long n_req = 0, cap = 1024;
	struct request *reqs = malloc(sizeof *reqs * (size_t)cap);
	for (size_t off = 0; off < flen;) {
		char *nl = memchr(file + off, '\n', flen - off);
		if (!nl)
			break;
		size_t len = strtoul(file + off, NULL, 10);
		off = (size_t)(nl - file) + 1;
		if (off + len > flen)
			break;
		if (n_req == cap) {
			cap *= 2;
			reqs = realloc(reqs, sizeof *reqs * (size_t)cap);
		}
		reqs[n_req].data = file + off;
		reqs[n_req].len = len;
		n_req++;
		off += len;
	}
	int64_t *lat = calloc((size_t)n_req + 1, sizeof *lat);
	long statuses[600] = {0};
	long done = 0, errors = 0, next = 0;
	int ep = epoll_create1(0);
	struct conn *conns = calloc((size_t)n_conn, sizeof *conns);
	int64_t t0 = now_ns();
	for (int i = 0; i < n_conn; i++) {
		conns[i].fd = connect_to(port);
		conns[i].req = -1;
		if (conns[i].fd < 0) {
			fprintf(stderr, "cannot connect to 127.0.0.1:%d\n", port);
			return 69;
		}
		struct epoll_event ev = {.events = EPOLLIN | EPOLLOUT, .data.ptr = &conns[i]};
		epoll_ctl(ep, EPOLL_CTL_ADD, conns[i].fd, &ev);
	}
	struct epoll_event evs[256];
	while (done + errors < n_req) {
		int n = epoll_wait(ep, evs, 256, 10000);
		if (n <= 0) {
			fprintf(stderr, "no progress for 10 s (%ld of %ld done)\n", done, n_req);
			break;
		}
		for (int i = 0; i < n; i++) {
			struct conn *c = evs[i].data.ptr;
			if (c->req < 0 && (evs[i].events & EPOLLOUT)) {
				if (next >= n_req) {
					struct epoll_event ev = {.events = EPOLLIN, .data.ptr = c};
					epoll_ctl(ep, EPOLL_CTL_MOD, c->fd, &ev);
					continue;
				}
				c->req = next++;
				c->sent = 0;
				c->have = 0;
				c->start_ns = now_ns();
			}
			if (c->req >= 0 && c->sent < reqs[c->req].len) {
				ssize_t w = send(c->fd, reqs[c->req].data + c->sent,
						 reqs[c->req].len - c->sent, MSG_NOSIGNAL);
				if (w > 0)
					c->sent += (size_t)w;
				else if (w < 0 && errno != EAGAIN) {
					errors++;
					c->req = -1;
					continue;
				}
				struct epoll_event ev = {.events = c->sent < reqs[c->req].len
								       ? EPOLLIN | EPOLLOUT
								       : EPOLLIN,
							 .data.ptr = c};
				epoll_ctl(ep, EPOLL_CTL_MOD, c->fd, &ev);
			}
			if (c->req >= 0 && (evs[i].events & EPOLLIN)) {
				ssize_t r =
				    recv(c->fd, c->buf + c->have, sizeof c->buf - c->have, 0);
				if (r > 0)
					c->have += (size_t)r;
				else if (r == 0 || errno != EAGAIN) {
					errors++;
					c->req = -1;
					epoll_ctl(ep, EPOLL_CTL_DEL, c->fd, NULL);
					continue;
				}
				size_t used = 0;
				int st = parse_response(c, &used);
				if (st < 0) {
					errors++;
					c->req = -1;
					continue;
				}
				if (st > 0) {
					lat[done++] = now_ns() - c->start_ns;
					if (st < 600)
						statuses[st]++;
					c->req = -1;
					struct epoll_event ev = {.events = EPOLLIN | EPOLLOUT,
								 .data.ptr = c};
					epoll_ctl(ep, EPOLL_CTL_MOD, c->fd, &ev);
				}
			}
		}
	}
	double elapsed = (double)(now_ns() - t0) / 1e9;
	qsort(lat, (size_t)done, sizeof *lat, cmp_i64);
	double p50 = done ? (double)lat[done / 2] / 1e6 : 0;
	double p99 = done ? (double)lat[(long)((double)done * 0.99)] / 1e6 : 0;
	double max = done ? (double)lat[done - 1] / 1e6 : 0;
	printf("{\"requests\":%ld,\"answered\":%ld,\"errors\":%ld,\"connections\":%d,"
	       "\"elapsed_s\":%.4f,\"rate_per_s\":%.1f,\"p50_ms\":%.3f,\"p99_ms\":%.3f,"
	       "\"max_ms\":%.3f,\"status\":{",
	       n_req, done, errors, n_conn, elapsed, (double)done / elapsed, p50, p99, max);
	int first = 1;
	for (int s = 0; s < 600; s++)
		if (statuses[s]) {
			printf("%s\"%d\":%ld", first ? "" : ",", s, statuses[s]);
			first = 0;
		}
	printf("}}\n");
	for (int i = 0; i < n_conn; i++)
		close(conns[i].fd);
	free(conns);
	free(lat);
	free(reqs);
	free(file);
	return 0;
}
