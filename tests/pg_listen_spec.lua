-- ah.pg LISTEN/NOTIFY against a real throwaway server: delivery with
-- payload and sender, timeouts, fan-out to every listener of a channel,
-- order and no loss under a burst, transactional notifications, the
-- listening connection lost and replaced ("missed" once, then delivery
-- again), and UNLISTEN when the last listener of a channel closes.

local ah = require "agenthost"
local pgs = require "support.pg"
local task = ah.task

local srv
setup(function() srv = pgs.start() end)
teardown(function() if srv then srv:stop() end end)

local function run(fn) return task.run(fn) end

describe("ah.pg listen", function()
  it("delivers a notification with its payload and the sender's pid; recv times out with nil", function()
    run(function()
      local db = ah.pg.pool { url = srv.url, size = 2 }
      local l = db:listen("jobs")
      assert.is_nil(l:recv(0.05))
      local pid
      task.spawn(function()
        pid = db:first("SELECT pg_backend_pid() AS p").p
        db:notify("jobs", "job 42")
      end)
      local n = l:recv(5)
      assert.equal("jobs", n.channel)
      assert.equal("job 42", n.payload)
      assert.equal("integer", math.type(n.pid))
      assert.is_true(n.pid > 0)
      db:notify("jobs")
      assert.equal("", l:recv(5).payload)
      -- odd channel names are quoted identifiers, never spliced
      local odd = db:listen('we"ird; DROP TABLE x')
      db:notify('we"ird; DROP TABLE x', "ok")
      assert.equal("ok", odd:recv(5).payload)
      odd:close()
      l:close()
      db:close()
    end)
  end)

  it("gives every listener of a channel each notification, and nothing of other channels", function()
    run(function()
      local db = ah.pg.pool { url = srv.url, size = 2 }
      local a, b, c = db:listen("fan"), db:listen("fan"), db:listen("other")
      db:notify("fan", "1")
      db:notify("other", "x")
      db:notify("fan", "2")
      assert.same({ "1", "2" }, { a:recv(5).payload, a:recv(5).payload })
      assert.same({ "1", "2" }, { b:recv(5).payload, b:recv(5).payload })
      assert.equal("x", c:recv(5).payload)
      assert.is_nil(c:recv(0.05))
      a:close()
      db:notify("fan", "3")
      assert.equal("3", b:recv(5).payload)
      b:close()
      c:close()
      db:close()
    end)
  end)

  it("keeps the order of a burst and loses nothing while nobody receives", function()
    run(function()
      local db = ah.pg.pool { url = srv.url, size = 4 }
      local l = db:listen("burst")
      db:exec("SELECT pg_notify('burst', g::text) FROM generate_series(1, 2000) g")
      for i = 1, 2000 do assert.equal(tostring(i), l:recv(5).payload) end
      -- concurrent senders: all arrive
      local items = {}
      for i = 1, 500 do items[i] = i end
      task.map(items, function(i) db:notify("burst", tostring(i)) end, { limit = 32 })
      local seen = {}
      for _ = 1, 500 do seen[tonumber(l:recv(5).payload)] = true end
      for i = 1, 500 do assert.is_true(seen[i], "lost " .. i) end
      -- a generic for loop receives too
      db:notify("burst", "last")
      for n in l do
        assert.equal("last", n.payload)
        break
      end
      l:close()
      db:close()
    end)
  end)

  it("delivers notifications of a transaction at commit, and none when it rolls back", function()
    run(function()
      local db = ah.pg.pool { url = srv.url, size = 2 }
      local l = db:listen("tx")
      local sent = task.event()
      local committed = task.event()
      local t = task.spawn(function()
        db:transaction(function(tx)
          tx:notify("tx", "in tx")
          sent:set()
          committed:wait()
        end)
      end)
      sent:wait()
      assert.is_nil(l:recv(0.1))
      committed:set()
      t:join()
      assert.equal("in tx", l:recv(5).payload)
      pcall(db.transaction, db, function(tx)
        tx:notify("tx", "rolled back")
        error("no")
      end)
      db:notify("tx", "after")
      assert.equal("after", l:recv(5).payload)
      l:close()
      db:close()
    end)
  end)

  it("replaces a lost listening connection: recv says missed once, then delivers again", function()
    run(function()
      local db = ah.pg.pool { url = srv.url, size = 2, application_name = "listentest" }
      local l = db:listen("lost")
      local l2 = db:listen("lost2")
      db:notify("lost", "before")
      assert.equal("before", l:recv(5).payload)
      local admin = ah.pg.pool { url = srv.url, size = 1 }
      local killed = admin:first("SELECT count(pg_terminate_backend(pid)) AS n FROM pg_stat_activity " ..
        "WHERE application_name = 'listentest' AND query LIKE 'LISTEN%'").n
      assert.equal(1, killed)
      local n = l:recv(10)
      assert.is_true(n.missed, "expected the missed marker, got " .. require("agenthost").json.encode(n))
      assert.equal("lost", n.channel)
      db:notify("lost", "after")
      db:notify("lost2", "after2")
      assert.equal("after", l:recv(10).payload)
      -- the other listener was moved too, and says missed first
      assert.is_true(l2:recv(10).missed)
      assert.equal("after2", l2:recv(10).payload)
      assert.equal(1, db:stats().relistens)
      l:close()
      l2:close()
      admin:close()
      db:close()
    end)
  end)

  it("UNLISTENs when the last listener of a channel closes (on a session)", function()
    run(function()
      local s = ah.pg.connect(srv.url)
      local a = s:listen("sess")
      local b = s:listen("sess")
      local function channels()
        local out = {}
        for _, r in ipairs(s:query("SELECT pg_listening_channels() AS c")) do out[#out + 1] = r.c end
        return out
      end
      assert.same({ "sess" }, channels())
      s:notify("sess", "self")
      assert.equal("self", a:recv(5).payload)
      assert.equal("self", b:recv(5).payload)
      a:close()
      assert.same({ "sess" }, channels())
      b:close()
      assert.same({}, channels())
      local ok, e = pcall(b.recv, b, 1)
      assert.is_false(ok)
      assert.is_true(ah.error.is(e, "invalid_argument"))
      s:close()
    end)
  end)
end)
