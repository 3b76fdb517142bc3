#!/usr/bin/env bash
# Runs the whole test suite against real NATS and PostgreSQL (started if missing, see
# scripts/services.sh). Tests isolate themselves (a database and stream prefix each), so they
# run in parallel. Python's nats-py and msgpack (the test of a client that is not ours) and
# the official openai SDK (the Batch API test) are installed into target/py.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/build-deps.sh
./scripts/services.sh

PY=target/py/bin/python
if [ ! -x "$PY" ]; then
  mkdir -p target
  if ! python3 -m venv target/py 2>/dev/null; then
    sudo_cmd=""; [ "$(id -u)" -ne 0 ] && sudo_cmd="sudo"
    $sudo_cmd env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends python3-venv
    python3 -m venv target/py
  fi
fi
# The official OpenAI SDK, pinned: the Batch API test runs it against `switchyard api`.
OPENAI_SDK=3.60.0
if ! "$PY" -c "import nats, msgpack, openai; assert openai.__version__ == '$OPENAI_SDK'" 2>/dev/null; then
  "$PY" -m pip install --quiet --disable-pip-version-check nats-py msgpack "openai==$OPENAI_SDK"
fi
export SWITCHYARD_TEST_PYTHON="$PWD/$PY"

# Headless Chromium for the finance dashboard test (Debian's `chromium` package).
if ! command -v chromium >/dev/null 2>&1 && ! command -v chromium-browser >/dev/null 2>&1 \
    && [ -z "${SWITCHYARD_CHROMIUM:-}" ]; then
  sudo_cmd=""; [ "$(id -u)" -ne 0 ] && sudo_cmd="sudo"
  if ! $sudo_cmd env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends chromium; then
    $sudo_cmd apt-get update
    $sudo_cmd env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends chromium
  fi
fi

if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --workspace --no-fail-fast "$@"
else
  cargo test --workspace --no-fail-fast "$@"
fi

# Only for the whole suite (not when a filter was given): crashes, restarts and provider faults
# on a NATS and Postgres of the run's own (under 5 minutes), then every fuzz target for 60 s.
if [ "$#" -eq 0 ] && [ -z "${SWITCHYARD_SKIP_SLOW:-}" ]; then
  cargo build -p switchyard
  timeout 600 target/debug/switchyard chaos --json
  ./scripts/fuzz.sh
fi
