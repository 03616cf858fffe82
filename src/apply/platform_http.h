/*
 * platform_http.h — EXECUTE: the user's platform over HTTP, through an
 * outbox (see platform_http.c, outbox_sender.h and docs/platform-api.md).
 */
#ifndef DUN_PLATFORM_HTTP_H
#define DUN_PLATFORM_HTTP_H

#include "apply/effects.h"
#include "store/db.h"

/*
 * A platform whose operations queue the call in db's platform_outbox and
 * set the engine's view of the account in db's platform table. db is
 * borrowed and must be the applier's connection (the operations run inside
 * its transaction).
 */
struct dun_platform dun_http_platform(struct dun_db *db);

#endif
