/*
 * automation_host: events arrive on another thread and go to an agent.
 *
 *   printf '%s\n' '{"type":"build","id":1}' '{"type":"deploy","id":2}' |
 *     automation_host
 *
 * A reader thread takes one JSON event per line from stdin and hands it to
 * the agent's "events" channel with ah_post (a line that is not JSON is
 * reported and skipped; when too many posts wait it retries).  At the end
 * of input it posts {"type":"eof"}; the exit status is 0 once the agent
 * has handled everything.  The main thread runs the agent with
 * ah_run: the agent handles each event in a task of its own (a stand-in
 * for a tool call that takes a while) and reports through ah.host.emit,
 * a C function that prints the line on stdout.  Events are handled
 * concurrently, so their "done" lines may come in any order; the summary
 * comes last.
 *
 * Built from the installed files only: cc $(pkg-config --cflags agenthost)
 * automation_host.c $(pkg-config --libs agenthost).
 */
#define _POSIX_C_SOURCE 200809L /* for <uv.h> under -std=c99 */
#include <agenthost.h>
#include <uv.h>

#include <lauxlib.h>
#include <stdio.h>
#include <string.h>

/* ah.host.emit(line): prints one line on stdout. */
static int h_emit(lua_State *L) {
  printf("%s\n", luaL_checkstring(L, 1));
  fflush(stdout);
  return 0;
}

static const char *agent =
    "local ah = require 'agenthost'\n"
    "local task, emit = ah.task, ah.host.emit\n"
    "local events = ah.channel('events')\n"
    "local function id(ev)  -- JSON numbers arrive as floats\n"
    "  local v = type(ev) == 'table' and ev.id or nil\n"
    "  return tostring(math.tointeger(v) or v)\n"
    "end\n"
    "local handlers, counts = {}, {}\n"
    "while true do\n"
    "  local ev = events:recv()\n"
    "  local kind = type(ev) == 'table' and ev.type or 'other'\n"
    "  if kind == 'eof' then break end\n"
    "  counts[kind] = (counts[kind] or 0) + 1\n"
    "  emit(('got %s %s'):format(kind, id(ev)))\n"
    "  handlers[#handlers + 1] = task.spawn(function()\n"
    "    task.sleep(0.01)  -- a tool call\n"
    "    emit(('done %s %s'):format(kind, id(ev)))\n"
    "  end)\n"
    "end\n"
    "for _, h in ipairs(handlers) do h:join() end\n"
    "local kinds = {}\n"
    "for k, n in pairs(counts) do kinds[#kinds + 1] = k .. '=' .. n end\n"
    "table.sort(kinds)\n"
    "emit(('summary events=%d %s'):format(#handlers, table.concat(kinds, ' ')))\n";

typedef struct reader {
  ah_host *h;
  long lines, posted, skipped;
} reader;

static void read_events(void *arg) {
  reader *r = arg;
  char line[65536];
  while (fgets(line, sizeof line, stdin)) {
    size_t len = strlen(line);
    int rc;
    r->lines++;
    while (len > 0 && (line[len - 1] == '\n' || line[len - 1] == '\r')) line[--len] = '\0';
    if (len == 0) continue;
    while ((rc = ah_post(r->h, "events", line)) == AH_EFULL) uv_sleep(1);
    if (rc == AH_OK) {
      r->posted++;
    } else {
      r->skipped++;
      fprintf(stderr, "automation_host: line %ld skipped: %s\n", r->lines,
              ah_strerror(rc));
    }
  }
  ah_post(r->h, "events", "{\"type\":\"eof\"}");
}

static void on_error(void *ud, const char *msg, const char *tb) {
  (void)ud;
  fprintf(stderr, "automation_host: agent error: %s\n%s\n", msg, tb);
}

int main(void) {
  ah_config cfg;
  ah_host *h;
  reader r;
  uv_thread_t th;
  int rc;

  ah_config_init(&cfg);
  cfg.on_error = on_error;
  if ((rc = ah_open(&cfg, &h)) != AH_OK) {
    fprintf(stderr, "automation_host: ah_open: %s\n", ah_strerror(rc));
    return 1;
  }
  ah_register(h, "emit", h_emit);
  if (ah_load_string(h, agent, "=agent") != AH_OK) {
    fprintf(stderr, "automation_host: %s\n", ah_errmsg(h));
    ah_close(h);
    return 1;
  }
  memset(&r, 0, sizeof r);
  r.h = h;
  if (uv_thread_create(&th, read_events, &r) != 0) {
    ah_close(h);
    return 1;
  }
  rc = ah_run(h); /* until the agent has seen eof and its handlers are done */
  uv_thread_join(&th);
  if (rc != AH_OK) fprintf(stderr, "automation_host: %s\n", ah_errmsg(h));
  fprintf(stderr, "automation_host: %ld lines, %ld posted, %ld skipped\n", r.lines,
          r.posted, r.skipped);
  ah_close(h);
  return rc == AH_OK ? 0 : 1;
}
