-- agenthost.trace.html: a timeline of stored spans as one self-contained
-- HTML file: inline CSS and JavaScript, no network, no external resource.
--
--   local html = require "agenthost.trace.html"
--   local page = html.render(rows, messages, { title = "..." })
--
-- rows are spans as agenthost.trace.store.spans returns them; messages maps
-- a conversation id to its memory messages.  The page draws one bar per
-- span on a shared time axis, nested under its parent (indented, in start
-- order), coloured by kind; a failed span is red with a mark.  Hovering a
-- bar shows its name, duration and tokens; clicking it opens the side
-- panel with its status, timing, attributes, events and, for a run (or a
-- root span of a conversation) or a turn, the messages of that run or
-- turn (the tool calls of an answer and whether a tool result is an
-- error included), as text.
--
-- Everything stored is data, not markup: the spans and messages are
-- embedded as JSON (with "<" escaped so no text can close the script) and
-- the page puts them into the document with textContent only, so model
-- output or tool results cannot inject anything into the page.

local json = require("agenthost.core").json

local M = {}

local CSS = [==[
*{box-sizing:border-box}
body{margin:0;font:13px/1.4 system-ui,-apple-system,"Segoe UI",sans-serif;color:#1d2330;background:#f6f7f9}
header{padding:10px 16px;background:#1d2330;color:#fff}
header h1{font-size:16px;margin:0 0 4px}
header .sub{color:#b8c0cc;font-size:12px}
#legend{display:flex;gap:12px;flex-wrap:wrap;padding:6px 16px;background:#fff;border-bottom:1px solid #dde1e7}
#legend span{display:inline-flex;align-items:center;gap:4px;font-size:12px}
#legend i{display:inline-block;width:12px;height:12px;border-radius:2px}
main{display:flex;height:calc(100vh - 92px)}
#timeline{flex:1;overflow:auto;background:#fff}
#panel{width:380px;overflow:auto;border-left:1px solid #dde1e7;padding:10px 14px;background:#fbfbfc}
#panel h2{font-size:14px;margin:4px 0 8px;word-break:break-word}
#panel table{border-collapse:collapse;width:100%;font-size:12px}
#panel td{border-top:1px solid #eceef2;padding:3px 4px;vertical-align:top;word-break:break-word}
#panel td:first-child{color:#5a6473;white-space:nowrap}
#panel h3{font-size:12px;margin:12px 0 4px;color:#5a6473;text-transform:uppercase;letter-spacing:.04em}
.msg{border:1px solid #e3e6eb;border-radius:4px;margin:6px 0;padding:6px;background:#fff}
.msg .role{font-weight:600;font-size:11px;color:#5a6473;text-transform:uppercase}
.msg pre{margin:4px 0 0;white-space:pre-wrap;word-break:break-word;font:12px/1.35 ui-monospace,Menlo,Consolas,monospace}
.msg .call{margin-top:4px;color:#1aa37a;font:12px/1.35 ui-monospace,Menlo,Consolas,monospace;word-break:break-word}
.axis{position:sticky;top:0;z-index:2;display:flex;background:#fff;border-bottom:1px solid #dde1e7;height:22px}
.axis .lab,.row .lab{flex:0 0 300px;width:300px;padding:0 6px;overflow:hidden;white-space:nowrap;text-overflow:ellipsis}
.axis .track,.row .track{position:relative;flex:1;min-width:400px}
.tick{position:absolute;top:0;height:22px;border-left:1px solid #dde1e7;padding-left:3px;font-size:11px;color:#5a6473}
.trace{padding:4px 6px;background:#eef0f4;font-size:11px;color:#5a6473;border-top:1px solid #dde1e7}
.row{display:flex;height:22px;align-items:center;cursor:pointer}
.row:hover{background:#f3f5f8}
.row.sel{background:#e6eefc}
.bar{position:absolute;top:4px;height:14px;min-width:2px;border-radius:3px;background:#5d6d7e}
.bar.error{outline:2px solid #d62d20;outline-offset:0;background-image:repeating-linear-gradient(45deg,transparent 0 4px,rgba(214,45,32,.35) 4px 8px)}
.lab .mark{color:#d62d20;font-weight:700;margin-right:3px}
.lab .dur{color:#8a93a1;margin-left:6px;font-size:11px}
.kind-agent{background:#6b5bd6}.kind-turn{background:#9aa4b2}.kind-chat{background:#2f7de1}
.kind-tool{background:#1aa37a}.kind-handoff{background:#e08a1e}.kind-guardrail{background:#c9a400}
.kind-http{background:#7f8c8d}.kind-db{background:#8e6c4e}.kind-proc{background:#a05195}
.kind-span{background:#5d6d7e}
.empty{padding:20px;color:#5a6473}
]==]

local JS = [==[
(function () {
  'use strict';
  var data = JSON.parse(document.getElementById('trace-data').textContent);
  var spans = data.spans, messages = data.messages || {};
  var byId = {}, kids = {}, roots = [];
  spans.forEach(function (s) { byId[s.trace_id + '/' + s.span_id] = s; });
  spans.forEach(function (s) {
    var p = s.parent_span_id && byId[s.trace_id + '/' + s.parent_span_id];
    if (p) { (kids[p.trace_id + '/' + p.span_id] = kids[p.trace_id + '/' + p.span_id] || []).push(s); }
    else roots.push(s);
  });
  function byStart(a, b) { return a.start_ns - b.start_ns; }
  roots.sort(byStart);
  var t0 = Infinity, t1 = -Infinity;
  spans.forEach(function (s) { t0 = Math.min(t0, s.start_ns); t1 = Math.max(t1, s.end_ns); });
  var span = Math.max(t1 - t0, 1);
  function el(tag, cls, text) {
    var e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text !== undefined && text !== null) e.textContent = String(text);
    return e;
  }
  function dur(ns) {
    if (ns < 1e6) return (ns / 1e3).toFixed(1) + ' µs';
    if (ns < 1e9) return (ns / 1e6).toFixed(1) + ' ms';
    return (ns / 1e9).toFixed(2) + ' s';
  }
  function tokens(s) {
    var a = s.attributes || {}, i = a['gen_ai.usage.input_tokens'], o = a['gen_ai.usage.output_tokens'];
    if (i === undefined && o === undefined) return '';
    return (i || 0) + ' in / ' + (o || 0) + ' out tokens';
  }
  var tl = document.getElementById('timeline');
  var panel = document.getElementById('panel');
  if (!spans.length) { tl.appendChild(el('div', 'empty', 'No spans in this selection.')); }
  var axis = el('div', 'axis');
  axis.appendChild(el('div', 'lab', 'span'));
  var atrack = el('div', 'track');
  for (var k = 0; k <= 5; k++) {
    var tick = el('div', 'tick', '+' + dur(span * k / 5));
    tick.style.left = (k * 20) + '%';
    if (k === 5) { tick.style.left = 'auto'; tick.style.right = '0'; tick.style.borderLeft = '0'; tick.style.borderRight = '1px solid #dde1e7'; tick.style.paddingRight = '3px'; }
    atrack.appendChild(tick);
  }
  axis.appendChild(atrack);
  tl.appendChild(axis);
  var rows = [];
  function add(s, depth) {
    var row = el('div', 'row');
    row.dataset.spanId = s.span_id;
    var lab = el('div', 'lab');
    lab.style.paddingLeft = (6 + depth * 14) + 'px';
    if (s.status === 'error') lab.appendChild(el('span', 'mark', '✕'));
    lab.appendChild(el('span', 'name', s.name));
    lab.appendChild(el('span', 'dur', dur(s.end_ns - s.start_ns)));
    var track = el('div', 'track');
    var bar = el('div', 'bar kind-' + String(s.kind).replace(/[^a-z_]/g, '') + (s.status === 'error' ? ' error' : ''));
    bar.style.left = ((s.start_ns - t0) / span * 100) + '%';
    bar.style.width = ((s.end_ns - s.start_ns) / span * 100) + '%';
    bar.dataset.spanId = s.span_id;
    bar.dataset.name = s.name;
    bar.dataset.kind = s.kind;
    bar.dataset.depth = depth;
    bar.dataset.status = s.status;
    bar.title = s.name + ' — ' + dur(s.end_ns - s.start_ns) + (tokens(s) ? ' — ' + tokens(s) : '') +
      (s.status === 'error' ? ' — failed: ' + (s.status_message || (s.attributes || {})['error.type'] || '') : '');
    track.appendChild(bar);
    row.appendChild(lab);
    row.appendChild(track);
    row.addEventListener('click', function () { show(s, row); });
    tl.appendChild(row);
    rows.push(row);
    (kids[s.trace_id + '/' + s.span_id] || []).sort(byStart).forEach(function (c) { add(c, depth + 1); });
  }
  var lastTrace = null;
  roots.forEach(function (r) {
    if (r.trace_id !== lastTrace) {
      lastTrace = r.trace_id;
      tl.appendChild(el('div', 'trace', 'trace ' + r.trace_id + (r.conversation ? ' · conversation ' + r.conversation : '')));
    }
    add(r, 0);
  });
  // The messages of a conversation grouped by turn: a turn is a model
  // answer and the tool results after it, with what came before the
  // answer since the previous turn (an input, a summary made for the
  // turn); what came before the first answer belongs to turn 1.  Turns
  // are counted over the whole conversation, as a turn span's
  // agenthost.conversation.turn counts them.
  function turnsOf(conv) {
    var list = messages[conv] || [], turn = 1, answered = false, out = {};
    list.forEach(function (m) {
      if (m.role === 'assistant') { if (answered) turn++; answered = true; }
      else if ((m.role === 'user' || m.role === 'summary') && answered) { turn++; answered = false; }
      (out[turn] = out[turn] || []).push(m);
    });
    return out;
  }
  function kv(table, k, v) {
    var tr = el('tr');
    tr.appendChild(el('td', null, k));
    tr.appendChild(el('td', null, typeof v === 'object' ? JSON.stringify(v) : v));
    table.appendChild(tr);
  }
  function showMessages(list) {
    panel.appendChild(el('h3', null, 'messages'));
    if (!list || !list.length) { panel.appendChild(el('div', null, 'none stored for this span')); return; }
    list.forEach(function (m) {
      var box = el('div', 'msg');
      box.dataset.role = m.role;
      box.appendChild(el('div', 'role', m.role + (m.name ? ' · ' + m.name : '') + (m.is_error ? ' · error' : '')));
      box.appendChild(el('pre', null, m.content === null || m.content === undefined ? '' : m.content));
      (m.tool_calls || []).forEach(function (c) {
        box.appendChild(el('div', 'call', '→ ' + c.name + ' ' + (c.arguments || '')));
      });
      panel.appendChild(box);
    });
  }
  function show(s, row) {
    rows.forEach(function (r) { r.classList.remove('sel'); });
    row.classList.add('sel');
    panel.textContent = '';
    panel.dataset.spanId = s.span_id;
    panel.appendChild(el('h2', null, s.name));
    var t = el('table');
    kv(t, 'kind', s.kind);
    kv(t, 'status', s.status + (s.status_message ? ': ' + s.status_message : ''));
    kv(t, 'duration', dur(s.end_ns - s.start_ns));
    kv(t, 'starts at', '+' + dur(s.start_ns - t0));
    if (tokens(s)) kv(t, 'tokens', tokens(s));
    kv(t, 'span id', s.span_id);
    if (s.parent_span_id) kv(t, 'parent', s.parent_span_id);
    panel.appendChild(t);
    var attrs = s.attributes || {}, keys = Object.keys(attrs).sort();
    if (keys.length) {
      panel.appendChild(el('h3', null, 'attributes'));
      var at = el('table');
      keys.forEach(function (k) { kv(at, k, attrs[k]); });
      panel.appendChild(at);
    }
    if (s.events && s.events.length) {
      panel.appendChild(el('h3', null, 'events'));
      var et = el('table');
      s.events.forEach(function (e) { kv(et, '+' + dur(e.time_ns - s.start_ns) + ' ' + e.name, e.attributes || ''); });
      panel.appendChild(et);
    }
    var conv = s.conversation;
    if (conv && (s.kind === 'agent' || !s.parent_span_id)) showMessages(messages[conv]);
    else if (s.kind === 'turn' && conv) {
      var a = s.attributes || {};
      showMessages(turnsOf(conv)[a['agenthost.conversation.turn'] || a['agenthost.turn.number']]);
    }
  }
  panel.appendChild(el('div', 'hint', 'Click a span to see its details, attributes and messages.'));
  document.getElementById('summary').textContent = spans.length + ' spans, ' + dur(span) +
    (data.errors ? ', ' + data.errors + ' failed' : '');
  tl.dataset.ready = '1';
})();
]==]

local KINDS = { "agent", "turn", "chat", "tool", "handoff", "guardrail", "http", "db", "proc", "span" }

local function esc_html(s)
  return (tostring(s):gsub("[&<>\"']", { ["&"] = "&amp;", ["<"] = "&lt;", [">"] = "&gt;",
                                         ['"'] = "&quot;", ["'"] = "&#39;" }))
end

-- JSON for a <script> element: "<" escaped, so that no stored text can
-- end the element early.
local function script_json(v)
  return (json.encode(v):gsub("<", "\\u003c"))
end

-- render(rows, messages, {title, subtitle}) -> the page
function M.render(rows, messages, opts)
  opts = opts or {}
  -- Times go in as nanoseconds from the earliest start: the page's
  -- JavaScript numbers (doubles) hold those exactly, not Unix nanoseconds.
  local t0 = math.maxinteger
  for _, r in ipairs(rows) do if r.start_ns < t0 then t0 = r.start_ns end end
  local list, errors = {}, 0
  for i, r in ipairs(rows) do
    local events
    if r.events then
      events = {}
      for j, e in ipairs(r.events) do
        events[j] = { name = e.name, time_ns = (e.time_ns or r.start_ns) - t0, attributes = e.attributes }
      end
    end
    list[i] = { trace_id = r.trace_id, span_id = r.span_id, parent_span_id = r.parent_span_id,
                name = r.name, kind = r.kind, start_ns = r.start_ns - t0, end_ns = r.end_ns - t0,
                status = r.status, status_message = r.status_message, conversation = r.conversation,
                attributes = r.attributes, events = events }
    if r.status == "error" then errors = errors + 1 end
  end
  local msgs = {}
  for conv, ms in pairs(messages or {}) do
    local out = {}
    for i, m in ipairs(ms) do
      out[i] = { seq = m.seq, role = m.role, content = m.content, name = m.name,
                 tool_call_id = m.tool_call_id, tool_calls = m.tool_calls, is_error = m.is_error }
    end
    msgs[tostring(conv)] = out
  end
  local legend = {}
  for i, k in ipairs(KINDS) do
    legend[i] = '<span><i class="kind-' .. k .. '"></i>' .. k .. '</span>'
  end
  legend[#legend + 1] = '<span><i class="kind-span" style="outline:2px solid #d62d20"></i>failed</span>'
  return table.concat {
    '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n',
    '<meta http-equiv="Content-Security-Policy" content="default-src \'none\'; ',
    'style-src \'unsafe-inline\'; script-src \'unsafe-inline\'">\n',
    '<title>', esc_html(opts.title or "agenthost trace"), '</title>\n<style>', CSS, '</style>\n</head>\n<body>\n',
    '<header><h1>', esc_html(opts.title or "agenthost trace"), '</h1><div class="sub">',
    esc_html(opts.subtitle or ""), ' <span id="summary"></span></div></header>\n',
    '<div id="legend">', table.concat(legend), '</div>\n',
    '<main><div id="timeline"></div><aside id="panel"></aside></main>\n',
    '<script type="application/json" id="trace-data">',
    script_json { spans = list, messages = msgs, errors = errors }, '</script>\n',
    '<script>', JS, '</script>\n</body>\n</html>\n',
  }
end

return M
