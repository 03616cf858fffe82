/*
 * cmd_explain.c — `dunning explain ACCOUNT [--json]`: why an account is
 * where it is. The text form is rendered from the same JSON the admin API
 * serves, so the two never disagree.
 */
#include "commands.h"
#include "apply/explain.h"
#include "util/clock.h"

#include <getopt.h>
#include <string.h>

static const char *js(json_t *o, const char *k)
{
	const char *v = json_string_value(json_object_get(o, k));
	return v ? v : "";
}

static long long ji(json_t *o, const char *k)
{
	return (long long)json_integer_value(json_object_get(o, k));
}

static const char *yn(json_t *o, const char *k)
{
	return json_is_true(json_object_get(o, k)) ? "yes" : "no";
}

static void print_text(json_t *o)
{
	char t1[32], t2[32];
	json_t *a = json_object_get(o, "account");
	json_t *cu = json_object_get(o, "customer");
	json_t *p = json_object_get(o, "platform");
	json_t *dn = json_object_get(o, "dunning");
	json_t *ev = json_object_get(o, "evaluation");
	printf("account %s  segment=%s kill_switch=%s bad_debt=%s no_successful_payment=%s\n",
	       js(a, "id"), js(a, "segment"), yn(a, "kill_switch"), yn(a, "bad_debt"),
	       yn(a, "no_successful_payment"));
	if (json_is_object(cu))
		printf("customer %s  bad_debt=%s provider metadata bad_debt=%s card=%s\n",
		       js(cu, "id"), yn(cu, "bad_debt"), yn(cu, "provider_metadata_bad_debt"),
		       js(cu, "default_payment_method"));
	else
		printf("customer (none linked)\n");
	printf("platform banned=%s entitlement=%s resource_flags=%s (for non-payment: "
	       "dunning's)\n",
	       yn(p, "banned"), js(p, "entitlement"), yn(p, "resource_flags"));
	json_t *own = json_object_get(o, "platform_owners");
	size_t ki;
	json_t *kr;
	json_array_foreach(json_object_get(own, "kept"), ki, kr)
	{
		const char *lvl = js(kr, "level");
		printf("         kept: %s%s%s for %s, placed by %s (not dunning's: never "
		       "lifted)\n",
		       js(kr, "type"), lvl[0] ? " " : "", lvl, js(kr, "reason"),
		       js(kr, "placed_by")[0] ? js(kr, "placed_by") : "(unknown)");
	}
	printf("dunning  stage=%s since=%s episode=%lld next_recheck=%s\n", js(dn, "stage"),
	       dun_cli_time(ji(dn, "since"), t1, sizeof t1), ji(dn, "episode"),
	       dun_cli_time(ji(dn, "next_recheck_at"), t2, sizeof t2));
	json_t *real = json_object_get(o, "real");
	if (json_is_object(real)) {
		json_t *rd = json_object_get(real, "dunning");
		json_t *rp = json_object_get(real, "platform");
		printf("view     SHADOW (observe mode: the state above is what the engine would "
		       "have done)\n");
		printf("real     stage=%s banned=%s entitlement=%s bad_debt=%s (the legacy "
		       "system's business until cutover)\n",
		       js(rd, "stage"), yn(rp, "banned"), js(rp, "entitlement"),
		       yn(real, "account_bad_debt"));
	}
	size_t i;
	json_t *v;
	json_t *invs = json_object_get(o, "invoices");
	printf("\ninvoices (%zu):\n", json_array_size(invs));
	json_array_foreach(invs, i, v)
	{
		printf("  %-22s %-13s %-19s %10.2f %s attempts=%lld%s%s%s%s display=%s\n",
		       js(v, "id"), js(v, "status"), js(v, "billing_reason"),
		       (double)ji(v, "amount_remaining") / 100.0, js(v, "currency"),
		       ji(v, "attempt_count"),
		       json_is_true(json_object_get(v, "failing")) ? " failing" : "",
		       json_is_true(json_object_get(v, "upgrade")) ? " upgrade" : "",
		       json_is_true(json_object_get(v, "consolidated")) ? " consolidated" : "",
		       json_is_true(json_object_get(v, "hard_decline")) ? " hard-decline" : "",
		       js(v, "display"));
		size_t k;
		json_t *at;
		json_array_foreach(json_object_get(v, "attempts"), k, at)
		{
			printf("      %s %-10s %s %s%s%s\n",
			       dun_cli_time(ji(at, "created"), t1, sizeof t1), js(at, "status"),
			       js(at, "decline_code"), js(at, "decline_class"),
			       js(at, "advice_code")[0] ? " advice=" : "", js(at, "advice_code"));
		}
	}
	printf(
	    "\nevaluation at %s: stage %s (rules say %s)%s%s, %lld days delinquent, mode %s (%s)\n",
	    dun_cli_time(ji(ev, "now"), t1, sizeof t1), js(ev, "stage"), js(ev, "computed_stage"),
	    json_is_true(json_object_get(ev, "held")) ? ", HELD" : "",
	    json_is_true(json_object_get(ev, "skipped")) ? ", SKIPPED" : "",
	    ji(ev, "days_delinquent"), js(ev, "mode"), js(ev, "mode_why"));
	printf("rules:\n");
	json_array_foreach(json_object_get(o, "reasons"), i, v)
	    printf("  [%s] %s\n", js(v, "rule"), js(v, "text"));
	json_t *plan = json_object_get(o, "plan");
	printf("plan (%zu):\n", json_array_size(plan));
	json_array_foreach(plan, i, v) printf("  %s\n", js(v, "text"));
	json_t *eps = json_object_get(o, "bad_debt_episodes");
	if (json_array_size(eps)) {
		printf("bad-debt episodes:\n");
		json_array_foreach(eps, i, v)
		    printf("  ep%lld entered %s (%s) exited %s %s\n", ji(v, "episode"),
			   dun_cli_time(ji(v, "entered_at"), t1, sizeof t1), js(v, "reason"),
			   dun_cli_time(ji(v, "exited_at"), t2, sizeof t2), js(v, "exit_reason"));
	}
	json_t *emails = json_object_get(o, "emails");
	if (json_array_size(emails)) {
		printf("emails:\n");
		json_array_foreach(emails, i, v)
		    printf("  %s %-20s %-7s %s\n", dun_cli_time(ji(v, "created_at"), t1, sizeof t1),
			   js(v, "kind"), js(v, "state"), js(v, "key"));
	}
	json_t *sc = json_object_get(o, "shadow_consequences");
	if (json_array_size(sc)) {
		printf("shadow (what observe mode would have done, once each):\n");
		json_array_foreach(sc, i, v)
		    printf("  %s %s %s %s\n", dun_cli_time(ji(v, "at"), t1, sizeof t1),
			   js(v, "type"), js(v, "target"), js(v, "kind"));
	}
	json_t *dec = json_object_get(o, "decisions");
	printf("recent decisions (%zu):\n", json_array_size(dec));
	json_array_foreach(dec, i, v)
	    printf("  #%lld %s %-18s %-8s %s -> %s planned=%lld applied=%lld %s %s\n", ji(v, "id"),
		   dun_cli_time(ji(v, "at"), t1, sizeof t1), js(v, "trigger_kind"), js(v, "mode"),
		   js(v, "stage_from"), js(v, "stage_to"), ji(v, "n_planned"), ji(v, "n_applied"),
		   js(v, "outcome"), js(v, "error"));
	json_t *outbox = json_object_get(o, "platform_outbox");
	if (json_array_size(outbox)) {
		printf("platform calls not yet delivered:\n");
		json_array_foreach(outbox, i, v)
		    printf("  #%lld %s %s %s attempts=%lld %s\n", ji(v, "id"), js(v, "op"),
			   js(v, "value"), js(v, "state"), ji(v, "attempts"), js(v, "last_error"));
	}
	json_t *pend = json_object_get(o, "pending_triggers");
	if (json_array_size(pend)) {
		printf("pending triggers:\n");
		json_array_foreach(pend, i, v)
		    printf("  #%lld %s %s attempts=%lld %s\n", ji(v, "id"), js(v, "kind"),
			   js(v, "state"), ji(v, "attempts"), js(v, "last_error"));
	}
}

int dun_cmd_explain(struct dun_cli *cli, int argc, char **argv)
{
	static const struct option opts[] = {
	    {"json", no_argument, NULL, 'j'}, {"help", no_argument, NULL, 'h'}, {NULL, 0, NULL, 0}};
	bool json = false;
	int c;
	optind = 0;
	while ((c = getopt_long(argc, argv, "jh", opts, NULL)) != -1) {
		switch (c) {
		case 'j':
			json = true;
			break;
		case 'h':
			printf(
			    "usage: dunning explain ACCOUNT [--json]\n\n"
			    "Show the gathered state of an account, the rules that matched with\n"
			    "their numbers, the plan a recompute would apply now, and the "
			    "history:\n"
			    "decisions, bad-debt episodes, emails and pending triggers.\n");
			return DUN_EX_OK;
		default:
			return DUN_EX_USAGE;
		}
	}
	if (optind != argc - 1) {
		dun_cli_error("explain: expected one ACCOUNT (see --help)");
		return DUN_EX_USAGE;
	}
	int rc = dun_cli_open(cli, DUN_NEED_ENGINE | DUN_NEED_READONLY);
	if (rc)
		return rc;
	json_t *o = NULL;
	enum dun_err e = dun_explain_json(&cli->engine, argv[optind], dun_clock_now(), &o);
	if (e == DUN_E_NOT_FOUND) {
		dun_cli_error("explain: no account \"%s\"", argv[optind]);
		return DUN_EX_NOINPUT;
	}
	if (e != DUN_OK) {
		dun_cli_error("explain: %s%s%s", dun_err_str(e), cli->engine.unread[0] ? ": " : "",
			      cli->engine.unread);
		return dun_cli_exit_code(e);
	}
	if (json)
		dun_cli_print_json(o);
	else {
		print_text(o);
		json_decref(o);
	}
	return DUN_EX_OK;
}
