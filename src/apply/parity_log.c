/*
 * parity_log.c — the legacy decision log parser (see parity_log.h). It
 * feeds `dunning parity`, which compares a legacy system's decisions with
 * the engine's observe-mode shadow before any write is turned on.
 */
#include "parity_log.h"
#include "util/clock.h"
#include "util/mem.h"

#include <jansson.h>
#include <stdlib.h>
#include <string.h>

const char *dun_parity_action_name(enum dun_parity_action a)
{
	switch (a) {
#define PA_NAME(name, str) \
	case name:         \
		return str;
		DUN_PARITY_ACTION_LIST(PA_NAME)
#undef PA_NAME
	}
	return "?";
}

bool dun_parity_action_parse(const char *s, enum dun_parity_action *out)
{
#define PA_PARSE(name, str)        \
	if (strcmp(s, str) == 0) { \
		*out = name;       \
		return true;       \
	}
	DUN_PARITY_ACTION_LIST(PA_PARSE)
#undef PA_PARSE
	return false;
}

void dun_parity_list_free(struct dun_parity_list *l)
{
	free(l->items);
	memset(l, 0, sizeof *l);
}

struct dun_parity_item *dun_parity_list_add(struct dun_parity_list *l)
{
	if (l->n == l->cap) {
		l->cap = l->cap ? l->cap * 2 : 256;
		l->items = dun_realloc(l->items, sizeof *l->items * (size_t)l->cap);
	}
	struct dun_parity_item *it = &l->items[l->n++];
	memset(it, 0, sizeof *it);
	it->match = -1;
	return it;
}

/* A required string field of at most size - 1 bytes, no NUL inside. */
static bool get_str(json_t *o, const char *key, char *out, size_t size, char *err, size_t err_size)
{
	json_t *v = json_object_get(o, key);
	if (!json_is_string(v)) {
		snprintf(err, err_size, "\"%s\": %s", key, v ? "must be a string" : "missing");
		return false;
	}
	size_t n = json_string_length(v);
	if (n == 0 || n >= size || strlen(json_string_value(v)) != n) {
		snprintf(err, err_size, "\"%s\": must be 1 to %zu characters", key, size - 1);
		return false;
	}
	memcpy(out, json_string_value(v), n + 1);
	return true;
}

static bool get_time(json_t *o, int64_t *out, char *err, size_t err_size)
{
	json_t *v = json_object_get(o, "time");
	if (json_is_integer(v) && json_integer_value(v) > 0 &&
	    json_integer_value(v) < 32503680000LL) {
		*out = json_integer_value(v);
		return true;
	}
	if (json_is_string(v) && dun_clock_parse(json_string_value(v), out))
		return true;
	snprintf(err, err_size,
		 "\"time\": %s (ISO 8601 UTC like 2026-03-02T09:00:00Z, or unix seconds)",
		 v ? "not a time" : "missing");
	return false;
}

static const char *const allowed_keys[] = {"account", "time",	 "action", "level",  "subscription",
					   "kind",    "invoice", "amount", "attempt"};

static bool parse_object(json_t *o, struct dun_parity_item *out, char *err, size_t err_size)
{
	const char *key;
	json_t *v;
	json_object_foreach(o, key, v)
	{
		bool known = false;
		for (size_t i = 0; i < sizeof allowed_keys / sizeof *allowed_keys; i++)
			known = known || !strcmp(key, allowed_keys[i]);
		if (!known) {
			snprintf(err, err_size, "unknown key \"%.60s\"", key);
			return false;
		}
	}
	char action[40];
	if (!get_str(o, "account", out->account, sizeof out->account, err, err_size) ||
	    !get_time(o, &out->at, err, err_size) ||
	    !get_str(o, "action", action, sizeof action, err, err_size))
		return false;
	if (!dun_parity_action_parse(action, &out->action)) {
		snprintf(err, err_size,
			 "unknown action \"%.40s\" (bad_debt_set, bad_debt_cleared, ban, unban, "
			 "entitlement, subscription_cancel, email, invoice_uncollectible, retry)",
			 action);
		return false;
	}
	/* Which extra keys each action takes; any other is an error. */
	bool want_level = false, want_sub = false, want_kind = false, want_invoice = false,
	     want_amount = false, want_attempt = false;
	switch (out->action) {
	case DUN_PA_BAD_DEBT_SET:
	case DUN_PA_BAD_DEBT_CLEARED:
	case DUN_PA_BAN:
	case DUN_PA_UNBAN:
		break;
	case DUN_PA_ENTITLEMENT:
		want_level = true;
		break;
	case DUN_PA_SUBSCRIPTION_CANCEL:
		want_sub = true;
		break;
	case DUN_PA_EMAIL:
		want_kind = true;
		break;
	case DUN_PA_INVOICE_UNCOLLECTIBLE:
		want_invoice = want_amount = true;
		break;
	case DUN_PA_RETRY:
		want_invoice = want_attempt = true;
		break;
	}
	if (want_kind) {
		enum dun_email_kind k;
		if (!get_str(o, "kind", out->detail, sizeof out->detail, err, err_size))
			return false;
		if (!dun_email_kind_parse(out->detail, &k)) {
			snprintf(err, err_size, "\"kind\": unknown email kind \"%s\"", out->detail);
			return false;
		}
		/* Payment notices are per invoice; stage emails are per account. */
		want_invoice = k == DUN_EMAIL_PAYMENT_FAILED || k == DUN_EMAIL_CARD_UPDATE_REQUIRED;
	}
	const struct {
		const char *key;
		bool want;
	} extra[] = {{"level", want_level},   {"subscription", want_sub},
		     {"kind", want_kind},     {"invoice", want_invoice},
		     {"amount", want_amount}, {"attempt", want_attempt}};
	for (size_t i = 0; i < sizeof extra / sizeof *extra; i++) {
		bool has = json_object_get(o, extra[i].key) != NULL;
		if (has != extra[i].want) {
			snprintf(err, err_size, "action %s %s \"%s\"", action,
				 extra[i].want ? "needs" : "takes no", extra[i].key);
			return false;
		}
	}
	if (want_level) {
		enum dun_entitlement lv;
		if (!get_str(o, "level", out->detail, sizeof out->detail, err, err_size))
			return false;
		if (!dun_entitlement_parse(out->detail, &lv)) {
			snprintf(err, err_size,
				 "\"level\": full, restricted or suspended, not \"%s\"",
				 out->detail);
			return false;
		}
	}
	if (want_sub && !get_str(o, "subscription", out->target, sizeof out->target, err, err_size))
		return false;
	if (want_invoice && !get_str(o, "invoice", out->target, sizeof out->target, err, err_size))
		return false;
	if (want_amount) {
		json_t *a = json_object_get(o, "amount");
		if (!json_is_integer(a) || json_integer_value(a) < 0) {
			snprintf(err, err_size,
				 "\"amount\": a whole number of minor units (cents), not negative");
			return false;
		}
		out->has_amount = true;
		out->amount = json_integer_value(a);
	}
	if (want_attempt) {
		json_t *a = json_object_get(o, "attempt");
		if (!json_is_integer(a) || json_integer_value(a) < 2 ||
		    json_integer_value(a) > 1000) {
			snprintf(err, err_size, "\"attempt\": a whole number from 2 to 1000");
			return false;
		}
		snprintf(out->detail, sizeof out->detail, "%lld", (long long)json_integer_value(a));
	}
	return true;
}

enum dun_err dun_parity_parse_line(const char *line, size_t len, struct dun_parity_item *out,
				   char *err, size_t err_size)
{
	memset(out, 0, sizeof *out);
	out->match = -1;
	json_error_t je;
	json_t *o = json_loadb(line, len, JSON_REJECT_DUPLICATES, &je);
	if (!o) {
		snprintf(err, err_size, "not JSON (%s, column %d)", je.text, je.column);
		return DUN_E_PARSE;
	}
	if (!json_is_object(o)) {
		json_decref(o);
		snprintf(err, err_size, "not a JSON object");
		return DUN_E_PARSE;
	}
	bool ok = parse_object(o, out, err, err_size);
	json_decref(o);
	return ok ? DUN_OK : DUN_E_PARSE;
}

static bool blank(const char *s, size_t n)
{
	for (size_t i = 0; i < n; i++)
		if (s[i] != ' ' && s[i] != '\t' && s[i] != '\r')
			return false;
	return true;
}

enum dun_err dun_parity_read_log(FILE *f, const char *name, struct dun_parity_list *out, char *err,
				 size_t err_size)
{
	char *line = NULL;
	size_t cap = 0;
	ssize_t n;
	int no = 0;
	enum dun_err e = DUN_OK;
	while ((n = getline(&line, &cap, f)) >= 0) {
		no++;
		bool complete = n > 0 && line[n - 1] == '\n';
		size_t len = (size_t)n - (complete ? 1 : 0);
		if (blank(line, len))
			continue;
		if (!complete) {
			/* A file cut off mid-line: refuse it rather than guess. */
			snprintf(err, err_size,
				 "%s:%d: the last line has no newline (a truncated "
				 "log?)",
				 name, no);
			e = DUN_E_PARSE;
			break;
		}
		struct dun_parity_item it;
		char why[300];
		if (dun_parity_parse_line(line, len, &it, why, sizeof why) != DUN_OK) {
			snprintf(err, err_size, "%s:%d: %s", name, no, why);
			e = DUN_E_PARSE;
			break;
		}
		it.line = no;
		*dun_parity_list_add(out) = it;
	}
	if (e == DUN_OK && ferror(f)) {
		snprintf(err, err_size, "%s: read error", name);
		e = DUN_E_IO;
	}
	free(line);
	return e;
}
