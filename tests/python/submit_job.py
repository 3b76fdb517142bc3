#!/usr/bin/env python3
"""Submits a Switchyard job with a client that is not ours: nats-py + msgpack.

    submit_job.py NATS_URL PREFIX JOB_ID < items.jsonl

It follows docs/wire-protocol.md only: a MessagePack map with named fields, published with
JetStream on `<prefix>.jobs.submit`, `Nats-Msg-Id: job:<idempotency key>` and `Sy-Job-Id`.
Prints the stream sequence of the stored message.
"""
import asyncio
import json
import sys

import msgpack
import nats


async def main():
    url, prefix, job_id = sys.argv[1], sys.argv[2], sys.argv[3]
    items = [json.loads(line) for line in sys.stdin if line.strip()]
    spec = {
        "v": 1,
        "job_id": job_id,
        "team": "python-team",
        "task": {"kind": "classify", "labels": ["A", "B", "C", "D"]},
        "items": [{"item_id": it["id"], "text": it["text"]} for it in items],
        "policy": {"routing": {"kind": "strong_share", "value": 0.25},
                   "cascade": {"confidence_threshold": 0.0}},
    }
    nc = await nats.connect(url)
    js = nc.jetstream()
    ack = await js.publish(f"{prefix}.jobs.submit", msgpack.packb(spec, use_bin_type=True),
                           headers={"Nats-Msg-Id": f"job:{job_id}", "Sy-Job-Id": job_id})
    print(ack.seq)
    await nc.close()


asyncio.run(main())
