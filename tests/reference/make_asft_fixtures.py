#!/usr/bin/env python3
"""make_asft_fixtures.py - reference losses for LLaMA-Factory's ASFT loss in
ft-train (docs/EXTRAS.md: use_asft_loss, asft_alpha).

Run from the repository root:
    LF_SRC=.../LLaMA-Factory/src /work/venv/bin/python tests/reference/make_asft_fixtures.py
LLaMA-Factory's own functions are taken from its source (commit ff6d4d12):
asft_loss_func, _asft_cross_entropy, _dft_cross_entropy and _kl_divergence
of train/trainer_utils.py, compiled on their own as make_sftloss_fixtures.py
does.  The loop is CustomSeq2SeqTrainer.compute_loss with use_asft_loss:
the reference model (create_ref_model: a frozen copy of the model for full
tuning, --ref_model for LoRA) gives its logits under no_grad, the loss of a
micro-batch is asft_loss_func(outputs, labels, ref_logits, asft_alpha),
a mean over that micro-batch's label tokens (no num_items_in_batch), and
transformers' training_step does not divide it by the accumulation steps
(compute_loss_func is set), so a step's gradient and logged loss are the
sums over its micro-batches.
Writes tests/fixtures/extras/asft_losses.txt, "<run> <loss per step...>",
for the 10-step runs of make_sftloss_fixtures.py (20 micro-batches,
accumulation 2, cosine with 2 warmup steps, clipping at 1.0, weight_decay
0.1):
    asft_full     full, lr 1e-3, asft_alpha 0.1 (the reference: the initial model)
    asft_lora     LoRA from parity/llama-lora-init, lr 2e-3, asft_alpha 1.0,
                  ref_model the base model
Made with torch 2.15.0, transformers 5.25, peft 0.21 (CPU, float32, 1 thread).
"""
import ast
import os
import sys
from typing import Optional

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from make_model_fixtures import build_from  # noqa: E402
from make_extras_fixtures import adamw_run, batches, MODEL, OUT  # noqa: E402
from make_sftloss_fixtures import model  # noqa: E402

torch.set_num_threads(1)
WANT = {"asft_loss_func", "_asft_cross_entropy", "_dft_cross_entropy", "_kl_divergence"}


def lf_losses():
    path = os.environ.get("LF_SRC", "/work/lf/src") + "/llamafactory/train/trainer_utils.py"
    tree = ast.parse(open(path).read(), path)
    tree.body = [n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name in WANT]
    assert len(tree.body) == len(WANT), "trainer_utils.py changed"
    ns = {"torch": torch, "F": F, "Optional": Optional}
    exec(compile(tree, path, "exec"), ns)
    return ns


def run(m, ref, alpha, lr, asft):
    """the 10-step run with LLaMA-Factory's asft_loss_func against the
    frozen reference's logits (not divided by the accumulation steps)"""
    ref.eval()

    def micro(m, ids, lab, ntok):
        with torch.no_grad():
            ref_logits = ref(input_ids=ids.long()).logits
        loss = asft({"logits": m(input_ids=ids.long()).logits}, lab.long(), ref_logits, asft_alpha=alpha)
        return loss, float(loss)
    return adamw_run(m, lr, batches(), micro)[0]


def main():
    asft = lf_losses()["asft_loss_func"]
    runs = []
    for name, mode, alpha in [("asft_full", "full", 0.1), ("asft_lora", "lora", 1.0)]:
        m, lr = model(mode)
        ref = build_from(MODEL, "llama")
        for p in ref.parameters():
            p.requires_grad_(False)
        runs.append((name, run(m, ref, alpha, lr, asft)))
        print(name, [round(x, 5) for x in runs[-1][1]])
    with open(os.path.join(OUT, "asft_losses.txt"), "w") as f:
        for name, losses in runs:
            f.write(name + " " + " ".join(repr(x) for x in losses) + "\n")


if __name__ == "__main__":
    main()
