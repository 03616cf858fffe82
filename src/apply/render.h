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
	/*
	 * Where a customer in bad debt goes to pay (borrowed; may be "" or
	 * NULL): a page of the user's app that calls pay-bad-debt and sends
	 * the customer on to the consolidated invoice. "{account}" in it is
	 * replaced by the account id. Used by the bad_debt email when no
	 * consolidated invoice is open yet.
	 */
	const char *pay_bad_debt_url;
};

/* A renderer over r (borrowed; must outlive the returned value). */
struct dun_renderer dun_template_renderer(struct dun_template_renderer *r);

/*
 * Fill vars/invoices for ctx; invoices has room for ctx's n_invoices, and
 * url (url_size bytes) holds a pay link built from r's pay_bad_debt_url
 * (vars->pay_url may point into it).
 */
void dun_render_vars(const struct dun_email_ctx *ctx, const struct dun_template_renderer *r,
		     struct dun_email_vars *vars, struct dun_email_invoice *invoices, char *url,
		     size_t url_size);

#endif
