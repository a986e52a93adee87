-- The agenthost Lua module for a LuaRocks tree.  From a checkout:
--
--   luarocks --lua-version 5.4 make                  (or --tree DIR, --local)
--
-- builds build/agenthost.so with the project's Makefile (`make rock`; BUILD
-- in the environment picks another build directory) and installs it (`make
-- rock-install`); the Lua library and the bundled tools are built into it.
-- The C libraries it links come from the system: liblua5.4-dev, libuv1-dev,
-- libcurl4-openssl-dev, libsqlite3-dev and pkg-config on Debian (`make
-- deps`); nothing else is needed at run time.
rockspec_format = "3.0"
package = "agenthost"
version = "0.1.0-1"
source = {
  -- luarocks make builds the checkout it runs in; there is no download.
  url = ".",
}
description = {
  summary = "Lua 5.4 agent host: tasks with non-blocking timers, HTTP, SQLite and subprocesses",
  detailed = [[
agenthost runs AI-agent loops written as plain Lua on one libuv loop: model
API calls, web requests, subprocess tools, database writes and sleeps wait
without blocking, and thousands of agents share one thread.  This rock is
the module for stock Lua 5.4: require "agenthost".
]],
}
dependencies = {
  "lua >= 5.4, < 5.5",
}
-- CFLAGS is not passed (luarocks warns about it): the Makefile's flags, the
-- project's strict C99 set, would be replaced by luarocks' "-O2 -fPIC".
build = {
  type = "make",
  build_target = "rock",
  install_target = "rock-install",
  install_variables = {
    INST_LIBDIR = "$(LIBDIR)",
  },
}
