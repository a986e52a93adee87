-- The trace timeline (`agenthost trace DB --html OUT`) in a real browser:
-- headless Chromium (Debian's chromium, driven by playwright-core through
-- tests/support/browser.js) loads the page written from the spans of an
-- agent-shaped run and its sub-run (tests/support/trace_fixture.lua), and
-- the page of a real agent team's run against the mock model; the
-- spec checks the rendered DOM: one bar per span with its name, nested
-- under its parent, the failed tool marked, tokens on hover, each turn's
-- messages in the side panel as text (a stored message with markup runs
-- nothing), and no request to anything but the file itself.  The
-- screenshot stays in build/trace_timeline.png.
--
-- Needs node, chromium and tests/support/node_modules (make deps); fails
-- without them, never skips.

local ah = require "agenthost"
local proc = require "support.proc"
local fixture = require "support.trace_fixture"
local json = require("agenthost").json

local node = proc.which("node")
local build = (os.getenv("AGENTHOST_BIN") or "build/agenthost"):match("^(.*)/[^/]*$") or "build"

local function browse(page, shot, ...)
  assert(node, "node is not on PATH (make deps installs nodejs)")
  assert(io.open("/usr/bin/chromium") or os.getenv("CHROMIUM"),
    "/usr/bin/chromium is missing (make deps installs Debian's chromium)")
  assert(io.open("tests/support/node_modules/playwright-core/package.json"),
    "playwright-core is missing: run make deps (npm ci in tests/support)")
  local args = { "env", "-u", "LD_PRELOAD", node, "tests/support/browser.js", page, shot, ... }
  for i, a in ipairs(args) do args[i] = proc.quote(a) end
  local f = io.popen(table.concat(args, " ") .. " 2>&1")
  local out = f:read("a")
  local ok = f:close()
  assert(ok, "the browser could not load the page: " .. out)
  return json.decode(out:match("(%b{})%s*$"))
end

local function sh(cmd)
  local f = io.popen(cmd .. " 2>&1")
  local out = f:read("a")
  local ok, _, code = f:close()
  return ok and 0 or code, out
end

describe("the trace timeline", function()
  local dir, db, info
  setup(function()
    dir = proc.tmpdir()
    db = dir .. "/memory.db"
    info = ah.task.run(function() return fixture.build(db) end)
  end)
  teardown(function() proc.cleanup() end)

  it("draws one bar per span, nested and coloured by kind, with the failure marked, in Chromium", function()
    local page = dir .. "/all.html"
    local code, out = sh(proc.quote(proc.bin) .. " trace " .. proc.quote(db) .. " --html " .. proc.quote(page))
    assert.equal(0, code, out)
    assert.matches("wrote .*: 11 spans in 1 traces", out)
    local html = proc.read(page)
    -- one file: nothing to fetch
    assert.is_nil(html:find("<script[^>]+src", 1))
    assert.is_nil(html:find("<link", 1, true))
    assert.is_nil(html:find("https?://"))
    local r = browse(page, build .. "/trace_timeline.png", "turn 1", "invoke_agent ops", "execute_tool shell")
    assert.same({}, r.errors)
    assert.same({}, r.requests)
    assert.equal(0, r.scripts_external)
    assert.equal(info.spans, #r.bars)
    local names = {}
    for _, b in ipairs(r.bars) do
      names[#names + 1] = b.name
      assert.is_true(b.visible, b.name .. " is not drawn")
      assert.is_true(b.left >= 0 and b.left + b.width <= 100.001, b.name)
    end
    table.sort(names)
    local want = {}
    for i, n in ipairs(info.names) do want[i] = n end
    table.sort(want)
    assert.same(want, names)
    -- nesting: the run at depth 0, its turns at 1, tools at 2, the sub-run under its tool
    local depth = {}
    for _, b in ipairs(r.bars) do depth[b.name] = depth[b.name] or b.depth end
    assert.equal(0, depth["invoke_agent ops"])
    assert.equal(1, depth["turn 1"])
    assert.equal(2, depth["execute_tool research"])
    assert.equal(3, depth["invoke_agent researcher"])
    -- colour by kind: every tool the same colour, the chat another
    local colour = {}
    for _, b in ipairs(r.bars) do
      colour[b.kind] = colour[b.kind] or b.color
      assert.equal(colour[b.kind], b.color)
    end
    assert.are_not.equal(colour.tool, colour.chat)
    -- exactly the failed tool is marked
    local failed = {}
    for _, b in ipairs(r.bars) do if b.error then failed[#failed + 1] = b.name end end
    assert.same({ "execute_tool shell" }, failed)
    assert.equal(1, r.marks)
    assert.matches("statuserror: error: exit status 2", r.clicked["execute_tool shell"].text)
    assert.matches("tool_error", r.clicked["execute_tool shell"].text)
    -- tokens and durations on hover
    for _, b in ipairs(r.bars) do
      if b.name == "invoke_agent ops" then assert.matches("360 in / 82 out tokens", b.title) end
      if b.name == "execute_tool shell" then assert.matches("failed: error: exit status 2", b.title) end
      assert.matches("[mµ]?s", b.title)
    end
    -- each turn's messages, as text
    local t1 = r.clicked["turn 1"].messages
    assert.equal(5, #t1)
    assert.same({ "user", "assistant", "tool", "tool", "tool" },
      { t1[1].role, t1[2].role, t1[3].role, t1[4].role, t1[5].role })
    assert.equal("Why is p99 latency up?", t1[1].text)
    assert.equal(fixture.HOSTILE, t1[3].text)
    assert.is_false(r.injected)
    local all = r.clicked["invoke_agent ops"]
    assert.equal(6, #all.messages)
    assert.matches("roll back the deploy", all.messages[6].text)
    assert.matches("gen_ai.usage.input_tokens", all.text)
    local shot = io.open(build .. "/trace_timeline.png", "rb")
    assert.truthy(shot, "no screenshot")
    assert.equal("\137PNG", shot:read(4))
    shot:close()
  end)

  it("shows the traces of one conversation, the sub-run's too", function()
    local page = dir .. "/sub.html"
    local code, out = sh(proc.quote(proc.bin) .. " trace " .. proc.quote(db) .. " --html " .. proc.quote(page) ..
      " --conversation " .. info.sub_conversation)
    assert.equal(0, code, out)
    local r = browse(page, build .. "/trace_timeline_conversation.png")
    assert.equal(info.spans, #r.bars)
  end)

  it("draws a real agent run from its memory: one bar per span, the failure marked, each turn's messages", function()
    -- The team of tests/support/trace_team.lua against the mock model,
    -- traced into its memory database: three turns, a gather of tools with
    -- one failing, a sub-agent as a tool, a handoff, guardrails.
    local mockllm = require "support.mockllm"
    local team = require "support.trace_team"
    local real = dir .. "/real.db"
    local m <close> = mockllm.start { rules = team.RULES }
    local r = ah.task.run(function()
      local mem = ah.memory.open(real)
      ah.trace.enable { otlp = false }
      local lead = team.new { provider = m:provider("openai"), memory = mem, on_event = function() end }
      local res = lead:run(team.QUESTION)
      ah.trace.disable()
      mem.db:flush()
      mem:close()
      return res
    end)
    local page = dir .. "/real.html"
    local code, out = sh(proc.quote(proc.bin) .. " trace " .. proc.quote(real) .. " --html " .. proc.quote(page) ..
      " --conversation " .. r.conversation)
    assert.equal(0, code, out)
    assert.matches("wrote .*: " .. #team.SPANS .. " spans in 1 traces", out)
    local res = browse(page, build .. "/trace_timeline_agent.png",
      "turn 1", "turn 2", "turn 3", "turn 1#2", "invoke_agent lead")
    assert.same({}, res.errors)
    assert.same({}, res.requests)
    local got = {}
    for i, b in ipairs(res.bars) do
      got[i] = b.name
      assert.is_true(b.visible, b.name .. " is not drawn")
    end
    local want = {}
    for i, name in ipairs(team.SPANS) do want[i] = name end
    table.sort(got)
    table.sort(want)
    assert.same(want, got)
    -- nesting as the run went: the closer's turn under the handoff, the
    -- sub-run under its tool
    local depth = {}
    for _, b in ipairs(res.bars) do depth[b.name] = depth[b.name] or b.depth end
    assert.same({ 0, 1, 1, 1, 2, 2, 3 }, { depth["invoke_agent lead"], depth["turn 1"], depth["turn 2"],
      depth["handoff closer"], depth["turn 3"], depth["execute_tool researcher"], depth["invoke_agent researcher"] })
    -- exactly the failing lookup is marked
    local failed = {}
    for _, b in ipairs(res.bars) do if b.error then failed[#failed + 1] = b.name end end
    assert.same({ "execute_tool lookup" }, failed)
    assert.equal(1, res.marks)
    -- each turn's messages, from memory, as text
    local function roles(list)
      local out2 = {}
      for i, msg in ipairs(list) do out2[i] = msg.role end
      return out2
    end
    local t1 = res.clicked["turn 1"].messages
    assert.same({ "user", "assistant", "tool", "tool", "tool" }, roles(t1))
    assert.equal(team.QUESTION, t1[1].text)
    assert.equal(3, #t1[2].calls)
    assert.matches("^→ lookup {\"key\":\"p99\"}", t1[2].calls[1])
    local texts = {}
    for i = 3, 5 do texts[#texts + 1] = t1[i].text end
    table.sort(texts)
    assert.matches("no such key: missing", table.concat(texts, "\n"))
    assert.matches("p99 = 840 ms", table.concat(texts, "\n"))
    assert.matches("Research: GC pauses", table.concat(texts, "\n"))
    local t2 = res.clicked["turn 2"].messages
    assert.same({ "assistant", "tool" }, roles(t2))
    assert.matches("transfer_to_closer", t2[1].calls[1])
    assert.matches("^Transferred to closer", t2[2].text)
    assert.same({ "assistant" }, roles(res.clicked["turn 3"].messages))
    assert.equal(team.ANSWER, res.clicked["turn 3"].messages[1].text)
    -- the sub-run's turn shows its own conversation
    local sub = res.clicked["turn 1#2"].messages
    assert.same({ "user", "assistant" }, roles(sub))
    assert.matches("^causes of: ", sub[1].text)
    assert.matches("^Research: GC pauses", sub[2].text)
    assert.equal(8, #res.clicked["invoke_agent lead"].messages)
  end)

  it("fails clearly with nothing to show, a missing file or bad arguments", function()
    local code, out = sh(proc.quote(proc.bin) .. " trace " .. proc.quote(db) .. " --html " ..
      proc.quote(dir .. "/x.html") .. " --conversation 999")
    assert.equal(1, code)
    assert.matches("no spans of conversation 999", out)
    code, out = sh(proc.quote(proc.bin) .. " trace " .. proc.quote(dir .. "/none.db") .. " --html x.html")
    assert.equal(1, code)
    assert.matches("no such file", out)
    assert.is_nil(io.open(dir .. "/none.db"))
    code, out = sh(proc.quote(proc.bin) .. " trace " .. proc.quote(db))
    assert.equal(2, code)
    assert.matches("%-%-html OUT is required", out)
    code, out = sh(proc.quote(proc.bin) .. " trace " .. proc.quote(db) .. " --html x.html --since yesterday")
    assert.equal(2, code)
    assert.matches("not a time: yesterday", out)
    code, out = sh(proc.quote(proc.bin) .. " trace " .. proc.quote(db) .. " --html " ..
      proc.quote(dir .. "/y.html") .. " --until 2001-01-01T00:00:00Z")
    assert.equal(1, code)
    assert.matches("no spans in that time range", out)
    -- a database without spans
    local plain = dir .. "/plain.db"
    ah.task.run(function() ah.memory.open(plain):close() end)
    code, out = sh(proc.quote(proc.bin) .. " trace " .. proc.quote(plain) .. " --html " .. proc.quote(dir .. "/z.html"))
    assert.equal(1, code)
    assert.matches("there are no spans in .*tracing was not on", out)
  end)
end)
