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
    local tool = shell.new { allow = { "head" }, roots = { "/dev" }, max_output = 100, timeout = 30 }
    local text, r = task.run(function()
      return tool.run { command = "head", args = { "-c", "5000", "/dev/zero" } }
    end)
    assert.equal(100, #r.stdout)
    assert.matches("output cut at 100 bytes", text)
    local slow = shell.new { allow = { "sleep" }, timeout = 0.2 }
    fails("timeout", function() slow.run { command = "sleep", args = { "30" } } end)
  end)

  describe("argument policies", function()
    local dir, outside
    setup(function()
      dir = os.tmpname(); os.remove(dir)
      assert(os.execute("mkdir -p " .. dir .. "/root/sub " .. dir .. "/out"))
      local f = assert(io.open(dir .. "/root/a.txt", "w")) f:write("b\na\n") f:close()
      f = assert(io.open(dir .. "/out/secret", "w")) f:write("secret\n") f:close()
      assert(os.execute("ln -s " .. dir .. "/out " .. dir .. "/root/link"))
      outside = dir .. "/out"
    end)
    teardown(function() os.execute("rm -rf " .. dir) end)

    local function refused(tool, command, args, pattern)
      local err = fails("invalid_argument", function() tool.run { command = command, args = args } end)
      assert.matches(pattern, err.message)
      return err
    end

    it("refuses find's -exec, -delete and friends, and sort's --output", function()
      local tool = shell.new { allow = { "find", "sort", "grep" }, roots = { dir .. "/root" } }
      local root = dir .. "/root"
      refused(tool, "find", { root, "-exec", "id", ";" }, "find: argument 2 '%-exec' is refused")
      refused(tool, "find", { root, "-execdir", "id", ";" }, "'%-execdir' is refused")
      refused(tool, "find", { root, "-delete" }, "'%-delete' is refused")
      refused(tool, "find", { root, "-fprint", dir .. "/x" }, "'%-fprint' is refused")
      refused(tool, "find", { "-L", root }, "'%-L' is refused")
      refused(tool, "sort", { "--output=" .. root .. "/x", root .. "/a.txt" }, "'%-%-output=.*' is refused")
      refused(tool, "sort", { "-o", root .. "/x", root .. "/a.txt" }, "'%-o' is refused")
      refused(tool, "sort", { "--outp=x", root .. "/a.txt" }, "is refused")
      refused(tool, "sort", { "--compress-program=sh", root .. "/a.txt" }, "is refused")
      refused(tool, "sort", { "-rno", "x", root .. "/a.txt" }, "'%-rno' is refused")
      assert.is_nil(io.open(root .. "/x"))
      local text, r = task.run(function() return tool.run { command = "sort", args = { "-r", root .. "/a.txt" } } end)
      assert.equal("b\na\n", r.stdout, text)
      local _, r2 = task.run(function()
        return tool.run { command = "find", args = { root, "-name", "*.txt", "-type", "f" } }
      end)
      assert.equal(root .. "/a.txt\n", r2.stdout)
    end)

    it("confines paths to the roots, after .. and symlinks", function()
      local root = dir .. "/root"
      local tool = shell.new { allow = { "cat", "grep", "ls" }, roots = { root }, cwd = root }
      refused(tool, "cat", { outside .. "/secret" }, "cat: argument 1 '.*/out/secret' is outside the allowed roots")
      refused(tool, "cat", { "../out/secret" }, "argument 1 '%.%./out/secret' is outside")
      refused(tool, "cat", { "link/secret" }, "argument 1 'link/secret' is outside")
      refused(tool, "grep", { "-f", outside .. "/secret", "a.txt" }, "argument 2 .* is outside")
      refused(tool, "grep", { "-r", "secret", "/" }, "argument 3 '/' is outside")
      local _, r = task.run(function() return tool.run { command = "cat", args = { "sub/../a.txt" } } end)
      assert.equal("b\na\n", r.stdout)
      -- an operand that looks like an option is passed after "--"
      local _, r2 = task.run(function() return tool.run { command = "grep", args = { "-n", "a", "a.txt" } } end)
      assert.equal("2:a\n", r2.stdout)
      local _, r3 = task.run(function() return tool.run { command = "grep", args = { "-e", "-x", "a.txt" } } end)
      assert.equal(1, r3.code)
    end)

    it("never lets a refused option through, whatever the arguments (random lists)", function()
      -- A deterministic walk over lists of hostile tokens: each list is
      -- refused with invalid_argument or becomes arguments with no
      -- option that writes, runs or escapes.
      local vocab = { "-exec", "id", ";", "-delete", "-fprint", "x", "-o", "--output=x", "--outp",
        "-rno", "-name", "*", "(", ")", "!", "--", "-", "-L", "-e", "-f", "/etc/passwd", "..",
        "-n", "5", "-n5", "--lines=3", "-ok", "-T", "/tmp", "--compress-program=sh", "a.txt" }
      local bad = {
        find = { ["-exec"] = true, ["-delete"] = true, ["-fprint"] = true, ["-ok"] = true, ["-L"] = true },
        sort = { ["-T"] = true, ["-o"] = true },
        ls = { ["-L"] = true },
      }
      local seed = 12345
      local function rand(n) seed = (seed * 1103515245 + 12345) % 2147483648 return seed % n + 1 end
      for _, name in ipairs { "find", "sort", "grep", "head", "ls", "cat", "wc" } do
        local p = shell._policy(name)
        for _ = 1, 400 do
          local list = {}
          for k = 1, rand(6) do list[k] = vocab[rand(#vocab)] end
          local ok, out = pcall(shell._apply, p, list)
          if not ok then
            assert.is_true(ah.error.is(out, "invalid_argument"), tostring(out))
            assert.matches("is refused", out.message)
          else
            local after_dd = false
            for k, a in ipairs(out) do
              if a == "--" and name ~= "find" then after_dd = true end
              local prev = out[k - 1]
              local is_value = prev and (name == "find" and shell.BUILTIN.find.primaries[prev] == 1
                or name ~= "find" and prev:match("^%-[enkfcCABtSm]$"))
              if not after_dd and not is_value then
                assert.is_nil((bad[name] or {})[a], name .. " passed " .. a)
                if name == "sort" then
                  assert.is_nil(a:match("^%-%-o") or a:match("^%-%-comp") or a:match("^%-%a*[oT]"), "sort passed " .. a)
                end
              end
            end
          end
        end
      end
    end)

    it("takes relative roots, and the default root, from cwd", function()
      local root = dir .. "/root"
      local tool = shell.new { allow = { "cat", "ls" }, cwd = root }
      local _, r = task.run(function() return tool.run { command = "cat", args = { "a.txt" } } end)
      assert.equal("b\na\n", r.stdout)
      refused(tool, "cat", { "../out/secret" }, "is outside the allowed roots")
      local sub = shell.new { allow = { "cat", "ls" }, cwd = root, roots = { "sub" } }
      refused(sub, "cat", { "a.txt" }, "argument 1 'a.txt' is outside the allowed roots %(.*/root/sub;")
      refused(sub, "ls", {}, "the working directory is outside the allowed roots")
      local _, r2 = task.run(function() return sub.run { command = "ls", args = { "sub" } } end)
      assert.equal(0, r2.code)
    end)

    it("takes a policy table for any program", function()
      local tool = shell.new { roots = { dir .. "/root" }, allow = {
        { "echo", flags = "n", operands = "any" },
        { "cat", unrestricted = true },
      } }
      refused(tool, "echo", { "-e", "x" }, "echo: argument 1 '%-e' is refused: not an allowed option %(allowed: %-n%)")
      local _, r = task.run(function() return tool.run { command = "echo", args = { "-n", "hi" } } end)
      assert.equal("hi", r.stdout)
      local _, r2 = task.run(function() return tool.run { command = "cat", args = { outside .. "/secret" } } end)
      assert.equal("secret\n", r2.stdout)
      assert.is_false((pcall(shell.new, { allow = { { "ls", flags = 3 } } })))
    end)
  end)

  it("reports an allowed program that is not installed", function()
    local tool = shell.new { allow = { "no-such-program-ah" } }
    local err = fails("invalid_argument", function() tool.run { command = "no-such-program-ah" } end)
    assert.matches("not found", err.message)
  end)
end)
