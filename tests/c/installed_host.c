/*
 * A program built from an installed agenthost only: the header from
 * PREFIX/include and the flags of `pkg-config agenthost` (shared or
 * --static).  tests/packaging_spec.lua compiles it against a temporary
 * PREFIX and runs it from an unrelated directory; it is not one of the C
 * tests (those are tests/c/test_*.c).
 *
 *   installed_host MODULE_DIR
 *
 * opens a host with ah_config_init's defaults and script_path MODULE_DIR,
 * and loads a script that requires agenthost, a bundled tool (web_search)
 * and the module installed_host_module from MODULE_DIR, then runs a task.
 * Prints "VERSION TOOL_NAME ANSWER" and exits 0 when all of that worked;
 * exits 1 with the reason on stderr otherwise.
 */
#include <agenthost.h>
#include <lauxlib.h>

#include <stdio.h>
#include <string.h>

static const char *SCRIPT =
    "local ah = require 'agenthost'\n"
    "local web_search = require 'web_search'\n"
    "local mine = require 'installed_host_module'\n"
    "local t = ah.task.spawn(function()\n"
    "  ah.task.sleep(0.01)\n"
    "  return mine.answer()\n"
    "end)\n"
    "local answer = t:join()\n"
    "ah.host.report(string.format('%s %s %s', ah.version,\n"
    "  tostring(web_search.name), tostring(answer)))\n";

static char report[256]; /* what the script reported; "" until it does */
static int errors;       /* errors no task waited for */

/* ah.host.report(s): keeps s for main to print. */
static int host_report(lua_State *L) {
  snprintf(report, sizeof report, "%s", luaL_checkstring(L, 1));
  return 0;
}

static void on_error(void *ud, const char *msg, const char *traceback) {
  (void)ud;
  fprintf(stderr, "installed_host: %s\n%s\n", msg, traceback ? traceback : "");
  errors++;
}

int main(int argc, char **argv) {
  ah_config cfg;
  ah_host *h;
  int rc;
  if (argc != 2) {
    fprintf(stderr, "usage: installed_host MODULE_DIR\n");
    return 2;
  }
  if (strcmp(ah_version(), AH_VERSION_STRING) != 0) {
    fprintf(stderr, "installed_host: header %s, library %s\n",
            AH_VERSION_STRING, ah_version());
    return 1;
  }
  ah_config_init(&cfg);
  cfg.script_path = argv[1];
  cfg.on_error = on_error;
  if ((rc = ah_open(&cfg, &h)) != AH_OK) {
    fprintf(stderr, "installed_host: ah_open: %s\n", ah_strerror(rc));
    return 1;
  }
  if ((rc = ah_register(h, "report", host_report)) != AH_OK ||
      (rc = ah_load_string(h, SCRIPT, "=installed_host")) != AH_OK) {
    fprintf(stderr, "installed_host: %s: %s\n", ah_strerror(rc), ah_errmsg(h));
    ah_close(h);
    return 1;
  }
  rc = ah_run(h);
  if (ah_close(h) != AH_OK || rc != AH_OK || errors || !report[0]) {
    fprintf(stderr, "installed_host: ah_run %s, %d error(s), %s\n",
                    ah_strerror(rc), errors, report[0] ? report : "no report");
    return 1;
  }
  printf("%s\n", report);
  return 0;
}
