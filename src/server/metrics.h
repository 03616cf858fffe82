/*
 * metrics.h — the service's counters, rendered as Prometheus text by
 * GET /metrics.
 *
 * Every counter is a lock-free atomic, bumped from whichever thread saw the
 * event (request threads, the committer, workers). Gauges that live in the
 * database (inbox triggers per state) are read at scrape time by the caller
 * and handed to dun_metrics_render().
 */
#ifndef DUN_METRICS_H
#define DUN_METRICS_H

#include <stdatomic.h>
#include <stdint.h>

#include "apply/senders.h"
#include "inbox/inbox.h"

/* What became of one webhook delivery. */
enum dun_webhook_outcome {
	DUN_WEBHOOK_TRIGGERED,	   /* stored, a trigger was enqueued */
	DUN_WEBHOOK_COALESCED,	   /* stored, an equal trigger existed (object+type+created) */
	DUN_WEBHOOK_DUPLICATE,	   /* the event id was stored before */
	DUN_WEBHOOK_IGNORED_TYPE,  /* stored, a type dunning does not react to */
	DUN_WEBHOOK_UNMAPPED,	   /* stored, the customer maps to no account (yet) */
	DUN_WEBHOOK_REJECTED,	   /* refused with a 4xx (see the rejection reasons) */
	DUN_WEBHOOK_FAILED,	   /* could not be stored: 503, Stripe delivers again */
	DUN_WEBHOOK_IGNORED_NO_ID, /* stored, its object has no id (invoice.upcoming) */
	DUN_WEBHOOK_IGNORED_NO_CUSTOMER, /* stored, an invoice with a null customer */
	DUN_WEBHOOK_IGNORED_NO_STATUS,	 /* stored, an invoice with a null status */
	DUN_WEBHOOK__COUNT
};

/* Why a webhook delivery was refused. */
enum dun_webhook_rejection {
	DUN_REJECT_SIGNATURE,	   /* missing, malformed, wrong or stale Stripe-Signature */
	DUN_REJECT_TOO_LARGE,	   /* body over [server] body_max_bytes */
	DUN_REJECT_MALFORMED,	   /* not JSON, or not an event envelope */
	DUN_REJECT_NOT_CONFIGURED, /* no webhook secret configured */
	DUN_REJECT_SHUTTING_DOWN,  /* arrived while the service was stopping */
	DUN_REJECT__COUNT
};

/* Upper bounds of the group-commit batch size histogram (events per fsync). */
#define DUN_METRICS_BATCH_BUCKETS 12

/* Upper bounds of the webhook latency histogram, in milliseconds. */
#define DUN_METRICS_LATENCY_BUCKETS 11

struct dun_metrics {
	_Atomic int64_t webhook[DUN_WEBHOOK__COUNT];
	_Atomic int64_t rejections[DUN_REJECT__COUNT];
	_Atomic int64_t stale_payloads;
	_Atomic int64_t http_status[600];
	_Atomic int64_t recomputes_ok;
	_Atomic int64_t recomputes_failed;
	_Atomic int64_t consequences_applied;
	_Atomic int64_t rechecks_enqueued;
	_Atomic int64_t batch_bucket[DUN_METRICS_BATCH_BUCKETS + 1]; /* last: +Inf */
	_Atomic int64_t batch_sum;
	_Atomic int64_t batch_count;
	_Atomic int64_t commit_us_sum;	  /* time spent in BEGIN..COMMIT, microseconds */
	_Atomic int64_t lock_wait_us_sum; /* of which waiting for the write lock in BEGIN */
	_Atomic int64_t latency_bucket[DUN_METRICS_LATENCY_BUCKETS + 1]; /* last: +Inf */
	_Atomic int64_t latency_ms_sum;
	_Atomic int64_t latency_count;
};

void dun_metrics_init(struct dun_metrics *m);

const char *dun_webhook_outcome_name(enum dun_webhook_outcome o);
const char *dun_webhook_rejection_name(enum dun_webhook_rejection r);
/* The outcome for an ingest result's outcome string ("triggered", ...). */
enum dun_webhook_outcome dun_webhook_outcome_parse(const char *ingest_outcome);

void dun_metrics_webhook(struct dun_metrics *m, enum dun_webhook_outcome o);
/* Counts the rejection and the REJECTED outcome together. */
void dun_metrics_reject(struct dun_metrics *m, enum dun_webhook_rejection r);
void dun_metrics_http_status(struct dun_metrics *m, unsigned status);
/* One webhook request answered ms milliseconds after it arrived. */
void dun_metrics_webhook_latency(struct dun_metrics *m, int64_t ms);
/* One group commit of n events that held the write transaction for us microseconds. */
void dun_metrics_batch(struct dun_metrics *m, int n, int64_t us);
/* Time a batch waited for the write lock before its BEGIN returned. */
void dun_metrics_lock_wait(struct dun_metrics *m, int64_t us);

/*
 * The Prometheus text exposition (format 0.0.4) of m, the inbox counts
 * (NULL when the database could not be read; the gauge is then left out and
 * dunning_inbox_up is 0), the number of live worker threads and the
 * delivery loop's gauges (senders, may be NULL). Returns a heap string the
 * caller frees.
 */
char *dun_metrics_render(const struct dun_metrics *m, const struct dun_inbox_counts *inbox,
			 int workers_running, int workers_configured,
			 const struct dun_senders *senders);

#endif
