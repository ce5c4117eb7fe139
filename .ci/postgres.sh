#!/usr/bin/env bash
# A throw-away PostgreSQL server on 127.0.0.1 for the registry's Postgres tests.
#
#   eval "$(.ci/postgres.sh start)"   # prints export lines: XREG_PG_DIR, XREG_TEST_POSTGRES_URL
#   python -m pytest tests/test_postgres.py
#   .ci/postgres.sh stop              # stops the server named by $XREG_PG_DIR and deletes it
#
# It uses the distribution's server (Debian/Ubuntu `postgresql`), installing it with
# apt-get when no initdb is found: that is the server teams run in production, it
# needs nothing from PyPI, and one apt line works on any Debian-based CI image.
# The cluster lives in a temporary folder, listens on a free port of 127.0.0.1 only
# (its socket folder is private too), and its superuser `xreg` logs in over TCP with
# a password (scram-sha-256), as a team's server would.  initdb refuses to run as
# root, so under root the server runs as the `postgres` system user.
set -euo pipefail

find_bindir() {
  local dir
  if command -v pg_config >/dev/null 2>&1 && [ -x "$(pg_config --bindir)/initdb" ]; then
    pg_config --bindir
    return
  fi
  for dir in $(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V -r); do
    if [ -x "$dir/initdb" ]; then echo "$dir"; return; fi
  done
  if command -v initdb >/dev/null 2>&1; then dirname "$(readlink -f "$(command -v initdb)")"; fi
}

as_owner() {  # run a server command as the cluster's owner
  if [ "$(id -u)" -eq 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi
}

start() {
  local bindir
  bindir="$(find_bindir)"
  if [ -z "$bindir" ]; then
    if [ "$(id -u)" -ne 0 ]; then
      echo "postgres.sh: no PostgreSQL server found; install the 'postgresql' package" >&2
      exit 1
    fi
    echo "postgres.sh: installing PostgreSQL with apt-get" >&2
    { apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q postgresql; } >&2
    bindir="$(find_bindir)"
  fi
  local dir port password
  dir="$(mktemp -d /tmp/xreg-pg.XXXXXX)"
  chmod 755 "$dir"
  port="$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
  password="xreg-ci-$RANDOM$RANDOM"
  printf '%s\n' "$password" > "$dir/pwfile"
  mkdir "$dir/data" "$dir/socket"
  if [ "$(id -u)" -eq 0 ]; then chown -R postgres "$dir"; fi
  as_owner "$bindir/initdb" -D "$dir/data" -U xreg --pwfile="$dir/pwfile" \
    --auth-local=trust --auth-host=scram-sha-256 -E UTF8 --locale=C.UTF-8 >"$dir/initdb.log" 2>&1 \
    || { cat "$dir/initdb.log" >&2; exit 1; }
  rm -f "$dir/pwfile"
  as_owner "$bindir/pg_ctl" -D "$dir/data" -l "$dir/server.log" -w -t 60 \
    -o "-c listen_addresses=127.0.0.1 -p $port -k $dir/socket -c max_connections=200 -c fsync=off" \
    start >&2 || { cat "$dir/server.log" >&2; exit 1; }
  as_owner "$bindir/createdb" -h "$dir/socket" -p "$port" -U xreg xreg >&2
  echo "export XREG_PG_DIR=$dir"
  echo "export XREG_PG_BINDIR=$bindir"
  echo "export XREG_TEST_POSTGRES_URL=postgresql+psycopg://xreg:$password@127.0.0.1:$port/xreg"
}

stop() {
  local dir="${XREG_PG_DIR:-}"
  if [ -z "$dir" ] || [ ! -d "$dir/data" ]; then return 0; fi
  local bindir="${XREG_PG_BINDIR:-$(find_bindir)}"
  as_owner "$bindir/pg_ctl" -D "$dir/data" -m fast -w stop >&2 || true
  rm -rf "$dir"
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  *) echo "usage: $0 start|stop" >&2; exit 2 ;;
esac
