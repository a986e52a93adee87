/*
 * The scheduler's own header, shared by the files that make ah.task and
 * by nothing else (other bindings use bindings.h):
 *
 *   task.c    the core: task records, creating, suspending and waking,
 *             running (the one lua_resume), completion, cancellation,
 *             task handles, the module table
 *   errors.c  structured errors, and uncaught errors reported to the
 *             error handler through the report queue
 *   group.c   gather, race and timeout
 *   sync.c    event, semaphore and queue
 *   drive.c   driving the loop: task.run, ah_step and ah_run as one
 *             driver with a mode, and signals
 *
 * Relies on host/ (the loop, timers) and Lua 5.4.
 */
#ifndef AH_SCHED_H
#define AH_SCHED_H

#include "bindings.h"

/* ---- intrusive lists ------------------------------------------------------ */

typedef struct ah_link {
  struct ah_link *next, *prev;
} ah_link;

static inline void link_init(ah_link *l) { l->next = l->prev = l; }
static inline int link_empty(const ah_link *l) { return l->next == l; }
static inline void link_remove(ah_link *l) {
  l->prev->next = l->next;
  l->next->prev = l->prev;
  l->next = l->prev = l;
}
static inline void link_append(ah_link *head, ah_link *l) {
  l->prev = head->prev;
  l->next = head;
  head->prev->next = l;
  head->prev = l;
}

/* ---- records ---------------------------------------------------------------- */

enum {
  T_NEW,       /* queued for its first run */
  T_READY,     /* woken, queued to resume */
  T_RUNNING,
  T_SUSPENDED, /* waiting on t->op */
  T_CHILDREN,  /* body finished, waiting for its children */
  T_DONE,
  T_FAILED
};

enum {
  F_DETACHED = 1,   /* owned by the host; drained before exit */
  F_ROOT = 2,       /* the main task of task.run */
  F_NEXT = 4,       /* started by a running task, it runs ahead of the queue */
  F_GC = 8,         /* its handle has the finalizer that reports an error
                       nobody took (every task Lua code may hold) */
  F_OBSERVED = 16,  /* its error was handed to somebody */
  F_WAKE_ERR = 32,  /* the value for the next resume is an error */
  F_BODY_ERR = 64,  /* the body failed (the task may still wait for children) */
  F_INTERNAL = 128  /* no Lua code holds its handle: its thread is reused */
};

typedef struct ah_group ah_group;

/* A scope: the tasks started by one body.  Every task has one, its body;
 * a function that task.gather or task.race runs in the calling task
 * itself (group.c) gets its own, in the group record, for as long as it
 * runs.  The tasks started in a scope are its children: they are
 * cancelled when it is cancelled or its function fails, and waited for
 * before it counts as finished, so that a function run in the caller
 * owns its tasks exactly as a task of its own would.  The scopes a task
 * is in form a chain from its innermost (ah_task.cur) out to its body. */
typedef struct ah_scope {
  ah_link children;     /* the tasks started in it (their `sibling`) */
  struct ah_scope *up;  /* the scope it was opened in; NULL for a body */
  unsigned char pending;   /* a cancel waits for the next await point in it */
  unsigned char cancelled; /* it was cancelled (once) */
  unsigned short depth;    /* scopes up to the body (0 for a body) */
} ah_scope;

/* Owned by Lua (it is the handle userdata); anchored by `ref` until it
 * completes (released in complete(), its one release point).
 * 144 bytes on 64-bit platforms. */
struct ah_task {
  ah_link link;        /* ready queue, a wait list, or the unobserved list */
  ah_link sibling;     /* in its scope's list of children */
  ah_scope body;       /* the tasks its body started */
  ah_scope *cur;       /* the innermost scope it runs in (&body, or a
                          combinator's function running in it) */
  ah_scope *parent;    /* the scope it was started in; NULL when detached,
                          a main task, or completed */
  ah_timer timer;      /* sleep, or the deadline of a timed wait */
  lua_State *co;       /* the coroutine; the handle's user value keeps it */
  ah_group *group;     /* the combinator this task reports to, if any */
  const ah_op *op;     /* pending operation while suspended */
  void *opdata;
  ah_link waiters;     /* tasks waiting in join/result */
  int ref;
  unsigned short nargs;
  unsigned char state, flags;
};

/* The task that runs in scope sc. */
static inline ah_task *scope_owner_body(ah_scope *sc) {
  return container_of(sc, ah_task, body);
}

/* Owned by Lua: a userdata kept in the registry under the scheduler key,
 * finalised (loop closed) when the state closes. */
struct ah_sched {
  ah_evloop loop;
  lua_State *L;      /* the main thread */
  lua_State *from;   /* the thread driving the loop */
  ah_link ready;
  ah_link unobserved; /* failed tasks nobody has taken the error of yet */
  ah_link orphans;   /* tasks without a parent: main and detached tasks */
  ah_link drainers;  /* tasks waiting in task.drain */
  ah_link yielded;   /* tasks that yielded: they run in the next pass */
  ah_link next;      /* tasks the running task started: they run next */
  int next_ok;       /* tasks started now go to `next` */
  size_t live, detached, sleeping;
  unsigned long long spawned, resumes;
  ah_task *root;     /* the main task of task.run, while it drives */
  int running;       /* inside a drive (task.run, a step, ah_run) */
  int until_idle;    /* AH_DRIVE_IDLE: stop the loop once nothing is live */
  uint64_t deadline; /* AH_DRIVE_STEP: hrtime after which drain stops */
  unsigned long long step_runs; /* resumes in the current step */
  int hook_count;    /* instruction budget per resume, 0 for none */
  int draining;
  int on_error;      /* registry ref of the error handler, or LUA_NOREF;
                        released when replaced (task.on_error) */
  int reports;       /* registry ref of the table of reports to deliver */
  int nreports;
  int pool;          /* registry ref of the array of reusable threads */
  int npool;
  int poolcap;       /* slots of the pool's array part known to exist */
  size_t hwm, hwm_prev; /* most tasks live at once in this housekeeping
                           period and the one before */
  ah_timer housekeeping; /* weak: every AH_HOUSEKEEPING_MS while the pool
                            holds threads (drive.c) */
  size_t gc_base;    /* KB in use after the collector's last cycle */
  int gc_ended;      /* a cycle ended since gc_base was read */
  int gc_active;     /* idle time is spent on a cycle */
  int gc_sentinel;   /* the collector's sentinel exists (drive.c) */
  int gc_pause;      /* Lua's pause while idle time sets AH_IDLE_GC_PAUSE, or 0 */
  uint64_t gc_slice; /* AH_DRIVE_STEP: ns of collecting a step may spend */
  uint64_t gc_busy;  /* loop time (ms) of the last drain that ran a task */
  ah_timer gc_timer; /* weak: when the loop has been quiet long enough */
  int signal;        /* last SIGINT/SIGTERM seen (ah_handle_signals) */
  ah_loop_hup hup;   /* ah_handle_signals' SIGHUP listener, while added */
  int closed;
  char *last_tb;     /* traceback of the last failed main task; owned,
                        freed when replaced and when the scheduler closes */
  ah_defer *deferred; /* to run at the end of this drain pass */
};

/* The state-machine checks of sanitizer builds (-DAH_CHECKS), in the
 * manner of Lua's api_check: a broken contract aborts with its place. */
#ifdef AH_CHECKS
#include <stdio.h>
#include <stdlib.h>
#define ah_check(cond, what)                                                  \
  ((cond) ? (void)0                                                           \
          : (fprintf(stderr, "agenthost: %s:%d: scheduler check failed: %s\n", \
                     __FILE__, __LINE__, what),                               \
             abort()))
#else
#define ah_check(cond, what) ((void)0)
#endif

/* The scheduler of a function of ah.task: its first upvalue. */
static inline ah_sched *sched_up(lua_State *L) {
  return (ah_sched *)lua_touserdata(L, lua_upvalueindex(1));
}

/* ---- task.c ----------------------------------------------------------------- */

/* Creates a task running the function at stack position fidx with the
 * values above it as arguments (moved to the new thread); leaves its handle
 * on the top of the stack. */
ah_task *ah__task_new(lua_State *L, ah_sched *S, int fidx, ah_task *parent,
                      int flags);
/* Cancels t and its children, once (see task.c). */
void ah__task_cancel(ah_sched *S, ah_task *t);
/* Cancels scope sc of t, the scopes opened inside it and the tasks started
 * in them, each once; t gets the cancellation at its next await point in
 * its innermost scope (see task.c). */
void ah__scope_cancel(ah_sched *S, ah_task *t, ah_scope *sc);
/* Cancels the tasks started in sc (each once). */
void ah__scope_cancel_children(ah_sched *S, ah_scope *sc);
/* Moves the tasks started in sc to the scope `to` (sc is going away). */
void ah__scope_move(ah_scope *sc, ah_scope *to);
/* Pushes on L the outcome of a completed task: its values, or its error
 * (pcall_shape: a boolean first).  Returns how many values it pushed. */
int ah__task_outcome(lua_State *L, ah_task *t, int pcall_shape);
/* Sets the traceback at tbidx (a string) as field `traceback` of the
 * structured error at erridx, when it has none. */
void ah__error_keep_traceback(lua_State *L, int erridx, int tbidx);
/* Marks the error of a failed t as taken: it will not be reported. */
void ah__task_observe(ah_task *t);
/* Returns the thread of a finished internal task (its handle at idx) to
 * the pool. */
void ah__task_recycle(ah_sched *S, ah_task *t, lua_State *L, int idx);
/* Lets the pool keep at most `keep` threads. */
void ah__task_pool_trim(ah_sched *S, int keep);
/* The cancel hook of every operation that waits on a list: unlinks t. */
void ah__task_unwait(ah_sched *S, ah_task *t);
/* Suspends the running task (a misuse error naming `what` outside a task)
 * at the end of the wait list `list`, keeping the first `keep` values of
 * L's stack; op->cancel must be ah__task_unwait.  Use as a return value. */
int ah__task_wait(lua_State *L, const char *what, ah_link *list, int keep,
                  const ah_op *op, void *opdata);
/* Threads the pool may hold beyond the high-water mark of live tasks. */
#define AH_POOL_SLACK 64
/* Runs ready tasks (the loop's drain hook). */
void ah__sched_drain(ah_evloop *lp);
/* Is any task ready, or waiting to run again after a yield? */
int ah__sched_has_work(const ah_sched *S);

/* ---- errors.c --------------------------------------------------------------- */

/* Makes the error metatable; called once when the scheduler is created. */
void ah__errors_init(lua_State *L);
/* Queues a report of t's error for the error handler, unless somebody has
 * taken it or it is a cancellation. */
void ah__report_task(ah_sched *S, ah_task *t);
/* Hands every queued report to the error handler. */
void ah__reports_deliver(ah_sched *S);
/* Reports every failure nobody has taken, now. */
void ah__reports_unobserved(ah_sched *S);
extern const luaL_Reg ah__errors_fns[]; /* task.on_error */

/* ---- group.c ---------------------------------------------------------------- */

/* A child of a group completed (called by completion). */
void ah__group_child_done(ah_sched *S, ah_task *child);
/* The last task started in the inline scope sc of a group completed. */
void ah__group_scope_empty(ah_sched *S, ah_scope *sc);
extern const luaL_Reg ah__group_fns[]; /* task.gather, race, timeout */

/* ---- sync.c ----------------------------------------------------------------- */

/* Makes the metatables of events, semaphores and queues. */
void ah__sync_init(lua_State *L);
extern const luaL_Reg ah__sync_fns[]; /* task.event, semaphore, queue */

/* ---- drive.c ---------------------------------------------------------------- */

extern const luaL_Reg ah__drive_fns[]; /* task.run */
/* Arms the housekeeping timer, unless it is armed. */
void ah__sched_housekeeping_arm(ah_sched *S);
/* The housekeeping timer fired. */
void ah__sched_housekeeping(ah_sched *S);
/* Nothing is ready: while a cycle runs in idle time, collects a slice
 * (drive.c).  Returns whether it has more to do, so that the loop should
 * not block. */
int ah__sched_idle(ah_sched *S);
/* The timer of the collector's quiet wait fired (drive.c). */
void ah__sched_gc_timer(ah_sched *S);
/* A drain ran tasks: the quiet wait starts again (drive.c). */
void ah__sched_gc_busy(ah_sched *S);
/* Notes the end of a collection cycle (drive.c). */
void ah__sched_gc_ended(ah_sched *S);
/* Makes the collector's sentinel (drive.c), once per scheduler. */
void ah__sched_gc_init(lua_State *L, ah_sched *S);

#endif
