/*
 * effects_setup.c — the seams of the applier from configuration (see
 * effects_setup.h), and the SMTP mailer: the adapter from the applier's
 * struct dun_mailer to dun_smtp_send().
 *
 * Every setting an effect needs is checked here, when the process starts,
 * so that a wrong host, password, template, URL or missing secret is a
 * message at start-up (or from `dunning config check`), not a failed
 * notice on the first bad debt.
 */
#include "effects_setup.h"
#include "apply/email_log.h"
#include "apply/local.h"
#include "apply/outbox.h"
#include "apply/platform_http.h"
#include "util/datadir.h"
#include "util/input.h"

#include <stdio.h>
#include <string.h>

/* An outcome-event secret shorter than this is refused: it would be guessable. */
#define EVENT_SECRET_MIN 16

static enum dun_err smtp_mail(void *self, const struct dun_email_msg *msg, char *err,
			      size_t err_size)
{
	struct dun_effects *fx = self;
	if (!msg->to[0]) {
		snprintf(err, err_size, "the account has no email address");
		return DUN_E_INVALID;
	}
	return dun_smtp_send(&fx->smtp, msg->to, msg->subject, msg->body, msg->message_id, err,
			     err_size);
}

static const struct dun_mailer_ops smtp_mailer_ops = {.name = "smtp", .send = smtp_mail};

static enum dun_err open_smtp(const struct dun_config *cfg, bool check, struct dun_effects *fx,
			      char *err, size_t err_size)
{
	fx->smtp.url = cfg->smtp_url;
	fx->smtp.from = cfg->smtp_from;
	fx->smtp.username = cfg->smtp_username[0] ? cfg->smtp_username : NULL;
	fx->smtp.password = cfg->smtp_password[0] ? cfg->smtp_password : NULL;
	fx->smtp.timeout_ms = (long)cfg->smtp_timeout_ms;
	fx->smtp.ca_file = cfg->smtp_ca_file[0] ? cfg->smtp_ca_file : NULL;
	fx->smtp.tls = strncmp(cfg->smtp_url, "smtps://", 8) == 0 ? DUN_SMTP_TLS_IMPLICIT
								  : DUN_SMTP_TLS_STARTTLS;
	if (cfg->smtp_tls[0] && !dun_smtp_tls_parse(cfg->smtp_tls, &fx->smtp.tls)) {
		snprintf(err, err_size, "[email] smtp_tls: none, starttls or implicit, not \"%s\"",
			 cfg->smtp_tls);
		return DUN_E_CONFIG;
	}
	enum dun_err e = dun_smtp_config_validate(&fx->smtp, err, err_size);
	if (e == DUN_OK && check)
		e = dun_smtp_check(&fx->smtp, err, err_size);
	if (e != DUN_OK)
		return e;
	fx->mailer.ops = &smtp_mailer_ops;
	fx->mailer.self = fx;
	/* A claim must outlast the longest send, or a slow send could be taken over. */
	int64_t lease_s = 2 * (cfg->smtp_timeout_ms / 1000) + 30;
	fx->mailer.claim_lease_s =
	    lease_s > DUN_EMAIL_LEASE_S_DEFAULT ? lease_s : DUN_EMAIL_LEASE_S_DEFAULT;
	return DUN_OK;
}

/* Ask the platform GET {base_url}/health with the token (docs/platform-api.md). */
static enum dun_err probe_platform(const struct dun_config *cfg, struct dun_effects *fx, char *err,
				   size_t err_size)
{
	char url[DUN_CONFIG_STR + 16];
	size_t n = strlen(cfg->platform_base_url);
	while (n > 0 && cfg->platform_base_url[n - 1] == '/')
		n--;
	snprintf(url, sizeof url, "%.*s/health", (int)n, cfg->platform_base_url);
	char auth[300];
	const char *headers[2] = {"Accept: application/json", NULL};
	int n_headers = 1;
	if (cfg->platform_token[0]) {
		snprintf(auth, sizeof auth, "Authorization: Bearer %s", cfg->platform_token);
		headers[n_headers++] = auth;
	}
	long timeout_ms = cfg->platform_timeout_ms < 5000 ? (long)cfg->platform_timeout_ms : 5000;
	struct dun_http_client *client = dun_http_client_new(timeout_ms);
	struct dun_http_reply reply;
	dun_http_client_send(client, "GET", url, headers, n_headers, NULL, 0, &reply);
	dun_http_client_destroy(client);
	if (reply.outcome != DUN_HTTP_ANSWERED) {
		snprintf(fx->warning, sizeof fx->warning,
			 "[platform] base_url: the platform did not answer (%s); calls wait in "
			 "the outbox until it does",
			 reply.error);
		return DUN_OK;
	}
	if (reply.status == 401 || reply.status == 403) {
		char shown[DUN_CONFIG_STR + 16];
		dun_input_redact_url(url, shown, sizeof shown);
		snprintf(err, err_size,
			 "[platform] token: the platform refused it (HTTP %ld from GET %s); set "
			 "token or DUNNING_PLATFORM_TOKEN",
			 reply.status, shown);
		return DUN_E_CONFIG;
	}
	if ((reply.status < 200 || reply.status >= 300) && reply.status != 404)
		snprintf(fx->warning, sizeof fx->warning,
			 "[platform] base_url: the health check answered %s", reply.error);
	return DUN_OK;
}

static enum dun_err open_platform(const struct dun_config *cfg, struct dun_db *db, bool check,
				  struct dun_effects *fx, char *err, size_t err_size)
{
	if (strcmp(cfg->platform_kind, "http") != 0) {
		fx->platform = dun_local_platform(db);
		return DUN_OK;
	}
	enum dun_err e = dun_http_url_check(cfg->platform_base_url, "[platform] base_url", true,
					    cfg->platform_token[0] != '\0', err, err_size);
	if (e != DUN_OK)
		return e;
	if (check) {
		e = probe_platform(cfg, fx, err, err_size);
		if (e != DUN_OK)
			return e;
	}
	fx->platform = dun_http_platform(db);
	struct dun_platform_reader *r = &fx->platform_reader;
	snprintf(r->base_url, sizeof r->base_url, "%s", cfg->platform_base_url);
	snprintf(r->token, sizeof r->token, "%s", cfg->platform_token);
	r->budget_ms = (long)cfg->platform_read_timeout_ms;
	r->batch = (int)cfg->platform_read_batch;
	fx->platform.reader = r;
	return DUN_OK;
}

static enum dun_err check_events(const struct dun_config *cfg, char *err, size_t err_size)
{
	for (int i = 0; i < cfg->n_event_endpoints; i++) {
		char what[48];
		snprintf(what, sizeof what, "[events] endpoints (URL %d)", i + 1);
		enum dun_err e =
		    dun_http_url_check(cfg->event_endpoints[i], what, false, false, err, err_size);
		if (e != DUN_OK)
			return e;
		for (int k = 0; k < i; k++)
			if (!strcmp(cfg->event_endpoints[k], cfg->event_endpoints[i])) {
				char shown[DUN_CONFIG_STR];
				dun_input_redact_url(cfg->event_endpoints[i], shown, sizeof shown);
				snprintf(err, err_size, "[events] endpoints: %s is listed twice",
					 shown);
				return DUN_E_CONFIG;
			}
	}
	if (cfg->n_event_endpoints > 0 && !cfg->event_secret[0]) {
		snprintf(err, err_size,
			 "[events] endpoints are set but secret is not: events are signed (set "
			 "secret or DUNNING_EVENTS_SECRET)");
		return DUN_E_CONFIG;
	}
	if (cfg->event_secret[0] && strlen(cfg->event_secret) < EVENT_SECRET_MIN) {
		snprintf(err, err_size, "[events] secret: at least %d characters",
			 EVENT_SECRET_MIN);
		return DUN_E_CONFIG;
	}
	return DUN_OK;
}

enum dun_err dun_effects_open(const struct dun_config *cfg, struct dun_db *db, bool check,
			      struct dun_effects *fx, char *err, size_t err_size)
{
	memset(fx, 0, sizeof *fx);
	const char *dir = cfg->templates_dir[0] ? cfg->templates_dir : dun_data_templates_dir();
	enum dun_err e = dun_template_set_load(dir, &fx->templates, err, err_size);
	if (e != DUN_OK)
		return e;
	fx->template_renderer.templates = fx->templates;
	fx->template_renderer.support_email = cfg->support_email;
	fx->template_renderer.pay_bad_debt_url = cfg->pay_bad_debt_url;
	fx->renderer = dun_template_renderer(&fx->template_renderer);
	fx->mailer = dun_log_mailer();
	snprintf(fx->from, sizeof fx->from, "%s", cfg->smtp_from);
	fx->mailer.from = fx->from;
	e = check_events(cfg, err, err_size);
	if (e == DUN_OK && !strcmp(cfg->email_transport, "smtp"))
		e = open_smtp(cfg, check, fx, err, err_size);
	if (e == DUN_OK)
		e = open_platform(cfg, db, check, fx, err, err_size);
	if (e != DUN_OK) {
		dun_effects_close(fx);
		return e;
	}
	fx->mailer.from = fx->from;
	return DUN_OK;
}

void dun_effects_close(struct dun_effects *fx)
{
	dun_template_set_destroy(fx->templates);
	fx->templates = NULL;
}
