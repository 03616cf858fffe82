/*
 * panel.h — the support panel of `dunning serve`, under /panel/: pages
 * rendered on the server for the people of support (sign-in per person,
 * search, the account page, recompute, pay-bad-debt link, kill switch,
 * dead triggers, outboxes, rollout, drift). See docs/panel.md.
 */
#ifndef DUN_PANEL_H
#define DUN_PANEL_H

#include "server/http.h"

struct dun_service;
struct dun_panel;

struct dun_panel *dun_panel_new(struct dun_service *svc);
/* Free; NULL is a no-op. Only when no request is in flight. */
void dun_panel_destroy(struct dun_panel *p);

/* Route handlers (service.c lists them); arg is the struct dun_service. */
void dun_panel_get(void *arg, struct dun_http_request *req);  /* every GET page */
void dun_panel_post(void *arg, struct dun_http_request *req); /* every form */

#endif
