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
 * A run takes tens of milliseconds and a run makes about 7000
 * allocations, so by default every 29th N is tried (both modes), which
 * keeps make test and make asan reasonable; AH_TEST_ALLOC_STRIDE=1 tries
 * every N (minutes), AH_TEST_ALLOC_FROM=N and AH_TEST_ALLOC_MODE=0|1
 * start later, AH_TEST_ALLOC_VERBOSE=1 prints each N on stderr.
 */
#include "agenthost.h"
#include "ctest.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

typedef struct counter {
  long count;     /* allocations so far */
  long fail_at;   /* the allocation that fails; 0: none */
  int from_on;    /* fail every allocation from fail_at on */
  long failed;
} counter;

static void *counting_alloc(void *ud, void *ptr, size_t osize, size_t nsize) {
  counter *c = ud;
  (void)osize;
  if (nsize == 0) {
    free(ptr);
    return NULL;
  }
  c->count++;
  if (c->fail_at > 0 &&
      (c->count == c->fail_at || (c->from_on && c->count > c->fail_at))) {
    c->failed++;
    return NULL;
  }
  return realloc(ptr, nsize);
}

static void quiet_log(void *ud, int level, const char *msg) {
  (void)ud, (void)level, (void)msg;
}
static long errors_seen;
static void count_error(void *ud, const char *msg, const char *tb) {
  (void)ud, (void)msg, (void)tb;
  errors_seen++;
}

static char db_path[256];
static char script[4096];

/* Tasks (spawn, gather, sleep, a queue), the store (exec, post, query), a
 * channel that ah_post feeds, a failing HTTP request (its completion builds
 * the error) and a subprocess (its completion builds the result); sets
 * ok = true at the end. */
static const char *const script_fmt =
    "local ah = require 'agenthost'\n"
    "local task = ah.task\n"
    "local db = ah.store.open('%s')\n"
    "db:exec('create table if not exists t(x)')\n"
    "local q = task.queue(2)\n"
    "local producer = task.spawn(function()\n"
    "  for i = 1, 4 do q:push(i) end\n"
    "  q:push(false)\n"
    "end)\n"
    "local got = {}\n"
    "local a, b = task.gather(function()\n"
    "  while true do local v = q:pop(); if not v then break end; got[#got + 1] = v end\n"
    "  return #got\n"
    "end, function() task.sleep(0.001); return 'slept' end)\n"
    "producer:join()\n"
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

/* One open, load, run and close with the allocator set as c says.
 * Returns 1 when every call behaved; *ran is set when the script ran to
 * its end. */
static int one_run(counter *c, int *ran) {
  ah_config cfg;
  ah_host *h = NULL;
  int rc, steps = 0, good = 1;
  ah_config_init(&cfg);
  cfg.alloc = counting_alloc;
  cfg.alloc_ud = c;
  cfg.log = quiet_log;
  cfg.on_error = count_error;
  *ran = 0;
  rc = ah_open(&cfg, &h);
  if (rc != AH_OK) return (rc == AH_ENOMEM || rc == AH_ESCRIPT) && h == NULL;
  rc = ah_load_string(h, script, "=alloc");
  if (rc != AH_OK && rc != AH_ENOMEM && rc != AH_ESCRIPT) good = 0;
  rc = ah_post(h, "in", "{\"n\": 1}");
  if (rc != AH_OK && rc != AH_ENOMEM) good = 0;
  /* A run whose post was lost waits on its channel for ever: after a
   * bounded number of steps ah_close cancels it. */
  while ((rc = ah_step(h, 1000)) == AH_AGAIN && steps++ < 3000)
    if (steps > 2000) { /* waiting on the store's thread; nothing is timed */
      struct timespec ts = {0, 100000};
      nanosleep(&ts, NULL);
    }
  if (rc != AH_OK && rc != AH_AGAIN) good = 0;
  {
    lua_State *L = ah_lua(h);
    if (lua_getglobal(L, "ok") == LUA_TBOOLEAN) *ran = lua_toboolean(L, -1);
    lua_pop(L, 1);
  }
  if (ah_close(h) != AH_OK) good = 0;
  return good;
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
  long total, n, stride = 29;
  int mode, ran;
  const char *env = getenv("AH_TEST_ALLOC_STRIDE");
  char dir[] = "/tmp/ah_alloc_XXXXXX";
  if (env && atol(env) > 0) stride = atol(env);
  setvbuf(stdout, NULL, _IOLBF, 0);
  if (!mkdtemp(dir)) {
    perror("mkdtemp");
    return 1;
  }
  snprintf(db_path, sizeof db_path, "%s/alloc.db", dir);
  snprintf(script, sizeof script, script_fmt, db_path);

  test_task_exhausts_memory();

  memset(&c, 0, sizeof c);
  CHECK(one_run(&c, &ran) && ran, "the script runs with no failing allocation");
  total = c.count;
  printf("# %ld allocations in a run\n", total);

  for (mode = getenv("AH_TEST_ALLOC_MODE") ? atoi(getenv("AH_TEST_ALLOC_MODE")) : 0;
       mode < 2; mode++) {
    long bad = 0, completed = 0, first_bad = 0;
    const char *from = getenv("AH_TEST_ALLOC_FROM");
    for (n = from ? atol(from) : 1; n <= total + 50; n += stride) {
      memset(&c, 0, sizeof c);
      c.fail_at = n;
      c.from_on = mode;
      if (getenv("AH_TEST_ALLOC_VERBOSE")) fprintf(stderr, "N=%ld\n", n);
      if (!one_run(&c, &ran)) {
        if (!bad++) first_bad = n;
      }
      completed += ran;
    }
    printf("# mode %s: %ld runs completed the script, first bad N %ld\n",
           mode ? "from N on" : "Nth only", completed, first_bad);
    CHECK(bad == 0, mode ? "every allocation from the Nth on fails: clean every time"
                         : "the Nth allocation fails: clean every time");
  }
  unlink(db_path);
  {
    char side[300];
    snprintf(side, sizeof side, "%s-wal", db_path);
    unlink(side);
    snprintf(side, sizeof side, "%s-shm", db_path);
    unlink(side);
  }
  rmdir(dir);
  return ctest_done();
}
