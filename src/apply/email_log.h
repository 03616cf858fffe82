/*
 * email_log.h — EXECUTE: who may send an email, decided in the email log.
 *
 * The `emails` table holds one row per dedup key. Before anything is handed
 * to a mailer, the would-be sender CLAIMS the key: one atomic statement moves
 * the row to `sending` with its owner and the time, and only the claimer
 * sends. Several workers, several engines on one database and a legacy
 * system (through `dunning email claim`) all go through dun_email_claim(), so
 * at most one of them sends a key at a time, and none sends a key already
 * `sent`. See email_log.c and docs/email.md ("Exactly once") for the states
 * and the one crash window that remains.
 */
#ifndef DUN_EMAIL_LOG_H
#define DUN_EMAIL_LOG_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "store/db.h"
#include "util/err.h"

/*
 * How long a `sending` claim protects its owner when the owner cannot be
 * seen to be gone (another host, a legacy system). Longer than any send,
 * and longer than the inbox's lease (300 s by default): a worker whose
 * account was taken over after a stall still owns the email it is sending.
 */
#define DUN_EMAIL_LEASE_S_DEFAULT 900
#define DUN_EMAIL_OWNER_MAX	  160
#define DUN_EMAIL_MESSAGE_ID_MAX  256

/* What a claim records about the email. Borrowed for the call; NULL reads as "". */
struct dun_email_intent {
	const char *key;
	const char *account_id;
	const char *kind;
	const char *invoice_id;
	const char *to;
	const char *subject;
	const char *body;
	const char *message_id; /* proposed; a Message-ID already recorded for the key wins */
	const char *source;	/* "engine", or the legacy system's name */
};

enum dun_email_claim_result {
	DUN_EMAIL_CLAIMED,	/* the caller owns the key now: send, then settle */
	DUN_EMAIL_ALREADY_SENT, /* someone sent it: do not send */
	DUN_EMAIL_BUSY,		/* someone else holds a live claim: try later */
};

struct dun_email_claim {
	enum dun_email_claim_result result;
	char message_id[DUN_EMAIL_MESSAGE_ID_MAX]; /* CLAIMED: the Message-ID to send with */
	char owner[DUN_EMAIL_OWNER_MAX];	   /* BUSY: who holds the claim */
	int64_t claimed_at;			   /* BUSY: since when */
};

/*
 * This process's owner name for claims: "<host>:<pid namespace>:<pid>". Two
 * processes never share it; on the same host and pid namespace a claim
 * whose owner process has exited can be recognized at once.
 */
void dun_email_owner_self(char *out, size_t out_size);

/*
 * Whether owner names a process of this host and pid namespace that no
 * longer exists. False for any other owner (another host, a legacy name, a
 * live process): those claims end only by their lease.
 */
bool dun_email_owner_is_gone(const char *owner);

/*
 * Claim in->key for owner. now (the engine's clock) dates a new row; wall
 * (wall-clock seconds, never the settable clock) times the claim and its
 * lease. The claim succeeds when the key is new, `pending`, `failed` or
 * `dead`, or `sending` under a claim older than lease_s or whose owner is
 * gone. A claim of an existing row keeps its Message-ID and refreshes
 * recipient, subject and body when given. Borrows everything.
 */
enum dun_err dun_email_claim(struct dun_db *db, const struct dun_email_intent *in,
			     const char *owner, int64_t now, int64_t wall, int64_t lease_s,
			     struct dun_email_claim *out);

/*
 * Queue a rendered email for the email sender (email_sender.h): the row
 * becomes `pending` under in->key, dated now. Meant to run inside the
 * transaction that records the decision, so the email and its decision
 * commit together. A key already `sent` is left alone and *already_sent is
 * set; `dead` is left alone too; a `sending` claim keeps its owner and only
 * gets the text it lacks; a `failed` key is queued again.
 */
enum dun_err dun_email_queue(struct dun_db *db, const struct dun_email_intent *in, int64_t now,
			     bool *already_sent);

/*
 * Settle a claim: sent marks the key `sent` (whoever holds it: a message
 * that left is sent); otherwise it becomes `failed` with error, if owner
 * still holds it, so the next plan claims it again with the same Message-ID.
 */
enum dun_err dun_email_settle(struct dun_db *db, const char *key, const char *owner, bool sent,
			      const char *error, int64_t now);

/*
 * Record that in->key was sent by someone who did not claim it first (a
 * legacy system reporting after the fact). Inserts the row as `sent`, or
 * marks an existing unsent row `sent`. *was_sent tells whether the key had
 * already been sent before (a duplicate happened).
 */
enum dun_err dun_email_record_sent(struct dun_db *db, const struct dun_email_intent *in,
				   int64_t now, bool *was_sent);

#endif
