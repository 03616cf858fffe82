/*
 * lane.c — the threads that run admin requests (see lane.h). They sit
 * beside the workers: the same pipeline code (explain, pay-bad-debt) on
 * connections of their own, so a slow request waits here instead of
 * holding an HTTP thread that also serves webhooks.
 */
#include "lane.h"
#include "util/mem.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>

struct lane_thread {
	struct dun_lane *lane;
	struct dun_engine_ctx *ctx;
	pthread_t thread;
	bool started;
};

struct dun_lane {
	struct lane_thread *t;
	int n;
	pthread_mutex_t mu;
	pthread_cond_t cv;
	struct dun_lane_job *head, *tail; /* guarded by mu */
	bool stopping;			  /* guarded by mu */
};

static void *lane_main(void *arg)
{
	struct lane_thread *t = arg;
	struct dun_lane *l = t->lane;
	for (;;) {
		pthread_mutex_lock(&l->mu);
		while (!l->head && !l->stopping)
			pthread_cond_wait(&l->cv, &l->mu);
		struct dun_lane_job *job = l->head;
		if (job) {
			l->head = job->next;
			if (!l->head)
				l->tail = NULL;
		}
		pthread_mutex_unlock(&l->mu);
		if (!job)
			break; /* stopping and drained */
		dun_engine_ctx_refresh(t->ctx);
		job->run(job, t->ctx);
	}
	return NULL;
}

enum dun_err dun_lane_start(const struct dun_config *cfg, const struct dun_policy *policy,
			    struct dun_provider provider, int n, struct dun_lane **out, char *err,
			    size_t err_size)
{
	*out = NULL;
	struct dun_lane *l = dun_calloc(1, sizeof *l);
	l->n = n;
	l->t = dun_calloc((size_t)n, sizeof *l->t);
	pthread_mutex_init(&l->mu, NULL);
	pthread_cond_init(&l->cv, NULL);
	for (int i = 0; i < n; i++) {
		l->t[i].lane = l;
		enum dun_err e =
		    dun_engine_ctx_new(cfg, policy, provider, &l->t[i].ctx, err, err_size);
		if (e != DUN_OK) {
			dun_lane_stop(l);
			return e;
		}
	}
	for (int i = 0; i < n; i++) {
		if (pthread_create(&l->t[i].thread, NULL, lane_main, &l->t[i]) != 0) {
			snprintf(err, err_size, "cannot start admin thread %d", i + 1);
			dun_lane_stop(l);
			return DUN_E_IO;
		}
		l->t[i].started = true;
	}
	*out = l;
	return DUN_OK;
}

void dun_lane_submit(struct dun_lane *l, struct dun_lane_job *job)
{
	job->next = NULL;
	pthread_mutex_lock(&l->mu);
	if (l->tail)
		l->tail->next = job;
	else
		l->head = job;
	l->tail = job;
	pthread_cond_signal(&l->cv);
	pthread_mutex_unlock(&l->mu);
}

void dun_lane_stop(struct dun_lane *l)
{
	if (!l)
		return;
	pthread_mutex_lock(&l->mu);
	l->stopping = true;
	pthread_cond_broadcast(&l->cv);
	pthread_mutex_unlock(&l->mu);
	for (int i = 0; i < l->n; i++) {
		if (l->t[i].started)
			pthread_join(l->t[i].thread, NULL);
		dun_engine_ctx_destroy(l->t[i].ctx);
	}
	pthread_cond_destroy(&l->cv);
	pthread_mutex_destroy(&l->mu);
	free(l->t);
	free(l);
}
