#!/usr/bin/env python3
"""make_hfargs_fixtures.py - reference values for ft-train's settings of
transformers' trainer as LLaMA-Factory's pt/sft trainers reach them
(docs/TRAINING.md): --label_smoothing_factor, --compute_accuracy.

Run from the repository root:
    /work/venv/bin/python tests/reference/make_hfargs_fixtures.py
transformers' own LabelSmoother (trainer_pt_utils.py) is called as
Trainer.compute_loss calls it for a causal LM: on the micro-batch's logits
and labels with shift_labels=True and num_items_in_batch the label tokens
of the whole accumulated step (labels[..., 1:] != -100); the Trainer then
does not divide by the accumulation steps (model_accepts_loss_kwargs for a
text-only model: LLaMA-Factory's CustomSeq2SeqTrainer resets it only when
a multimodal processor is loaded).  That is the loop of
make_extras_fixtures.run with this micro-batch loss.
Writes tests/fixtures/hfargs/label_smoothing.txt, "<run> <values...>":
    ls_full    full, lr 1e-3, label_smoothing_factor 0.1: the 10 step losses
               of tests/fixtures/parity/README.md's runs (20 micro-batches,
               accumulation 2, cosine with 2 warmup steps, clipping 1.0,
               weight_decay 0.1)
    ls_lora    LoRA from parity/llama-lora-init, lr 2e-3, factor 0.1
    ls_lora3   the same with factor 0.3
    eval_ls    the eval loss of tiny-llama itself over the 20 parity batches
               with factor 0.1, as prediction_step (compute_loss with the
               batch's own num_items_in_batch) and evaluation_loop (the
               batch losses' mean weighted by rows) make it
And tests/fixtures/hfargs/acc-lora/, a LoRA adapter trained here from
parity/llama-lora-init (200 steps of plain AdamW at lr 2e-2 over the 20
parity batches, so that its argmax often hits), and accuracy.txt:
    acc        eval_accuracy of tiny-llama + acc-lora over the 20 parity
               batches as LLaMA-Factory computes it: eval_logit_processor
               (argmax) on each batch, the batches concatenated as
               transformers' evaluation_loop does, then ComputeAccuracy
               (train/sft/metric.py), both taken from LLaMA-Factory's source
               (LF_GIT, a bare git directory, default the mirror below)
    pooled     the token-pooled accuracy (all hits / all label tokens):
               not LLaMA-Factory's, written to show the test tells the two
Made with torch 2.15.0, transformers 5.25.0, peft 0.22.0 (CPU, float32, 1 thread).
"""
import ast
import os
import subprocess
import sys
from dataclasses import dataclass
from typing import Optional

import numpy as np

import torch
from peft import PeftModel
from transformers.trainer_pt_utils import LabelSmoother

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from make_model_fixtures import build_from  # noqa: E402
from make_extras_fixtures import adamw_run, batches, MODEL, PARITY  # noqa: E402

torch.set_num_threads(1)
OUT = "tests/fixtures/hfargs"


def smoothed(eps):
    ls = LabelSmoother(epsilon=eps)

    def micro(m, ids, lab, ntok):
        out = m(input_ids=ids.long())
        loss = ls(out, lab.long(), shift_labels=True, num_items_in_batch=torch.tensor(ntok))
        return loss, float(loss)
    return micro


def model(mode):
    if mode == "lora":
        return PeftModel.from_pretrained(build_from(MODEL, "llama"), os.path.join(PARITY, "llama-lora-init"),
                                         is_trainable=True), 2e-3
    return build_from(MODEL, "llama"), 1e-3


def eval_loss(eps):
    m = build_from(MODEL, "llama")
    m.eval()
    ls = LabelSmoother(epsilon=eps)
    tot, rows = 0.0, 0
    with torch.no_grad():
        for ids, lab in batches():
            n = int((lab[:, 1:] != -100).sum())
            loss = ls(m(input_ids=ids.long()), lab.long(), shift_labels=True, num_items_in_batch=torch.tensor(n))
            tot += float(loss) * ids.shape[0]
            rows += ids.shape[0]
    return [tot / rows]


LF_GIT = os.environ.get("LF_GIT", "/work/.mirror/hiyouga+LLaMA-Factory/repo")


def lf_metric():
    src = subprocess.run(["git", "--git-dir", LF_GIT, "show", "HEAD:src/llamafactory/train/sft/metric.py"],
                         check=True, capture_output=True, text=True).stdout
    tree = ast.parse(src)
    want = {"eval_logit_processor", "ComputeAccuracy"}
    tree.body = [n for n in tree.body if getattr(n, "name", None) in want]
    assert len(tree.body) == 2, "metric.py changed"
    ns = {"torch": torch, "np": np, "dataclass": dataclass, "Optional": Optional, "IGNORE_INDEX": -100,
          "numpify": lambda x: x.numpy() if torch.is_tensor(x) else np.asarray(x)}
    exec(compile(tree, "metric.py", "exec"), ns)
    return ns


def acc_fixture():
    base = build_from(MODEL, "llama")
    m = PeftModel.from_pretrained(base, os.path.join(PARITY, "llama-lora-init"), is_trainable=True)
    opt = torch.optim.AdamW([p for p in m.parameters() if p.requires_grad], lr=2e-2)
    bs = batches()
    m.train()
    for step in range(200):
        ids, lab = bs[step % len(bs)]
        out = m(input_ids=ids.long(), labels=lab.long())
        out.loss.backward()
        opt.step()
        opt.zero_grad()
    m.save_pretrained(os.path.join(OUT, "acc-lora"))
    m.eval()
    lf = lf_metric()
    preds, labels = [], []
    with torch.no_grad():
        for ids, lab in bs:
            logits = m(input_ids=ids.long()).logits
            preds.append(lf["eval_logit_processor"](logits, lab.long()))
            labels.append(lab.long())
    preds, labels = torch.cat(preds), torch.cat(labels)   # one T: no padding in the concatenation
    from transformers import EvalPrediction
    acc = lf["ComputeAccuracy"]()(EvalPrediction(predictions=preds, label_ids=labels))["accuracy"]
    mask = labels[:, 1:] != -100
    pooled = float((preds[:, :-1] == labels[:, 1:])[mask].double().mean())
    with open(os.path.join(OUT, "accuracy.txt"), "w") as f:
        f.write(f"acc {acc!r}\npooled {pooled!r}\n")
    print("acc", acc, "pooled", pooled)


def main():
    acc_fixture()
    runs = []
    for name, mode, eps in [("ls_full", "full", 0.1), ("ls_lora", "lora", 0.1), ("ls_lora3", "lora", 0.3)]:
        m, lr = model(mode)
        runs.append((name, adamw_run(m, lr, batches(), smoothed(eps))[0]))
        print(name, [round(x, 5) for x in runs[-1][1]])
    runs.append(("eval_ls", eval_loss(0.1)))
    print("eval_ls", runs[-1][1])
    os.makedirs(OUT, exist_ok=True)
    with open(os.path.join(OUT, "label_smoothing.txt"), "w") as f:
        for name, vals in runs:
            f.write(name + " " + " ".join(repr(x) for x in vals) + "\n")


if __name__ == "__main__":
    main()
