#!/usr/bin/env bash
# Side by side with the gateway users pick today: the same chat-completion requests
# against the model simulator directly, through the fleet (one single-item job per call, result
# and ledger row committed in Postgres) and through a LiteLLM proxy. Prints the latency each
# path adds per call (p50, p99) and the calls/s each sustains at concurrency 1, 8 and 32; see
# docs/gateway-comparison.md.
#
#   ./scripts/compare-gateways.sh              # text report
#   ./scripts/compare-gateways.sh --json       # extra arguments go to `switchyard bench-gateway`
#
# Idempotent. On a fresh Debian/Ubuntu box it installs what is missing: NATS and PostgreSQL
# (scripts/services.sh), python3-venv, a virtualenv under target/litellm-venv with
# litellm[proxy] (pinned), and builds the release binary. It starts the simulator and LiteLLM
# on free loopback ports and stops everything it started on exit, failure included.
#
# LiteLLM runs as in production: master key, `proxy_batch_write_at: 60`, one uvicorn worker per
# core (LITELLM_WORKERS), and spend logging to a fresh Postgres database of its own, its
# migrations applied by LiteLLM itself at start-up. That needs Prisma's query and schema
# engines, which Prisma downloads from its own server on first use (not a package registry).
# Where they cannot be had, the script says so and runs LiteLLM without a database, the
# report saying which setup ran (LITELLM_REQUIRE_DB=1 makes that an error instead).
#
# Environment: SWITCHYARD_BIN (use this binary, no build), LITELLM_VERSION, LITELLM_WORKERS,
# LITELLM_VENV, PGHOST_URL (default postgresql://postgres@127.0.0.1:5432), LITELLM_REQUIRE_DB.
set -euo pipefail

cd "$(dirname "$0")/.."

# 1.82.6: the last release before the March 2026 supply-chain compromise of the PyPI package
# (1.82.7 and 1.82.8 carried a credential stealer and were withdrawn), the version most
# projects pinned afterwards.
LITELLM_VERSION=${LITELLM_VERSION:-1.82.6}
# The Prisma client litellm[extra_proxy] of that version requires.
PRISMA_VERSION=${PRISMA_VERSION:-0.11.0}
VENV=${LITELLM_VENV:-target/litellm-venv}
PG=${PGHOST_URL:-postgresql://postgres@127.0.0.1:5432}
RUN_DIR=target/compare-gateways
# The weak tier's default model in the built-in configuration: the model the fleet calls.
MODEL="mistralai/Mixtral-8x7B-Instruct-v0.1"
LITELLM_WORKERS=${LITELLM_WORKERS:-$(nproc 2>/dev/null || echo 1)}

say() { printf 'compare-gateways: %s\n' "$*" >&2; }
# shellcheck source=scripts/procs.sh
. scripts/procs.sh

# --- services, tools, the binary ----------------------------------------------------------
need_fleet
have python3 || apt_install python3
if ! python3 -c 'import ensurepip, venv' >/dev/null 2>&1; then apt_install python3-venv; fi
if [ ! -x "$VENV/bin/python" ] || ! "$VENV/bin/python" -c 'import sys' >/dev/null 2>&1; then
  say "creating the virtualenv $VENV"
  rm -rf "$VENV"
  python3 -m venv "$VENV"
fi
installed() { "$VENV/bin/python" -c "import importlib.metadata as m, sys; sys.exit(m.version('$1') != '$2')" 2>/dev/null; }
if ! installed litellm "$LITELLM_VERSION" || ! installed prisma "$PRISMA_VERSION"; then
  say "installing litellm[proxy]==$LITELLM_VERSION and prisma==$PRISMA_VERSION into $VENV"
  "$VENV/bin/pip" install --quiet --disable-pip-version-check \
    "litellm[proxy]==$LITELLM_VERSION" "prisma==$PRISMA_VERSION"
fi

if [ -n "${SWITCHYARD_BIN:-}" ]; then
  BIN=$SWITCHYARD_BIN
else
  say "building the release binary"
  cargo build --release --quiet -p switchyard
  BIN=target/release/switchyard
fi

mkdir -p "$RUN_DIR"

# --- the simulator, at zero latency -------------------------------------------------------
SIM_PORT=$(free_port)
setsid "$BIN" sim --listen "127.0.0.1:$SIM_PORT" >"$RUN_DIR/sim.log" 2>&1 &
PIDS+=("$!")
wait_http simulator "http://127.0.0.1:$SIM_PORT/healthz" 30
SIM_URL="http://127.0.0.1:$SIM_PORT/v1"

# --- LiteLLM's database: Prisma client and engines ----------------------------------------
export PATH="$PWD/$VENV/bin:$PATH"
SCHEMA=$("$VENV/bin/python" -c 'import os, litellm.proxy as p; print(os.path.join(os.path.dirname(p.__file__), "schema.prisma"))')
DB_ENV=()
if (cd "$RUN_DIR" && DATABASE_URL="$PG/postgres" timeout 600 prisma generate --schema "$SCHEMA") >"$RUN_DIR/prisma-generate.log" 2>&1; then
  CLEANUP_DB="litellm_gateway_$(date +%s)_$$"
  psql "$PG/postgres" -qAtc "CREATE DATABASE \"$CLEANUP_DB\"" >/dev/null
  DB_ENV=(DATABASE_URL="$PG/$CLEANUP_DB" ENFORCE_PRISMA_MIGRATION_CHECK=true)
  SETUP="spend logs in Postgres (own database, LiteLLM's migrations at start-up), $LITELLM_WORKERS workers, litellm $LITELLM_VERSION"
else
  why=$(grep -m1 -oE 'request to [^ ]+ failed, reason: [^\\]*|Error: .*' "$RUN_DIR/prisma-generate.log" || tail -1 "$RUN_DIR/prisma-generate.log")
  say "WARNING: 'prisma generate' failed, so LiteLLM cannot use a database here: $why"
  say "WARNING: (Prisma downloads its query/schema engines from its own server on first use;"
  say "WARNING:  log in $RUN_DIR/prisma-generate.log). LiteLLM runs WITHOUT its database."
  if [ "${LITELLM_REQUIRE_DB:-0}" = 1 ]; then exit 1; fi
  SETUP="NO database (Prisma engines unavailable, spend logging off), $LITELLM_WORKERS workers, litellm $LITELLM_VERSION"
fi

# --- the LiteLLM proxy --------------------------------------------------------------------
LITELLM_PORT=$(free_port)
LITELLM_KEY="sk-compare-$(python3 -c 'import secrets; print(secrets.token_hex(16))')"
cat >"$RUN_DIR/litellm.yaml" <<EOF
model_list:
  - model_name: "$MODEL"
    litellm_params:
      model: "openai/$MODEL"
      api_base: "$SIM_URL"
      api_key: "sim-needs-no-key"
general_settings:
  master_key: os.environ/LITELLM_MASTER_KEY
  proxy_batch_write_at: 60
  database_connection_pool_limit: 10
litellm_settings:
  request_timeout: 600
  set_verbose: false
  json_logs: true
EOF
say "starting LiteLLM $LITELLM_VERSION on 127.0.0.1:$LITELLM_PORT ($SETUP)"
env "${DB_ENV[@]}" LITELLM_MASTER_KEY="$LITELLM_KEY" LITELLM_LOCAL_MODEL_COST_MAP=True \
  LITELLM_LOG=ERROR LITELLM_TELEMETRY=False \
  setsid litellm --config "$RUN_DIR/litellm.yaml" --host 127.0.0.1 --port "$LITELLM_PORT" \
  --num_workers "$LITELLM_WORKERS" >"$RUN_DIR/litellm.log" 2>&1 &
PIDS+=("$!")
if ! wait_http LiteLLM "http://127.0.0.1:$LITELLM_PORT/health/liveliness" 300; then
  tail -20 "$RUN_DIR/litellm.log" >&2
  exit 1
fi

# --- the measurement ----------------------------------------------------------------------
LITELLM_MASTER_KEY="$LITELLM_KEY" "$BIN" bench-gateway \
  --sim-url "$SIM_URL" \
  --litellm-url "http://127.0.0.1:$LITELLM_PORT" \
  --litellm-setup "$SETUP" \
  "$@"

if [ -n "$CLEANUP_DB" ]; then
  rows=$(psql "$PG/$CLEANUP_DB" -qAtc 'SELECT count(*) FROM "LiteLLM_SpendLogs"' 2>/dev/null || echo "?")
  say "LiteLLM spend log rows so far: $rows (written in batches, up to proxy_batch_write_at late)"
fi
