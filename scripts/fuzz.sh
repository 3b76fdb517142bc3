#!/usr/bin/env bash
# Runs every cargo-fuzz target (fuzz/) for FUZZ_SECONDS each (60 by default): the message
# decoders (job specs, work items) and the provider response parser must never panic.
# libFuzzer needs nightly compiler flags: on the stable toolchain RUSTC_BOOTSTRAP=1 allows
# them. cargo-fuzz is installed from crates.io when missing. A crash leaves its input in
# fuzz/artifacts/<target>/ and fails the script.
set -euo pipefail
cd "$(dirname "$0")/.."
FUZZ_SECONDS=${FUZZ_SECONDS:-60}
export RUSTC_BOOTSTRAP=1

if ! cargo fuzz --version >/dev/null 2>&1; then
  cargo install --locked cargo-fuzz
fi

targets=(decode_job decode_work_item provider_response)
cd fuzz
mkdir -p ../target/fuzz-logs
for t in "${targets[@]}"; do
  mkdir -p "corpus/$t"
  log="../target/fuzz-logs/$t.log"
  echo "fuzz: $t for ${FUZZ_SECONDS}s" >&2
  # First folder: the growing corpus; second: the committed seeds (read only).
  if ! cargo fuzz run "$t" "corpus/$t" "seeds/$t" -- \
      -max_total_time="$FUZZ_SECONDS" -rss_limit_mb=2048 -max_len=65536 -print_final_stats=1 \
      >"$log" 2>&1; then
    tail -n 60 "$log" >&2
    echo "fuzz: $t failed (input in fuzz/artifacts/$t, log in target/fuzz-logs/$t.log)" >&2
    exit 1
  fi
  grep -E '^(stat::number_of_executed_units|stat::peak_rss_mb)|^#[0-9]+ +DONE' "$log" >&2 || true
done
echo "fuzz: every target ran ${FUZZ_SECONDS}s without a failure" >&2
