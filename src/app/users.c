/*
 * users.c — the panel's users file (see users.h): parsing, lookup, safe
 * rewriting, and password hashing through crypt(3).
 *
 * It sits beside the pipeline, not in it: the support panel of `dunning
 * serve` asks it who may sign in, `dunning users` maintains the file. The
 * hashes are yescrypt strings ("$y$..."), the method Debian uses for
 * /etc/shadow, made by libxcrypt with a salt of the system's random bytes;
 * see docs/internals.md for why this and not libargon2.
 */
#include "users.h"
#include "util/mem.h"

#include <crypt.h>
#include <errno.h>
#include <fcntl.h>
#include <openssl/crypto.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define LINE_MAX_BYTES 1024

bool dun_users_name_valid(const char *name)
{
	size_t n = strlen(name);
	if (n == 0 || n >= DUN_USER_NAME_MAX)
		return false;
	for (size_t i = 0; i < n; i++) {
		char c = name[i];
		bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
			  (c >= '0' && c <= '9') || c == '.' || c == '_' || c == '@' || c == '-';
		if (!ok)
			return false;
	}
	return true;
}

bool dun_users_password_valid(const char *password, char *why, size_t why_size)
{
	size_t n = strlen(password);
	const char *msg = NULL;
	if (n < DUN_USER_PASSWORD_MIN)
		msg = "a password has at least 8 characters";
	else if (n > DUN_USER_PASSWORD_MAX)
		msg = "a password has at most 1024 bytes";
	else if (strpbrk(password, "\r\n"))
		msg = "a password has no line break";
	if (msg && why)
		snprintf(why, why_size, "%s", msg);
	return msg == NULL;
}

enum dun_err dun_users_hash(const char *password, char *out, size_t out_size)
{
	char setting[CRYPT_GENSALT_OUTPUT_SIZE];
	/* NULL random bytes: libxcrypt takes them from the operating system. */
	if (!crypt_gensalt_rn("$y$", 0, NULL, 0, setting, sizeof setting))
		return DUN_E_IO;
	struct crypt_data *cd = dun_calloc(1, sizeof *cd);
	const char *h = crypt_rn(password, setting, cd, (int)sizeof *cd);
	enum dun_err e = DUN_OK;
	if (!h || h[0] == '*' || strlen(h) >= out_size)
		e = DUN_E_IO;
	else
		memcpy(out, h, strlen(h) + 1);
	explicit_bzero(cd, sizeof *cd);
	free(cd);
	return e;
}

bool dun_users_verify(const char *password, const char *hash)
{
	if (!hash[0] || hash[0] == '*' || hash[0] == '!')
		return false;
	struct crypt_data *cd = dun_calloc(1, sizeof *cd);
	const char *h = crypt_rn(password, hash, cd, (int)sizeof *cd);
	bool ok = h && h[0] != '*' && strlen(h) == strlen(hash) &&
		  CRYPTO_memcmp(h, hash, strlen(hash)) == 0;
	explicit_bzero(cd, sizeof *cd);
	free(cd);
	return ok;
}

void dun_users_verify_nobody(const char *password)
{
	/* A valid setting of the default cost from fixed bytes; its hash is never stored. */
	static const char rbytes[] = "dunning-nobody!!";
	char setting[CRYPT_GENSALT_OUTPUT_SIZE];
	if (!crypt_gensalt_rn("$y$", 0, rbytes, 16, setting, sizeof setting))
		return;
	struct crypt_data *cd = dun_calloc(1, sizeof *cd);
	(void)crypt_rn(password, setting, cd, (int)sizeof *cd);
	explicit_bzero(cd, sizeof *cd);
	free(cd);
}

/* ---- parsing ------------------------------------------------------------------- */

struct entry {
	char name[DUN_USER_NAME_MAX];
	char hash[DUN_USER_HASH_MAX];
	int line;
};

static bool hash_chars_ok(const char *s, size_t n)
{
	for (size_t i = 0; i < n; i++)
		if ((unsigned char)s[i] < 0x21 || (unsigned char)s[i] > 0x7e)
			return false;
	return true;
}

/*
 * Parse text into a heap array of entries (*out, *n_out); also reports,
 * per line, whether it is an entry (for the rewriter). Returns DUN_E_PARSE
 * with err naming the line.
 */
static enum dun_err parse_entries(const char *text, size_t len, struct entry **out, int *n_out,
				  char *err, size_t err_size)
{
	struct entry *v = NULL;
	int n = 0, cap = 0;
	size_t pos = 0;
	int line = 0;
	enum dun_err e = DUN_OK;
	if (memchr(text, '\0', len)) {
		snprintf(err, err_size, "the users file holds a NUL byte");
		return DUN_E_PARSE;
	}
	while (pos < len) {
		line++;
		const char *s = text + pos;
		const char *nl = memchr(s, '\n', len - pos);
		size_t n_line = nl ? (size_t)(nl - s) : len - pos;
		pos += n_line + (nl ? 1 : 0);
		if (n_line && s[n_line - 1] == '\r')
			n_line--;
		if (n_line > LINE_MAX_BYTES) {
			snprintf(err, err_size, "line %d: longer than %d bytes", line,
				 LINE_MAX_BYTES);
			e = DUN_E_PARSE;
			break;
		}
		size_t lead = 0;
		while (lead < n_line && (s[lead] == ' ' || s[lead] == '\t'))
			lead++;
		if (lead == n_line || s[lead] == '#')
			continue;
		const char *colon = memchr(s, ':', n_line);
		if (!colon) {
			snprintf(err, err_size, "line %d: expected name:hash", line);
			e = DUN_E_PARSE;
			break;
		}
		size_t nn = (size_t)(colon - s), hn = n_line - nn - 1;
		if (nn == 0 || nn >= DUN_USER_NAME_MAX) {
			snprintf(err, err_size, "line %d: a name has 1 to %d characters", line,
				 DUN_USER_NAME_MAX - 1);
			e = DUN_E_PARSE;
			break;
		}
		if (cap == n) {
			cap = cap ? cap * 2 : 8;
			v = dun_realloc(v, (size_t)cap * sizeof *v);
		}
		struct entry *en = &v[n];
		memcpy(en->name, s, nn);
		en->name[nn] = '\0';
		en->line = line;
		if (!dun_users_name_valid(en->name)) {
			snprintf(err, err_size,
				 "line %d: a name is made of letters, digits and . _ @ -", line);
			e = DUN_E_PARSE;
			break;
		}
		if (hn == 0 || hn >= DUN_USER_HASH_MAX || !hash_chars_ok(colon + 1, hn)) {
			snprintf(
			    err, err_size,
			    "line %d: the hash of \"%s\" is missing or malformed (make it with "
			    "dunning users add)",
			    line, en->name);
			e = DUN_E_PARSE;
			break;
		}
		memcpy(en->hash, colon + 1, hn);
		en->hash[hn] = '\0';
		for (int k = 0; k < n; k++)
			if (!strcmp(v[k].name, en->name)) {
				snprintf(err, err_size,
					 "line %d: \"%s\" is given twice (also line %d)", line,
					 en->name, v[k].line);
				e = DUN_E_PARSE;
				break;
			}
		if (e != DUN_OK)
			break;
		n++;
	}
	if (e != DUN_OK) {
		free(v);
		return e;
	}
	*out = v;
	*n_out = n;
	return DUN_OK;
}

enum dun_err dun_users_parse(const char *text, size_t len, dun_users_entry_fn fn, void *arg,
			     char *err, size_t err_size)
{
	struct entry *v = NULL;
	int n = 0;
	enum dun_err e = parse_entries(text, len, &v, &n, err, err_size);
	if (e != DUN_OK)
		return e;
	for (int i = 0; fn && i < n; i++)
		if (!fn(v[i].name, v[i].hash, arg))
			break;
	explicit_bzero(v, (size_t)n * sizeof *v);
	free(v);
	return DUN_OK;
}

/* Read the whole file; *text NULL and DUN_E_NOT_FOUND when it does not exist. */
static enum dun_err read_file(const char *path, char **text, size_t *len, char *err,
			      size_t err_size)
{
	*text = NULL;
	*len = 0;
	FILE *f = fopen(path, "rb");
	if (!f) {
		snprintf(err, err_size, "users file %s: %s", path, strerror(errno));
		return errno == ENOENT ? DUN_E_NOT_FOUND : DUN_E_IO;
	}
	char *buf = dun_malloc(DUN_USERS_FILE_MAX + 1);
	size_t n = fread(buf, 1, DUN_USERS_FILE_MAX + 1, f);
	bool bad = ferror(f);
	fclose(f);
	if (bad) {
		free(buf);
		snprintf(err, err_size, "users file %s: cannot read it", path);
		return DUN_E_IO;
	}
	if (n > DUN_USERS_FILE_MAX) {
		free(buf);
		snprintf(err, err_size, "users file %s: larger than %d bytes", path,
			 DUN_USERS_FILE_MAX);
		return DUN_E_TOO_BIG;
	}
	buf[n] = '\0';
	*text = buf;
	*len = n;
	return DUN_OK;
}

struct find {
	const char *name;
	char *hash;
	size_t hash_size;
	bool found;
};

static bool find_entry(const char *name, const char *hash, void *arg)
{
	struct find *f = arg;
	if (strcmp(name, f->name) != 0)
		return true;
	snprintf(f->hash, f->hash_size, "%s", hash);
	f->found = true;
	return false;
}

enum dun_err dun_users_lookup(const char *path, const char *name, char *hash_out, size_t hash_size,
			      bool *found, char *err, size_t err_size)
{
	*found = false;
	char *text;
	size_t len;
	enum dun_err e = read_file(path, &text, &len, err, err_size);
	if (e != DUN_OK)
		return e;
	struct find f = {name, hash_out, hash_size, false};
	char perr[256] = "";
	e = dun_users_parse(text, len, find_entry, &f, perr, sizeof perr);
	free(text);
	if (e != DUN_OK) {
		snprintf(err, err_size, "users file %s: %s", path, perr);
		return e;
	}
	*found = f.found;
	return DUN_OK;
}

/* ---- rewriting ------------------------------------------------------------------- */

/* Whether the raw line (n bytes) is the entry of name. */
static bool line_is(const char *s, size_t n, const char *name)
{
	size_t nn = strlen(name);
	return n > nn && !memcmp(s, name, nn) && s[nn] == ':';
}

enum dun_err dun_users_update(const char *path, enum dun_users_op op, const char *name,
			      const char *hash, char *err, size_t err_size)
{
	char *text = NULL;
	size_t len = 0;
	enum dun_err e = read_file(path, &text, &len, err, err_size);
	if (e == DUN_E_NOT_FOUND) {
		text = dun_strdup("");
		e = DUN_OK;
	}
	if (e != DUN_OK)
		return e;
	struct find f = {name, NULL, 0, false};
	char hbuf[DUN_USER_HASH_MAX];
	f.hash = hbuf;
	f.hash_size = sizeof hbuf;
	char perr[256] = "";
	e = dun_users_parse(text, len, find_entry, &f, perr, sizeof perr);
	if (e != DUN_OK) {
		snprintf(err, err_size, "users file %s: %s (fix it by hand first)", path, perr);
		free(text);
		return e;
	}
	switch (op) {
	case DUN_USERS_ADD:
		if (f.found) {
			snprintf(err, err_size,
				 "\"%s\" is in %s already (users passwd changes a password)", name,
				 path);
			free(text);
			return DUN_E_CONFLICT;
		}
		break;
	case DUN_USERS_REMOVE:
		if (!f.found) {
			snprintf(err, err_size, "no user \"%s\" in %s", name, path);
			free(text);
			return DUN_E_NOT_FOUND;
		}
		break;
	case DUN_USERS_REPLACE:
		break;
	}

	char tmp[4096];
	if (snprintf(tmp, sizeof tmp, "%s.tmp.XXXXXX", path) >= (int)sizeof tmp) {
		snprintf(err, err_size, "users file path too long");
		free(text);
		return DUN_E_INVALID;
	}
	int fd = mkstemp(tmp);
	if (fd < 0) {
		snprintf(err, err_size, "cannot create %s: %s", tmp, strerror(errno));
		free(text);
		return DUN_E_IO;
	}
	fchmod(fd, 0600);
	FILE *out = fdopen(fd, "w");
	if (!out) {
		close(fd);
		unlink(tmp);
		free(text);
		snprintf(err, err_size, "cannot write %s", tmp);
		return DUN_E_IO;
	}
	if (len == 0 && op != DUN_USERS_REMOVE)
		fputs("# dunning panel users: name:yescrypt hash, one per line (dunning users "
		      "add NAME)\n",
		      out);
	bool written = false;
	size_t pos = 0;
	while (pos < len) {
		const char *s = text + pos;
		const char *nl = memchr(s, '\n', len - pos);
		size_t n = nl ? (size_t)(nl - s) : len - pos;
		pos += n + (nl ? 1 : 0);
		if (line_is(s, n, name)) {
			if (op == DUN_USERS_REPLACE && !written) {
				fprintf(out, "%s:%s\n", name, hash);
				written = true;
			}
			continue;
		}
		fwrite(s, 1, n, out);
		fputc('\n', out);
	}
	if (op != DUN_USERS_REMOVE && !written)
		fprintf(out, "%s:%s\n", name, hash);
	explicit_bzero(text, len);
	free(text);
	bool ok = fflush(out) == 0 && fsync(fileno(out)) == 0;
	ok = fclose(out) == 0 && ok;
	if (!ok || rename(tmp, path) != 0) {
		snprintf(err, err_size, "cannot write %s: %s", path, strerror(errno));
		unlink(tmp);
		return DUN_E_IO;
	}
	return DUN_OK;
}
