/*
 * effects_setup.c — the seams of the applier from configuration (see
 * effects_setup.h), and the SMTP mailer: the adapter from the applier's
 * struct dun_mailer to dun_smtp_send().
 */
#include "effects_setup.h"
#include "apply/local.h"

#include <stdio.h>
#include <string.h>

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

enum dun_err dun_effects_open(const struct dun_config *cfg, struct dun_db *db, bool check,
			      struct dun_effects *fx, char *err, size_t err_size)
{
	memset(fx, 0, sizeof *fx);
	const char *dir = cfg->templates_dir[0] ? cfg->templates_dir : DUN_DATA_DIR "/templates";
	enum dun_err e = dun_template_set_load(dir, &fx->templates, err, err_size);
	if (e != DUN_OK)
		return e;
	fx->template_renderer.templates = fx->templates;
	fx->template_renderer.support_email = cfg->support_email;
	fx->renderer = dun_template_renderer(&fx->template_renderer);
	fx->platform = dun_local_platform(db);
	fx->mailer = dun_log_mailer();
	if (!strcmp(cfg->email_transport, "smtp")) {
		fx->smtp.url = cfg->smtp_url;
		fx->smtp.from = cfg->smtp_from;
		fx->smtp.username = cfg->smtp_username[0] ? cfg->smtp_username : NULL;
		fx->smtp.password = cfg->smtp_password[0] ? cfg->smtp_password : NULL;
		fx->smtp.timeout_ms = (long)cfg->smtp_timeout_ms;
		fx->smtp.ca_file = cfg->smtp_ca_file[0] ? cfg->smtp_ca_file : NULL;
		fx->smtp.tls = strncmp(cfg->smtp_url, "smtps://", 8) == 0 ? DUN_SMTP_TLS_IMPLICIT
									  : DUN_SMTP_TLS_STARTTLS;
		if (cfg->smtp_tls[0] && !dun_smtp_tls_parse(cfg->smtp_tls, &fx->smtp.tls)) {
			snprintf(err, err_size,
				 "[email] smtp_tls: none, starttls or implicit, not \"%s\"",
				 cfg->smtp_tls);
			dun_effects_close(fx);
			return DUN_E_CONFIG;
		}
		e = dun_smtp_config_validate(&fx->smtp, err, err_size);
		if (e == DUN_OK && check)
			e = dun_smtp_check(&fx->smtp, err, err_size);
		if (e != DUN_OK) {
			dun_effects_close(fx);
			return e;
		}
		fx->mailer.ops = &smtp_mailer_ops;
		fx->mailer.self = fx;
	}
	return DUN_OK;
}

void dun_effects_close(struct dun_effects *fx)
{
	dun_template_set_destroy(fx->templates);
	fx->templates = NULL;
}
