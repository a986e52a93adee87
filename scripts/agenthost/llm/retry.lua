-- agenthost.llm.retry: when a failed model request is tried again, and
-- after how long.  Pure functions of a status, the response headers and
-- the attempt number; the provider does the waiting.
--
-- A status is retried when x-should-retry says "true", never when it says
-- "false", and otherwise for 408, 409, 429 and every 5xx (529 included).
-- The delay is what the server asks for (retry-after-ms, else retry-after
-- in seconds or as an HTTP date) when that is between 0 and 60 seconds,
-- else exponential backoff: 0.5 s doubling per attempt up to 8 s, less a
-- random jitter of up to a quarter.

local M = {}

M.INITIAL_DELAY = 0.5
M.MAX_DELAY = 8
M.MAX_RETRY_AFTER = 60

function M.should_retry(status, headers)
  local say = headers and headers["x-should-retry"]
  if say == "true" then return true end
  if say == "false" then return false end
  return status == 408 or status == 409 or status == 429 or (status >= 500 and status <= 599)
end

local MONTHS = { jan = 1, feb = 2, mar = 3, apr = 4, may = 5, jun = 6,
                 jul = 7, aug = 8, sep = 9, oct = 10, nov = 11, dec = 12 }

-- Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's
-- days_from_civil), so that an HTTP date needs no time zone arithmetic.
local function days_from_civil(y, m, d)
  if m <= 2 then y = y - 1 end
  local era = (y >= 0 and y or y - 399) // 400
  local yoe = y - era * 400
  local mp = (m + 9) % 12
  local doy = (153 * mp + 2) // 5 + d - 1
  local doe = yoe * 365 + yoe // 4 - yoe // 100 + doy
  return era * 146097 + doe - 719468
end

-- The Unix time of an HTTP date (IMF-fixdate "Sun, 06 Nov 1994 08:49:37
-- GMT", also without the weekday), or nil.
function M.http_date(s)
  local d, mon, y, hh, mm, ss = s:match("(%d%d?)[ %-](%a%a%a)[ %-](%d%d%d%d) (%d%d):(%d%d):(%d%d)")
  local m = mon and MONTHS[mon:lower()]
  if not m then return nil end
  return days_from_civil(tonumber(y), m, tonumber(d)) * 86400
    + tonumber(hh) * 3600 + tonumber(mm) * 60 + tonumber(ss)
end

-- The delay in seconds the headers ask for, when it is between 0 and 60;
-- `now` is the Unix time (os.time() by default) for HTTP dates.
function M.retry_after(headers, now)
  if not headers then return nil end
  local delay
  local ms = tonumber(headers["retry-after-ms"])
  if ms then
    delay = ms / 1000
  else
    local after = headers["retry-after"]
    if after then
      delay = tonumber(after)
      if not delay then
        local t = M.http_date(after)
        if t then delay = t - (now or os.time()) end
      end
    end
  end
  if delay and delay == delay and delay >= 0 and delay <= M.MAX_RETRY_AFTER then return delay end
  return nil
end

-- The backoff before retry number `attempt` (1 for the first retry).
function M.backoff(attempt, random)
  local delay = math.min(M.INITIAL_DELAY * 2 ^ (attempt - 1), M.MAX_DELAY)
  return delay * (1 - 0.25 * (random or math.random)())
end

-- The delay before retry number `attempt` after a response with `headers`
-- (nil after a transport error).
function M.delay(attempt, headers)
  return M.retry_after(headers) or M.backoff(attempt)
end

return M
