/*
 * embed_step: the cost of ah_step when N agents are idle.
 *
 *   embed_step [--agents N] [--steps S] [--wait sleep|channel]
 *
 * Opens a host, starts N agents that each wait (a long task.sleep, or a
 * receive on a channel nobody posts to), steps until they are all waiting,
 * then times S calls of ah_step(h, 1000) and prints one line:
 *
 *   embed_step agents=N steps=S wait=W p50_us=.. p99_us=.. max_us=.. mean_us=..
 *
 * Used by bench/embed.
 */
#define _POSIX_C_SOURCE 200809L
#include <agenthost.h>

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <uv.h>

static int cmp_u64(const void *a, const void *b) {
  uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
  return x < y ? -1 : x > y;
}

int main(int argc, char **argv) {
  long agents = 1000, steps = 100000, i;
  const char *wait = "sleep";
  char code[512];
  uint64_t *ns, total = 0;
  ah_host *h;
  int rc, settle;

  for (i = 1; i + 1 < argc; i += 2) {
    if (!strcmp(argv[i], "--agents")) agents = atol(argv[i + 1]);
    else if (!strcmp(argv[i], "--steps")) steps = atol(argv[i + 1]);
    else if (!strcmp(argv[i], "--wait")) wait = argv[i + 1];
    else break;
  }
  if (i < argc || agents < 0 || steps < 1 ||
      (strcmp(wait, "sleep") && strcmp(wait, "channel"))) {
    fprintf(stderr, "usage: embed_step [--agents N] [--steps S] [--wait sleep|channel]\n");
    return 2;
  }
  if ((rc = ah_open(NULL, &h)) != AH_OK) {
    fprintf(stderr, "embed_step: ah_open: %s\n", ah_strerror(rc));
    return 1;
  }
  snprintf(code, sizeof code,
           "local ah = require 'agenthost'\n"
           "local wait = '%s'\n"
           "for i = 1, %ld do\n"
           "  ah.task.spawn(function()\n"
           "    if wait == 'sleep' then ah.task.sleep(3600) else ah.channel('idle' .. i):recv() end\n"
           "  end)\n"
           "end\n",
           wait, agents);
  if (ah_load_string(h, code, "=idle_agents") != AH_OK) {
    fprintf(stderr, "embed_step: %s\n", ah_errmsg(h));
    return 1;
  }
  /* Until every agent waits: nothing is ready after a step. */
  for (settle = 0; settle < 100; settle++) ah_step(h, 1000000);
  ns = malloc((size_t)steps * sizeof *ns);
  if (!ns) return 1;
  for (i = 0; i < steps; i++) {
    uint64_t t0 = uv_hrtime();
    rc = ah_step(h, 1000);
    ns[i] = uv_hrtime() - t0;
    total += ns[i];
    if (rc < 0) {
      fprintf(stderr, "embed_step: ah_step: %s\n", ah_strerror(rc));
      return 1;
    }
  }
  qsort(ns, (size_t)steps, sizeof *ns, cmp_u64);
  printf("embed_step agents=%ld steps=%ld wait=%s p50_us=%.2f p99_us=%.2f max_us=%.2f "
         "mean_us=%.2f\n",
         agents, steps, wait, ns[steps / 2] / 1e3,
         ns[(long)((double)(steps - 1) * 0.99)] / 1e3, ns[steps - 1] / 1e3,
         (double)total / (double)steps / 1e3);
  free(ns);
  ah_close(h);
  return 0;
}
