// Preloaded into a third-party Node server (node -r ./loopback_listen.cjs
// server.js ...) that listens on a fixed port on every interface: every
// listen() it makes binds 127.0.0.1 on an ephemeral port instead, and the
// port is written to stderr as one line "loopback-port=N" once it listens,
// so that specs run such servers on loopback only, on a port the kernel
// picked.
"use strict";
const net = require("node:net");
const listen = net.Server.prototype.listen;
net.Server.prototype.listen = function (...args) {
  const done = args.find((a) => typeof a === "function");
  return listen.call(this, 0, "127.0.0.1", function () {
    process.stderr.write(`loopback-port=${this.address().port}\n`);
    if (done) done.apply(this, arguments);
  });
};
