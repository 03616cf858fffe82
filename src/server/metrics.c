/*
 * metrics.c — counters of the running service and their Prometheus text
 * (see metrics.h). Part of the HTTP side: the pipeline itself never counts
 * anything here; the threads that drive it (request threads, the committer,
 * the workers) do, after the fact.
 */
#include "metrics.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "util/clock.h"
#include "util/mem.h"

static const int batch_bounds[DUN_METRICS_BATCH_BUCKETS] = {1,	2,   4,	  8,   16,   32,
							    64, 128, 256, 512, 1024, 4096};

static const int latency_bounds_ms[DUN_METRICS_LATENCY_BUCKETS] = {5,	10,   25,   50,	  100,	250,
								   500, 1000, 2500, 5000, 10000};

void dun_metrics_init(struct dun_metrics *m)
{
	memset(m, 0, sizeof *m);
}

const char *dun_webhook_outcome_name(enum dun_webhook_outcome o)
{
	switch (o) {
	case DUN_WEBHOOK_TRIGGERED:
		return "triggered";
	case DUN_WEBHOOK_COALESCED:
		return "coalesced";
	case DUN_WEBHOOK_DUPLICATE:
		return "duplicate";
	case DUN_WEBHOOK_IGNORED_TYPE:
		return "ignored_type";
	case DUN_WEBHOOK_UNMAPPED:
		return "unmapped";
	case DUN_WEBHOOK_REJECTED:
		return "rejected";
	case DUN_WEBHOOK_FAILED:
		return "failed";
	case DUN_WEBHOOK_IGNORED_NO_ID:
		return "ignored_no_id";
	case DUN_WEBHOOK_IGNORED_NO_CUSTOMER:
		return "ignored_no_customer";
	case DUN_WEBHOOK_IGNORED_NO_STATUS:
		return "ignored_no_status";
	case DUN_WEBHOOK__COUNT:
		break;
	}
	return "unknown";
}

const char *dun_webhook_rejection_name(enum dun_webhook_rejection r)
{
	switch (r) {
	case DUN_REJECT_SIGNATURE:
		return "signature";
	case DUN_REJECT_TOO_LARGE:
		return "too_large";
	case DUN_REJECT_MALFORMED:
		return "malformed";
	case DUN_REJECT_NOT_CONFIGURED:
		return "not_configured";
	case DUN_REJECT_SHUTTING_DOWN:
		return "shutting_down";
	case DUN_REJECT__COUNT:
		break;
	}
	return "unknown";
}

enum dun_webhook_outcome dun_webhook_outcome_parse(const char *s)
{
	for (int o = 0; o < DUN_WEBHOOK__COUNT; o++)
		if (!strcmp(s, dun_webhook_outcome_name((enum dun_webhook_outcome)o)))
			return (enum dun_webhook_outcome)o;
	/* ingest's own word for a refused event */
	return DUN_WEBHOOK_REJECTED;
}

void dun_metrics_webhook(struct dun_metrics *m, enum dun_webhook_outcome o)
{
	atomic_fetch_add(&m->webhook[o], 1);
}

void dun_metrics_reject(struct dun_metrics *m, enum dun_webhook_rejection r)
{
	atomic_fetch_add(&m->rejections[r], 1);
	atomic_fetch_add(&m->webhook[DUN_WEBHOOK_REJECTED], 1);
}

void dun_metrics_http_status(struct dun_metrics *m, unsigned status)
{
	if (status < 600)
		atomic_fetch_add(&m->http_status[status], 1);
}

void dun_metrics_batch(struct dun_metrics *m, int n, int64_t us)
{
	int b = 0;
	while (b < DUN_METRICS_BATCH_BUCKETS && n > batch_bounds[b])
		b++;
	atomic_fetch_add(&m->batch_bucket[b], 1);
	atomic_fetch_add(&m->batch_sum, n);
	atomic_fetch_add(&m->batch_count, 1);
	atomic_fetch_add(&m->commit_us_sum, us);
}

void dun_metrics_lock_wait(struct dun_metrics *m, int64_t us)
{
	atomic_fetch_add(&m->lock_wait_us_sum, us);
}

void dun_metrics_webhook_latency(struct dun_metrics *m, int64_t ms)
{
	if (ms < 0)
		ms = 0;
	int b = 0;
	while (b < DUN_METRICS_LATENCY_BUCKETS && ms > latency_bounds_ms[b])
		b++;
	atomic_fetch_add(&m->latency_bucket[b], 1);
	atomic_fetch_add(&m->latency_ms_sum, ms);
	atomic_fetch_add(&m->latency_count, 1);
}

static long long get(const _Atomic int64_t *v)
{
	return (long long)atomic_load(v);
}

char *dun_metrics_render(const struct dun_metrics *m, const struct dun_inbox_counts *inbox,
			 int workers_running, int workers_configured,
			 const struct dun_senders *senders)
{
	char *buf = NULL;
	size_t len = 0;
	FILE *f = open_memstream(&buf, &len);
	if (!f)
		dun_oom();
	fprintf(f, "# HELP dunning_webhook_requests_total Stripe webhook deliveries by outcome.\n"
		   "# TYPE dunning_webhook_requests_total counter\n");
	for (int o = 0; o < DUN_WEBHOOK__COUNT; o++)
		fprintf(f, "dunning_webhook_requests_total{outcome=\"%s\"} %lld\n",
			dun_webhook_outcome_name((enum dun_webhook_outcome)o), get(&m->webhook[o]));
	fprintf(f, "# HELP dunning_webhook_rejections_total Refused webhook deliveries by reason.\n"
		   "# TYPE dunning_webhook_rejections_total counter\n");
	for (int r = 0; r < DUN_REJECT__COUNT; r++)
		fprintf(f, "dunning_webhook_rejections_total{reason=\"%s\"} %lld\n",
			dun_webhook_rejection_name((enum dun_webhook_rejection)r),
			get(&m->rejections[r]));
	fprintf(f,
		"# HELP dunning_webhook_stale_payloads_total Stored events whose object was older "
		"than the mirror's copy (late deliveries).\n"
		"# TYPE dunning_webhook_stale_payloads_total counter\n"
		"dunning_webhook_stale_payloads_total %lld\n",
		get(&m->stale_payloads));
	fprintf(f, "# HELP dunning_http_responses_total HTTP responses by status code.\n"
		   "# TYPE dunning_http_responses_total counter\n");
	for (int s = 100; s < 600; s++)
		if (get(&m->http_status[s]))
			fprintf(f, "dunning_http_responses_total{code=\"%d\"} %lld\n", s,
				get(&m->http_status[s]));
	if (inbox) {
		fprintf(f,
			"# HELP dunning_inbox_triggers Triggers in the inbox by workflow state.\n"
			"# TYPE dunning_inbox_triggers gauge\n"
			"dunning_inbox_triggers{state=\"received\"} %lld\n"
			"dunning_inbox_triggers{state=\"processing\"} %lld\n"
			"dunning_inbox_triggers{state=\"done\"} %lld\n"
			"dunning_inbox_triggers{state=\"retrying\"} %lld\n"
			"dunning_inbox_triggers{state=\"dead\"} %lld\n",
			(long long)inbox->received, (long long)inbox->processing,
			(long long)inbox->done, (long long)inbox->retrying, (long long)inbox->dead);
	}
	fprintf(f,
		"# HELP dunning_inbox_up Whether the inbox could be read for this scrape.\n"
		"# TYPE dunning_inbox_up gauge\n"
		"dunning_inbox_up %d\n",
		inbox ? 1 : 0);
	fprintf(f,
		"# HELP dunning_recomputes_total Recomputes run by the workers, by outcome.\n"
		"# TYPE dunning_recomputes_total counter\n"
		"dunning_recomputes_total{outcome=\"ok\"} %lld\n"
		"dunning_recomputes_total{outcome=\"failed\"} %lld\n"
		"# HELP dunning_consequences_applied_total Consequences the workers applied.\n"
		"# TYPE dunning_consequences_applied_total counter\n"
		"dunning_consequences_applied_total %lld\n"
		"# HELP dunning_rechecks_enqueued_total Scheduled rechecks that came due.\n"
		"# TYPE dunning_rechecks_enqueued_total counter\n"
		"dunning_rechecks_enqueued_total %lld\n",
		get(&m->recomputes_ok), get(&m->recomputes_failed), get(&m->consequences_applied),
		get(&m->rechecks_enqueued));
	fprintf(f, "# HELP dunning_group_commit_batch_size Webhook events made durable by one "
		   "transaction (one fsync).\n"
		   "# TYPE dunning_group_commit_batch_size histogram\n");
	long long cum = 0;
	for (int b = 0; b < DUN_METRICS_BATCH_BUCKETS; b++) {
		cum += get(&m->batch_bucket[b]);
		fprintf(f, "dunning_group_commit_batch_size_bucket{le=\"%d\"} %lld\n",
			batch_bounds[b], cum);
	}
	cum += get(&m->batch_bucket[DUN_METRICS_BATCH_BUCKETS]);
	fprintf(f,
		"dunning_group_commit_batch_size_bucket{le=\"+Inf\"} %lld\n"
		"dunning_group_commit_batch_size_sum %lld\n"
		"dunning_group_commit_batch_size_count %lld\n",
		cum, get(&m->batch_sum), get(&m->batch_count));
	fprintf(
	    f,
	    "# HELP dunning_group_commit_seconds_total Time spent in group-commit transactions.\n"
	    "# TYPE dunning_group_commit_seconds_total counter\n"
	    "dunning_group_commit_seconds_total %.6f\n",
	    (double)get(&m->commit_us_sum) / 1e6);
	fprintf(f,
		"# HELP dunning_group_commit_lock_wait_seconds_total Of the group-commit time, the "
		"part spent waiting for the database's write lock (held by a worker's batch).\n"
		"# TYPE dunning_group_commit_lock_wait_seconds_total counter\n"
		"dunning_group_commit_lock_wait_seconds_total %.6f\n",
		(double)get(&m->lock_wait_us_sum) / 1e6);
	fprintf(f, "# HELP dunning_webhook_duration_seconds Time from a webhook request's "
		   "arrival to its answer.\n"
		   "# TYPE dunning_webhook_duration_seconds histogram\n");
	cum = 0;
	for (int b = 0; b < DUN_METRICS_LATENCY_BUCKETS; b++) {
		cum += get(&m->latency_bucket[b]);
		fprintf(f, "dunning_webhook_duration_seconds_bucket{le=\"%g\"} %lld\n",
			latency_bounds_ms[b] / 1000.0, cum);
	}
	cum += get(&m->latency_bucket[DUN_METRICS_LATENCY_BUCKETS]);
	fprintf(f,
		"dunning_webhook_duration_seconds_bucket{le=\"+Inf\"} %lld\n"
		"dunning_webhook_duration_seconds_sum %.3f\n"
		"dunning_webhook_duration_seconds_count %lld\n",
		cum, (double)get(&m->latency_ms_sum) / 1000.0, get(&m->latency_count));
	fprintf(f,
		"# HELP dunning_workers_running Worker threads draining the inbox.\n"
		"# TYPE dunning_workers_running gauge\n"
		"dunning_workers_running %d\n"
		"# HELP dunning_workers_configured Worker threads configured ([server] workers).\n"
		"# TYPE dunning_workers_configured gauge\n"
		"dunning_workers_configured %d\n",
		workers_running, workers_configured);
	if (senders) {
		fprintf(
		    f,
		    "# HELP dunning_platform_outbox_pending Platform calls waiting in the outbox.\n"
		    "# TYPE dunning_platform_outbox_pending gauge\n"
		    "dunning_platform_outbox_pending %lld\n"
		    "# HELP dunning_platform_outbox_dead Platform calls given up on.\n"
		    "# TYPE dunning_platform_outbox_dead gauge\n"
		    "dunning_platform_outbox_dead %lld\n"
		    "# HELP dunning_platform_calls_sent_total Platform calls delivered.\n"
		    "# TYPE dunning_platform_calls_sent_total counter\n"
		    "dunning_platform_calls_sent_total %lld\n"
		    "# HELP dunning_outcome_events_pending Payment-outcome events not yet "
		    "delivered.\n"
		    "# TYPE dunning_outcome_events_pending gauge\n"
		    "dunning_outcome_events_pending %lld\n"
		    "# HELP dunning_outcome_events_dead Payment-outcome events given up on.\n"
		    "# TYPE dunning_outcome_events_dead gauge\n"
		    "dunning_outcome_events_dead %lld\n"
		    "# HELP dunning_outcome_events_sent_total Payment-outcome events delivered.\n"
		    "# TYPE dunning_outcome_events_sent_total counter\n"
		    "dunning_outcome_events_sent_total %lld\n"
		    "# HELP dunning_senders_errors_total Delivery runs that failed on the "
		    "database.\n"
		    "# TYPE dunning_senders_errors_total counter\n"
		    "dunning_senders_errors_total %lld\n",
		    get(&senders->platform_pending), get(&senders->platform_dead),
		    get(&senders->platform_sent_total), get(&senders->events_pending),
		    get(&senders->events_dead), get(&senders->events_sent_total),
		    get(&senders->errors_total));
		int64_t oldest = get(&senders->email_oldest_pending_at);
		int64_t age = oldest > 0 && dun_clock_now() > oldest ? dun_clock_now() - oldest : 0;
		fprintf(f,
			"# HELP dunning_email_pending Emails queued and not yet delivered.\n"
			"# TYPE dunning_email_pending gauge\n"
			"dunning_email_pending %lld\n"
			"# HELP dunning_email_overdue Queued emails older than [email] "
			"alert_after_s.\n"
			"# TYPE dunning_email_overdue gauge\n"
			"dunning_email_overdue %lld\n"
			"# HELP dunning_email_oldest_pending_age_seconds Age of the oldest queued "
			"email.\n"
			"# TYPE dunning_email_oldest_pending_age_seconds gauge\n"
			"dunning_email_oldest_pending_age_seconds %lld\n"
			"# HELP dunning_email_dead Emails given up on (refused for good, or past "
			"give_up_after_s).\n"
			"# TYPE dunning_email_dead gauge\n"
			"dunning_email_dead %lld\n"
			"# HELP dunning_email_sent_total Emails delivered by the email sender.\n"
			"# TYPE dunning_email_sent_total counter\n"
			"dunning_email_sent_total %lld\n",
			get(&senders->email_pending), get(&senders->email_overdue), (long long)age,
			get(&senders->email_dead), get(&senders->email_sent_total));
	}
	fclose(f);
	return buf;
}
