/*
 * users.h — the people who may sign in to the support panel: a users file
 * of "name:hash" lines, one per person, the hash a salted yescrypt string
 * made by crypt(3) (libxcrypt). `dunning users add` writes it; the panel
 * reads it at every sign-in, so a person added or removed counts at once.
 */
#ifndef DUN_USERS_H
#define DUN_USERS_H

#include <stdbool.h>
#include <stddef.h>

#include "util/err.h"

/* A name has 1 to 64 characters of A-Z a-z 0-9 . _ @ - (buffers: this many bytes). */
#define DUN_USER_NAME_MAX     65
/* Room for a hash string; crypt(3) output is shorter. */
#define DUN_USER_HASH_MAX     384
/* A password has 8 to 1024 bytes and no NUL or newline. */
#define DUN_USER_PASSWORD_MIN 8
#define DUN_USER_PASSWORD_MAX 1024
/* A users file larger than this is refused (it is a short list of people). */
#define DUN_USERS_FILE_MAX    (1024 * 1024)

bool dun_users_name_valid(const char *name);
/* Whether password meets the rules above; why says what is wrong (why may be NULL). */
bool dun_users_password_valid(const char *password, char *why, size_t why_size);

/*
 * Hash password with a fresh random salt (yescrypt, libxcrypt's default
 * cost) into out. DUN_E_IO when the system cannot give random bytes or
 * refuses the method.
 */
enum dun_err dun_users_hash(const char *password, char *out, size_t out_size);
/* Whether password matches hash (a crypt(3) string); constant time in the comparison. */
bool dun_users_verify(const char *password, const char *hash);
/*
 * Spend about the time of a dun_users_verify() and fail: for a sign-in
 * with an unknown name, so that timing does not tell which names exist.
 */
void dun_users_verify_nobody(const char *password);

/* Called per entry of a users file; return false to stop. */
typedef bool (*dun_users_entry_fn)(const char *name, const char *hash, void *arg);

/*
 * Parse the text of a users file (len bytes, need not be NUL-terminated):
 * lines "name:hash", blank lines and lines starting with '#' are skipped.
 * A malformed line or a name given twice is DUN_E_PARSE and err names the
 * line; nothing is reported for a file that fails (fn is called only after
 * the whole text parsed). fn may be NULL (just check).
 */
enum dun_err dun_users_parse(const char *text, size_t len, dun_users_entry_fn fn, void *arg,
			     char *err, size_t err_size);

/*
 * Find name in the users file at path; *found false when it is not there.
 * DUN_E_NOT_FOUND when the file does not exist, DUN_E_PARSE for a
 * malformed file, DUN_E_TOO_BIG, DUN_E_IO; err says which.
 */
enum dun_err dun_users_lookup(const char *path, const char *name, char *hash_out, size_t hash_size,
			      bool *found, char *err, size_t err_size);

/* What dun_users_update() does with name. */
enum dun_users_op {
	DUN_USERS_ADD,	   /* add; DUN_E_CONFLICT when the name is there already */
	DUN_USERS_REPLACE, /* add or replace the hash */
	DUN_USERS_REMOVE,  /* remove; DUN_E_NOT_FOUND when it is not there */
};

/*
 * Rewrite the users file at path (created, mode 0600, when missing) with
 * name added, replaced or removed; other lines and comments are kept. The
 * new file replaces the old one by rename, so a reader never sees half of
 * it. hash is ignored for DUN_USERS_REMOVE.
 */
enum dun_err dun_users_update(const char *path, enum dun_users_op op, const char *name,
			      const char *hash, char *err, size_t err_size);

#endif
