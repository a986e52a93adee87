/*
 * Allocation failures: a counting allocator in ah_config.alloc fails the
 * Nth allocation of Lua (and, in a second mode, every allocation from the
 * Nth on) while a host opens, runs a script that uses tasks, the store and
 * a channel fed by ah_post, and closes.  For every N over the whole range
 * of allocations such a run makes, the host must not abort: ah_open fails
 * cleanly (AH_ENOMEM or AH_ESCRIPT) or the run completes or fails cleanly,
 * and ah_close returns AH_OK.  Leaks are caught by LeakSanitizer (make
 * asan) and valgrind (make valgrind).
 *
 * A run makes about 1,600 allocations (the library's parts load on first
 * use) and every run starts from a fresh database, so each makes the same
 * ones: every N is tried in the two failing modes, every 7th in a third
 * mode where the Nth allocation fails once and Lua's retry after its
 * emergency collection succeeds.  AH_TEST_ALLOC_STRIDE=K sets one stride
 * for all modes, AH_TEST_ALLOC_FROM=N and AH_TEST_ALLOC_MODE=0|1|2 start
 * later, AH_TEST_ALLOC_VERBOSE=1 prints each N on stderr.
 *
 * The counting allocator takes its blocks from host/alloc.c's arena, the
 * default allocator of a host, so that the sweep covers it too; in
 * sanitizer builds (AH_ALLOC_SYSTEM) from realloc/free, so that LeakSanitizer
 * sees every block.  The arena is also tested on its own first: blocks of
 * every size apart and aligned, contents kept through realloc, a shrink that
 * cannot fail, a full range falling back to malloc, empty slabs returned to
 * the system, and which allocator a host gets.
 */
#define _DEFAULT_SOURCE /* mincore */
#include "agenthost.h"
#include "ctest.h"
#include "../../host/host.h"

#include <limits.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

enum { FAIL_NTH, FAIL_FROM_N, COLLECT_AT_N, NMODES };
static const char *const mode_names[NMODES] = {"Nth only", "from N on", "collect at N"};

typedef struct counter {
  ah_arena *arena; /* where the blocks come from; NULL: realloc/free */
  long count;     /* allocations so far */
  long fail_at;   /* the allocation that fails; 0: none */
  int mode;       /* FAIL_NTH, FAIL_FROM_N, COLLECT_AT_N */
  long failed;
  /* The request refused last (Lua retries it once after an emergency
   * collection: in FAIL_NTH mode the retry is refused too, so that the
   * Nth allocation really fails as Lua sees it). */
  int retry_pending;
  void *last_ptr;
  size_t last_osize, last_nsize;
} counter;

static void *backing(counter *c, void *ptr, size_t osize, size_t nsize) {
  if (c->arena) return ah__arena_alloc(c->arena, ptr, osize, nsize);
  if (nsize == 0) {
    free(ptr);
    return NULL;
  }
  return realloc(ptr, nsize);
}

static void *counting_alloc(void *ud, void *ptr, size_t osize, size_t nsize) {
  counter *c = ud;
  if (nsize == 0) return backing(c, ptr, osize, 0);
  if (c->retry_pending) {
    c->retry_pending = 0;
    if (ptr == c->last_ptr && osize == c->last_osize && nsize == c->last_nsize) {
      c->failed++;
      return NULL;
    }
  }
  c->count++;
  if (c->fail_at > 0 &&
      (c->count == c->fail_at || (c->mode == FAIL_FROM_N && c->count > c->fail_at))) {
    c->failed++;
    if (c->mode == FAIL_NTH) {
      c->retry_pending = 1;
      c->last_ptr = ptr;
      c->last_osize = osize;
      c->last_nsize = nsize;
    }
    return NULL;
  }
  return backing(c, ptr, osize, nsize);
}

/* Set when the host says a post could not be delivered: the script then
 * waits on its channel for ever, and the run is ended by closing. */
static int post_lost;
static void quiet_log(void *ud, int level, const char *msg) {
  (void)ud, (void)level;
  if (msg && strstr(msg, "ah_post")) post_lost = 1;
}
static long errors_seen;
static void count_error(void *ud, const char *msg, const char *tb) {
  (void)ud, (void)tb;
  if (msg && strstr(msg, "ah_post")) post_lost = 1;
  errors_seen++;
}

static char db_path[256];
static char script[4096];

/* Each run starts from no database, so that every run makes the same
 * allocations (a table that grew would make later runs longer). */
static void remove_db(void) {
  char side[300];
  unlink(db_path);
  snprintf(side, sizeof side, "%s-wal", db_path);
  unlink(side);
  snprintf(side, sizeof side, "%s-shm", db_path);
  unlink(side);
}

/* Tasks (spawn, gather, sleep, a queue; every task a branch of the
 * gather or joined by it, so that one failing does not leave another
 * waiting for ever), the store (exec, post, query), a
 * channel that ah_post feeds, a failing HTTP request (its completion builds
 * the error) and a subprocess (its completion builds the result); sets
 * ok = true at the end. */
static const char *const script_fmt =
    "local ah = require 'agenthost'\n"
    "local task = ah.task\n"
    "local db = ah.store.open('%s')\n"
    "db:exec('create table if not exists t(x)')\n"
    "local q = task.queue(2)\n"
    "local got = {}\n"
    "local sleeper = task.spawn(function() task.sleep(0.001); return 'slept' end)\n"
    "-- The producer is a branch of the gather, so that when it fails the\n"
    "-- consumer is cancelled rather than left waiting on the queue.\n"
    "local a, b = task.gather(function()\n"
    "  while true do local v = q:pop(); if not v then break end; got[#got + 1] = v end\n"
    "  return #got\n"
    "end, function() return sleeper:join() end, function()\n"
    "  for i = 1, 4 do q:push(i) end\n"
    "  q:push(false)\n"
    "end)\n"
    "db:exec('insert into t(x) values (?)', a)\n"
    "db:post('insert into t(x) values (?)', b)\n"
    "db:flush()\n"
    "local rows = db:query('select x from t')\n"
    "local msg = ah.channel('in'):recv()\n"
    "assert(msg.n == 1 and #rows >= 2)\n"
    "local hok, herr = pcall(ah.http.request, {url = 'http://127.0.0.1:1/', timeout = 5})\n"
    "assert(not hok and ah.error.is(herr))\n"
    "local r = ah.proc.run {'sh', '-c', 'echo out; echo err >&2; exit 3'}\n"
    "assert(r.code == 3 and r.stdout == 'out\\n' and r.stderr == 'err\\n')\n"
    "db:close()\n"
    "ok = true\n";

static int get_ok(lua_State *L) {
  lua_getglobal(L, "ok");
  return 1;
}

/* One open, load, run and close with the allocator set as c says.
 * Returns 1 when every call behaved; *ran is set when the script ran to
 * its end. */
static int one_run(counter *c, int *ran) {
  ah_config cfg;
  ah_host *h = NULL;
  int rc, steps = 0, good = 1;
  struct timespec t0;
  ah_config_init(&cfg);
  cfg.alloc = counting_alloc;
  cfg.alloc_ud = c;
  cfg.log = quiet_log;
  cfg.on_error = count_error;
  *ran = 0;
  remove_db();
  rc = ah_open(&cfg, &h);
  if (rc != AH_OK) return (rc == AH_ENOMEM || rc == AH_ESCRIPT) && h == NULL;
  rc = ah_load_string(h, script, "=alloc");
  if (rc != AH_OK && rc != AH_ENOMEM && rc != AH_ESCRIPT) good = 0;
  post_lost = 0;
  rc = ah_post(h, "in", "{\"n\": 1}");
  if (rc != AH_OK && rc != AH_ENOMEM) good = 0;
  if (rc != AH_OK) post_lost = 1;
  /* The run steps until it ends, or until its post was lost (it would
   * wait on its channel for ever; ah_close cancels it).  The threads it
   * waits on (the store's, the subprocess) can be slow on a loaded
   * machine: a run that has not ended after 60 s is reported as hung. */
  clock_gettime(CLOCK_MONOTONIC, &t0);
  while ((rc = ah_step(h, 1000)) == AH_AGAIN && !post_lost) {
    struct timespec now, ts = {0, 100000};
    if (++steps < 2000) continue;
    clock_gettime(CLOCK_MONOTONIC, &now);
    if (now.tv_sec - t0.tv_sec > 60) {
      printf("# N=%ld: the run did not end\n", c->fail_at);
      good = 0;
      break;
    }
    nanosleep(&ts, NULL);
  }
  if (rc != AH_OK && rc != AH_AGAIN) good = 0;
  {
    /* Protected: with every allocation failing, even the name "ok" may
     * not be interned. */
    lua_State *L = ah_lua(h);
    lua_pushcfunction(L, get_ok);
    if (lua_pcall(L, 0, 1, 0) == LUA_OK && lua_isboolean(L, -1)) *ran = lua_toboolean(L, -1);
    lua_pop(L, 1);
  }
  if (ah_close(h) != AH_OK) good = 0;
  return good;
}

/* The sweep's arena: one for every run (each run frees all it took). */
static ah_arena *sweep_arena;

/* one_run on the sweep's arena (in the builds that have one). */
static int one_run_arena(counter *c, int *ran) {
  ah_arena_stats st;
  int good;
  c->arena = sweep_arena;
  good = one_run(c, ran);
  if (sweep_arena) {
    ah__arena_stats(sweep_arena, &st);
    if (st.small != 0) good = 0; /* a run that left a block behind */
  }
  return good;
}

/* ---- the arena on its own ---------------------------------------------- */

static unsigned char pattern(size_t block, size_t i) {
  return (unsigned char)(block * 131u + i * 7u + 1u);
}

static void fill(void *p, size_t n, size_t block) {
  size_t i;
  for (i = 0; i < n; i++) ((unsigned char *)p)[i] = pattern(block, i);
}

static int intact(const void *p, size_t n, size_t block) {
  size_t i;
  for (i = 0; i < n; i++)
    if (((const unsigned char *)p)[i] != pattern(block, i)) return 0;
  return 1;
}

#define NBLOCKS 6000

/* Blocks of every size up to past the largest class, userdata among them;
 * some freed and allocated again, some resized both ways. */
static void test_arena_blocks(void) {
  static void *p[NBLOCKS];
  static size_t sz[NBLOCKS];
  ah_arena *a = ah__arena_new((size_t)64 << 20, 0);
  ah_arena_stats st;
  int i, aligned = 1, ud_aligned = 1, kept = 1, resized = 1, none_null = 1;
  CHECK(a != NULL, "an arena reserves its range");
  if (!a) return;
  for (i = 0; i < NBLOCKS; i++) {
    int ud = i % 5 == 0;
    sz[i] = (size_t)(i % 4700) + 1;
    p[i] = ah__arena_alloc(a, NULL, ud ? 7 : 4, sz[i]);
    if (!p[i]) { none_null = 0; continue; }
    if ((uintptr_t)p[i] % 8) aligned = 0;
    if (ud && (uintptr_t)p[i] % 16) ud_aligned = 0;
    fill(p[i], sz[i], (size_t)i);
  }
  CHECK(none_null, "every allocation succeeds");
  CHECK(aligned, "every block is aligned to 8 bytes");
  CHECK(ud_aligned, "userdata blocks are aligned to 16 bytes");
  for (i = 0; i < NBLOCKS; i++)
    if (p[i] && !intact(p[i], sz[i], (size_t)i)) kept = 0;
  CHECK(kept, "no two blocks overlap: every one keeps what was written");
  for (i = 0; i < NBLOCKS; i += 2) {
    ah__arena_alloc(a, p[i], sz[i], 0);
    p[i] = ah__arena_alloc(a, NULL, 4, sz[i]);
    if (p[i]) fill(p[i], sz[i], (size_t)i);
  }
  for (i = 1; i < NBLOCKS; i += 2) {
    size_t n = i % 3 ? sz[i] * 3 + 5 : sz[i] / 3 + 1;
    void *q = ah__arena_alloc(a, p[i], sz[i], n);
    if (!q || !intact(q, n < sz[i] ? n : sz[i], (size_t)i)) resized = 0;
    if (q) {
      p[i] = q;
      sz[i] = n;
      fill(q, n, (size_t)i);
    }
  }
  CHECK(resized, "growing and shrinking keeps the contents");
  kept = 1;
  for (i = 0; i < NBLOCKS; i++)
    if (p[i] && !intact(p[i], sz[i], (size_t)i)) kept = 0;
  CHECK(kept, "after frees, reuse and resizes every block is intact");
  for (i = 0; i < NBLOCKS; i++) ah__arena_alloc(a, p[i], sz[i], 0);
  ah__arena_stats(a, &st);
  CHECK(st.small == 0, "after every free no small block is in use");
  ah__arena_destroy(a);
}

/* A range of four slabs: once it is full blocks come from malloc, and a
 * shrink that has no room to move keeps its block. */
static void test_arena_full(void) {
  enum { N = 80 };
  void *big[N], *small;
  ah_arena *a = ah__arena_new((size_t)4 << 16, 0);
  int i, ok = 1;
  CHECK(a != NULL, "a small arena");
  if (!a) return;
  for (i = 0; i < N; i++) {
    big[i] = ah__arena_alloc(a, NULL, 4, 4000);
    if (!big[i]) ok = 0;
    else fill(big[i], 4000, (size_t)i);
  }
  CHECK(ok, "allocations beyond the range succeed (from malloc)");
  small = ah__arena_alloc(a, big[0], 4000, 10);
  CHECK(small == big[0] && intact(small, 10, 0),
        "a shrink with no room for a smaller block keeps the block and its contents");
  big[0] = small;
  small = ah__arena_alloc(a, big[N - 1], 4000, 10);
  CHECK(small != NULL && intact(small, 10, N - 1), "a block of malloc shrinks too");
  big[N - 1] = small;
  ok = 1;
  for (i = 1; i < N - 1; i++)
    if (!intact(big[i], 4000, (size_t)i)) ok = 0;
  CHECK(ok, "blocks of the range and of malloc keep their contents");
  ah__arena_alloc(a, big[0], 10, 0);
  ah__arena_alloc(a, big[N - 1], 10, 0);
  for (i = 1; i < N - 1; i++) ah__arena_alloc(a, big[i], 4000, 0);
  ah__arena_destroy(a); /* LeakSanitizer: malloc's blocks went back */
}

/* Until `start` bytes are in use every block is malloc's; then small ones
 * come from slabs, and blocks of both kinds resize and free alike. */
static void test_arena_start(void) {
  enum { N = 4000 };
  static void *p[N];
  ah_arena *a = ah__arena_new((size_t)64 << 20, (size_t)1 << 20);
  ah_arena_stats st;
  int i, below = -1, ok = 1;
  CHECK(a != NULL, "an arena that starts at 1 MiB");
  if (!a) return;
  for (i = 0; i < N; i++) {
    p[i] = ah__arena_alloc(a, NULL, 4, 500);
    if (!p[i]) ok = 0;
    else fill(p[i], 500, (size_t)i);
    ah__arena_stats(a, &st);
    if (below < 0 && st.small > 0) below = i; /* the first block of a slab */
  }
  CHECK(ok, "every allocation succeeds");
  CHECK(below > 1900 && below < 2200, "blocks come from slabs once about 1 MiB is in use");
  for (i = 0; i < N; i++) {
    void *q = ah__arena_alloc(a, p[i], 500, i % 2 ? 700 : 300);
    if (!q || !intact(q, 300, (size_t)i)) ok = 0;
    if (q) p[i] = q;
  }
  CHECK(ok, "blocks of malloc and of slabs resize keeping their contents");
  for (i = 0; i < N; i++) ah__arena_alloc(a, p[i], i % 2 ? 700 : 300, 0);
  ah__arena_stats(a, &st);
  CHECK(st.small == 0, "and free alike");
  ah__arena_destroy(a);
}

/* Pages of p's block that are resident. */
static int resident(void *p) {
  long page = sysconf(_SC_PAGESIZE);
  unsigned char v = 0;
  void *at = (void *)((uintptr_t)p & ~(uintptr_t)(page - 1));
  if (mincore(at, (size_t)page, &v) != 0) return -1;
  return v & 1;
}

/* 32 MiB of small blocks, then all freed: the empty slabs beyond a small
 * reserve go back to the system at once, the rest on a trim. */
static void test_arena_returns_memory(void) {
  enum { N = 32 << 14 }; /* 64-byte blocks */
  static void *p[N];
  ah_arena *a = ah__arena_new(0, 0);
  ah_arena_stats st;
  int i, in = 0, out = 0;
  CHECK(a != NULL, "an arena with the default range");
  if (!a) return;
  for (i = 0; i < N; i++) {
    p[i] = ah__arena_alloc(a, NULL, 4, 64);
    memset(p[i], 1, 64);
  }
  for (i = 0; i < N; i += 1024) in += resident(p[i]) == 1;
  CHECK(in == N / 1024, "the blocks' pages are resident while used");
  for (i = 0; i < N; i++) ah__arena_alloc(a, p[i], 64, 0);
  ah__arena_stats(a, &st);
  CHECK(st.small == 0 && st.resident <= (size_t)4 << 20,
        "freeing them all returns all but a few slabs");
  ah__arena_trim(a);
  ah__arena_stats(a, &st);
  CHECK(st.resident == 0 && st.releases > 0, "a trim returns the rest");
  for (i = 0; i < N; i += 1024) out += resident(p[i]) == 0;
  CHECK(out == N / 1024, "the system sees those pages as not resident");
  p[0] = ah__arena_alloc(a, NULL, 4, 64);
  if (p[0]) memset(p[0], 1, 64);
  CHECK(p[0] != NULL && resident(p[0]) == 1, "a released slab serves again");
  ah__arena_alloc(a, p[0], 64, 0);
  ah__arena_destroy(a);
}

static void *given_alloc(void *ud, void *ptr, size_t osize, size_t nsize) {
  (void)ud, (void)osize;
  if (nsize == 0) {
    free(ptr);
    return NULL;
  }
  return realloc(ptr, nsize);
}

/* Which allocator a host's state gets. */
static void test_host_allocator(void) {
  ah_config cfg;
  ah_host *h = NULL;
  void *ud;
  const char *env = getenv("AGENTHOST_ALLOC");
  int system = env && strcmp(env, "system") == 0; /* make valgrind sets it */
  ah_config_init(&cfg);
  cfg.log = quiet_log;
  CHECK(ah_open(&cfg, &h) == AH_OK, "a host opens with the default allocator");
  if (h) {
#ifdef AH_ALLOC_SYSTEM
    (void)system;
    CHECK(lua_getallocf(ah_lua(h), &ud) == ah__sysalloc,
          "a sanitizer build gives hosts realloc/free");
#else
    if (system)
      CHECK(lua_getallocf(ah_lua(h), &ud) == ah__sysalloc,
            "AGENTHOST_ALLOC=system in the environment gives realloc/free");
    else
      CHECK(lua_getallocf(ah_lua(h), &ud) == ah__arena_alloc && ud != NULL,
            "a host's state allocates from its arena");
#endif
    ah_close(h);
  }
  setenv("AGENTHOST_ALLOC", "system", 1);
  h = NULL;
  CHECK(ah_open(&cfg, &h) == AH_OK && lua_getallocf(ah_lua(h), &ud) == ah__sysalloc,
        "AGENTHOST_ALLOC=system gives realloc/free");
  if (h) ah_close(h);
  if (!system) unsetenv("AGENTHOST_ALLOC");
  cfg.alloc = given_alloc;
  cfg.alloc_ud = &cfg;
  h = NULL;
  CHECK(ah_open(&cfg, &h) == AH_OK && lua_getallocf(ah_lua(h), &ud) == given_alloc &&
            ud == &cfg,
        "ah_config.alloc is used as given");
  if (h) ah_close(h);
}

/* An allocator with a cap on the bytes in use (Lua passes the old size
 * on free and realloc, so no header is needed). */
typedef struct capped {
  size_t used, cap;
  long refused;
} capped;

static void *capped_alloc(void *ud, void *ptr, size_t osize, size_t nsize) {
  capped *c = ud;
  size_t old = ptr ? osize : 0;
  void *p;
  if (nsize == 0) {
    free(ptr);
    c->used -= old;
    return NULL;
  }
  if (nsize > old && c->used + (nsize - old) > c->cap) {
    c->refused++;
    return NULL;
  }
  if (!(p = realloc(ptr, nsize))) return NULL;
  c->used = c->used - old + nsize;
  return p;
}

/* The audit's case: under a 16 MiB cap, one task keeps allocating until
 * memory runs out.  It fails alone with `resource`; a task beside it goes
 * on to its end; the host steps and closes normally. */
static void test_task_exhausts_memory(void) {
  ah_config cfg;
  ah_host *h = NULL;
  capped cap;
  int rc, steps = 0, result = 0;
  memset(&cap, 0, sizeof cap);
  cap.cap = (size_t)16 << 20;
  ah_config_init(&cfg);
  cfg.alloc = capped_alloc;
  cfg.alloc_ud = &cap;
  cfg.log = quiet_log;
  cfg.on_error = count_error;
  CHECK(ah_open(&cfg, &h) == AH_OK, "a host opens under a 16 MiB cap");
  if (!h) return;
  rc = ah_load_string(h,
      "local ah = require 'agenthost'\n"
      "local hog = ah.task.spawn(function()\n"
      "  local t = {}\n"
      "  for i = 1, 1e9 do t[i] = string.rep('x', 64) .. i end\n"
      "end)\n"
      "local steady = ah.task.spawn(function()\n"
      "  local n = 0\n"
      "  for i = 1, 20 do ah.task.sleep(0.001); n = n + 1 end\n"
      "  return n\n"
      "end)\n"
      "local ok, err = hog:result()\n"
      "collectgarbage()\n"
      "kind = (not ok) and ah.error.is(err, 'resource') and 'resource' or tostring(err)\n"
      "steady_n = steady:join()\n",
      "=hog");
  CHECK(rc == AH_OK, "the script loads");
  while ((rc = ah_step(h, 1000)) == AH_AGAIN && steps++ < 100000) {
  }
  CHECK(rc == AH_OK, "every task ended");
  CHECK(cap.refused > 0, "the cap was reached");
  {
    lua_State *L = ah_lua(h);
    lua_getglobal(L, "kind");
    CHECK(lua_isstring(L, -1) && strcmp(lua_tostring(L, -1), "resource") == 0,
          "the task that ran out of memory failed with resource");
    lua_pop(L, 1);
    lua_getglobal(L, "steady_n");
    result = (int)lua_tointeger(L, -1);
    lua_pop(L, 1);
  }
  CHECK(result == 20, "the task beside it ran to its end");
  CHECK(ah_close(h) == AH_OK, "the host closes normally");
}

int main(void) {
  counter c;
  long lo, hi, n;
  /* Every N in the two failing modes; every 7th in the collecting one,
   * whose runs all go to the end of the script (AH_TEST_ALLOC_STRIDE sets
   * one stride for all three). */
  long strides[NMODES] = {1, 1, 7};
  int mode, ran;
  const char *env = getenv("AH_TEST_ALLOC_STRIDE");
  char dir[] = "/tmp/ah_alloc_XXXXXX";
  if (env && atol(env) > 0) strides[0] = strides[1] = strides[2] = atol(env);
  setvbuf(stdout, NULL, _IOLBF, 0);
  if (!mkdtemp(dir)) {
    perror("mkdtemp");
    return 1;
  }
  snprintf(db_path, sizeof db_path, "%s/alloc.db", dir);
  snprintf(script, sizeof script, script_fmt, db_path);

  test_arena_blocks();
  test_arena_full();
  test_arena_start();
  test_arena_returns_memory();
  test_host_allocator();
  test_task_exhausts_memory();
#ifndef AH_ALLOC_SYSTEM
  sweep_arena = ah__arena_new((size_t)256 << 20, 0);
#endif

  /* A run's count can differ by a few allocations from one run to the
   * next, near its end (what the loop finds ready on each iteration
   * depends on the store's thread and the subprocess): the sweep goes past
   * the largest count of three clean runs, every N up to 10 below the
   * smallest must have been refused, and every run from 10 past the
   * largest must have completed. */
  lo = LONG_MAX;
  hi = 0;
  for (n = 0; n < 3; n++) {
    memset(&c, 0, sizeof c);
    CHECK(one_run_arena(&c, &ran) && ran, "the script runs with no failing allocation");
    if (c.count < lo) lo = c.count;
    if (c.count > hi) hi = c.count;
  }
  printf("# %ld to %ld allocations in a run\n", lo, hi);

  for (mode = getenv("AH_TEST_ALLOC_MODE") ? atoi(getenv("AH_TEST_ALLOC_MODE")) : 0;
       mode < NMODES; mode++) {
    long bad = 0, completed = 0, first_bad = 0, runs = 0, refused = 0;
    long unrefused = 0, past_end = 0, past_end_done = 0;
    const char *from = getenv("AH_TEST_ALLOC_FROM");
    for (n = from ? atol(from) : 1; n <= hi + 50; n += strides[mode]) {
      memset(&c, 0, sizeof c);
      c.fail_at = n;
      c.mode = mode;
      if (getenv("AH_TEST_ALLOC_VERBOSE")) fprintf(stderr, "N=%ld\n", n);
      if (!one_run_arena(&c, &ran)) {
        if (!bad++) first_bad = n;
      }
      runs++;
      completed += ran;
      refused += c.failed > 0;
      if (n <= lo - 10 && c.failed == 0) unrefused++;
      if (n > hi + 10) past_end++, past_end_done += ran; /* margin: see lo, hi */
    }
    printf("# mode %s: %ld runs (every %ld. N), %ld refused an allocation, "
           "%ld completed the script, first bad N %ld\n",
           mode_names[mode], runs, strides[mode], refused, completed, first_bad);
    CHECK(bad == 0, mode == FAIL_NTH      ? "the Nth allocation fails: clean every time"
                    : mode == FAIL_FROM_N ? "every allocation from the Nth on fails: clean every time"
                                          : "an emergency collection at the Nth allocation: "
                                            "clean every time");
    /* Every run within the range was refused what was asked (so the sweep
     * covered it), and those past its end, refused nothing, completed. */
    CHECK(unrefused == 0, "every N within the range was refused");
    CHECK(past_end_done == past_end, "the runs past the last allocation completed the script");
  }
  ah__arena_destroy(sweep_arena);
  remove_db();
  rmdir(dir);
  return ctest_done();
}
