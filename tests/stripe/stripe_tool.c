/*
 * stripe_tool.c — drives the Stripe provider (src/provider/stripe.c) from
 * the integration tests, for what the `dunning` commands cannot show:
 * one op repeated inside one process (the client's memory of keys that
 * met an error), ops the engine only reaches in rare states (a card
 * declined on a payment retry, a second cancellation), the whole answer
 * of an op (refresh_invoices INVOICE...), and many threads sharing one
 * client (one rate limiter for all).
 *
 *   stripe-tool CONFIG op OP ARG... [--key KEY] [--times N]
 *   stripe-tool CONFIG threads THREADS CALLS CUSTOMER
 *
 * op prints one JSON line per call: {"rc": "DUN_OK", "err": "...", "obj": ...}.
 * threads runs CALLS list_invoices per thread and prints
 * {"ok": n, "failed": n, "errors": [...]}. Exit 0 when every call succeeded.
 */
#include "config/config.h"
#include "provider/stripe.h"

#include <inttypes.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static struct dun_provider provider;

static void print_result(enum dun_err e, const char *err, json_t *obj)
{
	json_t *line = json_pack("{s:s, s:s, s:O?}", "rc", dun_err_name(e), "err", err, "obj", obj);
	char *text = json_dumps(line, JSON_COMPACT);
	printf("%s\n", text);
	fflush(stdout);
	free(text);
	json_decref(line);
}

static enum dun_err run_op(int argc, char **argv, const char *key, json_t **obj, char *err,
			   size_t es)
{
	const struct dun_provider_ops *ops = provider.ops;
	void *self = provider.self;
	const char *op = argv[0];
	if (!strcmp(op, "set_customer_metadata") && argc == 4)
		return ops->set_customer_metadata(self, argv[1], argv[2], argv[3], key, obj, err,
						  es);
	if (!strcmp(op, "set_invoice_metadata") && argc == 4)
		return ops->set_invoice_metadata(self, argv[1], argv[2], argv[3], key, obj, err,
						 es);
	if (!strcmp(op, "mark_uncollectible") && argc == 2)
		return ops->mark_uncollectible(self, argv[1], key, obj, err, es);
	if (!strcmp(op, "void_invoice") && argc == 2)
		return ops->void_invoice(self, argv[1], key, obj, err, es);
	if (!strcmp(op, "cancel_subscription") && argc == 2)
		return ops->cancel_subscription(self, argv[1], key, obj, err, es);
	if (!strcmp(op, "pay_invoice") && argc == 2)
		return ops->pay_invoice(self, argv[1], key, obj, err, es);
	if (!strcmp(op, "list_invoices") && argc == 2)
		return ops->list_invoices(self, argv[1], obj, err, es);
	if (!strcmp(op, "refresh_invoices") && argc >= 2)
		return ops->refresh_invoices(self, (const char *const *)(argv + 1), argc - 1, obj,
					     err, es);
	if (!strcmp(op, "create_consolidated") && argc >= 4) {
		/* create_consolidated CUSTOMER CURRENCY INVOICE:AMOUNT... */
		int n = argc - 3;
		const char **ids = calloc((size_t)n, sizeof *ids);
		int64_t *amounts = calloc((size_t)n, sizeof *amounts);
		char **copies = calloc((size_t)n, sizeof *copies);
		for (int i = 0; i < n; i++) {
			copies[i] = strdup(argv[3 + i]);
			char *colon = strchr(copies[i], ':');
			if (colon) {
				*colon = '\0';
				amounts[i] = strtoll(colon + 1, NULL, 10);
			}
			ids[i] = copies[i];
		}
		struct dun_consolidated_req req = {.customer_id = argv[1],
						   .currency = argv[2],
						   .n_originals = n,
						   .original_ids = ids,
						   .original_amounts_minor = amounts,
						   .days_until_due = 30};
		enum dun_err e = ops->create_consolidated(self, &req, key, obj, err, es);
		for (int i = 0; i < n; i++)
			free(copies[i]);
		free(copies);
		free(ids);
		free(amounts);
		return e;
	}
	snprintf(err, es, "unknown op or wrong number of arguments: %s", op);
	return DUN_E_INVALID;
}

struct worker {
	pthread_t thread;
	const char *customer;
	int calls;
	int ok;
	int failed;
	char last_err[512];
};

static void *work(void *arg)
{
	struct worker *w = arg;
	for (int i = 0; i < w->calls; i++) {
		json_t *list = NULL;
		char err[512] = "";
		enum dun_err e =
		    provider.ops->list_invoices(provider.self, w->customer, &list, err, sizeof err);
		if (e == DUN_OK) {
			w->ok++;
		} else {
			w->failed++;
			snprintf(w->last_err, sizeof w->last_err, "%s", err);
		}
		json_decref(list);
	}
	return NULL;
}

static int usage(void)
{
	fprintf(stderr, "usage: stripe-tool CONFIG op OP ARG... [--key KEY] [--times N]\n"
			"       stripe-tool CONFIG threads THREADS CALLS CUSTOMER\n");
	return 64;
}

int main(int argc, char **argv)
{
	if (argc < 4)
		return usage();
	struct dun_config cfg;
	char err[512] = "";
	if (dun_config_load(argv[1], &cfg, err, sizeof err) != DUN_OK) {
		fprintf(stderr, "stripe-tool: %s\n", err);
		return 78;
	}
	enum dun_err e = dun_stripe_provider_new(&cfg, &provider, err, sizeof err);
	if (e != DUN_OK) {
		fprintf(stderr, "stripe-tool: %s\n", err);
		return 78;
	}
	int rc = 0;
	if (!strcmp(argv[2], "threads") && argc == 6) {
		int n = atoi(argv[3]);
		struct worker *ws = calloc((size_t)n, sizeof *ws);
		for (int i = 0; i < n; i++) {
			ws[i].customer = argv[5];
			ws[i].calls = atoi(argv[4]);
			pthread_create(&ws[i].thread, NULL, work, &ws[i]);
		}
		int ok = 0, failed = 0;
		json_t *errors = json_array();
		for (int i = 0; i < n; i++) {
			pthread_join(ws[i].thread, NULL);
			ok += ws[i].ok;
			failed += ws[i].failed;
			if (ws[i].failed)
				json_array_append_new(errors, json_string(ws[i].last_err));
		}
		json_t *out =
		    json_pack("{s:i, s:i, s:o}", "ok", ok, "failed", failed, "errors", errors);
		char *text = json_dumps(out, JSON_COMPACT);
		printf("%s\n", text);
		free(text);
		json_decref(out);
		free(ws);
		rc = failed ? 1 : 0;
	} else if (!strcmp(argv[2], "op")) {
		const char *key = "stripe-tool";
		int times = 1, n = 0;
		char **args = calloc((size_t)argc, sizeof *args);
		for (int i = 3; i < argc; i++) {
			if (!strcmp(argv[i], "--key") && i + 1 < argc)
				key = argv[++i];
			else if (!strcmp(argv[i], "--times") && i + 1 < argc)
				times = atoi(argv[++i]);
			else
				args[n++] = argv[i];
		}
		for (int t = 0; t < times && n > 0; t++) {
			json_t *obj = NULL;
			err[0] = '\0';
			e = run_op(n, args, key, &obj, err, sizeof err);
			print_result(e, err, obj);
			json_decref(obj);
			if (e != DUN_OK)
				rc = 1;
		}
		free(args);
		if (n == 0)
			rc = usage();
	} else {
		rc = usage();
	}
	dun_provider_destroy(&provider);
	return rc;
}
