/*
 * game_loop: a fixed-rate frame loop that owns its main loop and drives
 * agenthost with ah_step, as a game engine would.
 *
 *   game_loop [--npcs N] [--frames F] [--hz H] [--budget-us B]
 *             [--llm URL] [--llm-every K] [--warmup W] [--no-sleep]
 *
 * N NPCs (1000) live in a C world; each is a Lua task that looks at its
 * position through a host function, decides where to go, moves through
 * another, and thinks again a moment later.  Every K-th NPC (10) also asks
 * a language model before it moves: with --llm URL that is a chat
 * completion from the OpenAI-compatible server at URL (the project's mock
 * model, build/tests/mockllm, started with --first-byte-ms to pace it like
 * a model; or a real local server); without it, a 150..350 ms sleep.  Each frame runs the world, then
 * ah_step with a budget of B us (2000), then sleeps until the next frame
 * at H Hz (60) unless --no-sleep.  At the end it prints the percentiles of
 * the time ah_step took and of the whole frame's work, over the frames
 * after the first W (60), as one line of key=value pairs.
 *
 * Built from the installed files only: cc $(pkg-config --cflags agenthost)
 * game_loop.c $(pkg-config --libs agenthost).
 */
#define _POSIX_C_SOURCE 200809L
#include <agenthost.h>
#include <uv.h>

#include <lauxlib.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

/* The world: plain C data the NPCs see and change only through the host
 * functions below. */
typedef struct npc {
  int x, y;
  long moves, thoughts;
} npc;

static npc *npcs;
static int n_npcs = 1000;
static const char *llm_url = "";
static int llm_every = 10;
static long llm_errors;

static npc *npc_arg(lua_State *L) {
  lua_Integer id = luaL_checkinteger(L, 1);
  luaL_argcheck(L, id >= 1 && id <= n_npcs, 1, "no such NPC");
  return &npcs[id - 1];
}

/* ah.host.params() -> npcs, llm_url ("" for none), llm_every */
static int h_params(lua_State *L) {
  lua_pushinteger(L, n_npcs);
  lua_pushstring(L, llm_url);
  lua_pushinteger(L, llm_every);
  return 3;
}

/* ah.host.npc_pos(id) -> x, y */
static int h_npc_pos(lua_State *L) {
  npc *n = npc_arg(L);
  lua_pushinteger(L, n->x);
  lua_pushinteger(L, n->y);
  return 2;
}

/* ah.host.npc_move(id, dx, dy): one step in the world, clamped to it */
static int h_npc_move(lua_State *L) {
  npc *n = npc_arg(L);
  int dx = (int)luaL_checkinteger(L, 2), dy = (int)luaL_checkinteger(L, 3);
  n->x += dx < -1 ? -1 : dx > 1 ? 1 : dx;
  n->y += dy < -1 ? -1 : dy > 1 ? 1 : dy;
  if (n->x < 0) n->x = 0;
  if (n->y < 0) n->y = 0;
  if (n->x > 999) n->x = 999;
  if (n->y > 999) n->y = 999;
  n->moves++;
  return 0;
}

/* ah.host.npc_thought(id, ok): a model call finished */
static int h_npc_thought(lua_State *L) {
  npc *n = npc_arg(L);
  n->thoughts++;
  if (!lua_toboolean(L, 2)) llm_errors++;
  return 0;
}

static const char *brain =
    "local ah = require 'agenthost'\n"
    "local task, host = ah.task, ah.host\n"
    "local n, llm, every = host.params()\n"
    "local model = llm ~= '' and ah.llm.provider { kind = 'openai', base_url = llm .. '/v1',\n"
    "  model = 'mock-1', api_key = 'mock', max_concurrency = 64, timeout = 10 }\n"
    "local function think(id)\n"
    "  local ms = 150 + (id * 37) % 200\n"
    "  if not model then task.sleep(ms / 1000) return true end\n"
    "  local ok, res = pcall(model.chat, model, {\n"
    "    messages = { { role = 'user', content = 'NPC ' .. id .. ' wonders where to go next.' } },\n"
    "    max_tokens = 32 })\n"
    "  return ok and res.text ~= nil\n"
    "end\n"
    "local function npc(id)\n"
    "  local goal_x, goal_y = math.random(0, 999), math.random(0, 999)\n"
    "  while true do\n"
    "    local x, y = host.npc_pos(id)\n"
    "    if x == goal_x and y == goal_y then\n"
    "      goal_x, goal_y = math.random(0, 999), math.random(0, 999)\n"
    "    end\n"
    "    if id % every == 0 then host.npc_thought(id, think(id)) end\n"
    "    local dx = goal_x > x and 1 or goal_x < x and -1 or 0\n"
    "    local dy = goal_y > y and 1 or goal_y < y and -1 or 0\n"
    "    host.npc_move(id, dx, dy)\n"
    "    task.sleep(0.25 + math.random() * 0.5)\n"
    "  end\n"
    "end\n"
    "for id = 1, n do task.spawn(npc, id) end\n";

static void on_error(void *ud, const char *msg, const char *tb) {
  (void)ud;
  fprintf(stderr, "game_loop: NPC error: %s\n%s\n", msg, tb);
}

static int cmp_u64(const void *a, const void *b) {
  uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
  return x < y ? -1 : x > y;
}

static double pct_us(const uint64_t *sorted, long n, double p) {
  long i = (long)(p / 100.0 * (double)(n - 1) + 0.5);
  return n > 0 ? (double)sorted[i] / 1000.0 : 0;
}

static void sleep_until(uint64_t t_ns) {
  uint64_t now = uv_hrtime();
  struct timespec ts;
  if (t_ns <= now) return;
  ts.tv_sec = (time_t)((t_ns - now) / 1000000000u);
  ts.tv_nsec = (long)((t_ns - now) % 1000000000u);
  nanosleep(&ts, NULL);
}

int main(int argc, char **argv) {
  long frames = 600, warmup = 60, f, i, n, missed = 0, moves = 0, thoughts = 0;
  int hz = 60, budget_us = 2000, no_sleep = 0, rc;
  uint64_t *step_ns, *work_ns, frame_ns, next;
  ah_config cfg;
  ah_host *h;

  for (i = 1; i < argc; i++) {
    const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
    if (!strcmp(a, "--no-sleep")) no_sleep = 1;
    else if (v && !strcmp(a, "--npcs")) n_npcs = atoi(argv[++i]);
    else if (v && !strcmp(a, "--frames")) frames = atol(argv[++i]);
    else if (v && !strcmp(a, "--hz")) hz = atoi(argv[++i]);
    else if (v && !strcmp(a, "--budget-us")) budget_us = atoi(argv[++i]);
    else if (v && !strcmp(a, "--llm")) llm_url = argv[++i];
    else if (v && !strcmp(a, "--llm-every")) llm_every = atoi(argv[++i]);
    else if (v && !strcmp(a, "--warmup")) warmup = atol(argv[++i]);
    else {
      fprintf(stderr, "usage: %s [--npcs N] [--frames F] [--hz H] [--budget-us B] "
                      "[--llm URL] [--llm-every K] [--warmup W] [--no-sleep]\n", argv[0]);
      return 2;
    }
  }
  if (n_npcs < 1 || frames < 1 || hz < 1 || budget_us < 0 || llm_every < 1 ||
      warmup < 0 || warmup >= frames) {
    fprintf(stderr, "%s: bad arguments\n", argv[0]);
    return 2;
  }
  npcs = calloc((size_t)n_npcs, sizeof *npcs);
  step_ns = calloc((size_t)frames, sizeof *step_ns);
  work_ns = calloc((size_t)frames, sizeof *work_ns);
  if (!npcs || !step_ns || !work_ns) return 1;
  for (i = 0; i < n_npcs; i++) {
    npcs[i].x = (int)(i * 7919 % 1000);
    npcs[i].y = (int)(i * 104729 % 1000);
  }

  ah_config_init(&cfg);
  cfg.on_error = on_error;
  cfg.instruction_budget = 100000; /* no NPC holds a frame */
  if ((rc = ah_open(&cfg, &h)) != AH_OK) {
    fprintf(stderr, "game_loop: ah_open: %s\n", ah_strerror(rc));
    return 1;
  }
  ah_register(h, "params", h_params);
  ah_register(h, "npc_pos", h_npc_pos);
  ah_register(h, "npc_move", h_npc_move);
  ah_register(h, "npc_thought", h_npc_thought);
  if ((rc = ah_load_string(h, brain, "=npc_brain")) != AH_OK) {
    fprintf(stderr, "game_loop: %s\n", ah_errmsg(h));
    return 1;
  }

  frame_ns = 1000000000u / (uint64_t)hz;
  next = uv_hrtime();
  for (f = 0; f < frames; f++) {
    uint64_t t0 = uv_hrtime(), t1, t2;
    /* The game's own work for the frame: here, a pass over the world. */
    long sum = 0;
    for (i = 0; i < n_npcs; i++) sum += npcs[i].x + npcs[i].y;
    (void)sum;
    t1 = uv_hrtime();
    rc = ah_step(h, budget_us);
    t2 = uv_hrtime();
    if (rc < 0) {
      fprintf(stderr, "game_loop: ah_step: %s: %s\n", ah_strerror(rc), ah_errmsg(h));
      return 1;
    }
    step_ns[f] = t2 - t1;
    work_ns[f] = t2 - t0;
    next += frame_ns;
    if (!no_sleep) {
      if (uv_hrtime() > next) {
        missed++;
        next = uv_hrtime();
      }
      sleep_until(next);
    }
  }

  for (i = 0; i < n_npcs; i++) {
    moves += npcs[i].moves;
    thoughts += npcs[i].thoughts;
  }
  n = frames - warmup;
  qsort(step_ns + warmup, (size_t)n, sizeof *step_ns, cmp_u64);
  qsort(work_ns + warmup, (size_t)n, sizeof *work_ns, cmp_u64);
  printf("game_loop npcs=%d frames=%ld measured=%ld hz=%d budget_us=%d llm=%s "
         "step_p50_us=%.1f step_p90_us=%.1f step_p99_us=%.1f step_max_us=%.1f "
         "frame_work_p50_us=%.1f frame_work_p99_us=%.1f missed_frames=%ld "
         "moves=%ld llm_calls=%ld llm_errors=%ld\n",
         n_npcs, frames, n, hz, budget_us, *llm_url ? "http" : "sleep",
         pct_us(step_ns + warmup, n, 50), pct_us(step_ns + warmup, n, 90),
         pct_us(step_ns + warmup, n, 99), pct_us(step_ns + warmup, n, 100),
         pct_us(work_ns + warmup, n, 50), pct_us(work_ns + warmup, n, 99), missed,
         moves, thoughts, llm_errors);
  ah_close(h); /* cancels the NPCs, which never finish by themselves */
  free(npcs);
  free(step_ns);
  free(work_ns);
  return 0;
}
