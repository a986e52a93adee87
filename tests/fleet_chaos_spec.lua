-- The fleet under kill -9: 3 worker processes (the worker of scripts/examples/fleet_demo.lua)
-- share 1,000 runs of 3 steps on a throwaway PostgreSQL; each step records
-- its execution in a side table before its checkpoint.  Two workers are
-- killed with SIGKILL while they hold runs in flight (each replaced by a
-- new process).  Then every run has finished once with the right result,
-- no step whose checkpoint committed ran again, a step in flight at a kill
-- ran again only in a run the killed worker held, and another worker took
-- those runs only after their leases had expired.  Waits are bounded and
-- synchronised on the database's state; nothing is timed.
local ah = require "agenthost"
local pgs = require "support.pg"
local sf = require "support.fleet"
local task = ah.task

local N, LEASE, CONC, STEP_MS = 1000, 6, 20, 60

describe("fleet under kill -9", function()
  local srv
  setup(function() srv = pgs.start() end)
  teardown(function() if srv then srv:stop() end end)

  it("finishes every run exactly once, never re-runs a committed step, and re-runs " ..
     "an in-flight step only after the lease expired", function()
    task.run(function()
      local fleet = ah.fleet.open { db = srv.url, name = "chaos" }
      local db = fleet.db
      db:exec([[CREATE TABLE step_log (id bigserial PRIMARY KEY, run_id bigint NOT NULL,
        step integer NOT NULL, token bigint NOT NULL, pid integer NOT NULL, key text NOT NULL,
        at timestamptz NOT NULL DEFAULT clock_timestamp())]])
      local procs = {}
      local function start_worker()
        return sf.start_worker(procs, { "scripts/examples/fleet_demo.lua", "worker", srv.url,
          tostring(CONC), tostring(LEASE), tostring(STEP_MS), "chaos" })
      end
      local function wait_until(what, limit, fn) return sf.wait_until(what, limit, fn, procs) end
      local ok, err = pcall(function()
        for _ = 1, 3 do start_worker() end
        local items = {}
        for i = 1, N do items[i] = i end
        task.map(items, function(i)
          return fleet:submit("triage", { i = i }, { key = "chaos-" .. i })
        end, { limit = 16 })

        local function done()
          return db:first("SELECT count(*) AS n FROM fleet_chaos.runs WHERE state = 'done'").n
        end
        local held_sql = [[
          SELECT r.id, r.token, extract(epoch FROM r.lease_until)::float8 AS lease_until
          FROM fleet_chaos.runs r JOIN fleet_chaos.workers w ON w.id = r.worker
          WHERE r.state = 'running' AND w.pid = $1::integer]]
        local kills = {}
        local function kill_when(min_done, victim)
          wait_until(min_done .. " runs done and runs in flight on worker " .. victim.pid,
            300, function()
              return done() >= min_done and #db:query(held_sql, victim.pid) >= 5
            end)
          victim.p:kill("KILL")
          local st = victim.p:wait()
          assert.equal(9, st.signal)
          -- What it held when it died: its leases are final now.
          local held = db:query(held_sql, victim.pid)
          assert.is_true(#held >= 1)
          kills[#kills + 1] = { pid = victim.pid, held = held }
          start_worker()
        end
        kill_when(100, procs[1])
        kill_when(400, procs[2])
        local remaining = N - done()
        assert.is_true(remaining > 0, "the second kill came after the last run")
        -- Everything finishes: the killed workers' runs come back once
        -- their leases expire; the bound is the lease plus a generous margin.
        wait_until("every run done", LEASE + 240, function() return done() == N end)

        -- Exactly once: one run per key, every one done with the sum of its steps.
        local r = db:first([[SELECT count(*) AS runs, count(*) FILTER (WHERE state = 'done'
          AND result = '6'::jsonb) AS good, count(DISTINCT key) AS keys FROM fleet_chaos.runs]])
        assert.same({ runs = N, good = N, keys = N }, { runs = r.runs, good = r.good, keys = r.keys })
        assert.equal(3 * N, db:first("SELECT count(*) AS n FROM fleet_chaos.steps").n)
        -- No step whose checkpoint committed ran again (by a later claim).
        assert.equal(0, db:first([[SELECT count(*) AS n FROM step_log e
          JOIN fleet_chaos.steps s ON s.run_id = e.run_id AND s.name = 's' || e.step
          WHERE e.token > s.token]]).n)
        -- Each claim ran a step at most once, and every checkpoint was made by
        -- the claim that ran it, under the idempotency key run.id:name.
        assert.equal(0, db:first([[SELECT count(*) AS n FROM (SELECT 1 FROM step_log
          GROUP BY run_id, step, token HAVING count(*) > 1) d]]).n)
        assert.equal(0, db:first([[SELECT count(*) AS n FROM fleet_chaos.steps s
          WHERE NOT EXISTS (SELECT 1 FROM step_log e WHERE e.run_id = s.run_id
            AND 's' || e.step = s.name AND e.token = s.token)]]).n)
        assert.equal(0, db:first([[SELECT count(*) AS n FROM step_log
          WHERE key <> run_id || ':s' || step]]).n)

        -- A step ran again only in a run that a killed worker held, at most
        -- once more per kill that held it, and by a later claim only after
        -- the killed worker's lease had expired.
        local held_by = {}
        for _, k in ipairs(kills) do
          for _, h in ipairs(k.held) do
            held_by[h.id] = (held_by[h.id] or 0) + 1
            local first = db:first([[SELECT extract(epoch FROM min(at))::float8 AS at
              FROM step_log WHERE run_id = $1::bigint AND token > $2::bigint]], h.id, h.token)
            if first and first.at ~= ah.null and first.at ~= nil then
              assert.is_true(first.at >= h.lease_until, string.format(
                "run %d was taken up at %.3f, before its lease expired at %.3f",
                h.id, first.at, h.lease_until))
            end
            local again = db:first("SELECT token FROM fleet_chaos.runs WHERE id = $1::bigint", h.id)
            assert.is_true(again.token > h.token, "run " .. h.id .. " was not claimed again")
          end
        end
        local reruns = db:query([[SELECT run_id, step, count(*) AS n FROM step_log
          GROUP BY run_id, step HAVING count(*) > 1]])
        for _, x in ipairs(reruns) do
          assert.is_true(held_by[x.run_id] ~= nil,
            "step " .. x.step .. " of run " .. x.run_id .. " ran twice, but no killed worker held it")
          assert.is_true(x.n <= 1 + held_by[x.run_id],
            "step " .. x.step .. " of run " .. x.run_id .. " ran " .. x.n .. " times")
        end
        -- The killed workers left; the living ones are seen alive.
        local rep = fleet:report()
        local alive = 0
        for _, w in ipairs(rep.workers) do if w.alive then alive = alive + 1 end end
        assert.is_true(alive >= 3)
      end)
      sf.stop_workers(procs)
      fleet:close()
      if not ok then error(err, 0) end
    end)
  end)
end)
