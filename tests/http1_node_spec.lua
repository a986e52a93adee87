-- ah.http against a plain HTTP/1.1 server no one on the project wrote:
-- Node's built-in `http` module (tests/support/h1server.js).  Headers both
-- ways, JSON both ways, chunked and gzipped bodies, keep-alive, relative
-- redirects, server-sent events, HEAD, error statuses, and a connection cut
-- mid-body.  Where the server must hold back part of a response until the
-- client has seen the first part, it waits on a gate the client opens with
-- another request, so no assertion depends on timing.  Needs node; without
-- it the spec says so and defines no tests.

local ah = require "agenthost"
local httpd = require "support.httpd"
local http, task = ah.http, ah.task

local node = require("support.proc").which("node")
if not node then
  print("# http1_node_spec: skipped: needs node on PATH")
  return
end

local srv

setup(function()
  -- node runs without the sanitizer runtimes the ASan suite preloads
  srv = httpd.start { name = "h1server", bin = "/usr/bin/env",
                      args = { "-u", "LD_PRELOAD", node, "tests/support/h1server.js" } }
end)

teardown(function()
  if srv then srv:stop() end
end)

local function run(fn) return task.run(fn) end

local fails = require("support.spec").fails

local function stats()
  return run(function() return http.get(srv.url("/stats")).json end)
end

describe("ah.http against Node's http server", function()
  it("sends custom request headers and reads lower-case, joined response headers", function()
    local r = run(function()
      return http.get(srv.url("/echo?x=1"), { headers = { ["X-Custom-Thing"] = "abc 123", ["X-Other"] = "two" } })
    end)
    assert.equal(200, r.status)
    assert.equal("1.1", r.version)
    assert.equal("GET", r.json.method)
    assert.equal("/echo?x=1", r.json.url)
    assert.equal("abc 123", r.json.headers["x-custom-thing"])
    assert.equal("two", r.json.headers["x-other"])
    assert.equal("127.0.0.1:" .. srv.port, r.json.headers.host)
    -- names lower case; repeated headers joined with ", "
    assert.equal("Yes", r.headers["x-mixed-case"])
    assert.is_nil(r.headers["X-Mixed-Case"])
    assert.equal("a=1; Path=/, b=2; Path=/", r.headers["set-cookie"])
    assert.equal("one, two", r.headers["x-multi"])
    assert.matches("^application/json", r.headers["content-type"])
  end)

  it("posts a table as JSON that Node decodes, and decodes Node's JSON answer", function()
    local sent = { name = "agent", n = 3, list = { 1, 2, 3 }, nested = { ok = true } }
    local r = run(function() return http.post(srv.url("/json"), sent) end)
    assert.equal(200, r.status)
    assert.equal("POST", r.json.method)
    assert.equal("application/json", r.json.content_type)
    assert.same(sent, r.json.received)
  end)

  it("reads a chunked response whole", function()
    local r = run(function() return http.get(srv.url("/chunked?n=5&size=100")) end)
    assert.equal(200, r.status)
    assert.equal("chunked", r.headers["transfer-encoding"])
    assert.is_nil(r.headers["content-length"])
    assert.equal(("a"):rep(100) .. ("b"):rep(100) .. ("c"):rep(100) .. ("d"):rep(100) .. ("e"):rep(100), r.body)
  end)

  it("streams a chunked response as it is written", function()
    local first, rest, status = run(function()
      local s <close> = http.stream { url = srv.url("/chunked?n=4&size=1000&gate=chunked") }
      -- the server sends one write, then waits until the gate is opened
      local got = {}
      local n = 0
      while n < 1000 do
        local chunk = s:read()
        assert(chunk, "stream ended after " .. n .. " bytes")
        got[#got + 1] = chunk
        n = n + #chunk
      end
      local head = table.concat(got)
      assert(http.get(srv.url("/release?gate=chunked")).status == 200)
      got = {}
      for chunk in s do got[#got + 1] = chunk end
      return head, table.concat(got), s.status
    end)
    assert.equal(200, status)
    assert.equal(("a"):rep(1000), first)
    assert.equal(("b"):rep(1000) .. ("c"):rep(1000) .. ("d"):rep(1000), rest)
  end)

  it("asks for gzip and gives the gzipped body decoded", function()
    local r = run(function() return http.get(srv.url("/gzip")) end)
    assert.equal(200, r.status)
    assert.matches("gzip", r.headers["x-request-accept-encoding"])
    assert.equal("gzip", r.headers["content-encoding"])
    local text = ("compressed by node zlib\n"):rep(200)
    assert.equal(text, r.body)
    -- the content-length Node sent is that of the compressed bytes
    assert.is_true(tonumber(r.headers["content-length"]) < #text)
  end)

  it("counts the decoded bytes against max_body, not the compressed ones", function()
    -- 4,800 bytes that travel as far fewer: a small compressed response
    -- must not slip a large body past the cap
    local err = fails("too_large", function() http.get(srv.url("/gzip"), { max_body = 1000 }) end)
    assert.matches("larger than max_body", tostring(err), 1, true)
    assert.equal(4800, #run(function() return http.get(srv.url("/gzip"), { max_body = 4800 }) end).body)
  end)

  it("keeps the connection alive: 200 sequential requests use at most 2 connections", function()
    local before = stats()
    run(function()
      for i = 1, 200 do
        local r = http.get(srv.url("/fixed"))
        assert(r.status == 200 and r.body == "hello world", "request " .. i)
      end
    end)
    local after = stats()
    assert.equal(201, after.requests - before.requests) -- the 200 and the second /stats
    local opened = after.connections - before.connections
    assert.is_true(opened <= 2, "opened " .. opened .. " connections for 200 sequential requests")
  end)

  it("follows a relative redirect only when asked", function()
    local r = run(function() return http.get(srv.url("/redirect")) end)
    assert.equal(302, r.status)
    assert.equal("/elsewhere", r.headers.location)
    assert.equal("moved", r.body)
    local f = run(function() return http.get(srv.url("/redirect"), { follow_redirects = true }) end)
    assert.equal(200, f.status)
    assert.equal("elsewhere", f.body)
    assert.is_nil(f.headers.location) -- the headers are the final response's
  end)

  it("parses server-sent events written by Node, as they come", function()
    local evs, status, ctype = run(function()
      local out = {}
      local it <close> = http.sse { url = srv.url("/sse?gate=sse") }
      for ev in it do
        out[#out + 1] = ev
        -- the server sends the rest only once it is asked to
        if #out == 1 then assert(http.get(srv.url("/release?gate=sse")).status == 200) end
      end
      return out, it.status, it.headers["content-type"]
    end)
    assert.equal(200, status)
    assert.equal("text/event-stream", ctype)
    assert.same({
      { event = "first", data = "one", id = "1" },
      { event = "message", data = "line one\nline two\nline three", id = "1" },
      { event = "message", data = '{"n":3}', id = "3" },
      { event = "last", data = "bye", id = "3" },
    }, evs)
  end)

  it("answers HEAD with the headers and an empty body", function()
    local r = run(function() return http.request { method = "HEAD", url = srv.url("/fixed") } end)
    assert.equal(200, r.status)
    assert.equal("11", r.headers["content-length"])
    assert.equal("text/plain", r.headers["content-type"])
    assert.equal("", r.body)
    -- the connection is still good for the next request
    assert.equal("hello world", run(function() return http.get(srv.url("/fixed")).body end))
  end)

  it("returns 404 and 500 as responses, not errors", function()
    local r404, r500, missing = run(function()
      return http.get(srv.url("/status/404")), http.get(srv.url("/status/500")), http.get(srv.url("/no/such/route"))
    end)
    assert.equal(404, r404.status)
    assert.equal("status 404", r404.body)
    assert.equal(500, r500.status)
    assert.equal("status 500", r500.body)
    assert.equal(404, missing.status)
    assert.equal("not found", missing.body)
  end)

  it("raises a connect error when Node closes the connection mid-body", function()
    local err = fails("connect", function() http.get(srv.url("/cut")) end)
    assert.is_true(err.retryable)
    assert.matches("GET http://127.0.0.1:" .. srv.port .. "/cut", err.message, 1, true)

    -- streamed: the headers arrive, then read raises
    local status
    err = fails("connect", function()
      local s <close> = http.stream { url = srv.url("/cut") }
      status = s.status
      for _ in s do end
    end)
    assert.equal(200, status)
    assert.matches("/cut", err.message, 1, true)

    -- and the next request goes through
    assert.equal("hello world", run(function() return http.get(srv.url("/fixed")).body end))
  end)
end)
