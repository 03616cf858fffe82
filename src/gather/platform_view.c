/*
 * platform_view.c — decoding the platform's read answers (see
 * platform_view.h and docs/platform-api.md).
 *
 * This is a parser of outside input (tests/fuzz/fuzz_platform.c): every
 * field is checked for its type and size before use, nothing is trusted to
 * be NUL-free or short, and a malformed answer is an error that names the
 * field, never a guess. The caller treats such an answer like no answer:
 * the platform could not be read.
 */
#include "platform_view.h"
#include "core/text.h"
#include "util/mem.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

void dun_platform_view_init(struct dun_platform_view *v, const char *account_id)
{
	memset(v, 0, sizeof *v);
	v->entitlement = DUN_ENTITLEMENT_FULL;
	if (account_id)
		dun_strlcpy(v->account_id, account_id, sizeof v->account_id);
}

/* A JSON string of 1..max-1 bytes without NUL, or NULL. */
static const char *short_string(json_t *j, size_t max)
{
	if (!json_is_string(j))
		return NULL;
	size_t n = json_string_length(j);
	const char *s = json_string_value(j);
	if (n == 0 || n >= max || memchr(s, '\0', n))
		return NULL;
	return s;
}

static enum dun_err decode_restriction(json_t *r, int i, struct dun_platform_view *v, char *err,
				       size_t err_size)
{
	if (!json_is_object(r)) {
		snprintf(err, err_size, "restrictions[%d] is not an object", i);
		return DUN_E_PARSE;
	}
	const char *type = short_string(json_object_get(r, "type"), 16);
	const char *reason = short_string(json_object_get(r, "reason"), DUN_REASON_MAX);
	json_t *by_j = json_object_get(r, "placed_by");
	const char *by = by_j && !json_is_null(by_j) ? short_string(by_j, DUN_REASON_MAX) : "";
	if (!type || (strcmp(type, "ban") != 0 && strcmp(type, "entitlement") != 0)) {
		snprintf(err, err_size, "restrictions[%d].type: \"ban\" or \"entitlement\"", i);
		return DUN_E_PARSE;
	}
	if (!reason) {
		snprintf(err, err_size,
			 "restrictions[%d].reason: a string of 1 to %d bytes is required", i,
			 DUN_REASON_MAX - 1);
		return DUN_E_PARSE;
	}
	if (!by) {
		snprintf(err, err_size, "restrictions[%d].placed_by: a string of at most %d bytes",
			 i, DUN_REASON_MAX - 1);
		return DUN_E_PARSE;
	}
	bool ban = !strcmp(type, "ban");
	enum dun_entitlement level = DUN_ENTITLEMENT_FULL;
	if (!ban) {
		const char *l = short_string(json_object_get(r, "level"), 16);
		if (!l || !dun_entitlement_parse(l, &level) || level == DUN_ENTITLEMENT_FULL) {
			snprintf(err, err_size,
				 "restrictions[%d].level: \"restricted\" or \"suspended\"", i);
			return DUN_E_PARSE;
		}
	}
	if (!strcmp(reason, DUN_PLATFORM_OWN_REASON)) {
		if (ban)
			v->banned = true;
		else if (level > v->entitlement)
			v->entitlement = level;
		if (by[0])
			dun_strlcpy(v->placed_by, by, sizeof v->placed_by);
		return DUN_OK;
	}
	v->n_others++;
	if (v->n_kept < DUN_KEPT_MAX) {
		struct dun_kept_restriction *k = &v->kept[v->n_kept++];
		dun_strlcpy(k->kind, type, sizeof k->kind);
		k->level = level;
		dun_strlcpy(k->reason, reason, sizeof k->reason);
		dun_strlcpy(k->placed_by, by, sizeof k->placed_by);
	}
	return DUN_OK;
}

enum dun_err dun_platform_view_decode(json_t *obj, const char *expect_id,
				      struct dun_platform_view *v, char *err, size_t err_size)
{
	dun_platform_view_init(v, NULL);
	if (!json_is_object(obj)) {
		snprintf(err, err_size, "an account is not a JSON object");
		return DUN_E_PARSE;
	}
	const char *id = short_string(json_object_get(obj, "account_id"), DUN_ID_MAX);
	if (!id) {
		snprintf(err, err_size, "account_id: a string of 1 to %d bytes is required",
			 DUN_ID_MAX - 1);
		return DUN_E_PARSE;
	}
	if (expect_id && strcmp(id, expect_id) != 0) {
		snprintf(err, err_size, "account_id: asked for %.64s, answered %.64s", expect_id,
			 id);
		return DUN_E_PARSE;
	}
	dun_strlcpy(v->account_id, id, sizeof v->account_id);
	json_t *flags = json_object_get(obj, "resource_flags");
	if (!json_is_integer(flags) || json_integer_value(flags) < 0) {
		snprintf(err, err_size, "%.64s: resource_flags: an integer >= 0 is required", id);
		return DUN_E_PARSE;
	}
	v->resource_flags = (int64_t)json_integer_value(flags);
	json_t *list = json_object_get(obj, "restrictions");
	if (!json_is_array(list)) {
		snprintf(err, err_size, "%.64s: restrictions: an array is required", id);
		return DUN_E_PARSE;
	}
	size_t i;
	json_t *r;
	json_array_foreach(list, i, r)
	{
		char why[160];
		if (decode_restriction(r, (int)i, v, why, sizeof why) != DUN_OK) {
			snprintf(err, err_size, "%.64s: %s", id, why);
			return DUN_E_PARSE;
		}
	}
	return DUN_OK;
}

static json_t *load(const char *body, size_t len, char *err, size_t err_size)
{
	json_error_t je;
	json_t *root = json_loadb(body ? body : "", len, JSON_REJECT_DUPLICATES, &je);
	if (!root)
		snprintf(err, err_size, "not JSON: %.120s", je.text);
	return root;
}

enum dun_err dun_platform_view_parse(const char *body, size_t len, const char *expect_id,
				     struct dun_platform_view *v, char *err, size_t err_size)
{
	dun_platform_view_init(v, expect_id);
	json_t *root = load(body, len, err, err_size);
	if (!root)
		return DUN_E_PARSE;
	enum dun_err e = dun_platform_view_decode(root, expect_id, v, err, err_size);
	json_decref(root);
	return e;
}

enum dun_err dun_platform_view_parse_batch(const char *body, size_t len, const char *const *ids,
					   int n, struct dun_platform_view *out, char *err,
					   size_t err_size)
{
	json_t *root = load(body, len, err, err_size);
	if (!root)
		return DUN_E_PARSE;
	enum dun_err e = DUN_OK;
	json_t *list = json_object_get(root, "accounts");
	bool *seen = dun_calloc((size_t)(n ? n : 1), sizeof *seen);
	if (!json_is_object(root) || !json_is_array(list)) {
		snprintf(err, err_size, "accounts: an array is required");
		e = DUN_E_PARSE;
	}
	size_t i;
	json_t *a;
	if (e == DUN_OK)
		json_array_foreach(list, i, a)
		{
			struct dun_platform_view v;
			e = dun_platform_view_decode(a, NULL, &v, err, err_size);
			if (e != DUN_OK)
				break;
			/* Answers usually come in the order asked. */
			int k = (int)i < n && !strcmp(ids[i], v.account_id) ? (int)i : 0;
			while (k < n && strcmp(ids[k], v.account_id) != 0)
				k++;
			if (k == n || seen[k]) {
				snprintf(err, err_size, "accounts: %.64s %s", v.account_id,
					 k == n ? "was not asked for" : "is answered twice");
				e = DUN_E_PARSE;
				break;
			}
			seen[k] = true;
			out[k] = v;
		}
	for (int k = 0; e == DUN_OK && k < n; k++)
		if (!seen[k]) {
			snprintf(err, err_size, "accounts: %.64s is missing from the answer",
				 ids[k]);
			e = DUN_E_PARSE;
		}
	free(seen);
	json_decref(root);
	return e;
}

void dun_platform_view_apply(struct dun_platform_view *v, const char *op, const char *value)
{
	if (!strcmp(op, "ban")) {
		v->banned = true;
	} else if (!strcmp(op, "unban")) {
		v->banned = false;
	} else if (!strcmp(op, "set_entitlement")) {
		enum dun_entitlement level;
		if (dun_entitlement_parse(value, &level))
			v->entitlement = level;
	} else if (!strcmp(op, "remove_resource_flags")) {
		v->resource_flags = 0;
	} else {
		return;
	}
	v->n_pending++;
}
