/*
 * cmd_policy.c — `dunning policy check FILE` and `dunning policy show [FILE]`.
 */
#include "commands.h"
#include "config/policy_file.h"

#include <string.h>

int dun_cmd_policy(struct dun_cli *cli, int argc, char **argv)
{
	if (argc < 2 || dun_cli_is_help(argv[1])) {
		printf("usage: dunning policy check FILE\n"
		       "       dunning policy show [FILE]\n\n"
		       "check validates a policy file (errors name file, line and key).\n"
		       "show prints the effective policy: FILE, --policy, or the built-in\n"
		       "defaults.\n");
		return argc < 2 ? DUN_EX_USAGE : DUN_EX_OK;
	}
	struct dun_policy p;
	char err[512];
	if (!strcmp(argv[1], "check")) {
		if (argc != 3) {
			dun_cli_error("policy check: expected one FILE");
			return DUN_EX_USAGE;
		}
		if (dun_policy_file_load(argv[2], &p, err, sizeof err) != DUN_OK) {
			dun_cli_error("%s", err);
			return DUN_EX_CONFIG;
		}
		printf("%s: ok\n", argv[2]);
		return DUN_EX_OK;
	}
	if (!strcmp(argv[1], "show")) {
		if (argc > 3) {
			dun_cli_error("policy show: at most one FILE");
			return DUN_EX_USAGE;
		}
		const char *path = argc == 3 ? argv[2] : cli->policy_path;
		if (path) {
			if (dun_policy_file_load(path, &p, err, sizeof err) != DUN_OK) {
				dun_cli_error("%s", err);
				return DUN_EX_CONFIG;
			}
		} else {
			dun_policy_defaults(&p);
		}
		dun_policy_file_dump(&p, stdout);
		return DUN_EX_OK;
	}
	dun_cli_error("policy: unknown action \"%s\" (check, show)", argv[1]);
	return DUN_EX_USAGE;
}
