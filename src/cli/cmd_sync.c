/*
 * cmd_sync.c — `dunning sync --config FILE`: import the provider's state
 * from Stripe into the mirror.
 *
 * For a first start against an existing Stripe account, or after the
 * mirror was lost: every customer, subscription (status all) and invoice
 * is listed from the API and folded into the mirror with the current time
 * as its version, so anything newer that a webhook brings later still
 * wins. The open and uncollectible invoices' payments are fetched too (in
 * parallel), so the mirror knows their attempts and decline codes.
 * Customers whose metadata has account_id become accounts. Every account
 * touched gets a `sync` trigger in the inbox; `dunning work` recomputes
 * them. Each page of 100 objects is its own transaction: an interrupted
 * sync keeps what it imported and can simply run again.
 */
#include "commands.h"
#include "config/config.h"
#include "core/model.h"
#include "inbox/inbox.h"
#include "provider/stripe.h"
#include "store/mirror.h"
#include "util/clock.h"
#include "util/mem.h"

#include <getopt.h>
#include <stdlib.h>
#include <string.h>

/* Invoices whose payments are fetched per batch (bounds memory). */
#define PAYMENTS_BATCH 500

struct sync {
	struct dun_cli *cli;
	int64_t version;
	const char *what; /* the kind being listed, for progress */
	long n;		  /* objects of that kind so far */
	long mapped;	  /* customers with an account_id */
	char (*accounts)[DUN_ID_MAX];
	size_t n_accounts, cap_accounts;
	char **unsettled; /* open and uncollectible invoice ids */
	size_t n_unsettled, cap_unsettled;
	char err[512];
};

static void progress(const struct sync *s)
{
	if (dun_cli_tty())
		fprintf(stderr, "\rsync: %ld %s...   ", s->n, s->what);
}

static void progress_done(void)
{
	if (dun_cli_tty())
		fprintf(stderr, "\r%60s\r", "");
}

static void touch(struct sync *s, const char *customer)
{
	char account[DUN_ID_MAX];
	if (!customer[0] ||
	    dun_mirror_account_of(s->cli->db, customer, account, sizeof account) != DUN_OK)
		return;
	if (s->n_accounts == s->cap_accounts) {
		s->cap_accounts = s->cap_accounts ? s->cap_accounts * 2 : 64;
		s->accounts = dun_realloc(s->accounts, s->cap_accounts * sizeof *s->accounts);
	}
	memcpy(s->accounts[s->n_accounts++], account, sizeof account);
}

/* Fold one page of objects into the mirror, in one transaction. */
static enum dun_err fold_page(void *user, json_t *data)
{
	struct sync *s = user;
	struct dun_db *db = s->cli->db;
	enum dun_err e = dun_db_begin(db);
	if (e != DUN_OK) {
		snprintf(s->err, sizeof s->err, "cannot begin a transaction: %s",
			 dun_db_errmsg(db));
		return e;
	}
	size_t i;
	json_t *obj;
	json_array_foreach(data, i, obj)
	{
		char customer[DUN_ID_MAX], why[256] = "";
		e = dun_mirror_upsert(db, obj, s->version, customer, NULL, why, sizeof why);
		if (e != DUN_OK) {
			json_t *id = json_object_get(obj, "id");
			snprintf(s->err, sizeof s->err, "%s %s: %s", s->what,
				 json_is_string(id) ? json_string_value(id) : "(no id)", why);
			dun_db_rollback(db);
			return e;
		}
		const char *type = json_string_value(json_object_get(obj, "object"));
		const char *status = json_string_value(json_object_get(obj, "status"));
		if (type && !strcmp(type, "customer")) {
			json_t *md = json_object_get(obj, "metadata");
			const char *acct = json_string_value(json_object_get(md, "account_id"));
			if (acct && acct[0])
				s->mapped++;
		}
		if (type && !strcmp(type, "invoice") && status &&
		    (!strcmp(status, "open") || !strcmp(status, "uncollectible"))) {
			if (s->n_unsettled == s->cap_unsettled) {
				s->cap_unsettled = s->cap_unsettled ? s->cap_unsettled * 2 : 64;
				s->unsettled = dun_realloc(s->unsettled,
							   s->cap_unsettled * sizeof *s->unsettled);
			}
			s->unsettled[s->n_unsettled++] =
			    dun_strdup(json_string_value(json_object_get(obj, "id")));
		}
		if (!type || strcmp(type, "payment_intent") != 0)
			s->n++;
		touch(s, customer);
	}
	e = dun_db_commit(db);
	if (e != DUN_OK) {
		snprintf(s->err, sizeof s->err, "cannot commit: %s", dun_db_errmsg(db));
		dun_db_rollback(db);
		return e;
	}
	progress(s);
	return DUN_OK;
}

static int cmp_account(const void *a, const void *b)
{
	return strcmp(a, b);
}

/* Sort the touched accounts and drop repeats; returns how many remain. */
static size_t unique_accounts(struct sync *s)
{
	if (!s->n_accounts)
		return 0;
	qsort(s->accounts, s->n_accounts, sizeof *s->accounts, cmp_account);
	size_t k = 1;
	for (size_t i = 1; i < s->n_accounts; i++)
		if (strcmp(s->accounts[i], s->accounts[k - 1]) != 0)
			memcpy(s->accounts[k++], s->accounts[i], sizeof *s->accounts);
	s->n_accounts = k;
	return k;
}

static int fail(struct sync *s, enum dun_err e, const char *stage, const char *err)
{
	progress_done();
	dun_cli_error("sync: %s: %s", stage, err);
	if (e == DUN_E_PROVIDER || e == DUN_E_TIMEOUT)
		dun_cli_error("sync: is [stripe] api_base (%s) reachable? Objects imported so "
			      "far are kept; run sync again.",
			      s->cli->config->stripe_api_base);
	return dun_cli_exit_code(e);
}

static void sync_free(struct sync *s)
{
	for (size_t i = 0; i < s->n_unsettled; i++)
		free(s->unsettled[i]);
	free(s->unsettled);
	free(s->accounts);
}

static int run_sync(struct sync *s, struct dun_stripe *client, long counts[4])
{
	static const struct {
		const char *path;
		const char *what;
		bool all_statuses;
	} lists[] = {
	    {"/v1/customers", "customers", false},
	    {"/v1/subscriptions", "subscriptions", true},
	    {"/v1/invoices", "invoices", false},
	};
	char err[512];
	for (size_t k = 0; k < sizeof lists / sizeof lists[0]; k++) {
		struct dun_form q;
		dun_form_init(&q);
		if (lists[k].all_statuses)
			dun_form_add(&q, "status", "all");
		s->what = lists[k].what;
		s->n = 0;
		s->err[0] = err[0] = '\0';
		enum dun_err e =
		    dun_stripe_list(client, lists[k].path, &q, fold_page, s, err, sizeof err);
		dun_form_free(&q);
		if (e != DUN_OK)
			return fail(s, e, lists[k].what, s->err[0] ? s->err : err);
		counts[k] = s->n;
	}
	/* The payments of unsettled invoices, a batch at a time. */
	s->what = "invoice payments";
	s->n = 0;
	for (size_t at = 0; at < s->n_unsettled; at += PAYMENTS_BATCH) {
		size_t n =
		    s->n_unsettled - at < PAYMENTS_BATCH ? s->n_unsettled - at : PAYMENTS_BATCH;
		json_t *arr = json_array();
		enum dun_err e = dun_stripe_invoice_payments(
		    client, (const char *const *)(s->unsettled + at), (int)n, arr, err, sizeof err);
		if (e == DUN_OK)
			e = fold_page(s, arr);
		json_decref(arr);
		if (e != DUN_OK)
			return fail(s, e, "invoice payments", s->err[0] ? s->err : err);
	}
	counts[3] = s->n;
	return DUN_EX_OK;
}

int dun_cmd_sync(struct dun_cli *cli, int argc, char **argv)
{
	static const struct option opts[] = {{"help", no_argument, NULL, 'h'}, {NULL, 0, NULL, 0}};
	int c;
	optind = 0;
	while ((c = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
		switch (c) {
		case 'h':
			printf(
			    "usage: dunning sync --config FILE\n\n"
			    "Import customers, subscriptions (every status) and invoices from\n"
			    "Stripe ([stripe] in FILE) into the provider mirror, with the\n"
			    "payments of open and uncollectible invoices. Customers whose\n"
			    "metadata has account_id become accounts; each account touched\n"
			    "gets a `sync` trigger, which `dunning work` processes. Safe to run\n"
			    "again: newer webhook data is never overwritten by older.\n");
			return DUN_EX_OK;
		default:
			return DUN_EX_USAGE;
		}
	}
	if (optind != argc) {
		dun_cli_error("sync: unexpected argument \"%s\" (see --help)", argv[optind]);
		return DUN_EX_USAGE;
	}
	struct dun_stripe *client = NULL;
	int rc = dun_cli_open_stripe(cli, "sync", &client);
	if (rc)
		return rc;
	struct sync s = {.cli = cli, .version = dun_clock_now()};
	long counts[4] = {0, 0, 0, 0};
	rc = run_sync(&s, client, counts);
	dun_stripe_destroy(client);
	if (rc) {
		sync_free(&s);
		return rc;
	}
	progress_done();
	size_t n_accounts = unique_accounts(&s);
	enum dun_err e = dun_db_begin(cli->db);
	for (size_t i = 0; i < n_accounts && e == DUN_OK; i++)
		e = dun_inbox_enqueue(cli->db, s.accounts[i], "sync", "stripe", "", NULL, 0, NULL,
				      NULL);
	if (e == DUN_OK)
		e = dun_db_commit(cli->db);
	else
		dun_db_rollback(cli->db);
	if (e != DUN_OK) {
		dun_cli_error("sync: cannot queue the sync triggers: %s", dun_db_errmsg(cli->db));
		sync_free(&s);
		return dun_cli_exit_code(e);
	}
	printf("synced from %s: %ld customers (%ld with an account_id), %ld subscriptions, "
	       "%ld invoices, %ld invoice payments\n",
	       cli->config->stripe_api_base, counts[0], s.mapped, counts[1], counts[2], counts[3]);
	printf("queued a sync trigger for %zu account%s%s\n", n_accounts,
	       n_accounts == 1 ? "" : "s",
	       n_accounts ? "; `dunning work --config FILE` recomputes them" : "");
	sync_free(&s);
	return DUN_EX_OK;
}
