/*
 * effects.h — the seams of the applier towards the platform and email.
 *
 * The platform is the user's system that owns accounts (ban, entitlement,
 * resource flags); email is whatever delivers messages. Each is a table of
 * operations so the built-in local implementations (a table in the engine
 * DB; the email log itself) and the real ones (HTTP platform, SMTP) plug in
 * without touching the applier.
 *
 * A platform operation may answer DUN_OK having only queued the call (an
 * outbox): the applier treats "accepted for delivery" as applied, and the
 * next recompute sees what is still pending through GATHER.
 */
#ifndef DUN_EFFECTS_H
#define DUN_EFFECTS_H

#include <stddef.h>
#include <stdint.h>

#include "core/model.h"
#include "gather/platform_read.h"
#include "util/err.h"

/*
 * Every operation gets the idempotency key of the call (the consequence key
 * and the decision: "<key>/d<decision_id>") and the decision that planned it.
 * in_engine_db: the operations write only to the engine DB, through the
 * applier's connection (the local table; the HTTP platform's outbox), so the
 * applier runs them inside the transaction that records them as applied.
 */
struct dun_platform_ops {
	const char *name;
	bool in_engine_db;
	enum dun_err (*ban)(void *self, const char *account_id, bool banned, const char *idem_key,
			    int64_t decision_id, char *err, size_t err_size);
	enum dun_err (*set_entitlement)(void *self, const char *account_id,
					enum dun_entitlement level, const char *idem_key,
					int64_t decision_id, char *err, size_t err_size);
	enum dun_err (*remove_resource_flags)(void *self, const char *account_id,
					      const char *idem_key, int64_t decision_id, char *err,
					      size_t err_size);
};

struct dun_platform {
	const struct dun_platform_ops *ops;
	void *self;
	/* The read side GATHER uses (gather/platform_read.h): NULL for the
	 * local platform, whose tables GATHER reads in the engine DB. */
	const struct dun_platform_reader *reader;
};

/* One rendered email, ready to deliver. */
struct dun_email_msg {
	const char *key;	/* the dedup key */
	const char *message_id; /* stable, derived from the key */
	const char *to;
	const char *subject;
	const char *body;
};

struct dun_mailer_ops {
	const char *name;
	enum dun_err (*send)(void *self, const struct dun_email_msg *msg, char *err,
			     size_t err_size);
};

struct dun_mailer {
	const struct dun_mailer_ops *ops;
	void *self;
	/* The sender address; its domain qualifies the Message-IDs (NULL or
	 * "": "dunning.local"). */
	const char *from;
	/* How long a claim to send one email lasts, in seconds: longer than
	 * one send can take (0: DUN_EMAIL_LEASE_S_DEFAULT). */
	int64_t claim_lease_s;
};

#endif
