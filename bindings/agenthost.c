/*
 * The Lua module entry points.  luaopen_agenthost_core builds the table of
 * C parts (task, error, clock, rusage); scripts/agenthost/init.lua adds the
 * Lua parts on top of it and is what `require "agenthost"` returns.
 *
 * luaopen_agenthost serves a stock lua5.4 whose LUA_CPATH finds
 * build/agenthost.so but whose LUA_PATH does not name scripts/: it locates
 * the scripts/ directory beside the library (or under its install prefix)
 * and loads init.lua from there.
 */
#define _GNU_SOURCE /* dladdr */
#include "bindings.h"
#include "../host/agenthost.h"

#include <dlfcn.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>

const char *ah_version(void) { return AH_VERSION_STRING; }

/* ah.clock() -> monotonic seconds */
static int m_clock(lua_State *L) {
  lua_pushnumber(L, ah__now());
  return 1;
}

/* ah.rusage() -> {utime, stime, cpu, maxrss_kb} of this process */
static int m_rusage(lua_State *L) {
  uv_rusage_t ru;
  if (uv_getrusage(&ru) != 0) return 0;
  lua_createtable(L, 0, 4);
  lua_pushnumber(L, (double)ru.ru_utime.tv_sec + ru.ru_utime.tv_usec / 1e6);
  lua_setfield(L, -2, "utime");
  lua_pushnumber(L, (double)ru.ru_stime.tv_sec + ru.ru_stime.tv_usec / 1e6);
  lua_setfield(L, -2, "stime");
  lua_pushnumber(L, (double)ru.ru_utime.tv_sec + ru.ru_utime.tv_usec / 1e6 +
                        (double)ru.ru_stime.tv_sec + ru.ru_stime.tv_usec / 1e6);
  lua_setfield(L, -2, "cpu");
  lua_pushinteger(L, (lua_Integer)ru.ru_maxrss);
  lua_setfield(L, -2, "maxrss_kb");
  return 1;
}

int luaopen_agenthost_core(lua_State *L) {
  lua_createtable(L, 0, 8);
  ah__open_task(L);
  lua_setfield(L, -2, "task");
  ah__error_open(L);
  lua_setfield(L, -2, "error");
  ah__open_reload(L);
  lua_setfield(L, -2, "_reload");
  ah__open_http(L);
  lua_setfield(L, -2, "_http");
  ah__open_store(L);
  lua_setfield(L, -2, "store");
  ah__open_proc(L);
  lua_setfield(L, -2, "_proc");
  lua_pushcfunction(L, m_clock);
  lua_setfield(L, -2, "clock");
  lua_pushcfunction(L, m_rusage);
  lua_setfield(L, -2, "rusage");
  lua_pushliteral(L, AH_VERSION_STRING);
  lua_setfield(L, -2, "version");
  return 1;
}

static int is_file(const char *path) {
  struct stat st;
  return stat(path, &st) == 0 && S_ISREG(st.st_mode);
}

/* Writes into out the directory holding scripts/agenthost/init.lua for a
 * binary at path (bin/ or build/ beside scripts/, or PREFIX/bin with
 * PREFIX/share/agenthost).  Returns 0 when found. */
int ah__find_root(const char *path, char *out, size_t size) {
  char dir[4096], probe[4200];
  char *slash;
  int up;
  if (strlen(path) >= sizeof dir) return -1;
  strcpy(dir, path);
  /* Walk up from the binary's directory: build/agenthost and
   * build/asan/agenthost sit below the source tree; PREFIX/bin/agenthost
   * has PREFIX/share/agenthost. */
  for (up = 0; up < 3; up++) {
    if (!(slash = strrchr(dir, '/'))) return -1;
    *slash = '\0';
    if (!*dir) return -1;
    snprintf(probe, sizeof probe, "%s/scripts/agenthost/init.lua", dir);
    if (is_file(probe)) {
      snprintf(out, size, "%s", dir);
      return 0;
    }
    snprintf(probe, sizeof probe,
             "%s/share/agenthost/scripts/agenthost/init.lua", dir);
    if (is_file(probe)) {
      snprintf(out, size, "%s/share/agenthost", dir);
      return 0;
    }
  }
  return -1;
}

/* Prepends ROOT/scripts and ROOT/tools to package.path. */
void ah__add_paths(lua_State *L, const char *root) {
  lua_getglobal(L, "package");
  lua_getfield(L, -1, "path");
  lua_pushfstring(L, "%s/scripts/?.lua;%s/scripts/?/init.lua;%s/tools/?.lua;%s",
                  root, root, root, luaL_optstring(L, -1, ""));
  lua_setfield(L, -3, "path");
  lua_pop(L, 2);
}

int luaopen_agenthost(lua_State *L) {
  Dl_info info;
  char root[4096];
  lua_getglobal(L, "package");
  lua_getfield(L, -1, "preload");
  lua_pushcfunction(L, luaopen_agenthost_core);
  lua_setfield(L, -2, "agenthost.core");
  lua_pop(L, 2);
  if (dladdr((void *)luaopen_agenthost, &info) && info.dli_fname &&
      ah__find_root(info.dli_fname, root, sizeof root) == 0)
    ah__add_paths(L, root);
  /* Load init.lua under the name "agenthost" so that the module is one. */
  lua_getglobal(L, "package");
  lua_getfield(L, -1, "searchpath");
  lua_pushliteral(L, "agenthost");
  lua_getfield(L, -3, "path");
  lua_call(L, 2, 2);
  if (lua_isnil(L, -2))
    return luaL_error(L,
                      "agenthost: scripts/agenthost/init.lua not found beside "
                      "the library; add the scripts/ directory to LUA_PATH "
                      "(scripts/?.lua;scripts/?/init.lua)%s",
                      lua_tostring(L, -1));
  if (luaL_loadfile(L, lua_tostring(L, -2)) != LUA_OK) return lua_error(L);
  lua_pushliteral(L, "agenthost");
  lua_call(L, 1, 1);
  return 1;
}
