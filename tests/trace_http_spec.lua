-- What tracing adds to the other parts: the W3C traceparent on outgoing
-- HTTP requests made inside a span (so a gateway's own traces join ours),
-- and, when asked for, client spans for HTTP requests, spans for
-- subprocesses and for store writes.

local ah = require "agenthost"
local httpd = require "support.httpd"
local proc = require "support.proc"
local trace = ah.trace
local task = ah.task

local TP = "^00%-(%x+)%-(%x+)%-01$"

describe("trace propagation", function()
  local srv, spans
  setup(function() srv = httpd.start() end)
  teardown(function() srv:stop(); proc.cleanup() end)
  after_each(function() trace.disable() end)
  before_each(function() spans = {} end)
  local function on(opts) spans = require("support.spans").collect(opts) end
  local function echo(extra)
    local o = { url = srv.url("/echo") }
    for k, v in pairs(extra or {}) do o[k] = v end
    return ah.http.request(o).json.headers
  end

  it("sends the current span's traceparent, and none outside a span or while off", function()
    on()
    task.run(function()
      assert.is_nil(echo().traceparent)
      local sp = trace.start("call gateway")
      local h = echo()
      local t, p = h.traceparent:match(TP)
      assert.equal(sp.trace_id, t)
      assert.equal(sp.span_id, p)
      -- from a tool running in a gathered branch, its own span
      task.gather(function()
        local tool = trace.tool({ name = "fetch" })
        local _, p2 = echo().traceparent:match(TP)
        assert.equal(tool.span_id, p2)
        tool:finish()
      end)
      -- a caller's own header is kept
      local mine = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
      assert.equal(mine, echo { headers = { TraceParent = mine } }.traceparent)
      sp:finish()
      trace.disable()
      local off = trace.start("off")
      assert.is_nil(echo().traceparent)
      off:finish()
    end)
  end)

  it("sends it on streams and server-sent events too", function()
    on()
    task.run(function()
      local sp = trace.start("stream")
      local s <close> = ah.http.stream { url = srv.url("/echo") }
      local body = {}
      for c in s do body[#body + 1] = c end
      local h = require("agenthost").json.decode(table.concat(body)).headers
      assert.equal(sp:traceparent(), h.traceparent)
      sp:finish()
    end)
  end)

  it("gives requests client spans with enable{http = true}", function()
    on { http = true }
    task.run(function()
      local sp = trace.start("work")
      local h = echo { url = "http://user:pw@127.0.0.1:" .. srv.port .. "/echo?key=secret" }
      ah.http.request { url = srv.url("/status/404") }
      sp:finish()
      local client = spans[1]
      assert.equal("GET", client.name)
      assert.equal("http", client.kind)
      assert.equal(trace.CLIENT, client.span_kind)
      assert.equal(sp.span_id, client.parent_id)
      local _, p = h.traceparent:match(TP)
      assert.equal(client.span_id, p)
      assert.equal("http://127.0.0.1:" .. srv.port .. "/echo", client.attributes["url.full"])
      assert.equal("127.0.0.1", client.attributes["server.address"])
      assert.equal(srv.port, client.attributes["server.port"])
      assert.equal(200, client.attributes["http.response.status_code"])
      local nf = spans[2]
      assert.equal(404, nf.attributes["http.response.status_code"])
      assert.equal("404", nf.attributes["error.type"])
      assert.equal(trace.STATUS_ERROR, nf.status)
    end)
  end)

  it("marks a request that fails with the error's kind", function()
    on { http = true }
    task.run(function()
      local sp = trace.start("work")
      local ok, e = pcall(ah.http.request, { url = srv.url("/delay?ms=2000"), timeout = 0.05 })
      assert.is_false(ok)
      assert.is_true(ah.error.is(e, "timeout"))
      sp:finish()
    end)
    assert.equal("timeout", spans[1].attributes["error.type"])
  end)

  it("gives subprocesses spans with enable{proc = true}", function()
    on { proc = true }
    task.run(function()
      local sp = trace.start("tools")
      ah.proc.run { "true" }
      ah.proc.run { cmd = "sh", args = { "-c", "exit 3" } }
      sp:finish()
    end)
    assert.equal("proc true", spans[1].name)
    assert.equal(0, spans[1].attributes["process.exit.code"])
    assert.equal(trace.STATUS_UNSET, spans[1].status)
    assert.equal(3, spans[2].attributes["process.exit.code"])
    assert.equal("exit_code", spans[2].attributes["error.type"])
  end)

  it("gives store writes spans with enable{db = true}, but never the spans' own writes", function()
    local path = proc.tmpdir() .. "/w.db"
    on { db = true }
    task.run(function()
      local db = ah.store.open(path)
      local sp = trace.start("remember", { store = db })
      db:exec("CREATE TABLE t(x)")
      db:exec("INSERT INTO t VALUES (?)", 1)
      db:post("INSERT INTO t VALUES (?)", 2)
      sp:finish()
      db:flush()
      local names = {}
      for _, r in ipairs(db:query("SELECT name FROM trace_spans ORDER BY start_ns")) do names[#names + 1] = r.name end
      assert.same({ "remember", "CREATE", "INSERT" }, names)
      db:close()
    end)
    local ins = spans[2]
    assert.equal("db", ins.kind)
    assert.equal("sqlite", ins.attributes["db.system.name"])
    assert.equal("INSERT INTO t VALUES (?)", ins.attributes["db.query.text"])
    assert.equal("db.post", spans[3].events[1].name)
  end)
end)
