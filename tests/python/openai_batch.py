"""The official `openai` SDK against `switchyard api`: files, batches, pagination, errors.

Usage: openai_batch.py BASE_URL KEY_OF_TEAM_A KEY_OF_TEAM_B
Prints one JSON object of what it saw; exits non-zero on the first thing that is not as
OpenAI documents it. Every wait is bounded.
"""

import json
import sys
import time

import openai
from openai import OpenAI

BASE, KEY_A, KEY_B = sys.argv[1], sys.argv[2], sys.argv[3]
a = OpenAI(base_url=BASE, api_key=KEY_A, max_retries=0, timeout=30)
b = OpenAI(base_url=BASE, api_key=KEY_B, max_retries=0, timeout=30)
seen = {"sdk": openai.__version__}


def line(custom_id, url="/v1/chat/completions"):
    return json.dumps({
        "custom_id": custom_id, "method": "POST", "url": url,
        "body": {"model": "switchyard:auto",
                 "messages": [{"role": "user", "content": f"question {custom_id}"}]},
    })


def upload(text):
    return a.files.create(file=("requests.jsonl", text.encode()), purpose="batch")


def settled(batch_id, attempts=200):
    for _ in range(attempts):
        batch = a.batches.retrieve(batch_id)
        if batch.status != "validating" or batch.request_counts.total:
            return batch
        time.sleep(0.05)
    raise SystemExit(f"batch {batch_id} still unchecked after {attempts} polls")


good_text = "".join(line(f"r{i}") + "\n" for i in range(3))
f = upload(good_text)
assert f.purpose == "batch" and f.bytes == len(good_text), f
assert a.files.retrieve(f.id).id == f.id
assert a.files.content(f.id).read() == good_text.encode()
seen["file"] = f.id

batch = a.batches.create(input_file_id=f.id, endpoint="/v1/chat/completions",
                         completion_window="24h", metadata={"run": "sdk"})
assert batch.status == "validating", batch
assert batch.metadata == {"run": "sdk"}, batch.metadata
checked = settled(batch.id)
assert checked.request_counts.total == 3, checked
seen["checked_total"] = checked.request_counts.total

bad = upload(line("x") + "\nnot json\n" + line("x") + "\n" + line("y", "/v1/embeddings") + "\n")
failed = settled(a.batches.create(input_file_id=bad.id, endpoint="/v1/chat/completions",
                                  completion_window="24h").id)
assert failed.status == "failed", failed
seen["faults"] = [(e.line, e.code) for e in failed.errors.data]
assert seen["faults"] == [(2, "invalid_json_line"), (3, "duplicate_custom_id"),
                          (4, "mismatched_endpoint")], seen["faults"]

# Auto-pagination: the SDK follows `after` while `has_more`.
for _ in range(3):
    a.batches.create(input_file_id=f.id, endpoint="/v1/chat/completions", completion_window="24h")
ids = [x.id for x in a.batches.list(limit=2)]
assert len(ids) == 5 and len(set(ids)) == 5 and ids == sorted(ids, reverse=True), ids
seen["listed"] = len(ids)

cancelled = a.batches.cancel(ids[0])
assert cancelled.status in ("cancelled", "cancelling"), cancelled

for call, exc in [
    (lambda: a.batches.create(input_file_id=f.id, endpoint="/v1/chat/completions",
                              completion_window="48h"), openai.BadRequestError),
    (lambda: a.batches.create(input_file_id=f.id, endpoint="/v1/embeddings",
                              completion_window="24h"), openai.BadRequestError),
    (lambda: b.batches.retrieve(batch.id), openai.NotFoundError),
    (lambda: b.files.content(f.id), openai.NotFoundError),
    (lambda: OpenAI(base_url=BASE, api_key="sy-wrong", max_retries=0).files.list(),
     openai.AuthenticationError),
]:
    try:
        call()
    except exc as e:
        seen.setdefault("errors", []).append(type(e).__name__)
    else:
        raise SystemExit(f"expected {exc.__name__}")

assert a.files.delete(bad.id).deleted
try:
    a.files.retrieve(bad.id)
    raise SystemExit("a deleted file is still there")
except openai.NotFoundError:
    pass
print(json.dumps(seen))
