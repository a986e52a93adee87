describe("module", function()
  it("loads from stock lua and runs a task", function()
    local ah = require "agenthost"
    local v = ah.task.run(function() ah.task.sleep(0.01) return 42 end)
    assert.equal(42, v)
  end)
end)
