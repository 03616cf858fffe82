/*
 * smtp_send_tool.c — render one dunning email and send it, for the SMTP
 * integration test (tests/integration/test_smtp.py).
 *
 * It drives the same code the applier uses (template.c, smtp.c) from the
 * command line, so the test can check what a real SMTP server receives:
 *
 *   smtp-send-tool --url smtp://127.0.0.1:2525 --tls none --from a@x --to b@y \
 *       --template-dir templates --kind bad_debt --account acct_1 \
 *       --amount-minor 1234 --currency usd --dedup-key acct_1/email/bad_debt/ep1
 *
 * On success it prints "sent message_id=<id>" and exits 0; on failure it
 * prints "smtp-send-tool: <DUN_E_...> (retryable|terminal): <reason>" to stderr and exits 1 (2 for
 * a usage error). --check only connects and authenticates; --print renders
 * and prints the message without sending. The password comes from
 * --password or the environment variable DUNNING_SMTP_PASSWORD.
 */
#include <curl/curl.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "apply/email/smtp.h"
#include "apply/email/template.h"
#include "core/model.h"
#include "util/clock.h"

#define MAX_INVOICES 32

static void usage(void)
{
	fprintf(stderr, "usage: smtp-send-tool --url URL --from ADDR --to ADDR --template-dir DIR\n"
			"         --kind KIND [--tls none|starttls|implicit] [--username U]\n"
			"         [--password P] [--timeout-ms N] [--ca-file PEM] [--account ID]\n"
			"         [--customer-name S] [--amount-minor N] [--currency C]\n"
			"         [--invoice ID:AMOUNT_MINOR:YYYY-MM-DD ...] [--pay-url URL]\n"
			"         [--next-action-date YYYY-MM-DD] [--next-action TEXT]\n"
			"         [--retries-left N] [--support-email ADDR] [--dedup-key KEY]\n"
			"         [--now TIME] [--check | --print]\n");
}

static int fail(enum dun_err e, const char *msg)
{
	fprintf(stderr, "smtp-send-tool: %s (%s): %s\n", dun_err_name(e),
		dun_err_is_retryable(e) ? "retryable" : "terminal", msg);
	return 1;
}

static bool parse_i64(const char *s, int64_t *out)
{
	char *end;
	long long v = strtoll(s, &end, 10);
	if (!*s || *end)
		return false;
	*out = v;
	return true;
}

/* "ID:AMOUNT_MINOR:DATE"; the strings point into s, which is modified. */
static bool parse_invoice(char *s, struct dun_email_invoice *inv)
{
	char *c1 = strchr(s, ':');
	char *c2 = c1 ? strchr(c1 + 1, ':') : NULL;
	if (!c1 || !c2)
		return false;
	*c1 = '\0';
	*c2 = '\0';
	inv->id = s;
	inv->currency = NULL;
	return parse_i64(c1 + 1, &inv->amount_minor) && dun_clock_parse(c2 + 1, &inv->issued_at);
}

int main(int argc, char **argv)
{
	enum {
		O_URL = 256,
		O_FROM,
		O_TO,
		O_TLS,
		O_USERNAME,
		O_PASSWORD,
		O_TIMEOUT,
		O_CA,
		O_DIR,
		O_KIND,
		O_ACCOUNT,
		O_NAME,
		O_AMOUNT,
		O_CURRENCY,
		O_INVOICE,
		O_PAY_URL,
		O_NEXT_DATE,
		O_NEXT_ACTION,
		O_RETRIES,
		O_SUPPORT,
		O_KEY,
		O_NOW,
		O_CHECK,
		O_PRINT,
	};
	static const struct option opts[] = {
	    {"url", required_argument, NULL, O_URL},
	    {"from", required_argument, NULL, O_FROM},
	    {"to", required_argument, NULL, O_TO},
	    {"tls", required_argument, NULL, O_TLS},
	    {"username", required_argument, NULL, O_USERNAME},
	    {"password", required_argument, NULL, O_PASSWORD},
	    {"timeout-ms", required_argument, NULL, O_TIMEOUT},
	    {"ca-file", required_argument, NULL, O_CA},
	    {"template-dir", required_argument, NULL, O_DIR},
	    {"kind", required_argument, NULL, O_KIND},
	    {"account", required_argument, NULL, O_ACCOUNT},
	    {"customer-name", required_argument, NULL, O_NAME},
	    {"amount-minor", required_argument, NULL, O_AMOUNT},
	    {"currency", required_argument, NULL, O_CURRENCY},
	    {"invoice", required_argument, NULL, O_INVOICE},
	    {"pay-url", required_argument, NULL, O_PAY_URL},
	    {"next-action-date", required_argument, NULL, O_NEXT_DATE},
	    {"next-action", required_argument, NULL, O_NEXT_ACTION},
	    {"retries-left", required_argument, NULL, O_RETRIES},
	    {"support-email", required_argument, NULL, O_SUPPORT},
	    {"dedup-key", required_argument, NULL, O_KEY},
	    {"now", required_argument, NULL, O_NOW},
	    {"check", no_argument, NULL, O_CHECK},
	    {"print", no_argument, NULL, O_PRINT},
	    {NULL, 0, NULL, 0},
	};
	struct dun_smtp_config cfg = {.timeout_ms = DUN_SMTP_TIMEOUT_MS_DEFAULT};
	struct dun_email_invoice invoices[MAX_INVOICES];
	struct dun_email_vars v = {
	    .account_id = "acct_test", .currency = "usd", .invoices = invoices};
	const char *to = NULL, *dir = NULL, *kind_name = NULL, *key = NULL;
	bool tls_set = false, check_only = false, print_only = false;
	enum dun_email_kind kind = DUN_EMAIL_PAYMENT_FAILED;
	int64_t n;
	int c;

	while ((c = getopt_long(argc, argv, "", opts, NULL)) != -1) {
		switch (c) {
		case O_URL:
			cfg.url = optarg;
			break;
		case O_FROM:
			cfg.from = optarg;
			break;
		case O_TO:
			to = optarg;
			break;
		case O_TLS:
			if (!dun_smtp_tls_parse(optarg, &cfg.tls)) {
				usage();
				return 2;
			}
			tls_set = true;
			break;
		case O_USERNAME:
			cfg.username = optarg;
			break;
		case O_PASSWORD:
			cfg.password = optarg;
			break;
		case O_TIMEOUT:
			if (!parse_i64(optarg, &n)) {
				usage();
				return 2;
			}
			cfg.timeout_ms = (long)n;
			break;
		case O_CA:
			cfg.ca_file = optarg;
			break;
		case O_DIR:
			dir = optarg;
			break;
		case O_KIND:
			kind_name = optarg;
			break;
		case O_ACCOUNT:
			v.account_id = optarg;
			break;
		case O_NAME:
			v.customer_name = optarg;
			break;
		case O_AMOUNT:
			if (!parse_i64(optarg, &v.amount_due_minor)) {
				usage();
				return 2;
			}
			break;
		case O_CURRENCY:
			v.currency = optarg;
			break;
		case O_INVOICE:
			if (v.n_invoices == MAX_INVOICES ||
			    !parse_invoice(optarg, &invoices[v.n_invoices])) {
				usage();
				return 2;
			}
			v.n_invoices++;
			break;
		case O_PAY_URL:
			v.pay_url = optarg;
			break;
		case O_NEXT_DATE:
			if (!dun_clock_parse(optarg, &v.next_action_at)) {
				usage();
				return 2;
			}
			break;
		case O_NEXT_ACTION:
			v.next_action = optarg;
			break;
		case O_RETRIES:
			if (!parse_i64(optarg, &n)) {
				usage();
				return 2;
			}
			v.retries_left = (int)n;
			break;
		case O_SUPPORT:
			v.support_email = optarg;
			break;
		case O_KEY:
			key = optarg;
			break;
		case O_NOW: {
			int64_t t;
			if (!dun_clock_parse(optarg, &t)) {
				usage();
				return 2;
			}
			dun_clock_set(t);
			break;
		}
		case O_CHECK:
			check_only = true;
			break;
		case O_PRINT:
			print_only = true;
			break;
		default:
			usage();
			return 2;
		}
	}
	if (optind != argc || !cfg.url || !cfg.from ||
	    (!check_only && (!to || !dir || !kind_name))) {
		usage();
		return 2;
	}
	if (kind_name && !dun_email_kind_parse(kind_name, &kind)) {
		fprintf(stderr, "smtp-send-tool: unknown kind '%s'\n", kind_name);
		return 2;
	}
	if (!tls_set)
		cfg.tls = strncmp(cfg.url, "smtps:", 6) == 0 ? DUN_SMTP_TLS_IMPLICIT
							     : DUN_SMTP_TLS_STARTTLS;
	if (!cfg.password)
		cfg.password = getenv("DUNNING_SMTP_PASSWORD");

	if (curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK)
		return fail(DUN_E_EMAIL, "curl_global_init failed");

	char err[512];
	enum dun_err e;
	int rc = 0;
	if (check_only) {
		e = dun_smtp_check(&cfg, err, sizeof err);
		if (e != DUN_OK)
			rc = fail(e, err);
		else
			printf("ok\n");
		goto cleanup_curl;
	}

	struct dun_template_set *set = NULL;
	e = dun_template_set_load(dir, &set, err, sizeof err);
	if (e != DUN_OK) {
		rc = fail(e, err);
		goto cleanup_curl;
	}
	char default_key[256];
	if (!key) {
		snprintf(default_key, sizeof default_key, "%s/email/%s/test", v.account_id,
			 dun_email_kind_name(kind));
		key = default_key;
	}
	char message_id[DUN_SMTP_MESSAGE_ID_MAX + 1];
	e = dun_smtp_message_id(key, cfg.from, message_id, sizeof message_id);
	if (e != DUN_OK) {
		rc = fail(e, "cannot derive a Message-ID from --dedup-key and --from");
		goto destroy_set;
	}
	char *subject = NULL, *body = NULL;
	e = dun_template_render(dun_template_set_get(set, kind), &v, &subject, &body);
	if (e != DUN_OK) {
		rc = fail(e, "render failed");
		goto destroy_set;
	}
	if (print_only) {
		char *msg = NULL;
		e = dun_smtp_build_message(cfg.from, to, subject, body, message_id, dun_clock_now(),
					   &msg, err, sizeof err);
		if (e != DUN_OK)
			rc = fail(e, err);
		else
			fputs(msg, stdout);
		free(msg);
	} else {
		e = dun_smtp_send(&cfg, to, subject, body, message_id, err, sizeof err);
		if (e != DUN_OK)
			rc = fail(e, err);
		else
			printf("sent message_id=%s\n", message_id);
	}
	free(subject);
	free(body);
destroy_set:
	dun_template_set_destroy(set);
cleanup_curl:
	curl_global_cleanup();
	return rc;
}
