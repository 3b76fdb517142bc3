#!/usr/bin/env bash
# Makes NATS (with JetStream) and PostgreSQL answer on loopback, the way Switchyard's demo,
# tests and CI expect them: nats://127.0.0.1:4222 and postgres://postgres@127.0.0.1:5432.
#
# Idempotent: a service that already answers is reused untouched. A missing one is installed
# from the distribution's packages (Debian/Ubuntu: nats-server, postgresql) and started on
# loopback only. Loopback TCP logins of the `postgres` role are set to `trust` if a password
# would otherwise be required (a development box; do not run this on a shared server).
set -euo pipefail

NATS_PORT=${NATS_PORT:-4222}
PG_PORT=${PG_PORT:-5432}
NATS_STORE=${NATS_STORE:-/var/lib/nats-server}

say() { printf 'services: %s\n' "$*" >&2; }
port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
# shellcheck source=scripts/apt.sh
. "$(dirname "${BASH_SOURCE[0]}")/apt.sh"

wait_port() { # name port
  for _ in $(seq 1 60); do
    if port_open "$2"; then return 0; fi
    sleep 0.5
  done
  say "$1 did not start listening on 127.0.0.1:$2 within 30 s"
  return 1
}

# --- NATS with JetStream -------------------------------------------------------------------
if port_open "$NATS_PORT"; then
  say "NATS already answers on 127.0.0.1:$NATS_PORT"
else
  if ! have nats-server && [ ! -x /usr/sbin/nats-server ]; then apt_install nats-server; fi
  NATS_BIN=$(command -v nats-server || echo /usr/sbin/nats-server)
  $SUDO mkdir -p "$NATS_STORE"
  say "starting nats-server with JetStream on 127.0.0.1:$NATS_PORT"
  if have start-stop-daemon; then
    # A pidfile of our own, so a nats-server already running on another port does not count.
    $SUDO start-stop-daemon --start --oknodo --background --make-pidfile \
      --pidfile "/tmp/switchyard-nats-$NATS_PORT.pid" --exec "$NATS_BIN" -- \
      -a 127.0.0.1 -p "$NATS_PORT" -js -sd "$NATS_STORE"
  else
    $SUDO nohup "$NATS_BIN" -a 127.0.0.1 -p "$NATS_PORT" -js -sd "$NATS_STORE" >/dev/null 2>&1 &
  fi
  wait_port nats-server "$NATS_PORT"
fi

# --- PostgreSQL -----------------------------------------------------------------------------
if ! ls /etc/postgresql/*/main >/dev/null 2>&1 && ! port_open "$PG_PORT"; then
  apt_install postgresql
fi
if port_open "$PG_PORT"; then
  say "PostgreSQL already answers on 127.0.0.1:$PG_PORT"
else
  version=$(ls /etc/postgresql | sort -V | tail -1)
  say "starting PostgreSQL $version"
  $SUDO pg_ctlcluster --skip-systemctl-redirect "$version" main start
  wait_port postgresql "$PG_PORT"
fi
if ! have psql; then apt_install postgresql-client; fi
if ! psql "postgresql://postgres@127.0.0.1:$PG_PORT/postgres" -Atc 'select 1' >/dev/null 2>&1; then
  hba=$(ls /etc/postgresql/*/main/pg_hba.conf 2>/dev/null | sort -V | tail -1 || true)
  if [ -z "$hba" ]; then
    say "cannot log in as postgres on 127.0.0.1:$PG_PORT and found no pg_hba.conf to fix; set DATABASE_URL"
    exit 1
  fi
  say "allowing loopback logins of role postgres in $hba"
  tmp=$(mktemp)
  { printf 'host all postgres 127.0.0.1/32 trust\nhost all postgres ::1/128 trust\n'; $SUDO cat "$hba"; } >"$tmp"
  $SUDO cp "$tmp" "$hba"
  rm -f "$tmp"
  version=$(basename "$(dirname "$(dirname "$hba")")")
  $SUDO pg_ctlcluster --skip-systemctl-redirect "$version" main reload
  sleep 1
  psql "postgresql://postgres@127.0.0.1:$PG_PORT/postgres" -Atc 'select 1' >/dev/null
fi
say "ready: NATS nats://127.0.0.1:$NATS_PORT, PostgreSQL postgres://postgres@127.0.0.1:$PG_PORT"
