/*
 * standalone_main.c — replays a fuzz corpus without libFuzzer.
 *
 * Linked with any fuzz target (see fuzz_target.h) when the compiler is not
 * clang, and always for the meson test, so every seed input runs in CI under
 * whatever sanitizers the build has. Arguments are files or directories; a
 * directory is replayed in name order, skipping dot files. Arguments that
 * start with '-' are libFuzzer flags and are ignored, so one command line
 * works with both drivers. Each input is copied into a buffer of exactly its
 * size, so a read past the end is caught by AddressSanitizer.
 *
 * Exits 0 when at least one input ran, 1 when an input could not be read or
 * none was found, and never returns when a target aborts.
 */
#include "fuzz_target.h"

#include <dirent.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

/* Larger inputs are refused: a corpus file this big is a mistake. */
#define INPUT_MAX_BYTES (1024 * 1024)

static int run_file(const char *path)
{
	FILE *f = fopen(path, "rb");
	if (!f) {
		fprintf(stderr, "%s: %s\n", path, strerror(errno));
		return -1;
	}
	unsigned char *buf = malloc(INPUT_MAX_BYTES + 1);
	if (!buf) {
		fclose(f);
		fprintf(stderr, "out of memory\n");
		return -1;
	}
	size_t n = fread(buf, 1, INPUT_MAX_BYTES + 1, f);
	int bad = ferror(f);
	fclose(f);
	if (bad || n > INPUT_MAX_BYTES) {
		fprintf(stderr, "%s: %s\n", path, bad ? "read error" : "input too big");
		free(buf);
		return -1;
	}
	/* malloc(0) may return NULL; keep one byte so the pointer is valid. */
	unsigned char *exact = malloc(n ? n : 1);
	if (!exact) {
		free(buf);
		fprintf(stderr, "out of memory\n");
		return -1;
	}
	memcpy(exact, buf, n);
	free(buf);
	LLVMFuzzerTestOneInput(exact, n);
	free(exact);
	return 0;
}

static int compare_names(const void *a, const void *b)
{
	return strcmp(*(char *const *)a, *(char *const *)b);
}

/* Run every regular file in dir; returns inputs run, or -1 on an error. */
static int run_dir(const char *dir)
{
	DIR *d = opendir(dir);
	if (!d) {
		fprintf(stderr, "%s: %s\n", dir, strerror(errno));
		return -1;
	}
	char **names = NULL;
	size_t count = 0, cap = 0;
	int rc = 0;
	struct dirent *de;
	while ((de = readdir(d)) != NULL) {
		if (de->d_name[0] == '.')
			continue;
		if (count == cap) {
			cap = cap ? 2 * cap : 64;
			char **grown = realloc(names, cap * sizeof *names);
			if (!grown) {
				rc = -1;
				goto free_names;
			}
			names = grown;
		}
		names[count] = malloc(strlen(dir) + strlen(de->d_name) + 2);
		if (!names[count]) {
			rc = -1;
			goto free_names;
		}
		snprintf(names[count], strlen(dir) + strlen(de->d_name) + 2, "%s/%s", dir,
			 de->d_name);
		count++;
	}
	if (count)
		qsort(names, count, sizeof *names, compare_names);
	for (size_t i = 0; i < count; i++) {
		struct stat st;
		if (stat(names[i], &st) != 0 || !S_ISREG(st.st_mode))
			continue;
		if (run_file(names[i]) != 0) {
			rc = -1;
			goto free_names;
		}
		rc++;
	}
free_names:
	for (size_t i = 0; i < count; i++)
		free(names[i]);
	free(names);
	closedir(d);
	return rc;
}

int main(int argc, char **argv)
{
	int ran = 0;
	for (int i = 1; i < argc; i++) {
		if (argv[i][0] == '-')
			continue;
		struct stat st;
		if (stat(argv[i], &st) != 0) {
			fprintf(stderr, "%s: %s\n", argv[i], strerror(errno));
			return 1;
		}
		int n = S_ISDIR(st.st_mode) ? run_dir(argv[i]) : (run_file(argv[i]) == 0 ? 1 : -1);
		if (n < 0)
			return 1;
		ran += n;
	}
	if (ran == 0) {
		fprintf(stderr, "usage: %s CORPUS_DIR|FILE... (no input found)\n", argv[0]);
		return 1;
	}
	printf("%d inputs ran\n", ran);
	return 0;
}
