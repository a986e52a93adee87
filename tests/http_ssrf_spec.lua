-- allow_private = false: the addresses a URL from untrusted input must not
-- reach (every IANA special-purpose range and every address of this
-- machine's interfaces) are refused as forbidden, before a socket opens.
-- No server is needed: a refused request never connects, and one that was
-- not refused fails otherwise (the connect_timeout only bounds the wait
-- for an address that does not answer).

local ah = require "agenthost"
local http, task = ah.http, ah.task

local function attempt(url)
  local ok, err = pcall(task.run, function()
    return http.get(url, { allow_private = false, connect_timeout = 0.5, timeout = 2 })
  end)
  return ok, err
end

local function refused(url)
  local ok, err = attempt(url)
  assert(not ok, url .. " was fetched")
  assert.is_true(ah.error.is(err, "forbidden"), url .. ": " .. tostring(err))
  assert.is_false(err.retryable)
end

-- This machine's interface addresses other than loopback, from `ip -o addr`.
local function local_addresses()
  local out = {}
  local p = io.popen("ip -o addr 2>/dev/null")
  if not p then return out end
  for line in p:lines() do
    local fam, addr = line:match("%s(inet6?)%s+([%x%.:]+)/")
    if addr and not line:match("%slo%s") and not addr:match("^fe80") then
      out[#out + 1] = fam == "inet6" and "[" .. addr .. "]" or addr
    end
  end
  p:close()
  return out
end

describe("allow_private = false", function()
  it("refuses every address of this machine's interfaces", function()
    local addrs = local_addresses()
    -- (On a machine with loopback alone the list is empty; the own-address
    -- check is then shown by http_netns_spec.lua, whose namespaces give
    -- the client a public address.)
    for _, a in ipairs(addrs) do refused("http://" .. a .. ":9/") end
  end)

  it("refuses the IPv4 special-purpose ranges", function()
    for _, a in ipairs {
      "0.0.0.0", "0.1.2.3", "10.1.2.3", "100.64.0.1", "100.127.255.254", "127.0.0.1",
      "169.254.169.254", "172.16.0.1", "172.31.255.255", "192.0.0.8", "192.0.2.1",
      "192.88.99.1", "192.168.1.1", "198.18.0.1", "198.19.255.255", "198.51.100.7",
      "203.0.113.9", "224.0.0.1", "239.255.255.250", "240.0.0.1", "255.255.255.255",
    } do refused("http://" .. a .. ":9/") end
  end)

  it("refuses the IPv6 special-purpose ranges and embedded internal IPv4", function()
    for _, a in ipairs {
      "::", "::1", "::ffff:127.0.0.1", "::ffff:8.8.8.8", "::127.0.0.1",
      "64:ff9b::7f00:1", "64:ff9b::a00:1", "64:ff9b:1::1", "100::1", "2001::1",
      "2001:db8::1", "2002:7f00:1::1", "2002:c0a8:101::1", "3fff::1", "5f00::1",
      "fc00::1", "fd00::2", "fe80::1", "fec0::1", "ff02::1",
    } do refused("http://[" .. a .. "]:9/") end
  end)
end)
