/*
 * agenthost: the public C header.
 *
 * This header is what C embedders include.  The embedding API proper
 * (ah_host, ah_config, ah_step, ah_post) is declared here as it lands; for
 * now it carries the version and the entry points of the Lua module, which
 * any Lua 5.4 host can open with luaL_requiref or package.preload.
 */
#ifndef AGENTHOST_H
#define AGENTHOST_H

#define AH_VERSION_MAJOR 0
#define AH_VERSION_MINOR 1
#define AH_VERSION_PATCH 0
#define AH_VERSION_NUM \
  (AH_VERSION_MAJOR * 10000 + AH_VERSION_MINOR * 100 + AH_VERSION_PATCH)
#define AH_VERSION_STRING "0.1.0"

struct lua_State;

#ifdef __cplusplus
extern "C" {
#endif

const char *ah_version(void);

/* The core module (C parts only): require "agenthost.core". */
int luaopen_agenthost_core(struct lua_State *L);
/* The whole module: adds the scripts/ directory found next to the library
 * to package.path and returns require "agenthost" from there. */
int luaopen_agenthost(struct lua_State *L);

#ifdef __cplusplus
}
#endif

#endif
