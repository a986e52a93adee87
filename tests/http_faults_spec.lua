-- ah.http against a server that breaks HTTP on purpose (the /fault routes
-- of tests/support/httpd.c, and /reset and /drip): every failure comes back
-- with the kind that says what happened and whether trying again can help.

local ah = require "agenthost"
local httpd = require "support.httpd"
local http, task = ah.http, ah.task

local srv

setup(function() srv = httpd.start() end)
teardown(function() if srv then srv:stop() end end)

-- The error of a request that must fail.
local function failure(opts)
  local ok, err = pcall(task.run, function() return http.request(opts) end)
  assert(not ok, "expected the request to fail")
  assert.is_truthy(ah.error.is(err), tostring(err))
  return err
end

local function expect(kind, retryable, opts)
  local err = failure(opts)
  assert.equal(kind, err.kind, tostring(err))
  assert.equal(retryable, err.retryable, tostring(err))
  return err
end

describe("ah.http against faults", function()
  it("a reset in the middle of the body is a retryable connect error", function()
    expect("connect", true, { url = srv.url("/reset?size=5000") })
  end)

  it("a body that drips past the timeout is a retryable timeout", function()
    expect("timeout", true, { url = srv.url("/drip?n=1000&ms=100"), timeout = 0.3 })
  end)

  it("a malformed status line is a protocol error", function()
    expect("protocol", false, { url = srv.url("/fault/status") })
  end)

  it("a 2 MiB header line is a protocol error, not out of memory", function()
    local err = expect("protocol", false, { url = srv.url("/fault/header-huge") })
    assert.is_falsy(tostring(err):find("Out of memory", 1, true), tostring(err))
  end)

  it("a flood of header fields is a protocol error", function()
    expect("protocol", false, { url = srv.url("/fault/header-flood") })
  end)

  it("a chunk size that is not hex is a protocol error", function()
    expect("protocol", false, { url = srv.url("/fault/bad-chunk") })
  end)

  it("a chunk size beyond 64 bits is a protocol error", function()
    expect("protocol", false, { url = srv.url("/fault/chunk-overflow") })
  end)

  it("a gzip bomb stops at max_body as too_large", function()
    expect("too_large", false, { url = srv.url("/fault/gzip-bomb"), max_body = 1 << 20 })
  end)

  it("a small gzip body decodes whole", function()
    local r = task.run(function()
      return http.get(srv.url("/fault/gzip-bomb?size=100000"))
    end)
    assert.equal(200, r.status)
    assert.equal(tonumber(r.headers["x-decoded-length"]), #r.body)
    assert.equal(string.rep("\0", #r.body), r.body)
  end)

  it("plain HTTP on an https:// URL is a tls error", function()
    expect("tls", false, { url = "https://127.0.0.1:" .. srv.port .. "/fixed" })
  end)

  it("a refused connection stays a retryable connect error", function()
    -- A port that was just free: bind and close to find one.
    local port = srv.port
    local s2 = httpd.start()
    port = s2.port
    s2:stop()
    expect("connect", true, { url = "http://127.0.0.1:" .. port .. "/" })
  end)

  it("a timeout of inf or 1e300 is clamped, not undefined", function()
    for _, v in ipairs { math.huge, 1e300, 2^63 } do
      local r = task.run(function()
        return http.get(srv.url("/fixed"), { timeout = v, connect_timeout = v })
      end)
      assert.equal(200, r.status)
      assert.equal("hello world", r.body)
    end
  end)
end)
