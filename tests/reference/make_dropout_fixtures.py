#!/usr/bin/env python3
"""make_dropout_fixtures.py - PEFT's LoRA and DoRA with lora_dropout > 0
under ft's dropout masks, for ft-train's parity runs (docs/EXTRAS.md).

A dropout mask is random, so PEFT's own (torch's generator) cannot be
matched; what is compared is everything else: PEFT's modules are run
with their lora_dropout replaced by a module that applies ft's mask (its
definition transcribed below from lib/model/model_fwd.c's drop_seed and
lib/model/layers.c's ft_dropout_apply).  The replacement is not
nn.Identity, so PEFT takes its dropout branches: for DoRA, the base
product recomputed on the dropped-out input (DoraLinearVariant.forward
with base_result None).

Run from the repository root:
    /work/venv/bin/python tests/reference/make_dropout_fixtures.py
Writes tests/fixtures/extras/dropout_losses.txt, "<run> <loss per step...>"
for the 10-step runs of make_extras_fixtures.py (20 micro-batches of the
llama parity batches, accumulation 2, cosine with 2 warmup steps,
clipping at 1.0, weight_decay 0.1, lr 2e-3) with ft-train's --seed 42:
    lora_drop   LoRA from parity/llama-lora-init, lora_dropout 0.1
    dora_drop   DoRA from extras/llama-dora-init, lora_dropout 0.1
    dora_drop3  the same with lora_dropout 0.3
Made with torch 2.15.0 (CPU), transformers 5.25.0, peft 0.22.0 (float32, 1 thread).
"""
import os
import sys
import numpy as np
import torch
from transformers import get_cosine_schedule_with_warmup
from peft import PeftModel

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from make_model_fixtures import build_from, decay_names, STEPS, WARMUP, BETAS, EPS, WEIGHT_DECAY  # noqa: E402
from make_extras_fixtures import batches, run, MODEL, OUT, PARITY  # noqa: E402

torch.set_num_threads(1)
SEED = 42                      # ft-train's --seed default
LINS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
M64 = (1 << 64) - 1


def mix64(z):
    z = ((z ^ (z >> 30)) * 0xbf58476d1ce4e5b9) & M64
    z = ((z ^ (z >> 27)) * 0x94d049bb133111eb) & M64
    return z ^ (z >> 31)


def splitmix64_np(x):
    """splitmix64 over a uint64 array (numpy wraps mod 2^64)"""
    with np.errstate(over="ignore"):
        z = x + np.uint64(0x9e3779b97f4a7c15)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xbf58476d1ce4e5b9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94d049bb133111eb)
        return z ^ (z >> np.uint64(31))


def drop_seed(calls, layer, j):
    """lib/model/model_fwd.c's drop_seed: module j of layer `layer` at the
    model's calls-th forward-backward (the first micro-batch is call 1)"""
    return mix64(SEED ^ mix64((calls * 0x9e3779b97f4a7c15 + layer * len(LINS) + j + 1) & M64))


class FtDropout(torch.nn.Module):
    """ft_dropout_apply: element i kept (times 1 / (1 - p), in float32)
    when splitmix64(seed + i) >= p * 2^64"""

    def __init__(self, p, layer, j, clock):
        super().__init__()
        self.p, self.layer, self.j, self.clock = p, layer, j, clock

    def forward(self, x):
        if not self.training:
            return x
        p32 = np.float32(self.p)
        thr = np.uint64(min(int(float(p32) * 2.0 ** 64), M64))
        seed = np.uint64(drop_seed(self.clock[0], self.layer, self.j))
        with np.errstate(over="ignore"):
            idx = seed + np.arange(x.numel(), dtype=np.uint64)
        keep = torch.from_numpy(splitmix64_np(idx) >= thr).reshape(x.shape)
        scale = np.float32(1.0) / (np.float32(1.0) - p32)
        return torch.where(keep, x * torch.tensor(scale, dtype=torch.float32), torch.zeros((), dtype=x.dtype))


def with_ft_dropout(m, p):
    """every LoRA module's lora_dropout["default"] -> FtDropout; returns the
    clock the micro-batch loop advances"""
    clock = [0]
    n = 0
    for name, mod in m.named_modules():
        if hasattr(mod, "lora_dropout") and "default" in mod.lora_dropout:
            parts = name.split(".")
            layer = int(parts[parts.index("layers") + 1])
            mod.lora_dropout["default"] = FtDropout(p, layer, LINS.index(parts[-1]), clock)
            n += 1
    assert n > 0
    return clock


def ticking(clock):
    """make_extras_fixtures.run's micro-batch loss, one dropout call each"""
    from make_extras_fixtures import token_mean

    def micro(m, ids, lab, ntok):
        clock[0] += 1
        return token_mean(m, ids, lab, ntok)
    return micro


def train(adapter, p, bs):
    base = build_from(MODEL, "llama")
    m = PeftModel.from_pretrained(base, adapter, is_trainable=True)
    clock = with_ft_dropout(m, p)
    decay = decay_names(m)
    named = [(n, q) for n, q in m.named_parameters() if q.requires_grad]
    groups = [{"params": [q for n, q in named if n in decay], "weight_decay": WEIGHT_DECAY},
              {"params": [q for n, q in named if n not in decay], "weight_decay": 0.0}]
    opt = torch.optim.AdamW(groups, lr=2e-3, betas=BETAS, eps=EPS)
    sch = get_cosine_schedule_with_warmup(opt, WARMUP, STEPS)
    return run(m, None, opt, sch, bs, micro=ticking(clock))


def main():
    bs = batches()
    runs = [("lora_drop", train(os.path.join(PARITY, "llama-lora-init"), 0.1, bs)),
            ("dora_drop", train(os.path.join(OUT, "llama-dora-init"), 0.1, bs)),
            ("dora_drop3", train(os.path.join(OUT, "llama-dora-init"), 0.3, bs))]
    with open(os.path.join(OUT, "dropout_losses.txt"), "w") as f:
        for name, losses in runs:
            f.write(name + " " + " ".join(repr(x) for x in losses) + "\n")
            print(name, [round(x, 5) for x in losses])


if __name__ == "__main__":
    main()
