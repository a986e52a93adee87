/*
 * The built-in Lua library: `require` finds agenthost's own modules (the
 * agenthost library of scripts/agenthost/ and the bundled tools of tools/)
 * in the copy compiled into the binary, so that libagenthost, agenthost.so
 * and the agenthost command work from any directory with nothing beside
 * them.  The built-in searcher comes after the Lua path searcher, so a
 * user's own modules (package.path, ah_config.script_path) are found first,
 * and can replace a bundled tool.
 *
 * AGENTHOST_SOURCE=DIR, for working on the library: its modules are loaded
 * from the source tree DIR (DIR/scripts and DIR/tools, put first on
 * package.path) instead of the built-in copy.
 *
 * Relies on the generated table of scripts.h and Lua's package library.
 */
#include "bindings.h"
#include "scripts.h"

#include <stdlib.h>
#include <string.h>

static char INSTALLED_KEY;

static const ah_script *scripts_find(const char *name) {
  size_t lo = 0, hi = ah__nscripts;
  while (lo < hi) {
    size_t mid = lo + (hi - lo) / 2;
    int c = strcmp(name, ah__scripts[mid].name);
    if (c == 0) return &ah__scripts[mid];
    if (c < 0) hi = mid;
    else lo = mid + 1;
  }
  return NULL;
}

int ah__scripts_load(lua_State *L, const char *name) {
  const ah_script *s = scripts_find(name);
  if (!s) return LUA_ERRFILE;
  return luaL_loadbufferx(L, (const char *)s->src, s->len, s->chunk, "t");
}

/* A package.searchers entry: the loader of a built-in module and its chunk
 * name (passed to the loader as its second argument, as for files), or a
 * line for require's message. */
static int scripts_searcher(lua_State *L) {
  const char *name = luaL_checkstring(L, 1);
  const ah_script *s = scripts_find(name);
  if (!s) {
    lua_pushfstring(L, "no module '%s' built into agenthost", name);
    return 1;
  }
  if (luaL_loadbufferx(L, (const char *)s->src, s->len, s->chunk, "t") != LUA_OK)
    return lua_error(L); /* checked at build time: out of memory */
  lua_pushstring(L, s->chunk + 1);
  return 2;
}

void ah__scripts_install(lua_State *L) {
  const char *dev = getenv("AGENTHOST_SOURCE");
  lua_rawgetp(L, LUA_REGISTRYINDEX, &INSTALLED_KEY);
  if (lua_toboolean(L, -1)) {
    lua_pop(L, 1);
    return;
  }
  lua_pop(L, 1);
  lua_pushboolean(L, 1);
  lua_rawsetp(L, LUA_REGISTRYINDEX, &INSTALLED_KEY);
  lua_getglobal(L, "package");
  if (dev && *dev) {
    lua_getfield(L, -1, "path");
    lua_pushfstring(L, "%s/scripts/?.lua;%s/scripts/?/init.lua;%s/tools/?.lua;%s",
                    dev, dev, dev, lua_tostring(L, -1) ? lua_tostring(L, -1) : "");
    lua_setfield(L, -3, "path");
    lua_pop(L, 1);
  }
  /* package.searchers: preload, Lua path, [built-in], C path, all-in-one. */
  lua_getfield(L, -1, "searchers");
  if (lua_istable(L, -1)) {
    lua_Integer i, n = (lua_Integer)lua_rawlen(L, -1);
    lua_Integer at = n < 2 ? n + 1 : 3;
    for (i = n; i >= at; i--) {
      lua_rawgeti(L, -1, i);
      lua_rawseti(L, -2, i + 1);
    }
    lua_pushcfunction(L, scripts_searcher);
    lua_rawseti(L, -2, at);
  }
  lua_pop(L, 2);
}
