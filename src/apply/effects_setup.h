/*
 * effects_setup.h — building the applier's seams (provider aside) from the
 * service configuration: the platform, the mailer and the email renderer.
 * `dunning serve`, `dunning config check` and the CLI with --config all go
 * through here, so a bad setting fails the same way everywhere, at start-up.
 */
#ifndef DUN_EFFECTS_SETUP_H
#define DUN_EFFECTS_SETUP_H

#include "apply/apply.h"
#include "apply/email/smtp.h"
#include "apply/render.h"
#include "config/config.h"

struct dun_effects {
	struct dun_platform platform;
	struct dun_mailer mailer;
	struct dun_renderer renderer;
	/* owned state behind the seams */
	struct dun_template_set *templates;
	struct dun_template_renderer template_renderer;
	struct dun_smtp_config smtp;
	void *platform_state;
	struct dun_platform_reader platform_reader;
	char from[256];
	/* Something start-up should print but that is not an error (the
	 * platform did not answer the check: calls wait in the outbox). */
	char warning[512];
};

/*
 * Set up fx from cfg over db (borrowed). Always checked: the templates
 * (every kind present, no unknown placeholder), the SMTP settings, the
 * platform's base_url and token, the event endpoints and their secret.
 * With check, also talk to the outside so a wrong setting fails now: SMTP
 * connects and authenticates; the HTTP platform is asked GET /health, where
 * a refused token fails and an unreachable platform is only a warning (its
 * calls wait in the outbox). err names the setting at fault. fx must stay at a fixed address while in
 * use (the seams point into it).
 */
enum dun_err dun_effects_open(const struct dun_config *cfg, struct dun_db *db, bool check,
			      struct dun_effects *fx, char *err, size_t err_size);
void dun_effects_close(struct dun_effects *fx);

#endif
