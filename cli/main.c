/*
 * The agenthost command: runs a Lua script as the main task.
 *
 *   agenthost [options] SCRIPT [ARGS...]
 *   agenthost --mock-llm [MOCK OPTIONS]
 *
 * The script sees `arg` as the lua command sets it and its arguments as
 * `...`.  require finds the script's own directory first (with and without
 * --watch), then LUA_PATH or Lua's defaults, then the agenthost library and
 * its tools, built into the command.  --watch [DIR] makes the
 * modules the script requires from DIR (default: the script's directory)
 * reload when their files change, and on SIGHUP (AGENTHOST_RELOAD_DEBOUNCE_MS
 * sets the quiet period after a change, 50 ms by default); it does not
 * change where modules are found.  An edit of the script itself is
 * reported on stderr, not reloaded.  Without --watch, SIGHUP is reported
 * and ignored.  Exit status: 0 when the main task and every detached task
 * have finished, 1 when the main task fails, 2 for usage errors, 128+N
 * after signal N (SIGINT, SIGTERM cancel every task and let detached work
 * drain; a second one exits at once).
 *
 * `agenthost trace DB --html OUT ...` writes the timeline of the spans
 * stored in DB (docs/observability.md): a built-in script,
 * agenthost.trace.cli, runs as the main task instead of a file.  (A
 * script file named "trace" is run as ./trace.)
 *
 * `agenthost fleet status [URL]` prints the state of a fleet of durable
 * runs (docs/fleet.md): a built-in script, agenthost.fleet.cli, runs as
 * the main task instead of a file.  (A script file named "fleet" is run
 * as ./fleet.)
 *
 * --mock-llm, as the first argument, runs the mock model server of
 * tests/support/mockllm.c (docs/mockllm.md), linked into the command only,
 * instead of a script; ah.config starts it this way when no model is
 * configured, so the installed command answers offline on its own.
 *
 * The command is a client of the public API (agenthost.h), the Lua C API
 * and libuv only, like any other program that embeds agenthost.
 */
#include <agenthost.h>

#include <lauxlib.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <uv.h>

static const char *progname = "agenthost";

/* The mock model server's main (tests/support/mockllm.c built with
 * AH_MOCKLLM_BUILTIN); it owns the process until it returns. */
int ah_mockllm_main(int argc, char **argv);

/* What the command sets up in Lua before the script runs, called with
 * (ah, script, watch, debounce_ms, exe): the script's directory goes first
 * on package.path, the same with and without --watch.  Under --watch
 * (watch is the directory, "" for the script's), the directory is watched
 * but not searched, and the script is named as the main one, so that an
 * edit of it is reported instead of silently ignored.  exe (this
 * executable, nil when unknown) runs the built-in mock model for
 * ah.config.  A --watch failure is raised as "--watch: message". */
static const char setup_lua[] =
    "local ah, script, watch, debounce, exe = ...\n"
    "local dir = script:match('^(.*)/[^/]*$') or '.'\n"
    "if dir == '' then dir = '/' end\n"
    "package.path = dir .. '/?.lua;' .. dir .. '/?/init.lua;' .. package.path\n"
    "if exe then ah.config.mock_command = { exe, '--mock-llm' } end\n"
    "if watch then\n"
    "  if watch == '' then watch = dir end\n"
    "  local ok, err = pcall(ah.reload.watch, watch,\n"
    "    { sighup = true, path = false, debounce_ms = debounce })\n"
    "  if not ok then error('--watch: ' .. tostring(err), 0) end\n"
    "  ah.reload.main(script)\n"
    "end\n";

static void usage(FILE *f) {
  fprintf(f,
          "usage: %s [options] SCRIPT [ARGS...]\n"
          "\n"
          "Runs SCRIPT (a Lua 5.4 file) as the main task of an agenthost loop.\n"
          "\n"
          "require finds modules in SCRIPT's directory first, with or\n"
          "without --watch.\n"
          "\n"
          "options:\n"
          "  --watch [DIR]  reload modules required from DIR when their files\n"
          "               change (default DIR: the script's directory);\n"
          "               SIGHUP reloads every changed module at once.\n"
          "               DIR is watched, not added to the module path;\n"
          "               SCRIPT itself is not reloaded (an edit is reported)\n"
          "  --help       show this help and exit\n"
          "  --version    show the version and exit\n"
          "  --           end of options\n"
          "\n"
          "       %s --mock-llm [--port N] [--rules FILE] [...]\n"
          "runs the built-in offline mock model server (docs/mockllm.md).\n"
          "\n"
          "       %s trace DB --html OUT [--conversation ID] [--since T] [--until T]\n"
          "writes the timeline of the spans stored in DB as one HTML file\n"
          "(docs/observability.md; %s trace --help).\n"
          "\n"
          "       %s fleet status [URL] [--name NAME]\n"
          "prints a fleet's queue, runs by state and workers (docs/fleet.md).\n"
          "\n"
          "exit status: 0 done, 1 the script failed, 2 usage error,\n"
          "130/143 interrupted by SIGINT/SIGTERM.  Without --watch, SIGHUP\n"
          "is reported and ignored.\n",
          progname, progname, progname, progname, progname);
}

/* The built-in commands: `agenthost NAME ...` runs the chunk (its module's
 * main, given the remaining arguments) as the main task instead of a file. */
struct builtin {
  const char *name, *chunk, *chunkname;
};
static const struct builtin builtins[] = {
    {"trace", "return require('agenthost.trace.cli').main(...)", "=agenthost trace"},
    {"fleet", "return require('agenthost.fleet.cli').main(...)", "=agenthost fleet"},
};

/* Builds `arg`: the script at 0, its arguments above, what came before it
 * (the program and options) below, as lua does. */
static void set_arg(lua_State *L, int argc, char **argv, int script) {
  int i;
  lua_createtable(L, argc - script, script + 1);
  for (i = 0; i < argc; i++) {
    lua_pushstring(L, argv[i]);
    lua_rawseti(L, -2, i - script);
  }
  lua_setglobal(L, "arg");
}

static int report_failure(ah_host *h, lua_State *L) {
  const char *tb = ah_traceback(h);
  const char *msg = luaL_tolstring(L, -1, NULL);
  fprintf(stderr, "%s: %s\n", progname, msg);
  if (tb && *tb) fprintf(stderr, "%s\n", tb);
  lua_pop(L, 1);
  return 1;
}

int main(int argc, char **argv) {
  lua_State *L;
  ah_config cfg;
  ah_host *h = NULL;
  int script = 0, i, status, code = 0, nargs;
  const char *watch = NULL;
  const struct builtin *builtin = NULL; /* the built-in command run, or NULL */
  char exe[4096];
  size_t exelen = sizeof exe;
  struct stat st;

  /* Before anything else: the mock model server is not a script run. */
  if (argc > 1 && strcmp(argv[1], "--mock-llm") == 0)
    return ah_mockllm_main(argc - 1, argv + 1);

  for (i = 0; i < (int)(sizeof builtins / sizeof builtins[0]); i++) {
    if (argc > 1 && strcmp(argv[1], builtins[i].name) == 0) {
      builtin = &builtins[i];
      break;
    }
  }
  if (builtin) script = 1;
  for (i = 1; i < argc && !builtin; i++) {
    if (strcmp(argv[i], "--help") == 0 || strcmp(argv[i], "-h") == 0) {
      usage(stdout);
      return 0;
    } else if (strcmp(argv[i], "--version") == 0) {
      printf("agenthost %s (%s, libuv %s)\n", ah_version(), LUA_RELEASE,
             uv_version_string());
      return 0;
    } else if (strcmp(argv[i], "--watch") == 0) {
      /* An optional directory: taken when the next argument is one. */
      watch = "";
      if (i + 2 < argc && stat(argv[i + 1], &st) == 0 && S_ISDIR(st.st_mode))
        watch = argv[++i];
    } else if (strcmp(argv[i], "--") == 0) {
      script = i + 1;
      break;
    } else if (argv[i][0] == '-' && argv[i][1] != '\0') {
      fprintf(stderr, "%s: unknown option '%s'\n", progname, argv[i]);
      usage(stderr);
      return 2;
    } else {
      script = i;
      break;
    }
  }
  if (script == 0 || script >= argc) {
    fprintf(stderr, "%s: no script given\n", progname);
    usage(stderr);
    return 2;
  }

  /* The CLI is a user of the embedding API: the host loads the built-in
   * module, and closes everything at the end. */
  ah_config_init(&cfg);
  if (ah_open(&cfg, &h) != AH_OK) {
    fprintf(stderr, "%s: cannot load the agenthost module\n", progname);
    return 1;
  }
  L = ah_lua(h);
  /* ah = require "agenthost" (already loaded by ah_open) */
  lua_getglobal(L, "require");
  lua_pushliteral(L, "agenthost");
  lua_call(L, 1, 1);
  set_arg(L, argc, argv, script);
  if (luaL_loadbufferx(L, setup_lua, sizeof setup_lua - 1, "=agenthost", "t") != LUA_OK) {
    fprintf(stderr, "%s: %s\n", progname, lua_tostring(L, -1));
    ah_close(h);
    return 1;
  }
  lua_pushvalue(L, -2);
  lua_pushstring(L, argv[script]);
  if (watch) lua_pushstring(L, watch);
  else lua_pushnil(L);
  if (getenv("AGENTHOST_RELOAD_DEBOUNCE_MS"))
    lua_pushinteger(L, atoi(getenv("AGENTHOST_RELOAD_DEBOUNCE_MS")));
  else
    lua_pushnil(L);
  if (uv_exepath(exe, &exelen) == 0) lua_pushlstring(L, exe, exelen);
  else lua_pushnil(L);
  if (lua_pcall(L, 5, 0, 0) != LUA_OK) {
    fprintf(stderr, "%s: %s\n", progname, luaL_tolstring(L, -1, NULL));
    ah_close(h);
    return 2;
  }

  lua_getfield(L, -1, "task");
  lua_getfield(L, -1, "run"); /* [ah, task, run] */
  if (builtin)
    status = luaL_loadbufferx(L, builtin->chunk, strlen(builtin->chunk), builtin->chunkname, "t");
  else
    status = luaL_loadfile(L, argv[script]);
  if (status != LUA_OK) {
    const char *msg = lua_tostring(L, -1);
    fprintf(stderr, "%s: %s\n", progname, msg ? msg : "cannot load the script");
    code = (status == LUA_ERRFILE) ? 2 : 1;
    ah_close(h);
    return code;
  }
  nargs = argc - script - 1;
  luaL_checkstack(L, nargs + 1, "too many arguments");
  for (i = script + 1; i < argc; i++) lua_pushstring(L, argv[i]);
  ah_handle_signals(h);
  if (lua_pcall(L, nargs + 1, 0, 0) != LUA_OK) {
    int sig = ah_signal_seen(h);
    if (sig)
      code = 128 + sig;
    else
      code = report_failure(h, L);
  } else if (ah_signal_seen(h)) {
    code = 128 + ah_signal_seen(h);
  }
  fflush(stdout);
  ah_close(h);
  return code;
}
