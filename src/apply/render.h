/*
 * render.h — turns a SEND_EMAIL consequence into subject and body: picks
 * what the email says from the snapshot and the desired state (which
 * invoices, how much, which link, what happens next and when) and renders
 * the kind's template.
 */
#ifndef DUN_RENDER_H
#define DUN_RENDER_H

#include "apply/apply.h"
#include "apply/email/template.h"

struct dun_template_renderer {
	const struct dun_template_set *templates; /* borrowed */
	const char *support_email;		  /* borrowed; may be "" */
};

/* A renderer over r (borrowed; must outlive the returned value). */
struct dun_renderer dun_template_renderer(struct dun_template_renderer *r);

/* Fill vars/invoices for ctx; invoices has room for ctx's n_invoices. */
void dun_render_vars(const struct dun_email_ctx *ctx, const char *support_email,
		     struct dun_email_vars *vars, struct dun_email_invoice *invoices);

#endif
