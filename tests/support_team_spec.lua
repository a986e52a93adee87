-- scripts/examples/support_team.lua offline: the triage agent hands each
-- question to the billing or the tech specialist, who answer with their
-- tools; the guardrail refuses a card number; the conversations are
-- stored with the agent that wrote each message.

local proc = require "support.proc"

local SCRIPT = "scripts/examples/support_team.lua"
local dir
setup(function() dir = proc.tmpdir() end)
teardown(function() proc.cleanup() end)

local function team(args)
  local argv = { "env", "-u", "OPENAI_API_KEY", "-u", "ANTHROPIC_API_KEY", "-u", "AGENTHOST_PROVIDER",
                 "-u", "AGENTHOST_BASE_URL", "-u", "AGENTHOST_MODEL", proc.bin, SCRIPT }
  for _, a in ipairs(args) do argv[#argv + 1] = a end
  return proc.run(argv, { limit = 60 })
end

describe("support_team.lua", function()
  it("routes questions to the specialists and refuses a card number, offline", function()
    local db = dir .. "/var/support.db"
    local r = team { "--memory", db }
    assert.equal(0, r.code, r.err)
    assert.matches("bundled offline mock", r.err)
    assert.matches("Q1: .-route: triage %-> billing\n  billing answered %(conversation 1, 3 turns%): Billing: invoice INV%-2291", r.out)
    assert.matches("Q2: .-route: triage %-> tech\n  tech answered %(conversation 2, 3 turns%): Tech: the host says", r.out)
    assert.matches("Q3: .-refused by no_card_numbers", r.out)
    assert.matches("unfinished conversations of triage: 0", r.out)
    local check = proc.script(string.format([[
      local ah = require "agenthost"
      local mem = ah.memory.open(%q)
      local out = {}
      for _, h in ipairs(mem:history(1, { events = false })) do out[#out + 1] = h.role .. ":" .. h.agent end
      print(table.concat(out, " "))
      print(mem:run(1).current_agent, mem:run(3).status)
      mem:close()
    ]], db))
    local c = proc.cli { check }
    assert.equal(0, c.code, c.err)
    assert.matches("user:triage assistant:triage tool:triage assistant:billing tool:billing assistant:billing", c.out)
    assert.matches("billing%s+failed", c.out)
  end)

  it("answers a question given on the command line, and fails on a refused one", function()
    local r = team { "--memory", dir .. "/two.db", "hello, who are you?" }
    assert.equal(0, r.code, r.err)
    assert.matches("route: triage\n  triage answered", r.out)
    r = team { "--memory", dir .. "/three.db", "my card is 4111-1111-1111-1111" }
    assert.equal(1, r.code)
    assert.matches("refused by no_card_numbers", r.out)
  end)
end)
