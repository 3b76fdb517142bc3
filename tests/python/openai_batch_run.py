"""The official `openai` SDK runs batches through the fleet behind `switchyard api`.

Usage: openai_batch_run.py BASE_URL OTHER_BASE_URL KEY PROMPTS_JSON
PROMPTS_JSON: a JSON list of prompts (texts the simulator has answers for). Batches are
created through BASE_URL and followed, downloaded and cancelled through OTHER_BASE_URL (a
second API process: the API keeps nothing of its own).

Batch 1 mixes routed requests (`switchyard:auto`, with a policy in the batch's metadata),
requests pinned to the strong and to the weak model, and requests the fleet refuses (`stream`,
`n = 2`, a model the deployment does not have); it must complete with every `custom_id` in
exactly one of its two files. Batch 2 runs under the default policy with two requests pinned to
a model no worker serves; once the others are answered it is cancelled midway, and the
unstarted requests come back as `batch_cancelled`.

Prints one JSON object of what it saw; exits non-zero on the first thing that is not as
expected. Every wait is bounded.
"""

import json
import sys
import time

import openai
from openai import OpenAI

BASE, OTHER, KEY, PROMPTS = sys.argv[1], sys.argv[2], sys.argv[3], json.loads(sys.argv[4])
creator = OpenAI(base_url=BASE, api_key=KEY, max_retries=0, timeout=30)
client = OpenAI(base_url=OTHER, api_key=KEY, max_retries=0, timeout=30)
STRONG = "gpt-4-1106-preview"
WEAK = "mistralai/Mixtral-8x7B-Instruct-v0.1"
UNSERVED = "mistralai/Mistral-7B-Instruct-v0.1"
seen = {"sdk": openai.__version__}


def request(custom_id, prompt, model="switchyard:auto", **extra):
    body = {"model": model, "messages": [{"role": "user", "content": prompt}], **extra}
    return json.dumps({"custom_id": custom_id, "method": "POST",
                       "url": "/v1/chat/completions", "body": body}) + "\n"


def wait_until(batch_id, done, what, seconds=120):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        batch = client.batches.retrieve(batch_id)
        if done(batch):
            return batch
        time.sleep(0.2)
    raise SystemExit(f"batch {batch_id} not {what} within {seconds}s: {batch}")


def lines_of(file_id):
    if file_id is None:
        return []
    f = client.files.retrieve(file_id)
    assert f.purpose == "batch_output", f
    return [json.loads(l) for l in client.files.content(file_id).read().decode().splitlines()]


def run_to_end(batch):
    ended = wait_until(batch.id, lambda b: b.status in ("completed", "failed", "expired",
                                                        "cancelled"), "ended")
    return ended, lines_of(ended.output_file_id), lines_of(ended.error_file_id)


def exactly_once(sent, output, errors):
    got = [l["custom_id"] for l in output + errors]
    assert sorted(got) == sorted(sent), (sorted(got), sorted(sent))
    assert len({l["id"] for l in output + errors}) == len(got)


# Batch 1: routed, pinned and refused requests in one file.
routed = [f"r{i}" for i in range(8)]
text = "".join(request(c, PROMPTS[i]) for i, c in enumerate(routed))
text += request("pin-strong-0", PROMPTS[8], STRONG) + request("pin-strong-1", PROMPTS[9], STRONG)
text += request("pin-weak", PROMPTS[10], WEAK, temperature=0.2, max_tokens=64, seed=7)
text += request("stream", PROMPTS[11], stream=True)
text += request("two-choices", PROMPTS[12], n=2)
text += request("no-such-model", PROMPTS[13], "no-such-model")
# A conversation of ~200 KB: over the limit of a plain item's line, under a chat item's (1 MiB);
# it is answered like any other, not the whole batch's failure.
text += request("long", PROMPTS[14] + "\n\n" + "Context line, \"quoted\".\n" * 8000)
sent = routed + ["pin-strong-0", "pin-strong-1", "pin-weak", "stream", "two-choices",
                 "no-such-model", "long"]
f = creator.files.create(file=("requests.jsonl", text.encode()), purpose="batch")
batch = creator.batches.create(input_file_id=f.id, endpoint="/v1/chat/completions",
                              completion_window="24h",
                              metadata={"switchyard_policy": "strong-share=0.25"})
assert batch.status == "validating", batch
ended, output, errors = run_to_end(batch)
assert ended.status == "completed", ended
assert ended.request_counts.total == 15, ended.request_counts
assert ended.request_counts.completed == 12, ended.request_counts
assert ended.request_counts.failed == 3, ended.request_counts
assert ended.in_progress_at and ended.finalizing_at and ended.completed_at, ended
exactly_once(sent, output, errors)
by_id = {l["custom_id"]: l for l in output + errors}
for line in output:
    response = line["response"]
    assert response["status_code"] == 200 and line["error"] is None, line
    assert response["request_id"], line
    body = response["body"]
    assert body["object"] == "chat.completion", body
    assert body["choices"][0]["message"]["content"], body
    assert body["usage"]["total_tokens"] > 0, body
    assert float(line["switchyard"]["cost_usd"]) > 0, line
for c in ("pin-strong-0", "pin-strong-1"):
    assert by_id[c]["response"]["body"]["model"] == STRONG, by_id[c]
    assert by_id[c]["switchyard"]["tiers"] == ["strong"], by_id[c]
assert by_id["pin-weak"]["response"]["body"]["model"] == WEAK, by_id["pin-weak"]
assert by_id["pin-weak"]["switchyard"]["tiers"] == ["weak"], by_id["pin-weak"]
routed_models = {by_id[c]["response"]["body"]["model"] for c in routed}
seen["routed_models"] = sorted(routed_models)
for c, status, code in [("stream", 400, None), ("two-choices", 400, None),
                        ("no-such-model", 404, "model_not_found")]:
    response = by_id[c]["response"]
    assert response["status_code"] == status, by_id[c]
    error = response["body"]["error"]
    assert error["message"], error
    if code:
        assert error["code"] == code, error
seen["batch"] = ended.id
seen["completed"] = ended.request_counts.completed
seen["failed"] = ended.request_counts.failed

# Batch 2: the default policy, cancelled midway; requests pinned to a model no worker serves
# cannot start, and come back cancelled.
answered = [f"c{i}" for i in range(4)]
text = "".join(request(c, PROMPTS[20 + i]) for i, c in enumerate(answered))
text += request("stuck-0", PROMPTS[30], UNSERVED) + request("stuck-1", PROMPTS[31], UNSERVED)
f2 = creator.files.create(file=("cancel.jsonl", text.encode()), purpose="batch")
batch2 = creator.batches.create(input_file_id=f2.id, endpoint="/v1/chat/completions",
                               completion_window="24h")
wait_until(batch2.id, lambda b: b.status == "in_progress" and b.request_counts.completed == 4,
           "four answers in")
cancelling = client.batches.cancel(batch2.id)
assert cancelling.status in ("cancelling", "cancelled"), cancelling
ended2, output2, errors2 = run_to_end(batch2)
assert ended2.status == "cancelled", ended2
exactly_once(answered + ["stuck-0", "stuck-1"], output2, errors2)
assert sorted(l["custom_id"] for l in output2) == answered, output2
for line in errors2:
    assert line["response"] is None and line["error"]["code"] == "batch_cancelled", line
seen["cancelled_batch"] = ended2.id
seen["cancelled_lines"] = len(errors2)
print(json.dumps(seen))
