#!/usr/bin/env python3
"""make_freeze_extra_fixtures.py - LLaMA-Factory's freeze tuning with
freeze_extra_modules, for ft-train's parity runs (docs/EXTRAS.md).

LLaMA-Factory's _setup_freeze_tuning (model/adapter.py at ff6d4d12e) is
transcribed in lf_freeze(): the trainable names are ".{layer}.{module}"
for the trainable layers and modules, plus each extra module name, and a
parameter trains when ANY of them is a substring of its name, so "norm"
also trains every layer's input/post-attention norms (and Qwen3's q/k
norms).  The runs are make_extras_fixtures.py's (tiny models, 20
micro-batches of the llama parity batches, accumulation 2, AdamW, cosine
with warmup 2, clipping 1.0, weight decay 0.1), lr 1e-3 as the freeze
parity run.  Run from the repository root:

    /work/venv/bin/python tests/reference/make_freeze_extra_fixtures.py

Writes tests/fixtures/extras/freeze_extra_losses.txt, "<run> <loss per step...>":
    fx_norm        tiny-llama, last layer, extra norm
    fx_all_mlp     tiny-llama, last layer's mlp, extra embed_tokens,norm,lm_head
    fx_qwen2_emb   tiny-qwen2 (tied), last layer, extra embed_tokens (trains the tied head)
Made with torch 2.15.0 (CPU), transformers 5.25.0 (float32, 1 thread).
"""
import os
import re
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from make_model_fixtures import build_from  # noqa: E402
from make_extras_fixtures import adamw_run, batches, OUT  # noqa: E402

torch.set_num_threads(1)
MODELS = "tests/fixtures/models"


def lf_freeze(m, layers, modules, extra):
    """_setup_freeze_tuning for freeze_trainable_layers > 0"""
    n = m.config.num_hidden_layers
    ids = range(max(0, n - layers), n)
    hidden, non_hidden = set(), set()
    for name, _ in m.named_parameters():
        if ".0." in name:
            hidden.add(name.split(".0.")[-1].split(".")[0])
        elif ".1." in name:
            hidden.add(name.split(".1.")[-1].split(".")[0])
        if re.search(r"\.\d+\.", name) is None:
            non_hidden.add(name.split(".")[-2])
    trainable = []
    for mod in modules:
        assert mod == "all" or mod in hidden
        for i in ids:
            trainable.append(".{:d}.{}".format(i, mod if mod != "all" else ""))
    for mod in extra:
        assert mod in non_hidden, (mod, non_hidden)
        trainable.append(mod)
    for name, p in m.named_parameters():
        p.requires_grad_(any(t in name for t in trainable))
    return m


def run(kind, modules, extra, bs):
    m = lf_freeze(build_from(os.path.join(MODELS, "tiny-" + kind), kind), 1, modules, extra)
    return adamw_run(m, 1e-3, bs)[0]


def main():
    bs = batches()
    runs = [("fx_norm", run("llama", ["all"], ["norm"], bs)),
            ("fx_all_mlp", run("llama", ["mlp"], ["embed_tokens", "norm", "lm_head"], bs)),
            ("fx_qwen2_emb", run("qwen2", ["all"], ["embed_tokens"], bs))]
    with open(os.path.join(OUT, "freeze_extra_losses.txt"), "w") as f:
        for name, losses in runs:
            f.write(name + " " + " ".join(repr(x) for x in losses) + "\n")
            print(name, [round(x, 5) for x in losses])


if __name__ == "__main__":
    main()
