/*
 * webhook.h — POST /webhooks/stripe: verify, make durable, acknowledge.
 */
#ifndef DUN_WEBHOOK_H
#define DUN_WEBHOOK_H

#include "server/http.h"

/* The route handler; arg is the struct dun_service. */
void dun_webhook_handle(void *arg, struct dun_http_request *req);

#endif
