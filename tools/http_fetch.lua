-- http_fetch: GET a URL and return its text.  The URL comes from a model,
-- so: http and https only, a size cap, a timeout, at most 5 redirects, and
-- loopback, private, link-local and other internal addresses refused unless
-- the tool was made with http_fetch.new{allow_private = true}.  The check is
-- made on the address actually connected to (after DNS, for every
-- redirect), by ah.http's `allow_private = false`.

local ah = require "agenthost"

local M = {
  name = "http_fetch",
  description = "Fetch a web page or file over http(s) and return its text " ..
    "(HTML is reduced to its visible text).",
  parameters = {
    type = "object",
    properties = {
      url = { type = "string", minLength = 1, maxLength = 2000, description = "An http:// or https:// URL" },
      max_bytes = { type = "integer", minimum = 1, maximum = 1048576,
                    description = "Most bytes of text to return (default 65536)" },
    },
    required = { "url" },
    additionalProperties = false,
  },
  timeout = 30,
  max_body = 4 * 1024 * 1024,
}

local entities = { amp = "&", lt = "<", gt = ">", quot = '"', apos = "'", nbsp = " " }

-- s without the spans from each `open` to the next `close` (plain, case
-- as given in both cases of the ASCII letters), in one pass: a page full of
-- openers without closers costs linear time, not quadratic.
local function drop_spans(s, open_lc, close_lc)
  local lower = s:lower()
  local out, pos = {}, 1
  while true do
    local a = lower:find(open_lc, pos, true)
    if not a then break end
    out[#out + 1] = s:sub(pos, a - 1)
    local _, b = lower:find(close_lc, a + #open_lc, true)
    if not b then pos = #s + 1 break end -- unclosed: the rest goes
    out[#out + 1] = " "
    pos = b + 1
  end
  out[#out + 1] = s:sub(pos)
  return table.concat(out)
end

-- s with every tag gone (<br> and <p> become line breaks, other tags a
-- space), in one pass; an unclosed '<' ends the text.
local function drop_tags(s)
  local out, pos = {}, 1
  while true do
    local a = s:find("<", pos, true)
    if not a then break end
    out[#out + 1] = s:sub(pos, a - 1)
    local b = s:find(">", a + 1, true)
    if not b then pos = #s + 1 break end
    local name = s:match("^</?(%a+)", a)
    name = name and name:lower()
    out[#out + 1] = (name == "br" or name == "p") and "\n" or " "
    pos = b + 1
  end
  out[#out + 1] = s:sub(pos)
  return table.concat(out)
end

-- The UTF-8 of a numeric character reference: U+FFFD for NUL, a
-- surrogate or a number past U+10FFFF, which have no valid encoding.
local function code_point(n)
  n = math.tointeger(n)
  if not n or n <= 0 or n > 0x10FFFF or (n >= 0xD800 and n <= 0xDFFF) then
    return "\u{FFFD}"
  end
  return utf8.char(n)
end

-- Visible text of an HTML document, roughly: no scripts, styles or tags.
local function html_text(s)
  s = drop_spans(s, "<!--", "-->")
  s = drop_spans(s, "<script", "</script>")
  s = drop_spans(s, "<style", "</style>")
  s = drop_tags(s)
  s = s:gsub("&(%a+);", function(e) return entities[e:lower()] end)
  s = s:gsub("&#(%d+);", function(d) return code_point(tonumber(d)) end)
  s = s:gsub("&#[xX](%x+);", function(h) return code_point(tonumber(h, 16)) end)
  s = s:gsub("[ \t\r]+", " "):gsub(" *\n[ \n]*", "\n")
  return (s:gsub("^%s+", ""):gsub("%s+$", ""))
end
M.html_text = html_text

-- text(body, ctype, cap) -> the text for the model: HTML reduced to its
-- text, cut to at most cap bytes on a UTF-8 character boundary, with a
-- note when it was cut.
local function text(body, ctype, cap)
  if ctype:find("html", 1, true) then body = html_text(body) end
  if #body <= cap then return body end
  return string.format("%s\n[truncated to %d bytes]", ah.tools.utf8_cut(body, cap), cap)
end
M.text = text

local function fetch(args, allow_private, max_body)
  local res = ah.http.request { url = args.url, timeout = 20, connect_timeout = 5,
    max_body = max_body, follow_redirects = true, allow_private = allow_private }
  local ctype = res.headers["content-type"] or ""
  return string.format("HTTP %d %s\n\n%s", res.status, ctype, text(res.body, ctype, args.max_bytes or 65536))
end

function M.run(args)
  return fetch(args, false, M.max_body)
end

-- http_fetch.new{allow_private =, max_body =} -> a tool with those settings
function M.new(opts)
  local t = {}
  for k, v in pairs(M) do t[k] = v end
  t.new = nil
  local allow, max_body = opts.allow_private and true or false, opts.max_body or M.max_body
  t.run = function(args) return fetch(args, allow, max_body) end
  return t
end

return M
