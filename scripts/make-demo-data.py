#!/usr/bin/env python3
"""Builds the demo's bundled data (data/demo/) from the shared routing data.

    python3 scripts/make-demo-data.py ../shared/data/routing data/demo

The split is by a hash of each row's id, so it is stable and anyone can recompute which rows
the demo holds out (the default router is trained on everything else; see
`crates/router/README.md`). Sources and licences are listed in data/demo/README.md.
"""
import hashlib
import json
import os
import sys


def bucket(row_id: str, n: int) -> int:
    return int(hashlib.sha256(row_id.encode()).hexdigest()[:8], 16) % n


def is_demo(row: dict) -> bool:
    """The rule that decides which shared rows belong to the demo (and not to training)."""
    rid = row["id"]
    if rid.startswith("routellm-mmlu-"):
        return bucket(rid, 4) == 0
    if rid.startswith("goyal-"):
        return True
    if rid.startswith("rose-"):
        return bucket(rid, 2) == 0
    return False


def slim(row: dict, keep_responses: bool) -> dict:
    out = {k: row[k] for k in ("id", "task", "prompt", "choices", "reference", "source",
                               "tokens_estimated") if k in row}
    models = {}
    for name, m in row["models"].items():
        mm = {k: m[k] for k in ("score", "prompt_tokens", "completion_tokens") if k in m}
        if keep_responses and m.get("response") not in (None, "None"):
            mm["response"] = m["response"]
        models[name] = mm
    out["models"] = models
    return out


def main():
    src, dst = sys.argv[1], sys.argv[2]
    os.makedirs(dst, exist_ok=True)
    plan = {
        "classify_mmlu.jsonl": (["routellm_mmlu.dev.jsonl"], False),
        "summarize_news.jsonl": (["goyal_gpt3_news.dev.jsonl", "rose_cnndm_llm.dev.jsonl"], True),
    }
    for out_name, (files, keep) in plan.items():
        n = 0
        with open(os.path.join(dst, out_name), "w", encoding="utf-8") as out:
            for f in files:
                for line in open(os.path.join(src, f), encoding="utf-8"):
                    row = json.loads(line)
                    if is_demo(row):
                        out.write(json.dumps(slim(row, keep), ensure_ascii=False) + "\n")
                        n += 1
        print(f"{out_name}: {n} rows")


if __name__ == "__main__":
    main()
