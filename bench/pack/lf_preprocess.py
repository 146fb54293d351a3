#!/usr/bin/env python3
"""lf_preprocess.py - LLaMA-Factory's own preprocessing of a demo dataset,
timed: get_dataset (read, template, tokenize, pack) and then its data
collator over every batch (the padding ft-pack does ahead of time).
Prints one JSON line.  Used by bench/pack/run.sh.

Needs /work/venv (or any env) with llamafactory 0.9.5, datasets 4.0.0,
omegaconf and trl 0.24 (installed --no-deps).  torchaudio is not needed
for text data: a stub module stands in for it (llamafactory's mm_plugin
imports it unconditionally), and DISABLE_VERSION_CHECK=1 lets it run on the
venv's newer transformers.
"""
import argparse
import importlib.machinery
import json
import os
import sys
import time
import types

os.environ.setdefault("DISABLE_VERSION_CHECK", "1")
_ta = types.ModuleType("torchaudio")
_ta.__spec__ = importlib.machinery.ModuleSpec("torchaudio", None)
sys.modules.setdefault("torchaudio", _ta)

p = argparse.ArgumentParser()
p.add_argument("--stage", default="sft")
p.add_argument("--dataset", required=True)
p.add_argument("--dataset_dir", required=True)
p.add_argument("--tokenizer", required=True)
p.add_argument("--template", default="qwen")
p.add_argument("--cutoff_len", type=int, default=1024)
p.add_argument("--batch_size", type=int, default=4)
p.add_argument("--packing", default=None)
p.add_argument("--dump", help="also write LLaMA-Factory's token records here (JSON lines for ft-cat --encode)")
a = p.parse_args()

from llamafactory.data import get_dataset, get_template_and_fix_tokenizer  # noqa: E402
from llamafactory.data.collator import PairwiseDataCollatorWithPadding, SFTDataCollatorWith4DAttentionMask  # noqa: E402
from llamafactory.hparams import get_train_args  # noqa: E402
from llamafactory.model import load_tokenizer  # noqa: E402
from transformers import DataCollatorForLanguageModeling  # noqa: E402

args = dict(stage=a.stage, do_train=True, model_name_or_path=a.tokenizer, dataset=a.dataset,
            dataset_dir=a.dataset_dir, template=a.template, cutoff_len=a.cutoff_len,
            output_dir="/tmp/ft-bench-lf-out", overwrite_cache=True, report_to="none",
            per_device_train_batch_size=a.batch_size)
if a.packing is not None:
    args["packing"] = a.packing == "true"
model_args, data_args, training_args, finetuning_args, _ = get_train_args(args)
tm = load_tokenizer(model_args)
tok = tm["tokenizer"]
template = get_template_and_fix_tokenizer(tok, data_args)

t0 = time.perf_counter()
ds_stage = "rm" if a.stage in ("rm", "dpo") else a.stage   # as LLaMA-Factory's dpo workflow
ds = get_dataset(template, model_args, data_args, training_args, stage=ds_stage, **tm)["train_dataset"]
rows = [ds[i] for i in range(len(ds))]
t1 = time.perf_counter()

if a.stage == "pt":
    coll = DataCollatorForLanguageModeling(tokenizer=tok, mlm=False)
elif a.stage in ("rm", "dpo"):
    coll = PairwiseDataCollatorWithPadding(template=template, tokenizer=tok, model=None,
                                           pad_to_multiple_of=8, label_pad_token_id=-100)
else:
    coll = SFTDataCollatorWith4DAttentionMask(template=template, tokenizer=tok, model=None,
                                              pad_to_multiple_of=8, label_pad_token_id=-100)
tokens = batches = 0
for i in range(0, len(rows), a.batch_size):
    feats = [dict(r) for r in rows[i:i + a.batch_size]]
    if a.stage == "pt":
        feats = [{"input_ids": r["input_ids"]} for r in feats]
    b = coll(feats)
    tokens += int((b["attention_mask"] != 0).sum()) if "attention_mask" in b else b["input_ids"].numel()
    batches += 1
t2 = time.perf_counter()
if a.dump:   # untimed: the records ft-tokenize would give, for timing ft-pack alone
    meta = {"stage": a.stage, "tokenizer": os.path.basename(a.tokenizer.rstrip("/")), "pad_id": tok.pad_token_id,
            "eos_id": tok.eos_token_id}
    with open(a.dump, "w") as f:
        f.write(json.dumps({"format": "ft-stream", "version": 1, "kind": "tokens", "producer": "lf_preprocess.py",
                            "meta": meta}) + "\n")
        if a.stage == "pt":   # PretrainDatasetProcessor's text_examples, before packing
            info = json.load(open(os.path.join(a.dataset_dir, "dataset_info.json")))[a.dataset]
            with open(os.path.join(a.dataset_dir, info["file_name"])) as src:
                texts = [json.loads(line)["text"] + tok.eos_token for line in src if line.strip()]
            for ids in tok(texts, add_special_tokens=False)["input_ids"]:
                f.write(json.dumps({"input_ids": ids}) + "\n")
        else:
            keys = [k for k in rows[0] if k.endswith("input_ids") or k.endswith("labels")]
            for r in rows:
                f.write(json.dumps({k: r[k] for k in keys}) + "\n")
print(json.dumps({"examples": len(rows), "batches": batches, "tokens": tokens,
                  "preprocess_s": t1 - t0, "collate_s": t2 - t1, "total_s": t2 - t0}))
