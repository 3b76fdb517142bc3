#!/usr/bin/env bash
# The same N chat requests (default 10,000) through the fleet twice, in one run: as an OpenAI
# batch through `switchyard api` with the official SDK (upload, create, poll, download the
# output file), and as a job from `switchyard submit --wait` (the prompts as items of a
# `generate` task). Both under `strong-share=0.2`, against the simulator at zero latency, so
# what is measured is the path's own cost. Prints the seconds of each, their ratio, and
# where each path's model calls went (calls per tier, from `switchyard status`).
#
#   ./scripts/bench-batch-api.sh            # 10,000 requests
#   N=2000 ./scripts/bench-batch-api.sh
#
# Idempotent. On a fresh Debian/Ubuntu box it installs what is missing (NATS and PostgreSQL
# through scripts/services.sh, python3-venv), creates target/py with the pinned openai SDK
# (as scripts/test.sh does), builds the release binary (SWITCHYARD_BIN: use this one), and
# stops everything it started on exit. Each run has a database and stream prefix of its own.
set -euo pipefail
cd "$(dirname "$0")/.."

N=${N:-10000}
OPENAI_SDK=3.60.0
PG=${PGHOST_URL:-postgresql://postgres@127.0.0.1:5432}
RUN_DIR=target/bench-batch-api
say() { printf 'bench-batch-api: %s\n' "$*" >&2; }
# shellcheck source=scripts/procs.sh
. scripts/procs.sh

need_fleet
if ! python3 -c 'import ensurepip, venv' >/dev/null 2>&1; then apt_install python3-venv; fi
PY=target/py/bin/python
[ -x "$PY" ] || python3 -m venv target/py
if ! "$PY" -c "import openai; assert openai.__version__ == '$OPENAI_SDK'" 2>/dev/null; then
  "$PY" -m pip install --quiet --disable-pip-version-check "openai==$OPENAI_SDK"
fi
if [ -n "${SWITCHYARD_BIN:-}" ]; then
  BIN=$SWITCHYARD_BIN
else
  say "building the release binary"
  cargo build --release --quiet -p switchyard
  BIN=target/release/switchyard
fi

mkdir -p "$RUN_DIR"
RUN=bench$(date +%s)$$
CLEANUP_DB=switchyard_$RUN
psql "$PG/postgres" -qAtc "CREATE DATABASE \"$CLEANUP_DB\"" >/dev/null

SIM_PORT=$(free_port)
API_PORT=$(free_port)
CFG=$RUN_DIR/fleet.toml
"$BIN" config demo | sed "s#http://127.0.0.1:8089/v1#http://127.0.0.1:$SIM_PORT/v1#" >"$CFG"
cat >>"$CFG" <<EOF

[nats]
prefix = "$RUN"

[database]
url = "$PG/$CLEANUP_DB"

[api]
listen = "127.0.0.1:$API_PORT"
EOF

setsid "$BIN" sim --listen "127.0.0.1:$SIM_PORT" >"$RUN_DIR/sim.log" 2>&1 &
PIDS+=($!)
wait_http simulator "http://127.0.0.1:$SIM_PORT/healthz" 30
setsid "$BIN" --config "$CFG" dispatcher >"$RUN_DIR/dispatcher.log" 2>&1 &
PIDS+=($!)
setsid "$BIN" --config "$CFG" worker --tier weak,strong,local >"$RUN_DIR/worker.log" 2>&1 &
PIDS+=($!)
setsid "$BIN" --config "$CFG" api >"$RUN_DIR/api.log" 2>&1 &
PIDS+=($!)
wait_http "switchyard api" "http://127.0.0.1:$API_PORT/healthz" 60
KEY=$("$BIN" --config "$CFG" api-key create --team bench 2>/dev/null)

# The same prompts both ways: the bundled demo data's, repeated (with a number, so no two
# requests are the same text) up to N.
"$PY" - "$N" "$RUN_DIR" <<'EOF'
import json, sys
n, out = int(sys.argv[1]), sys.argv[2]
prompts = [json.loads(l)["prompt"] for f in ("data/demo/classify_mmlu.jsonl",
           "data/demo/summarize_news.jsonl") for l in open(f)]
with open(f"{out}/requests.jsonl", "w") as api, open(f"{out}/items.jsonl", "w") as items:
    for i in range(n):
        text = prompts[i % len(prompts)] + ("" if i < len(prompts) else f"\n(#{i})")
        api.write(json.dumps({"custom_id": f"r{i}", "method": "POST", "url": "/v1/chat/completions",
                              "body": {"model": "switchyard:auto",
                                       "messages": [{"role": "user", "content": text}]}}) + "\n")
        items.write(json.dumps({"id": f"r{i}", "text": text}) + "\n")
EOF

say "$N requests as an OpenAI batch through switchyard api"
API_OUT=$("$PY" - "http://127.0.0.1:$API_PORT/v1" "$KEY" "$RUN_DIR/requests.jsonl" "$N" <<'EOF'
import json, sys, time
from openai import OpenAI
base, key, path, n = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
c = OpenAI(base_url=base, api_key=key, max_retries=2, timeout=120)
start = time.monotonic()
f = c.files.create(file=open(path, "rb"), purpose="batch")
b = c.batches.create(input_file_id=f.id, endpoint="/v1/chat/completions", completion_window="24h",
                     metadata={"switchyard_policy": "strong-share=0.2"})
deadline = start + 3600
while b.status not in ("completed", "failed", "expired", "cancelled"):
    if time.monotonic() > deadline:
        raise SystemExit(f"batch not done within an hour: {b}")
    time.sleep(0.5)
    b = c.batches.retrieve(b.id)
out = c.files.content(b.output_file_id).read() if b.output_file_id else b""
lines = out.decode().splitlines()
elapsed = time.monotonic() - start
assert b.status == "completed" and len(lines) == n, (b.status, len(lines), b.request_counts)
print(json.dumps({"batch": b.id, "seconds": round(elapsed, 2), "answered": len(lines)}))
EOF
)
say "the same $N prompts with switchyard submit --wait"
T0=$(date +%s.%N)
JOB=$("$BIN" --config "$CFG" submit "$RUN_DIR/items.jsonl" --task generate --team bench \
  --policy strong-share=0.2 --wait --timeout 3600s 2>"$RUN_DIR/submit.err" || true)
T1=$(date +%s.%N)
[ -n "$JOB" ] || { say "submit failed: $(cat "$RUN_DIR/submit.err")"; exit 1; }

"$PY" - "$API_OUT" "$JOB" "$T0" "$T1" "$BIN" "$CFG" <<'EOF'
import json, subprocess, sys
api, job, t0, t1, bin_, cfg = json.loads(sys.argv[1]), sys.argv[2], *map(float, sys.argv[3:5]), *sys.argv[5:7]
submit_s = t1 - t0
def status(j):
    return json.loads(subprocess.check_output([bin_, "--config", cfg, "status", j, "--json"]))
a, s = status(api["batch"]), status(job)
def calls(st):
    return {"routed": st["routed_by_tier"], "answered": st["done_by_tier"], "calls": st["calls"],
            "escalated": st["escalated"], "cost_usd": st["cost_usd"]}
print(json.dumps({
    "requests": api["answered"],
    "api_seconds": api["seconds"],
    "submit_seconds": round(submit_s, 2),
    "api_over_submit": round(api["seconds"] / submit_s, 3),
    "api_path": calls(a),
    "submit_path": calls(s),
}, indent=2))
EOF
