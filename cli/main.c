/*
 * The agenthost command: runs a Lua script as the main task.
 *
 *   agenthost [options] SCRIPT [ARGS...]
 *
 * The script sees `arg` as the lua command sets it and its arguments as
 * `...`.  scripts/ and tools/ are found relative to the executable (or its
 * install prefix).  --watch [DIR] makes the modules the script requires
 * from DIR (default: the script's directory) reload when their files
 * change, and on SIGHUP (AGENTHOST_RELOAD_DEBOUNCE_MS sets the quiet
 * period after a change, 50 ms by default).  Exit status: 0 when the main task and every detached
 * task have finished, 1 when the main task fails, 2 for usage errors,
 * 128+N after signal N (SIGINT, SIGTERM cancel every task and let detached
 * work drain; a second one exits at once).
 *
 * The command is a client of the public API (agenthost.h) and the Lua C
 * API only, like any other program that embeds agenthost.
 */
#include <agenthost.h>

#include <lauxlib.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <uv.h>

static const char *progname = "agenthost";

static void usage(FILE *f) {
  fprintf(f,
          "usage: %s [options] SCRIPT [ARGS...]\n"
          "\n"
          "Runs SCRIPT (a Lua 5.4 file) as the main task of an agenthost loop.\n"
          "\n"
          "options:\n"
          "  --watch [DIR]  reload modules required from DIR when their files\n"
          "               change (default DIR: the script's directory);\n"
          "               SIGHUP reloads every changed module at once\n"
          "  --help       show this help and exit\n"
          "  --version    show the version and exit\n"
          "  --           end of options\n"
          "\n"
          "exit status: 0 done, 1 the script failed, 2 usage error,\n"
          "130/143 interrupted by SIGINT/SIGTERM.\n",
          progname);
}

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
  char watchdir[4096];
  struct stat st;

  for (i = 1; i < argc; i++) {
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

  /* The CLI is a user of the embedding API: the host finds scripts/ from
   * the executable, loads the module, and closes everything at the end. */
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
  if (watch) {
    const char *slash;
    if (!*watch) { /* the script's directory */
      slash = strrchr(argv[script], '/');
      if (!slash)
        snprintf(watchdir, sizeof watchdir, ".");
      else
        snprintf(watchdir, sizeof watchdir, "%.*s",
                 (int)(slash - argv[script]), argv[script]);
      watch = *watchdir ? watchdir : "/";
    }
    /* ah.reload.watch(dir, {sighup = true}) */
    lua_getfield(L, -1, "reload");
    lua_getfield(L, -1, "watch");
    lua_pushstring(L, watch);
    lua_createtable(L, 0, 2);
    lua_pushboolean(L, 1);
    lua_setfield(L, -2, "sighup");
    if (getenv("AGENTHOST_RELOAD_DEBOUNCE_MS")) {
      lua_pushinteger(L, atoi(getenv("AGENTHOST_RELOAD_DEBOUNCE_MS")));
      lua_setfield(L, -2, "debounce_ms");
    }
    if (lua_pcall(L, 2, 0, 0) != LUA_OK) {
      fprintf(stderr, "%s: --watch: %s\n", progname, luaL_tolstring(L, -1, NULL));
      ah_close(h);
      return 2;
    }
    lua_pop(L, 1);
  }

  lua_getfield(L, -1, "task");
  lua_getfield(L, -1, "run"); /* [ah, task, run] */
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
