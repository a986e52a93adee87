-- agenthost.channel: named channels, the way events from the embedding
-- host reach Lua.
--
--   local ch = ah.channel("events")   -- the same channel for the same name
--   local ev = ch:recv()              -- waits for the next item
--
-- A channel is a bounded task.queue created on first use.  The host's
-- ah_post(host, name, json) delivers the JSON value here, decoded by
-- ah.json (which accepts exactly the texts ah_post does), in the order
-- posted.  When the queue is full, posts wait in the channel's backlog (in
-- order) and one pump task moves them in as receivers make room, so
-- nothing posted is lost and nothing overtakes.  Tasks may use
-- channels among themselves too (send waits while the channel is full).

local core = require "agenthost.core"
local task = core.task

local M = {}

local channels = {}
local capacity = 1024

local Channel = {}
Channel.__index = Channel

function Channel:recv() return self.queue:pop() end
function Channel:try_recv() return self.queue:try_pop() end
function Channel:send(value) self.queue:push(value) end
function Channel:try_send(value) return self.queue:try_push(value) end
-- Items in the channel, not counting posts still in its backlog.
function Channel:len() return self.queue:len() end
function Channel:backlog() return self.last - self.first + 1 end
function Channel:__tostring() return "agenthost.channel(" .. self.name .. ")" end

-- ah.channel(name) -> the channel of that name, created on first use
function M.channel(name)
  local ch = channels[name]
  if ch then return ch end
  if type(name) ~= "string" or name == "" then
    core.error.raise("invalid_argument", "ah.channel: name must be a non-empty string")
  end
  ch = setmetatable({ name = name, queue = task.queue(capacity),
                      backlog_items = {}, first = 1, last = 0, pumping = false }, Channel)
  channels[name] = ch
  return ch
end

-- The capacity of channels created from now on (set by the host).
function M._capacity(n) capacity = n end

local function pump(ch, done)
  while ch.first <= ch.last do
    local i = ch.first
    local value = ch.backlog_items[i]
    ch.queue:push(value)
    ch.backlog_items[i] = nil
    ch.first = i + 1
    done(1)
  end
  ch.pumping = false
end

-- The host's delivery of one post: returns true when the value is in the
-- channel, false when it went to the backlog (done(1) is called once it
-- is in).  Raises when json does not decode.
function M._post(name, json, done)
  local value = core.json.decode(json)
  local ch = M.channel(name)
  if ch.first > ch.last and ch.queue:try_push(value) then return true end
  ch.last = ch.last + 1
  ch.backlog_items[ch.last] = value
  if not ch.pumping then
    ch.pumping = true
    task.detach(pump, ch, done)
  end
  return false
end

return M
