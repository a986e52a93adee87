#!/bin/sh
# tests/support/fleet_pg.sh: a throwaway PostgreSQL cluster for the fleet's
# specs, its demo and its benchmark.
#
#   fleet_pg.sh start DIR [fsync]   creates DIR (which must not exist),
#                                   initialises a cluster in DIR/data, starts
#                                   it on 127.0.0.1 at a free port and on a
#                                   socket in DIR, and prints its URL
#   fleet_pg.sh stop DIR            stops that cluster (immediate) and
#                                   removes DIR
#
# The server runs as the postgres user when started by root (initdb refuses
# root), with trust authentication on loopback and the socket only.  fsync
# is off unless the second argument is "fsync": the specs kill workers, not
# the server, and an fsync per commit on a shared disk only slows them; the
# benchmark asks for it so that every peer pays for real durability.
# Needs Debian's postgresql package (make deps installs it); fails, with a
# message, when it is missing.
set -eu

bindir() {
  if command -v pg_config >/dev/null 2>&1 && [ -x "$(pg_config --bindir)/postgres" ]; then
    pg_config --bindir
    return
  fi
  d=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)
  if [ -z "$d" ] || [ ! -x "$d/postgres" ]; then
    echo "fleet_pg.sh: no PostgreSQL server found (install Debian's postgresql: make deps)" >&2
    exit 1
  fi
  echo "$d"
}

as_owner() { # command...: runs it as the cluster's owner
  if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi
}

case "${1:-}" in
start)
  dir=${2:?usage: fleet_pg.sh start DIR [fsync]}
  fsync=off
  [ "${3:-}" = fsync ] && fsync=on
  bin=$(bindir)
  mkdir "$dir"
  [ "$(id -u)" = 0 ] && chown postgres "$dir"
  as_owner "$bin/initdb" -D "$dir/data" -U postgres -A trust -E UTF8 --locale=C.UTF-8 \
    >"$dir/initdb.log" 2>&1 || { cat "$dir/initdb.log" >&2; exit 1; }
  # A port nobody listens on: tried until the server starts (another
  # program may take a port between the choice and the bind).
  tries=0
  while :; do
    port=$(( 20000 + $(od -An -N2 -tu2 /dev/urandom | tr -d ' ') % 40000 ))
    if as_owner "$bin/pg_ctl" -D "$dir/data" -l "$dir/server.log" -w -t 60 \
         -o "-p $port -c listen_addresses=127.0.0.1 -c unix_socket_directories=$dir \
             -c fsync=$fsync -c synchronous_commit=on -c max_connections=300 \
             -c shared_buffers=256MB -c log_min_messages=warning \
             -c max_locks_per_transaction=256" start >"$dir/pg_ctl.log" 2>&1; then
      break
    fi
    tries=$((tries + 1))
    if [ "$tries" -ge 5 ]; then
      echo "fleet_pg.sh: the server did not start:" >&2
      tail -n 20 "$dir/server.log" >&2 2>/dev/null || cat "$dir/pg_ctl.log" >&2
      exit 1
    fi
  done
  echo "$port" >"$dir/port"
  echo "postgresql://postgres@127.0.0.1:$port/postgres"
  ;;
stop)
  dir=${2:?usage: fleet_pg.sh stop DIR}
  bin=$(bindir)
  if [ -d "$dir/data" ]; then
    as_owner "$bin/pg_ctl" -D "$dir/data" -m immediate -w stop >/dev/null 2>&1 || true
  fi
  rm -rf "$dir"
  ;;
*)
  echo "usage: fleet_pg.sh start DIR [fsync] | stop DIR" >&2
  exit 2
  ;;
esac
