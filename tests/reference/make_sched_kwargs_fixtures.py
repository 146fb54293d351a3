#!/usr/bin/env python3
"""make_sched_kwargs_fixtures.py - transformers' schedules with
lr_scheduler_kwargs (get_scheduler's scheduler_specific_kwargs) and the
min-lr / warmup-stable-decay types, for tests/unit/test_sched.c.

    /work/venv/bin/python tests/reference/make_sched_kwargs_fixtures.py

Writes tests/fixtures/trainer/sched_kwargs.txt, one case per line:
    "<type> <lr> <warmup> <total> <kwargs JSON, no spaces> <lr(0)> ... <lr(total+2)>"
(hex floats, as sched.txt).  Made with torch 2.15.0, transformers 5.25.0.
"""
import json
import os

import torch
from transformers import get_scheduler

OUT = "tests/fixtures/trainer"
CASES = [
    ("cosine", {"num_cycles": 1.5}),
    ("cosine_with_restarts", {"num_cycles": 3}),
    ("polynomial", {"lr_end": 1e-6, "power": 2.0}),
    ("inverse_sqrt", {"timescale": 7}),
    ("cosine_with_min_lr", {"min_lr_rate": 0.1}),
    ("cosine_with_min_lr", {"min_lr": 1e-5, "num_cycles": 0.75}),
    ("cosine_warmup_with_min_lr", {"min_lr_rate": 0.1}),
    ("cosine_warmup_with_min_lr", {"min_lr": 2e-5, "warmup_lr_rate": 0.2}),
    ("warmup_stable_decay", {"num_decay_steps": 4}),
    ("warmup_stable_decay", {"num_decay_steps": 3, "num_stable_steps": 2, "warmup_type": "cosine",
                             "decay_type": "1-sqrt", "min_lr_ratio": 0.05}),
    ("warmup_stable_decay", {"num_decay_steps": 5, "warmup_type": "1-sqrt", "decay_type": "linear",
                             "min_lr_ratio": 0.1}),
]


def hx(x):
    return float(x).hex()


def main():
    lines = []
    for name, kw in CASES:
        for lr in (5e-5, 1e-3):
            for warmup, total in ((0, 10), (3, 12), (2, 7)):
                p = torch.nn.Parameter(torch.zeros(1))
                opt = torch.optim.AdamW([p], lr=lr)
                s = get_scheduler(name, opt, num_warmup_steps=warmup, num_training_steps=total,
                                  scheduler_specific_kwargs=dict(kw))
                vals = []
                for _ in range(total + 3):
                    vals.append(s.get_last_lr()[0])
                    opt.step()
                    s.step()
                lines.append(" ".join([name, hx(lr), str(warmup), str(total),
                                       json.dumps(kw, separators=(",", ":"))] + [hx(v) for v in vals]))
    with open(os.path.join(OUT, "sched_kwargs.txt"), "w") as f:
        f.write("\n".join(lines) + "\n")
    print("wrote", len(lines), "cases")


if __name__ == "__main__":
    main()
