/*
 * cli.c — shared plumbing of the `dunning` subcommands (see cli.h).
 */
#include "cli.h"
#include "apply/effects_setup.h"
#include "apply/email_sender.h"
#include "apply/local.h"
#include "config/config.h"
#include "config/policy_file.h"
#include "provider/stripe.h"
#include "inbox/ingest.h"
#include "inbox/worker.h"
#include "util/clock.h"
#include "util/mem.h"

#include <signal.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

void dun_cli_error(const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	fputs("dunning: ", stderr);
	vfprintf(stderr, fmt, ap);
	fputc('\n', stderr);
	va_end(ap);
}

int dun_cli_exit_code(enum dun_err e)
{
	switch (e) {
	case DUN_OK:
		return DUN_EX_OK;
	case DUN_E_INVALID:
		return DUN_EX_USAGE;
	case DUN_E_NOT_FOUND:
		return DUN_EX_NOINPUT;
	case DUN_E_TOO_BIG:
	case DUN_E_PARSE:
	case DUN_E_SIGNATURE:
	case DUN_E_CORRUPT:
		return DUN_EX_DATAERR;
	case DUN_E_CONFIG:
	case DUN_E_SCHEMA:
		return DUN_EX_CONFIG;
	case DUN_E_STORE:
	case DUN_E_IO:
		return DUN_EX_IOERR;
	case DUN_E_BUSY:
	case DUN_E_CONFLICT:
	case DUN_E_TIMEOUT:
	case DUN_E_FENCED:
	case DUN_E_INCOMPLETE:
		return DUN_EX_TEMPFAIL;
	case DUN_E_PROVIDER:
	case DUN_E_PLATFORM:
	case DUN_E_EMAIL:
	case DUN_E_UNAVAILABLE:
		return DUN_EX_UNAVAILABLE;
	case DUN_E_PROVIDER_REJECTED:
	case DUN_E_GUARD:
	case DUN_E_UNSUPPORTED:
		return DUN_EX_FAIL;
	}
	return DUN_EX_SOFTWARE;
}

bool dun_cli_tty(void)
{
	return isatty(2) != 0;
}

bool dun_cli_is_help(const char *arg)
{
	return !strcmp(arg, "-h") || !strcmp(arg, "--help");
}

void dun_cli_print_json(json_t *v)
{
	char *s = json_dumps(v, JSON_INDENT(2) | JSON_PRESERVE_ORDER);
	if (s) {
		fputs(s, stdout);
		fputc('\n', stdout);
		free(s);
	}
	json_decref(v);
}

const char *dun_cli_time(int64_t t, char *buf, size_t n)
{
	if (!t) {
		snprintf(buf, n, "-");
		return buf;
	}
	char iso[32];
	dun_clock_format(t, iso, sizeof iso);
	/* 2026-03-01T10:00:00Z -> 2026-03-01 10:00 */
	snprintf(buf, n, "%.10s %.5s", iso, iso + 11);
	return buf;
}

int dun_cli_load_config(struct dun_cli *cli)
{
	if (!cli->config_path || cli->config)
		return DUN_EX_OK;
	char err[512] = "";
	struct dun_config *c = dun_calloc(1, sizeof *c);
	enum dun_err e = dun_config_load(cli->config_path, c, err, sizeof err);
	if (e != DUN_OK) {
		dun_cli_error("%s", err);
		free(c);
		return DUN_EX_CONFIG;
	}
	cli->config = c;
	if (!cli->db_path_given)
		cli->db_path = c->db_path;
	if (!cli->policy_path && c->policy_path[0])
		cli->policy_path = c->policy_path;
	if (!cli->support_email && c->support_email[0])
		cli->support_email = c->support_email;
	if (!cli->pay_bad_debt_url && c->pay_bad_debt_url[0])
		cli->pay_bad_debt_url = c->pay_bad_debt_url;
	if (!c->templates_dir[0] && cli->templates_dir)
		snprintf(c->templates_dir, sizeof c->templates_dir, "%s", cli->templates_dir);
	return DUN_EX_OK;
}

/* The engine's seams from the configuration: its provider and effects. */
static int open_configured_engine(struct dun_cli *cli)
{
	char err[512] = "";
	cli->effects = dun_calloc(1, sizeof *cli->effects);
	enum dun_err e =
	    dun_effects_open(cli->config, cli->db, false, cli->effects, err, sizeof err);
	if (e != DUN_OK) {
		free(cli->effects);
		cli->effects = NULL;
		dun_cli_error("%s", err);
		return dun_cli_exit_code(e);
	}
	if (!strcmp(cli->config->provider, "stripe")) {
		e = dun_stripe_provider_new(cli->config, &cli->provider, err, sizeof err);
		if (e != DUN_OK) {
			dun_cli_error("%s: %s", cli->config_path, err);
			return dun_cli_exit_code(e);
		}
	} else {
		cli->sim = dun_sim_new(cli->db, 1);
		cli->provider = dun_sim_provider(cli->sim);
	}
	dun_engine_init(&cli->engine, cli->db, &cli->policy, cli->provider, cli->effects->platform,
			cli->effects->mailer, cli->effects->renderer);
	cli->engine_ready = true;
	return DUN_EX_OK;
}

int dun_cli_open(struct dun_cli *cli, unsigned need)
{
	char err[512] = "";
	int rc = dun_cli_load_config(cli);
	if (rc)
		return rc;
	/* The policy first: a bad policy file is the error to fix before any database. */
	if (need & DUN_NEED_POLICY) {
		if (cli->policy_path) {
			enum dun_err e =
			    dun_policy_file_load(cli->policy_path, &cli->policy, err, sizeof err);
			if (e != DUN_OK) {
				dun_cli_error("%s", err);
				return DUN_EX_CONFIG;
			}
		} else {
			dun_policy_defaults(&cli->policy);
		}
	}
	if ((need & DUN_NEED_DB) && !cli->db) {
		enum dun_db_access how = (need & DUN_NEED_CREATE)     ? DUN_DB_CREATE
					 : (need & DUN_NEED_READONLY) ? DUN_DB_READONLY
								      : DUN_DB_EXISTING;
		enum dun_err e = dun_db_open_as(cli->db_path, how, &cli->db, err, sizeof err);
		if (e == DUN_E_NOT_FOUND) {
			dun_cli_error("%s; create it with 'dunning --db %s init' (or give the "
				      "right --db)",
				      err, cli->db_path);
			return DUN_EX_NOINPUT;
		}
		if (e != DUN_OK) {
			dun_cli_error("%s", err);
			return dun_cli_exit_code(e);
		}
	}
	if ((need & DUN_NEED_ENGINE) == DUN_NEED_ENGINE && !cli->engine_ready && cli->config) {
		/* A [rollout] section that disagrees with the database stops every
		 * command that could write: one answer, and a loud one. */
		if (dun_rollout_check_expected(cli->db, cli->config->rollout_mode,
					       cli->config->rollout_percent, err,
					       sizeof err) != DUN_OK) {
			dun_cli_error("%s: %s", cli->config_path, err);
			return DUN_EX_CONFIG;
		}
		return open_configured_engine(cli);
	}
	if ((need & DUN_NEED_ENGINE) == DUN_NEED_ENGINE && !cli->engine_ready) {
		enum dun_err e =
		    dun_template_set_load(cli->templates_dir, &cli->templates, err, sizeof err);
		if (e != DUN_OK) {
			dun_cli_error("%s", err);
			return DUN_EX_CONFIG;
		}
		cli->renderer.templates = cli->templates;
		cli->renderer.support_email = cli->support_email ? cli->support_email : "";
		cli->renderer.pay_bad_debt_url = cli->pay_bad_debt_url;
		cli->sim = dun_sim_new(cli->db, 1);
		dun_engine_init(&cli->engine, cli->db, &cli->policy, dun_sim_provider(cli->sim),
				dun_local_platform(cli->db), dun_log_mailer(),
				dun_template_renderer(&cli->renderer));
		cli->engine_ready = true;
	}
	return DUN_EX_OK;
}

void dun_cli_close(struct dun_cli *cli)
{
	if (cli->engine_ready)
		dun_engine_free(&cli->engine);
	cli->engine_ready = false;
	dun_provider_destroy(&cli->provider);
	memset(&cli->provider, 0, sizeof cli->provider);
	dun_sim_destroy(cli->sim);
	cli->sim = NULL;
	if (cli->effects)
		dun_effects_close(cli->effects);
	free(cli->effects);
	cli->effects = NULL;
	dun_template_set_destroy(cli->templates);
	cli->templates = NULL;
	dun_db_close(cli->db);
	cli->db = NULL;
	free(cli->config);
	cli->config = NULL;
}

void dun_cli_inbox_config(const struct dun_cli *cli, struct dun_inbox_config *out)
{
	dun_inbox_config_defaults(out);
	if (!cli->config)
		return;
	out->max_attempts = cli->config->inbox_max_attempts;
	out->backoff_base_s = cli->config->inbox_backoff_base_s;
	out->backoff_max_s = cli->config->inbox_backoff_max_s;
	out->lease_s = cli->config->inbox_lease_s;
}

int dun_cli_deliver_emails(struct dun_cli *cli, bool quiet)
{
	struct dun_email_sender_config cfg;
	const struct dun_mailer *mailer = &cli->engine.applier.mailer;
	dun_email_sender_config_from(cli->config, mailer, &cfg);
	cfg.should_stop = dun_worker_stop_requested;
	struct dun_email_stats total, st;
	memset(&total, 0, sizeof total);
	enum dun_err e;
	do {
		if (dun_worker_stop_requested()) {
			memset(&st, 0, sizeof st);
			e = DUN_OK;
			break;
		}
		e = dun_email_sender_run_once(cli->db, mailer, &cfg, dun_clock_now(), &st);
		total.attempted += st.attempted;
		total.sent += st.sent;
		total.retried += st.retried;
		total.dead += st.dead;
	} while (e == DUN_OK && st.more);
	if (e != DUN_OK) {
		dun_cli_error("delivering emails: %s: %s", dun_err_str(e), dun_db_errmsg(cli->db));
		return dun_cli_exit_code(e);
	}
	if (!quiet && (total.attempted || st.pending || total.dead))
		printf("emails: %lld sent, %lld to retry, %lld given up; %lld queued, %lld dead in "
		       "all\n",
		       (long long)total.sent, (long long)total.retried, (long long)total.dead,
		       (long long)st.pending, (long long)st.dead_total);
	if (st.overdue)
		dun_cli_error("%lld emails have waited longer than %lld s (alert_after_s); see "
			      "'dunning emails --queue'",
			      (long long)st.overdue, (long long)cfg.alert_after_s);
	return DUN_EX_OK;
}

/* SIGTERM or SIGINT during a drain: finish the recompute in progress, then stop. */
static volatile sig_atomic_t drain_signal;

static void on_stop_signal(int sig)
{
	drain_signal = sig;
	dun_worker_request_stop();
}

static int drain(struct dun_cli *cli, bool quiet);

/* Accounts per drain call: the progress line moves every this many. */
#define DRAIN_CHUNK 1000

int dun_cli_drain(struct dun_cli *cli, bool quiet)
{
	struct sigaction sa, old_term, old_int;
	memset(&sa, 0, sizeof sa);
	sa.sa_handler = on_stop_signal;
	sa.sa_flags = SA_RESTART; /* a call in flight (SMTP, Stripe, SQLite) completes */
	sigemptyset(&sa.sa_mask);
	sigaction(SIGTERM, &sa, &old_term);
	sigaction(SIGINT, &sa, &old_int);
	int rc = drain(cli, quiet);
	sigaction(SIGTERM, &old_term, NULL);
	sigaction(SIGINT, &old_int, NULL);
	if (drain_signal) {
		dun_cli_error("stopped by %s after the recompute in progress; nothing is left "
			      "claimed, the rest is queued for the next run",
			      drain_signal == SIGINT ? "SIGINT" : "SIGTERM");
		return DUN_EX_TEMPFAIL;
	}
	return rc;
}

static int drain(struct dun_cli *cli, bool quiet)
{
	struct dun_inbox_config cfg;
	dun_cli_inbox_config(cli, &cfg);
	char worker[200];
	dun_inbox_worker_id(worker, sizeof worker, "cli");
	struct dun_drain_stats total;
	memset(&total, 0, sizeof total);
	int64_t events = 0;
	bool progress = !quiet && dun_cli_tty();
	for (int round = 0; round < 1000; round++) {
		int64_t n = 0;
		if (cli->sim) {
			char err[256] = "";
			enum dun_err e =
			    dun_ingest_sim_events(cli->db, cli->sim, &n, err, sizeof err);
			if (e != DUN_OK) {
				dun_cli_error("delivering the simulated provider's events: %s",
					      err);
				return dun_cli_exit_code(e);
			}
			events += n;
		}
		/* In chunks, so a long run shows its progress on a terminal. */
		struct dun_drain_stats st;
		int64_t worked = 0;
		do {
			enum dun_err e = dun_worker_drain(&cli->engine, &cfg, worker,
							  dun_clock_now(), DRAIN_CHUNK, &st);
			if (e != DUN_OK) {
				dun_cli_error("processing triggers: %s", dun_err_str(e));
				return dun_cli_exit_code(e);
			}
			worked += st.accounts;
			total.accounts += st.accounts;
			total.triggers += st.triggers;
			total.failed += st.failed;
			total.rechecks_enqueued += st.rechecks_enqueued;
			total.consequences_applied += st.consequences_applied;
			total.active += st.active;
			total.observed += st.observed;
			total.batched += st.batched;
			total.unbatched += st.unbatched;
			if (progress && st.accounts == DRAIN_CHUNK)
				fprintf(stderr, "\rprocessed %lld accounts, %lld failed",
					(long long)total.accounts, (long long)total.failed);
		} while (st.accounts == DRAIN_CHUNK && !st.interrupted);
		if (st.interrupted || (!n && !worked))
			break;
	}
	if (progress && total.accounts >= DRAIN_CHUNK)
		fputc('\n', stderr);
	if (!quiet)
		printf("processed %lld accounts (%lld triggers, %lld rechecks due%s), %lld "
		       "consequences applied, %lld failed\n",
		       (long long)total.accounts, (long long)total.triggers,
		       (long long)total.rechecks_enqueued,
		       events ? ", provider events delivered" : "",
		       (long long)total.consequences_applied, (long long)total.failed);
	if (!quiet && total.accounts)
		printf("modes: %lld accounts active (written to), %lld observe (shadow only)\n",
		       (long long)total.active, (long long)total.observed);
	if (!quiet && total.accounts)
		printf("commits: %lld accounts in shared transactions, %lld alone\n",
		       (long long)total.batched, (long long)total.unbatched);
	int erc = dun_cli_deliver_emails(cli, quiet);
	if (erc)
		return erc;
	if (total.failed)
		dun_cli_error("%lld recomputes failed; see 'dunning events --state retrying' and "
			      "'--state dead'",
			      (long long)total.failed);
	return total.failed ? DUN_EX_FAIL : DUN_EX_OK;
}

int dun_cli_open_stripe(struct dun_cli *cli, const char *cmd, struct dun_stripe **out)
{
	*out = NULL;
	if (!cli->config_path) {
		dun_cli_error("%s: needs --config FILE (its [stripe] section says where and how "
			      "to reach Stripe)",
			      cmd);
		return DUN_EX_USAGE;
	}
	int rc = dun_cli_open(cli, DUN_NEED_DB);
	if (rc)
		return rc;
	char err[512] = "";
	enum dun_err e = dun_stripe_new(cli->config, out, err, sizeof err);
	if (e != DUN_OK) {
		dun_cli_error("%s: %s: %s", cmd, cli->config_path, err);
		return dun_cli_exit_code(e);
	}
	return DUN_EX_OK;
}
