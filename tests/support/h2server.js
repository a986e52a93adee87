// h2server.js: a local HTTPS server speaking HTTP/2 (and HTTP/1.1 by ALPN)
// for the HTTP/2 specs.  Node's own http2 module, 127.0.0.1 only.
//
//   node tests/support/h2server.js KEY.pem CERT.pem
//
// Prints "port=N" once it listens; exits on SIGTERM or when stdin ends.
// Routes: /delay?ms=N answers "h2 ok" after N ms (default 50); /stats
// answers JSON {sessions, streams, max_streams_in_flight, http1} counted
// since start.
'use strict';
const http2 = require('http2');
const fs = require('fs');

const [keyPath, certPath] = process.argv.slice(2);
if (!keyPath || !certPath) {
  process.stderr.write('usage: h2server.js KEY.pem CERT.pem\n');
  process.exit(2);
}

const stats = { sessions: 0, streams: 0, max_streams_in_flight: 0, http1: 0 };
let inFlight = 0;

const server = http2.createSecureServer({
  key: fs.readFileSync(keyPath),
  cert: fs.readFileSync(certPath),
  allowHTTP1: true,
  settings: { maxConcurrentStreams: 256 },
});

server.on('session', () => { stats.sessions += 1; });

server.on('request', (req, res) => {
  const url = new URL(req.url, 'https://127.0.0.1');
  if (req.httpVersionMajor < 2) stats.http1 += 1;
  if (url.pathname === '/stats') {
    res.setHeader('content-type', 'application/json');
    res.end(JSON.stringify(stats));
    return;
  }
  if (url.pathname === '/delay') {
    stats.streams += 1;
    inFlight += 1;
    stats.max_streams_in_flight = Math.max(stats.max_streams_in_flight, inFlight);
    const ms = Number(url.searchParams.get('ms') || 50);
    setTimeout(() => {
      inFlight -= 1;
      res.setHeader('content-type', 'text/plain');
      res.end('h2 ok');
    }, ms);
    return;
  }
  res.statusCode = 404;
  res.end('not found');
});

require('./serve')(server);
