/*
 * cmd_email.c — `dunning email preview|claim|record`: one email, by hand.
 *
 *   preview  renders what an email of a kind would say to an account now,
 *            with the renderer and templates the applier uses (with
 *            --config, the configured ones), and writes nothing;
 *   claim    lets a legacy system take part in exactly-once delivery: it
 *            claims a dedup key in the email log before sending, exactly as
 *            the applier does, and learns the Message-ID to send with;
 *   record   settles such a claim (sent or failed), or records an email a
 *            legacy system sent without claiming first.
 * The email log protocol is src/apply/email_log.c; docs/email.md
 * ("A legacy system sending at the same time") shows the sequence.
 */
#include "commands.h"
#include "apply/effects_setup.h"
#include "apply/email/smtp.h"
#include "apply/email_log.h"
#include "config/config.h"
#include "util/clock.h"

#include <getopt.h>
#include <stdlib.h>
#include <string.h>

static int usage(FILE *out)
{
	fprintf(out,
		"usage: dunning email preview KIND ACCOUNT [--invoice ID]\n"
		"       dunning email claim KEY --account ID --kind KIND [--by NAME] [--to ADDR]\n"
		"                               [--lease SECONDS]\n"
		"       dunning email record KEY --sent | --failed REASON [--by NAME]\n"
		"                               [--account ID --kind KIND]\n\n"
		"preview  print the Subject and body an email of KIND would have for ACCOUNT\n"
		"         now (kinds: payment_failed, card_update_required, restricted,\n"
		"         suspended, bad_debt, resolved); writes nothing.\n"
		"claim    claim a dedup key before sending it from another system. Exit 0:\n"
		"         claimed, send it with the printed Message-ID, then run 'record';\n"
		"         exit 1: already sent, do not send; exit 75: someone is sending it\n"
		"         now, ask again later.\n"
		"record   settle a claim: --sent after the server accepted the message,\n"
		"         --failed REASON when it did not (the engine may then send it).\n"
		"         --sent on a key never claimed records it as sent (give --account\n"
		"         and --kind); a duplicate that already went out is reported.\n");
	return out == stdout ? DUN_EX_OK : DUN_EX_USAGE;
}

static bool parse_kind(const char *s, enum dun_email_kind *out)
{
	if (dun_email_kind_parse(s, out))
		return true;
	dun_cli_error("email: unknown kind \"%s\" (payment_failed, card_update_required, "
		      "restricted, suspended, bad_debt, resolved)",
		      s);
	return false;
}

/* The sender address the Message-IDs are qualified with. */
static const char *sender(struct dun_cli *cli)
{
	if (cli->config && strchr(cli->config->smtp_from, '@'))
		return cli->config->smtp_from;
	return "dunning@dunning.local";
}

/* The invoice a per-invoice notice would be about: the first failing one. */
static const char *notice_invoice(const struct dun_engine *en)
{
	const struct dun_state *s = &en->snap.state;
	for (int i = 0; i < s->n_invoices; i++)
		if (en->desired.invoices[i].failing)
			return s->invoices[i].id;
	for (int i = 0; i < s->n_invoices; i++)
		if (s->invoices[i].status == DUN_INVOICE_OPEN)
			return s->invoices[i].id;
	return "";
}

static int preview(struct dun_cli *cli, int argc, char **argv)
{
	static const struct option opts[] = {{"invoice", required_argument, NULL, 'i'},
					     {"help", no_argument, NULL, 'h'},
					     {NULL, 0, NULL, 0}};
	const char *invoice = NULL;
	int c;
	optind = 0;
	while ((c = getopt_long(argc, argv, "i:h", opts, NULL)) != -1) {
		if (c == 'i')
			invoice = optarg;
		else
			return usage(c == 'h' ? stdout : stderr);
	}
	if (argc - optind != 2) {
		dun_cli_error("email preview: expected KIND and ACCOUNT");
		return DUN_EX_USAGE;
	}
	enum dun_email_kind kind;
	if (!parse_kind(argv[optind], &kind))
		return DUN_EX_USAGE;
	const char *account = argv[optind + 1];
	int rc = dun_cli_open(cli, DUN_NEED_ENGINE | DUN_NEED_READONLY);
	if (rc)
		return rc;
	struct dun_engine *en = &cli->engine;
	int64_t now = dun_clock_now();
	enum dun_err e = dun_engine_evaluate(en, account, now);
	if (e == DUN_E_NOT_FOUND) {
		dun_cli_error("email preview: no account \"%s\"", account);
		return DUN_EX_NOINPUT;
	}
	if (e != DUN_OK) {
		dun_cli_error("email preview: %s: %s", account, dun_err_str(e));
		return dun_cli_exit_code(e);
	}
	bool per_invoice =
	    kind == DUN_EMAIL_PAYMENT_FAILED || kind == DUN_EMAIL_CARD_UPDATE_REQUIRED;
	/* The key of this email if the plan has it now. */
	const char *key = NULL;
	for (int i = 0; i < en->plan.n; i++) {
		const struct dun_consequence *pc = &en->plan.items[i];
		if (pc->type == DUN_C_SEND_EMAIL && pc->kind == kind &&
		    (!invoice || !strcmp(pc->target, invoice))) {
			key = pc->key;
			if (!invoice && per_invoice)
				invoice = pc->target;
			break;
		}
	}
	if (!invoice)
		invoice = per_invoice ? notice_invoice(en) : "";
	struct dun_email_ctx ctx = {.kind = kind,
				    .snap = &en->snap,
				    .desired = &en->desired,
				    .policy = en->policy,
				    .invoice_id = invoice,
				    .now = now};
	char *subject = NULL, *body = NULL, err[256] = "";
	const struct dun_renderer *r = &en->applier.renderer;
	e = r->ops->render(r->self, &ctx, &subject, &body, err, sizeof err);
	if (e != DUN_OK) {
		dun_cli_error("email preview: %s", err[0] ? err : dun_err_str(e));
		return dun_cli_exit_code(e);
	}
	printf("To: %s\nSubject: %s\n", en->snap.email[0] ? en->snap.email : "(no address)",
	       subject);
	if (key) {
		char mid[DUN_EMAIL_MESSAGE_ID_MAX];
		if (dun_smtp_message_id(key, sender(cli), mid, sizeof mid) == DUN_OK)
			printf("Message-ID: <%s>\n", mid);
		printf("X-Dedup-Key: %s (planned now)\n", key);
	} else {
		printf("X-Dedup-Key: (not planned now: a preview only)\n");
	}
	printf("\n%s", body);
	if (body[0] && body[strlen(body) - 1] != '\n')
		putchar('\n');
	free(subject);
	free(body);
	return DUN_EX_OK;
}

static int claim(struct dun_cli *cli, int argc, char **argv)
{
	static const struct option opts[] = {{"account", required_argument, NULL, 'a'},
					     {"kind", required_argument, NULL, 'k'},
					     {"by", required_argument, NULL, 'b'},
					     {"to", required_argument, NULL, 't'},
					     {"lease", required_argument, NULL, 'l'},
					     {"help", no_argument, NULL, 'h'},
					     {NULL, 0, NULL, 0}};
	const char *account = NULL, *kind_s = NULL, *by = "legacy", *to = "";
	long long lease_s = DUN_EMAIL_LEASE_S_DEFAULT;
	int c;
	optind = 0;
	while ((c = getopt_long(argc, argv, "a:k:b:t:l:h", opts, NULL)) != -1) {
		switch (c) {
		case 'a':
			account = optarg;
			break;
		case 'k':
			kind_s = optarg;
			break;
		case 'b':
			by = optarg;
			break;
		case 't':
			to = optarg;
			break;
		case 'l':
			lease_s = atoll(optarg);
			break;
		default:
			return usage(c == 'h' ? stdout : stderr);
		}
	}
	if (argc - optind != 1 || !account || !kind_s) {
		dun_cli_error("email claim: expected KEY, --account and --kind");
		return DUN_EX_USAGE;
	}
	enum dun_email_kind kind;
	if (!parse_kind(kind_s, &kind))
		return DUN_EX_USAGE;
	if (lease_s < 10) {
		dun_cli_error("email claim: --lease must be at least 10 seconds");
		return DUN_EX_USAGE;
	}
	const char *key = argv[optind];
	int rc = dun_cli_open(cli, DUN_NEED_DB);
	if (rc)
		return rc;
	char mid[DUN_EMAIL_MESSAGE_ID_MAX], bracketed[DUN_EMAIL_MESSAGE_ID_MAX + 2];
	enum dun_err e = dun_smtp_message_id(key, sender(cli), mid, sizeof mid);
	if (e != DUN_OK) {
		dun_cli_error("email claim: no Message-ID for key \"%s\": %s", key, dun_err_str(e));
		return dun_cli_exit_code(e);
	}
	snprintf(bracketed, sizeof bracketed, "<%s>", mid);
	struct dun_email_intent in = {.key = key,
				      .account_id = account,
				      .kind = dun_email_kind_name(kind),
				      .to = to,
				      .message_id = bracketed,
				      .source = by};
	struct dun_email_claim out;
	e = dun_email_claim(cli->db, &in, by, dun_clock_now(), dun_clock_wall_ms() / 1000, lease_s,
			    &out);
	if (e != DUN_OK) {
		dun_cli_error("email claim: %s", dun_err_str(e));
		return dun_cli_exit_code(e);
	}
	char t[32];
	switch (out.result) {
	case DUN_EMAIL_CLAIMED:
		printf("claimed %s message_id=%s\n", key, out.message_id);
		return DUN_EX_OK;
	case DUN_EMAIL_ALREADY_SENT:
		printf("already sent %s: do not send it\n", key);
		return DUN_EX_FAIL;
	case DUN_EMAIL_BUSY:
		printf("busy %s: being sent by %s since %s\n", key, out.owner,
		       dun_cli_time(out.claimed_at, t, sizeof t));
		return DUN_EX_TEMPFAIL;
	}
	return DUN_EX_SOFTWARE;
}

static int record(struct dun_cli *cli, int argc, char **argv)
{
	static const struct option opts[] = {{"sent", no_argument, NULL, 's'},
					     {"failed", required_argument, NULL, 'f'},
					     {"by", required_argument, NULL, 'b'},
					     {"account", required_argument, NULL, 'a'},
					     {"kind", required_argument, NULL, 'k'},
					     {"help", no_argument, NULL, 'h'},
					     {NULL, 0, NULL, 0}};
	const char *failed = NULL, *by = "legacy", *account = NULL, *kind_s = NULL;
	bool sent = false;
	int c;
	optind = 0;
	while ((c = getopt_long(argc, argv, "sf:b:a:k:h", opts, NULL)) != -1) {
		switch (c) {
		case 's':
			sent = true;
			break;
		case 'f':
			failed = optarg;
			break;
		case 'b':
			by = optarg;
			break;
		case 'a':
			account = optarg;
			break;
		case 'k':
			kind_s = optarg;
			break;
		default:
			return usage(c == 'h' ? stdout : stderr);
		}
	}
	if (argc - optind != 1 || sent == (failed != NULL)) {
		dun_cli_error("email record: expected KEY and one of --sent or --failed REASON");
		return DUN_EX_USAGE;
	}
	enum dun_email_kind kind = DUN_EMAIL_PAYMENT_FAILED;
	if (kind_s && !parse_kind(kind_s, &kind))
		return DUN_EX_USAGE;
	const char *key = argv[optind];
	int rc = dun_cli_open(cli, DUN_NEED_DB);
	if (rc)
		return rc;
	struct dun_stmt *st =
	    dun_db_stmt(cli->db, "SELECT state, claimed_by FROM emails WHERE key = ?1");
	dun_stmt_bind_text(st, 1, key);
	char state[16] = "", owner[DUN_EMAIL_OWNER_MAX] = "";
	bool found = dun_stmt_row(st);
	if (found) {
		dun_stmt_col_copy(st, 0, state, sizeof state);
		dun_stmt_col_copy(st, 1, owner, sizeof owner);
	}
	dun_stmt_reset(st);
	int64_t now = dun_clock_now();
	if (failed) {
		if (!found || strcmp(state, "sending") != 0 || strcmp(owner, by) != 0) {
			dun_cli_error("email record: %s is not claimed by %s (state %s)", key, by,
				      found ? state : "unknown");
			return DUN_EX_FAIL;
		}
		enum dun_err e = dun_email_settle(cli->db, key, by, false, failed, now);
		if (e != DUN_OK) {
			dun_cli_error("email record: %s", dun_err_str(e));
			return dun_cli_exit_code(e);
		}
		printf("failed %s: the engine may send it\n", key);
		return DUN_EX_OK;
	}
	if (!found && (!account || !kind_s)) {
		dun_cli_error("email record: %s was never claimed; give --account and --kind to "
			      "record it",
			      key);
		return DUN_EX_USAGE;
	}
	char mid[DUN_EMAIL_MESSAGE_ID_MAX] = "", bracketed[DUN_EMAIL_MESSAGE_ID_MAX + 2] = "";
	if (dun_smtp_message_id(key, sender(cli), mid, sizeof mid) == DUN_OK)
		snprintf(bracketed, sizeof bracketed, "<%s>", mid);
	struct dun_email_intent in = {.key = key,
				      .account_id = account,
				      .kind = dun_email_kind_name(kind),
				      .message_id = bracketed,
				      .source = by};
	bool was_sent = false;
	enum dun_err e = dun_email_record_sent(cli->db, &in, now, &was_sent);
	if (e != DUN_OK) {
		dun_cli_error("email record: %s", dun_err_str(e));
		return dun_cli_exit_code(e);
	}
	if (was_sent) {
		printf("duplicate %s: it had already been sent; this copy was a second one\n", key);
		return DUN_EX_FAIL;
	}
	printf("sent %s\n", key);
	return DUN_EX_OK;
}

int dun_cmd_email(struct dun_cli *cli, int argc, char **argv)
{
	if (argc < 2)
		return usage(stderr);
	if (dun_cli_is_help(argv[1]))
		return usage(stdout);
	if (!strcmp(argv[1], "preview"))
		return preview(cli, argc - 1, argv + 1);
	if (!strcmp(argv[1], "claim"))
		return claim(cli, argc - 1, argv + 1);
	if (!strcmp(argv[1], "record"))
		return record(cli, argc - 1, argv + 1);
	dun_cli_error("email: unknown subcommand \"%s\" (preview, claim, record)", argv[1]);
	return DUN_EX_USAGE;
}
