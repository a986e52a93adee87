/*
 * The embedding API of agenthost.h, used as an embedder would: opening and
 * closing (many times, for leak checkers), every misuse and its code,
 * stepping within a budget, posts from several threads at once, host
 * functions, the log and error callbacks, a borrowed loop, ah_run, and
 * what ah_close lets finish, and the memory of a burst going back to the
 * system once it is over.  Counts and orders only: no assertion depends
 * on how long anything took.  AH_TEST_OPENS sets the open/close count
 * (1000 by default; the valgrind target uses fewer).
 */
#define _DEFAULT_SOURCE /* nanosleep */
#include "agenthost.h"
#include "ctest.h"
#include "../../host/host.h"

#include <uv.h>

#include <lauxlib.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

/* ---- helpers ----------------------------------------------------------- */

static long counter;
static int last_level = -1;
static char last_log[256], last_error[256];
static int errors_seen;

static int c_count(lua_State *L) {
  counter += luaL_optinteger(L, 1, 1);
  return 0;
}

static void on_log(void *ud, int level, const char *msg) {
  (void)ud;
  last_level = level;
  snprintf(last_log, sizeof last_log, "%s", msg);
}

static void on_error(void *ud, const char *msg, const char *tb) {
  (void)ud;
  (void)tb;
  errors_seen++;
  snprintf(last_error, sizeof last_error, "%s", msg);
}

static ah_host *open_quiet(ah_config *cfg) {
  ah_host *h = NULL;
  ah_config c;
  if (!cfg) {
    ah_config_init(&c);
    cfg = &c;
  }
  cfg->on_error = on_error;
  cfg->log = on_log;
  if (ah_open(cfg, &h) != AH_OK) return NULL;
  ah_register(h, "count", c_count);
  return h;
}

/* Steps until no task is live; returns the number of steps, or -1 after
 * limit steps. */
static long step_all(ah_host *h, int budget_us, long limit) {
  long n;
  for (n = 1; n <= limit; n++)
    if (ah_step(h, budget_us) == AH_OK) return n;
  return -1;
}

/* ---- tests ------------------------------------------------------------- */

static void test_version(void) {
  int i;
  CHECK(strcmp(ah_version(), AH_VERSION_STRING) == 0, "ah_version is the header's version");
  CHECK(AH_VERSION_NUM == AH_VERSION_MAJOR * 10000 + AH_VERSION_MINOR * 100 + AH_VERSION_PATCH,
        "AH_VERSION_NUM combines the parts");
  for (i = AH_ECLOSED; i <= AH_AGAIN; i++)
    if (!ah_strerror(i) || !*ah_strerror(i)) break;
  CHECK(i == AH_AGAIN + 1, "every code has a message");
  CHECK(strcmp(ah_strerror(-999), "unknown error") == 0 &&
            strcmp(ah_strerror(999), "unknown error") == 0,
        "unknown codes have one too");
}

static void test_open_close(void) {
  const char *env = getenv("AH_TEST_OPENS");
  int n = env ? atoi(env) : 1000, i, ok = 0;
  for (i = 0; i < n; i++) {
    ah_host *h = NULL;
    if (ah_open(NULL, &h) == AH_OK && h && ah_close(h) == AH_OK) ok++;
  }
  CHECK(ok == n, "open and close many times");
}

static int reentrant_rc[4];
static int c_reenter(lua_State *L) {
  ah_host *h = ah_host_of(L);
  reentrant_rc[0] = ah_step(h, 0);
  reentrant_rc[1] = ah_run(h);
  reentrant_rc[2] = ah_close(h);
  reentrant_rc[3] = h ? 1 : 0;
  return 0;
}

typedef struct thread_call {
  ah_host *h;
  int rc[3];
} thread_call;

static void call_from_thread(void *arg) {
  thread_call *c = arg;
  c->rc[0] = ah_step(c->h, 0);
  c->rc[1] = ah_load_string(c->h, "return", NULL);
  c->rc[2] = ah_register(c->h, "x", c_count);
}

static void test_misuse(void) {
  ah_config cfg;
  ah_host *h = NULL;
  uv_thread_t th;
  thread_call tc;

  CHECK(ah_open(NULL, NULL) == AH_EINVAL, "ah_open without an out pointer");
  memset(&cfg, 0, sizeof cfg);
  CHECK(ah_open(&cfg, &h) == AH_EINVAL && h == NULL,
        "ah_open with a config ah_config_init did not fill");
  ah_config_init(&cfg);
  cfg.instruction_budget = -1;
  CHECK(ah_open(&cfg, &h) == AH_EINVAL, "a negative instruction budget");
  ah_config_init(&cfg);
  cfg.channel_capacity = 0;
  CHECK(ah_open(&cfg, &h) == AH_EINVAL, "a channel capacity of 0");
  ah_config_init(&cfg);
  cfg.post_capacity = -5;
  CHECK(ah_open(&cfg, &h) == AH_EINVAL, "a negative post capacity");
  ah_config_init(NULL); /* harmless */

  CHECK(ah_close(NULL) == AH_EINVAL, "ah_close(NULL)");
  CHECK(ah_load_file(NULL, "x.lua") == AH_EINVAL, "ah_load_file(NULL, ...)");
  CHECK(ah_load_string(NULL, "return", NULL) == AH_EINVAL, "ah_load_string(NULL, ...)");
  CHECK(ah_step(NULL, 0) == AH_EINVAL, "ah_step(NULL, ...)");
  CHECK(ah_run(NULL) == AH_EINVAL, "ah_run(NULL)");
  CHECK(ah_post(NULL, "c", "1") == AH_EINVAL, "ah_post(NULL, ...)");
  CHECK(ah_register(NULL, "f", c_count) == AH_EINVAL, "ah_register(NULL, ...)");
  CHECK(ah_lua(NULL) == NULL && ah_loop(NULL) == NULL, "escape hatches of NULL are NULL");
  CHECK(ah_errmsg(NULL) && *ah_errmsg(NULL), "ah_errmsg(NULL) is a message");
  CHECK(ah_host_of(NULL) == NULL, "ah_host_of(NULL)");

  h = open_quiet(NULL);
  CHECK(h != NULL, "open with defaults");
  if (!h) return;
  CHECK(*ah_errmsg(h) == '\0', "no message before a failure");
  CHECK(ah_load_file(h, NULL) == AH_EINVAL, "ah_load_file without a path");
  CHECK(ah_load_file(h, "/nonexistent/agent.lua") == AH_EIO, "a missing file is AH_EIO");
  CHECK(strstr(ah_errmsg(h), "nonexistent") != NULL, "and the message names it");
  CHECK(ah_load_string(h, NULL, NULL) == AH_EINVAL, "ah_load_string without code");
  CHECK(ah_load_string(h, "local x = = 1", "=bad") == AH_ESCRIPT, "a syntax error is AH_ESCRIPT");
  CHECK(strstr(ah_errmsg(h), "bad:1:") != NULL, "and the message has the chunk and line");
  CHECK(ah_load_string(h, "\x1bLua", NULL) == AH_ESCRIPT, "binary chunks are refused");
  CHECK(ah_step(h, -1) == AH_EINVAL, "a negative step budget");
  CHECK(ah_post(h, NULL, "1") == AH_EINVAL, "ah_post without a channel");
  CHECK(ah_post(h, "", "1") == AH_EINVAL, "ah_post to an empty channel name");
  CHECK(ah_post(h, "c", NULL) == AH_EINVAL, "ah_post without json");
  CHECK(ah_post(h, "c", "") == AH_EINVAL, "ah_post of an empty text");
  CHECK(ah_post(h, "c", "{\"a\":}") == AH_EINVAL, "ah_post of broken JSON");
  CHECK(ah_post(h, "c", "{'a':1}") == AH_EINVAL, "ah_post of single-quoted JSON");
  CHECK(ah_post(h, "c", "[1,2] 3") == AH_EINVAL, "ah_post of trailing garbage");
  CHECK(ah_post(h, "c", "\"\xc3\x28\"") == AH_EINVAL, "ah_post of invalid UTF-8");
  CHECK(ah_post(h, "c", "01") == AH_EINVAL, "ah_post of a number with a leading zero");
  CHECK(ah_register(h, NULL, c_count) == AH_EINVAL, "ah_register without a name");
  CHECK(ah_register(h, "f", NULL) == AH_EINVAL, "ah_register without a function");
  CHECK(ah_register(h, "1abc", c_count) == AH_EINVAL, "ah_register with a name that is no identifier");
  CHECK(ah_register(h, "a.b", c_count) == AH_EINVAL, "ah_register with a dotted name");
  CHECK(ah_register(h, "", c_count) == AH_EINVAL, "ah_register with an empty name");

  /* Re-entering from a host function, in a step. */
  ah_register(h, "reenter", c_reenter);
  ah_load_string(h, "require('agenthost').host.reenter()", "=reenter");
  step_all(h, 1000, 100);
  CHECK(reentrant_rc[3] == 1, "ah_host_of finds the host from a host function");
  CHECK(reentrant_rc[0] == AH_EMISUSE, "ah_step inside a step is misuse");
  CHECK(reentrant_rc[1] == AH_EMISUSE, "ah_run inside a step is misuse");
  CHECK(reentrant_rc[2] == AH_EMISUSE, "ah_close inside a step is misuse");

  /* From another thread. */
  tc.h = h;
  uv_thread_create(&th, call_from_thread, &tc);
  uv_thread_join(&th);
  CHECK(tc.rc[0] == AH_EMISUSE && tc.rc[1] == AH_EMISUSE && tc.rc[2] == AH_EMISUSE,
        "calls from another thread are misuse");
  CHECK(ah_step(h, 0) == AH_OK, "and the host still works");
  CHECK(ah_close(h) == AH_OK, "closed");
}

static void test_step_budget(void) {
  ah_host *h = open_quiet(NULL);
  int rc;
  long steps;
  if (!h) return;
  counter = 0;
  ah_load_string(h,
                 "local ah = require 'agenthost'\n"
                 "for i = 1, 1000 do ah.task.spawn(function() ah.host.count() end) end",
                 "=spawner");
  rc = ah_step(h, 0);
  CHECK(rc == AH_AGAIN && counter == 0, "a step of budget 0 runs one task: the loader");
  rc = ah_step(h, 0);
  CHECK(rc == AH_AGAIN && counter == 1, "the next runs one of the 1000 ready tasks");
  rc = ah_step(h, 0);
  CHECK(rc == AH_AGAIN && counter == 2, "and the next one more");
  rc = ah_step(h, 1);
  CHECK(rc == AH_AGAIN && counter > 2 && counter < 1000,
        "a step of 1 us runs fewer than all and says work remains");
  steps = step_all(h, 1000000, 1000);
  CHECK(steps >= 1 && counter == 1000, "a large budget finishes them");
  CHECK(ah_step(h, 0) == AH_OK, "an idle host steps to AH_OK");
  CHECK(ah_close(h) == AH_OK, "closed");
}

static void test_instruction_budget(void) {
  const char *busy = "local ah = require 'agenthost'\n"
                     "local x = 0\n"
                     "for i = 1, 200000 do x = x + i end\n"
                     "ah.host.count()";
  ah_config cfg;
  ah_host *h;
  long with, without;
  ah_config_init(&cfg);
  cfg.instruction_budget = 1000;
  h = open_quiet(&cfg);
  if (!h) return;
  counter = 0;
  ah_load_string(h, busy, "=busy");
  with = step_all(h, 1000000, 100000);
  CHECK(counter == 1 && with > 10, "a busy task under a budget is spread over many steps");
  ah_close(h);
  h = open_quiet(NULL);
  if (!h) return;
  ah_load_string(h, busy, "=busy");
  without = step_all(h, 1000000, 100000);
  CHECK(counter == 2 && without == 1, "without a budget one step runs it through");
  ah_close(h);
}

/* ---- posts from threads ---------------------------------------------------- */

#define POSTERS 4
#define PER_POSTER 5000

static long next_seq[POSTERS];
static long received, out_of_order;

static int c_got(lua_State *L) {
  int t = (int)luaL_checkinteger(L, 1);
  long k = (long)luaL_checkinteger(L, 2);
  if (t < 0 || t >= POSTERS || k != next_seq[t]) out_of_order++;
  if (t >= 0 && t < POSTERS) next_seq[t] = k + 1;
  received++;
  return 0;
}

typedef struct poster {
  ah_host *h;
  int id;
  long full; /* AH_EFULL answers, each retried */
  int failed;
} poster;

static void post_many(void *arg) {
  poster *p = arg;
  char json[64];
  long k;
  for (k = 0; k < PER_POSTER; k++) {
    int rc;
    snprintf(json, sizeof json, "{\"t\":%d,\"k\":%ld}", p->id, k);
    while ((rc = ah_post(p->h, "in", json)) == AH_EFULL) {
      p->full++;
      uv_sleep(0); /* let the loop catch up */
    }
    if (rc != AH_OK) p->failed++;
  }
}

static void test_post_threads(void) {
  ah_config cfg;
  ah_host *h;
  poster ps[POSTERS];
  uv_thread_t th[POSTERS];
  int i, failed = 0;
  long idle = 0;
  ah_config_init(&cfg);
  cfg.channel_capacity = 16;   /* so that posts wait in the backlog too */
  cfg.post_capacity = 1000;    /* and posters see AH_EFULL */
  h = open_quiet(&cfg);
  if (!h) return;
  ah_register(h, "got", c_got);
  ah_load_string(h,
                 "local ah = require 'agenthost'\n"
                 "local ch = ah.channel('in')\n"
                 "for i = 1, " "20000" " do\n"
                 "  local ev = ch:recv()\n"
                 "  ah.host.got(ev.t, ev.k)\n"
                 "  if i % 7 == 0 then ah.task.yield() end\n"
                 "end",
                 "=receiver");
  for (i = 0; i < POSTERS; i++) {
    ps[i].h = h;
    ps[i].id = i;
    ps[i].full = 0;
    ps[i].failed = 0;
    uv_thread_create(&th[i], post_many, &ps[i]);
  }
  /* Step while the posters post; then until the receiver has all of them
   * or nothing moves for many steps. */
  while (received < POSTERS * PER_POSTER && idle < 100000) {
    long before = received;
    ah_step(h, 200);
    idle = received == before ? idle + 1 : 0;
  }
  for (i = 0; i < POSTERS; i++) {
    uv_thread_join(&th[i]);
    failed += ps[i].failed;
  }
  CHECK(failed == 0, "every post from 4 threads was accepted (after AH_EFULL retries)");
  CHECK(received == POSTERS * PER_POSTER, "every post arrived");
  CHECK(out_of_order == 0, "the posts of each thread arrived in order");
  CHECK(step_all(h, 1000, 1000) > 0, "the receiver finished");
  CHECK(ah_close(h) == AH_OK, "closed");
}

static void test_post_full(void) {
  ah_config cfg;
  ah_host *h;
  ah_config_init(&cfg);
  cfg.post_capacity = 2;
  cfg.channel_capacity = 1;
  h = open_quiet(&cfg);
  if (!h) return;
  counter = 0;
  CHECK(ah_post(h, "c", "1") == AH_OK && ah_post(h, "c", "[null, true, 2.5e3, \"\\u00e9\"]") == AH_OK,
        "posts up to the capacity are accepted");
  CHECK(ah_post(h, "c", "3") == AH_EFULL, "one more is AH_EFULL");
  CHECK(ah_step(h, 0) == AH_AGAIN, "a step with undelivered posts says work remains");
  /* One post is in the channel (capacity 1), one in its backlog, which
   * still counts against the capacity. */
  CHECK(ah_post(h, "c", "3") == AH_OK && ah_post(h, "c", "4") == AH_EFULL,
        "a backlogged post still counts");
  ah_load_string(h,
                 "local ah = require 'agenthost'\n"
                 "local ch = ah.channel('c')\n"
                 "assert(ch:recv() == 1)\n"
                 "local v = ch:recv()\n"
                 "assert(v[1] == require('cjson').null and v[2] == true and v[3] == 2500 and v[4] == '\\u{e9}')\n"
                 "assert(ch:recv() == 3)\n"
                 "ah.host.count()",
                 "=reader");
  CHECK(step_all(h, 1000, 1000) > 0 && counter == 1, "the reader got all three, decoded, in order");
  CHECK(ah_post(h, "c", "3") == AH_OK, "and there is room again");
  CHECK(ah_close(h) == AH_OK, "closed with an undelivered post");
}

/* ---- callbacks, host functions, loops ------------------------------------------ */

static void test_callbacks(void) {
  ah_host *h = open_quiet(NULL);
  if (!h) return;
  errors_seen = 0;
  ah_load_string(h,
                 "local ah = require 'agenthost'\n"
                 "ah.log('warn', 'low fuel', 3)\n"
                 "error('boom in script')",
                 "=failing");
  step_all(h, 1000, 100);
  CHECK(last_level == AH_LOG_WARN && strcmp(last_log, "low fuel 3") == 0,
        "ah.log reaches the log callback with its level");
  CHECK(errors_seen == 1 && strstr(last_error, "boom in script"),
        "an uncaught error reaches the error callback");
  counter = 0;
  ah_load_string(h, "require('agenthost').host.count(41)", NULL);
  ah_register(h, "count", c_count); /* replacing is fine */
  step_all(h, 1000, 100);
  CHECK(counter == 41, "a registered function is ah.host.NAME");
  CHECK(ah_lua(h) != NULL && ah_host_of(ah_lua(h)) == h, "ah_lua and ah_host_of agree");
  CHECK(ah_close(h) == AH_OK, "closed");
}

static void test_borrowed_loop(void) {
  uv_loop_t loop;
  ah_config cfg;
  ah_host *h;
  uv_loop_init(&loop);
  ah_config_init(&cfg);
  cfg.loop = &loop;
  h = open_quiet(&cfg);
  if (!h) return;
  CHECK(ah_loop(h) == &loop, "ah_loop is the borrowed loop");
  counter = 0;
  ah_load_string(h,
                 "local ah = require 'agenthost'\n"
                 "ah.task.sleep(0.001)\n"
                 "ah.host.count()",
                 NULL);
  uv_run(&loop, UV_RUN_DEFAULT);
  CHECK(counter == 1, "the embedder's own uv_run drives the tasks");
  /* Tasks run by the embedder's own uv_run may not step or close the host. */
  memset(reentrant_rc, 0, sizeof reentrant_rc);
  ah_register(h, "reenter", c_reenter);
  ah_load_string(h, "require('agenthost').host.reenter()", "=reenter");
  uv_run(&loop, UV_RUN_DEFAULT);
  CHECK(reentrant_rc[0] == AH_EMISUSE && reentrant_rc[1] == AH_EMISUSE &&
            reentrant_rc[2] == AH_EMISUSE,
        "ah_step, ah_run and ah_close from a task the embedder's uv_run runs are misuse");
  CHECK(ah_close(h) == AH_OK, "closed");
  CHECK(uv_loop_close(&loop) == 0, "and left no handle on the borrowed loop");
}

static void test_run(void) {
  ah_host *h = open_quiet(NULL);
  if (!h) return;
  counter = 0;
  ah_load_string(h,
                 "local ah = require 'agenthost'\n"
                 "for i = 1, 10 do ah.task.spawn(function() ah.task.sleep(0.001 * i) ah.host.count() end) end",
                 NULL);
  CHECK(ah_run(h) == AH_OK && counter == 10, "ah_run runs until no task is live");
  CHECK(ah_step(h, 0) == AH_OK, "after which the host is idle");
  CHECK(ah_close(h) == AH_OK, "closed");
}

static int close_post_rc = 1;
static int c_post_now(lua_State *L) {
  close_post_rc = ah_post(ah_host_of(L), "c", "1");
  return 0;
}

static void test_close(void) {
  char path[64];
  ah_config cfg;
  ah_host *h;
  snprintf(path, sizeof path, "/tmp/ah_test_embed_%ld.db", (long)getpid());
  ah_config_init(&cfg);
  cfg.db_path = path;
  h = open_quiet(&cfg);
  if (!h) return;
  ah_register(h, "post_now", c_post_now);
  counter = 0;
  ah_load_string(h,
                 "local ah = require 'agenthost'\n"
                 "local db = ah.store.open()\n"
                 "db:exec('CREATE TABLE IF NOT EXISTS t(x)')\n"
                 "ah.host.count()\n"
                 "local guard <close> = setmetatable({}, {__close = function()\n"
                 "  db:post('INSERT INTO t VALUES (1)')\n"
                 "  ah.host.post_now()\n"
                 "  ah.host.count(10)\n"
                 "end})\n"
                 "ah.channel('never'):recv()",
                 "=waiter");
  while (counter == 0 && ah_step(h, 1000) == AH_AGAIN) uv_sleep(1);
  CHECK(counter == 1, "the waiter opened the host's database and waits");
  CHECK(ah_close(h) == AH_OK, "ah_close with a task waiting");
  CHECK(counter == 11, "its <close> handler ran on the cancellation");
  CHECK(close_post_rc == AH_ECLOSED, "ah_post during ah_close is AH_ECLOSED");

  /* The write posted during close was committed. */
  h = open_quiet(&cfg);
  if (!h) return;
  counter = 0;
  ah_load_string(h,
                 "local ah = require 'agenthost'\n"
                 "local db = ah.store.open()\n"
                 "ah.host.count(db:first('SELECT count(*) AS n FROM t').n)\n"
                 "db:close()",
                 NULL);
  ah_run(h);
  CHECK(counter == 1, "a write posted while closing was committed");
  ah_close(h);
  remove(path);
  snprintf(path + strlen(path), 8, "-wal");
  remove(path);
  path[strlen(path) - 4] = '\0';
  snprintf(path + strlen(path), 8, "-shm");
  remove(path);
}

/* A post still copying a large message when the host closes: ah_close
 * waits for it, and it returns AH_ECLOSED (or AH_OK if it got in first),
 * instead of touching freed memory. */
typedef struct big_post {
  ah_host *h;
  char *json;
  int rc;
} big_post;

static void post_big(void *arg) {
  big_post *b = arg;
  b->rc = ah_post(b->h, "big", b->json);
}

static void test_post_close_race(void) {
  size_t n = (size_t)32 << 20, i;
  big_post b;
  uv_thread_t th;
  int round;
  b.json = malloc(n + 3);
  if (!b.json) return;
  b.json[0] = '"';
  for (i = 1; i <= n; i++) b.json[i] = 'x';
  b.json[n + 1] = '"';
  b.json[n + 2] = '\0';
  for (round = 0; round < 3; round++) {
    b.h = open_quiet(NULL);
    if (!b.h) break;
    b.rc = 1;
    uv_thread_create(&th, post_big, &b);
    /* A step says AH_AGAIN once the post has taken its place (it is then
     * copying the message): close at that moment. */
    for (i = 0; i < 5000 && ah_step(b.h, 0) != AH_AGAIN; i++) uv_sleep(1);
    CHECK(ah_close(b.h) == AH_OK, "closed with a post in flight");
    uv_thread_join(&th);
    CHECK(b.rc == AH_OK || b.rc == AH_ECLOSED, "the racing post got AH_OK or AH_ECLOSED");
  }
  free(b.json);
}

/* Do hosts allocate with realloc/free (a sanitizer build, or make
 * valgrind's AGENTHOST_ALLOC=system)? */
static int on_system_alloc(void) {
#ifdef AH_ALLOC_SYSTEM
  return 1;
#else
  const char *env = getenv("AGENTHOST_ALLOC");
  return env && strcmp(env, "system") == 0;
#endif
}

/* Bytes the host's arena may hold resident (0 without an arena). */
static size_t arena_resident(ah_host *h) {
  void *ud;
  ah_arena_stats st;
  if (lua_getallocf(ah_lua(h), &ud) != ah__arena_alloc) return 0;
  ah__arena_stats(ud, &st);
  return st.resident;
}

/* 20,000 tasks at once, each making garbage, then nothing: within a few
 * seconds of idling (the scheduler's housekeeping) the pool gives back
 * its threads, the collector runs, and the arena returns the pages. */
static void test_burst_memory(void) {
  ah_host *h = open_quiet(NULL);
  size_t peak = 0, now = 0;
  long steps;
  int rc;
  if (!h) {
    CHECK(0, "a host opens");
    return;
  }
  rc = ah_load_string(h,
      "local task = require('agenthost').task\n"
      "local items = {}\n"
      "for i = 1, 20000 do items[i] = i end\n"
      "task.map(items, function(i)\n"
      "  local t = {}\n"
      "  for k = 1, 20 do t[k] = tostring(i) .. ':' .. k end\n"
      "  task.sleep(0.001)\n"
      "  return #t\n"
      "end)\n",
      "=burst");
  CHECK(rc == AH_OK, "the burst loads");
  for (steps = 0; steps < 100000 && ah_step(h, 1000) == AH_AGAIN; steps++) {
    now = arena_resident(h);
    if (now > peak) peak = now;
  }
  if (arena_resident(h) > peak) peak = arena_resident(h);
  if (on_system_alloc()) {
    CHECK(peak == 0, "hosts on realloc/free have no arena to measure");
  } else {
    CHECK(peak > (size_t)16 << 20, "the burst took memory from the arena");
    for (steps = 0; steps < 1000; steps++) { /* about 10 s at most */
      struct timespec tick = {0, 10000000};
      ah_step(h, 1000);
      if ((now = arena_resident(h)) < peak / 4) break;
      nanosleep(&tick, NULL);
    }
    CHECK(now < peak / 4, "once the burst is over its memory goes back to the system");
  }
  ah_close(h);
}

int main(void) {
  test_version();
  test_burst_memory();
  test_misuse();
  test_step_budget();
  test_instruction_budget();
  test_post_threads();
  test_post_full();
  test_post_close_race();
  test_callbacks();
  test_borrowed_loop();
  test_run();
  test_close();
  test_open_close();
  return ctest_done();
}
