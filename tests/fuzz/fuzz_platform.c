/*
 * fuzz_platform.c — fuzz target for the decoding of the platform's read
 * answers (src/gather/platform_view.c): GET /accounts/{id} and the batch
 * POST /accounts/read, outside input GATHER decides on.
 *
 * Besides running under the sanitizers, each input checks what must hold:
 * a decoded view names the account asked for, its entitlement is a known
 * level, its resource flags are not negative, it keeps at most
 * DUN_KEPT_MAX restrictions and never one whose reason is dunning's own;
 * a failed decode says why; a batch either answers every id asked or fails.
 */
#include "fuzz_target.h"
#include "gather/platform_view.h"

#include <stdlib.h>
#include <string.h>

static void require(bool cond)
{
	if (!cond)
		abort();
}

static void check(const struct dun_platform_view *v)
{
	require(v->entitlement == DUN_ENTITLEMENT_FULL ||
		v->entitlement == DUN_ENTITLEMENT_RESTRICTED ||
		v->entitlement == DUN_ENTITLEMENT_SUSPENDED);
	require(v->resource_flags >= 0);
	require(v->n_kept >= 0 && v->n_kept <= DUN_KEPT_MAX && v->n_kept <= v->n_others);
	require(memchr(v->account_id, '\0', sizeof v->account_id) != NULL);
	for (int i = 0; i < v->n_kept; i++) {
		require(strcmp(v->kept[i].reason, DUN_PLATFORM_OWN_REASON) != 0);
		require(v->kept[i].reason[0] != '\0');
	}
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	/* An exact-size copy, so a read past the end is caught. */
	char *in = malloc(size ? size : 1);
	require(in != NULL);
	memcpy(in, data, size);

	struct dun_platform_view v;
	char err[256] = "";
	if (dun_platform_view_parse(in, size, "acct_1", &v, err, sizeof err) == DUN_OK) {
		check(&v);
		require(strcmp(v.account_id, "acct_1") == 0);
		dun_platform_view_apply(&v, "ban", "");
		dun_platform_view_apply(&v, "set_entitlement", "suspended");
		dun_platform_view_apply(&v, "remove_resource_flags", "");
		require(v.banned && v.entitlement == DUN_ENTITLEMENT_SUSPENDED &&
			v.resource_flags == 0 && v.n_pending >= 3);
	} else {
		require(err[0] != '\0');
	}

	const char *const ids[3] = {"acct_1", "acct_2", "acct_3"};
	struct dun_platform_view out[3];
	err[0] = '\0';
	if (dun_platform_view_parse_batch(in, size, ids, 3, out, err, sizeof err) == DUN_OK) {
		for (int i = 0; i < 3; i++) {
			check(&out[i]);
			require(strcmp(out[i].account_id, ids[i]) == 0);
		}
	} else {
		require(err[0] != '\0');
	}
	free(in);
	return 0;
}
