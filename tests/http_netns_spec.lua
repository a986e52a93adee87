-- allow_private = false between two network namespaces of the spec's own,
-- joined by a veth pair and connected to nothing else: the client's side
-- has the public address 11.0.0.1 (not in any special-purpose range), the
-- server's side 11.0.0.2.  This checks what the machine's own network
-- cannot show: that an interface address is refused although the range
-- table lets it pass, that a public address of another host is fetched,
-- and that a name whose first address is refused falls back to the next
-- one and succeeds (the error kind must not be "forbidden" then).
--
-- The namespaces need root and iproute2 (make deps); the spec fails when
-- it cannot make them.  The test server listens inside the server's
-- namespace only, which nothing outside the two namespaces can reach.

local proc = require "support.proc"
local q = proc.quote

local tag = string.format("ah%x%x", os.time() % 0x100000, math.random(0, 0xfff))
local CLIENT, SERVER = tag .. "c", tag .. "s"
local httpd = (os.getenv("AGENTHOST_BIN") or "build/agenthost"):gsub("agenthost$", "tests/httpd")
local server, port, etc_dir

local function must(cmd)
  local out = proc.run({ "sh", "-c", cmd }, { limit = 20 })
  assert(out.code == 0, cmd .. " failed (" .. out.code .. "): " .. out.err)
  return out.out
end

-- Runs Lua source with the agenthost command inside the client's namespace
-- and returns what it printed.
local function in_client(source)
  local script = proc.script(source)
  local r = proc.run({ "ip", "netns", "exec", CLIENT, proc.bin, script }, { limit = 30 })
  assert(r.code == 0, "the client script failed (" .. r.code .. "): " .. r.err .. r.out)
  return r.out
end

-- A request with the guard on (or off), printed as "ok STATUS" or
-- "err KIND RETRYABLE MESSAGE".
local function fetch_source(url, allow_private)
  return string.format([[
local ah = require "agenthost"
local ok, r = pcall(ah.http.get, %q, { allow_private = %s, connect_timeout = 2, timeout = 5 })
if ok then print("ok " .. r.status)
else print("err " .. tostring(r.kind) .. " " .. tostring(r.retryable) .. " " .. tostring(r.message)) end
]], url, tostring(allow_private))
end

setup(function()
  local ipok = proc.which("ip")
  assert(ipok, "this spec needs iproute2's ip (make deps)")
  must(string.format("ip netns add %s && ip netns add %s", CLIENT, SERVER))
  must(string.format("ip link add %sa netns %s type veth peer name %sb netns %s",
    tag, CLIENT, tag, SERVER))
  must(string.format(
    "ip -n %s link set lo up && ip -n %s addr add 11.0.0.1/24 dev %sa && ip -n %s link set %sa up",
    CLIENT, CLIENT, tag, CLIENT, tag))
  must(string.format(
    "ip -n %s link set lo up && ip -n %s addr add 11.0.0.2/24 dev %sb && ip -n %s link set %sb up",
    SERVER, SERVER, tag, SERVER, tag))
  -- `ip netns exec` puts the files of /etc/netns/NAME over /etc's: a name
  -- for both addresses, the refused one first, and an address selection
  -- policy that keeps it first (RFC 6724 rule 6: higher precedence first).
  etc_dir = "/etc/netns/" .. CLIENT
  must("mkdir -p " .. q(etc_dir))
  proc.write(etc_dir .. "/hosts",
    "127.0.0.1 localhost\n11.0.0.1 twohomed.test\n11.0.0.2 twohomed.test\n")
  proc.write(etc_dir .. "/gai.conf",
    "precedence ::ffff:11.0.0.1/128 100\nprecedence ::ffff:0:0/96 10\nprecedence ::/0 40\n")
  server = proc.spawn({ "ip", "netns", "exec", SERVER, httpd, "--bind", "11.0.0.2" })
  assert(server:wait_output("port=", 10), "the test server did not start: " .. server:err())
  port = assert(tonumber(server:out():match("port=(%d+)")))
end)

teardown(function()
  if server then server:signal("TERM"); server:wait(5) end
  os.execute(string.format("ip netns del %s 2>/dev/null; ip netns del %s 2>/dev/null", CLIENT, SERVER))
  if etc_dir then os.execute("rm -rf " .. q(etc_dir)) end
  proc.cleanup()
end)

describe("allow_private = false across namespaces", function()
  it("fetches a public address of another host", function()
    local out = in_client(fetch_source(("http://11.0.0.2:%d/fixed"):format(port), false))
    assert.are.equal("ok 200\n", out)
  end)

  it("refuses this host's own public interface address, which the range table lets pass", function()
    local url = ("http://11.0.0.1:%d/fixed"):format(port)
    local out = in_client(fetch_source(url, false))
    assert.matches("^err forbidden false ", out)
    assert.matches("11%.0%.0%.1", out)
    -- With the guard off the same request reaches the address (nothing
    -- listens there, so the connection is refused): the refusal above was
    -- the guard's.
    assert.matches("^err connect true ", in_client(fetch_source(url, true)))
  end)

  it("falls back from a refused address to the next one, and the request succeeds", function()
    -- The refused address really comes first for this name here.
    local order = in_client([[
local socket = require "socket"
local r = assert(socket.dns.getaddrinfo("twohomed.test"))
local seen = {}
for _, a in ipairs(r) do if a.family == "inet" and not seen[a.addr] then
  seen[a.addr] = true; io.write(a.addr, " ") end end
]])
    assert.are.equal("11.0.0.1 11.0.0.2 ", order)
    local out = in_client(fetch_source(("http://twohomed.test:%d/fixed"):format(port), false))
    assert.are.equal("ok 200\n", out)
  end)

  it("reports forbidden when every address of a name is refused", function()
    local out = in_client(fetch_source(("http://localhost:%d/fixed"):format(port), false))
    assert.matches("^err forbidden false ", out)
  end)
end)
