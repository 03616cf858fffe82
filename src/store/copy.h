/*
 * copy.h — moving a store from the embedded SQLite file to PostgreSQL
 * (`dunning store copy`, see copy.c).
 */
#ifndef DUN_STORE_COPY_H
#define DUN_STORE_COPY_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "util/err.h"

#define DUN_COPY_NAME_MAX 64

/* One table as copied and verified. */
struct dun_copy_table {
	char name[DUN_COPY_NAME_MAX];
	int64_t rows_from, rows_to;
	/* An order-independent checksum of every row's values, on each side. */
	uint64_t sum_from, sum_to;
};

/* What a copy did; dun_copy_report_free() releases it. */
struct dun_copy_report {
	int schema_version;
	int n_tables;
	struct dun_copy_table *tables;
	int64_t rows;
	int identities; /* identity columns advanced past the copied ids */
	bool verified;	/* every table's count and checksum agree */
};

struct dun_db;

/*
 * A check of both stores after every table's count and checksum agreed and
 * before the commit, inside the copy's transactions (from is read in its
 * snapshot, to sees the copied rows): anything but DUN_OK, with err set,
 * commits nothing. `dunning store copy` runs a drift scan of both.
 */
typedef enum dun_err (*dun_copy_check_fn)(struct dun_db *from, struct dun_db *to, void *arg,
					  char *err, size_t err_size);

/*
 * Copy the SQLite database at from (a file this binary's schema describes)
 * into the PostgreSQL database at to, which must hold no rows: the target
 * gets the schema by the migrations and every table's rows in one
 * transaction, identity columns are advanced past the copied ids, and each
 * table's row count and content checksum are compared before the commit.
 * Then check (may be NULL) runs with arg. Nothing is written unless
 * everything agrees. from and to are borrowed; out is filled (also on a
 * failed verification, which is DUN_E_GUARD). err says why on failure,
 * never with the URL's password.
 */
enum dun_err dun_store_copy(const char *from, const char *to, dun_copy_check_fn check, void *arg,
			    struct dun_copy_report *out, char *err, size_t err_size);

/* Release what dun_store_copy() allocated in r. */
void dun_copy_report_free(struct dun_copy_report *r);

#endif
