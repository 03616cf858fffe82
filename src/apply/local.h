/*
 * local.h — the built-in platform (a table in the engine DB) and the
 * log-only mailer of the embedded default (see local.c).
 */
#ifndef DUN_LOCAL_H
#define DUN_LOCAL_H

#include "apply/effects.h"
#include "store/db.h"

/* A platform backed by the `platform` table of db (borrowed). */
struct dun_platform dun_local_platform(struct dun_db *db);
/* A mailer that delivers nothing: the email log is the record. */
struct dun_mailer dun_log_mailer(void);

#endif
