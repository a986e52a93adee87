-- ah.http against the local test server (tests/support/httpd.c): responses,
-- errors of every kind, safe defaults, cancellation, concurrency and
-- connection reuse.

local ah = require "agenthost"
local httpd = require "support.httpd"
local http, task = ah.http, ah.task

local srv

setup(function() srv = httpd.start() end)
teardown(function() if srv then srv:stop() end end)

local function run(fn) return task.run(fn) end

local fails = require("support.spec").fails

local function connections()
  return run(function() return http.get(srv.url("/stats")).json.connections end)
end

describe("ah.http.request", function()
  it("returns status, lower-case headers and the body", function()
    local r = run(function() return http.get(srv.url("/fixed")) end)
    assert.equal(200, r.status)
    assert.equal("hello world", r.body)
    assert.equal("11", r.headers["content-length"])
  end)

  it("treats a non-2xx status as a response, not an error", function()
    local r = run(function() return http.get(srv.url("/status/503")) end)
    assert.equal(503, r.status)
    assert.equal("1", r.headers["retry-after"])
  end)

  it("sends method, headers and body, and encodes and decodes JSON", function()
    local r = run(function()
      return http.request { method = "PUT", url = srv.url("/echo"),
                            headers = { ["X-Token"] = "abc" }, body = "payload" }
    end)
    assert.equal("PUT", r.json.method)
    assert.equal("abc", r.json.headers["x-token"])
    assert.equal("payload", r.json.body)
    local j = run(function() return http.post(srv.url("/json"), { a = 1, list = { 1, 2 } }) end)
    assert.same({ a = 1, list = { 1, 2 } }, j.json)
  end)

  it("sends and reads JSON numbers exactly: int8 ids, 2^53 + 1, floats to the last digit", function()
    local sent = { id = 1234567890123456789, big = 9007199254740993, min = math.mininteger,
                   f = 0.1 + 0.2, whole = 71.0, tokens = 71, empty = ah.json.array() }
    local j = run(function() return http.post(srv.url("/json"), sent) end)
    assert.truthy(j.body:find('"id":1234567890123456789', 1, true), j.body)
    assert.truthy(j.body:find('"f":0.30000000000000004', 1, true), j.body)
    assert.truthy(j.body:find('"empty":[]', 1, true), j.body)
    for k, v in pairs(sent) do
      if type(v) == "number" then
        assert.equal(v, j.json[k], k)
        assert.equal(math.type(v), math.type(j.json[k]), k)
      end
    end
    assert.same({}, j.json.empty)
    assert.equal(ah.json.array_mt, getmetatable(j.json.empty))
  end)

  it("reads chunked bodies", function()
    local r = run(function() return http.get(srv.url("/chunked?n=10&size=100")) end)
    assert.equal(1000, #r.body)
  end)

  it("runs 1,000 concurrent requests on one thread", function()
    local statuses = run(function()
      local items = {}
      for i = 1, 1000 do items[i] = i end
      return task.map(items, function() return http.get(srv.url("/delay?ms=200")).status end)
    end)
    assert.equal(1000, #statuses)
    for i = 1, 1000 do assert.equal(200, statuses[i]) end
  end)

  describe("start queue", function()
    -- Each test sets its own start_batch; the default comes back after.
    after_each(function() run(function() http.configure { start_batch = 128 } end) end)

    -- Spawns n tasks that each wait on a slow request, and a last one that
    -- reads the stats once all n have asked (tasks run in spawn order).
    local function spawn_slow(n)
      local hs = {}
      for i = 1, n do
        hs[i] = task.spawn(function() return http.get(srv.url("/delay?ms=5000")) end)
      end
      local ok, st = task.spawn(function() return http.stats() end):result()
      assert.is_true(ok, tostring(st))
      return hs, st
    end

    it("starts start_batch requests per loop iteration, first come first started", function()
      run(function()
        http.configure { start_batch = 4 }
        task.sleep(0.01) -- a new iteration: no request started in this one yet
        local hs, st = spawn_slow(12)
        assert.same({ 4, 8 }, { st.active, st.queued })
        task.sleep(0) -- one more iteration: one more batch
        assert.same({ 8, 4 }, { http.stats().active, http.stats().queued })
        -- First come, first started: the last four are the ones waiting.
        for i = 9, 12 do hs[i]:cancel() end
        assert.same({ 8, 0 }, { http.stats().active, http.stats().queued })
        for i = 9, 12 do
          local ok, err = hs[i]:result()
          assert.is_false(ok)
          assert.is_true(ah.error.is(err, "cancelled"), tostring(err))
        end
        for i = 1, 8 do hs[i]:cancel() end
        assert.equal(0, http.stats().active)
      end)
    end)

    it("starts the queued requests in the iterations that follow, without waiting for any to end", function()
      run(function()
        http.configure { start_batch = 3 }
        -- Open connections first: requests reusing them start without any
        -- I/O event that would wake the loop.
        local items = {}
        for i = 1, 30 do items[i] = i end
        task.map(items, function() return http.get(srv.url("/fixed")).status end)
        task.sleep(0.01)
        local hs, st = spawn_slow(30)
        assert.same({ 3, 27 }, { st.active, st.queued })
        -- A request queued behind them starts once they all have; nothing
        -- else happens on the loop meanwhile (the 5 s requests run on), so
        -- it ends only if the queue empties without waiting for I/O.
        assert.equal(200, http.get(srv.url("/delay?ms=100")).status)
        assert.same({ 30, 0 }, { http.stats().active, http.stats().queued })
        for i = 1, 30 do hs[i]:cancel() end
      end)
    end)

    it("sends a queued request's url and body as given, after the caller's strings are gone", function()
      local C = require("agenthost.core")._http -- no wrapper holding the options
      local port = srv.url("/"):match(":(%d+)/")
      local got = run(function()
        http.configure { start_batch = 1 }
        task.sleep(0.01)
        local hs = {}
        for i = 1, 10 do
          hs[i] = task.spawn(function()
            return C.request { method = "PUT", url = "http://127.0.0.1:" .. port .. "/echo?n=" .. i * 7,
                               body = string.rep(string.char(64 + i), 1000 + i) }
          end)
        end
        -- All 10 have asked; 9 wait in the queue while their strings are
        -- collected and their memory is used again.
        local ok, queued = task.spawn(function()
          collectgarbage("collect")
          collectgarbage("collect")
          local junk = {}
          for k = 1, 20000 do junk[k] = string.rep("Z", 1000 + k % 20) .. k end
          return http.stats().queued
        end):result()
        assert.is_true(ok, tostring(queued))
        assert.equal(9, queued)
        local out = {}
        for i = 1, 10 do
          local ok2, r = hs[i]:result()
          assert.is_true(ok2, tostring(r))
          out[i] = require("agenthost").json.decode(r.body)
        end
        return out
      end)
      for i = 1, 10 do
        assert.equal("n=" .. i * 7, got[i].query)
        assert.equal(string.rep(string.char(64 + i), 1000 + i), got[i].body)
      end
    end)

    -- Keeps the loop's thread busy for at least ms milliseconds.
    local function busy(ms)
      local t0 = ah.clock()
      while (ah.clock() - t0) * 1000 < ms do end
    end

    it("counts a request's timeout from the call, time in the queue included", function()
      local late, fresh = run(function()
        http.configure { start_batch = 1 }
        task.sleep(0.01)
        -- Queued behind a slow request for longer than its timeout: fails
        -- when its turn comes, with the reason.
        local slow = task.spawn(function() return http.get(srv.url("/delay?ms=5000")) end)
        local waiting = task.spawn(function() return http.get(srv.url("/fixed"), { timeout = 0.02 }) end)
        task.spawn(function() busy(60) end):join()
        local _, late = waiting:result()
        slow:cancel()
        -- Work done in the iteration before the call does not count.
        task.sleep(0.01)
        local first, second = task.spawn(function()
          busy(60)
          local a = task.spawn(function() return http.get(srv.url("/fixed")) end)
          local b = task.spawn(function() return http.get(srv.url("/fixed"), { timeout = 0.05 }) end)
          return a, b
        end):join()
        assert.equal(200, first:join().status)
        return late, select(2, second:result())
      end)
      assert.is_true(ah.error.is(late, "timeout"), tostring(late))
      assert.matches("timed out waiting in the start queue", tostring(late), 1, true)
      assert.equal(200, fresh.status)
    end)

    it("runs 2,000 requests through a queue one start at a time", function()
      local n = run(function()
        http.configure { start_batch = 1 }
        local items = {}
        for i = 1, 2000 do items[i] = i end
        local statuses = task.map(items, function() return http.get(srv.url("/fixed")).status end)
        local ok = 0
        for i = 1, 2000 do if statuses[i] == 200 then ok = ok + 1 end end
        return ok
      end)
      assert.equal(2000, n)
    end)

    it("queues nothing with start_batch 0, and refuses bad values", function()
      run(function()
        http.configure { start_batch = 0 }
        task.sleep(0.01)
        local hs, st = spawn_slow(300)
        assert.same({ 300, 0 }, { st.active, st.queued })
        for i = 1, 300 do hs[i]:cancel() end
      end)
      for _, bad in ipairs { -1, 100001, 2.5, "all" } do
        local ok, err = pcall(run, function() http.configure { start_batch = bad } end)
        assert.is_false(ok)
        assert.is_true(ah.error.is(err, "invalid_argument"), tostring(err))
        assert.matches("start_batch must be an integer from 0 to 100000", tostring(err), 1, true)
      end
    end)
  end)

  it("reuses its connection for 10,000 sequential requests", function()
    local before = connections()
    run(function()
      for _ = 1, 10000 do assert(http.get(srv.url("/fixed")).status == 200) end
    end)
    local opened = connections() - before
    assert.is_true(opened <= 2, "opened " .. opened .. " connections for 10000 sequential requests")
  end)

  it("keeps to max_host_connections when configured", function()
    local before = connections()
    run(function()
      http.configure { max_host_connections = 4 }
      local items = {}
      for i = 1, 200 do items[i] = i end
      task.map(items, function() return http.get(srv.url("/delay?ms=20")).status end)
      http.configure { max_host_connections = 0 }
    end)
    local opened = connections() - before
    assert.is_true(opened <= 4, "opened " .. opened .. " connections with a limit of 4")
    for _, bad in ipairs { { max_connections = -1 }, { max_connections = 100001 },
                           { max_host_connections = -1 }, { max_connections = 1.5 },
                           { max_connections = "many" } } do
      local ok, err = pcall(task.run, function() http.configure(bad) end)
      assert.is_false(ok)
      assert.is_true(ah.error.is(err, "invalid_argument"), tostring(err))
    end
  end)

  -- Two rounds of n requests in flight at once: the second round finds the
  -- first round's connections still open when the cache keeps them all.
  local function two_rounds(n)
    local before = connections()
    run(function()
      local items = {}
      for i = 1, n do items[i] = i end
      for _ = 1, 2 do
        task.map(items, function() return http.get(srv.url("/delay?ms=50")).status end)
      end
    end)
    return connections() - before
  end

  it("keeps every connection alive with more requests in flight than 256", function()
    local opened = two_rounds(600)
    assert.is_true(opened <= 600, "opened " .. opened .. " connections for 2 x 600 requests")
  end)

  it("keeps to max_connections when configured, and goes back to automatic with 0", function()
    -- curl closes the oldest idle connection each time one comes back to a
    -- full cache: with a cache of 1, requests empty it of earlier tests'.
    run(function()
      http.configure { max_connections = 1 }
      for _ = 1, 5000 do
        if http.get(srv.url("/stats")).json.open <= 2 then break end
      end
      http.configure { max_connections = 16 }
    end)
    local opened = two_rounds(64)
    run(function() http.configure { max_connections = 0 } end)
    assert.is_true(opened > 64, "opened only " .. opened .. " connections with a cache of 16")
    opened = two_rounds(64)
    assert.is_true(opened <= 64, "opened " .. opened .. " connections for 2 x 64 requests")
  end)

  it("carries no option of one request over to the next", function()
    -- One task, one request at a time: each request reuses the easy handle
    -- (and connection) of the one before.
    local rs = run(function()
      local out = {}
      local function echo(o)
        o.url = srv.url("/echo")
        out[#out + 1] = http.request(o)
      end
      echo { method = "HEAD" }
      echo {}
      echo { method = "DELETE", headers = { ["X-One"] = "1" } }
      echo {}
      echo { method = "PUT", body = "put body" }
      echo {}
      out[#out + 1] = http.get(srv.url("/redirect?n=1"), { follow_redirects = true })
      out[#out + 1] = http.get(srv.url("/redirect?n=1"))
      return out
    end)
    assert.equal(200, rs[1].status)
    assert.equal("", rs[1].body)
    local function req(i) return rs[i].json end
    assert.equal("GET", req(2).method)
    assert.equal("DELETE", req(3).method)
    assert.equal("1", req(3).headers["x-one"])
    assert.equal("GET", req(4).method)
    assert.is_nil(req(4).headers["x-one"])
    assert.equal("", req(4).body)
    assert.equal("PUT", req(5).method)
    assert.equal("put body", req(5).body)
    assert.equal("GET", req(6).method)
    assert.equal("", req(6).body)
    assert.equal("redirected", rs[7].body)
    assert.equal(302, rs[8].status)
  end)

  it("watches the resolver's sockets only while curl does", function()
    -- A host name (not an address) is resolved on curl's resolver thread,
    -- whose socket pair curl watches and closes itself.  This machine's own
    -- name is used when it resolves to 127.0.0.1 only.
    -- (LD_PRELOAD is cleared: the sanitizer runtimes preloaded into this
    -- process would report these tools' own leaks.)
    local p = io.popen("unset LD_PRELOAD; n=$(hostname) && getent ahosts \"$n\" | " ..
                       "awk '{print $1}' | sort -u | tr '\\n' ' ' && echo \"$n\"")
    local out = p:read("a") or ""
    p:close()
    local addrs, name = out:match("^(.-)%s*([%w%-%.]+)%s*$")
    if addrs ~= "127.0.0.1" or not name then
      return pending("this machine's host name does not resolve to 127.0.0.1 only (" .. out .. ")")
    end
    local before, after = run(function()
      local b = http.stats().sockets
      task.gather(function() return http.get((srv.url("/fixed"):gsub("127%.0%.0%.1", name))) end,
                  function() return http.get((srv.url("/fixed"):gsub("127%.0%.0%.1", name))) end)
      return b, http.stats().sockets
    end)
    -- two new connections, and no watcher left on a closed socket
    assert.equal(2, after - before)
  end)

  it("aborts the transfer when the task is cancelled, and frees its connection", function()
    run(function()
      local h = task.spawn(function() return http.get(srv.url("/delay?ms=10000")) end)
      task.sleep(0.05)
      assert.equal(1, http.stats().active)
      h:cancel()
      local ok, err = h:result()
      assert.is_false(ok)
      assert.is_true(ah.error.is(err, "cancelled"))
      assert.equal(0, http.stats().active)
      -- the next request still works
      assert.equal(200, http.get(srv.url("/fixed")).status)
    end)
  end)

  it("times out with a retryable timeout error", function()
    local err = fails("timeout", function() http.get(srv.url("/delay?ms=5000"), { timeout = 0.1 }) end)
    assert.is_true(err.retryable)
    assert.matches("GET http://127.0.0.1:%d+/delay", err.message)
  end)

  it("takes a timeout under a millisecond as one millisecond, not as none", function()
    fails("timeout", function() http.get(srv.url("/delay?ms=3000"), { timeout = 0.0004 }) end)
  end)

  it("reports a refused connection as a retryable connect error", function()
    local err = fails("connect", function() http.get("http://127.0.0.1:1/") end)
    assert.is_true(err.retryable)
  end)

  it("reports a connection reset mid-body", function()
    fails("connect", function() http.get(srv.url("/reset?size=1000")) end)
  end)

  it("caps the response size, with or without a content-length", function()
    local e1 = fails("too_large", function() http.get(srv.url("/fixed?size=5000"), { max_body = 1000 }) end)
    assert.matches("max_body", e1.message)
    fails("too_large", function() http.get(srv.url("/chunked?n=10&size=500"), { max_body = 1000 }) end)
  end)

  it("refuses other schemes than http and https", function()
    for _, url in ipairs { "file:///etc/passwd", "ftp://127.0.0.1/", "gopher://x/", "127.0.0.1/" } do
      local err = fails("invalid_argument", function() http.get(url) end)
      assert.matches("only http:// and https://", err.message)
    end
  end)

  it("refuses header values that would inject a header", function()
    local err = fails("invalid_argument", function()
      http.request { url = srv.url("/echo"), headers = { ["x-a"] = "b\r\nInjected: 1" } }
    end)
    assert.matches("line break", err.message)
    fails("invalid_argument", function()
      http.request { url = srv.url("/echo"), headers = { ["bad name"] = "x" } }
    end)
  end)

  it("rejects bad options with messages that say what to pass", function()
    assert.matches("url must be a string", fails("invalid_argument", function() http.request {} end).message)
    assert.matches("timeout must be a number > 0",
      fails("invalid_argument", function() http.get(srv.url("/fixed"), { timeout = -1 }) end).message)
    assert.matches("method must be",
      fails("invalid_argument", function() http.request { url = srv.url("/fixed"), method = "GE T" } end).message)
    assert.matches("must be called inside a task", select(2, pcall(http.get, srv.url("/fixed"))).message)
  end)

  it("does not follow redirects unless asked, then at most 5", function()
    local r = run(function() return http.get(srv.url("/redirect?n=1")) end)
    assert.equal(302, r.status)
    local f = run(function() return http.get(srv.url("/redirect?n=3"), { follow_redirects = true }) end)
    assert.equal(200, f.status)
    assert.equal("redirected", f.body)
    fails("protocol", function() http.get(srv.url("/redirect?n=6"), { follow_redirects = true }) end)
  end)

  it("keeps credentials and header values out of error messages", function()
    local err = fails("connect", function()
      http.request { url = "http://user:s3cret@127.0.0.1:1/x", headers = { authorization = "Bearer tok-123" } }
    end)
    assert.not_matches("s3cret", err.message)
    assert.not_matches("tok%-123", err.message)
    assert.matches("http://127.0.0.1:1/x", err.message, 1, true)
  end)
end)

describe("ah.http.stream", function()
  it("gives status and headers first, then the body in chunks", function()
    local status, te, total = run(function()
      local s = http.stream { url = srv.url("/chunked?n=5&size=10") }
      local n = 0
      for chunk in s do n = n + #chunk end
      return s.status, s.headers["transfer-encoding"], n
    end)
    assert.equal(200, status)
    assert.equal("chunked", te)
    assert.equal(50, total)
  end)

  it("returns a non-2xx status as a stream too", function()
    local status, body = run(function()
      local s = http.stream { url = srv.url("/status/404") }
      return s.status, s:read()
    end)
    assert.equal(404, status)
    assert.equal("status 404", body)
  end)

  it("keeps memory flat for a slow consumer of 256 MiB", function()
    local size = 256 * 1024 * 1024
    local got, growth_kb = run(function()
      local before = ah.rusage().maxrss_kb
      local s = http.stream { url = srv.url("/huge?size=" .. size), timeout = 120, max_body = 2 * size }
      local n, reads = 0, 0
      for chunk in s do
        n = n + #chunk
        reads = reads + 1
        if reads % 64 == 0 then task.sleep(0.001) end -- a consumer that dawdles
      end
      return n, ah.rusage().maxrss_kb - before
    end)
    assert.equal(size, got)
    assert.is_true(growth_kb < 48 * 1024, "peak RSS grew by " .. growth_kb .. " KB")
  end)

  it("raises a failure after the headers from read", function()
    local err = fails("connect", function()
      local s = http.stream { url = srv.url("/reset?size=1000") }
      for _ in s do end
    end)
    assert.matches("/reset", err.message)
  end)

  it("aborts the transfer when the reading task is cancelled", function()
    run(function()
      local h = task.spawn(function()
        local s = http.stream { url = srv.url("/drip?n=1000&ms=20") }
        for _ in s do end
      end)
      task.sleep(0.1)
      assert.equal(1, http.stats().active)
      h:cancel()
      assert.equal("cancelled", select(2, h:result()).kind)
      assert.equal(0, http.stats().active)
    end)
  end)
end)

describe("server-sent events", function()
  local stream = "\239\187\191: a comment\r\nid: 7\r\nevent: greet\r\ndata: hello\r\ndata:  world\r\n\r\n" ..
                 "data: second\nretry: 1500\n\n" ..
                 "event: ignored-without-data\n\n" ..
                 "data\rdata: third\r\r" ..
                 "id\n" .. "data: after-reset\n\n" ..
                 "data: unfinished at the end"
  local expected = {
    { event = "greet", data = "hello\n world", id = "7" },
    { event = "message", data = "second", id = "7", retry = 1500 },
    { event = "message", data = "\nthird", id = "7" },
    { event = "message", data = "after-reset", id = "" },
  }

  local function parse(chunks)
    local p, out = http.sse_parser(), {}
    for _, c in ipairs(chunks) do
      for _, ev in ipairs(p:feed(c)) do out[#out + 1] = ev end
    end
    return out
  end

  it("parses the WHATWG format: BOM, CR/LF/CRLF, comments, multi-line data, id, retry", function()
    assert.same(expected, parse { stream })
  end)

  it("gives identical events for a split at every byte boundary, and byte by byte", function()
    for i = 1, #stream - 1 do
      assert.same(expected, parse { stream:sub(1, i), stream:sub(i + 1) }, "split at " .. i)
    end
    local bytes = {}
    for i = 1, #stream do bytes[i] = stream:sub(i, i) end
    assert.same(expected, parse(bytes))
  end)

  it("refuses a line longer than its limit", function()
    local p = http.sse_parser(1024)
    local ok, err = pcall(p.feed, p, "data: " .. ("x"):rep(2000))
    assert.is_false(ok)
    assert.is_true(ah.error.is(err, "too_large"))
  end)

  it("reads events from a server as they come", function()
    local evs = run(function()
      local out = {}
      for ev in http.sse { url = srv.url("/sse?n=5&ms=10") } do out[#out + 1] = ev end
      return out
    end)
    assert.equal(5, #evs)
    for i = 1, 5 do
      assert.equal("tick", evs[i].event)
      assert.equal(tostring(i), evs[i].data)
      assert.equal(tostring(i), evs[i].id)
    end
  end)
end)
