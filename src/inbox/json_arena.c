/*
 * json_arena.c — see json_arena.h.
 *
 * The region: ARENAS blocks of ARENA_SIZE bytes, reserved with one mmap
 * (MAP_NORESERVE: pages cost memory only once touched, and the free list
 * hands out the most recently given back first, so a quiet service keeps
 * touching the same few). An arena's value carries a 16-byte header with
 * its size in front of it (which keeps it 16-byte aligned), so that under
 * AddressSanitizer it is poisoned again when jansson frees it and a use
 * after that is reported as it would be for malloc.
 */
#include "json_arena.h"

#include <jansson.h>
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <sys/mman.h>

#if defined(__SANITIZE_ADDRESS__)
#include <sanitizer/asan_interface.h>
#define POISON(p, n)   ASAN_POISON_MEMORY_REGION((p), (n))
#define UNPOISON(p, n) ASAN_UNPOISON_MEMORY_REGION((p), (n))
#else
#define POISON(p, n)   ((void)(p), (void)(n))
#define UNPOISON(p, n) ((void)(p), (void)(n))
#endif

/*
 * A Stripe event's tree takes about eleven times its body (a value per
 * field, a hash table per object, a header per value): 64 KiB holds a
 * body of about 6 KiB, larger ones spill the rest to malloc. 512 arenas:
 * more requests than that parsed at once and waiting for their commit
 * use malloc.
 */
#define ARENA_SIZE ((size_t)64 * 1024)
#define ARENAS	   512

struct dun_json_arena {
	unsigned char *mem;
	size_t used;
	size_t spilled;
	struct dun_json_arena *next_free;
};

struct header {
	uint64_t size;
	uint64_t pad;
};
_Static_assert(sizeof(struct header) == 16, "the header keeps values 16-byte aligned");

static unsigned char *region; /* NULL: not installed */
static struct dun_json_arena arenas[ARENAS];
static struct dun_json_arena *free_list;
static pthread_mutex_t free_mu = PTHREAD_MUTEX_INITIALIZER;
static _Thread_local struct dun_json_arena *current;

static void *arena_malloc(size_t n)
{
	struct dun_json_arena *a = current;
	if (a) {
		size_t need = sizeof(struct header) + ((n + 15) & ~(size_t)15);
		if (need > n && ARENA_SIZE - a->used >= need) {
			struct header *h = (struct header *)(a->mem + a->used);
			a->used += need;
			UNPOISON(h, need);
			h->size = n;
			return h + 1;
		}
		a->spilled++;
	}
	return malloc(n);
}

static void arena_free(void *p)
{
	unsigned char *b = p;
	if (region && b >= region && b < region + (size_t)ARENAS * ARENA_SIZE) {
		/* Its memory goes back with the arena; until then nobody may touch it. */
		POISON(b, ((struct header *)b - 1)->size);
		return;
	}
	free(p);
}

void dun_json_arena_install(void)
{
	void *m = mmap(NULL, (size_t)ARENAS * ARENA_SIZE, PROT_READ | PROT_WRITE,
		       MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
	json_set_alloc_funcs(arena_malloc, arena_free);
	if (m == MAP_FAILED)
		return; /* no arenas: every value from malloc */
	region = m;
	for (int i = ARENAS - 1; i >= 0; i--) {
		arenas[i].mem = region + (size_t)i * ARENA_SIZE;
		arenas[i].next_free = free_list;
		free_list = &arenas[i];
	}
	POISON(region, (size_t)ARENAS * ARENA_SIZE);
}

struct dun_json_arena *dun_json_arena_take(void)
{
	if (!region)
		return NULL;
	pthread_mutex_lock(&free_mu);
	struct dun_json_arena *a = free_list;
	if (a)
		free_list = a->next_free;
	pthread_mutex_unlock(&free_mu);
	if (a) {
		a->used = 0;
		a->spilled = 0;
		a->next_free = NULL;
	}
	return a;
}

void dun_json_arena_give_back(struct dun_json_arena *a)
{
	if (!a)
		return;
	POISON(a->mem, ARENA_SIZE);
	pthread_mutex_lock(&free_mu);
	a->next_free = free_list;
	free_list = a;
	pthread_mutex_unlock(&free_mu);
}

void dun_json_arena_enter(struct dun_json_arena *a)
{
	current = a;
}

void dun_json_arena_leave(void)
{
	current = NULL;
}

size_t dun_json_arena_used(const struct dun_json_arena *a)
{
	return a ? a->used : 0;
}

size_t dun_json_arena_spilled(const struct dun_json_arena *a)
{
	return a ? a->spilled : 0;
}
