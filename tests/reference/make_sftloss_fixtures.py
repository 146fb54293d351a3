#!/usr/bin/env python3
"""make_sftloss_fixtures.py - reference losses for LLaMA-Factory's SFT token
losses in ft-train (docs/EXTRAS.md: use_dft_loss, use_eaft_loss).

Run from the repository root:
    /work/venv/bin/python tests/reference/make_sftloss_fixtures.py
LLaMA-Factory's own loss functions are taken from its source
(LF_SRC=/work/lf/src by default, commit ff6d4d12): the definitions of
dft_loss_func, eaft_loss_func and their _*_cross_entropy helpers in
train/trainer_utils.py are compiled on their own (the module's imports need
the whole package).  transformers' Trainer with compute_loss_func set calls
them with the micro-batch's logits, its labels and num_items_in_batch (the
label tokens of the whole accumulated step) and does not divide by the
accumulation steps; that is the loop below.
Writes tests/fixtures/extras/sft_losses.txt, "<run> <loss per step...>" for
the 10-step runs of tests/fixtures/parity/README.md (as
make_extras_fixtures.py: 20 micro-batches, accumulation 2, cosine with 2
warmup steps, clipping at 1.0, weight_decay 0.1):
    dft_full      full, lr 1e-3, use_dft_loss
    dft_lora      LoRA from parity/llama-lora-init, lr 2e-3, use_dft_loss
    eaft_full     full, lr 1e-3, use_eaft_loss (eaft_alpha 1.0)
    eaft_lora     LoRA from parity/llama-lora-init, lr 2e-3, eaft_alpha 0.5
Made with torch 2.15.0, transformers 5.24.0, peft 0.21.2 (CPU, float32, 1 thread).
"""
import ast
import os
import sys
from typing import Optional

import torch
import torch.nn.functional as F
from peft import PeftModel

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from make_model_fixtures import build_from  # noqa: E402
from make_extras_fixtures import adamw_run, batches, MODEL, PARITY, OUT  # noqa: E402

torch.set_num_threads(1)
WANT = {"dft_loss_func", "_dft_cross_entropy", "eaft_loss_func", "_eaft_cross_entropy"}


def lf_losses():
    path = os.environ.get("LF_SRC", "/work/lf/src") + "/llamafactory/train/trainer_utils.py"
    tree = ast.parse(open(path).read(), path)
    tree.body = [n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name in WANT]
    assert len(tree.body) == len(WANT), "trainer_utils.py changed"
    ns = {"torch": torch, "F": F, "Optional": Optional}
    exec(compile(tree, path, "exec"), ns)
    return ns


def run(m, lossf, lr):
    """the 10-step run with LLaMA-Factory's loss function on each
    micro-batch (given the step's label count, not divided by the
    accumulation steps)"""
    def micro(m, ids, lab, ntok):
        loss = lossf({"logits": m(input_ids=ids.long()).logits}, lab.long(), torch.tensor(ntok))
        return loss, float(loss)
    return adamw_run(m, lr, batches(), micro)[0]


def model(mode):
    if mode == "lora":
        return PeftModel.from_pretrained(build_from(MODEL, "llama"), os.path.join(PARITY, "llama-lora-init"),
                                         is_trainable=True), 2e-3
    return build_from(MODEL, "llama"), 1e-3


def main():
    lf = lf_losses()
    dft = lf["dft_loss_func"]

    def eaft(alpha):   # as CustomSeq2SeqTrainer's lambda with finetuning_args.eaft_alpha
        return lambda o, lab, n: lf["eaft_loss_func"](o, lab, n, alpha)
    runs = []
    for name, mode, f in [("dft_full", "full", dft), ("dft_lora", "lora", dft),
                          ("eaft_full", "full", eaft(1.0)), ("eaft_lora", "lora", eaft(0.5))]:
        m, lr = model(mode)
        runs.append((name, run(m, f, lr)))
        print(name, [round(x, 5) for x in runs[-1][1]])
    with open(os.path.join(OUT, "sft_losses.txt"), "w") as f:
        for name, losses in runs:
            f.write(name + " " + " ".join(repr(x) for x in losses) + "\n")


if __name__ == "__main__":
    main()
