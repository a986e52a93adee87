-- HTTP/2 over TLS against Node's http2 server (tests/support/h2server.js)
-- with a certificate made for the run: a burst of requests multiplexes
-- over one connection, TLS verification stays on (ca_file names the CA to
-- trust), and the response says which HTTP version carried it.  Needs
-- node and openssl; without them the spec says so and defines no tests.

local ah = require "agenthost"
local proc = require "support.proc"
local httpd = require "support.httpd"
local task = ah.task

local node, openssl = proc.which("node"), proc.which("openssl")
if not (node and openssl) then
  print("# http2_spec: skipped: needs node and openssl on PATH (node: " ..
    tostring(node) .. ", openssl: " .. tostring(openssl) .. ")")
  return
end

local dir, srv, base, cert

setup(function()
  dir = proc.tmpdir()
  cert = dir .. "/cert.pem"
  local key = dir .. "/key.pem"
  local r = proc.run { openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
    "-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1",
    "-keyout", key, "-out", cert }
  assert(r.code == 0, "openssl failed: " .. r.err)
  -- node runs without the sanitizer runtimes the ASan suite preloads
  srv = httpd.start { name = "h2server", bin = "/usr/bin/env",
                      args = { "-u", "LD_PRELOAD", node, "tests/support/h2server.js", key, cert } }
  base = "https://127.0.0.1:" .. srv.port
end)

teardown(function()
  if srv then srv:stop() end
  proc.cleanup()
end)

local function stats()
  return task.run(function()
    return require("agenthost").json.decode(ah.http.get(base .. "/stats", { ca_file = cert }).body)
  end)
end

describe("ah.http over HTTP/2", function()
  it("multiplexes a burst of requests over one new connection", function()
    local before = stats()
    -- In a process of its own, whose HTTP client has done nothing before
    -- (a peak of more than 128 requests in flight earlier in this one
    -- would have spread the burst over several lanes, one connection each;
    -- see docs/http.md).  By another name than the other tests use, so
    -- that no connection is open yet when all 50 start.
    local r = proc.cli { proc.script([[
      local ah = require "agenthost"
      local cold, cert = ...
      local items = {}
      for i = 1, 50 do items[i] = i end
      local got = ah.task.map(items, function()
        local r = ah.http.get(cold .. "/delay?ms=100", { ca_file = cert })
        return r.version .. " " .. r.status .. " " .. r.body
      end)
      print(table.concat(got, "\n"))
    ]]), "https://localhost:" .. srv.port, cert }
    assert.equal(0, r.code, r.err)
    local got = {}
    for line in r.out:gmatch("[^\n]+") do got[#got + 1] = line end
    assert.equal(50, #got)
    for i = 1, 50 do assert.equal("2 200 h2 ok", got[i]) end
    local after = stats()
    assert.equal(50, after.streams - before.streams)
    assert.equal(1, after.sessions - before.sessions) -- one connection carried them all
    assert.equal(50, after.max_streams_in_flight)
    assert.equal(0, after.http1)
  end)

  it("keeps TLS verification on: an unknown CA is a tls error", function()
    local ok, err = pcall(task.run, function() return ah.http.get(base .. "/stats") end)
    assert.is_false(ok)
    assert.is_true(ah.error.is(err, "tls"), tostring(err))
    assert.is_false(err.retryable)
  end)

  it("refuses a ca_file that is not a path", function()
    local ok, err = pcall(task.run, function() return ah.http.get(base .. "/stats", { ca_file = 42 }) end)
    assert.is_false(ok)
    assert.is_true(ah.error.is(err, "invalid_argument"), tostring(err))
  end)

  it("reports HTTP/1.1 where the server speaks only that", function()
    local plain = httpd.start()
    local r = task.run(function() return ah.http.get(plain.url("/fixed")) end)
    plain:stop()
    assert.equal("1.1", r.version)
  end)
end)
