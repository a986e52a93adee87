-- The tools in tools/: each against its real dependency (the local HTTP
-- test server, a memory database, the host's own stats), through the
-- registry as an agent calls them.

local ah = require "agenthost"
local proc = require "support.proc"
local httpd = require "support.httpd"
local task = ah.task

local web_search = require "web_search"
local http_fetch = require "http_fetch"
local metrics = require "metrics"
local memory_recall = require "memory_recall"

local dir, srv
setup(function()
  dir = proc.tmpdir()
  srv = httpd.start()
end)
teardown(function()
  if srv then srv:stop() end
  proc.cleanup()
end)

local function call(tool, args, ctx)
  return task.run(function()
    return ah.tools.registry { tool }:call({ id = "1", name = tool.name, arguments = args }, ctx)
  end)
end

describe("tools/", function()
  it("each has a valid schema and registers", function()
    local reg = ah.tools.registry { web_search, http_fetch, metrics, memory_recall }
    assert.equal(4, #reg:list())
  end)

  it("memory_recall finds the agent's own messages", function()
    task.run(function()
      local mem = ah.memory.open(dir .. "/recall.sqlite")
      local r = mem:start_run("ops")
      mem:append(r, { role = "assistant", content = "disk latency spiked on db-2 at 03:00" })
      mem:append(r, { role = "user", content = "what about the cache?" })
      local res = ah.tools.registry { memory_recall }:call(
        { id = "1", name = "memory_recall", arguments = { query = "db-2 latency" } },
        { memory = mem, agent = { name = "ops" } })
      assert.is_false(res.is_error)
      assert.matches("^1%. %[conversation %d+, assistant%] disk latency spiked", res.content)
      res = ah.tools.registry { memory_recall }:call(
        { id = "2", name = "memory_recall", arguments = { query = "unrelated" } },
        { memory = mem, agent = { name = "ops" } })
      assert.matches("nothing in memory matches", res.content)
      mem:close()
    end)
  end)

  it("metrics reports tasks, http, loop lag and the store queue", function()
    task.run(function()
      local mem = ah.memory.open(dir .. "/metrics.sqlite")
      local res = ah.tools.registry { metrics }:call({ id = "1", name = "metrics", arguments = {} },
        { memory = mem })
      assert.is_false(res.is_error, res.content)
      local v = res.value
      assert.is_true(v.tasks.live >= 1)
      assert.equal(0, v.http.in_flight)
      assert.equal(0, v.http.queued)
      assert.is_number(v.loop_lag_ms)
      assert.is_number(v.store.queued)
      assert.is_true(v.max_rss_mb > 0)
      mem:close()
    end)
  end)

  it("web_search returns numbered results from a SearxNG-compatible service", function()
    local mock = require("support.mockllm").start()
    local res = call(web_search.new { url = mock.url("/search") }, { query = "p99 latency", limit = 3 })
    mock:stop()
    assert.is_false(res.is_error, res.content)
    local n = 0
    for num, title, url in res.content:gmatch("(%d+)%. ([^\n]+)\n   (%S+)") do
      n = n + 1
      assert.equal(n, tonumber(num))
      assert.matches("^https?://", url)
      assert.is_true(#title > 0)
    end
    assert.equal(3, n)
  end)

  it("web_search explains a missing search URL and a bad service", function()
    local res = call(web_search, { query = "x" })
    assert.is_true(res.is_error)
    assert.matches("AGENTHOST_SEARCH_URL", res.content)
    res = call(web_search.new { url = srv.url("/status/500") }, { query = "x" })
    assert.matches("HTTP 500", res.content)
    res = call(web_search.new { url = srv.url("/fixed") }, { query = "x" })
    assert.matches("did not return JSON", res.content)
  end)

  it("http_fetch refuses internal addresses unless allowed, checked after DNS", function()
    local before = task.run(function() return ah.http.get(srv.url("/stats")).json.connections end)
    for _, url in ipairs { srv.url("/fixed"), "http://localhost:" .. srv.port .. "/fixed",
                           "http://[::1]:" .. srv.port .. "/fixed" } do
      local res = call(http_fetch, { url = url })
      assert.is_true(res.is_error, url)
      assert.matches("refused to connect to", res.content)
      local ok, err = pcall(task.run, function() return ah.http.get(url, { allow_private = false }) end)
      assert.is_false(ok)
      assert.is_true(ah.error.is(err, "forbidden"), tostring(err))
      assert.is_false(err.retryable)
    end
    local after = task.run(function() return ah.http.get(srv.url("/stats")).json.connections end)
    assert.is_true(after - before <= 1, "a refused request reached the server")
    local res = call(http_fetch.new { allow_private = true }, { url = srv.url("/fixed?size=5000"), max_bytes = 100 })
    assert.is_false(res.is_error, res.content)
    assert.matches("^HTTP 200 ", res.content)
    assert.matches("%[truncated to 100 bytes%]$", res.content)
    res = call(http_fetch.new { allow_private = true }, { url = "file:///etc/passwd" })
    assert.is_true(res.is_error)
    assert.matches("only http:// and https://", res.content)
  end)

  it("http_fetch reduces hostile HTML in one pass", function()
    -- openers without closers: each pattern-based strip was quadratic here
    assert.equal("", http_fetch.html_text(("<script>"):rep(50000)))
    assert.equal("a", http_fetch.html_text("a" .. ("<!--"):rep(50000)))
    assert.equal("b", http_fetch.html_text("b" .. ("<"):rep(200000)))
  end)

  it("http_fetch decodes entities to valid UTF-8 only", function()
    local t = http_fetch.html_text("a&#0;b&#xD800;c&#55296;d&#x110000;e&#99999999999999999999;f" ..
      "&#x41;&#233;&#x1F600;&#xFFFE;")
    assert.is_nil(t:find("\0", 1, true))
    assert.is_truthy(utf8.len(t))
    assert.equal("a\u{FFFD}b\u{FFFD}c\u{FFFD}d\u{FFFD}e\u{FFFD}fA\u{E9}\u{1F600}\u{FFFE}", t)
  end)

  it("http_fetch cuts its text on a UTF-8 character boundary", function()
    local body = ("\u{E9}"):rep(10) -- 20 bytes
    for cap = 1, 21 do
      local text = http_fetch.text(body, "text/plain", cap)
      local kept = text:match("^(.-)\n%[truncated") or text
      assert.is_truthy(utf8.len(kept), "cap " .. cap)
      assert.is_true(#kept <= cap)
    end
    assert.equal(body, http_fetch.text(body, "text/plain", 20))
    assert.matches("^\u{E9}\u{E9}\n%[truncated to 5 bytes%]$", http_fetch.text(body, "text/plain", 5))
  end)

  it("http_fetch reduces HTML to its text", function()
    assert.equal("Title\nHello & welcome\nbye",
      http_fetch.html_text("<html><head><style>p{}</style><script>x=1</script></head>" ..
        "<body><h1>Title</h1><p>Hello &amp; <b>welcome</b></p><!-- c -->bye</body></html>"))
  end)
end)
