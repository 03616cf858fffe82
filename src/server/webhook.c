/*
 * webhook.c — the Stripe webhook endpoint, the first step of the pipeline
 * for provider events (see DESIGN.md: a trigger lands in the durable inbox
 * before it is acknowledged).
 *
 * On the request thread: refuse an oversized body (413), check the
 * Stripe-Signature header against every configured secret (several during
 * a rotation) within the tolerance (400 when it fails), parse the JSON (400
 * when malformed), then suspend the request and hand the body to the
 * committer. On the committer thread, after the batch's COMMIT: 200 with
 * {"received":true,"duplicate":...,"event_id":...}, 400 for an invalid
 * envelope, 503 when
 * the event could not be stored (Stripe delivers it again). Nothing is
 * recomputed here; the workers pick the trigger up.
 *
 * Logs and metrics name the reason of every refusal but never the body or
 * a secret: the reasons come from dun_signature_verify, which promises
 * that, and from a fixed list.
 */
#include "webhook.h"
#include "inbox/json_arena.h"
#include "server/committer.h"
#include "server/service.h"
#include "server/signature.h"
#include "util/clock.h"
#include "util/mem.h"

#include <stdlib.h>
#include <string.h>

struct webhook_job {
	struct dun_commit_item item; /* first: the committer hands back this pointer */
	struct dun_service *svc;
	struct dun_http_request *req;
	struct dun_json_arena *arena; /* the parsed event's values (inbox/json_arena.h) */
};

static void job_free(void *p)
{
	struct webhook_job *job = p;
	json_decref(job->item.ev);
	dun_json_arena_give_back(job->arena); /* after the tree's last value */
	free(job);
}

static void reject(struct dun_service *svc, struct dun_http_request *req,
		   enum dun_webhook_rejection why)
{
	dun_metrics_reject(&svc->metrics, why);
	dun_http_log(req, "reason", dun_webhook_rejection_name(why));
}

/* On the request's HTTP thread, after the committer handed it back. */
static void answer(struct dun_http_request *req, void *user)
{
	struct webhook_job *job = user;
	struct dun_commit_item *item = &job->item;
	struct dun_service *svc = job->svc;
	if (item->res.event_id[0])
		dun_http_log(req, "event_id", item->res.event_id);
	switch (item->err) {
	case DUN_OK: {
		enum dun_webhook_outcome o = dun_webhook_outcome_parse(item->res.outcome);
		dun_metrics_webhook(&svc->metrics, o);
		if (item->res.stale)
			atomic_fetch_add(&svc->metrics.stale_payloads, 1);
		dun_http_log(req, "outcome", item->res.outcome);
		dun_http_reply_json(req, 200,
				    json_pack("{s:b, s:b, s:s, s:s}", "received", 1, "duplicate",
					      item->res.duplicate, "event_id", item->res.event_id,
					      "outcome", item->res.outcome));
		break;
	}
	case DUN_E_PARSE:
		reject(svc, req, DUN_REJECT_MALFORMED);
		/* The parser's message may quote the body: it goes to the sender only. */
		dun_http_reply_error(req, 400, "malformed_event", "%s", item->err_text);
		break;
	case DUN_E_INVALID:
	case DUN_E_NOT_FOUND:
	case DUN_E_TOO_BIG:
	case DUN_E_CONFIG:
	case DUN_E_STORE:
	case DUN_E_BUSY:
	case DUN_E_SCHEMA:
	case DUN_E_IO:
	case DUN_E_PROVIDER:
	case DUN_E_PROVIDER_REJECTED:
	case DUN_E_PLATFORM:
	case DUN_E_EMAIL:
	case DUN_E_GUARD:
	case DUN_E_CONFLICT:
	case DUN_E_SIGNATURE:
	case DUN_E_TIMEOUT:
	case DUN_E_CORRUPT:
	case DUN_E_UNSUPPORTED:
	case DUN_E_UNAVAILABLE:
	case DUN_E_FENCED:
	case DUN_E_INCOMPLETE:
		dun_metrics_webhook(&svc->metrics, DUN_WEBHOOK_FAILED);
		dun_http_log(req, "outcome", "failed");
		dun_http_add_header(req, "Retry-After", "5");
		dun_http_reply_error(req, 503, "store_unavailable",
				     "the event could not be stored durably (%s); deliver it again",
				     dun_err_str(item->err));
		break;
	}
}

/*
 * On the committer thread, once the batch is durable (or failed): only hand
 * the request back; the answer is built on its HTTP thread, in parallel,
 * so the one serial thread of ingestion does nothing but the SQL.
 */
static void committed(struct dun_commit_item *item)
{
	struct webhook_job *job = (struct webhook_job *)item;
	dun_http_resume_with(job->req, answer); /* last touch: the request may be freed */
}

void dun_webhook_handle(void *arg, struct dun_http_request *req)
{
	struct dun_service *svc = arg;
	if (dun_http_body_too_big(req)) {
		reject(svc, req, DUN_REJECT_TOO_LARGE);
		dun_http_reply_error(req, 413, "payload_too_large",
				     "the body is larger than %lld bytes ([server] body_max_bytes)",
				     (long long)dun_http_body_max(req));
		return;
	}
	if (svc->cfg.n_webhook_secrets == 0) {
		reject(svc, req, DUN_REJECT_NOT_CONFIGURED);
		dun_http_reply_error(req, 503, "webhook_not_configured",
				     "no webhook secret is configured ([stripe] webhook_secrets or "
				     "STRIPE_WEBHOOK_SECRETS); events cannot be verified");
		return;
	}
	const char *secrets[DUN_CONFIG_SECRETS_MAX];
	for (int i = 0; i < svc->cfg.n_webhook_secrets; i++)
		secrets[i] = svc->cfg.webhook_secrets[i];
	size_t len;
	const char *body = dun_http_body(req, &len);
	char why[160];
	enum dun_err e = dun_signature_verify(dun_http_header(req, "Stripe-Signature"),
					      (const unsigned char *)body, len, secrets,
					      svc->cfg.n_webhook_secrets, dun_clock_now(),
					      svc->cfg.webhook_tolerance_s, why, sizeof why);
	if (e == DUN_E_SIGNATURE) {
		reject(svc, req, DUN_REJECT_SIGNATURE);
		dun_http_reply_error(req, 400, "signature_invalid", "%s", why);
		return;
	}
	if (e != DUN_OK) {
		dun_metrics_webhook(&svc->metrics, DUN_WEBHOOK_FAILED);
		dun_http_reply_error(req, 500, "internal", "cannot check the signature: %s",
				     dun_err_str(e));
		return;
	}
	/* Parsed here, in parallel with the other requests, not in the serial committer. */
	struct dun_json_arena *arena = dun_json_arena_take();
	json_t *ev = NULL;
	char perr[256];
	dun_json_arena_enter(arena);
	enum dun_err pe = dun_ingest_parse(body, len, &ev, perr, sizeof perr);
	dun_json_arena_leave();
	if (pe != DUN_OK) {
		dun_json_arena_give_back(arena);
		reject(svc, req, DUN_REJECT_MALFORMED);
		/* The parser's message may quote the body: it goes to the sender only. */
		dun_http_reply_error(req, 400, "malformed_event", "%s", perr);
		return;
	}
	struct webhook_job *job = dun_calloc(1, sizeof *job);
	job->arena = arena;
	job->svc = svc;
	job->req = req;
	job->item.body = body;
	job->item.len = len;
	job->item.ev = ev;
	job->item.done = committed;
	dun_http_set_user(req, job, job_free);
	/* Suspend before submitting, so the answer can never come first. */
	dun_http_suspend(req);
	dun_committer_submit(svc->committer, &job->item);
}
