-- tools/shell.lua: the allow-list is required and enforced on untrusted
-- arguments, no shell ever sees them, and the result is text for a model.

local ah = require "agenthost"
local shell = require "shell"
local spec = require "support.spec"
local task = ah.task

local fails = spec.fails

describe("tools/shell", function()
  it("refuses to exist without an allow-list", function()
    for _, opts in ipairs { {}, { allow = {} }, { allow = "ls" } } do
      local ok, err = pcall(shell.new, opts)
      assert.is_false(ok)
      assert.is_true(ah.error.is(err, "invalid_argument"))
      assert.matches("an allow%-list is required", err.message)
    end
    local ok, err = pcall(shell.new, { allow = { "ls -l" } })
    assert.is_false(ok)
    assert.matches("program name or an absolute path", err.message)
    assert.is_false((pcall(shell.new, { allow = { "bin/ls" } })))
  end)

  it("has the shape of an agent tool, its schema naming the allowed programs", function()
    local tool = shell.new { allow = { "echo", "uptime" }, timeout = 5 }
    assert.equal("shell", tool.name)
    assert.is_string(tool.description)
    assert.matches("echo, uptime", tool.description)
    assert.equal("object", tool.parameters.type)
    assert.same({ "echo", "uptime" }, tool.parameters.properties.command.enum)
    assert.same({ "command" }, tool.parameters.required)
    assert.equal(5, tool.timeout)
    assert.is_function(tool.run)
  end)

  it("runs an allowed program with its arguments, never through a shell", function()
    local tool = shell.new { allow = { "echo", "sh" } }
    local text, r = task.run(function()
      return tool.run { command = "echo", args = { "$(id)", ";", "rm", "-rf", "/tmp/x*" } }
    end)
    assert.equal("$(id) ; rm -rf /tmp/x*\n", r.stdout)
    assert.matches("^%$ echo ", text)
    assert.matches("exit code 0", text)
    local t2, r2 = task.run(function()
      return tool.run { command = "sh", args = { "-c", "echo oops >&2; exit 2" } }
    end)
    assert.equal(2, r2.code)
    assert.matches("exit code 2", t2)
    assert.matches("%-%-%- stderr %-%-%-\noops", t2)
  end)

  it("refuses commands off the list and arguments that are not a list of strings", function()
    local tool = shell.new { allow = { "echo" } }
    local cases = {
      { { command = "rm", args = { "-rf", "/" } }, "not an allowed command" },
      { { command = "echo; rm" }, "not an allowed command" },
      { { command = "/bin/echo" }, "not an allowed command" },
      { { command = "echo", args = "hi there" }, "list of strings" },
      { { command = "echo", args = { 1 } }, "args%[1%] must be a string" },
      { { command = "echo", args = { x = "y" } }, "list of strings" },
      { { command = "echo", args = { string.rep("a", 5000) } }, "longer than 4096" },
    }
    for _, case in ipairs(cases) do
      local err = fails("invalid_argument", function() tool.run(case[1]) end)
      assert.matches(case[2], err.message)
    end
  end)

  it("lets a check function vet the arguments", function()
    local tool = shell.new { allow = { "echo" }, check = function(_, args)
      return args[1] ~= "secret", "no secrets"
    end }
    local err = fails("invalid_argument", function() tool.run { command = "echo", args = { "secret" } } end)
    assert.matches("refused: no secrets", err.message)
    assert.equal("ok\n", select(2, task.run(function() return tool.run { command = "echo", args = { "ok" } } end)).stdout)
  end)

  it("cuts long output, and times out", function()
    -- The command that must finish has a timeout it cannot miss on a
    -- loaded machine (or under ASan); the one that must not, a short one.
    local tool = shell.new { allow = { "head" }, max_output = 100, timeout = 30 }
    local text, r = task.run(function()
      return tool.run { command = "head", args = { "-c", "5000", "/dev/zero" } }
    end)
    assert.equal(100, #r.stdout)
    assert.matches("output cut at 100 bytes", text)
    local slow = shell.new { allow = { "sleep" }, timeout = 0.2 }
    fails("timeout", function() slow.run { command = "sleep", args = { "30" } } end)
  end)

  it("reports an allowed program that is not installed", function()
    local tool = shell.new { allow = { "no-such-program-ah" } }
    local err = fails("invalid_argument", function() tool.run { command = "no-such-program-ah" } end)
    assert.matches("not found", err.message)
  end)
end)
