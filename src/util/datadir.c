/*
 * datadir.c — finding the shipped data (email templates, the default policy
 * file) without a source tree.
 *
 * `meson install` copies the data to <prefix>/<datadir>/dunning, and that
 * path is compiled in: an installed binary reads nothing else, even when a
 * source tree is still lying on the disk. A binary run from the build
 * directory it was built in (`make demo`, the tests, a developer trying a
 * change) reads the source tree instead, so an edited template shows at once
 * and nothing needs installing first. The choice is made by where the
 * running executable is (/proc/self/exe), not by which directories happen to
 * exist, so a missing installation is an error that names the installed
 * path, never a silent fallback to stale files. $DUNNING_TEMPLATES,
 * --templates and [policy] templates still win over both (src/main.c,
 * src/apply/effects_setup.c).
 */
#include "datadir.h"

#include <limits.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#ifndef DUN_INSTALL_DATA_DIR
#error "DUN_INSTALL_DATA_DIR must be defined by the build"
#endif
#ifndef DUN_SOURCE_ROOT
#error "DUN_SOURCE_ROOT must be defined by the build"
#endif
#ifndef DUN_BUILD_ROOT
#error "DUN_BUILD_ROOT must be defined by the build"
#endif

static pthread_once_t once = PTHREAD_ONCE_INIT;
static char data_dir[PATH_MAX];
static char templates_dir[PATH_MAX + sizeof "/templates"];

/* Whether path names a file below dir (both absolute and resolved). */
static bool is_below(const char *path, const char *dir)
{
	size_t n = strlen(dir);
	return n > 0 && strncmp(path, dir, n) == 0 && (path[n] == '/' || dir[n - 1] == '/');
}

static bool running_from_build_dir(void)
{
	char exe[PATH_MAX], build[PATH_MAX];
	ssize_t n = readlink("/proc/self/exe", exe, sizeof exe - 1);
	if (n <= 0)
		return false;
	exe[n] = '\0';
	if (!realpath(DUN_BUILD_ROOT, build))
		return false;
	return is_below(exe, build);
}

static void find_data_dir(void)
{
	const char *dir = running_from_build_dir() ? DUN_SOURCE_ROOT : DUN_INSTALL_DATA_DIR;
	snprintf(data_dir, sizeof data_dir, "%s", dir);
	snprintf(templates_dir, sizeof templates_dir, "%s/templates", data_dir);
}

const char *dun_data_dir(void)
{
	pthread_once(&once, find_data_dir);
	return data_dir;
}

const char *dun_data_templates_dir(void)
{
	pthread_once(&once, find_data_dir);
	return templates_dir;
}
