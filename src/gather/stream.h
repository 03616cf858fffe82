/*
 * stream.h — GATHER for every account at once, for the drift scan.
 *
 * dun_gather() reads one account with about ten point queries; over a
 * million accounts that is ten million statement executions, most of the
 * scan's time. A stream instead runs one query per store over the whole
 * table, each ordered by account id, and walks them in lockstep (a merge
 * join), handing out one snapshot per account in account id order. There is
 * no per-account SQL and no per-account allocation: the snapshot's buffers
 * are reused and only grow.
 *
 * The snapshot of an account is exactly the one dun_gather() builds for it
 * (bench/test_stream_equiv.c checks that field by field).
 *
 * Reads happen in windows: between dun_stream_pause() and the next
 * dun_stream_next() no statement is open, so no read transaction spans the
 * caller's writes (the scan queues triggers there) and the WAL can be
 * checkpointed. The next window starts after the last account returned.
 * Within a window, each query reads a bounded range of accounts
 * (DUN_STREAM_RANGE), so a backend that fetches a query's whole result at
 * once holds one range in memory, never the rest of a table.
 */
#ifndef DUN_STREAM_H
#define DUN_STREAM_H

#include "gather/gather.h"

/* The ordered reads, one per store (see stream.c for the SQL). */
enum dun_stream_query {
	DUN_STREAM_ACCOUNTS,
	DUN_STREAM_CUSTOMERS,
	DUN_STREAM_PROVIDER_CUSTOMERS,
	DUN_STREAM_PLATFORM,
	DUN_STREAM_DUNNING,
	DUN_STREAM_EPISODES,
	DUN_STREAM_EMAILS,
	DUN_STREAM_SUBSCRIPTIONS,
	DUN_STREAM_INVOICES,
	DUN_STREAM_DOCS,
	DUN_STREAM_ATTEMPTS,
};
enum { DUN_STREAM__COUNT = DUN_STREAM_ATTEMPTS + 1 };

struct dun_stream {
	struct dun_db *db; /* borrowed */
	struct dun_stmt *st[DUN_STREAM__COUNT];
	/*
	 * Per read: the account id of its current row, NULL when it has none
	 * (read once per row; valid until the read steps again).
	 */
	const char *key[DUN_STREAM__COUNT];
	struct dun_stmt *range; /* the last account of the next range */
	bool open;		/* statements bound and stepped in this window */
	bool done;		/* no account after the last one returned */
	char *hi;		/* the last account of the range being read */
	size_t hi_cap;
	char *last; /* the last account returned (NULL before the first) */
	size_t last_cap;
	int *inv_first; /* per invoice: index of its first attempt */
	int inv_first_cap;
	bool *inv_attach; /* per invoice: whether its id is short enough to match */
	int inv_attach_cap;
	size_t *inv_id; /* per invoice: offset of its whole id in ids */
	int inv_id_cap;
	char *ids; /* the whole ids of the invoices being read, each NUL-ended */
	size_t ids_cap;
	char *customer; /* the whole id of the account's customer being read */
	size_t customer_cap;
};

/*
 * The page cache of the connection while a stream is open (KiB; restored
 * to DUN_DB_CACHE_KB by dun_stream_free). Until schema migration 20 the
 * scan probed two tables at random (the provider's customers by customer
 * id, subscriptions by customer), whose pages no longer fit the default
 * cache at a million accounts: it was 48 MB then. Every read now walks its
 * table in key order and reads each page once, so the default suffices:
 * at a million accounts the scan reads the same 576,399 pages from the
 * file with 16 MB as with 48 MB, at a peak RSS of 20.6 MB instead of
 * 54.5 MB (docs/performance.md, "The million accounts"). Kept as a knob.
 */
#define DUN_STREAM_CACHE_KB DUN_DB_CACHE_KB

/*
 * Set up s over db (borrowed; it must outlive s). Prepares the queries and
 * sets the page cache (DUN_STREAM_CACHE_KB); DUN_E_STORE when the schema
 * lacks what they need (err says why).
 */
enum dun_err dun_stream_init(struct dun_stream *s, struct dun_db *db, char *err, size_t err_size);
void dun_stream_free(struct dun_stream *s);

/*
 * The next account, in id order, into snap (whose buffers are reused).
 * *got is false, and snap untouched, when every account was returned.
 * snap->state is valid until the next call that fills snap.
 */
enum dun_err dun_stream_next(struct dun_stream *s, struct dun_snapshot *snap, bool *got);

/* Close the current read window (reset every statement); see above. */
void dun_stream_pause(struct dun_stream *s);

/* The most accounts one execution of the stream's queries reads. */
enum { DUN_STREAM_RANGE = 4096 };

/*
 * The SQL of one ordered read, for the benchmark's raw-read baseline: ?1 is
 * the account id to start after, ?2 the last account id to read; every
 * query is ordered by account id.
 */
const char *dun_stream_sql(enum dun_stream_query q);
/*
 * The SQL that gives the last account id of a range: ?1 the account id to
 * start after, ?2 the most accounts in the range; NULL when none is left.
 */
const char *dun_stream_range_sql(void);

#endif
