-- Packaging: the rockspec builds a module that stock lua5.4 requires from a
-- LuaRocks tree; `make install` with DESTDIR stages the header, both
-- libraries (with the soname links), the .pc and the module; and a C
-- program built from an installed prefix with pkg-config alone, shared and
-- static, runs from an unrelated directory.
--
-- Everything reuses the build directory of the run (BUILD, and SAN for the
-- sanitizer build), so nothing is compiled twice.  Every temporary
-- directory is removed at the end.  A missing tool (luarocks, pkg-config,
-- readelf, nm) fails the test that needs it.

local proc = require "support.proc"

local q = proc.quote
local ROCKSPEC = "agenthost-0.1.0-1.rockspec"
local ROOT = (function()
  local p = io.popen("pwd")
  local d = p:read("l")
  p:close()
  return d
end)()
local SAN = os.getenv("SAN") == "1"
local BUILD = (function()
  local b = os.getenv("BUILD") or "build"
  return b:sub(1, 1) == "/" and b or ROOT .. "/" .. b
end)()
-- The compiler flags the sanitizer build needs in a program that links it.
local SANFLAGS = SAN and " -fsanitize=address,undefined" or ""
-- The sanitizer runtimes tests/run preloads for the module in stock
-- lua5.4.  The tools (make, cc, luarocks, sed) run without them: their own
-- leaks would abort them.
local PRELOAD = os.getenv("LD_PRELOAD")
local WITH_PRELOAD = PRELOAD and "LD_PRELOAD=" .. proc.quote(PRELOAD) .. " " or ""
-- The environment of a program that must see nothing of the source tree.
local CLEAN_ENV = "env -u LUA_PATH -u LUA_CPATH -u LUA_PATH_5_4 -u LUA_CPATH_5_4 -u LUA_INIT"
  .. " -u LUA_INIT_5_4 -u PKG_CONFIG_PATH"

local VERSION, MAJOR = (function()
  local f = assert(io.open(ROOT .. "/include/agenthost.h"))
  local h = f:read("a")
  f:close()
  return h:match('#define AH_VERSION_STRING "([^"]+)"'),
         h:match("#define AH_VERSION_MAJOR (%d+)")
end)()

-- Runs a shell command (under a time limit, without LD_PRELOAD); returns
-- {code, out, err}.
local function sh(cmd, limit)
  return proc.run({ "env", "-u", "LD_PRELOAD", "sh", "-c", cmd }, { limit = limit or 120 })
end

-- Runs cmd and fails the test, with its output, unless it exits 0.
local function ok(cmd, limit)
  local r = sh(cmd, limit)
  assert(r.code == 0, string.format("%s\nexit %d\n%s%s", cmd, r.code, r.out, r.err))
  return r.out
end

local function need(tool)
  assert(proc.which(tool), tool .. " is not installed (make deps installs it)")
end

local function is_file(path)
  return sh("test -f " .. q(path) .. " && test ! -L " .. q(path)).code == 0
end

local function link_of(path)
  local r = sh("readlink " .. q(path))
  return r.code == 0 and (r.out:gsub("\n$", "")) or nil
end

-- make TARGET VARS..., with the build directory of this run.
local function make(args)
  return ok(string.format("cd %s && make -s --no-print-directory BUILD=%s SAN=%s %s",
    q(ROOT), q(BUILD), SAN and "1" or "", args))
end

teardown(function() proc.cleanup() end)

describe("the rockspec", function()
  it("luarocks make installs a module that stock lua5.4 requires from the tree", function()
    need("luarocks")
    need("lua5.4")
    local tree = proc.tmpdir() .. "/tree"
    -- From the checkout: `make rock` finds the module built; BUILD in the
    -- environment is how the rock's make build reuses it.
    ok(string.format("cd %s && BUILD=%s luarocks --lua-version 5.4 --tree %s make %s",
      q(ROOT), q(BUILD), q(tree), ROCKSPEC))
    assert.is_true(is_file(tree .. "/lib/lua/5.4/agenthost.so"))
    local lr = "luarocks --lua-version 5.4 --tree " .. q(tree) .. " path "
    local lpath = ok(lr .. "--lr-path"):gsub("\n$", "")
    local cpath = ok(lr .. "--lr-cpath"):gsub("\n$", "")
    assert.matches(tree, lpath, 1, true)
    local run = proc.tmpdir()
    proc.write(run .. "/main.lua", [[
      local ah = require "agenthost"
      local web_search = require "web_search"
      local t = assert(package.searchpath("agenthost", package.cpath))
      assert(ah.llm and ah.agent and ah.fleet and require "agenthost.mcp")
      assert(ah.json.encode(ah.json.decode('{"id":1234567890123456789}')) == '{"id":1234567890123456789}')
      print(t, web_search.name, ah.task.run(function() ah.task.sleep(0.01) return 42 end))
    ]])
    -- Stock lua5.4, from another directory, with the tree's paths only:
    -- neither the source tree's nor the system's, so the library, its agent
    -- layer included, needs nothing else at run time (no JSON module).
    local out = ok(string.format("cd %s && %s %sLUA_PATH=%s LUA_CPATH=%s lua5.4 main.lua",
      q(run), CLEAN_ENV, WITH_PRELOAD, q(lpath), q(cpath)))
    assert.equal(tree .. "/lib/lua/5.4/agenthost.so\tweb_search\t42\n", out)
  end)
end)

describe("make install", function()
  it("stages everything under DESTDIR, with PREFIX in the .pc", function()
    need("pkg-config")
    need("readelf")
    need("nm")
    local stage = proc.tmpdir()
    make("install DESTDIR=" .. q(stage) .. " PREFIX=/usr")
    local usr = stage .. "/usr"
    local sofile = "libagenthost.so." .. VERSION
    local soname = "libagenthost.so." .. MAJOR
    for _, f in ipairs { "bin/agenthost", "include/agenthost.h", "lib/libagenthost.a",
                         "lib/" .. sofile, "lib/pkgconfig/agenthost.pc",
                         "lib/lua/5.4/agenthost.so" } do
      assert.is_true(is_file(usr .. "/" .. f), f .. " is not installed")
    end
    assert.equal(sofile, link_of(usr .. "/lib/" .. soname))
    assert.equal(soname, link_of(usr .. "/lib/libagenthost.so"))
    assert.matches("Library soname: %[" .. soname:gsub("%.", "%%.") .. "%]",
      ok("readelf -d " .. q(usr .. "/lib/" .. sofile)))
    -- Only the public API is exported: every ah_ function of the header,
    -- the luaopen_ entry points, and nothing else.
    local exported = {}
    for name in ok("nm -D --defined-only " .. q(usr .. "/lib/" .. sofile)):gmatch("%S+ %u (%S+)") do
      exported[#exported + 1] = name
    end
    local header = proc.read(usr .. "/include/agenthost.h")
    local public = {}
    for name in header:gmatch("[%w_]+%s*%*?%s*(ah_[%a][%w_]*)%s*%(") do public[name] = true end
    assert.is_true(public.ah_open and public.ah_lua and public.ah_step ~= nil)
    for _, name in ipairs(exported) do
      assert.is_true(public[name] or name:match("^luaopen_agenthost") ~= nil,
        name .. " is exported but not public")
      public[name] = nil
    end
    assert.same({}, public)

    local pc = "PKG_CONFIG_PATH=" .. q(usr .. "/lib/pkgconfig") .. " pkg-config "
    assert.equal("/usr\n", ok(pc .. "--variable=prefix agenthost"))
    assert.equal(VERSION .. "\n", ok(pc .. "--modversion agenthost"))
    local shared = ok(pc .. "--libs agenthost")
    assert.matches("%-lagenthost", shared)
    assert.matches("%-llua5%.4", shared)
    assert.not_matches("%-lcurl", shared)
    local static = ok(pc .. "--static --libs agenthost")
    for _, l in ipairs { "-lagenthost", "-llua5.4", "-luv", "-lcurl", "-lsqlite3", "-lm", "-ldl" } do
      assert.matches(l:gsub("%p", "%%%0"), static)
    end
  end)

  it("writes nothing outside DESTDIR", function()
    local dir = proc.tmpdir()
    make(string.format("install DESTDIR=%s PREFIX=%s", q(dir .. "/stage"), q(dir .. "/prefix")))
    assert.is_true(is_file(dir .. "/stage" .. dir .. "/prefix/include/agenthost.h"))
    assert.equal(1, sh("test -e " .. q(dir .. "/prefix")).code)
  end)
end)

describe("a C program built from the installed files", function()
  local prefix, mods, run, pc

  setup(function()
    need("pkg-config")
    need("readelf")
    local dir = proc.tmpdir()
    prefix, mods, run = dir .. "/prefix", dir .. "/mods", dir .. "/run"
    make("install PREFIX=" .. q(prefix))
    ok("mkdir -p " .. q(mods) .. " " .. q(run))
    proc.write(mods .. "/installed_host_module.lua",
      "return { answer = function() return 42 end }\n")
    pc = "PKG_CONFIG_PATH=" .. q(prefix .. "/lib/pkgconfig") .. " pkg-config "
  end)

  -- Compiles tests/c/installed_host.c from the directory run, with the
  -- compiler flags of pkg-config and libs (the link flags) only.
  local function build(name, libs)
    local exe = run .. "/" .. name
    ok(string.format("cd %s && cc -std=c99 -Wall -Wextra -Werror%s %s -o %s %s %s",
      q(run), SANFLAGS, ok(pc .. "--cflags agenthost"):gsub("\n", ""), q(exe),
      q(ROOT .. "/tests/c/installed_host.c"), libs))
    return exe
  end

  local function runs(exe)
    local r = sh(string.format("cd %s && %s %s %s", q(run), CLEAN_ENV, q(exe), q(mods)), 60)
    assert(r.code == 0, string.format("%s exited %d\n%s%s", exe, r.code, r.out, r.err))
    assert.equal(VERSION .. " web_search 42\n", r.out)
  end

  it("links the shared library with pkg-config --libs", function()
    local libs = ok(pc .. "--libs agenthost"):gsub("\n", "")
      .. " -Wl,-rpath," .. prefix .. "/lib"
    local exe = build("host_shared", libs)
    assert.matches("NEEDED.-%[libagenthost%.so%." .. MAJOR .. "%]", ok("readelf -d " .. q(exe)))
    runs(exe)
  end)

  it("links the static library with pkg-config --static --libs", function()
    -- The linker takes the .so beside the archive for -lagenthost: name
    -- the archive (docs/embedding.md says the same).
    local libs = ok(pc .. "--static --libs agenthost"):gsub("\n", "")
      :gsub("%-lagenthost", "-l:libagenthost.a")
    local exe = build("host_static", libs)
    assert.not_matches("libagenthost", ok("readelf -d " .. q(exe)))
    runs(exe)
  end)
end)
