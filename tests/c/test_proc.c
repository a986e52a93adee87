/*
 * Subprocesses of host/proc.c on a plain uv loop: collecting output and the
 * exit status, writing stdin, a failed spawn, the environment a child
 * gets (inherited, changed, cleared, refused), the collect cap, streaming
 * with a pause mark, releasing a running process (terminated, reaped,
 * freed), and closing the context with processes still running (killed and
 * reaped at once).  No assertion depends on how long anything took.
 */
#include "../../host/host.h"
#include "ctest.h"

#include <errno.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/types.h>

static int exits, outputs;

static void on_exit_cb(ah_proc *p) {
  (void)p;
  exits++;
}

static void on_output(ah_proc *p, ah_proc_out *o) {
  (void)p;
  (void)o;
  outputs++;
}

static void opts_init(ah_proc_opts *o, char **args, int in) {
  memset(o, 0, sizeof *o);
  o->file = args[0];
  o->args = args;
  o->in = in;
}

/* Spawns o with both outputs kept by policy up to max; *rc is the spawn's
 * result (after a failure the record is still the caller's to release). */
static ah_proc *spawn_with(ah_procs *ps, const ah_proc_opts *o, int policy,
                           size_t max, int *rc) {
  ah_proc *p = ah__proc_new(ps);
  p->out.policy = p->err.policy = policy;
  p->out.max = p->err.max = max;
  p->on_exit = on_exit_cb;
  p->on_output = on_output;
  *rc = ah__proc_spawn(p, o);
  return p;
}

static ah_proc *start(ah_procs *ps, char **args, int in, int policy, size_t max) {
  ah_proc_opts o;
  ah_proc *p;
  int rc;
  opts_init(&o, args, in);
  p = spawn_with(ps, &o, policy, max, &rc);
  return rc == 0 ? p : NULL;
}

static int finished(const ah_proc *p) {
  return p->exited && p->out.eof && p->err.eof;
}

/* Runs the loop until cond(p) holds (a bounded number of iterations). */
static int run_until(uv_loop_t *loop, int (*cond)(const ah_proc *), const ah_proc *p) {
  int i;
  for (i = 0; i < 100000 && !cond(p); i++) uv_run(loop, UV_RUN_ONCE);
  return cond(p);
}

static int live_count(const ah_procs *ps) {
  int live, running;
  ah__procs_count(ps, &live, &running);
  return live;
}

static int running_count(const ah_procs *ps) {
  int live, running;
  ah__procs_count(ps, &live, &running);
  return running;
}

static void test_collect(uv_loop_t *loop, ah_procs *ps) {
  char *args[] = {"sh", "-c", "cat; echo err >&2; exit 5", NULL};
  ah_proc *p = start(ps, args, AH_PROC_PIPE, AH_OUT_COLLECT, 1 << 20);
  CHECK(p != NULL, "spawn sh");
  CHECK(p->pid > 0, "it has a pid");
  CHECK(ah__proc_write(p, "hello", 5, NULL, NULL, NULL) == 0, "write stdin");
  ah__proc_close_stdin(p);
  CHECK(ah__proc_write(p, "late", 4, NULL, NULL, NULL) == UV_EPIPE,
        "a write after close_stdin is refused");
  exits = 0;
  CHECK(run_until(loop, finished, p), "the process exits and its outputs end");
  CHECK(exits == 1, "on_exit ran once");
  CHECK(p->exit_status == 5 && p->term_signal == 0, "exit status 5");
  CHECK(p->out.buf.len == 5 && memcmp(p->out.buf.data, "hello", 5) == 0,
        "stdout holds what went to stdin");
  CHECK(p->err.buf.len == 4 && memcmp(p->err.buf.data, "err\n", 4) == 0,
        "stderr collected apart");
  ah__proc_release(p);
  uv_run(loop, UV_RUN_NOWAIT);
  CHECK(live_count(ps) == 0, "released and closed: freed");
}

static void test_spawn_fails(uv_loop_t *loop, ah_procs *ps) {
  char *args[] = {"no-such-program-ah", NULL};
  ah_proc_opts o;
  ah_proc *p = ah__proc_new(ps);
  int rc;
  opts_init(&o, args, AH_PROC_NULL);
  exits = 0;
  rc = ah__proc_spawn(p, &o);
  CHECK(rc == UV_ENOENT, "a missing program is UV_ENOENT");
  CHECK(p->failed && strcmp(p->failed, "command") == 0, "failed names the command");
  o.file = "sh";
  o.cwd = "/no/such/dir";
  ah__proc_release(p);
  p = ah__proc_new(ps);
  rc = ah__proc_spawn(p, &o);
  CHECK(rc == UV_ENOENT && strcmp(p->failed, "cwd") == 0, "a missing cwd is reported as such");
  ah__proc_release(p);
  uv_run(loop, UV_RUN_NOWAIT);
  CHECK(exits == 0, "a failed spawn never calls back");
}

/* Runs sh printing three variables with the environment changes given;
 * returns the process, finished unless the spawn failed with *rc. */
static ah_proc *run_env(uv_loop_t *loop, ah_procs *ps, const ah_proc_env *env,
                        size_t nenv, int clear_env, int *rc) {
  char *args[] = {"/bin/sh", "-c",
                  "printf '%s|%s|%s' \"${AH_T_SET-unset}\" \"${AH_T_GONE-unset}\" "
                  "\"${AH_T_KEEP-unset}\"",
                  NULL};
  ah_proc_opts o;
  ah_proc *p;
  opts_init(&o, args, AH_PROC_NULL);
  o.env = env;
  o.nenv = nenv;
  o.clear_env = clear_env;
  p = spawn_with(ps, &o, AH_OUT_COLLECT, 4096, rc);
  if (*rc == 0) run_until(loop, finished, p);
  return p;
}

static int out_is(const ah_proc *p, const char *s) {
  return p->out.buf.len == strlen(s) && memcmp(p->out.buf.data, s, p->out.buf.len) == 0;
}

static void test_env(uv_loop_t *loop, ah_procs *ps) {
  static const ah_proc_env changes[] = {{"AH_T_SET", "x=1"}, {"AH_T_GONE", NULL}};
  static const ah_proc_env bad[] = {{"AH_T_SET", "1"}, {"A=B", "1"}};
  ah_proc *p;
  int rc;
  setenv("AH_T_GONE", "gone", 1);
  setenv("AH_T_KEEP", "keep", 1);
  p = run_env(loop, ps, NULL, 0, 0, &rc);
  CHECK(rc == 0 && out_is(p, "unset|gone|keep"), "no changes: the host's environment");
  ah__proc_release(p);
  p = run_env(loop, ps, changes, 2, 0, &rc);
  CHECK(rc == 0 && out_is(p, "x=1|unset|keep"),
        "a variable set and one removed over the host's environment");
  ah__proc_release(p);
  p = run_env(loop, ps, changes, 2, 1, &rc);
  CHECK(rc == 0 && out_is(p, "x=1|unset|unset"), "clear_env: only the variables set");
  ah__proc_release(p);
  exits = 0;
  p = run_env(loop, ps, bad, 2, 0, &rc);
  CHECK(rc == UV_EINVAL && p->failed && strcmp(p->failed, "env") == 0,
        "a name with '=' fails the spawn, naming env");
  ah__proc_release(p);
  uv_run(loop, UV_RUN_NOWAIT);
  CHECK(exits == 0, "a spawn failed on its environment never calls back");
  CHECK(ah__proc_env_name("PATH", 4) && !ah__proc_env_name("", 0) &&
            !ah__proc_env_name("A=B", 3) && !ah__proc_env_name("A\0B", 3),
        "names: not empty, no '=', no NUL");
  unsetenv("AH_T_GONE");
  unsetenv("AH_T_KEEP");
}

static void test_cap(uv_loop_t *loop, ah_procs *ps) {
  char *args[] = {"sh", "-c", "head -c 200000 /dev/zero", NULL};
  ah_proc *p = start(ps, args, AH_PROC_NULL, AH_OUT_COLLECT, 1000);
  CHECK(run_until(loop, finished, p) || p->out.too_large, "output past the cap stops reading");
  CHECK(p->out.too_large && p->out.buf.len == 1000, "too_large, and the first 1000 bytes kept");
  ah__proc_release(p);
  while (live_count(ps) > 0) uv_run(loop, UV_RUN_ONCE);
  CHECK(running_count(ps) == 0, "the process is reaped after release");
}

static int has_data(const ah_proc *p) { return p->out.buf.len > 0 || p->out.eof; }

static void test_stream(uv_loop_t *loop, ah_procs *ps) {
  char *args[] = {"sh", "-c", "head -c 1000000 /dev/zero", NULL};
  ah_proc *p = start(ps, args, AH_PROC_NULL, AH_OUT_STREAM, 4096);
  size_t total = 0, most = 0;
  while (!p->out.eof || p->out.buf.len > 0) {
    run_until(loop, has_data, p);
    if (p->out.buf.len > most) most = p->out.buf.len;
    total += p->out.buf.len;
    ah__proc_consume(&p->out, p->out.buf.len);
  }
  CHECK(total == 1000000, "every byte streamed");
  CHECK(most < 4096 + 65536, "never more than the pause mark and one read held");
  CHECK(run_until(loop, finished, p) && p->exit_status == 0, "and it exits");
  ah__proc_release(p);
}

static void test_release_running(uv_loop_t *loop, ah_procs *ps) {
  char *args[] = {"sh", "-c", "trap '' TERM; sleep 30 & wait; wait", NULL};
  ah_proc *p = start(ps, args, AH_PROC_NULL, AH_OUT_COLLECT, 1000);
  p->grace_ms = 50;
  exits = 0;
  ah__proc_release(p);
  CHECK(live_count(ps) == 1 && running_count(ps) == 1, "released but still running");
  while (live_count(ps) > 0) uv_run(loop, UV_RUN_ONCE);
  CHECK(running_count(ps) == 0, "SIGKILL after the grace period; reaped and freed");
  CHECK(exits == 0, "no callback after release");
}

static void test_close_context(uv_loop_t *loop) {
  char *args[] = {"sleep", "30", NULL};
  ah_procs *ps;
  ah_proc *p;
  int pid;
  ah__procs_open(&ps, loop);
  p = start(ps, args, AH_PROC_NULL, AH_OUT_COLLECT, 1000);
  pid = p->pid;
  ah__procs_close(ps);
  CHECK(p->exited && p->term_signal == SIGKILL, "closing the context kills and reaps");
  CHECK(kill(pid, 0) != 0 && errno == ESRCH, "the process is gone, not a zombie");
  ah__proc_release(p);
  uv_run(loop, UV_RUN_NOWAIT);
}

int main(void) {
  uv_loop_t *loop = uv_default_loop();
  ah_procs *ps;
  CHECK(ah__procs_open(&ps, loop) == 0, "open a process context");
  test_collect(loop, ps);
  test_spawn_fails(loop, ps);
  test_env(loop, ps);
  test_cap(loop, ps);
  test_stream(loop, ps);
  test_release_running(loop, ps);
  CHECK(live_count(ps) == 0, "nothing left");
  ah__procs_close(ps);
  test_close_context(loop);
  CHECK(uv_loop_close(loop) == 0, "every handle closed");
  return ctest_done();
}
