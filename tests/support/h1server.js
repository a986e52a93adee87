// h1server.js: a plain HTTP/1.1 server built on Node's own `http` module
// alone, for the spec that checks ah.http against a server the project did
// not write (tests/http1_node_spec.lua).  127.0.0.1 only.
//
//   node tests/support/h1server.js
//
// Prints "port=N" once it listens; exits on SIGTERM or when stdin ends.
// Routes:
//   /echo           JSON {method, url, headers, body} of the request; the
//                   response carries two Set-Cookie and two X-Multi lines
//                   and a mixed-case X-Mixed-Case header
//   /json           a POSTed JSON body parsed and sent back as
//                   {method, content_type, received}
//   /fixed          "hello world" with a content-length
//   /chunked?n=N&size=S&gate=G
//                   N writes of S bytes (the i-th all of the letter a+i-1)
//                   without a content-length, so chunked; with gate, the
//                   first write goes at once and the rest only once
//                   /release?gate=G has been asked for
//   /gzip           a text gzipped with zlib when the request accepts gzip
//   /redirect       302 to the relative /elsewhere, which answers "elsewhere"
//   /sse?gate=G     server-sent events: a comment and a first event, then
//                   (after /release?gate=G when given) three more a few ms
//                   apart, one of them with multi-line data
//   /release?gate=G opens gate G (waiters resume; later ones pass at once)
//   /status/N       status N with body "status N"
//   /cut            announces 1000 bytes, sends 100, destroys the socket
//   /stats          JSON {connections, requests} counted since start
'use strict';
const http = require('http');
const zlib = require('zlib');

const stats = { connections: 0, requests: 0 };
const gates = new Map(); // name -> { open, waiters }

function gate(name) {
  let g = gates.get(name);
  if (!g) { g = { open: false, waiters: [] }; gates.set(name, g); }
  return g;
}

// Runs fn once gate `name` is open (at once when there is no gate).
function whenOpen(name, fn) {
  if (!name) return fn();
  const g = gate(name);
  if (g.open) return fn();
  g.waiters.push(fn);
}

function sendJSON(res, status, value) {
  res.statusCode = status;
  res.setHeader('content-type', 'application/json; charset=utf-8');
  res.end(JSON.stringify(value));
}

const GZIP_TEXT = 'compressed by node zlib\n'.repeat(200);

const server = http.createServer((req, res) => {
  stats.requests += 1;
  const url = new URL(req.url, 'http://127.0.0.1');
  const q = url.searchParams;
  const chunks = [];
  req.on('data', (c) => chunks.push(c));
  req.on('end', () => {
    const body = Buffer.concat(chunks).toString('utf8');
    const path = url.pathname;

    if (path === '/stats') return sendJSON(res, 200, stats);

    if (path === '/echo') {
      res.setHeader('Set-Cookie', ['a=1; Path=/', 'b=2; Path=/']);
      res.setHeader('X-Multi', ['one', 'two']);
      res.setHeader('X-Mixed-Case', 'Yes');
      return sendJSON(res, 200, { method: req.method, url: req.url, headers: req.headers, body });
    }

    if (path === '/json') {
      let received = null;
      try { received = JSON.parse(body); } catch (e) { return sendJSON(res, 400, { error: String(e) }); }
      return sendJSON(res, 200, {
        method: req.method, content_type: req.headers['content-type'] || null, received,
      });
    }

    if (path === '/fixed') {
      res.setHeader('content-type', 'text/plain');
      res.setHeader('content-length', '11');
      return res.end('hello world');
    }

    if (path === '/chunked') {
      const n = Number(q.get('n') || 5);
      const size = Number(q.get('size') || 100);
      res.setHeader('content-type', 'text/plain');
      let i = 0;
      const next = () => {
        if (i === n) return res.end();
        res.write(String.fromCharCode(97 + i).repeat(size));
        i += 1;
        if (i === 1) whenOpen(q.get('gate'), () => setTimeout(next, 2));
        else setTimeout(next, 2);
      };
      return next();
    }

    if (path === '/gzip') {
      res.setHeader('content-type', 'text/plain');
      res.setHeader('x-request-accept-encoding', req.headers['accept-encoding'] || '');
      if (/\bgzip\b/.test(req.headers['accept-encoding'] || '')) {
        const z = zlib.gzipSync(GZIP_TEXT);
        res.setHeader('content-encoding', 'gzip');
        res.setHeader('content-length', String(z.length));
        return res.end(z);
      }
      return res.end(GZIP_TEXT);
    }

    if (path === '/redirect') {
      res.statusCode = 302;
      res.setHeader('location', '/elsewhere');
      return res.end('moved');
    }
    if (path === '/elsewhere') {
      res.setHeader('content-type', 'text/plain');
      return res.end('elsewhere');
    }

    if (path === '/sse') {
      res.writeHead(200, { 'content-type': 'text/event-stream', 'cache-control': 'no-cache' });
      res.write(': a comment the client skips\n\n');
      res.write('id: 1\nevent: first\ndata: one\n\n');
      const rest = [
        'data: line one\ndata: line two\ndata: line three\n\n',
        ': another comment\nid: 3\ndata: {"n":3}\n\n',
        'event: last\ndata: bye\n\n',
      ];
      let i = 0;
      const next = () => {
        if (i === rest.length) return res.end();
        res.write(rest[i]);
        i += 1;
        setTimeout(next, 5);
      };
      return whenOpen(q.get('gate'), () => setTimeout(next, 5));
    }

    if (path === '/release') {
      const g = gate(q.get('gate') || '');
      g.open = true;
      const waiters = g.waiters;
      g.waiters = [];
      waiters.forEach((fn) => fn());
      res.setHeader('content-type', 'text/plain');
      return res.end('released');
    }

    const m = path.match(/^\/status\/(\d{3})$/);
    if (m) {
      res.statusCode = Number(m[1]);
      res.setHeader('content-type', 'text/plain');
      return res.end(`status ${m[1]}`);
    }

    if (path === '/cut') {
      res.setHeader('content-type', 'application/octet-stream');
      res.setHeader('content-length', '1000');
      return res.write('x'.repeat(100), () => res.socket.destroy());
    }

    res.statusCode = 404;
    res.setHeader('content-type', 'text/plain');
    res.end('not found');
  });
});

server.on('connection', () => { stats.connections += 1; });

require('./serve')(server);
