/*
 * test_policy_file.c — unit tests of the policy file (src/config).
 *
 * The most important test is the first: policy/default.conf must load into
 * exactly what dun_policy_defaults() builds, so the documented defaults and
 * the compiled ones never drift apart. Then dump -> load must round-trip,
 * and every class of mistake a user can make must be refused with a message
 * that names the file, the line and the key.
 *
 * Usage: test_policy_file <path of policy/default.conf>
 */
#include "check.h"
#include "config/policy_file.h"

#include <errno.h>
#include <stdlib.h>
#include <unistd.h>

#define ERR_MAX 512

/* Compare two policies field by field (with messages), then byte for byte. */
static void check_policy_equal(const struct dun_policy *a, const struct dun_policy *b)
{
	CHECK_INT(a->restricted_after_s, b->restricted_after_s);
	CHECK_INT(a->suspended_after_s, b->suspended_after_s);
	CHECK_INT(a->bad_debt_after_s, b->bad_debt_after_s);
	CHECK_INT(a->n_upgrade_reasons, b->n_upgrade_reasons);
	for (int i = 0; i < DUN_UPGRADE_REASONS_MAX; i++)
		CHECK_INT(a->upgrade_reasons[i], b->upgrade_reasons[i]);
	CHECK_INT(a->upgrade_max_stage, b->upgrade_max_stage);
	CHECK_INT(a->n_retry_schedule, b->n_retry_schedule);
	for (int i = 0; i < DUN_RETRY_SCHEDULE_MAX; i++)
		CHECK_INT(a->retry_schedule_s[i], b->retry_schedule_s[i]);
	CHECK_INT(a->max_attempts, b->max_attempts);
	CHECK_INT(a->retry_owner, b->retry_owner);
	CHECK_INT(a->lifting_window_s, b->lifting_window_s);
	CHECK_INT(a->processing_max_s, b->processing_max_s);
	CHECK_INT(a->processing_recheck_after_s, b->processing_recheck_after_s);
	for (int i = 0; i < DUN_SEGMENT__COUNT; i++)
		CHECK_INT(a->skip_segment[i], b->skip_segment[i]);
	CHECK_INT(a->bad_debt_mark_uncollectible, b->bad_debt_mark_uncollectible);
	CHECK_INT(a->bad_debt_cancel_subscriptions, b->bad_debt_cancel_subscriptions);
	CHECK_INT(a->bad_debt_ban, b->bad_debt_ban);
	CHECK_INT(a->bad_debt_remove_resource_flags, b->bad_debt_remove_resource_flags);
	for (int i = 0; i < DUN_STAGE__COUNT; i++)
		CHECK_INT(a->entitlement[i], b->entitlement[i]);
	CHECK_INT(a->decline_default, b->decline_default);
	CHECK_INT(a->n_declines, b->n_declines);
	for (int i = 0; i < a->n_declines && i < b->n_declines; i++) {
		const struct dun_decline_rule *x = &a->declines[i], *y = &b->declines[i];
		CHECK_INT(x->field, y->field);
		CHECK_STR(x->code, y->code);
		CHECK_INT(x->cls, y->cls);
		CHECK_INT(x->min_delay_s, y->min_delay_s);
	}
	CHECK(memcmp(a, b, sizeof *a) == 0);
}

static void test_default_conf_is_the_defaults(const char *path)
{
	struct dun_policy want, got;
	char err[ERR_MAX];
	dun_policy_defaults(&want);
	memset(&got, 0xab, sizeof got);
	enum dun_err rc = dun_policy_file_load(path, &got, err, sizeof err);
	if (rc != DUN_OK)
		fprintf(stderr, "loading %s: %s\n", path, err);
	CHECK_INT(rc, DUN_OK);
	CHECK_STR(err, "");
	check_policy_equal(&got, &want);
}

/* Dump p to text, load the text, and require the same policy back. */
static void round_trip(const struct dun_policy *p, const char *what)
{
	char *text = NULL;
	size_t size = 0;
	FILE *f = open_memstream(&text, &size);
	CHECK(f != NULL);
	if (!f)
		return;
	dun_policy_file_dump(p, f);
	fclose(f);
	struct dun_policy got;
	char err[ERR_MAX];
	enum dun_err rc = dun_policy_file_load_string(text, what, &got, err, sizeof err);
	if (rc != DUN_OK)
		fprintf(stderr, "%s: reloading the dump failed: %s\n--- dump ---\n%s", what, err,
			text);
	CHECK_INT(rc, DUN_OK);
	if (rc == DUN_OK)
		check_policy_equal(&got, p);
	free(text);
}

static void test_round_trips(void)
{
	struct dun_policy p;
	dun_policy_defaults(&p);
	round_trip(&p, "defaults");

	/* Every field away from its default. */
	dun_policy_defaults(&p);
	p.restricted_after_s = 3 * 86400;
	p.suspended_after_s = 10 * 86400 + 3600;
	p.bad_debt_after_s = 45 * 86400;
	p.upgrade_reasons[0] = DUN_BILLING_SUBSCRIPTION_UPDATE;
	p.upgrade_reasons[1] = DUN_BILLING_MANUAL;
	p.upgrade_reasons[2] = DUN_BILLING_OTHER;
	p.n_upgrade_reasons = 3;
	p.upgrade_max_stage = DUN_STAGE_SUSPENDED;
	p.n_retry_schedule = 3;
	p.retry_schedule_s[0] = 90 * 60;
	p.retry_schedule_s[1] = 86400;
	p.retry_schedule_s[2] = 86400 + 45;
	p.retry_schedule_s[3] = 0;
	p.max_attempts = 4;
	p.retry_owner = DUN_RETRY_OWNER_STRIPE;
	p.lifting_window_s = 90 * 60;
	p.skip_segment[DUN_SEGMENT_ENTERPRISE] = false;
	p.skip_segment[DUN_SEGMENT_SELF_SERVE] = true;
	p.bad_debt_mark_uncollectible = false;
	p.bad_debt_cancel_subscriptions = false;
	p.bad_debt_ban = false;
	p.bad_debt_remove_resource_flags = false;
	p.entitlement[DUN_STAGE_NOTIFIED] = DUN_ENTITLEMENT_RESTRICTED;
	p.entitlement[DUN_STAGE_BAD_DEBT] = DUN_ENTITLEMENT_RESTRICTED;
	p.decline_default = DUN_DECLINE_HARD;
	memset(p.declines, 0, sizeof p.declines);
	p.n_declines = 2;
	p.declines[0].field = DUN_DECLINE_FIELD_DECLINE_CODE;
	strcpy(p.declines[0].code, "insufficient_funds");
	p.declines[0].cls = DUN_DECLINE_SOFT;
	p.declines[0].min_delay_s = 45;
	p.declines[1].field = DUN_DECLINE_FIELD_NETWORK_ADVICE_CODE;
	strcpy(p.declines[1].code, "03");
	p.declines[1].cls = DUN_DECLINE_HARD;
	round_trip(&p, "custom");

	/* Every list empty. */
	dun_policy_defaults(&p);
	memset(p.upgrade_reasons, 0, sizeof p.upgrade_reasons);
	p.n_upgrade_reasons = 0;
	memset(p.retry_schedule_s, 0, sizeof p.retry_schedule_s);
	p.n_retry_schedule = 0;
	memset(p.skip_segment, 0, sizeof p.skip_segment);
	memset(p.declines, 0, sizeof p.declines);
	p.n_declines = 0;
	round_trip(&p, "empty lists");
}

static struct dun_policy load_ok(const char *text)
{
	struct dun_policy p;
	char err[ERR_MAX];
	enum dun_err rc = dun_policy_file_load_string(text, "x.conf", &p, err, sizeof err);
	if (rc != DUN_OK)
		fprintf(stderr, "unexpected error for <<%s>>: %s\n", text, err);
	CHECK_INT(rc, DUN_OK);
	CHECK_STR(err, "");
	return p;
}

static void test_partial_files(void)
{
	struct dun_policy def, p;
	dun_policy_defaults(&def);

	p = load_ok("");
	check_policy_equal(&p, &def);
	p = load_ok("# only a comment\n\n; another\n");
	check_policy_equal(&p, &def);

	/* One key changes one field; the rest stays at the defaults. */
	p = load_ok("[stages] ; thresholds\nbad_debt_after = 45d\n[guard]\t# the guard\n");
	CHECK_INT(p.bad_debt_after_s, 45 * 86400);
	p.bad_debt_after_s = def.bad_debt_after_s;
	check_policy_equal(&p, &def);

	/* Indented keys are plain keys, not continuation lines. */
	p = load_ok("[stages]\n  restricted_after = 5d\n\tsuspended_after = 6d\n");
	CHECK_INT(p.restricted_after_s, 5 * 86400);
	CHECK_INT(p.suspended_after_s, 6 * 86400);

	/* Inline comments, CRLF line ends, a byte-order mark, no final newline. */
	p = load_ok("\xEF\xBB\xBF[retries]\r\nmax_attempts = 3 ; three\r\n"
		    "schedule = 36h,2d , 90h");
	CHECK_INT(p.max_attempts, 3);
	CHECK_INT(p.n_retry_schedule, 3);
	CHECK_INT(p.retry_schedule_s[0], 36 * 3600);
	CHECK_INT(p.retry_schedule_s[1], 2 * 86400);
	CHECK_INT(p.retry_schedule_s[2], 90 * 3600);

	/* A [declines] section replaces the table, even an empty one. */
	p = load_ok("[declines]\n");
	CHECK_INT(p.n_declines, 0);
	CHECK_INT(p.decline_default, DUN_DECLINE_SOFT);
	p = load_ok("[declines]\ndefault = hard\n");
	CHECK_INT(p.n_declines, 0);
	CHECK_INT(p.decline_default, DUN_DECLINE_HARD);
	p = load_ok("[declines]\nnetwork_advice_code.24 = soft after 90m\n"
		    "decline_code.lost_card = hard\nadvice_code.x-y_Z9 = soft\n");
	CHECK_INT(p.n_declines, 3);
	CHECK_INT(p.declines[0].field, DUN_DECLINE_FIELD_NETWORK_ADVICE_CODE);
	CHECK_STR(p.declines[0].code, "24");
	CHECK_INT(p.declines[0].cls, DUN_DECLINE_SOFT);
	CHECK_INT(p.declines[0].min_delay_s, 90 * 60);
	CHECK_INT(p.declines[1].field, DUN_DECLINE_FIELD_DECLINE_CODE);
	CHECK_INT(p.declines[1].cls, DUN_DECLINE_HARD);
	CHECK_STR(p.declines[2].code, "x-y_Z9");

	/* Empty lists. */
	p = load_ok("[skip]\nsegments = none\n[upgrades]\nbilling_reasons = none\n"
		    "[retries]\nschedule = none\n");
	CHECK_INT(p.n_upgrade_reasons, 0);
	CHECK_INT(p.n_retry_schedule, 0);
	for (int i = 0; i < DUN_SEGMENT__COUNT; i++)
		CHECK_INT(p.skip_segment[i], 0);

	/* A section may come back; its keys still count once. */
	p = load_ok("[stages]\nrestricted_after = 2d\n[guard]\nlifting_window = 0s\n"
		    "[stages]\nsuspended_after = 3d\n");
	CHECK_INT(p.restricted_after_s, 2 * 86400);
	CHECK_INT(p.suspended_after_s, 3 * 86400);
	CHECK_INT(p.lifting_window_s, 0);
}

/* Load text, require DUN_E_CONFIG and an exact message. */
static void expect_error(const char *text, const char *want)
{
	struct dun_policy p, before;
	char err[ERR_MAX];
	memset(&p, 0x5a, sizeof p);
	memcpy(&before, &p, sizeof p);
	enum dun_err rc = dun_policy_file_load_string(text, "x.conf", &p, err, sizeof err);
	CHECK_INT(rc, DUN_E_CONFIG);
	if (rc != DUN_OK && strcmp(err, want) != 0)
		fprintf(stderr, "for <<%s>>\n", text);
	CHECK_STR(err, want);
	/* Nothing is half-written on failure. */
	CHECK(memcmp(&p, &before, sizeof p) == 0);
}

static void test_bad_durations(void)
{
	expect_error("[stages]\nrestricted_after = seven\n",
		     "x.conf:2: [stages] restricted_after: expected a duration like 7d, 36h, "
		     "90m or 45s, got \"seven\"");
	expect_error("[stages]\nrestricted_after = -1d\n",
		     "x.conf:2: [stages] restricted_after: a duration cannot be negative, got "
		     "\"-1d\"");
	expect_error("[guard]\nlifting_window = 99999999999999999999999d\n",
		     "x.conf:2: [guard] lifting_window: duration \"99999999999999999999999d\" is "
		     "too large (at most 36500d)");
	expect_error("[guard]\nlifting_window = 36501d\n",
		     "x.conf:2: [guard] lifting_window: duration \"36501d\" is too large (at most "
		     "36500d)");
	static const char *const junk[] = {"7",	 "7 d", "7dd",	 "1.5d", "d",
					   "7w", "+7d", "0x10s", "7D"};
	for (size_t i = 0; i < sizeof junk / sizeof junk[0]; i++) {
		char text[128], want[256];
		snprintf(text, sizeof text, "[stages]\n\nsuspended_after = %s\n", junk[i]);
		snprintf(want, sizeof want,
			 "x.conf:3: [stages] suspended_after: expected a duration like 7d, 36h, "
			 "90m or 45s, got \"%s\"",
			 junk[i]);
		expect_error(text, want);
	}
	expect_error("[declines]\nnetwork_advice_code.24 = soft after soon\n",
		     "x.conf:2: [declines] network_advice_code.24: expected a duration like 7d, "
		     "36h, 90m or 45s, got \"soon\"");

	int64_t s = -1;
	CHECK(dun_policy_file_parse_duration("45s", &s));
	CHECK_INT(s, 45);
	CHECK(dun_policy_file_parse_duration("90m", &s));
	CHECK_INT(s, 5400);
	CHECK(dun_policy_file_parse_duration("36h", &s));
	CHECK_INT(s, 129600);
	CHECK(dun_policy_file_parse_duration("0d", &s));
	CHECK_INT(s, 0);
	CHECK(dun_policy_file_parse_duration("36500d", &s));
	CHECK_INT(s, DUN_POLICY_DURATION_MAX_S);
	s = 7;
	CHECK(!dun_policy_file_parse_duration("36500d1s", &s));
	CHECK(!dun_policy_file_parse_duration("", &s));
	CHECK(!dun_policy_file_parse_duration(NULL, &s));
	CHECK(!dun_policy_file_parse_duration(" 1d", &s));
	CHECK_INT(s, 7);
}

static void test_unknown_names(void)
{
	expect_error("[stages]\nrestricted_afterr = 7d\n",
		     "x.conf:2: [stages] restricted_afterr: unknown key (known: restricted_after, "
		     "suspended_after, bad_debt_after)");
	expect_error("# c\n[stage]\nrestricted_after = 7d\n",
		     "x.conf:2: [stage]: unknown section (known: stages, upgrades, retries, "
		     "guard, skip, bad_debt, entitlements, declines)");
	/* An unknown section is reported even when it holds no key. */
	expect_error("[stages]\nrestricted_after = 7d\n[retry]\n",
		     "x.conf:3: [retry]: unknown section (known: stages, upgrades, retries, "
		     "guard, skip, bad_debt, entitlements, declines)");
	expect_error("restricted_after = 7d\n",
		     "x.conf:1: restricted_after: key outside of any section (the first key must "
		     "follow a header such as [stages])");
	expect_error("[declines]\ncard_code.lost_card = hard\n",
		     "x.conf:2: [declines] card_code.lost_card: unknown key (expected default, "
		     "or a rule named advice_code.<code>, network_advice_code.<code> or "
		     "decline_code.<code>)");
	expect_error("[declines]\nlost_card = hard\n",
		     "x.conf:2: [declines] lost_card: unknown key (expected default, or a rule "
		     "named advice_code.<code>, network_advice_code.<code> or "
		     "decline_code.<code>)");
	expect_error("[declines]\ndecline_code. = hard\n",
		     "x.conf:2: [declines] decline_code.: a code is 1 to 47 letters, digits, '_' "
		     "or '-', got \"\"");
	expect_error("[entitlements]\nbaddebt = suspended\n",
		     "x.conf:2: [entitlements] baddebt: unknown key (known: none, notified, "
		     "restricted, suspended, bad_debt)");
	expect_error("[entitlements]\nbad_debt = banned\n",
		     "x.conf:2: [entitlements] bad_debt: expected an entitlement (full, "
		     "restricted, suspended), got \"banned\"");
	expect_error("[skip]\nsegments = enterprise, contracts\n",
		     "x.conf:2: [skip] segments: unknown segment \"contracts\" (known: "
		     "self_serve, enterprise, contract)");
	expect_error("[skip]\nsegments = none, contract\n",
		     "x.conf:2: [skip] segments: unknown segment \"none\" (known: self_serve, "
		     "enterprise, contract)");
	expect_error("[upgrades]\nbilling_reasons = subscription_updated\n",
		     "x.conf:2: [upgrades] billing_reasons: unknown billing reason "
		     "\"subscription_updated\" (known: other, subscription_cycle, "
		     "subscription_create, subscription_update, manual)");
	expect_error("[upgrades]\nmax_stage = restrict\n",
		     "x.conf:2: [upgrades] max_stage: expected a stage (none, notified, "
		     "restricted, suspended, bad_debt), got \"restrict\"");
}

static void test_bad_values(void)
{
	expect_error("[bad_debt]\nban = yes\n",
		     "x.conf:2: [bad_debt] ban: expected true or false, got \"yes\"");
	expect_error("[stages]\nrestricted_after =\n",
		     "x.conf:2: [stages] restricted_after: missing value");
	expect_error("[retries]\nmax_attempts = 0\n",
		     "x.conf:2: [retries] max_attempts: expected a whole number of attempts from 1 "
		     "to 50 (the first attempt included), got \"0\"");
	expect_error("[retries]\nmax_attempts = 51\n",
		     "x.conf:2: [retries] max_attempts: expected a whole number of attempts from 1 "
		     "to 50 (the first attempt included), got \"51\"");
	expect_error("[retries]\nmax_attempts = eight\n",
		     "x.conf:2: [retries] max_attempts: expected a whole number of attempts from 1 "
		     "to 50 (the first attempt included), got \"eight\"");
	expect_error("[retries]\nmax_attempts = 99999999999999999999\n",
		     "x.conf:2: [retries] max_attempts: expected a whole number of attempts from 1 "
		     "to 50 (the first attempt included), got \"99999999999999999999\"");
	expect_error("[retries]\nowner = provider\n",
		     "x.conf:2: [retries] owner: expected engine or stripe, got \"provider\"");
	expect_error("[retries]\nschedule = 1d, 3d, 2d\n",
		     "x.conf:2: [retries] schedule: the schedule must be strictly increasing, but "
		     "\"2d\" follows \"3d\"");
	expect_error("[retries]\nschedule = 1d, 24h\n",
		     "x.conf:2: [retries] schedule: the schedule must be strictly increasing, but "
		     "\"24h\" follows \"1d\"");
	expect_error("[retries]\nschedule = 0s, 1d\n",
		     "x.conf:2: [retries] schedule: retry offsets count from the first failed "
		     "attempt and must be greater than 0, got \"0s\"");
	expect_error("[retries]\nschedule = 1d,,3d\n",
		     "x.conf:2: [retries] schedule: empty item in the list \"1d,,3d\" (write none "
		     "for an empty list)");
	expect_error("[retries]\nschedule = 1d, 3d,\n",
		     "x.conf:2: [retries] schedule: empty item in the list \"1d, 3d,\" (write none "
		     "for an empty list)");
	expect_error("[retries]\nschedule = 1h,2h,3h,4h,5h,6h,7h,8h,9h,10h,11h,12h,13h,14h,15h,"
		     "16h,17h\n",
		     "x.conf:2: [retries] schedule: at most 16 retries, got 17");
	expect_error("[upgrades]\nbilling_reasons = manual, manual\n",
		     "x.conf:2: [upgrades] billing_reasons: billing reason \"manual\" is listed "
		     "twice");
	expect_error("[upgrades]\nbilling_reasons = other, subscription_cycle, "
		     "subscription_create, subscription_update, manual\n",
		     "x.conf:2: [upgrades] billing_reasons: at most 4 billing reasons");
	expect_error("[upgrades]\nmax_stage = bad_debt\n",
		     "x.conf:2: [upgrades] max_stage: upgrade failures never lead to bad debt; the "
		     "highest allowed is suspended, got \"bad_debt\"");
	expect_error("[skip]\nsegments = contract, contract\n",
		     "x.conf:2: [skip] segments: segment \"contract\" is listed twice");
	/* A # after a value is not a comment, so the value is wrong. */
	expect_error("[stages]\nrestricted_after = 7d # a week\n",
		     "x.conf:2: [stages] restricted_after: expected a duration like 7d, 36h, 90m "
		     "or 45s, got \"7d # a week\"");
}

static void test_bad_declines(void)
{
	expect_error("[declines]\ndecline_code.lost_card = sometimes\n",
		     "x.conf:2: [declines] decline_code.lost_card: expected hard, soft or \"soft "
		     "after <duration>\", got \"sometimes\"");
	expect_error("[declines]\ndecline_code.lost_card = hardly\n",
		     "x.conf:2: [declines] decline_code.lost_card: expected hard, soft or \"soft "
		     "after <duration>\", got \"hardly\"");
	expect_error("[declines]\nnetwork_advice_code.24 = soft before 1h\n",
		     "x.conf:2: [declines] network_advice_code.24: expected hard, soft or \"soft "
		     "after <duration>\", got \"soft before 1h\"");
	expect_error("[declines]\nnetwork_advice_code.03 = hard after 1h\n",
		     "x.conf:2: [declines] network_advice_code.03: a hard decline is never "
		     "retried, so \"after\" makes no sense: \"hard after 1h\"");
	expect_error("[declines]\ndefault = maybe\n",
		     "x.conf:2: [declines] default: expected hard or soft, got \"maybe\"");
	expect_error("[declines]\ndecline_code.lost_card = hard\n# again\n"
		     "decline_code.lost_card = soft\n",
		     "x.conf:4: [declines] decline_code.lost_card: given twice (first on line 2)");
	expect_error("[declines]\ndecline_code.lost card = hard\n",
		     "x.conf:2: [declines] decline_code.lost card: a code is 1 to 47 letters, "
		     "digits, '_' or '-', got \"lost card\"");
}

static void test_structure(void)
{
	expect_error("[stages]\nrestricted_after = 7d\nrestricted_after = 8d\n",
		     "x.conf:3: [stages] restricted_after: given twice (first on line 2)");
	expect_error("[stages\nrestricted_after = 7d\n",
		     "x.conf:1: syntax error: expected a [section] header or a key = value line");
	expect_error("[stages] restricted\nrestricted_after = 7d\n",
		     "x.conf:1: unexpected text after the section header: \"restricted\" (comments "
		     "start with ; or #)");
	expect_error("[stages]\nrestricted_after 7d\n",
		     "x.conf:2: syntax error: expected a [section] header or a key = value line");
	/* The first error wins, whichever part of the loader saw it. */
	expect_error("[stages]\nrestricted_after 7d\nsuspended_after = x\n",
		     "x.conf:2: syntax error: expected a [section] header or a key = value line");
	expect_error("[stages]\nsuspended_after = x\nrestricted_after 7d\n",
		     "x.conf:2: [stages] suspended_after: expected a duration like 7d, 36h, 90m or "
		     "45s, got \"x\"");
	char text[400];
	memset(text, 0, sizeof text);
	strcpy(text, "[stages]\n# ");
	memset(text + strlen(text), 'x', 250);
	strcat(text, "\nrestricted_after = 1d\n");
	expect_error(text, "x.conf:2: line is too long (at most 197 characters)");
}

static void test_inconsistent_thresholds(void)
{
	expect_error("[stages]\nrestricted_after = 20d\n",
		     "x.conf:2: [stages] restricted_after: 20d must be shorter than "
		     "suspended_after (14d, the default)");
	expect_error("[stages]\nbad_debt_after = 10d\n",
		     "x.conf:2: [stages] bad_debt_after: 10d must be longer than suspended_after "
		     "(14d, the default)");
	expect_error("[stages]\nrestricted_after = 7d\nsuspended_after = 5d\n",
		     "x.conf:3: [stages] suspended_after: 5d must be longer than restricted_after "
		     "(7d, line 2)");
	expect_error("[stages]\nsuspended_after = 5d\nrestricted_after = 7d\n",
		     "x.conf:3: [stages] restricted_after: 7d must be shorter than "
		     "suspended_after (5d, line 2)");
	expect_error("[stages]\nsuspended_after = 30d\n",
		     "x.conf:2: [stages] suspended_after: 30d must be shorter than bad_debt_after "
		     "(30d, the default)");
}

static void test_files(const char *default_path)
{
	struct dun_policy p;
	char err[ERR_MAX];
	enum dun_err rc =
	    dun_policy_file_load("/nonexistent/dunning/policy.conf", &p, err, sizeof err);
	CHECK_INT(rc, DUN_E_NOT_FOUND);
	CHECK_STR(err, "/nonexistent/dunning/policy.conf: cannot open: No such file or "
		       "directory");

	rc = dun_policy_file_load("/", &p, err, sizeof err);
	CHECK_INT(rc, DUN_E_IO);
	CHECK_STR(err, "/: cannot read: Is a directory");

	/* A real file: the message starts with its path. */
	char path[] = "/tmp/dunning-policy-XXXXXX";
	int fd = mkstemp(path);
	CHECK(fd >= 0);
	if (fd >= 0) {
		static const char text[] = "[stages]\nrestricted_after = 7d\n\n[bad_debt]\nban = "
					   "maybe\n";
		CHECK(write(fd, text, sizeof text - 1) == (ssize_t)(sizeof text - 1));
		close(fd);
		rc = dun_policy_file_load(path, &p, err, sizeof err);
		CHECK_INT(rc, DUN_E_CONFIG);
		char want[256];
		snprintf(want, sizeof want,
			 "%s:5: [bad_debt] ban: expected true or false, got \"maybe\"", path);
		CHECK_STR(err, want);
		unlink(path);
	}

	/* No room for a message is allowed. */
	rc = dun_policy_file_load(default_path, &p, NULL, 0);
	CHECK_INT(rc, DUN_OK);
	rc = dun_policy_file_load_string("[x]\n", "x", &p, NULL, 0);
	CHECK_INT(rc, DUN_E_CONFIG);
	/* A small buffer truncates the message, never overflows. */
	char small[8];
	rc = dun_policy_file_load_string("[x]\n", "x.conf", &p, small, sizeof small);
	CHECK_STR(small, "x.conf:");
}

int main(int argc, char **argv)
{
	if (argc != 2) {
		fprintf(stderr, "usage: %s POLICY/DEFAULT.CONF\n", argv[0]);
		return 2;
	}
	test_default_conf_is_the_defaults(argv[1]);
	test_round_trips();
	test_partial_files();
	test_bad_durations();
	test_unknown_names();
	test_bad_values();
	test_bad_declines();
	test_structure();
	test_inconsistent_thresholds();
	test_files(argv[1]);
	return CHECK_DONE();
}
