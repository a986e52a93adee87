// Shared by the Node test servers: listen on an ephemeral port of
// 127.0.0.1, print "port=N" for tests/support/httpd.lua, and exit at once
// on SIGTERM, SIGINT or the end of stdin (open keep-alive connections
// would hold server.close() up).
'use strict';

module.exports = function serve(server) {
  server.listen(0, '127.0.0.1', () => {
    process.stdout.write(`port=${server.address().port}\n`);
  });
  const stop = () => process.exit(0);
  process.on('SIGTERM', stop);
  process.on('SIGINT', stop);
  process.stdin.on('end', stop);
  process.stdin.resume();
};
