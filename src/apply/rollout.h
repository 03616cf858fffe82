/*
 * rollout.h — the gate that chooses observe or active per account.
 *
 * The rollout state lives in one place: the engine database (settings keys
 * `mode` and `rollout.percent`, the table rollout_list). The CLI, `serve`
 * and the admin API all read it from there. A database that has no rollout
 * row (a new one, or one created before the rollout existed) is observe at
 * 0%: nothing is written until a person turns writes on.
 *
 * Order: the global mode (observe wins everywhere), then the allow-list
 * (active), then the deny-list (observe), then a stable percentage: an
 * account is active when hash(account id) mod 10000 < percent × 100. The
 * hash is FNV-1a 64, so the same accounts stay in as the percentage grows
 * (5 → 10 → 25 → 50 → 100) and rolling back is lowering the number.
 *
 * A configuration file's [rollout] section does not set anything: it states
 * what the operator expects the database to say. When the two disagree,
 * dun_rollout_check_expected() says so and the commands that would write
 * (work, serve, recompute, ...) refuse to start.
 */
#ifndef DUN_ROLLOUT_H
#define DUN_ROLLOUT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "store/db.h"

enum dun_mode { DUN_MODE_OBSERVE, DUN_MODE_ACTIVE };

const char *dun_mode_name(enum dun_mode m);

struct dun_rollout {
	bool global_observe;
	double percent;	  /* 0..100 */
	bool mode_stored; /* false: no `mode` row, the safe default applies */
};

/* Read the global settings (mode, rollout.percent) from db. */
enum dun_err dun_rollout_load(struct dun_db *db, struct dun_rollout *r);
/* Write the safe defaults (observe, 0%) for the keys db does not have yet. */
enum dun_err dun_rollout_init_defaults(struct dun_db *db);
/*
 * The mode for one account; *why (may be NULL) gets a static explanation.
 * dun_rollout_mode reads the account's allow/deny list row from db (a row
 * that cannot be read counts as none: use it only for display);
 * dun_rollout_mode_of decides from the list as GATHER read it ("allow",
 * "deny" or "" for none, dun_snapshot.rollout_list).
 */
enum dun_mode dun_rollout_mode(struct dun_db *db, const struct dun_rollout *r,
			       const char *account_id, const char **why);
enum dun_mode dun_rollout_mode_of(const struct dun_rollout *r, const char *account_id,
				  const char *list, const char **why);
/*
 * Whether every account is active (mode active, 100%, nobody denied): the
 * drift scan then skips asking per account.
 */
bool dun_rollout_all_active(struct dun_db *db, const struct dun_rollout *r);
/* The stable bucket of an account, 0..9999. */
uint32_t dun_rollout_bucket(const char *account_id);

/*
 * Compare what a configuration expects (mode "" and percent < 0: no
 * expectation) with the stored state. DUN_OK when they agree; DUN_E_CONFIG
 * with err naming both values and the command that reconciles them.
 */
enum dun_err dun_rollout_check_expected(struct dun_db *db, const char *mode, double percent,
					char *err, size_t err_size);

/*
 * The gate in front of a higher percentage: the newest parity report must
 * have passed its thresholds, be at most max_age_s old at now, and cover a
 * window of at least window_s that ends no earlier than now - max_age_s.
 * DUN_OK (with *report_id) when it does; DUN_E_GUARD with why otherwise.
 */
struct dun_rollout_gate {
	int64_t window_s;
	int64_t max_age_s;
};
enum dun_err dun_rollout_gate_check(struct dun_db *db, int64_t now,
				    const struct dun_rollout_gate *g, int64_t *report_id, char *why,
				    size_t why_size);

/* Record one change of the rollout (rollout_log). */
enum dun_err dun_rollout_log(struct dun_db *db, int64_t now, const char *action, const char *value,
			     bool forced, int64_t report_id, const char *note);

#endif
