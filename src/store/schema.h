/*
 * schema.h — the list of schema migrations (see schema.c).
 */
#ifndef DUN_SCHEMA_H
#define DUN_SCHEMA_H

/* Number of migrations this binary knows. */
int dun_schema_count(void);
/* The NULL-terminated statements of migration index (0-based), or NULL. */
const char *const *dun_schema_migration(int index);

/*
 * A statement of a migration as the backend named driver ("sqlite",
 * "postgresql") runs it: without its "name:" prefix when it has one (it is
 * for that backend only), NULL when it is for another backend, stmt itself
 * otherwise. The returned pointer lives as long as stmt.
 */
const char *dun_schema_for_backend(const char *stmt, const char *driver);

#endif
