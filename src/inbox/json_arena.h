/*
 * json_arena.h — jansson's allocations for one parse, from one block.
 *
 * A webhook's body becomes a tree of some hundred jansson values, each a
 * malloc of its own and a free when the request is done: about a tenth of
 * the server's CPU per event went to glibc's allocator. Jansson has no
 * arena of its own, only a process-wide pair of allocation functions
 * (json_set_alloc_funcs). dun_json_arena_install() sets that pair once:
 * a thread that has entered an arena takes its values from the arena's
 * block by bumping a pointer, and freeing them does nothing; every other
 * allocation is a plain malloc, freed with free, as before (so a string
 * from json_dumps is still released with free()).
 *
 * The arenas' blocks lie in one region reserved at install, which is how
 * a free tells an arena's value from malloc's: by its address. An arena
 * is taken for a request and given back when the request's tree has been
 * released; when all are taken, the parse simply uses malloc.
 *
 * A value from an arena must not outlive the arena: whoever keeps part of
 * a parsed event beyond its request copies it (json_deep_copy allocates
 * anew, outside any arena unless the copying thread has entered one).
 */
#ifndef DUN_JSON_ARENA_H
#define DUN_JSON_ARENA_H

#include <stddef.h>

struct dun_json_arena;

/*
 * Sets jansson's allocation functions and reserves the arenas' region.
 * Once per process, before any other jansson call.
 */
void dun_json_arena_install(void);

/* A free arena, empty; NULL when none is (or the allocator is not installed). */
struct dun_json_arena *dun_json_arena_take(void);
/* Gives a back (NULL: nothing). Every value parsed into it must be released. */
void dun_json_arena_give_back(struct dun_json_arena *a);

/*
 * Until dun_json_arena_leave(), this thread's jansson allocations come
 * from a (NULL: from malloc), then from malloc once a is full. Not nested.
 */
void dun_json_arena_enter(struct dun_json_arena *a);
void dun_json_arena_leave(void);

/* What a's tree took: bytes of the block, and allocations that went to malloc. */
size_t dun_json_arena_used(const struct dun_json_arena *a);
size_t dun_json_arena_spilled(const struct dun_json_arena *a);

#endif
