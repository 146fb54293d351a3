#!/usr/bin/env python3
"""make_layerwise_fixtures.py - reference losses for LLaMA-Factory's
layer-wise GaLore (galore_layerwise: true) in ft-train (docs/EXTRAS.md).

Run from the repository root, with galore-torch (1.0) on the path:
    pip install --no-deps --target /tmp/galore_pkg galore-torch
    PYTHONPATH=/tmp/galore_pkg /work/venv/bin/python tests/reference/make_layerwise_fixtures.py
The run is LLaMA-Factory's: _create_galore_optimizer with galore_layerwise
builds one GaLoreAdamW per trainable param (its own weight decay group) and
steps it, then zeroes its gradient (set_to_none), in a
register_post_accumulate_grad_hook; create_custom_scheduler gives each its
own scheduler, stepped by a second hook; transformers' clip_grad_norm_ then
finds no gradients (LLaMA-Factory: "the displayed gradient norm will be all
zeros") and the DummyOptimizer's step does nothing.
Writes tests/fixtures/extras/layerwise_losses.txt, "<run> <loss per step...>"
for 10 steps of one micro-batch each (gradient_accumulation_steps must be 1,
LLaMA-Factory's error otherwise): parity batches 0..9 of
tests/fixtures/parity/README.md, cosine with 2 warmup steps over 10,
max_grad_norm 1.0 (no effect), weight_decay 0.1, full, lr 1e-3:
    galore_lw_full    all linears, rank 4, update interval 200, scale 2.0, std
    galore_lw_reproj  the same with update interval 3 (new projections at 3, 6, 9)
Made with torch 2.15.0, transformers 5.24.0, galore-torch 1.0 (CPU, float32, 1 thread).
"""
import os
import sys

import torch
from transformers import get_cosine_schedule_with_warmup

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from make_model_fixtures import build_from, loss_sum, decay_names, WARMUP, MAX_GRAD_NORM, BETAS, EPS, WEIGHT_DECAY  # noqa: E402
from make_extras_fixtures import batches, MODEL, OUT  # noqa: E402

torch.set_num_threads(1)
STEPS = 10
LIN = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def layerwise(gap):
    from galore_torch import GaLoreAdamW
    m = build_from(MODEL, "llama")
    gp = []
    for name, mod in m.named_modules():
        if isinstance(mod, torch.nn.Linear) and any(t in name for t in LIN):
            gp += [p for p in mod.parameters() if p.requires_grad and p.ndim > 1]
    ids = {id(p) for p in gp}
    decay = decay_names(m)
    kw = dict(lr=1e-3, betas=BETAS, eps=EPS)
    opts = {}
    for n, p in m.named_parameters():
        if not p.requires_grad:
            continue
        if id(p) in ids:
            g = dict(params=[p], weight_decay=WEIGHT_DECAY, rank=4, update_proj_gap=gap, scale=2.0,
                     proj_type="std")
        else:
            g = dict(params=[p], weight_decay=WEIGHT_DECAY if n in decay else 0.0)
        opts[p] = GaLoreAdamW([g], **kw)
    scheds = {p: get_cosine_schedule_with_warmup(o, WARMUP, STEPS) for p, o in opts.items()}

    def opt_hook(p):
        if p.grad is not None:
            opts[p].step()
            opts[p].zero_grad()

    def sched_hook(p):
        scheds[p].step()
    for p in opts:
        p.register_post_accumulate_grad_hook(opt_hook)
    for p in opts:
        p.register_post_accumulate_grad_hook(sched_hook)
    bs = batches()
    m.train()
    losses = []
    for step in range(STEPS):
        ids_, lab = bs[step]
        ls, n = loss_sum(m(input_ids=ids_.long()).logits, lab)
        (ls / n).backward()
        norm = torch.nn.utils.clip_grad_norm_(list(m.parameters()), MAX_GRAD_NORM)
        assert float(norm) == 0.0   # the hooks took every gradient
        losses.append(float(ls) / n)
    return losses


def main():
    runs = [("galore_lw_full", layerwise(200)), ("galore_lw_reproj", layerwise(3))]
    with open(os.path.join(OUT, "layerwise_losses.txt"), "w") as f:
        for name, losses in runs:
            f.write(name + " " + " ".join(repr(x) for x in losses) + "\n")
            print(name, [round(x, 5) for x in losses])


if __name__ == "__main__":
    main()
