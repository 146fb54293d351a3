#!/usr/bin/env python3
"""pack_lf_parity.py - LLaMA-Factory's own batches for ft-pack parity tests.

For a few demo examples it writes, in tests/fixtures/pack/:
  lf_<case>.tokens.jsonl    (sft_neat uses sft_packed's) token records (ft-cat --encode input): what
                            ft-tokenize would give, taken from LLaMA-Factory
  lf_<case>.expect.jsonl    what LLaMA-Factory feeds the model, one JSON
                            object per row (padded: per batch of 4)
tests/bats/ft-pack-parity.bats packs the first with --shuffle false and
compares with the second.

Cases:
  sft_padded  alpaca_en_demo, qwen3 tokenizer, template qwen, cutoff 256:
              SFTDataCollatorWith4DAttentionMask(pad_to_multiple_of=8)
              over batches of 4 of get_dataset's rows
  sft_packed  same data, packing=True: PackedSupervisedDatasetProcessor rows
              (input records tokenized with cutoff_len - 1, as LLaMA-Factory
              lowers it when packing)
  sft_neat    the same with neat_packing=True (attention_mask = segment ids)
  pt          c4_demo, mistral-sp tokenizer (add_bos_token), cutoff 128:
              PretrainDatasetProcessor blocks

Run from the repository root:
    /work/venv/bin/python tests/reference/pack_lf_parity.py
Made with llamafactory 0.9.5, transformers 5.24.0, datasets 4.0.0
(DISABLE_VERSION_CHECK=1; torchaudio stubbed, as in bench/pack).
"""
import importlib.machinery
import json
import os
import sys
import types

os.environ.setdefault("DISABLE_VERSION_CHECK", "1")
_ta = types.ModuleType("torchaudio")
_ta.__spec__ = importlib.machinery.ModuleSpec("torchaudio", None)
sys.modules.setdefault("torchaudio", _ta)

from llamafactory.data import get_dataset, get_template_and_fix_tokenizer  # noqa: E402
from llamafactory.data.collator import SFTDataCollatorWith4DAttentionMask  # noqa: E402
from llamafactory.hparams import get_train_args  # noqa: E402
from llamafactory.model import load_tokenizer  # noqa: E402

SHARED = os.environ.get("FT_SHARED", os.path.join(os.path.dirname(__file__), "../../../shared"))
DATA = os.path.join(SHARED, "data/llamafactory")
OUT = "tests/fixtures/pack/"


def lf(stage, tokdir, dataset, template, cutoff, n, **extra):
    args = dict(stage=stage, do_train=True, model_name_or_path=os.path.join(SHARED, "tokenizers", tokdir),
                dataset=dataset, dataset_dir=DATA, template=template, cutoff_len=cutoff, max_samples=n,
                output_dir="/tmp/ft-pack-parity", overwrite_cache=True, report_to="none",
                per_device_train_batch_size=4, **extra)
    model_args, data_args, training_args, _, _ = get_train_args(args)
    tm = load_tokenizer(model_args)
    template_obj = get_template_and_fix_tokenizer(tm["tokenizer"], data_args)
    ds = get_dataset(template_obj, model_args, data_args, training_args, stage=stage, **tm)["train_dataset"]
    return tm["tokenizer"], template_obj, [ds[i] for i in range(len(ds))]


def header(tok, stage, name):
    meta = {"stage": stage, "tokenizer": name, "pad_id": tok.pad_token_id, "eos_id": tok.eos_token_id,
            "bos_id": tok.bos_token_id, "add_bos_token": bool(getattr(tok, "add_bos_token", False))}
    return {"format": "ft-stream", "version": 1, "kind": "tokens", "producer": "pack_lf_parity.py", "meta": meta}


def dump(path, lines):
    with open(OUT + path, "w") as f:
        for x in lines:
            f.write(json.dumps(x, separators=(",", ":")) + "\n")


def plain(x):
    return x.tolist() if hasattr(x, "tolist") else x


# sft padded
tok, tmpl, rows = lf("sft", "qwen3", "alpaca_en_demo", "qwen", 256, 40)
dump("lf_sft_padded.tokens.jsonl", [header(tok, "sft", "qwen3")] +
     [{"input_ids": r["input_ids"], "labels": r["labels"]} for r in rows])
coll = SFTDataCollatorWith4DAttentionMask(template=tmpl, tokenizer=tok, model=None, pad_to_multiple_of=8,
                                          label_pad_token_id=-100)
exp = []
for i in range(0, len(rows), 4):
    b = coll([dict(r) for r in rows[i:i + 4]])
    exp.append({"input_ids": plain(b["input_ids"]), "labels": plain(b["labels"])})
dump("lf_sft_padded.expect.jsonl", exp)

# sft packed / neat: inputs tokenized with cutoff - 1, rows from LLaMA-Factory's packing
tok, _, rows = lf("sft", "qwen3", "alpaca_en_demo", "qwen", 255, 40)
dump("lf_sft_packed.tokens.jsonl",   # input of both packed cases
     [header(tok, "sft", "qwen3")] + [{"input_ids": r["input_ids"], "labels": r["labels"]} for r in rows])
for case, neat in (("sft_packed", False), ("sft_neat", True)):
    _, _, prow = lf("sft", "qwen3", "alpaca_en_demo", "qwen", 256, 40, packing=True, neat_packing=neat)
    dump(f"lf_{case}.expect.jsonl", [{"input_ids": r["input_ids"], "labels": r["labels"],
                                      "position_ids": r["position_ids"], "attention_mask": r["attention_mask"]}
                                     for r in prow])

# pt blocks (mistral: add_bos_token replaces each block's first id)
tok, _, blocks = lf("pt", "mistral-sp", "c4_demo", "default", 128, 12)
texts = [json.loads(line)["text"] for line in open(os.path.join(DATA, "c4_demo.jsonl"))][:12]
ids = tok([t + tok.eos_token for t in texts], add_special_tokens=False)["input_ids"]
dump("lf_pt.tokens.jsonl", [header(tok, "pt", "mistral-sp")] + [{"input_ids": x} for x in ids])
dump("lf_pt.expect.jsonl", [{"input_ids": r["input_ids"]} for r in blocks])
