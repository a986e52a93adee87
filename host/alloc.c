/*
 * The arena: a size-class allocator with the signature of lua_Alloc, one
 * per host, used by its loop thread only.
 *
 * Lua tells the allocator the size of every block it frees or resizes, so
 * blocks need no header: a block of 56 bytes takes 56 bytes.  Blocks of up
 * to AH_ARENA_MAX_SMALL bytes come from slabs of 64 KiB, each slab holding
 * blocks of one size class; a slab hands out its never-used blocks in
 * address order (so memory is touched only as it is used) and reuses freed
 * ones last in, first out.  Larger blocks go to malloc.
 *
 * The slabs are carved from one range of address space reserved when the
 * arena is made (MAP_NORESERVE: nothing is committed until touched), which
 * makes "is this block ours?" one comparison, keeps each slab's bookkeeping
 * off its data pages (an array beside the range) and lets the range use
 * transparent huge pages, a fault per 2 MiB instead of per 4 KiB.  When the
 * range is used up, small blocks go to malloc too.
 *
 * Memory goes back to the system: a slab whose last block is freed is kept
 * for reuse only while the empty slabs are at most half of what is in use;
 * beyond that, and on ah__arena_trim, its pages are released
 * (MADV_DONTNEED), so the resident size falls back after a burst once the
 * collector has freed the burst's objects.
 *
 * A small heap is better off with malloc, which keeps the blocks of
 * every size in one run of pages, so a few cache lines and pages hold a
 * little program's working set; the arena spreads them over a slab per
 * class.  So the arena hands every block to malloc until `start` bytes are
 * in use (ah__arena_new), and only then takes small blocks from its slabs:
 * a host of a few megabytes runs on malloc as before, a host of a hundred
 * thousand agents on the arena.  Blocks of malloc are told from the
 * arena's by their address, so both kinds live together.
 *
 * Shrinking never fails (Lua relies on it): a block that cannot move to a
 * smaller class stays where it is, which is safe because a slab, not the
 * size Lua passes, says which class a block is in.
 *
 * Relies on POSIX mmap/madvise and the C library; not on Lua.
 */
#define _DEFAULT_SOURCE /* MAP_ANONYMOUS, MAP_NORESERVE, madvise */
#include "host.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#if defined(__SANITIZE_ADDRESS__)
#define AH_ARENA_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define AH_ARENA_ASAN 1
#endif
#endif
#ifdef AH_ARENA_ASAN
/* Free blocks are poisoned, so that ASan sees a use after free inside a
 * slab as it would one of malloc's. */
#include <sanitizer/asan_interface.h>
#define POISON(p, n) ASAN_POISON_MEMORY_REGION((p), (n))
#define UNPOISON(p, n) ASAN_UNPOISON_MEMORY_REGION((p), (n))
#else
#define POISON(p, n) ((void)(p), (void)(n))
#define UNPOISON(p, n) ((void)(p), (void)(n))
#endif

#define SLAB_SHIFT 16
#define SLAB_SIZE ((size_t)1 << SLAB_SHIFT)
#define HUGE_SIZE ((size_t)2 << 20)        /* a transparent huge page */
#define DEFAULT_RESERVE ((size_t)64 << 30) /* 64 GiB of address space */
#define MIN_RESERVE ((size_t)64 << 20)
/* Empty slabs kept for reuse: at least this many, and up to half as many
 * as are in use (the garbage of a collection cycle comes back as the next
 * allocations: releasing it would only fault it in again); beyond that they
 * are released, down to half of what may be kept. */
#define KEEP_EMPTY_MIN 32

/* The size classes: 8-byte steps to 128, 16-byte steps to 1024, 32-byte
 * steps to 2048, 64-byte steps to AH_ARENA_MAX_SMALL.  Lua's common
 * objects fit a class exactly (tables 56, thread stacks 720 and 1360),
 * the rest waste at most a few percent. */
#define NCLASSES (16 + 56 + 32 + 32)
static uint16_t class_size[NCLASSES];
static uint8_t class_of8[AH_ARENA_MAX_SMALL / 8 + 1]; /* by (size + 7) / 8 */
static int classes_ready;

static void classes_init(void) {
  int c = 0, size;
  for (size = 8; size <= 128; size += 8) class_size[c++] = (uint16_t)size;
  for (size = 144; size <= 1024; size += 16) class_size[c++] = (uint16_t)size;
  for (size = 1056; size <= 2048; size += 32) class_size[c++] = (uint16_t)size;
  for (size = 2112; size <= AH_ARENA_MAX_SMALL; size += 64) class_size[c++] = (uint16_t)size;
  for (size = 0, c = 0; size <= AH_ARENA_MAX_SMALL / 8; size++) {
    while (class_size[c] < size * 8) c++;
    class_of8[size] = (uint8_t)c;
  }
  classes_ready = 1;
}

/* One per 64 KiB of the range; owned by the arena. */
typedef struct slab {
  struct slab *next, *prev; /* its class's slabs with room, or a list of empty ones */
  void *free;               /* freed blocks, linked through their first word */
  uint32_t bump;            /* offset of the first never-used block */
  uint32_t used;            /* blocks handed out */
  uint16_t cls;
  uint8_t listed;           /* in its class's list (it has room) */
  uint8_t released;         /* its pages were returned to the system */
} slab;

typedef struct slab_list {
  slab head; /* sentinel */
} slab_list;

/* Owned by the host that made it (ah__arena_new); freed by
 * ah__arena_destroy after its Lua state is closed. */
struct ah_arena {
  size_t in_use;       /* bytes Lua has (the sizes it passes) */
  size_t start;        /* in_use from which small blocks come from slabs */
  int active;          /* in_use has reached start */
  char *base;          /* the reserved range */
  size_t size;         /* its length */
  size_t top;          /* how much of it has been made slabs */
  slab *slabs;         /* bookkeeping, one per slab of the range (mmap'd) */
  size_t meta_size;
  slab_list cls[NCLASSES];  /* slabs with room, by class */
  slab_list empty;     /* empty slabs whose pages are kept */
  slab_list released;  /* empty slabs whose pages were returned */
  size_t nempty, nreleased, nslabs; /* slabs in the lists, slabs made */
  ah_arena_stats st;
};

static void list_init(slab_list *l) { l->head.next = l->head.prev = &l->head; }
static int list_empty(const slab_list *l) { return l->head.next == &l->head; }
static void list_remove(slab *s) {
  s->prev->next = s->next;
  s->next->prev = s->prev;
  s->next = s->prev = NULL;
}
static void list_push(slab_list *l, slab *s) { /* at the front */
  s->next = l->head.next;
  s->prev = &l->head;
  l->head.next->prev = s;
  l->head.next = s;
}
static void list_append(slab_list *l, slab *s) {
  s->prev = l->head.prev;
  s->next = &l->head;
  l->head.prev->next = s;
  l->head.prev = s;
}

static char *slab_data(const ah_arena *a, const slab *s) {
  return a->base + ((size_t)(s - a->slabs) << SLAB_SHIFT);
}

static int is_ours(const ah_arena *a, const void *p) {
  return (size_t)((const char *)p - a->base) < a->top;
}

static void *map(size_t size) {
  void *p = mmap(NULL, size, PROT_READ | PROT_WRITE,
                 MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
  return p == MAP_FAILED ? NULL : p;
}

ah_arena *ah__arena_new(size_t reserve, size_t start) {
  ah_arena *a;
  size_t size;
  int c;
  if (!classes_ready) classes_init();
  if (!(a = calloc(1, sizeof *a))) return NULL;
  a->start = start;
  a->active = start == 0;
  /* The largest range the system allows, down to a useful minimum. */
  size = reserve ? (reserve + SLAB_SIZE - 1) & ~(SLAB_SIZE - 1) : DEFAULT_RESERVE;
  for (; size >= SLAB_SIZE; size = size > MIN_RESERVE ? size / 4 : 0) {
    if ((a->base = map(size + HUGE_SIZE)) != NULL) break;
  }
  if (!a->base) {
    free(a);
    return NULL;
  }
  {
    /* Aligned to a huge page (so slabs are aligned to their size, and the
     * slab of a block is its offset shifted); the ends are given back. */
    char *aligned = (char *)(((uintptr_t)a->base + HUGE_SIZE - 1) & ~(uintptr_t)(HUGE_SIZE - 1));
    size_t head = (size_t)(aligned - a->base);
    if (head) munmap(a->base, head);
    if (HUGE_SIZE - head) munmap(aligned + size, HUGE_SIZE - head);
    a->base = aligned;
    a->size = size;
  }
  a->meta_size = (size >> SLAB_SHIFT) * sizeof(slab);
  if (!(a->slabs = map(a->meta_size))) {
    munmap(a->base, a->size);
    free(a);
    return NULL;
  }
  for (c = 0; c < NCLASSES; c++) list_init(&a->cls[c]);
  list_init(&a->empty);
  list_init(&a->released);
  return a;
}

void ah__arena_destroy(ah_arena *a) {
  if (!a) return;
  UNPOISON(a->base, a->top);
  munmap(a->base, a->size);
  munmap(a->slabs, a->meta_size);
  free(a);
}

/* Returns the pages of an empty slab to the system. */
static void slab_release(ah_arena *a, slab *s) {
  madvise(slab_data(a, s), SLAB_SIZE, MADV_DONTNEED);
  s->released = 1;
  a->st.resident -= SLAB_SIZE;
  a->st.releases++;
  list_append(&a->released, s);
  a->nreleased++;
}

/* Releases empty slabs beyond what is worth keeping (all of them with
 * keep 0), oldest first. */
static void release_empty(ah_arena *a, size_t keep) {
  while (a->nempty > keep) {
    slab *s = a->empty.head.prev;
    list_remove(s);
    a->nempty--;
    slab_release(a, s);
  }
}

static size_t keep_empty(const ah_arena *a) {
  size_t in_use = a->nslabs - a->nempty - a->nreleased;
  return in_use / 2 > KEEP_EMPTY_MIN ? in_use / 2 : KEEP_EMPTY_MIN;
}

void ah__arena_trim(ah_arena *a) {
  if (a) release_empty(a, 0);
}

/* A slab for class c: an empty one whose pages are kept, else one whose
 * pages were returned, else a new one from the range; NULL when the range
 * is used up. */
static slab *slab_get(ah_arena *a, int c) {
  slab *s;
  if (!list_empty(&a->empty)) {
    s = a->empty.head.next;
    list_remove(s);
    a->nempty--;
  } else if (!list_empty(&a->released)) {
    s = a->released.head.next;
    list_remove(s);
    a->nreleased--;
    s->released = 0;
    a->st.resident += SLAB_SIZE;
  } else if (a->top + SLAB_SIZE <= a->size) {
    s = &a->slabs[a->top >> SLAB_SHIFT];
    POISON(a->base + a->top, SLAB_SIZE);
    a->top += SLAB_SIZE;
    a->nslabs++;
    a->st.resident += SLAB_SIZE;
  } else {
    return NULL;
  }
  s->free = NULL;
  s->bump = 0;
  s->used = 0;
  s->cls = (uint16_t)c;
  s->listed = 1;
  list_push(&a->cls[c], s);
  return s;
}

static void *small_alloc(ah_arena *a, int c) {
  slab_list *l = &a->cls[c];
  slab *s = l->head.next;
  uint32_t size = class_size[c];
  void *p;
  for (;;) {
    if (s == &l->head && !(s = slab_get(a, c))) return NULL;
    if (s->free) {
      p = s->free;
      UNPOISON(p, size);
      s->free = *(void **)p;
      break;
    }
    if (s->bump + size <= SLAB_SIZE) {
      p = slab_data(a, s) + s->bump;
      UNPOISON(p, size);
      s->bump += size;
      break;
    }
    /* Full: off the list until a block of it is freed. */
    list_remove(s);
    s->listed = 0;
    s = l->head.next;
  }
  s->used++;
  a->st.small += size;
  return p;
}

static void small_free(ah_arena *a, void *p) {
  slab *s = &a->slabs[(size_t)((char *)p - a->base) >> SLAB_SHIFT];
  uint32_t size = class_size[s->cls];
  *(void **)p = s->free;
  s->free = p;
  POISON(p, size);
  a->st.small -= size;
  if (--s->used == 0) {
    /* Empty: kept for any class, or released when enough are kept. */
    if (s->listed) list_remove(s);
    s->listed = 0;
    list_push(&a->empty, s);
    a->nempty++;
    if (a->nempty > keep_empty(a)) release_empty(a, keep_empty(a) / 2);
  } else if (!s->listed) {
    /* Room again: behind the slabs that are being filled, so that the
     * emptiest ones get the chance to drain. */
    s->listed = 1;
    list_append(&a->cls[s->cls], s);
  }
}

static int class_for(size_t size) { return class_of8[(size + 7) >> 3]; }

static void *arena_alloc(ah_arena *a, void *ptr, size_t osize, size_t nsize);

void *ah__arena_alloc(void *ud, void *ptr, size_t osize, size_t nsize) {
  ah_arena *a = ud;
  void *p;
  if (nsize == 0) {
    if (ptr) {
      a->in_use -= osize;
      if (is_ours(a, ptr)) small_free(a, ptr);
      else free(ptr);
    }
    return NULL;
  }
  if (!a->active) {
    /* malloc's, until the heap is big enough for the arena to pay */
    p = realloc(ptr, nsize);
    if (!p) return ptr && nsize <= osize ? ptr : NULL; /* a shrink keeps its block */
    a->in_use += nsize - (ptr ? osize : 0);
    if (a->in_use >= a->start) a->active = 1;
    return p;
  }
  p = arena_alloc(a, ptr, osize, nsize);
  if (p) a->in_use += nsize - (ptr ? osize : 0);
  return p;
}

/* ah__arena_alloc once the arena is active (nsize > 0). */
static void *arena_alloc(ah_arena *a, void *ptr, size_t osize, size_t nsize) {
  void *p;
  if (!ptr) {
    /* osize is the type of the object; userdata (7, LUA_TUSERDATA) get
     * blocks aligned to 16 bytes, as malloc gives, for any C struct. */
    if (osize == 7 && (nsize & 15)) nsize = (nsize + 15) & ~(size_t)15;
    if (nsize <= AH_ARENA_MAX_SMALL && (p = small_alloc(a, class_for(nsize))))
      return p;
    return malloc(nsize);
  }
  if (is_ours(a, ptr)) {
    slab *s = &a->slabs[(size_t)((char *)ptr - a->base) >> SLAB_SHIFT];
    size_t have = class_size[s->cls];
    int c;
    if (nsize <= have) {
      /* It fits.  Move to a smaller class only when that saves memory,
       * and stay when there is no room for the move. */
      c = class_for(nsize);
      if (c == s->cls || (p = small_alloc(a, c)) == NULL) return ptr;
      memcpy(p, ptr, nsize);
      small_free(a, ptr);
      return p;
    }
    p = nsize <= AH_ARENA_MAX_SMALL ? small_alloc(a, class_for(nsize)) : NULL;
    if (!p && !(p = malloc(nsize))) return NULL;
    memcpy(p, ptr, osize < have ? osize : have);
    small_free(a, ptr);
    return p;
  }
  if (nsize <= AH_ARENA_MAX_SMALL && nsize < osize &&
      (p = small_alloc(a, class_for(nsize))) != NULL) {
    memcpy(p, ptr, nsize);
    free(ptr);
    return p;
  }
  p = realloc(ptr, nsize);
  /* A shrink that realloc refuses keeps the block where it is. */
  return p || nsize > osize ? p : ptr;
}

void ah__arena_stats(const ah_arena *a, ah_arena_stats *st) {
  *st = a->st;
  st->slabs = a->nslabs;
  st->empty = a->nempty;
  st->released = a->nreleased;
}

void *ah__sysalloc(void *ud, void *ptr, size_t osize, size_t nsize) {
  (void)ud, (void)osize;
  if (nsize == 0) {
    free(ptr);
    return NULL;
  }
  return realloc(ptr, nsize);
}
