-- Argument errors: every public function of the primitives, called with
-- arguments of the wrong type or out of range, raises one shape: a
-- structured error of kind invalid_argument whose message starts with the
-- position of the caller's code and reads "function: what must be what".

local ah = require "agenthost"
local task = ah.task

-- The cases: { name, function that makes the bad call, what the message
-- must contain }.  Calls that wait run inside a task.
local function cases(db, proc)
  local pgpool = ah.pg.pool { url = "postgres://nobody@127.0.0.1:1/none" }
  local h = task.spawn(function() end)
  local ev, sem, q = task.event(), task.semaphore(1), task.queue(1)
  return {
    -- ah.task
    { "task.spawn", function() task.spawn("f") end, "task.spawn: fn must be a function" },
    { "task.detach", function() task.detach({}) end, "task.detach: fn must be a function" },
    { "task.sleep", function() task.sleep("1") end, "task.sleep: seconds must be a number >= 0" },
    { "task.sleep", function() task.sleep(-1) end, "task.sleep: seconds must be a number >= 0" },
    { "task.sleep", function() task.sleep(0 / 0) end, "task.sleep: seconds must be a number >= 0" },
    { "task.gather", function() task.gather(print, 1) end, "task.gather: argument 2 must be a function" },
    { "task.race", function() task.race() end, "task.race: the arguments must be at least one function" },
    { "task.race", function() task.race("f") end, "task.race: argument 1 must be a function" },
    { "task.timeout", function() task.timeout("1", print) end, "task.timeout: seconds must be a number >= 0" },
    { "task.timeout", function() task.timeout(1, "f") end, "task.timeout: fn must be a function" },
    { "task.semaphore", function() task.semaphore("a") end, "task.semaphore: n must be an integer >= 0" },
    { "task.semaphore", function() task.semaphore(1.5) end, "task.semaphore: n must be an integer >= 0" },
    { "task.queue", function() task.queue(0) end, "task.queue: capacity must be an integer from 1 to 67108864" },
    { "task.queue", function() task.queue({}) end, "task.queue: capacity must be an integer from 1 to 67108864" },
    { "task.on_error", function() task.on_error(42) end, "task.on_error: the handler must be a function" },
    { "task.map", function() task.map(1, print) end, "task.map: items must be a table" },
    { "task.map", function() task.map({}, 1) end, "task.map: fn must be a function" },
    { "task.map", function() task.map({ 1 }, print, 5) end, "task.map: the options must be a table" },
    { "task.map", function() task.map({ 1 }, print, { limit = 0 }) end, "task.map: limit must be an integer >= 1" },
    -- task handles and the synchronisation objects, called with the wrong self
    { "task:join", function() h.join(42) end, "task:join: self must be a task" },
    { "task:result", function() h.result({}) end, "task:result: self must be a task" },
    { "task:cancel", function() h.cancel("h") end, "task:cancel: self must be a task" },
    { "task:status", function() h.status(ev) end, "task:status: self must be a task" },
    { "task:done", function() h.done() end, "task:done: self must be a task" },
    { "task:cancelled", function() h.cancelled(1) end, "task:cancelled: self must be a task" },
    { "event:set", function() ev.set(sem) end, "event:set: self must be an event" },
    { "event:wait", function() ev.wait({}) end, "event:wait: self must be an event" },
    { "event:clear", function() ev.clear() end, "event:clear: self must be an event" },
    { "event:is_set", function() ev.is_set(q) end, "event:is_set: self must be an event" },
    { "semaphore:acquire", function() sem.acquire(ev) end, "semaphore:acquire: self must be a semaphore" },
    { "semaphore:try_acquire", function() sem.try_acquire() end, "semaphore:try_acquire: self must be a semaphore" },
    { "semaphore:release", function() sem.release(q) end, "semaphore:release: self must be a semaphore" },
    { "semaphore:available", function() sem.available(1) end, "semaphore:available: self must be a semaphore" },
    { "queue:push", function() q.push(ev, 1) end, "queue:push: self must be a queue" },
    { "queue:push", function() q:push(nil) end, "queue:push: nil cannot be queued" },
    { "queue:try_push", function() q.try_push(sem, 1) end, "queue:try_push: self must be a queue" },
    { "queue:pop", function() q.pop({}) end, "queue:pop: self must be a queue" },
    { "queue:try_pop", function() q.try_pop(1) end, "queue:try_pop: self must be a queue" },
    { "queue:len", function() q.len() end, "queue:len: self must be a queue" },
    -- ah.http
    { "ah.http.request", function() ah.http.request("http://x") end, "ah.http.request: the options must be a table" },
    { "ah.http.request", function() ah.http.request {} end, "ah.http.request: url must be a string" },
    { "ah.http.request", function() ah.http.request { url = "http://127.0.0.1:1/", timeout = "5" } end,
      "ah.http.request: timeout must be a number" },
    { "ah.http.request", function() ah.http.request { url = "http://127.0.0.1:1/", max_body = -1 } end,
      "ah.http.request: max_body must be a number" },
    { "ah.http.get", function() ah.http.get(42) end, "ah.http.request: url must be a string" },
    { "ah.http.stream", function() ah.http.stream(42) end, "ah.http.stream: the options must be a table" },
    { "ah.http.configure", function() ah.http.configure(5) end, "ah.http.configure: the options must be a table" },
    { "ah.http.configure", function() ah.http.configure { start_batch = "x" } end,
      "ah.http.configure: start_batch must be an integer from 0 to 100000" },
    -- ah.store
    { "ah.store.open", function() ah.store.open(42) end, "ah.store.open: the path must be a string" },
    { "ah.store.open", function() ah.store.open("x.db", 5) end, "ah.store.open: the options must be a table" },
    { "ah.store.open", function() ah.store.open("x.db", { readers = "two" }) end,
      "ah.store.open: readers must be an integer from 0 to 64" },
    { "ah.store.open", function() ah.store.open("x.db", { busy_timeout = -1 }) end,
      "ah.store.open: busy_timeout must be a number from 0 to 3600" },
    { "ah.store.open", function() ah.store.open("x.db", { synchronous = "always" }) end,
      'ah.store.open: synchronous must be "normal" or "full"' },
    { "db:exec", function() db:exec(42) end, "db:exec: the SQL must be a string" },
    { "db:exec", function() db.exec(42, "select 1") end, "db:exec: call it as a method" },
    { "db:post", function() db:post({}) end, "db:post: the SQL must be a string" },
    { "db:query", function() db:query(nil) end, "db:query: the SQL must be a string" },
    { "db:first", function() db:first(1) end, "db:first: the SQL must be a string" },
    { "db:batch", function() db:batch("insert") end, "db:batch: expected an array" },
    { "db:stats", function() db.stats(1) end, "db:stats: self must be a database" },
    { "db:close", function() db.close("db") end, "db:close: self must be a database" },
    -- ah.proc
    { "ah.proc.run", function() ah.proc.run(42) end, "ah.proc.run: the options must be a table" },
    { "ah.proc.run", function() ah.proc.run { cmd = 42 } end, "ah.proc.run: cmd must be a non-empty string" },
    { "ah.proc.run", function() ah.proc.run { cmd = "true", timeout = "1" } end, "ah.proc.run: timeout must be" },
    { "ah.proc.run", function() ah.proc.run { cmd = "true", max_output = 0 } end, "ah.proc.run: max_output must be an integer >= 1" },
    { "ah.proc.spawn", function() ah.proc.spawn { cmd = "true", args = 1 } end, "ah.proc.spawn: args must be a list" },
    { "ah.proc.spawn", function() ah.proc.spawn { cmd = "true", max_line = 0 } end, "ah.proc.spawn: max_line must be" },
    { "process:write", function() proc:write({}) end, "process:write: the data must be a string" },
    { "process:read", function() proc:read("many") end, "process:read: n must be an integer >= 1" },
    { "process:kill", function() proc:kill("SIGNOPE") end, "process:kill: the signal must be" },
    { "process:wait", function() proc.wait(1) end, "process:wait: self must be a process" },
    -- ah.reload, ah.channel and the module's own functions
    { "ah.reload.watch", function() ah._reload.watch(42, print) end, "ah.reload.watch: dir must be a string" },
    { "ah.reload.watch", function() ah._reload.watch(".", 42) end, "ah.reload.watch: handler must be a function" },
    { "ah.reload.watch", function() ah._reload.watch(".", print, { debounce_ms = "x" }) end,
      "ah.reload.watch: debounce_ms must be an integer from 0 to 60000" },
    { "ah.reload.watch", function() ah._reload.watch(".", print, { poll = "yes" }) end,
      "ah.reload.watch: poll must be a boolean" },
    { "ah.reload.hash", function() ah._reload.hash({}) end, "ah.reload.hash: the text must be a string" },
    { "ah.channel", function() ah.channel(42) end, "ah.channel: name must be a non-empty string" },
    { "ah.log", function() ah.log("loud", "x") end, 'ah.log: level must be "debug", "info", "warn" or "error"' },
    { "ah.isatty", function() ah.isatty("stdout") end, "ah.isatty: fd must be an integer from 0 to 1048576" },
    { "ah.error.new", function() ah.error.new({}) end, "ah.error.new: kind must be a string" },
    { "ah.error.is", function() ah.error.is({}, 5) end, "ah.error.is: kind must be a string" },
    { "ah.step", function() ah.step("soon") end, "ah.step: the budget (seconds) must be a number from 0 to 3600" },
    { "parser:feed", function() ah.http.sse_parser():feed({}) end, "parser:feed: the chunk must be a string" },
    { "ah.http.request", function() ah.http.request { url = "http://127.0.0.1:1/", allow_private = "no" } end,
      "ah.http.request: allow_private must be a boolean" },
    { "ah.http.request", function() ah.http.request { url = "http://127.0.0.1:1/", headers = 1 } end,
      "ah.http.request: headers must be a table of name = value" },
    { "ah.proc.run", function() ah.proc.run { cmd = "true", truncate = 1 } end, "ah.proc.run: truncate must be a boolean" },
    { "ah.proc.spawn", function() ah.proc.spawn { cmd = "true", stdin = "file" } end,
      'ah.proc.spawn: stdin must be "pipe", "null" or "inherit"' },
    -- ah.pg (a pool connects on first use: none of these reach a server)
    { "ah.pg.pool", function() ah.pg.pool(5) end, "ah.pg.pool: expected a table of options" },
    { "ah.pg.pool", function() ah.pg.pool { size = 0 } end, "ah.pg.pool: size must be an integer from 1 to 10000" },
    { "ah.pg.pool", function() ah.pg.pool { timeout = "5" } end,
      "ah.pg.pool: timeout must be a number > 0 (or false for none)" },
    { "ah.pg.pool", function() ah.pg.pool { url = 5 } end, "ah.pg.pool: url must be a string" },
    { "ah.pg.pool", function() ah.pg.pool { prepare = "yes" } end, "ah.pg.pool: prepare must be a boolean" },
    { "ah.pg.connect", function() ah.pg.connect(42) end, "ah.pg.connect: url must be a string" },
    { "ah.pg.array", function() ah.pg.array(5) end, "ah.pg.array: expected a table (an array)" },
    { "ah.pg.ident", function() ah.pg.ident("") end, "ah.pg.ident: the name must be a non-empty string without NUL" },
    { "pg:query", function() pgpool:query(42) end, "pg:query: the SQL must be a string (or {sql, timeout = s})" },
    { "pg:query", function() pgpool:query { "SELECT 1", timeout = -1 } end,
      "pg:query: timeout must be a number > 0, or false for none" },
    { "pg:exec", function() pgpool:exec("BEGIN") end, "pg:exec: transaction control cannot run on the pool" },
    { "pg:transaction", function() pgpool:transaction("f") end, "pg:transaction: expected a function(tx)" },
    { "pg:transaction", function() pgpool:transaction(print, { retries = -1 }) end,
      "pg:transaction: retries must be an integer >= 0" },
    { "pg:listen", function() pgpool:listen("") end, "pg:listen: the channel must be a string of 1 to 63 bytes" },
    { "pg:notify", function() pgpool:notify(5) end, "pg:notify: the channel must be a non-empty string" },
    { "pg:batch", function() pgpool:batch(5) end, "pg:batch: expected an array of {sql, params...}" },
    { "pg:pipeline", function() pgpool:pipeline { "SELECT 1" } end, "pg:pipeline: entry 1 must be {sql, params...}" },
    { "pg:copy", function() pgpool:copy("SELECT 1", {}) end,
      "pg:copy: the SQL must be a COPY ... FROM STDIN statement" },
  }
end

describe("argument errors", function()
  it("every public function raises invalid_argument, at the caller, as 'fn: what must be what'", function()
    local dir = os.tmpname()
    os.remove(dir)
    assert(os.execute("mkdir -p " .. dir))
    task.run(function()
      local db = ah.store.open(dir .. "/args.db")
      local p = ah.proc.spawn { cmd = "cat" }
      -- Every case is checked and every mismatch listed, so one run shows
      -- them all.
      local n, wrong = 0, {}
      for _, c in ipairs(cases(db, p)) do
        local name, call, want = c[1], c[2], c[3]
        local ok, err = pcall(call)
        local msg = type(err) == "table" and tostring(err.message) or tostring(err)
        if ok then
          wrong[#wrong + 1] = name .. " accepted a bad argument"
        elseif not ah.error.is(err, "invalid_argument") or err.retryable ~= false
            or not msg:find("args_spec.lua:%d+: ") or not msg:find(want, 1, true) then
          wrong[#wrong + 1] = name .. " raised " .. tostring(err) .. "\n    want: " .. want
        end
        n = n + 1
      end
      assert.equal("", table.concat(wrong, "\n"))
      assert.is_true(n >= 80, n .. " cases")
      p:close()
      db:close()
    end)
    os.execute("rm -rf " .. dir)
  end)

  it("task.run refuses a main that is not a function the same way, outside any task", function()
    local ok, err = pcall(task.run, 42)
    assert.is_false(ok)
    assert.is_true(ah.error.is(err, "invalid_argument"))
    assert.matches("^.-args_spec.lua:%d+: task.run: fn must be a function$", err.message)
  end)

  it("out of range is refused the same way as the wrong type", function()
    local a = select(2, pcall(task.semaphore, -1))
    local b = select(2, pcall(task.semaphore, "x"))
    assert.equal(a.kind, b.kind)
    assert.equal(a.message:gsub("^.-:%d+: ", ""), (b.message:gsub("^.-:%d+: ", "")))
  end)

  it("ah.error.raise puts the caller's position in front of the message", function()
    local ok, err = pcall(ah.error.raise, "invalid_argument", "f: x must be y", { field = 1 })
    assert.is_false(ok)
    assert.is_true(ah.error.is(err, "invalid_argument"))
    assert.matches("^.-args_spec.lua:%d+: f: x must be y$", err.message)
    assert.equal(1, err.field)
  end)
end)
