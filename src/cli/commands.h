/*
 * commands.h — the entry points of the subcommands, one file each.
 */
#ifndef DUN_COMMANDS_H
#define DUN_COMMANDS_H

#include "cli/cli.h"

int dun_cmd_init(struct dun_cli *cli, int argc, char **argv);
int dun_cmd_demo(struct dun_cli *cli, int argc, char **argv);
int dun_cmd_recompute(struct dun_cli *cli, int argc, char **argv);
int dun_cmd_explain(struct dun_cli *cli, int argc, char **argv);
int dun_cmd_scan(struct dun_cli *cli, int argc, char **argv);
int dun_cmd_report(struct dun_cli *cli, int argc, char **argv);
int dun_cmd_events(struct dun_cli *cli, int argc, char **argv);
int dun_cmd_work(struct dun_cli *cli, int argc, char **argv);
int dun_cmd_retry(struct dun_cli *cli, int argc, char **argv);
int dun_cmd_ingest(struct dun_cli *cli, int argc, char **argv);
int dun_cmd_account(struct dun_cli *cli, int argc, char **argv);
int dun_cmd_pay_bad_debt(struct dun_cli *cli, int argc, char **argv);
int dun_cmd_policy(struct dun_cli *cli, int argc, char **argv);
int dun_cmd_rollout(struct dun_cli *cli, int argc, char **argv);
int dun_cmd_parity(struct dun_cli *cli, int argc, char **argv);
int dun_cmd_emails(struct dun_cli *cli, int argc, char **argv);
int dun_cmd_simulate(struct dun_cli *cli, int argc, char **argv);
int dun_cmd_email(struct dun_cli *cli, int argc, char **argv);
int dun_cmd_outbox(struct dun_cli *cli, int argc, char **argv);
int dun_cmd_serve(struct dun_cli *cli, int argc, char **argv);
int dun_cmd_config(struct dun_cli *cli, int argc, char **argv);
int dun_cmd_sync(struct dun_cli *cli, int argc, char **argv);
int dun_cmd_backfill(struct dun_cli *cli, int argc, char **argv);
int dun_cmd_users(struct dun_cli *cli, int argc, char **argv);
int dun_cmd_store(struct dun_cli *cli, int argc, char **argv);

#endif
