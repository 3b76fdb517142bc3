#!/usr/bin/env bash
# Checks the limits that keep the layout true (run by CI before the lints):
# - the `switchyard` binary's crate stays a thin face: cli/src at most 2,500 lines;
# - the services link no offline, test or command-line crates: `switchyard-dispatcher` and
#   `switchyard-worker` have neither clap, plotters, candle nor the lab, demo, simulator,
#   testkit or router-lab crates in their dependency trees, and neither links the other;
# - the pure crates (proto, core, router) link no I/O crate (tokio, sqlx, async-nats, reqwest);
# - every crate's dependencies on our crates are exactly the table in docs/architecture.md.
set -euo pipefail
cd "$(dirname "$0")/.."

fail=0
say() { echo "check-layout: $*" >&2; fail=1; }

cli_lines=$(cat cli/src/*.rs | wc -l)
if [ "$cli_lines" -gt 2500 ]; then
  say "cli/src has $cli_lines lines (limit 2500): move logic into a library crate"
fi

# The names in a crate's normal (non-dev, non-build) dependency tree.
tree() { cargo tree -q -p "$1" -e normal --prefix none | sed 's/ v[0-9].*//' | sort -u; }

for svc in switchyard-dispatcher switchyard-worker; do
  for banned in clap plotters candle-core switchyard-router-lab switchyard-router-distill \
      switchyard-lab switchyard-demo switchyard-sim switchyard-testkit switchyard-twin \
      switchyard-client switchyard-finance; do
    if tree "$svc" | grep -qx "$banned"; then
      say "$svc links $banned (see \`cargo tree -p $svc -i $banned\`)"
    fi
  done
done
tree switchyard-dispatcher | grep -qx switchyard-worker && say "the dispatcher links the worker"
tree switchyard-worker | grep -qx switchyard-dispatcher && say "the worker links the dispatcher"

for pure in switchyard-proto switchyard-core switchyard-router; do
  for io in tokio sqlx async-nats reqwest; do
    if tree "$pure" | grep -qx "$io"; then
      say "$pure is pure but links $io"
    fi
  done
done

cargo metadata --format-version 1 --no-deps | python3 -c '
import json, re, sys
meta = json.load(sys.stdin)
ours = {p["name"]: sorted(
    d["name"].removeprefix("switchyard-") for d in p["dependencies"]
    if d["name"].startswith("switchyard") and d["kind"] is None)
    for p in meta["packages"]}
short = {("cli" if n == "switchyard" else n.removeprefix("switchyard-")): deps
         for n, deps in ours.items()}
doc = {}
for line in open("docs/architecture.md"):
    m = re.match(r"^\| (`[^|]*) \| ([^|]*) \|$", line.strip())
    if not m:
        continue
    deps = [] if m.group(2).strip() == "none" else [d.strip() for d in m.group(2).split(",")]
    for name in re.findall(r"`([^`]+)`", m.group(1)):
        doc[name] = sorted(deps)
bad = 0
for name, deps in sorted(short.items()):
    if name in ("e2e", "fuzz") or name.endswith("-fuzz"):
        continue
    if name not in doc:
        print(f"check-layout: crate `{name}` is missing from the dependency table in docs/architecture.md", file=sys.stderr); bad = 1
    elif doc[name] != deps:
        print(f"check-layout: docs/architecture.md says `{name}` depends on {doc[name]}, its Cargo.toml on {deps}", file=sys.stderr); bad = 1
sys.exit(bad)
' || fail=1

if [ "$fail" -ne 0 ]; then
  exit 1
fi
echo "check-layout: cli/src $cli_lines lines; service dependency trees and the crate table are as documented"
