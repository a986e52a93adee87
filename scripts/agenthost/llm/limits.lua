-- agenthost.llm.limits: the limits one provider shares among every task
-- that uses it.  A semaphore bounds the requests in flight; token buckets
-- bound requests and tokens per minute.  Waiting is always a task wait
-- (semaphore acquire, or a sleep exactly as long as the bucket needs to
-- refill), never a busy loop, and waiters are served in arrival order.
--
-- A bucket holds up to its per-minute amount and refills continuously at
-- that amount per 60 s (the token-bucket model the model APIs themselves
-- describe), so in any window of T seconds at most amount * (1 + T / 60)
-- is taken.  Relies on agenthost.core (task.semaphore, task.sleep,
-- clock).
--
-- The clock and the sleep a bucket keeps time with can be given (both
-- default to the loop's: core.clock and task.sleep), so that a test can
-- run the refill waits without spending the time: a given sleep must
-- suspend the calling task (so that it can be cancelled like a real one)
-- and, once it returns, the given clock must read at least `seconds`
-- later than before it.

local core = require "agenthost.core"
local task = core.task

local M = {}

local Bucket = {}
Bucket.__index = Bucket

-- bucket(per_minute[, clock[, sleep]])
function M.bucket(per_minute, clock, sleep)
  clock = clock or core.clock
  return setmetatable({
    capacity = per_minute, level = per_minute, rate = per_minute / 60,
    stamp = clock(), clock = clock, sleep = sleep or task.sleep, lock = task.semaphore(1),
  }, Bucket)
end

function Bucket:refill()
  local now = self.clock()
  self.level = math.min(self.capacity, self.level + (now - self.stamp) * self.rate)
  self.stamp = now
end

-- Takes n (at most the capacity, so that any request can pass), waiting
-- until the bucket holds it.  The lock makes waiters queue in order.
function Bucket:take(n)
  n = math.min(n, self.capacity)
  self.lock:acquire()
  local ok, err = pcall(function()
    self:refill()
    while self.level < n do
      -- Sleeps round to milliseconds and are never shorter than asked.
      self.sleep(math.max((n - self.level) / self.rate, 0.001))
      self:refill()
    end
    self.level = self.level - n
  end)
  self.lock:release()
  if not ok then error(err, 0) end
end

-- Adds n back (n < 0 takes more, possibly below zero: the next taker
-- waits for it).
function Bucket:give(n)
  self:refill()
  self.level = math.min(self.capacity, self.level + n)
end

local Limits = {}
Limits.__index = Limits

-- new{max_concurrency, requests_per_minute, tokens_per_minute, clock,
-- sleep}: clock and sleep are the buckets' (see M.bucket).
function M.new(opts)
  local self = setmetatable({ in_flight = 0, max_in_flight = 0 }, Limits)
  if opts.max_concurrency then self.sem = task.semaphore(opts.max_concurrency) end
  if opts.requests_per_minute then
    self.rpm = M.bucket(opts.requests_per_minute, opts.clock, opts.sleep)
  end
  if opts.tokens_per_minute then
    self.tpm = M.bucket(opts.tokens_per_minute, opts.clock, opts.sleep)
  end
  return self
end

local Permit = {}
Permit.__index = Permit

-- A permit is released once, on close (normal or by an error).
function Permit:__close()
  if self.released then return end
  self.released = true
  local limits = self.limits
  limits.in_flight = limits.in_flight - 1
  if limits.sem then limits.sem:release() end
end

-- acquire(tokens) -> a to-be-closed permit for one request whose input is
-- estimated at `tokens`.
function Limits:acquire(tokens)
  if self.sem then self.sem:acquire() end
  local ok, err = pcall(function()
    if self.rpm then self.rpm:take(1) end
    if self.tpm then self.tpm:take(tokens) end
  end)
  if not ok then
    if self.sem then self.sem:release() end
    error(err, 0)
  end
  self.in_flight = self.in_flight + 1
  if self.in_flight > self.max_in_flight then self.max_in_flight = self.in_flight end
  return setmetatable({ limits = self, tokens = tokens }, Permit)
end

-- Charges the tokens-per-minute bucket what the request really used
-- (input + output, as the server reported) instead of its estimate.
function Limits:settle(permit, usage)
  if not self.tpm or not usage then return end
  local input, output = usage.input_tokens, usage.output_tokens
  if not input and not output then return end
  local used = (input or permit.tokens) + (output or 0)
  self.tpm:give(permit.tokens - used)
end

-- The estimate of a request's input tokens: a token per four bytes.
function M.estimate(body_bytes)
  return math.max(1, (body_bytes + 3) // 4)
end

return M
