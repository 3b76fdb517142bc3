#!/usr/bin/env bash
# Sets up what is missing (NATS, PostgreSQL, see scripts/services.sh), builds Switchyard and
# runs the demo: the whole fleet on bundled real routing data. Extra arguments go to
# `switchyard demo` (e.g. --json, --items 500).
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/build-deps.sh
./scripts/services.sh
cargo build --release --bin switchyard
exec ./target/release/switchyard demo "$@"
