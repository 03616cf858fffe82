/*
 * shadow.h — GATHER's half of observe mode: the shadow view of an account.
 *
 * In observe mode the engine writes nothing to the real stores; what it
 * would have written lives in the shadow tables (apply/shadow.h records
 * it). For such an account DECIDE compares the desired state with the
 * shadow, not with the real stores: the legacy system writes those, and
 * the legacy acting first must not hide the engine's own decision.
 *
 * dun_shadow_overlay() replaces, in a gathered snapshot, every field the
 * engine itself would write (flags, ban, entitlement, resource flags,
 * invoice metadata and documents, invoices marked uncollectible,
 * cancelled subscriptions, the dunning stage, episodes, rechecks, the
 * email log) with the shadow's value; a field the shadow never wrote is
 * "untouched" (not banned, full entitlement, no flag, ...). Facts the
 * engine does not write (invoices, payments, segments, the kill switch)
 * stay as gathered.
 */
#ifndef DUN_GATHER_SHADOW_H
#define DUN_GATHER_SHADOW_H

#include "gather/gather.h"

enum dun_err dun_shadow_overlay(struct dun_db *db, struct dun_snapshot *snap);

#endif
