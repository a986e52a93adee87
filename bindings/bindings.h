/*
 * Internal interface between the binding files: the scheduler's task
 * records, the one way to suspend a task and the one way to wake it, and
 * structured errors.  Every binding that waits for something does:
 *
 *   ah_task *t = ah__task_require(L, "ah.http.request");  -- raises outside a task
 *   ...validate arguments, start the operation...
 *   return ah__task_suspend(L, t, &my_op, data);
 *
 * and its completion (on the loop thread) pushes the results on
 * ah__task_thread(t) and calls ah__task_wake.  Only the scheduler calls
 * lua_resume.
 */
#ifndef AH_BINDINGS_H
#define AH_BINDINGS_H

#include <lua.h>
#include <lauxlib.h>

#include "../host/host.h"

typedef struct ah_sched ah_sched;
typedef struct ah_task ah_task;

/*
 * A pending operation.  cancel abandons it without waking the task (stop
 * the timer, unlink from a wait list, abort the transfer); timeout is called
 * when the task's own timer fires while it waits on the operation; after
 * runs in the task once it is resumed, with the nargs values the completion
 * pushed on top of the stack, and returns how many results the suspended
 * call returns (default: all nargs).
 */
typedef struct ah_op {
  const char *name;
  void (*cancel)(ah_sched *S, ah_task *t);
  void (*timeout)(ah_sched *S, ah_task *t);
  int (*after)(lua_State *L, ah_task *t, int nargs);
} ah_op;

ah_sched *ah__sched_get(lua_State *L);
uv_loop_t *ah__sched_uv(ah_sched *S);
ah_evloop *ah__sched_loop(ah_sched *S);

/* The task whose coroutine L is, or NULL. */
ah_task *ah__task_current(lua_State *L);
/* The current task, or raises a misuse error naming `what`. */
ah_task *ah__task_require(lua_State *L, const char *what);
lua_State *ah__task_thread(ah_task *t);
void *ah__task_opdata(ah_task *t);
/* Arms t's timer (used with an op's timeout hook). */
int ah__task_timer(ah_sched *S, ah_task *t, double seconds);
void ah__task_timer_stop(ah_sched *S, ah_task *t);

/* Deferred work: fn runs once at the end of the scheduler's current pass
 * over the ready tasks, so that everything the tasks of one pass did can
 * be handed on at once (a store's writes go to its writer together).  When
 * no pass is running, fn runs at once.  fn must not run Lua code. */
typedef struct ah_defer {
  struct ah_defer *next;
  void (*fn)(struct ah_defer *d);
  int queued;
} ah_defer;
void ah__sched_defer(ah_sched *S, ah_defer *d);
void ah__sched_undefer(ah_sched *S, ah_defer *d);

/* Starts a detached task running the function below the nargs values on
 * the top of L (all are popped).  For completions that run Lua code.
 * Never raises: returns LUA_OK, or LUA_ERRMEM when it is out of memory
 * (and no task was started). */
int ah__task_detach(lua_State *L, int nargs);
/* Calls fn(L) with ud as its light userdata argument in protected mode,
 * leaving its nres results; for C code outside any task, which must not
 * raise.  Returns the status; on failure nothing is left on L. */
int ah__protect(lua_State *L, lua_CFunction fn, void *ud, int nres);
/* Wakes t (as ah__task_wake) with the values push(L) returns, made in
 * protected mode on the main thread for a completion; when that runs out
 * of memory, t is woken with a `resource` error instead. */
void ah__task_wake_with(ah_sched *S, ah_task *t, lua_CFunction push, void *ud,
                        int is_error);
/* Pushes the shared `resource` error "out of memory" (no allocation). */
void ah__push_oom(lua_State *L);

/* Suspends t (which must be running in L) on op.  Use as a return value. */
int ah__task_suspend(lua_State *L, ah_task *t, const ah_op *op, void *opdata);
/* Suspends the running task on op as the only one waiting in *slot, which
 * it takes (the op clears it), keeping the first `keep` values of L's
 * stack.  Another task in the slot already is an invalid_argument error
 * "<what>: another task is already <busy>".  Use as a return value. */
int ah__task_suspend_alone(lua_State *L, const char *what, const char *busy,
                           ah_task **slot, int keep, const ah_op *op,
                           void *opdata);
/* Makes a suspended t ready.  nargs values are already on its thread; when
 * is_error is set there is one value and it is raised at the await point. */
void ah__task_wake(ah_sched *S, ah_task *t, int nargs, int is_error);

/* Structured errors: a table {kind, message, retryable} with a metatable
 * whose __tostring gives "kind: message". */
void ah__error_push(lua_State *L, const char *kind, int retryable,
                    const char *fmt, ...);
int ah__error_raise(lua_State *L, const char *kind, int retryable,
                    const char *fmt, ...);
/* Is the value at idx a structured error (of this kind, when kind != NULL)? */
int ah__error_is(lua_State *L, int idx, const char *kind);
void ah__error_open(lua_State *L); /* pushes the ah.error table */

/* A per-state context of a host area (the HTTP multi, the process table):
 * made by open on first use, kept in a registry userdata under key, and
 * closed by close when that userdata is finalised.  Made after the
 * scheduler, it is finalised before it.  ah__context raises `what` when
 * open fails; ah__context_peek returns NULL when none was made. */
typedef int (*ah_context_open)(void **out, uv_loop_t *loop);
void *ah__context(lua_State *L, const void *key, ah_context_open open,
                  void (*close)(void *p), const char *what);
void *ah__context_peek(lua_State *L, const void *key);

/* Makes the metatable `name` once: `meta` are its metamethods (__gc,
 * __close, __tostring, ...).  `methods`, when given, are reached through
 * __index: a table of them, or, when `index` is given, the closure of
 * index with that table as its upvalue (for objects with fields besides
 * their methods).  When key is not NULL the metatable is also kept in the
 * registry under key, for lua_rawgetp.  Leaves nothing on the stack. */
void ah__metatable(lua_State *L, const char *name, const luaL_Reg *methods,
                   const luaL_Reg *meta, lua_CFunction index, const void *key);

/* ---- reading arguments (args.c) --------------------------------------------
 * Every public entry point reads its arguments with these, so a wrong one
 * raises one shape: invalid_argument, "fn: name must be what", with the
 * position of the user's code.  They do not return on error.  Option
 * readers read field k of the table at idx (idx may be absent or nil: no
 * options) and return def when it is absent or nil.  Ranges are inclusive;
 * numbers must be Lua numbers, integers integral ones. */
int ah__arg_error(lua_State *L, const char *fn, const char *name,
                  const char *what);
/* Raises a `resource` error "fn: out of memory". */
int ah__nomem(lua_State *L, const char *fn);
double ah__arg_number(lua_State *L, int arg, const char *fn, const char *name,
                      double lo, double hi);
lua_Integer ah__arg_integer(lua_State *L, int arg, const char *fn,
                            const char *name, lua_Integer lo, lua_Integer hi);
const char *ah__arg_string(lua_State *L, int arg, const char *fn,
                           const char *name, size_t *len);
void ah__arg_type(lua_State *L, int arg, int type, const char *fn,
                  const char *name);
/* The userdata of metatable tname at arg; `what` names it in the message
 * ("a task", "a store"). */
void *ah__arg_udata(lua_State *L, int arg, const char *tname, const char *fn,
                    const char *what);
/* Checks that arg is a table of options, nil or absent. */
void ah__arg_options(lua_State *L, int arg, const char *fn);
double ah__opt_number(lua_State *L, int idx, const char *fn, const char *k,
                      double def, double lo, double hi);
/* A number > 0 (timeouts, sizes). */
double ah__opt_positive(lua_State *L, int idx, const char *fn, const char *k,
                        double def);
lua_Integer ah__opt_integer(lua_State *L, int idx, const char *fn,
                            const char *k, lua_Integer def, lua_Integer lo,
                            lua_Integer hi);
int ah__opt_boolean(lua_State *L, int idx, const char *fn, const char *k,
                    int def);
/* One of the words (NULL-terminated); returns its index. */
int ah__arg_word(lua_State *L, int arg, const char *fn, const char *name,
                 const char *const words[]);
int ah__opt_word(lua_State *L, int idx, const char *fn, const char *k,
                 const char *const words[], int def);
/* The length of the list entry on the top of the stack ({sql, params...}
 * of a batch): its n field, else its border, both read raw (no metamethod
 * can make two passes over it disagree); -1 outside 0..max. */
int ah__arg_entry_len(lua_State *L, int max);

/* Module parts; each pushes its table. */
int ah__open_task(lua_State *L);
int ah__open_reload(lua_State *L);
int ah__open_http(lua_State *L);
int ah__open_store(lua_State *L);
int ah__open_proc(lua_State *L);
int ah__open_pg(lua_State *L);
int ah__open_json(lua_State *L);

/* The database ah.store.open() opens when given no path (NULL: none). */
void ah__store_default_path(lua_State *L, const char *path);
/* Logs msg at level (0 debug .. 3 error) where ah.log goes.  Runs no Lua
 * code, so completions may call it. */
void ah__log(lua_State *L, int level, const char *msg);
/* Where ah.log goes: fn(ud, level, msg); NULL restores stderr. */
void ah__log_sink(lua_State *L, void (*fn)(void *ud, int level, const char *msg),
                  void *ud);
/* Makes the scheduler, when it is created, borrow loop instead of owning
 * one.  Call before the agenthost module is first required. */
void ah__sched_borrow(lua_State *L, uv_loop_t *loop);

/* The built-in Lua library (scripts.c).  ah__scripts_install adds its
 * searcher to package.searchers, after the Lua path searcher (once per
 * state), and honours AGENTHOST_SOURCE; ah__scripts_load pushes the chunk
 * of the built-in module name (LUA_ERRFILE when there is none). */
void ah__scripts_install(lua_State *L);
int ah__scripts_load(lua_State *L, const char *name);

/* Driving the loop (drive.c).  AH_DRIVE_STEP runs ready tasks until
 * budget_ns have passed (at least one task when any is ready) and turns the
 * loop once without blocking; AH_DRIVE_IDLE runs the loop until no task is
 * live; AH_DRIVE_MAIN is task.run's.  Returns 0, UV_EBUSY when the loop is
 * already being driven, or UV_EAGAIN when every task waited and nothing
 * could wake them (they were cancelled, so their cleanup ran).  from is
 * the thread driving the loop (the main thread for C callers). */
enum { AH_DRIVE_MAIN, AH_DRIVE_IDLE, AH_DRIVE_STEP };
int ah__sched_drive(ah_sched *S, lua_State *from, int mode, uint64_t budget_ns);
/* 2 when tasks are ready to run now, 1 when tasks are live but waiting,
 * 0 when no task is live. */
int ah__sched_busy(const ah_sched *S);
/* Is the scheduler running tasks now (a step, a run, or a drain from a
 * loop the embedder runs itself)?  Then it must not be stepped or closed. */
int ah__sched_inside(const ah_sched *S);
size_t ah__sched_live(const ah_sched *S);
/* A task that runs this many VM instructions without waiting is made to
 * yield (0: no budget). */
void ah__sched_budget(ah_sched *S, int instructions);
/* Cancels every top-level task and so every task; again: also the ones
 * cancelled before that caught it and wait again. */
void ah__sched_cancel_all(ah_sched *S, int again);


/* For the CLI: run the main task to completion, with signals handled. */
int ah__sched_signals(lua_State *L);
int ah__sched_signal_seen(lua_State *L);
/* Reports the error at erridx (and its traceback, NULL for none) the way
 * uncaught task errors are: it is queued, and the scheduler hands it to
 * the error handler outside every task and callback.  For completions
 * whose failure nobody waits for. */
void ah__report(lua_State *L, int erridx, const char *traceback);
/* The traceback recorded for the last failure of task.run's main task. */
const char *ah__last_traceback(lua_State *L);

#endif
