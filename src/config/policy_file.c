/*
 * policy_file.c — read and write the policy file (format: docs/policy.md).
 *
 * This is start-up configuration, before the pipeline: the file is read
 * once into a struct dun_policy, and the pure core never sees text. libinih
 * splits the file into sections and key = value pairs; this file decides
 * what every pair means, rejects anything it does not know, and checks the
 * keys against each other once the whole file is read.
 *
 * inih reads its lines through read_line() below rather than straight from
 * the file, for three reasons. Debian builds inih without line numbers in
 * the handler, and every message must name its line, so the reader counts.
 * inih does not call the handler for a section header, so an empty
 * [declines] (which still replaces the built-in table) or an unknown empty
 * section would go unnoticed; the reader sees the headers. And inih reads an
 * indented line as the continuation of the previous value, which would turn
 * an indented key into part of another key's value; the reader strips the
 * indentation, so continuation lines never exist and indenting is harmless.
 *
 * The result is all or nothing: the caller's policy is written only when
 * the whole file loaded and passed every check.
 */
#include "policy_file.h"

#include "core/text.h"

#include <errno.h>
#include <ini.h>
#include <stdarg.h>
#include <string.h>

#define DAY_S		   86400
#define MSG_MAX		   512
#define LINE_BUF	   1024 /* longer than any line inih accepts */
#define ITEM_MAX	   64	/* one item of a comma list */
#define LIST_MAX	   32	/* items of one comma list */
#define MAX_ATTEMPTS_LIMIT 50

/* ---- the keys ------------------------------------------------------------ */

enum key_id {
	K_RESTRICTED_AFTER,
	K_SUSPENDED_AFTER,
	K_BAD_DEBT_AFTER,
	K_UPGRADE_REASONS,
	K_UPGRADE_MAX_STAGE,
	K_RETRY_SCHEDULE,
	K_MAX_ATTEMPTS,
	K_RETRY_OWNER,
	K_LIFTING_WINDOW,
	K_PROCESSING_MAX,
	K_PROCESSING_RECHECK_AFTER,
	K_SKIP_SEGMENTS,
	K_MARK_UNCOLLECTIBLE,
	K_CANCEL_SUBSCRIPTIONS,
	K_BAN,
	K_REMOVE_RESOURCE_FLAGS,
	K_ENTITLEMENT,
	K_DECLINE_DEFAULT,
};

struct key_def {
	const char *section;
	const char *name;
	enum key_id id;
	enum dun_stage stage; /* K_ENTITLEMENT only */
};

#define ENTITLEMENT_KEY(name, str) {"entitlements", str, K_ENTITLEMENT, name},
static const struct key_def keys[] = {
    {"stages", "restricted_after", K_RESTRICTED_AFTER, DUN_STAGE_NONE},
    {"stages", "suspended_after", K_SUSPENDED_AFTER, DUN_STAGE_NONE},
    {"stages", "bad_debt_after", K_BAD_DEBT_AFTER, DUN_STAGE_NONE},
    {"upgrades", "billing_reasons", K_UPGRADE_REASONS, DUN_STAGE_NONE},
    {"upgrades", "max_stage", K_UPGRADE_MAX_STAGE, DUN_STAGE_NONE},
    {"retries", "schedule", K_RETRY_SCHEDULE, DUN_STAGE_NONE},
    {"retries", "max_attempts", K_MAX_ATTEMPTS, DUN_STAGE_NONE},
    {"retries", "owner", K_RETRY_OWNER, DUN_STAGE_NONE},
    {"guard", "lifting_window", K_LIFTING_WINDOW, DUN_STAGE_NONE},
    {"guard", "processing_max", K_PROCESSING_MAX, DUN_STAGE_NONE},
    {"guard", "processing_recheck_after", K_PROCESSING_RECHECK_AFTER, DUN_STAGE_NONE},
    {"skip", "segments", K_SKIP_SEGMENTS, DUN_STAGE_NONE},
    {"bad_debt", "mark_uncollectible", K_MARK_UNCOLLECTIBLE, DUN_STAGE_NONE},
    {"bad_debt", "cancel_subscriptions", K_CANCEL_SUBSCRIPTIONS, DUN_STAGE_NONE},
    {"bad_debt", "ban", K_BAN, DUN_STAGE_NONE},
    {"bad_debt", "remove_resource_flags", K_REMOVE_RESOURCE_FLAGS, DUN_STAGE_NONE},
    DUN_STAGE_LIST(ENTITLEMENT_KEY){"declines", "default", K_DECLINE_DEFAULT, DUN_STAGE_NONE},
};
#undef ENTITLEMENT_KEY
#define N_KEYS ((int)(sizeof keys / sizeof keys[0]))

static const char *const sections[] = {
    "stages", "upgrades", "retries", "guard", "skip", "bad_debt", "entitlements", "declines",
};
#define N_SECTIONS ((int)(sizeof sections / sizeof sections[0]))

/* ", a, b, c": the known names of an enum, for messages (skip the first 2). */
#define JOIN_NAME(name, str) ", " str
static const char stage_names[] = "" DUN_STAGE_LIST(JOIN_NAME);
static const char entitlement_names[] = "" DUN_ENTITLEMENT_LIST(JOIN_NAME);
static const char segment_names[] = "" DUN_SEGMENT_LIST(JOIN_NAME);
static const char billing_reason_names[] = "" DUN_BILLING_REASON_LIST(JOIN_NAME);
#undef JOIN_NAME

static const char duration_hint[] = "expected a duration like 7d, 36h, 90m or 45s";

/* ---- the loading context ------------------------------------------------- */

struct load {
	const char *name; /* the file name messages start with */
	/* the source: a file, or text in memory */
	FILE *file;
	const char *text;
	size_t text_pos;
	bool eof;
	int line; /* the line inih is working on */
	/* what the file said so far */
	struct dun_policy p;
	int key_line[N_KEYS]; /* 0: not in the file */
	bool declines_seen;
	int decline_line[DUN_DECLINE_RULES_MAX];
	/* the first error */
	bool failed;
	int fail_line;
	enum dun_err code;
	char msg[MSG_MAX];
};

/*
 * Record the first error as "name:line: [section] key: message". line 0
 * leaves the line out (a check of a key the file does not set); section and
 * key may be NULL.
 */
__attribute__((format(printf, 5, 6))) static void
fail(struct load *l, int line, const char *section, const char *key, const char *fmt, ...)
{
	if (l->failed)
		return;
	l->failed = true;
	l->fail_line = line;
	l->code = DUN_E_CONFIG;
	struct dun_text t;
	char num[24];
	dun_text_init(&t, l->msg, sizeof l->msg);
	dun_text_str(&t, l->name);
	if (line > 0) {
		snprintf(num, sizeof num, ":%d", line);
		dun_text_str(&t, num);
	}
	dun_text_str(&t, ": ");
	if (section) {
		dun_text_str(&t, "[");
		dun_text_str(&t, section);
		dun_text_str(&t, "]");
		dun_text_str(&t, key ? " " : ": ");
	}
	if (key) {
		dun_text_str(&t, key);
		dun_text_str(&t, ": ");
	}
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(l->msg + t.len, sizeof l->msg - t.len, fmt, ap);
	va_end(ap);
}

/* fail() at the current line, for key k. */
#define fail_key(l, k, ...) fail((l), (l)->line, (k)->section, (k)->name, __VA_ARGS__)

/* ---- reading lines ------------------------------------------------------- */

static int src_getc(struct load *l)
{
	if (l->file)
		return getc(l->file);
	if (!l->text[l->text_pos])
		return EOF;
	return (unsigned char)l->text[l->text_pos++];
}

static bool is_known_section(const char *name)
{
	for (int i = 0; i < N_SECTIONS; i++)
		if (strcmp(sections[i], name) == 0)
			return true;
	return false;
}

static void section_header(struct load *l, const char *p)
{
	const char *end = strchr(p + 1, ']');
	if (!end)
		return; /* inih reports the syntax error */
	/* inih ignores whatever follows the ']'; a stray word there is a slip. */
	const char *rest = end + 1;
	while (*rest == ' ' || *rest == '\t')
		rest++;
	if (*rest && *rest != ';' && *rest != '#') {
		fail(
		    l, l->line, NULL, NULL,
		    "unexpected text after the section header: \"%s\" (comments start with ; or #)",
		    rest);
		return;
	}
	char name[ITEM_MAX];
	size_t n = (size_t)(end - (p + 1));
	if (n >= sizeof name)
		n = sizeof name - 1;
	memcpy(name, p + 1, n);
	name[n] = '\0';
	if (!is_known_section(name)) {
		fail(l, l->line, name, NULL,
		     "unknown section (known: stages, upgrades, retries, guard, skip, bad_debt, "
		     "entitlements, declines)");
		return;
	}
	/* A [declines] section replaces the built-in table, even when empty. */
	if (strcmp(name, "declines") == 0 && !l->declines_seen) {
		l->declines_seen = true;
		memset(l->p.declines, 0, sizeof l->p.declines);
		l->p.n_declines = 0;
	}
}

/*
 * inih's reader (fgets-shaped): hand inih one whole line at a time, counted,
 * without indentation, and stop at the first error.
 */
static char *read_line(char *str, int num, void *stream)
{
	struct load *l = stream;
	if (l->failed || l->eof)
		return NULL;
	char buf[LINE_BUF];
	size_t len = 0;
	bool too_long = false, nul = false;
	int c;
	while ((c = src_getc(l)) != EOF && c != '\n') {
		if (c == '\0')
			nul = true;
		if (len < sizeof buf - 1)
			buf[len++] = (char)c;
		else
			too_long = true;
	}
	if (c == EOF) {
		if (l->file && ferror(l->file)) {
			int e = errno;
			fail(l, 0, NULL, NULL, "cannot read: %s", strerror(e));
			l->code = DUN_E_IO;
			return NULL;
		}
		if (len == 0 && !too_long)
			return NULL;
		l->eof = true;
	}
	buf[len] = '\0';
	l->line++;
	if (len && buf[len - 1] == '\r')
		buf[--len] = '\0';
	/* inih needs room for the line, its newline and the NUL. */
	size_t limit = num > 3 ? (size_t)num - 3 : 0;
	if (too_long || len > limit) {
		fail(l, l->line, NULL, NULL, "line is too long (at most %zu characters)", limit);
		return NULL;
	}
	if (nul) {
		fail(l, l->line, NULL, NULL, "line contains a NUL byte; is this a text file?");
		return NULL;
	}
	const char *p = buf;
	if (l->line == 1 && (unsigned char)p[0] == 0xEF && (unsigned char)p[1] == 0xBB &&
	    (unsigned char)p[2] == 0xBF)
		p += 3;
	while (*p == ' ' || *p == '\t')
		p++;
	if (*p == '[')
		section_header(l, p);
	if (l->failed)
		return NULL;
	size_t n = strlen(p);
	memcpy(str, p, n);
	str[n] = '\n';
	str[n + 1] = '\0';
	return str;
}

/* ---- values ------------------------------------------------------------- */

enum dur_result { DUR_OK, DUR_JUNK, DUR_NEGATIVE, DUR_TOO_LARGE };

static bool is_digit(char c)
{
	return c >= '0' && c <= '9';
}

static enum dur_result parse_duration(const char *s, int64_t *out)
{
	if (s[0] == '-' && is_digit(s[1]))
		return DUR_NEGATIVE;
	if (!is_digit(*s))
		return DUR_JUNK;
	int64_t n = 0;
	bool big = false;
	for (; is_digit(*s); s++) {
		/* Stop growing well before int64 could overflow; big is enough. */
		if (n > DUN_POLICY_DURATION_MAX_S)
			big = true;
		else
			n = n * 10 + (*s - '0');
	}
	int64_t unit;
	switch (*s) {
	case 'd':
		unit = DAY_S;
		break;
	case 'h':
		unit = 3600;
		break;
	case 'm':
		unit = 60;
		break;
	case 's':
		unit = 1;
		break;
	default:
		return DUR_JUNK;
	}
	if (s[1] != '\0')
		return DUR_JUNK;
	if (big || n > DUN_POLICY_DURATION_MAX_S / unit)
		return DUR_TOO_LARGE;
	*out = n * unit;
	return DUR_OK;
}

bool dun_policy_file_parse_duration(const char *s, int64_t *seconds)
{
	return s && parse_duration(s, seconds) == DUR_OK;
}

/* Parse a duration for key k, or record why it is not one. */
static bool duration_value(struct load *l, const struct key_def *k, const char *s, int64_t *out)
{
	switch (parse_duration(s, out)) {
	case DUR_OK:
		return true;
	case DUR_JUNK:
		fail(l, l->line, k->section, k->name, "%s, got \"%s\"", duration_hint, s);
		return false;
	case DUR_NEGATIVE:
		fail_key(l, k, "a duration cannot be negative, got \"%s\"", s);
		return false;
	case DUR_TOO_LARGE:
		fail_key(l, k, "duration \"%s\" is too large (at most 36500d)", s);
		return false;
	}
	return false;
}

static bool bool_value(struct load *l, const struct key_def *k, const char *s, bool *out)
{
	if (strcmp(s, "true") == 0)
		*out = true;
	else if (strcmp(s, "false") == 0)
		*out = false;
	else {
		fail_key(l, k, "expected true or false, got \"%s\"", s);
		return false;
	}
	return true;
}

static bool billing_reason_parse(const char *s, enum dun_billing_reason *out)
{
	for (int i = 0; i < DUN_BILLING_REASON__COUNT; i++)
		if (strcmp(dun_billing_reason_name((enum dun_billing_reason)i), s) == 0) {
			*out = (enum dun_billing_reason)i;
			return true;
		}
	return false;
}

struct list {
	int n;
	char items[LIST_MAX][ITEM_MAX];
};

/*
 * Split a comma list into trimmed items. The single word "none" is the empty
 * list; an empty item ("1d,,3d", a trailing comma) is an error, because it
 * is more likely a slip than a wish.
 */
static bool split_list(struct load *l, const struct key_def *k, const char *value, struct list *out)
{
	out->n = 0;
	if (strcmp(value, "none") == 0)
		return true;
	const char *p = value;
	for (;;) {
		while (*p == ' ' || *p == '\t')
			p++;
		const char *end = strchr(p, ',');
		size_t n = end ? (size_t)(end - p) : strlen(p);
		while (n && (p[n - 1] == ' ' || p[n - 1] == '\t'))
			n--;
		if (n == 0) {
			fail_key(l, k,
				 "empty item in the list \"%s\" (write none for an empty list)",
				 value);
			return false;
		}
		if (out->n >= LIST_MAX || n >= ITEM_MAX) {
			fail_key(l, k, "the list \"%s\" is too long", value);
			return false;
		}
		memcpy(out->items[out->n], p, n);
		out->items[out->n][n] = '\0';
		out->n++;
		if (!end)
			return true;
		p = end + 1;
	}
}

static bool reason_list(struct load *l, const struct key_def *k, const char *value)
{
	struct list li;
	if (!split_list(l, k, value, &li))
		return false;
	struct dun_policy *p = &l->p;
	memset(p->upgrade_reasons, 0, sizeof p->upgrade_reasons);
	p->n_upgrade_reasons = 0;
	for (int i = 0; i < li.n; i++) {
		enum dun_billing_reason br;
		if (!billing_reason_parse(li.items[i], &br)) {
			fail(l, l->line, k->section, k->name,
			     "unknown billing reason \"%s\" (known: %s)", li.items[i],
			     billing_reason_names + 2);
			return false;
		}
		for (int j = 0; j < p->n_upgrade_reasons; j++)
			if (p->upgrade_reasons[j] == br) {
				fail_key(l, k, "billing reason \"%s\" is listed twice",
					 li.items[i]);
				return false;
			}
		if (p->n_upgrade_reasons >= DUN_UPGRADE_REASONS_MAX) {
			fail(l, l->line, k->section, k->name, "at most %d billing reasons",
			     DUN_UPGRADE_REASONS_MAX);
			return false;
		}
		p->upgrade_reasons[p->n_upgrade_reasons++] = br;
	}
	return true;
}

static bool schedule_list(struct load *l, const struct key_def *k, const char *value)
{
	struct list li;
	if (!split_list(l, k, value, &li))
		return false;
	struct dun_policy *p = &l->p;
	if (li.n > DUN_RETRY_SCHEDULE_MAX) {
		fail(l, l->line, k->section, k->name, "at most %d retries, got %d",
		     DUN_RETRY_SCHEDULE_MAX, li.n);
		return false;
	}
	memset(p->retry_schedule_s, 0, sizeof p->retry_schedule_s);
	p->n_retry_schedule = 0;
	for (int i = 0; i < li.n; i++) {
		int64_t s;
		if (!duration_value(l, k, li.items[i], &s))
			return false;
		if (s == 0) {
			fail_key(l, k,
				 "retry offsets count from the first failed attempt and must be "
				 "greater than 0, got \"%s\"",
				 li.items[i]);
			return false;
		}
		if (i > 0 && s <= p->retry_schedule_s[i - 1]) {
			fail(l, l->line, k->section, k->name,
			     "the schedule must be strictly increasing, but \"%s\" follows \"%s\"",
			     li.items[i], li.items[i - 1]);
			return false;
		}
		p->retry_schedule_s[p->n_retry_schedule++] = s;
	}
	return true;
}

static bool segment_list(struct load *l, const struct key_def *k, const char *value)
{
	struct list li;
	if (!split_list(l, k, value, &li))
		return false;
	bool skip[DUN_SEGMENT__COUNT] = {false};
	for (int i = 0; i < li.n; i++) {
		enum dun_segment seg;
		if (!dun_segment_parse(li.items[i], &seg)) {
			fail(l, l->line, k->section, k->name, "unknown segment \"%s\" (known: %s)",
			     li.items[i], segment_names + 2);
			return false;
		}
		if (skip[seg]) {
			fail_key(l, k, "segment \"%s\" is listed twice", li.items[i]);
			return false;
		}
		skip[seg] = true;
	}
	memcpy(l->p.skip_segment, skip, sizeof skip);
	return true;
}

static bool max_attempts_value(struct load *l, const struct key_def *k, const char *s)
{
	int n = 0;
	const char *q = s;
	for (; is_digit(*q) && n <= MAX_ATTEMPTS_LIMIT; q++)
		n = n * 10 + (*q - '0');
	if (q == s || *q || n < 1 || n > MAX_ATTEMPTS_LIMIT) {
		fail(l, l->line, k->section, k->name,
		     "expected a whole number of attempts from 1 to %d (the first attempt "
		     "included), got \"%s\"",
		     MAX_ATTEMPTS_LIMIT, s);
		return false;
	}
	l->p.max_attempts = n;
	return true;
}

static bool stage_value(struct load *l, const struct key_def *k, const char *s)
{
	enum dun_stage st;
	if (!dun_stage_parse(s, &st)) {
		fail(l, l->line, k->section, k->name, "expected a stage (%s), got \"%s\"",
		     stage_names + 2, s);
		return false;
	}
	if (st == DUN_STAGE_BAD_DEBT) {
		fail_key(l, k,
			 "upgrade failures never lead to bad debt; the highest allowed is "
			 "suspended, got \"%s\"",
			 s);
		return false;
	}
	l->p.upgrade_max_stage = st;
	return true;
}

static bool entitlement_value(struct load *l, const struct key_def *k, const char *s)
{
	enum dun_entitlement e;
	if (!dun_entitlement_parse(s, &e)) {
		fail(l, l->line, k->section, k->name, "expected an entitlement (%s), got \"%s\"",
		     entitlement_names + 2, s);
		return false;
	}
	l->p.entitlement[k->stage] = e;
	return true;
}

static bool class_word(const char *s, size_t n, enum dun_decline_class *out)
{
	if (n == 4 && strncmp(s, "hard", 4) == 0)
		*out = DUN_DECLINE_HARD;
	else if (n == 4 && strncmp(s, "soft", 4) == 0)
		*out = DUN_DECLINE_SOFT;
	else
		return false;
	return true;
}

#define CLASS_HINT "expected hard, soft or \"soft after <duration>\", got \"%s\""

/*
 * A decline class: "hard", "soft", or "soft after <duration>" (a soft
 * decline that must not be retried sooner than the duration after it).
 */
static bool decline_class_value(struct load *l, const char *key, const char *s,
				enum dun_decline_class *cls, int64_t *delay_s)
{
	size_t n = strcspn(s, " \t");
	if (!class_word(s, n, cls)) {
		fail(l, l->line, "declines", key, CLASS_HINT, s);
		return false;
	}
	*delay_s = 0;
	const char *p = s + n;
	while (*p == ' ' || *p == '\t')
		p++;
	if (!*p)
		return true;
	if (strncmp(p, "after", 5) != 0 || (p[5] != ' ' && p[5] != '\t')) {
		fail(l, l->line, "declines", key, CLASS_HINT, s);
		return false;
	}
	if (*cls == DUN_DECLINE_HARD) {
		fail(l, l->line, "declines", key,
		     "a hard decline is never retried, so \"after\" makes no sense: \"%s\"", s);
		return false;
	}
	p += 5;
	while (*p == ' ' || *p == '\t')
		p++;
	struct key_def k = {"declines", key, K_DECLINE_DEFAULT, DUN_STAGE_NONE};
	return duration_value(l, &k, p, delay_s);
}

static const char *field_name(enum dun_decline_field f)
{
	switch (f) {
	case DUN_DECLINE_FIELD_ADVICE_CODE:
		return "advice_code";
	case DUN_DECLINE_FIELD_NETWORK_ADVICE_CODE:
		return "network_advice_code";
	case DUN_DECLINE_FIELD_DECLINE_CODE:
		return "decline_code";
	}
	return "?";
}

static bool field_parse(const char *s, size_t n, enum dun_decline_field *out)
{
	static const enum dun_decline_field all[] = {
	    DUN_DECLINE_FIELD_ADVICE_CODE,
	    DUN_DECLINE_FIELD_NETWORK_ADVICE_CODE,
	    DUN_DECLINE_FIELD_DECLINE_CODE,
	};
	for (size_t i = 0; i < sizeof all / sizeof all[0]; i++) {
		const char *name = field_name(all[i]);
		if (strlen(name) == n && strncmp(name, s, n) == 0) {
			*out = all[i];
			return true;
		}
	}
	return false;
}

static bool code_is_valid(const char *s)
{
	if (!*s)
		return false;
	for (; *s; s++)
		if (!is_digit(*s) && !(*s >= 'a' && *s <= 'z') && !(*s >= 'A' && *s <= 'Z') &&
		    *s != '_' && *s != '-')
			return false;
	return true;
}

/* One rule of [declines]: "<field>.<code> = <class>". */
static bool decline_rule(struct load *l, const char *key, const char *value)
{
	const char *dot = strchr(key, '.');
	enum dun_decline_field field;
	if (!dot || !field_parse(key, (size_t)(dot - key), &field)) {
		fail(l, l->line, "declines", key,
		     "unknown key (expected default, or a rule named advice_code.<code>, "
		     "network_advice_code.<code> or decline_code.<code>)");
		return false;
	}
	const char *code = dot + 1;
	if (!code_is_valid(code) || strlen(code) >= DUN_CODE_MAX) {
		fail(l, l->line, "declines", key,
		     "a code is 1 to %d letters, digits, '_' or '-', got \"%s\"", DUN_CODE_MAX - 1,
		     code);
		return false;
	}
	enum dun_decline_class cls;
	int64_t delay_s;
	if (!decline_class_value(l, key, value, &cls, &delay_s))
		return false;
	struct dun_policy *p = &l->p;
	for (int i = 0; i < p->n_declines; i++)
		if (p->declines[i].field == field && strcmp(p->declines[i].code, code) == 0) {
			fail(l, l->line, "declines", key, "given twice (first on line %d)",
			     l->decline_line[i]);
			return false;
		}
	if (p->n_declines >= DUN_DECLINE_RULES_MAX) {
		fail(l, l->line, "declines", key, "too many rules (at most %d)",
		     DUN_DECLINE_RULES_MAX);
		return false;
	}
	l->decline_line[p->n_declines] = l->line;
	struct dun_decline_rule *r = &p->declines[p->n_declines++];
	r->field = field;
	dun_strlcpy(r->code, code, sizeof r->code);
	r->cls = cls;
	r->min_delay_s = delay_s;
	return true;
}

static bool set_key(struct load *l, const struct key_def *k, const char *v)
{
	struct dun_policy *p = &l->p;
	switch (k->id) {
	case K_RESTRICTED_AFTER:
		return duration_value(l, k, v, &p->restricted_after_s);
	case K_SUSPENDED_AFTER:
		return duration_value(l, k, v, &p->suspended_after_s);
	case K_BAD_DEBT_AFTER:
		return duration_value(l, k, v, &p->bad_debt_after_s);
	case K_UPGRADE_REASONS:
		return reason_list(l, k, v);
	case K_UPGRADE_MAX_STAGE:
		return stage_value(l, k, v);
	case K_RETRY_SCHEDULE:
		return schedule_list(l, k, v);
	case K_MAX_ATTEMPTS:
		return max_attempts_value(l, k, v);
	case K_RETRY_OWNER:
		if (!dun_retry_owner_parse(v, &p->retry_owner)) {
			fail_key(l, k, "expected engine or stripe, got \"%s\"", v);
			return false;
		}
		return true;
	case K_LIFTING_WINDOW:
		return duration_value(l, k, v, &p->lifting_window_s);
	case K_PROCESSING_MAX:
		return duration_value(l, k, v, &p->processing_max_s);
	case K_PROCESSING_RECHECK_AFTER:
		return duration_value(l, k, v, &p->processing_recheck_after_s);
	case K_SKIP_SEGMENTS:
		return segment_list(l, k, v);
	case K_MARK_UNCOLLECTIBLE:
		return bool_value(l, k, v, &p->bad_debt_mark_uncollectible);
	case K_CANCEL_SUBSCRIPTIONS:
		return bool_value(l, k, v, &p->bad_debt_cancel_subscriptions);
	case K_BAN:
		return bool_value(l, k, v, &p->bad_debt_ban);
	case K_REMOVE_RESOURCE_FLAGS:
		return bool_value(l, k, v, &p->bad_debt_remove_resource_flags);
	case K_ENTITLEMENT:
		return entitlement_value(l, k, v);
	case K_DECLINE_DEFAULT: {
		enum dun_decline_class cls;
		if (!class_word(v, strlen(v), &cls)) {
			fail_key(l, k, "expected hard or soft, got \"%s\"", v);
			return false;
		}
		p->decline_default = cls;
		return true;
	}
	}
	return false;
}

static void known_keys(const char *section, char *out, size_t out_size)
{
	struct dun_text t;
	dun_text_init(&t, out, out_size);
	for (int i = 0; i < N_KEYS; i++) {
		if (strcmp(keys[i].section, section) != 0)
			continue;
		if (t.len)
			dun_text_str(&t, ", ");
		dun_text_str(&t, keys[i].name);
	}
	if (strcmp(section, "declines") == 0)
		dun_text_str(&t, ", advice_code.<code>, network_advice_code.<code>, "
				 "decline_code.<code>");
}

/* inih's handler: one key = value pair. Returns 0 to report an error. */
static int on_pair(void *user, const char *section, const char *name, const char *value)
{
	struct load *l = user;
	if (l->failed)
		return 0;
	if (!section[0]) {
		fail(l, l->line, NULL, NULL,
		     "%s: key outside of any section (the first key must follow a header such "
		     "as [stages])",
		     name);
		return 0;
	}
	if (!value[0]) {
		fail(l, l->line, section, name, "missing value");
		return 0;
	}
	if (strcmp(section, "declines") == 0 && strcmp(name, "default") != 0)
		return decline_rule(l, name, value);
	int idx = -1;
	for (int i = 0; i < N_KEYS && idx < 0; i++)
		if (strcmp(keys[i].section, section) == 0 && strcmp(keys[i].name, name) == 0)
			idx = i;
	if (idx < 0) {
		char known[256];
		known_keys(section, known, sizeof known);
		fail(l, l->line, section, name, "unknown key (known: %s)", known);
		return 0;
	}
	if (l->key_line[idx]) {
		fail(l, l->line, section, name, "given twice (first on line %d)", l->key_line[idx]);
		return 0;
	}
	l->key_line[idx] = l->line;
	return set_key(l, &keys[idx], value);
}

/* ---- checks across keys -------------------------------------------------- */

static int key_index(enum key_id id)
{
	for (int i = 0; i < N_KEYS; i++)
		if (keys[i].id == id)
			return i;
	return 0;
}

/*
 * Require threshold a < threshold b. The message names the key the file set
 * (the later one when it set both), and says where the other value came
 * from, so a user who only changed one key sees that the other is a default.
 */
static void check_order(struct load *l, enum key_id a, int64_t a_s, enum key_id b, int64_t b_s)
{
	if (a_s < b_s)
		return;
	int ia = key_index(a), ib = key_index(b);
	int la = l->key_line[ia], lb = l->key_line[ib];
	char av[32], bv[32], where[40];
	struct dun_text t;
	dun_text_init(&t, av, sizeof av);
	dun_text_duration_exact(&t, a_s);
	dun_text_init(&t, bv, sizeof bv);
	dun_text_duration_exact(&t, b_s);
	if (lb >= la) {
		if (la)
			snprintf(where, sizeof where, "line %d", la);
		else
			snprintf(where, sizeof where, "the default");
		fail(l, lb, keys[ib].section, keys[ib].name, "%s must be longer than %s (%s, %s)",
		     bv, keys[ia].name, av, where);
	} else {
		if (lb)
			snprintf(where, sizeof where, "line %d", lb);
		else
			snprintf(where, sizeof where, "the default");
		fail(l, la, keys[ia].section, keys[ia].name, "%s must be shorter than %s (%s, %s)",
		     av, keys[ib].name, bv, where);
	}
}

static void check_policy(struct load *l)
{
	const struct dun_policy *p = &l->p;
	check_order(l, K_RESTRICTED_AFTER, p->restricted_after_s, K_SUSPENDED_AFTER,
		    p->suspended_after_s);
	check_order(l, K_SUSPENDED_AFTER, p->suspended_after_s, K_BAD_DEBT_AFTER,
		    p->bad_debt_after_s);
}

/* ---- loading ------------------------------------------------------------- */

static enum dun_err finish(struct load *l, int rc, struct dun_policy *out, char *err,
			   size_t err_size)
{
	/* inih's own complaint (no '=' or no ']') wins when its line came first. */
	if (rc > 0 && (!l->failed || rc < l->fail_line)) {
		l->failed = false;
		fail(l, rc, NULL, NULL,
		     "syntax error: expected a [section] header or a key = value line");
	} else if (rc < 0 && !l->failed) {
		fail(l, 0, NULL, NULL, "inih could not allocate its line buffer");
		l->code = DUN_E_IO;
	}
	if (!l->failed)
		check_policy(l);
	if (l->failed) {
		if (err && err_size)
			snprintf(err, err_size, "%s", l->msg);
		return l->code;
	}
	memcpy(out, &l->p, sizeof *out);
	if (err && err_size)
		err[0] = '\0';
	return DUN_OK;
}

static void load_init(struct load *l, const char *name)
{
	memset(l, 0, sizeof *l);
	l->name = name;
	dun_policy_defaults(&l->p);
}

enum dun_err dun_policy_file_load(const char *path, struct dun_policy *out, char *err,
				  size_t err_size)
{
	struct load load, *l = &load;
	load_init(l, path);
	l->file = fopen(path, "r");
	if (!l->file) {
		int e = errno;
		if (err && err_size)
			snprintf(err, err_size, "%s: cannot open: %s", path, strerror(e));
		return e == ENOENT ? DUN_E_NOT_FOUND : DUN_E_IO;
	}
	int rc = ini_parse_stream(read_line, l, on_pair, l);
	fclose(l->file);
	return finish(l, rc, out, err, err_size);
}

enum dun_err dun_policy_file_load_string(const char *text, const char *name, struct dun_policy *out,
					 char *err, size_t err_size)
{
	struct load load, *l = &load;
	load_init(l, name);
	l->text = text;
	int rc = ini_parse_stream(read_line, l, on_pair, l);
	return finish(l, rc, out, err, err_size);
}

/* ---- writing ------------------------------------------------------------- */

static void put_duration(FILE *out, const char *key, int64_t s)
{
	char buf[32];
	struct dun_text t;
	dun_text_init(&t, buf, sizeof buf);
	dun_text_duration_exact(&t, s);
	fprintf(out, "%s = %s\n", key, buf);
}

static const char *bool_name(bool b)
{
	return b ? "true" : "false";
}

static const char *class_name(enum dun_decline_class c)
{
	switch (c) {
	case DUN_DECLINE_SOFT:
		return "soft";
	case DUN_DECLINE_HARD:
		return "hard";
	}
	return "?";
}

void dun_policy_file_dump(const struct dun_policy *p, FILE *out)
{
	fputs("# dunning policy (format: docs/policy.md)\n", out);

	fputs("\n[stages]\n", out);
	put_duration(out, "restricted_after", p->restricted_after_s);
	put_duration(out, "suspended_after", p->suspended_after_s);
	put_duration(out, "bad_debt_after", p->bad_debt_after_s);

	fputs("\n[upgrades]\nbilling_reasons = ", out);
	if (p->n_upgrade_reasons == 0)
		fputs("none", out);
	for (int i = 0; i < p->n_upgrade_reasons; i++)
		fprintf(out, "%s%s", i ? ", " : "", dun_billing_reason_name(p->upgrade_reasons[i]));
	fprintf(out, "\nmax_stage = %s\n", dun_stage_name(p->upgrade_max_stage));

	fputs("\n[retries]\nschedule = ", out);
	if (p->n_retry_schedule == 0)
		fputs("none", out);
	for (int i = 0; i < p->n_retry_schedule; i++) {
		char buf[32];
		struct dun_text t;
		dun_text_init(&t, buf, sizeof buf);
		dun_text_duration_exact(&t, p->retry_schedule_s[i]);
		fprintf(out, "%s%s", i ? ", " : "", buf);
	}
	fprintf(out, "\nmax_attempts = %d\n", p->max_attempts);
	fprintf(out, "owner = %s\n", dun_retry_owner_name(p->retry_owner));

	fputs("\n[guard]\n", out);
	put_duration(out, "lifting_window", p->lifting_window_s);
	put_duration(out, "processing_max", p->processing_max_s);
	put_duration(out, "processing_recheck_after", p->processing_recheck_after_s);

	fputs("\n[skip]\nsegments = ", out);
	int n = 0;
	for (int i = 0; i < DUN_SEGMENT__COUNT; i++)
		if (p->skip_segment[i])
			fprintf(out, "%s%s", n++ ? ", " : "",
				dun_segment_name((enum dun_segment)i));
	if (n == 0)
		fputs("none", out);
	fputs("\n", out);

	fputs("\n[bad_debt]\n", out);
	fprintf(out, "mark_uncollectible = %s\n", bool_name(p->bad_debt_mark_uncollectible));
	fprintf(out, "cancel_subscriptions = %s\n", bool_name(p->bad_debt_cancel_subscriptions));
	fprintf(out, "ban = %s\n", bool_name(p->bad_debt_ban));
	fprintf(out, "remove_resource_flags = %s\n", bool_name(p->bad_debt_remove_resource_flags));

	fputs("\n[entitlements]\n", out);
	for (int i = 0; i < DUN_STAGE__COUNT; i++)
		fprintf(out, "%s = %s\n", dun_stage_name((enum dun_stage)i),
			dun_entitlement_name(p->entitlement[i]));

	fputs("\n[declines]\n", out);
	fprintf(out, "default = %s\n", class_name(p->decline_default));
	for (int i = 0; i < p->n_declines; i++) {
		const struct dun_decline_rule *r = &p->declines[i];
		fprintf(out, "%s.%s = %s", field_name(r->field), r->code, class_name(r->cls));
		if (r->cls == DUN_DECLINE_SOFT && r->min_delay_s > 0) {
			char buf[32];
			struct dun_text t;
			dun_text_init(&t, buf, sizeof buf);
			dun_text_duration_exact(&t, r->min_delay_s);
			fprintf(out, " after %s", buf);
		}
		fputs("\n", out);
	}
}
