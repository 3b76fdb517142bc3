# Sourced by the scripts that start processes of their own (bench-batch-api.sh,
# compare-gateways.sh): everything they start is stopped when they exit, however they exit.
#
# - `PIDS+=("$!")` after starting a process (with setsid: its process group is its own, so
#   the children it forks are stopped too);
# - `CLEANUP_DB=name` to have that database dropped on exit (needs `PG`, a server URL);
# - `free_port` prints a free TCP port on loopback; `wait_http NAME URL SECONDS` waits for
#   URL to answer 2xx, bounded.
# - `need_fleet` starts NATS and Postgres (scripts/services.sh) and installs the clients the
#   scripts use (curl, psql) from the distribution's packages when missing.
# The sourcing script defines `say`; this file sources scripts/apt.sh.

# shellcheck source=scripts/apt.sh
. scripts/apt.sh

PIDS=()
CLEANUP_DB=""
cleanup() {
  local status=$?
  for pid in "${PIDS[@]}"; do
    kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null || true
  done
  for pid in "${PIDS[@]}"; do
    for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL -- "-$pid" 2>/dev/null || true
  done
  if [ -n "$CLEANUP_DB" ]; then
    psql "$PG/postgres" -qAtc "DROP DATABASE IF EXISTS \"$CLEANUP_DB\" WITH (FORCE)" >/dev/null 2>&1 || true
  fi
  exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

wait_http() { # name url seconds
  for _ in $(seq 1 $(($3 * 4))); do
    if curl -sf -o /dev/null "$2"; then return 0; fi
    sleep 0.25
  done
  say "$1 did not answer $2 within $3 s"
  return 1
}

need_fleet() {
  ./scripts/services.sh
  have curl || apt_install curl ca-certificates
  have psql || apt_install postgresql-client
}
