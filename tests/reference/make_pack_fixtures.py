#!/usr/bin/env python3
"""make_pack_fixtures.py - small token streams (as JSON lines) for ft-pack's
bats tests: tests/fixtures/pack/*.jsonl, turned into streams with
`ft-cat --encode`.  Token ids encode their origin, id = ex*1000 + pos, so a
test can check from the output alone that nothing was lost or duplicated.

Run from the repository root (plain Python 3, no packages):
    python3 tests/reference/make_pack_fixtures.py
"""
import json
import random

rng = random.Random(20261128)
OUT = "tests/fixtures/pack/"


def header(stage, tokenizer="test-tok-v1", pad_id=0, eos_id=2, **extra):
    meta = {"stage": stage, "tokenizer": tokenizer, "pad_id": pad_id, "eos_id": eos_id, "vocab_size": 200000}
    meta.update(extra)
    return {"format": "ft-stream", "version": 1, "kind": "tokens", "producer": "make_pack_fixtures.py", "meta": meta}


def seq(ex, n, off=0):
    return [ex * 1000 + off + p + 3 for p in range(n)]   # ids >= 3: never pad/eos


def write(name, head, records):
    with open(OUT + name, "w") as f:
        f.write(json.dumps(head) + "\n")
        for r in records:
            f.write(json.dumps(r, separators=(",", ":")) + "\n")


sft = []
for i in range(40):
    ids = seq(i, rng.randint(3, 40))
    p = rng.randint(1, len(ids) - 1)
    sft.append({"input_ids": ids, "labels": [-100] * p + ids[p:]})
write("sft.jsonl", header("sft"), sft)
write("sft_b.jsonl", header("sft"), [{"input_ids": seq(100 + i, 5), "labels": seq(100 + i, 5)} for i in range(5)])
write("sft_othertok.jsonl", header("sft", tokenizer="other-tok"), sft[:3])
write("sft_long.jsonl", header("sft"), [{"input_ids": seq(0, 50), "labels": seq(0, 50)},
                                        {"input_ids": seq(1, 5), "labels": seq(1, 5)}])
write("sft_badlabels.jsonl", header("sft"), [sft[0], {"input_ids": seq(1, 4), "labels": seq(1, 3)}])
write("sft_nolabels.jsonl", header("sft"), [sft[0], {"input_ids": seq(1, 4)}])

pt = [{"input_ids": seq(i, rng.randint(5, 60)) + [2]} for i in range(30)]
write("pt.jsonl", header("pt"), pt)
write("pt_bos.jsonl", header("pt", bos_id=1, add_bos_token=True), pt)

dpo = []
for i in range(20):
    p = rng.randint(2, 10)
    c, r = seq(i, p + rng.randint(1, 20)), seq(i, p + rng.randint(1, 20), off=500)
    dpo.append({"chosen_input_ids": c, "chosen_labels": [-100] * p + c[p:],
                "rejected_input_ids": r, "rejected_labels": [-100] * p + r[p:]})
write("dpo.jsonl", header("dpo"), dpo)

kto = []
for i in range(10):   # the KL sequence (another example's response) gets offset 500
    ids, kl = seq(i, rng.randint(3, 20)), seq(i, rng.randint(3, 20), off=500)
    kto.append({"input_ids": ids, "labels": [-100] + ids[1:], "kl_input_ids": kl, "kl_labels": [-100] + kl[1:],
                "kto_tag": i % 3 != 0})
write("kto.jsonl", header("kto"), kto)

with open(OUT + "not_tokens.jsonl", "w") as f:
    f.write(json.dumps({"format": "ft-stream", "version": 1, "kind": "text", "producer": "x", "meta": {}}) + "\n")
    f.write(json.dumps({"text": "hello"}) + "\n")
