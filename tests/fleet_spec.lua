-- ah.fleet on a throwaway PostgreSQL: submitting (idempotency keys,
-- transactions), serving (checkpointed steps, retries and dead letters,
-- cancellation reaching the task, events, durable sleeps, priorities,
-- delays, fleet-wide limits, graceful stop, SIGTERM, fencing after a lost
-- lease), reading (status, list, wait) and `agenthost fleet status`.
-- Workers run in this process (a second fleet object serving in a task)
-- unless a process is the point; every wait is bounded and synchronised on
-- an event or the database's state.
local ah = require "agenthost"
local pgs = require "support.pg"
local sf = require "support.fleet"
local task = ah.task

local BIN = sf.BIN

local srv
local names = 0

-- A fresh fleet (its own schema) for each test, and a worker on it.
local function new_fleet()
  names = names + 1
  local name = "t" .. names
  return ah.fleet.open { db = srv.url, name = name, poll = 0.2 }, name
end

local function serve(name, opts)
  local f = ah.fleet.open { db = srv.url, name = name, poll = 0.2 }
  opts.quiet = true
  local t = task.spawn(function() return f:serve(opts) end)
  while not f.worker do task.sleep(0.005) end
  return f, t
end

local function stop(f, t)
  f:stop()
  local r = t:join()
  f:close()
  return r
end

local wait_until = sf.wait_until

local function run(fn)
  return task.run(fn)
end

local function err_of(fn, ...)
  local ok, e = pcall(fn, ...)
  assert.is_false(ok, "expected an error")
  return e
end

describe("ah.fleet", function()
  setup(function() srv = pgs.start() end)
  teardown(function() if srv then srv:stop() end end)

  describe("open and submit", function()
    it("refuses bad names and options with invalid_argument", function()
      run(function()
        for _, o in ipairs {
          { db = srv.url, name = "Bad-Name" }, { db = srv.url, name = "" }, { db = 42 },
          { db = srv.url, schema = "x;drop" }, { db = srv.url, poll = 0 },
        } do
          local e = err_of(ah.fleet.open, o)
          assert.equal("invalid_argument", e.kind)
          assert.matches("ah.fleet.open", e.message)
        end
        assert.equal("invalid_argument", err_of(ah.fleet.open, "x").kind)
      end)
    end)

    it("creates its tables once, whoever opens it first", function()
      run(function()
        local fs = task.map({ 1, 2, 3, 4 }, function()
          return ah.fleet.open { db = srv.url, name = "racing" }
        end)
        local n = fs[1].db:first([[SELECT count(*) AS n FROM information_schema.tables
          WHERE table_schema = 'fleet_racing']]).n
        assert.equal(6, n)
        assert.equal(1, fs[1].db:first("SELECT count(*) AS n FROM fleet_racing.meta").n)
        for _, f in ipairs(fs) do f:close() end
      end)
    end)

    it("returns the same run for the same key, and checks its arguments", function()
      run(function()
        local f = new_fleet()
        local a = f:submit("k", { x = 1 }, { key = "same" })
        local b = f:submit("k", { x = 2 }, { key = "same" })
        local c = f:submit("k", { x = 3 })
        assert.equal(a, b)
        assert.are_not.equal(a, c)
        assert.same({ x = 1 }, f:status(a).input)
        -- Concurrent submitters of one key get one run.
        local ids = task.map({ 1, 2, 3, 4, 5, 6, 7, 8 }, function()
          return f:submit("k", {}, { key = "burst" })
        end)
        for i = 2, #ids do assert.equal(ids[1], ids[i]) end
        for _, bad in ipairs {
          { "", {} }, { "k", {}, { key = "" } }, { "k", {}, { delay = -1 } },
          { "k", {}, { priority = 1.5 } }, { "k", {}, { max_attempts = 0 } },
          { "k", { f = print } }, { "k", {}, "opts" },
        } do
          local e = err_of(f.submit, f, table.unpack(bad, 1, 3))
          assert.equal("invalid_argument", e.kind)
          assert.matches("fleet:submit", e.message)
        end
        local e = err_of(f.submit, f, "k", string.rep("x", ah.fleet.MAX_VALUE))
        assert.equal("too_large", e.kind)
        assert.matches("fleet:submit: the input is %d+ bytes of JSON", e.message)
        f:close()
      end)
    end)

    it("submits inside the caller's transaction: the run exists iff it commits", function()
      run(function()
        local f = new_fleet()
        local id
        local e = err_of(f.db.transaction, f.db, function(tx)
          id = f:submit("k", {}, { tx = tx, key = "tx-1" })
          error(ah.error.new("invalid_argument", "changed my mind"))
        end)
        assert.matches("changed my mind", tostring(e))
        assert.is_nil(f:status(id))
        f.db:transaction(function(tx) id = f:submit("k", {}, { tx = tx, key = "tx-1" }) end)
        assert.equal("queued", f:status(id).state)
        f:close()
      end)
    end)
  end)

  describe("serve", function()
    it("runs a handler's steps once each, passes the idempotency key, and stores the result", function()
      run(function()
        local f, name = new_fleet()
        local keys = {}
        local w, t = serve(name, { handlers = { job = function(r, input)
          local a = r:step("add", function(x, key) keys[#keys + 1] = key return x + 1 end, input.n)
          local b = r:step("add", function(x, key) keys[#keys + 1] = key return x * 10, "two" end, a)
          local nothing = r:step("nil", function() return nil end)
          return { a = a, b = b, nothing = nothing == nil, int = math.type(a), nint = math.type(input.n) }
        end } })
        local id = f:submit("job", { n = 4 })
        local res = f:wait(id, { timeout = 30 })
        assert.same({ a = 5, b = 50, nothing = true, int = "integer", nint = "integer" }, res)
        assert.equal("integer", math.type(res.a))
        assert.same({ id .. ":add", id .. ":add#2" }, keys)
        local steps = f:steps(id)
        assert.equal(3, #steps)
        assert.same({ "add", "add#2", "nil" }, { steps[1].name, steps[2].name, steps[3].name })
        assert.same({ 50, "two" }, steps[2].output)
        local st = f:status(id)
        assert.equal("done", st.state)
        assert.equal(1, st.attempts)
        assert.is_nil(st.worker)
        stop(w, t)
        f:close()
      end)
    end)

    it("keeps every number's type and digits through inputs, steps and results", function()
      run(function()
        local f, name = new_fleet()
        local v = { id = 1234567890123456789, big = 9007199254740993, tokens = 71, whole = 71.0,
                    f = 0.1 + 0.2 }
        local seen
        local w, t = serve(name, { handlers = { job = function(r, input)
          seen = input
          return r:step("echo", function(x) return x end, input)
        end } })
        local res = f:wait(f:submit("job", v), { timeout = 30 })
        for k, want in pairs(v) do
          for what, got in pairs { input = seen, result = res } do
            assert.equal(want, got[k], what .. "." .. k)
            assert.equal(math.type(want), math.type(got[k]), what .. "." .. k)
          end
        end
        stop(w, t)
        f:close()
      end)
    end)

    it("retries a failed attempt with backoff, without re-running the steps it committed", function()
      run(function()
        local f, name = new_fleet()
        local calls = { first = 0, second = 0 }
        local w, t = serve(name, { handlers = { flaky = { function(r)
          r:step("first", function() calls.first = calls.first + 1 return 1 end)
          if r.attempt < 3 then error("attempt " .. r.attempt .. " fails") end
          r:step("second", function() calls.second = calls.second + 1 return 2 end)
          return r.attempt
        end, backoff = { base = 0.05, max = 0.1 } } } })
        local id = f:submit("flaky", {})
        assert.equal(3, f:wait(id, { timeout = 30 }))
        assert.same({ first = 1, second = 1 }, calls)
        local st = f:status(id)
        assert.equal(3, st.attempts)
        assert.matches("attempt 2 fails", st.error.message)
        stop(w, t)
        f:close()
      end)
    end)

    it("dead-letters a run after max_attempts, and fails one at once on retryable = false", function()
      run(function()
        local f, name = new_fleet()
        local w, t = serve(name, { handlers = {
          always = { function() error(ah.error.new("http", "upstream down", { retryable = true })) end,
                     backoff = { base = 0.02, max = 0.05 } },
          never = function() error(ah.error.new("invalid_argument", "bad ticket", { retryable = false })) end,
        } })
        local dead = f:submit("always", {}, { max_attempts = 3 })
        local failed = f:submit("never", {}, { max_attempts = 3 })
        local e = err_of(f.wait, f, dead, { timeout = 30 })
        assert.equal("run_failed", e.kind)
        assert.equal("dead", e.state)
        assert.equal("http", e.cause.kind)
        assert.matches("upstream down", e.message)
        assert.equal(3, f:status(dead).attempts)
        e = err_of(f.wait, f, failed, { timeout = 30 })
        assert.equal("failed", e.state)
        assert.equal(1, f:status(failed).attempts)
        assert.equal(1, #f:list { state = "dead" })
        assert.equal(1, #f:list { state = "failed", kind = "never" })
        stop(w, t)
        f:close()
      end)
    end)

    it("cancels a queued run at once and a running one through its task", function()
      run(function()
        local f, name = new_fleet()
        local started, unwound = task.event(), false
        local w, t = serve(name, { handlers = { slow = function(r)
          r:step("one", function() return 1 end)
          started:set()
          local ok, e = pcall(task.sleep, 600)
          unwound = not ok and ah.error.is(e, "cancelled")
          error(e, 0)
        end } })
        local queued = f:submit("other", {})
        assert.equal("cancelled", f:cancel(queued))
        assert.equal("run_cancelled", err_of(f.wait, f, queued, { timeout = 5 }).kind)
        local id = f:submit("slow", {})
        task.timeout(30, started.wait, started)
        assert.equal("running", f:cancel(id))
        local e = err_of(f.wait, f, id, { timeout = 30 })
        assert.equal("run_cancelled", e.kind)
        assert.is_true(unwound)
        assert.is_nil(f:cancel(id))
        wait_until("the worker idle", 30, function() return w:worker_stats().active == 0 end)
        stop(w, t)
        f:close()
      end)
    end)

    it("ends a run cancelled whose handler swallowed its cancellation, once its lease lapses", function()
      run(function()
        local f, name = new_fleet()
        local started, unstick, swallowed = task.event(), task.event(), false
        local w, t = serve(name, { lease = 1, heartbeat = 0.1, handlers = { stubborn = function()
          started:set()
          local ok = pcall(task.sleep, 600)
          swallowed = not ok
          unstick:wait()
          return "finished anyway"
        end } })
        local id = f:submit("stubborn", {})
        task.timeout(30, started.wait, started)
        assert.equal("running", f:cancel(id))
        assert.equal("run_cancelled", err_of(f.wait, f, id, { timeout = 60 }).kind)
        assert.is_true(swallowed)
        -- The handler ends after all: nothing it returns changes the run.
        unstick:set()
        wait_until("the worker idle", 30, function() return w:worker_stats().active == 0 end)
        assert.equal("cancelled", f:status(id).state)
        stop(w, t)
        f:close()
      end)
    end)

    it("delivers events to a run waiting on this worker, and keeps them as checkpoints", function()
      run(function()
        local f, name = new_fleet()
        local waiting = task.event()
        local w, t = serve(name, { park_after = 60, handlers = { ask = function(r)
          waiting:set()
          local ok = r:wait_event("approval", { timeout = 60 })
          local late, err = r:wait_event("never", { timeout = 0.2 })
          return { ok = ok, late = late == nil, err = err and err.kind }
        end } })
        local id = f:submit("ask", {})
        task.timeout(30, waiting.wait, waiting)
        f:send(id, "approval", { yes = true })
        assert.same({ ok = { yes = true }, late = true, err = "timeout" }, f:wait(id, { timeout = 30 }))
        local names_ = {}
        for _, s in ipairs(f:steps(id)) do names_[#names_ + 1] = s.name end
        table.sort(names_)
        assert.same({ "@event:approval", "@event:approval:deadline", "@event:never",
                      "@event:never:deadline" }, names_)
        assert.equal("invalid_argument", err_of(f.send, f, id, "approval", {}).kind)
        assert.equal("not_found", err_of(f.send, f, 999999, "approval", {}).kind)
        stop(w, t)
        f:close()
      end)
    end)

    it("parks a long event wait or sleep and resumes it on an event or at its time", function()
      run(function()
        local f, name = new_fleet()
        local before = 0
        local w, t = serve(name, { park_after = 0.05, handlers = { park = function(r, input)
          r:step("before", function() before = before + 1 return true end)
          if input.sleep then r:sleep(input.sleep) return "slept" end
          return r:wait_event("go", { timeout = 3600 })
        end } })
        local ev = f:submit("park", {})
        wait_until("the run parked", 30, function() return f:status(ev).state == "waiting" end)
        assert.equal("go", f:status(ev).waiting_for)
        assert.is_nil(f:status(ev).worker)
        f:send(ev, "go", "went")
        assert.equal("went", f:wait(ev, { timeout = 30 }))
        local sl = f:submit("park", { sleep = 0.3 })
        wait_until("the sleep parked", 30, function() return f:status(sl).state == "waiting" end)
        assert.equal("slept", f:wait(sl, { timeout = 30 }))
        assert.equal(2, before)
        -- A parked run gave its attempt back.
        assert.equal(1, f:status(ev).attempts)
        assert.equal(1, f:status(sl).attempts)
        stop(w, t)
        f:close()
      end)
    end)

    it("takes higher priorities first and no run before its delay", function()
      run(function()
        local f, name = new_fleet()
        local low = f:submit("p", { n = "low" }, { priority = -1 })
        local mid = f:submit("p", { n = "mid" })
        local high = f:submit("p", { n = "high" }, { priority = 5 })
        local later = f:submit("p", { n = "later" }, { priority = 9, delay = 3600 })
        local order = {}
        local w, t = serve(name, { concurrency = 1, batch = 1, handlers = { p = function(_, input)
          order[#order + 1] = input.n
        end } })
        for _, id in ipairs { low, mid, high } do f:wait(id, { timeout = 30 }) end
        assert.same({ "high", "mid", "low" }, order)
        -- Due in an hour: not taken, though it has the highest priority.
        local st = f:status(later)
        assert.equal("queued", st.state)
        assert.is_nil(st.started_at)
        assert.is_true(st.run_at > st.created_at + 3000)
        -- An operator brings it forward with SQL; the next poll takes it.
        f.db:exec("UPDATE " .. '"fleet_' .. name .. '"' .. ".runs SET run_at = now() WHERE id = $1::bigint", later)
        f:wait(later, { timeout = 30 })
        assert.same({ "high", "mid", "low", "later" }, order)
        stop(w, t)
        f:close()
      end)
    end)

    it("holds a kind's limit across workers", function()
      run(function()
        local f, name = new_fleet()
        f:limit("lim", 2)
        local now, peak = 0, 0
        local h = function()
          now = now + 1
          peak = math.max(peak, now)
          task.sleep(0.05)
          now = now - 1
        end
        local ids = {}
        for i = 1, 12 do ids[i] = f:submit("lim", {}) end
        local w1, t1 = serve(name, { concurrency = 10, handlers = { lim = h } })
        local w2, t2 = serve(name, { concurrency = 10, handlers = { lim = h } })
        for _, id in ipairs(ids) do f:wait(id, { timeout = 60 }) end
        assert.equal(2, peak)
        assert.equal("invalid_argument", err_of(f.limit, f, "lim", -1).kind)
        stop(w1, t1)
        stop(w2, t2)
        f:close()
      end)
    end)

    it("stops gracefully: claims no more, and releases what it holds with the attempt given back", function()
      run(function()
        local f, name = new_fleet()
        local started = task.event()
        local w, t = serve(name, { handlers = { slow = function(r)
          r:step("one", function() return 1 end)
          started:set()
          task.sleep(600)
        end } })
        local id = f:submit("slow", {})
        task.timeout(30, started.wait, started)
        w:stop { grace = 0.05 }
        local res = t:join()
        w:close()
        assert.equal(1, res.finished)
        local st = f:status(id)
        assert.equal("queued", st.state)
        assert.equal(0, st.attempts)
        -- Another worker finishes it from its checkpoint.
        local w2, t2 = serve(name, { handlers = { slow = function(r)
          return r:step("one", function() error("not again") end) + 1
        end } })
        assert.equal(2, f:wait(id, { timeout = 30 }))
        stop(w2, t2)
        f:close()
      end)
    end)

    it("fences a worker that lost its lease: its step is not stored and its task stops", function()
      run(function()
        local f, name = new_fleet()
        local started, resume = task.event(), task.event()
        local outcome
        local w, t = serve(name, { lease = 5, heartbeat = 0.2, handlers = { fenced = function(r)
          started:set()
          resume:wait()
          local ok, e = pcall(r.step, r, "late", function() return 1 end)
          outcome = ok and "stored" or e.kind
          error(e, 0)
        end } })
        local id = f:submit("fenced", {})
        task.timeout(30, started.wait, started)
        -- Another claim takes the run (as a sweep and a claim elsewhere would).
        f.db:exec("UPDATE " .. '"fleet_' .. name .. '"' .. ".runs SET token = token + 1 WHERE id = $1::bigint", id)
        resume:set()
        wait_until("the handler's outcome", 30, function() return outcome end)
        assert.equal("lease_lost", outcome)
        assert.equal(0, #f:steps(id))
        assert.equal("running", f:status(id).state)
        stop(w, t)
        f:close()
      end)
    end)

    it("cancels the task of a run taken away, at the next heartbeat", function()
      run(function()
        local f, name = new_fleet()
        local started, ended = task.event(), nil
        local w, t = serve(name, { lease = 5, heartbeat = 0.1, handlers = { held = function()
          started:set()
          local ok, e = pcall(task.sleep, 600)
          ended = ok and "slept" or e.kind
        end } })
        local id = f:submit("held", {})
        task.timeout(30, started.wait, started)
        -- Taken by another worker with the same token (as after a claim lost
        -- in a server crash): the worker id fences it off too.
        f.db:exec("UPDATE " .. '"fleet_' .. name .. '"' .. ".runs SET worker = 'elsewhere' WHERE id = $1::bigint", id)
        wait_until("the handler cancelled", 30, function() return ended end)
        assert.equal("cancelled", ended)
        stop(w, t)
        f:close()
      end)
    end)

    it("checks its options", function()
      run(function()
        local f = new_fleet()
        for _, o in ipairs {
          {}, { handlers = {} }, { handlers = { x = 1 } }, { handlers = { x = print }, concurrency = 0 },
          { handlers = { x = print }, lease = 1, heartbeat = 2 }, { handlers = { x = { print, limit = -1 } } },
        } do
          local e = err_of(f.serve, f, o)
          assert.equal("invalid_argument", e.kind)
          assert.matches("fleet:serve", e.message)
        end
        f:close()
      end)
    end)
  end)

  describe("worker processes", function()
    it("releases its runs at once on SIGTERM, and another worker resumes them", function()
      run(function()
        local f, name = new_fleet()
        f.db:exec([[CREATE TABLE IF NOT EXISTS step_log (id bigserial PRIMARY KEY, run_id bigint,
          step integer, token bigint, pid integer, key text, at timestamptz DEFAULT clock_timestamp())]])
        local procs = {}
        local p = sf.start_worker(procs, { "scripts/examples/fleet_demo.lua", "worker", srv.url,
          "10", "300", "400", name }).p
        local ids = {}
        for i = 1, 5 do ids[i] = f:submit("triage", {}) end
        wait_until("the worker holds 5 runs", 30, function()
          return #f:list { state = "running" } == 5
        end)
        p:kill("TERM")
        local st = p:wait()
        assert.equal(143, st.code or 128 + (st.signal or 0))
        -- Released with a lease of 300 s still to go: queued again, attempt back.
        for _, id in ipairs(ids) do
          local s = f:status(id)
          assert.equal("queued", s.state)
          assert.equal(0, s.attempts)
        end
        local w, t = serve(name, { handlers = { triage = function(r)
          local sum = 0
          for i = 1, 3 do sum = sum + r:step("s" .. i, function() return i end) end
          return sum
        end } })
        for _, id in ipairs(ids) do assert.equal(6, f:wait(id, { timeout = 30 })) end
        stop(w, t)
        f:close()
      end)
    end)
  end)

  describe("reading", function()
    it("status, list and wait on what does not exist", function()
      run(function()
        local f = new_fleet()
        assert.is_nil(f:status(424242))
        assert.equal("not_found", err_of(f.wait, f, 424242, { timeout = 1 }).kind)
        local id = f:submit("nobody", {})
        assert.equal("timeout", err_of(f.wait, f, id, { timeout = 0.1 }).kind)
        assert.equal("invalid_argument", err_of(f.status, f, "1").kind)
        assert.equal("invalid_argument", err_of(f.list, f, { limit = 0 }).kind)
        local page = f:list { after = 0, limit = 1 }
        assert.equal(1, #page)
        assert.equal(0, #f:list { after = page[1].id })
        f:close()
      end)
    end)

    it("agenthost fleet status prints the queue, the runs by state and the workers", function()
      run(function()
        local f, name = new_fleet()
        f:submit("shown", {})
        f:submit("shown", {}, { delay = 3600 })
        local w, t = serve(name, { handlers = { other = function() end } })
        local r = ah.proc.run { cmd = BIN, args = { "fleet", "status", srv.url, "--name", name },
                                timeout = 60 }
        assert.equal(0, r.code, r.stderr)
        assert.matches("queue: 1 due now, 1 delayed, 0 parked", r.stdout)
        assert.matches("runs: queued 2, running 0", r.stdout)
        assert.matches("workers: 1 alive of 1 registered", r.stdout)
        assert.matches(w:worker_stats().id:gsub("%p", "%%%0"), r.stdout)
        r = ah.proc.run { cmd = BIN, args = { "fleet", "status", srv.url, "--name", name, "--json" },
                          timeout = 60 }
        assert.equal(0, r.code)
        assert.equal(2, require("agenthost").json.decode(r.stdout).states.queued)
        r = ah.proc.run { cmd = BIN, args = { "fleet", "status", srv.url, "--name", "nosuchfleet" },
                          timeout = 60 }
        assert.equal(1, r.code)
        assert.matches("agenthost fleet:", r.stderr)
        r = ah.proc.run { cmd = BIN, args = { "fleet", "frobnicate" }, timeout = 60 }
        assert.equal(2, r.code)
        stop(w, t)
        f:close()
      end)
    end)
  end)
end)
