#!/usr/bin/env python3
"""make_apollo_fixtures.py - reference losses for LLaMA-Factory's APOLLO
(use_apollo) in ft-train (docs/EXTRAS.md).

Run from the repository root, with apollo-torch (1.0.3) on the path:
    pip install --no-deps --target /tmp/apollo_pkg apollo-torch
    PYTHONPATH=/tmp/apollo_pkg /work/venv/bin/python tests/reference/make_apollo_fixtures.py
_create_apollo_optimizer with apollo-torch's APOLLOAdamW (apollo_proj
random): groups [nodecay, decay, apollo params] (the seeds of the random
projectors are the params' 1-based places in those groups), or with
apollo_layerwise one optimizer and scheduler per param stepped in
post-accumulate-grad hooks (every projector seeded 1; clipping finds no
gradients).  Writes tests/fixtures/extras/apollo_losses.txt, "<run> <loss
per step...>", full, lr 1e-3, weight_decay 0.1, cosine with 2 warmup steps:
  10 steps of the parity runs (20 micro-batches, accumulation 2, clipping 1.0):
    apollo_full     all linears, rank 4, interval 200, scale 32, channel
    apollo_tensor   rank 8, interval 3 (new projections), scale 16,
                    scale_type tensor, scale_front
    apollo_svd      apollo_full with apollo_proj svd (one projection in the run)
  10 steps of one micro-batch (batches 0..9), apollo_layerwise:
    apollo_lw       all linears, rank 4, interval 200, scale 32, channel
Made with torch 2.15.0, transformers 5.24.0, apollo-torch 1.0.3 (CPU, float32, 1 thread).
"""
import os
import sys

import torch
from transformers import get_cosine_schedule_with_warmup

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from make_model_fixtures import build_from, loss_sum, decay_names, STEPS, ACCUM, WARMUP, MAX_GRAD_NORM, BETAS, EPS, WEIGHT_DECAY  # noqa: E402
from make_extras_fixtures import batches, run, MODEL, OUT  # noqa: E402

torch.set_num_threads(1)
LIN = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def split(m):
    ap = []
    for name, mod in m.named_modules():
        if isinstance(mod, torch.nn.Linear) and any(t in name for t in LIN):
            ap += [p for p in mod.parameters() if p.requires_grad and p.ndim > 1]
    ids = {id(p) for p in ap}
    decay = decay_names(m)
    dp = [p for n, p in m.named_parameters() if p.requires_grad and id(p) not in ids and n in decay]
    ndp = [p for n, p in m.named_parameters() if p.requires_grad and id(p) not in ids and n not in decay]
    return ap, dp, ndp


def kwargs(rank, gap, scale, stype, proj="random"):
    return dict(rank=rank, proj=proj, proj_type="std", update_proj_gap=gap, scale=scale, scale_type=stype)


def apollo(rank, gap, scale, stype, front, proj="random"):
    from apollo_torch import APOLLOAdamW
    m = build_from(MODEL, "llama")
    ap, dp, ndp = split(m)
    groups = [dict(params=ndp, weight_decay=0.0), dict(params=dp, weight_decay=WEIGHT_DECAY),
              dict(params=ap, weight_decay=WEIGHT_DECAY, **kwargs(rank, gap, scale, stype, proj))]
    opt = APOLLOAdamW(groups, lr=1e-3, betas=BETAS, eps=EPS, scale_front=front)
    sch = get_cosine_schedule_with_warmup(opt, WARMUP, STEPS)
    return run(m, None, opt, sch, batches())


def apollo_lw(rank, gap, scale, stype):
    from apollo_torch import APOLLOAdamW
    m = build_from(MODEL, "llama")
    ap, dp, ndp = split(m)
    opts = {}
    for p in ndp:
        opts[p] = APOLLOAdamW([dict(params=[p], weight_decay=0.0)], lr=1e-3, betas=BETAS, eps=EPS)
    for p in dp:
        opts[p] = APOLLOAdamW([dict(params=[p], weight_decay=WEIGHT_DECAY)], lr=1e-3, betas=BETAS, eps=EPS)
    for p in ap:
        opts[p] = APOLLOAdamW([dict(params=[p], weight_decay=WEIGHT_DECAY, **kwargs(rank, gap, scale, stype))],
                              lr=1e-3, betas=BETAS, eps=EPS)
    scheds = {p: get_cosine_schedule_with_warmup(o, WARMUP, STEPS) for p, o in opts.items()}

    def opt_hook(p):
        if p.grad is not None:
            opts[p].step()
            opts[p].zero_grad()

    def sched_hook(p):
        scheds[p].step()
    trainable = [p for p in m.parameters() if p.requires_grad]
    for p in trainable:
        p.register_post_accumulate_grad_hook(opt_hook)
    for p in trainable:
        p.register_post_accumulate_grad_hook(sched_hook)
    bs = batches()
    m.train()
    losses = []
    for step in range(STEPS):
        ids_, lab = bs[step]
        ls, n = loss_sum(m(input_ids=ids_.long()).logits, lab)
        (ls / n).backward()
        norm = torch.nn.utils.clip_grad_norm_(list(m.parameters()), MAX_GRAD_NORM)
        assert float(norm) == 0.0
        losses.append(float(ls.detach()) / n)
    return losses


def main():
    assert ACCUM == 2
    runs = [("apollo_full", apollo(4, 200, 32.0, "channel", False)),
            ("apollo_tensor", apollo(8, 3, 16.0, "tensor", True)),
            ("apollo_lw", apollo_lw(4, 200, 32.0, "channel")),
            ("apollo_svd", apollo(4, 200, 32.0, "channel", False, "svd"))]
    with open(os.path.join(OUT, "apollo_losses.txt"), "w") as f:
        for name, losses in runs:
            f.write(name + " " + " ".join(repr(x) for x in losses) + "\n")
            print(name, [round(x, 5) for x in losses])


if __name__ == "__main__":
    main()
