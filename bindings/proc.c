/*
 * ah.proc's C part: subprocesses for tasks, without a shell.
 *
 *   run{cmd, args, stdin, env, inherit_env, cwd, timeout, max_output,
 *       truncate, kill_grace} -> {code, signal, stdout, stderr, truncated}
 *   spawn{cmd, args, env, inherit_env, cwd, stdin, stdout, stderr,
 *         max_line, max_stderr, kill_grace} -> a process object
 *
 * run suspends the calling task until the process has exited and both of
 * its outputs have ended.  Its cancellation, its timeout and an output past
 * max_output end the process (SIGTERM to its group, SIGKILL after
 * kill_grace) and resume the task at once; the host reaps the process in
 * the background.  A process object's calls (read_line, read, write, wait)
 * each suspend only their caller; cancelling one of them abandons that call
 * and leaves the process running.  The process ends with p:close(), when
 * the object is collected, or when the state closes (SIGKILL, reaped before
 * the close returns).
 *
 * Errors are structured: invalid_argument (bad options, a command that is
 * not found or not executable, a cwd that is not a directory), timeout,
 * too_large, cancelled, io.  Relies on host/proc.c and the scheduler.
 */
#include "bindings.h"

#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define DEFAULT_MAX_OUTPUT (16u << 20)
#define DEFAULT_MAX_STDERR (64u << 10)
#define STREAM_MARK (64u << 10)
#define DEFAULT_GRACE 2.0
#define NAME_MAX_SHOWN 120

static char PROCS_KEY;

static int procs_open(void **out, uv_loop_t *loop) {
  ah_procs *ps = NULL;
  int rc = ah__procs_open(&ps, loop);
  *out = ps;
  return rc;
}

static void procs_close(void *ps) { ah__procs_close(ps); }

/* The loop's process context (see ah__context).  It is finalised before the
 * scheduler, and after the process objects, which are created after it. */
static ah_procs *get_procs(lua_State *L) {
  return ah__context(L, &PROCS_KEY, procs_open, procs_close, "ah.proc: out of memory");
}

/* ---- options -------------------------------------------------------------- */

/* What a call parsed from its options table; the strings and arrays point
 * into values kept on the Lua stack until the spawn is done. */
typedef struct spec {
  const char *what;        /* "ah.proc.run" or "ah.proc.spawn" */
  ah_proc_opts o;
  char name[NAME_MAX_SHOWN + 8]; /* the command, for messages */
} spec;

static const char *check_string(lua_State *L, int idx, const char *what,
                                const char *field, size_t *lenp) {
  size_t len;
  const char *s;
  if (lua_type(L, idx) != LUA_TSTRING && lua_type(L, idx) != LUA_TNUMBER)
    ah__error_raise(L, "invalid_argument", 0, "%s: %s must be a string", what,
                    field);
  s = lua_tolstring(L, idx, &len);
  if (strlen(s) != len)
    ah__error_raise(L, "invalid_argument", 0, "%s: %s contains a NUL byte",
                    what, field);
  if (lenp) *lenp = len;
  return s;
}

static double opt_seconds(lua_State *L, const char *what, const char *k,
                          double def) {
  return ah__opt_number(L, 1, what, k, def, 0, 1e9);
}

static size_t opt_size(lua_State *L, const char *what, const char *k, size_t def) {
  return (size_t)ah__opt_integer(L, 1, what, k, (lua_Integer)def, 1, LUA_MAXINTEGER);
}
/* Reads env and inherit_env: the env table's entries become changes to the
 * host's environment (false removes a variable; inherit_env = false starts
 * from an empty one), which host/proc.c merges at spawn.  Pushes the array
 * of changes and a table anchoring their values (numbers converted to
 * strings); the names are anchored by the env table. */
static void collect_env(lua_State *L, spec *sp) {
  int env_idx, anchor, n = 0, cap = 0;
  ah_proc_env *v;
  lua_getfield(L, 1, "inherit_env");
  sp->o.clear_env = !(lua_isnil(L, -1) || lua_toboolean(L, -1));
  lua_pop(L, 1);
  lua_getfield(L, 1, "env");
  env_idx = lua_gettop(L);
  if (lua_isnil(L, env_idx)) return;
  if (!lua_istable(L, env_idx))
    ah__error_raise(L, "invalid_argument", 0,
                    "%s: env must be a table of NAME = value", sp->what);
  lua_pushnil(L);
  while (lua_next(L, env_idx)) {
    cap++;
    lua_pop(L, 1);
  }
  v = lua_newuserdatauv(L, (size_t)(cap ? cap : 1) * sizeof *v, 0);
  lua_newtable(L);
  anchor = lua_gettop(L);
  lua_pushnil(L);
  while (lua_next(L, env_idx)) {
    if (lua_type(L, -2) != LUA_TSTRING ||
        !ah__proc_env_name(lua_tostring(L, -2), lua_rawlen(L, -2)))
      ah__error_raise(L, "invalid_argument", 0,
                      "%s: env names must be non-empty strings without '=' "
                      "or NUL", sp->what);
    v[n].name = lua_tostring(L, -2);
    v[n].value = NULL;
    if (!(lua_type(L, -1) == LUA_TBOOLEAN && !lua_toboolean(L, -1))) {
      if (lua_type(L, -1) != LUA_TSTRING && lua_type(L, -1) != LUA_TNUMBER)
        ah__error_raise(L, "invalid_argument", 0,
                        "%s: env.%s must be a string (or false to remove it)",
                        sp->what, lua_tostring(L, -2));
      lua_pushvalue(L, -1); /* converting a number must not touch the table */
      v[n].value = check_string(L, -1, sp->what, "an env value", NULL);
      lua_rawseti(L, anchor, n + 1);
    }
    n++;
    lua_pop(L, 1);
  }
  sp->o.env = v;
  sp->o.nenv = (size_t)n;
}

/* Reads cmd, args, env, inherit_env and cwd from the table at 1; pushes
 * what must stay alive during the spawn. */
static void parse_command(lua_State *L, spec *sp) {
  const char *cmd;
  size_t len, nargs, i;
  char **argv;
  int args_idx;
  ah__arg_type(L, 1, LUA_TTABLE, sp->what, "the options");
  lua_getfield(L, 1, "cmd");
  if (lua_type(L, -1) != LUA_TSTRING || lua_rawlen(L, -1) == 0)
    ah__error_raise(L, "invalid_argument", 0,
                    "%s: cmd must be a non-empty string (the program; its "
                    "arguments go in args = {...})", sp->what);
  cmd = check_string(L, -1, sp->what, "cmd", &len);
  if (len > NAME_MAX_SHOWN)
    snprintf(sp->name, sizeof sp->name, "%.*s...", NAME_MAX_SHOWN, cmd);
  else
    snprintf(sp->name, sizeof sp->name, "%s", cmd);
  lua_getfield(L, 1, "args");
  args_idx = lua_gettop(L);
  if (!lua_isnil(L, args_idx) && !lua_istable(L, args_idx))
    ah__error_raise(L, "invalid_argument", 0,
                    "%s: args must be a list of strings (no shell is involved)",
                    sp->what);
  nargs = lua_isnil(L, args_idx) ? 0 : lua_rawlen(L, args_idx);
  argv = lua_newuserdatauv(L, (nargs + 2) * sizeof *argv, 0);
  argv[0] = (char *)cmd;
  for (i = 1; i <= nargs; i++) {
    char field[32];
    lua_rawgeti(L, args_idx, (lua_Integer)i);
    snprintf(field, sizeof field, "args[%u]", (unsigned)i);
    check_string(L, -1, sp->what, field, NULL);
    lua_tostring(L, -1); /* a number becomes a string in place */
    lua_rawseti(L, args_idx, (lua_Integer)i);
    lua_rawgeti(L, args_idx, (lua_Integer)i);
    argv[i] = (char *)lua_tostring(L, -1);
    lua_pop(L, 1); /* the args table keeps it */
  }
  argv[nargs + 1] = NULL;
  sp->o.file = cmd;
  sp->o.args = argv;
  lua_getfield(L, 1, "cwd");
  sp->o.cwd = lua_isnil(L, -1) ? NULL : check_string(L, -1, sp->what, "cwd", NULL);
  collect_env(L, sp);
}

/* Raises the error of a failed spawn. */
static int spawn_error(lua_State *L, const spec *sp, const char *failed, int rc) {
  if (failed && strcmp(failed, "cwd") == 0)
    return ah__error_raise(L, "invalid_argument", 0, "%s: cwd '%s': %s", sp->what,
                           sp->o.cwd, uv_strerror(rc));
  if (rc == UV_ENOENT)
    return ah__error_raise(L, "invalid_argument", 0,
                           strchr(sp->o.file, '/')
                               ? "%s: command '%s' not found (no such file)"
                               : "%s: command '%s' not found (not in PATH)",
                           sp->what, sp->name);
  if (rc == UV_EACCES || rc == UV_EISDIR || rc == UV_ENOTDIR)
    return ah__error_raise(L, "invalid_argument", 0,
                           "%s: command '%s' cannot be run: %s", sp->what,
                           sp->name, uv_strerror(rc));
  return ah__error_raise(L, "io", 1, "%s: cannot start '%s': %s", sp->what,
                         sp->name, uv_strerror(rc));
}

static void push_status(lua_State *L, const ah_proc *p) {
  lua_createtable(L, 0, 5);
  if (p->term_signal) {
    lua_pushinteger(L, p->term_signal);
    lua_setfield(L, -2, "signal");
  } else {
    lua_pushinteger(L, (lua_Integer)p->exit_status);
    lua_setfield(L, -2, "code");
  }
}

/* ---- run ------------------------------------------------------------------- */

/* One run; a userdata kept on the waiting task's stack.  p is released at
 * one place, finish(), or by __gc when the state goes first. */
typedef struct lrun {
  ah_proc *p;
  ah_task *t;
  ah_sched *S;
  double timeout;
  char name[NAME_MAX_SHOWN + 8];
} lrun;

static void finish(lrun *lr) {
  if (!lr->p) return;
  ah__task_timer_stop(lr->S, lr->t);
  ah__proc_release(lr->p);
  lr->p = NULL;
}

static int lrun_gc(lua_State *L) {
  lrun *lr = lua_touserdata(L, 1);
  if (lr->p) ah__proc_release(lr->p);
  lr->p = NULL;
  return 0;
}

/* Push functions for ah__task_wake_with: [lrun] -> a run's outcome.  They
 * run in protected mode, so a lack of memory fails only the waiting task. */
static int run_too_large_p(lua_State *L) {
  lrun *lr = lua_touserdata(L, 1);
  ah_proc *p = lr->p;
  ah__error_push(L, "too_large", 0,
                 "ah.proc.run: '%s' wrote more than max_output (%d bytes) "
                 "on %s; it was terminated (pass truncate = true to keep "
                 "the first max_output bytes instead)",
                 lr->name, (int)p->out.max, p->out.too_large ? "stdout" : "stderr");
  return 1;
}

static int run_read_error_p(lua_State *L) {
  lrun *lr = lua_touserdata(L, 1);
  ah_proc *p = lr->p;
  ah__error_push(L, "io", 0, "ah.proc.run: reading the output of '%s': %s",
                 lr->name, uv_strerror(p->out.err ? p->out.err : p->err.err));
  return 1;
}

static int run_result_p(lua_State *L) {
  lrun *lr = lua_touserdata(L, 1);
  ah_proc *p = lr->p;
  push_status(L, p);
  lua_pushlstring(L, p->out.buf.data ? p->out.buf.data : "", p->out.buf.len);
  lua_setfield(L, -2, "stdout");
  lua_pushlstring(L, p->err.buf.data ? p->err.buf.data : "", p->err.buf.len);
  lua_setfield(L, -2, "stderr");
  lua_pushboolean(L, p->out.truncated || p->err.truncated);
  lua_setfield(L, -2, "truncated");
  return 1;
}

static int run_timeout_p(lua_State *L) {
  lrun *lr = lua_touserdata(L, 1);
  char secs[32];
  snprintf(secs, sizeof secs, "%g", lr->timeout); /* pushfstring has no %g */
  ah__error_push(L, "timeout", 1,
                 "ah.proc.run: '%s' did not finish within %s s; it was "
                 "terminated", lr->name, secs);
  return 1;
}

/* Wakes the run's task with what push makes of it, then lets p go. */
static void run_end(lrun *lr, lua_CFunction push, int is_error) {
  ah_task *t = lr->t;
  ah_sched *S = lr->S;
  ah__task_wake_with(S, t, push, lr, is_error);
  finish(lr);
}

static void run_check(lrun *lr) {
  ah_proc *p = lr->p;
  if (p->out.too_large || p->err.too_large) {
    run_end(lr, run_too_large_p, 1);
    return;
  }
  if (!(p->exited && p->out.eof && p->err.eof)) return;
  if (p->out.err || p->err.err) {
    run_end(lr, run_read_error_p, 1);
    return;
  }
  run_end(lr, run_result_p, 0);
}

static void run_output(ah_proc *p, ah_proc_out *o) {
  (void)o;
  run_check(p->data);
}

static void run_exit(ah_proc *p) { run_check(p->data); }

static void run_cancel(ah_sched *S, ah_task *t) {
  (void)S;
  finish(ah__task_opdata(t));
}

static void run_timeout(ah_sched *S, ah_task *t) {
  (void)S;
  run_end(ah__task_opdata(t), run_timeout_p, 1);
}

static const ah_op run_op = {"process", run_cancel, run_timeout, NULL};

static const char *const stdio_words[] = {"pipe", "null", "inherit", NULL};

/* core.proc.run{...} */
static int p_run(lua_State *L) {
  ah_task *me = ah__task_require(L, "ah.proc.run");
  ah_sched *S = ah__sched_get(L);
  spec sp;
  lrun *lr;
  ah_proc *p;
  const char *in = NULL;
  size_t in_len = 0, max_output;
  double timeout, grace;
  int truncate, rc;

  memset(&sp, 0, sizeof sp);
  sp.what = "ah.proc.run";
  ah__arg_type(L, 1, LUA_TTABLE, sp.what, "the options");
  lua_settop(L, 1);
  lua_getfield(L, 1, "stdin"); /* 2 */
  if (!lua_isnil(L, 2)) in = check_string(L, 2, sp.what, "stdin", &in_len);
  timeout = opt_seconds(L, sp.what, "timeout", 0);
  grace = opt_seconds(L, sp.what, "kill_grace", DEFAULT_GRACE);
  max_output = opt_size(L, sp.what, "max_output", DEFAULT_MAX_OUTPUT);
  truncate = ah__opt_boolean(L, 1, sp.what, "truncate", 0);
  lr = lua_newuserdatauv(L, sizeof *lr, 0); /* 3 */
  memset(lr, 0, sizeof *lr);
  luaL_setmetatable(L, "agenthost.proc_run");
  parse_command(L, &sp);

  p = ah__proc_new(get_procs(L));
  if (!p) return ah__nomem(L, sp.what);
  lr->p = p;
  lr->t = me;
  lr->S = S;
  lr->timeout = timeout;
  memcpy(lr->name, sp.name, sizeof lr->name);
  sp.o.in = in ? AH_PROC_PIPE : AH_PROC_NULL;
  p->out.policy = p->err.policy = AH_OUT_COLLECT;
  p->out.max = p->err.max = max_output;
  p->out.truncate = p->err.truncate = truncate;
  p->grace_ms = (uint64_t)(grace * 1000 + 0.5);
  p->on_output = run_output;
  p->on_exit = run_exit;
  p->data = lr;
  if ((rc = ah__proc_spawn(p, &sp.o)) != 0) {
    const char *failed = p->failed;
    finish(lr);
    return spawn_error(L, &sp, failed, rc);
  }
  if (in) {
    if (in_len > 0 && ah__proc_write(p, in, in_len, NULL, NULL, NULL) != 0) {
      /* Only memory can fail here; the process is ended with the run. */
      finish(lr);
      return ah__nomem(L, sp.what);
    }
    ah__proc_close_stdin(p);
  }
  if (timeout > 0 && ah__task_timer(S, me, timeout) != 0) {
    finish(lr);
    return ah__nomem(L, sp.what);
  }
  lua_settop(L, 3); /* the run record stays on this stack while it waits */
  return ah__task_suspend(L, me, &run_op, lr);
}

/* ---- spawn: process objects -------------------------------------------------- */

/* A spawned process; a userdata.  p is released at one place, the __gc. */
typedef struct lproc {
  ah_proc *p;
  ah_sched *S;
  ah_task *reader;   /* waiting in read_line or read */
  ah_task *waiter;   /* waiting in wait */
  size_t scanned;    /* stdout bytes known to hold no newline */
  size_t max_line;
  int pid;
  char name[NAME_MAX_SHOWN + 8];
} lproc;

static lproc *check_proc(lua_State *L, const char *fn) {
  return ah__arg_udata(L, 1, "agenthost.proc", fn, "a process");
}

static void proc_output(ah_proc *p, ah_proc_out *o) {
  lproc *lp = p->data;
  ah_task *t = lp->reader;
  if (o != &p->out || !t) return;
  lp->reader = NULL;
  ah__task_wake(lp->S, t, 0, 0);
}

static void proc_exit(ah_proc *p) {
  lproc *lp = p->data;
  ah_task *t = lp->waiter;
  if (!t) return;
  lp->waiter = NULL;
  ah__task_wake(lp->S, t, 0, 0);
}

static void reader_cancel(ah_sched *S, ah_task *t) {
  lproc *lp = ah__task_opdata(t);
  (void)S;
  lp->reader = NULL;
}

static void waiter_cancel(ah_sched *S, ah_task *t) {
  lproc *lp = ah__task_opdata(t);
  (void)S;
  lp->waiter = NULL;
}

static int read_line_after(lua_State *L, ah_task *t, int nargs);
static int read_after(lua_State *L, ah_task *t, int nargs);
static int wait_after(lua_State *L, ah_task *t, int nargs);
static const ah_op read_line_op = {"process read_line", reader_cancel, NULL,
                                   read_line_after};
static const ah_op read_op = {"process read", reader_cancel, NULL, read_after};
static const ah_op wait_op = {"process wait", waiter_cancel, NULL, wait_after};

/* Suspends the caller until stdout has more data or ends. */
static int wait_for_output(lua_State *L, lproc *lp, const char *what,
                           const ah_op *op) {
  ah__task_require(L, what);
  if (!lp->reader) ah__proc_want(&lp->p->out);
  return ah__task_suspend_alone(L, what, "reading this process's stdout",
                                &lp->reader, 2, op, lp);
}

static int not_running(lua_State *L, const char *what) {
  return ah__error_raise(L, "invalid_argument", 0,
                         "%s: the process object has been released", what);
}

static int stdout_error(lua_State *L, lproc *lp, const char *what) {
  ah_proc_out *o = &lp->p->out;
  if (o->wiring != AH_PROC_PIPE)
    return ah__error_raise(L, "invalid_argument", 0,
                           "%s: stdout of '%s' is not a pipe (spawn it with "
                           "stdout = \"pipe\")", what, lp->name);
  return ah__error_raise(L, "io", 0, "%s: reading the stdout of '%s': %s", what,
                         lp->name, uv_strerror(o->err));
}

/* p:read_line() -> the next line without its "\n", or nil at the end.  A
 * last line without a newline is returned too. */
static int pr_read_line(lua_State *L) {
  lproc *lp = check_proc(L, "process:read_line");
  ah_proc_out *o;
  const char *nl;
  if (!lp->p) return not_running(L, "process:read_line");
  o = &lp->p->out;
  if (o->wiring != AH_PROC_PIPE || (o->eof && o->err && o->buf.len == 0))
    return stdout_error(L, lp, "process:read_line");
  nl = lp->scanned < o->buf.len
           ? memchr(o->buf.data + lp->scanned, '\n', o->buf.len - lp->scanned)
           : NULL;
  if (nl) {
    size_t n = (size_t)(nl - o->buf.data);
    lua_pushlstring(L, o->buf.data, n);
    ah__proc_consume(o, n + 1);
    lp->scanned = 0;
    return 1;
  }
  lp->scanned = o->buf.len;
  if (o->buf.len > lp->max_line)
    return ah__error_raise(L, "too_large", 0,
                           "process:read_line: '%s' wrote a line longer than "
                           "max_line (%d bytes)", lp->name, (int)lp->max_line);
  if (o->eof) {
    if (o->buf.len == 0) return 0;
    lua_pushlstring(L, o->buf.data, o->buf.len);
    ah__proc_consume(o, o->buf.len);
    lp->scanned = 0;
    return 1;
  }
  return wait_for_output(L, lp, "process:read_line", &read_line_op);
}

static int read_line_after(lua_State *L, ah_task *t, int nargs) {
  (void)t;
  lua_pop(L, nargs);
  return pr_read_line(L);
}

/* p:read([n]) -> up to n bytes (64 KiB by default) as soon as any are
 * there, or nil at the end. */
static int pr_read(lua_State *L) {
  lproc *lp = check_proc(L, "process:read");
  lua_Integer n = lua_isnoneornil(L, 2)
                      ? 65536
                      : ah__arg_integer(L, 2, "process:read", "n", 1, LUA_MAXINTEGER);
  ah_proc_out *o;
  size_t take;
  if (!lp->p) return not_running(L, "process:read");
  o = &lp->p->out;
  if (o->wiring != AH_PROC_PIPE) return stdout_error(L, lp, "process:read");
  if (o->buf.len > 0) {
    take = (size_t)n < o->buf.len ? (size_t)n : o->buf.len;
    lua_pushlstring(L, o->buf.data, take);
    ah__proc_consume(o, take);
    lp->scanned = 0;
    return 1;
  }
  if (o->eof) {
    if (o->err) return stdout_error(L, lp, "process:read");
    return 0;
  }
  return wait_for_output(L, lp, "process:read", &read_op);
}

static int read_after(lua_State *L, ah_task *t, int nargs) {
  (void)t;
  lua_pop(L, nargs);
  return pr_read(L);
}

typedef struct write_failure {
  const lproc *lp;
  int status;
} write_failure;

/* [write_failure] -> the error of a write the process did not take. */
static int write_error_p(lua_State *L) {
  const write_failure *f = lua_touserdata(L, 1);
  ah__error_push(L, "io", 0, "process:write: '%s' does not take input: %s",
                 f->lp->name,
                 f->status == UV_EPIPE || f->status == UV_ECANCELED
                     ? "its stdin is closed"
                     : uv_strerror(f->status));
  return 1;
}

static void write_done(ah_proc_write *w, int status) {
  ah_task *t = w->data;
  lproc *lp = w->p->data;
  if (status < 0) {
    write_failure f;
    f.lp = lp;
    f.status = status;
    ah__task_wake_with(lp->S, t, write_error_p, &f, 1);
    return;
  }
  ah__task_wake(lp->S, t, 0, 0);
}

static void write_cancel(ah_sched *S, ah_task *t) {
  (void)S;
  ah__proc_write_forget(ah__task_opdata(t)); /* the bytes still go out */
}

static const ah_op write_op = {"process write", write_cancel, NULL, NULL};

/* p:write(s): waits until s has been handed to the process's stdin. */
static int pr_write(lua_State *L) {
  lproc *lp = check_proc(L, "process:write");
  ah_task *me = ah__task_require(L, "process:write");
  size_t len;
  const char *s = ah__arg_string(L, 2, "process:write", "the data", &len);
  ah_proc_write *w;
  int rc;
  if (!lp->p) return not_running(L, "process:write");
  if (len == 0) return 0;
  rc = ah__proc_write(lp->p, s, len, write_done, me, &w);
  if (rc == UV_EPIPE)
    return ah__error_raise(L, "io", 0,
                           "process:write: the stdin of '%s' is closed", lp->name);
  if (rc != 0)
    return ah__error_raise(L, "io", 0, "process:write: '%s': %s", lp->name,
                           uv_strerror(rc));
  lua_settop(L, 1);
  return ah__task_suspend(L, me, &write_op, w);
}

static int pr_close_stdin(lua_State *L) {
  lproc *lp = check_proc(L, "process:close_stdin");
  if (lp->p) ah__proc_close_stdin(lp->p);
  return 0;
}

static void push_wait_result(lua_State *L, lproc *lp) {
  ah_proc_out *e = &lp->p->err;
  push_status(L, lp->p);
  if (e->policy == AH_OUT_TAIL && e->wiring == AH_PROC_PIPE) {
    lua_pushlstring(L, e->buf.data ? e->buf.data : "", e->buf.len);
    lua_setfield(L, -2, "stderr");
  }
}

/* p:wait() -> {code, signal, stderr} once the process has exited. */
static int pr_wait(lua_State *L) {
  lproc *lp = check_proc(L, "process:wait");
  if (!lp->p) return not_running(L, "process:wait");
  if (lp->p->exited) {
    push_wait_result(L, lp);
    return 1;
  }
  return ah__task_suspend_alone(L, "process:wait", "waiting for this process",
                                &lp->waiter, 1, &wait_op, lp);
}

static int wait_after(lua_State *L, ah_task *t, int nargs) {
  (void)t;
  lua_pop(L, nargs);
  return pr_wait(L);
}

static const struct {
  const char *name;
  int num;
} signals[] = {{"TERM", SIGTERM}, {"KILL", SIGKILL}, {"INT", SIGINT},
               {"HUP", SIGHUP},   {"QUIT", SIGQUIT}, {"USR1", SIGUSR1},
               {"USR2", SIGUSR2}, {"STOP", SIGSTOP}, {"CONT", SIGCONT},
               {"PIPE", SIGPIPE}, {"ALRM", SIGALRM}, {NULL, 0}};

/* p:kill([sig]) -> true, or false when the process has already exited.
 * sig is a name ("TERM", "SIGKILL", ...) or a number; TERM by default.
 * The signal goes to the process's whole group. */
static int pr_kill(lua_State *L) {
  lproc *lp = check_proc(L, "process:kill");
  int sig = SIGTERM, i, rc;
  if (lua_type(L, 2) == LUA_TNUMBER) {
    sig = (int)ah__arg_integer(L, 2, "process:kill", "the signal", 1, 64);
  } else if (!lua_isnoneornil(L, 2)) {
    const char *s = lua_type(L, 2) == LUA_TSTRING ? lua_tostring(L, 2) : "";
    if (strncmp(s, "SIG", 3) == 0) s += 3;
    for (i = 0; signals[i].name; i++)
      if (strcmp(s, signals[i].name) == 0) break;
    if (!signals[i].name)
      return ah__arg_error(L, "process:kill", "the signal",
                           "a name (TERM, KILL, INT, HUP, QUIT, USR1, USR2, "
                           "STOP, CONT, PIPE, ALRM) or a number");
    sig = signals[i].num;
  }
  if (!lp->p) return not_running(L, "process:kill");
  rc = ah__proc_kill(lp->p, sig);
  if (rc == UV_EINVAL)
    return ah__error_raise(L, "invalid_argument", 0,
                           "process:kill: invalid signal %d", sig);
  lua_pushboolean(L, rc == 0);
  return 1;
}

/* p:close(): closes stdin and ends the process (SIGTERM to its group, then
 * SIGKILL after kill_grace).  Does not wait: p:wait() does. */
static int pr_close(lua_State *L) {
  lproc *lp = check_proc(L, "process:close");
  if (!lp->p) return 0;
  ah__proc_close_stdin(lp->p);
  ah__proc_terminate(lp->p);
  return 0;
}

static int pr_gc(lua_State *L) {
  lproc *lp = lua_touserdata(L, 1);
  if (lp->p) ah__proc_release(lp->p);
  lp->p = NULL;
  return 0;
}

/* p:status() -> "running" or "exited" */
static int pr_status(lua_State *L) {
  lproc *lp = check_proc(L, "process:status");
  lua_pushstring(L, lp->p && !lp->p->exited ? "running" : "exited");
  return 1;
}

/* p:stderr() -> what the process wrote on stderr (the last max_stderr
 * bytes) so far */
static int pr_stderr(lua_State *L) {
  lproc *lp = check_proc(L, "process:stderr");
  ah_proc_out *e;
  if (!lp->p) return not_running(L, "process:stderr");
  e = &lp->p->err;
  lua_pushlstring(L, e->buf.data ? e->buf.data : "", e->buf.len);
  return 1;
}

/* p.pid, else the methods (the upvalue). */
static int pr_index(lua_State *L) {
  lproc *lp = check_proc(L, "process:__index");
  const char *k = lua_tostring(L, 2);
  if (k && strcmp(k, "pid") == 0) {
    lua_pushinteger(L, lp->pid);
    return 1;
  }
  lua_pushvalue(L, 2);
  lua_rawget(L, lua_upvalueindex(1));
  return 1;
}

static int pr_tostring(lua_State *L) {
  lproc *lp = check_proc(L, "process:__tostring");
  lua_pushfstring(L, "process %d (%s)", lp->pid, lp->name);
  return 1;
}

/* core.proc.spawn{...} -> process */
static int p_spawn(lua_State *L) {
  spec sp;
  lproc *lp;
  ah_proc *p;
  double grace;
  size_t max_line, max_stderr;
  int in, out, err, rc;

  memset(&sp, 0, sizeof sp);
  sp.what = "ah.proc.spawn";
  ah__arg_type(L, 1, LUA_TTABLE, sp.what, "the options");
  lua_settop(L, 1);
  in = ah__opt_word(L, 1, sp.what, "stdin", stdio_words, AH_PROC_PIPE);
  out = ah__opt_word(L, 1, sp.what, "stdout", stdio_words, AH_PROC_PIPE);
  err = ah__opt_word(L, 1, sp.what, "stderr", stdio_words, AH_PROC_PIPE);
  grace = opt_seconds(L, sp.what, "kill_grace", DEFAULT_GRACE);
  max_line = opt_size(L, sp.what, "max_line", DEFAULT_MAX_OUTPUT);
  max_stderr = opt_size(L, sp.what, "max_stderr", DEFAULT_MAX_STDERR);
  lp = lua_newuserdatauv(L, sizeof *lp, 0); /* 2 */
  memset(lp, 0, sizeof *lp);
  luaL_setmetatable(L, "agenthost.proc");
  parse_command(L, &sp);

  p = ah__proc_new(get_procs(L));
  if (!p) return ah__nomem(L, sp.what);
  lp->p = p;
  lp->S = ah__sched_get(L);
  lp->max_line = max_line;
  memcpy(lp->name, sp.name, sizeof lp->name);
  sp.o.in = in;
  p->out.wiring = out;
  p->err.wiring = err;
  p->out.policy = AH_OUT_STREAM;
  p->out.max = STREAM_MARK;
  p->err.policy = AH_OUT_TAIL;
  p->err.max = max_stderr;
  p->grace_ms = (uint64_t)(grace * 1000 + 0.5);
  p->on_output = proc_output;
  p->on_exit = proc_exit;
  p->data = lp;
  if ((rc = ah__proc_spawn(p, &sp.o)) != 0) return spawn_error(L, &sp, p->failed, rc);
  lp->pid = p->pid;
  lua_settop(L, 2);
  return 1;
}

/* core.proc.stats() -> {live, running}: records not yet freed, and
 * processes not yet reaped. */
static int p_stats(lua_State *L) {
  int live, running;
  ah_procs *ps = ah__context_peek(L, &PROCS_KEY);
  ah__procs_count(ps, &live, &running);
  lua_createtable(L, 0, 2);
  lua_pushinteger(L, live);
  lua_setfield(L, -2, "live");
  lua_pushinteger(L, running);
  lua_setfield(L, -2, "running");
  return 1;
}

int ah__open_proc(lua_State *L) {
  static const luaL_Reg fns[] = {{"run", p_run},
                                 {"spawn", p_spawn},
                                 {"stats", p_stats},
                                 {NULL, NULL}};
  static const luaL_Reg methods[] = {{"read_line", pr_read_line},
                                     {"read", pr_read},
                                     {"write", pr_write},
                                     {"close_stdin", pr_close_stdin},
                                     {"wait", pr_wait},
                                     {"kill", pr_kill},
                                     {"close", pr_close},
                                     {"status", pr_status},
                                     {"stderr", pr_stderr},
                                     {NULL, NULL}};
  static const luaL_Reg run_meta[] = {{"__gc", lrun_gc}, {NULL, NULL}};
  static const luaL_Reg proc_meta[] = {{"__close", pr_close},
                                       {"__gc", pr_gc},
                                       {"__tostring", pr_tostring},
                                       {NULL, NULL}};
  ah__metatable(L, "agenthost.proc_run", NULL, run_meta, NULL, NULL);
  ah__metatable(L, "agenthost.proc", methods, proc_meta, pr_index, NULL);
  lua_newtable(L);
  luaL_setfuncs(L, fns, 0);
  return 1;
}
