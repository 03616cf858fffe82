/*
 * schema.h — the list of schema migrations (see schema.c).
 */
#ifndef DUN_SCHEMA_H
#define DUN_SCHEMA_H

/* Number of migrations this binary knows. */
int dun_schema_count(void);
/* The NULL-terminated statements of migration index (0-based), or NULL. */
const char *const *dun_schema_migration(int index);

#endif
