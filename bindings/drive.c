/*
 * Driving the loop.  One driver serves the three ways the loop is driven:
 *
 *   AH_DRIVE_MAIN  task.run: until its main task and every detached task
 *                  have finished
 *   AH_DRIVE_IDLE  ah_run: until no task is live
 *   AH_DRIVE_STEP  ah_step: ready tasks within a time budget, then one
 *                  turn of the loop that does not block
 *
 * and handles a deadlock the same way for all: when every task waits and
 * nothing can wake them (no live handle, nothing ready), every task is
 * cancelled so that its cleanup runs, and the driver reports UV_EAGAIN.
 * Also here: the counters of the scheduler and SIGINT/SIGTERM for
 * programs that own the process.
 *
 * Relies on the scheduler core (task.c) and host/loop.c.
 */
#include "sched.h"

#include <stdlib.h>
#include <string.h>

/* Has the drive of this mode reached its end? */
static int drive_finished(const ah_sched *S, int mode) {
  if (mode == AH_DRIVE_MAIN)
    return S->root->state >= T_DONE && S->detached == 0;
  return !ah__sched_busy(S);
}

int ah__sched_drive(ah_sched *S, lua_State *from, int mode, uint64_t budget_ns) {
  int stuck = 0;
  if (S->running || S->draining || S->closed) return UV_EBUSY;
  S->running = 1;
  S->from = from;
  if (mode == AH_DRIVE_STEP) {
    S->step_runs = 0;
    S->gc_slice = budget_ns / 4;
    S->deadline = uv_hrtime() + budget_ns;
    if (S->deadline < budget_ns) S->deadline = UINT64_MAX; /* no wrap-around */
    if (S->deadline == 0) S->deadline = 1;
    /* Ready work first, then one non-blocking turn of the loop: due
     * timers, I/O callbacks, and the drains around the poll (which stop at
     * the deadline too, leaving the rest for the next step). */
    ah__sched_drain(&S->loop);
    uv_run(S->loop.uv, UV_RUN_NOWAIT);
    S->deadline = 0;
  } else {
    S->until_idle = mode == AH_DRIVE_IDLE;
    while (!drive_finished(S, mode)) {
      int alive = uv_run(S->loop.uv, UV_RUN_ONCE);
      if (drive_finished(S, mode)) break;
      if (!alive && !ah__sched_has_work(S) && S->nreports == 0) {
        /* Nothing can wake the waiting tasks: cancel them all so their
         * cleanup runs; if even that leaves them waiting, give up. */
        if (stuck++) break;
        ah__sched_cancel_all(S, 0);
      }
    }
    S->until_idle = 0;
  }
  S->from = S->L;
  S->running = 0;
  return stuck ? UV_EAGAIN : 0;
}

/* ---- task.run --------------------------------------------------------------- */

/* Keeps the traceback of a failed main task for ah_traceback. */
static void drive_keep_traceback(ah_sched *S, ah_task *root) {
  free(S->last_tb);
  S->last_tb = NULL;
  if (lua_isstring(root->co, 2)) {
    size_t len;
    const char *tb = lua_tolstring(root->co, 2, &len);
    S->last_tb = malloc(len + 1);
    if (S->last_tb) memcpy(S->last_tb, tb, len + 1);
  }
}

/* task.run(fn, ...) -> fn's results; runs the loop until fn's task and every
 * detached task have finished. */
static int drive_run(lua_State *L) {
  ah_sched *S = sched_up(L);
  ah_task *root;
  int rc;
  if (ah__task_current(L))
    return ah__error_raise(L, "invalid_argument", 0,
                           "task.run cannot be called inside a task: use "
                           "task.spawn(fn):join() or call fn directly");
  if (S->running || S->draining)
    return ah__error_raise(L, "invalid_argument", 0,
                           "task.run is already running the loop");
  ah__arg_type(L, 1, LUA_TFUNCTION, "task.run", "fn");
  root = ah__task_new(L, S, 1, NULL, F_ROOT); /* stack: [handle] */
  S->root = root;
  rc = ah__sched_drive(S, L, AH_DRIVE_MAIN, 0);
  S->root = NULL;
  if (root->state == T_FAILED) ah__task_observe(root);
  ah__reports_unobserved(S);
  if (rc == UV_EAGAIN)
    return ah__error_raise(L, "deadlock", 0,
                           "task.run: every task is waiting and nothing can "
                           "wake them (an event never set, a queue never "
                           "filled, a join on a task that waits for its "
                           "joiner?)");
  if (root->state != T_DONE && root->state != T_FAILED)
    return ah__error_raise(L, "deadlock", 0,
                           "task.run: the main task did not finish");
  if (root->state == T_FAILED) drive_keep_traceback(S, root);
  lua_settop(L, 1);
  {
    int n = ah__task_outcome(L, root, 0);
    if (root->state == T_FAILED) return lua_error(L);
    return n;
  }
}

const luaL_Reg ah__drive_fns[] = {{"run", drive_run}, {NULL, NULL}};

/* ---- what embedders and the module ask of the scheduler ---------------------------- */

int ah__sched_inside(const ah_sched *S) { return S->running || S->draining; }

int ah__sched_busy(const ah_sched *S) {
  if (ah__sched_has_work(S) || S->nreports > 0) return 2;
  return S->live > 0;
}

size_t ah__sched_live(const ah_sched *S) { return S->live; }

void ah__sched_budget(ah_sched *S, int instructions) {
  S->hook_count = instructions > 0 ? instructions : 0;
}

/* Clears the cancelled mark of t and its children, so that a task that
 * caught its cancellation and waits again can be cancelled again. */
static void drive_uncancel(ah_task *t) {
  ah_scope *x;
  ah_link *l;
  for (x = t->cur; x; x = x->up) {
    x->cancelled = 0;
    for (l = x->children.next; l != &x->children; l = l->next)
      drive_uncancel(container_of(l, ah_task, sibling));
  }
}

void ah__sched_cancel_all(ah_sched *S, int again) {
  ah_link *l, *next;
  for (l = S->orphans.next; l != &S->orphans; l = next) {
    ah_task *t = container_of(l, ah_task, sibling);
    next = l->next;
    if (again) drive_uncancel(t);
    ah__task_cancel(S, t);
  }
}

const char *ah__last_traceback(lua_State *L) {
  ah_sched *S = ah__sched_get(L);
  return S ? S->last_tb : NULL;
}

/* ---- housekeeping ------------------------------------------------------------------- */

/* Every AH_HOUSEKEEPING_MS while the pool holds threads: the high-water
 * mark of live tasks moves on to a new period, and the pool gives up the
 * threads beyond the mark of the last two periods.  When that is the end
 * of a burst (many threads given up at once), the collector runs a full
 * cycle right away, rather than when allocation next reaches its
 * threshold (set by the burst: it may be never), and the arena returns
 * the freed slabs, so the memory of the burst goes back to the system.
 * The timer is weak: it never keeps the loop alive. */
#define AH_HOUSEKEEPING_MS 2000
#define AH_BURST_THREADS 1024

void ah__sched_housekeeping_arm(ah_sched *S) {
  if (S->closed || ah__timers_armed(&S->housekeeping)) return;
  ah__timers_start(&S->loop.timers, &S->housekeeping, AH_HOUSEKEEPING_MS);
}

void ah__sched_housekeeping(ah_sched *S) {
  size_t cap, keep;
  int before = S->npool;
  void *ud;
  S->hwm_prev = S->hwm;
  S->hwm = S->live;
  cap = (S->hwm > S->hwm_prev ? S->hwm : S->hwm_prev) + AH_POOL_SLACK;
  keep = cap > S->live ? cap - S->live : 0;
  if ((size_t)S->npool > keep) {
    ah__task_pool_trim(S, (int)keep);
    if (before - S->npool >= AH_BURST_THREADS && lua_gc(S->L, LUA_GCISRUNNING)) {
      /* Twice: the first runs the finalizers of the burst's handles, the
       * second frees what they kept. */
      lua_gc(S->L, LUA_GCCOLLECT);
      lua_gc(S->L, LUA_GCCOLLECT);
      if (lua_getallocf(S->L, &ud) == ah__arena_alloc) ah__arena_trim(ud);
    }
  }
  if (S->npool > 0) ah__sched_housekeeping_arm(S);
}

/* ---- the collector in idle time ------------------------------------------------------ */

/*
 * Lua's collector is paced by allocation: a cycle starts when the heap
 * has doubled since the last one ended (pause 200) and then advances with
 * every allocation, so its work falls where allocation is, in the bursts
 * of work that a loop of many agents runs when a thousand timers are due
 * at once, and the heap reaches twice what is live.  The loop knows
 * better when work is due.  After a spell of activity that left the heap
 * AH_IDLE_GC_GROWTH percent over what the last cycle left (and at least a
 * megabyte over), a weak timer (it keeps nothing alive) fires once no task
 * has run for AH_IDLE_GC_QUIET_MS, and a cycle starts in idle time (a
 * spell that left less arms nothing, so I/O that wakes the loop every few
 * milliseconds costs no extra wake-up): the drains that find nothing ready run the
 * collector in slices of at most AH_IDLE_GC_SLICE_NS, each ending before
 * the next timer is due and, in ah_step, within a quarter of the step's
 * budget and before its end, until the cycle is done; the loop polls for
 * I/O between slices, and tasks that run put the slices off until the loop
 * is quiet again.  A loop that serves I/O without pause is never quiet
 * that long: the collector stays paced by allocation there, and runs no
 * more often; an idle loop, or one that steps in a tight loop, pays
 * nothing.  After a cycle that idle time ran, allocation starts the next
 * one only at AH_IDLE_GC_PAUSE percent of what that cycle left rather than
 * at Lua's pause, since idle time is expected to run it before: a burst
 * that comes first, all of it new and live memory (a step of a hundred
 * thousand agents that each start a child), is then spared a cycle that
 * would find little to free.  A cycle that allocation ends puts Lua's
 * pause back.
 *
 * The end of a cycle is noticed by a sentinel: an unreachable userdata
 * with a finalizer, run at the end of each cycle (or each collection of
 * the generational mode), which makes the next one.  A collector that Lua
 * code stopped (collectgarbage "stop") is left alone.
 */
#define AH_IDLE_GC_GROWTH 25
#define AH_IDLE_GC_QUIET_MS 4
#define AH_IDLE_GC_SLICE_NS 1000000u
#define AH_IDLE_GC_PAUSE 300

static char SENTINEL_MT;

/* Makes a sentinel (may raise: memory). */
static int sentinel_new(lua_State *L) {
  ah_sched *S = lua_touserdata(L, lua_upvalueindex(1));
  lua_newuserdatauv(L, 1, 0);
  lua_rawgetp(L, LUA_REGISTRYINDEX, &SENTINEL_MT);
  lua_setmetatable(L, -2);
  S->gc_sentinel = 1;
  return 0;
}

static int sentinel_gc(lua_State *L) {
  ah_sched *S = lua_touserdata(L, lua_upvalueindex(1));
  S->gc_ended = 1;
  S->gc_sentinel = 0;
  return sentinel_new(L); /* when this fails, idle time makes one */
}

/* [S]: makes a sentinel. */
static int sentinel_make_p(lua_State *L) {
  lua_pushcclosure(L, sentinel_new, 1);
  lua_call(L, 0, 0);
  return 0;
}

void ah__sched_gc_init(lua_State *L, ah_sched *S) {
  lua_createtable(L, 0, 1);
  lua_pushlightuserdata(L, S);
  lua_pushcclosure(L, sentinel_gc, 1);
  lua_setfield(L, -2, "__gc");
  lua_rawsetp(L, LUA_REGISTRYINDEX, &SENTINEL_MT);
  lua_pushlightuserdata(L, S);
  sentinel_make_p(L);
  S->gc_base = (size_t)lua_gc(L, LUA_GCCOUNT);
}

/* What a cycle left is read as soon as the task that ended it waits (a
 * finalizer cannot ask the collector), so that little of what that task
 * allocated after the cycle counts as left. */
void ah__sched_gc_ended(ah_sched *S) {
  if (!S->gc_active && S->gc_pause) {
    /* Allocation ended it: Lua's own pause again (unless Lua code changed
     * it meanwhile). */
    int was = lua_gc(S->L, LUA_GCSETPAUSE, S->gc_pause);
    if (was != AH_IDLE_GC_PAUSE) lua_gc(S->L, LUA_GCSETPAUSE, was);
    S->gc_pause = 0;
  }
  S->gc_ended = 0;
  S->gc_active = 0;
  S->gc_base = (size_t)lua_gc(S->L, LUA_GCCOUNT);
}

/* Arms the quiet wait: the timer fires AH_IDLE_GC_QUIET_MS after the last
 * drain that ran a task. */
static void gc_wait_quiet(ah_sched *S, uint64_t ms) {
  ah__timers_start(&S->loop.timers, &S->gc_timer, S->gc_busy + AH_IDLE_GC_QUIET_MS - ms);
}

/* Whether the heap has grown enough since the last cycle for idle time to
 * run one (what a cycle that ended meanwhile left is read first). */
static int gc_grown(ah_sched *S) {
  size_t kb;
  if (S->gc_ended) ah__sched_gc_ended(S);
  kb = (size_t)lua_gc(S->L, LUA_GCCOUNT);
  return kb >= S->gc_base + S->gc_base / 100 * AH_IDLE_GC_GROWTH + 1024;
}

/* A drain ran tasks.  Outside an idle-time cycle the quiet wait is armed
 * only once the heap has grown enough for one, so that a loop that I/O
 * wakes every few milliseconds (a streamed reply) is not woken once more
 * after each event for a collection that would not start. */
void ah__sched_gc_busy(ah_sched *S) {
  S->gc_busy = uv_now(S->loop.uv);
  if (ah__timers_armed(&S->gc_timer)) return;
  if (!S->gc_active && !gc_grown(S)) return;
  gc_wait_quiet(S, S->gc_busy);
}

/* The loop has been quiet since the timer was armed, or tasks ran
 * meanwhile (then it waits again): a cycle starts in idle time when the
 * heap has grown enough.  The heap is looked at only by drains that ran
 * tasks (one read of Lua's count) and here, so that a loop that is idle,
 * or steps in a tight loop with nothing to run, pays nothing for it. */
void ah__sched_gc_timer(ah_sched *S) {
  lua_State *L = S->L;
  uint64_t ms = uv_now(S->loop.uv);
  if (S->closed || S->gc_active) return;
  if (ms < S->gc_busy + AH_IDLE_GC_QUIET_MS) {
    gc_wait_quiet(S, ms);
    return;
  }
  if (!gc_grown(S)) return;
  if (!lua_gc(L, LUA_GCISRUNNING)) return;
  if (!S->gc_sentinel) ah__protect(L, sentinel_make_p, S, 0);
  S->gc_active = 1;
  if (!S->gc_pause) { /* the pause this cycle will set, when idle time ends it */
    int pause = lua_gc(L, LUA_GCSETPAUSE, AH_IDLE_GC_PAUSE);
    if (pause < AH_IDLE_GC_PAUSE) S->gc_pause = pause;
    else lua_gc(L, LUA_GCSETPAUSE, pause); /* Lua code chose more: keep it */
  }
  ah__loop_pending(&S->loop, 1); /* the drains after this timer collect */
}

int ah__sched_idle(ah_sched *S) {
  lua_State *L = S->L;
  int64_t next;
  uint64_t now, end, ms;
  if (!S->gc_active || S->closed) return 0;
  ms = uv_now(S->loop.uv);
  if (ms < S->gc_busy + AH_IDLE_GC_QUIET_MS) { /* busy again: wait */
    gc_wait_quiet(S, ms);
    return 0;
  }
  next = ah__timers_next(&S->loop.timers);
  if (next == 0) return 1; /* a timer is due: its task first */
  now = uv_hrtime();
  end = now + AH_IDLE_GC_SLICE_NS;
  if (next > 0 && end > now + (uint64_t)next * 1000000u)
    end = now + (uint64_t)next * 1000000u;
  if (S->deadline) { /* a step: a quarter of its budget at most */
    if (end > now + S->gc_slice) end = now + S->gc_slice;
    if (end > S->deadline) end = S->deadline;
  }
  do {
    if (lua_gc(L, LUA_GCSTEP, 0) || S->gc_ended) { /* the cycle is done */
      ah__sched_gc_ended(S);
      return 0;
    }
  } while (uv_hrtime() < end);
  return 1;
}

/* ---- signals, for programs that own the process ------------------------------------ */

static void drive_on_signal(ah_evloop *lp, int signum) {
  ah_sched *S = lp->data;
  if (S->signal) _Exit(128 + signum); /* a second signal: leave now */
  S->signal = signum;
  /* Cancel every task that is not detached; detached work drains. */
  if (S->root) ah__task_cancel(S, S->root);
}

/* SIGHUP in a program that owns the process: reload watchers that asked
 * for it (--watch) rescan; with none, it is logged and ignored rather than
 * ending the process. */
static void drive_on_hup(ah_loop_hup *h) {
  ah_sched *S = container_of(h, ah_sched, hup);
  if (S->loop.hups == h && h->next == NULL)
    ah__log(S->L, 2, "SIGHUP ignored: nothing reloads on it (run with --watch "
                     "to reload changed modules on SIGHUP)");
}

int ah__sched_signals(lua_State *L) {
  ah_sched *S = ah__sched_get(L);
  int rc = ah__loop_signals(&S->loop, drive_on_signal);
  if (rc == 0 && !S->hup.fn) {
    S->hup.fn = drive_on_hup;
    rc = ah__loop_hup_add(&S->loop, &S->hup);
    if (rc) S->hup.fn = NULL;
  }
  return rc;
}

int ah__sched_signal_seen(lua_State *L) { return ah__sched_get(L)->signal; }
