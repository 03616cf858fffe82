/*
 * admin.h — the admin HTTP API (bearer token), health, readiness and
 * metrics endpoints. See docs/http-api.md for every endpoint.
 */
#ifndef DUN_ADMIN_H
#define DUN_ADMIN_H

#include <stdint.h>

#include "server/http.h"
#include "store/db.h"

struct dun_service;
struct dun_admin;

struct dun_admin *dun_admin_new(struct dun_service *svc);
/* Free; every wait must have been answered (dun_admin_release_all). NULL is a no-op. */
void dun_admin_destroy(struct dun_admin *a);

/*
 * The workers' hook (dun_workers_settled_fn, arg = the struct dun_admin):
 * answers support-recompute requests waiting for account_id whose trigger
 * has been settled.
 */
void dun_admin_settled(void *arg, struct dun_db *db, const char *account_id);
/* Answer 202 to waits whose time is up. */
void dun_admin_expire(struct dun_admin *a);
/* Answer 202 to every wait (the service is stopping). */
void dun_admin_release_all(struct dun_admin *a);

/* Route handlers; arg is the struct dun_service. */
void dun_admin_healthz(void *arg, struct dun_http_request *req);
void dun_admin_readyz(void *arg, struct dun_http_request *req);
void dun_admin_metrics(void *arg, struct dun_http_request *req);
void dun_admin_account(void *arg, struct dun_http_request *req);
void dun_admin_recompute(void *arg, struct dun_http_request *req);
void dun_admin_pay_bad_debt(void *arg, struct dun_http_request *req);
void dun_admin_events(void *arg, struct dun_http_request *req);
void dun_admin_retry(void *arg, struct dun_http_request *req);

#endif
