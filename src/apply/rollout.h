/*
 * rollout.h — the gate that chooses observe or active per account.
 *
 * Order: the global mode (settings key `mode`: observe | active; observe
 * wins everywhere), then the allow-list (active), then the deny-list
 * (observe), then a stable percentage: an account is active when
 * hash(account id) mod 10000 < percent × 100. The hash is FNV-1a 64, so the
 * same accounts stay in as the percentage grows (5 → 10 → 25 → 50 → 100)
 * and rolling back is lowering the number.
 */
#ifndef DUN_ROLLOUT_H
#define DUN_ROLLOUT_H

#include <stdbool.h>
#include <stdint.h>

#include "store/db.h"

enum dun_mode { DUN_MODE_OBSERVE, DUN_MODE_ACTIVE };

const char *dun_mode_name(enum dun_mode m);

struct dun_rollout {
	bool global_observe;
	double percent; /* 0..100 */
};

/* Read the global settings (mode, rollout.percent) from db. */
enum dun_err dun_rollout_load(struct dun_db *db, struct dun_rollout *r);
/* The mode for one account; *why (may be NULL) gets a static explanation. */
enum dun_mode dun_rollout_mode(struct dun_db *db, const struct dun_rollout *r,
			       const char *account_id, const char **why);
/* The stable bucket of an account, 0..9999. */
uint32_t dun_rollout_bucket(const char *account_id);

#endif
