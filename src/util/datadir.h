/*
 * datadir.h — where the shipped data is read from: the email templates and
 * the policy file that spells out the built-in defaults.
 */
#ifndef DUN_DATADIR_H
#define DUN_DATADIR_H

/*
 * The directory holding `templates/` and `policy/default.conf`: the
 * installed data directory (<prefix>/<datadir>/dunning), or the source tree
 * when the running executable lies in the build directory it was built in.
 * The returned string lives as long as the process. Thread-safe.
 */
const char *dun_data_dir(void);
/* dun_data_dir() followed by "/templates"; lives as long as the process. */
const char *dun_data_templates_dir(void);

#endif
