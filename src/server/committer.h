/*
 * committer.h — group commit of webhook events.
 *
 * Request threads hand verified, parsed event bodies to one committer thread, which
 * makes a whole batch durable in ONE SQLite transaction (one fsync with
 * synchronous=FULL) and only then tells each request how its event fared.
 * See committer.c for the design.
 */
#ifndef DUN_COMMITTER_H
#define DUN_COMMITTER_H

#include <stdbool.h>
#include <stddef.h>

#include "inbox/ingest.h"
#include "server/metrics.h"

/*
 * One event waiting to be made durable. The submitter owns it and keeps it
 * (and body) alive until done is called; done is the committer's last
 * access, so the submitter may free it from there or any time after.
 */
struct dun_commit_item {
	const char *body; /* borrowed */
	size_t len;
	json_t *ev; /* borrowed: body parsed by dun_ingest_parse(), or NULL to parse here */
	/* filled in by the committer before done */
	enum dun_err err;	      /* DUN_OK: stored durably (or a known duplicate) */
	struct dun_ingest_result res; /* when err is DUN_OK */
	char err_text[256];	      /* when err is not DUN_OK; may quote the body */
	void (*done)(struct dun_commit_item *item);
	struct dun_commit_item *next; /* the committer's queue */
};

struct dun_committer;

/*
 * Start the committer thread on its own connection to db_path. At most
 * batch_max events per transaction. After a batch that enqueued triggers,
 * triggered(arg) is called (to wake the workers). metrics is borrowed.
 */
enum dun_err dun_committer_start(const char *db_path, int batch_max, struct dun_metrics *metrics,
				 void (*triggered)(void *arg), void *arg,
				 struct dun_committer **out, char *err, size_t err_size);
/*
 * Called on the committer thread for each new (not duplicate) event right
 * after it was ingested, inside the event's savepoint of the batch's
 * transaction, with the committer's connection: what it writes commits with
 * the event, in the same fsync. A non-OK answer (err says why) rolls the
 * event back and answers its request with that error; the rest of the
 * batch commits. It must be quick: it runs in the serial path of every
 * webhook.
 */
typedef enum dun_err (*dun_committer_observe_fn)(void *arg, struct dun_db *db, json_t *event,
						 char *err, size_t err_size);
/*
 * Set the observer. The service uses it to let the simulated provider
 * learn the objects webhooks describe. Thread-safe; NULL clears; takes
 * effect from the next batch.
 */
void dun_committer_set_observer(struct dun_committer *c, dun_committer_observe_fn observe,
				void *arg);
/* Queue item; its done callback runs on the committer thread. Thread-safe. */
void dun_committer_submit(struct dun_committer *c, struct dun_commit_item *item);
/*
 * Wait until no event is queued or being committed, or max_ms passed. The
 * workers call it before each claim: acknowledging webhooks comes first,
 * recomputes catch up in the gaps (see workers.c).
 */
void dun_committer_wait_idle(struct dun_committer *c, int64_t max_ms);
/*
 * Whether events are queued or being committed: a worker inside a batch
 * asks it between accounts and commits early when it is true. Thread-safe.
 */
bool dun_committer_busy(struct dun_committer *c);
/*
 * Whether nothing is queued or committing and no batch has ended for the
 * last ms milliseconds: no burst of webhooks in progress. Thread-safe.
 */
bool dun_committer_quiet(struct dun_committer *c, int64_t ms);
/* Whether the committer thread is running (for /readyz). */
bool dun_committer_running(struct dun_committer *c);
/* Commit everything still queued, then stop the thread and close; NULL is a no-op. */
void dun_committer_stop(struct dun_committer *c);

#endif
