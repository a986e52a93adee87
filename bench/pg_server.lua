-- bench/pg_server.lua: the throwaway PostgreSQL server of bench/pg, made
-- with tests/support/pg.lua (a fresh cluster in a temporary directory, on
-- 127.0.0.1 at an ephemeral port, fsync and synchronous commit on), and
-- the benchmark's tables.
--
--   lua5.4 bench/pg_server.lua start    -- prints url=URL and dir=DIR
--   lua5.4 bench/pg_server.lua stop DIR
--
-- (LUA_PATH must reach tests/: bench/pg sets it.)

local pgs = require "support.pg"
local cmd, dir = ...

if cmd == "start" then
  local srv = pgs.start { durable = true, detached = true }
  local ok, err = pcall(srv.psql, srv, [[
    CREATE TABLE bench_items(id int PRIMARY KEY, name text NOT NULL, value double precision NOT NULL);
    INSERT INTO bench_items SELECT g, 'item ' || g, g * 1.5 FROM generate_series(1, 10000) g;
    CREATE TABLE bench_rows(id bigserial PRIMARY KEY, agent int NOT NULL, step int NOT NULL,
                            body text NOT NULL);
    CREATE TABLE bench_bulk(id bigserial PRIMARY KEY, agent int NOT NULL, step int NOT NULL,
                            body text NOT NULL);
    ANALYZE;]])
  if not ok then
    srv:stop()
    error(err, 0)
  end
  print("url=" .. srv.url)
  print("dir=" .. srv.dir)
elseif cmd == "stop" and dir then
  pgs.stop_dir(dir)
else
  io.stderr:write("usage: lua5.4 bench/pg_server.lua start | stop DIR\n")
  os.exit(2)
end
