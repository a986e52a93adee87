/*
 * The agenthost Lua library as built into the binary: one entry per module
 * (scripts/agenthost/ and the bundled tools/), sorted by name.  The data is
 * generated at build time by bindings/scripts_gen.lua; bindings/scripts.c
 * searches it.
 */
#ifndef AH_SCRIPTS_H
#define AH_SCRIPTS_H

#include <stddef.h>

typedef struct ah_script {
  const char *name;         /* the module name: "agenthost.llm", "web_search" */
  const char *chunk;        /* the chunk name: "@scripts/agenthost/llm/init.lua" */
  const unsigned char *src; /* the Lua source, len bytes */
  size_t len;
} ah_script;

extern const ah_script ah__scripts[];
extern const size_t ah__nscripts;

#endif
