/*
 * fuzz_config.c — fuzz target for the service configuration parser
 * (dun_config_load_stream, src/config/config.c).
 *
 * The configuration file is outside input written by hand. Each input is
 * the file's text. Besides running under the sanitizers, each input checks
 * what the loader promises: the answer is DUN_OK or DUN_E_CONFIG, an error
 * message names the file, and a configuration that loads keeps every number
 * inside the range its key allows.
 */
#include "config/config.h"
#include "fuzz_target.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void require(bool cond)
{
	if (!cond)
		abort();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	FILE *f = fmemopen((void *)(uintptr_t)data, size ? size : 1, "r");
	if (!f)
		return 0;
	if (!size)
		fgetc(f); /* an empty file: fmemopen needs a buffer of at least one byte */
	struct dun_config c;
	char err[512];
	memset(err, 'x', sizeof err);
	enum dun_err e = dun_config_load_stream(f, "fuzz.conf", &c, err, sizeof err);
	fclose(f);
	require(e == DUN_OK || e == DUN_E_CONFIG);
	require(memchr(err, '\0', sizeof err) != NULL);
	if (e != DUN_OK) {
		require(strncmp(err, "fuzz.conf", 9) == 0);
		return 0;
	}
	require(c.listen_port >= 0 && c.listen_port <= 65535);
	require(c.body_max_bytes >= 1024 && c.body_max_bytes <= 64 * 1024 * 1024);
	require(c.workers >= 1 && c.workers <= 64);
	require(c.n_webhook_secrets >= 0 && c.n_webhook_secrets <= DUN_CONFIG_SECRETS_MAX);
	for (int i = 0; i < c.n_webhook_secrets; i++)
		require(strncmp(c.webhook_secrets[i], "whsec_", 6) == 0);
	require(c.n_event_endpoints >= 0 && c.n_event_endpoints <= DUN_CONFIG_ENDPOINTS_MAX);
	require(c.inbox_backoff_base_s <= c.inbox_backoff_max_s);
	return 0;
}
