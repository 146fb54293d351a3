#!/usr/bin/env python3
"""make_trainer_fixtures.py - reference values for ft's optimizer and LR
schedules, from torch.optim.AdamW, torch.nn.utils.clip_grad_norm_ and
transformers.get_scheduler.

Run from the repository root:
    /work/venv/bin/python tests/reference/make_trainer_fixtures.py
Writes tests/fixtures/trainer/{sched.txt,adamw.txt} and, from the parity
batches of tests/fixtures/parity (tests/reference/make_model_fixtures.py),
tests/fixtures/trainer/{train,val}.jsonl: batch streams as JSON lines
(header line, then one batch record per line) for tests/bats/ft-train.bats,
which turns them into streams with `ft-cat --encode`.
Made with torch 2.15.0 and transformers 5.24.0 (CPU).

Formats (read by tests/unit/test_sched.c and test_optim.c), one item per
line, floats as Python float.hex() (exact):
  sched.txt:  "<type> <lr> <warmup> <total> <lr(0)> <lr(1)> ... <lr(total+2)>"
  adamw.txt:  "case <name> <beta1> <beta2> <eps> <weight_decay> <max_norm> <nsteps>"
              "param <name> <decay 0|1> <n> <values...>"        (initial)
              "step <k> <lr>"
              "grad <name> <n> <values...>"                      (before clip)
              "norm <total norm returned by clip_grad_norm_>"
              "after <name> <n> <values...>"                     (param after step)
"""
import json
import os
import torch
import transformers
from transformers import get_scheduler

OUT = "tests/fixtures/trainer"


def hx(x):
    return float(x).hex()


def sched_fixture():
    lines = []
    lrs = [5e-5, 1e-3]
    configs = [(0, 10), (3, 10), (10, 10), (2, 7), (1, 1), (5, 23), (0, 1)]
    for name in ["linear", "cosine", "cosine_with_restarts", "polynomial", "constant",
                 "constant_with_warmup", "inverse_sqrt"]:
        for lr in lrs:
            for warmup, total in configs:
                if name == "polynomial" and warmup >= total:
                    continue   # transformers divides by zero there
                p = torch.nn.Parameter(torch.zeros(1))
                opt = torch.optim.AdamW([p], lr=lr)
                s = get_scheduler(name, opt, num_warmup_steps=warmup, num_training_steps=total)
                vals = []
                for _ in range(total + 3):
                    vals.append(s.get_last_lr()[0])
                    opt.step()
                    s.step()
                lines.append(" ".join([name, hx(lr), str(warmup), str(total)] + [hx(v) for v in vals]))
    # warmup as TrainingArguments.get_warmup_steps
    for warm, total in [(0.1, 100), (0.05, 7), (3.0, 10), (2.5, 10), (0.0, 10)]:
        args = transformers.TrainingArguments(output_dir="/tmp/ft-ref-unused", warmup_steps=warm,
                                              report_to=[])
        lines.append(f"warmup {hx(warm)} {total} {args.get_warmup_steps(total)}")
    with open(os.path.join(OUT, "sched.txt"), "w") as f:
        f.write("\n".join(lines) + "\n")


def adamw_case(f, name, beta1, beta2, eps, wd, max_norm, nsteps, seed):
    g = torch.Generator().manual_seed(seed)
    shapes = {"w.a": ((37,), 1), "w.b": ((8, 8), 1), "bias": ((16,), 0), "norm.weight": ((19,), 0)}
    params = {}
    for pname, (shape, decay) in shapes.items():
        params[pname] = torch.nn.Parameter(torch.randn(*shape, generator=g))
    decay_p = [params[n] for n, (_, d) in shapes.items() if d]
    nodecay_p = [params[n] for n, (_, d) in shapes.items() if not d]
    # transformers' grouping: weight_decay on one group, 0.0 on the other
    opt = torch.optim.AdamW([{"params": decay_p, "weight_decay": wd},
                             {"params": nodecay_p, "weight_decay": 0.0}],
                            lr=1e-2, betas=(beta1, beta2), eps=eps)
    sched = get_scheduler("cosine", opt, num_warmup_steps=2, num_training_steps=nsteps)
    f.write(f"case {name} {hx(beta1)} {hx(beta2)} {hx(eps)} {hx(wd)} {hx(max_norm)} {nsteps}\n")
    for pname, (_, decay) in shapes.items():
        v = params[pname].detach().flatten().tolist()
        f.write(f"param {pname} {decay} {len(v)} " + " ".join(hx(x) for x in v) + "\n")
    for k in range(nsteps):
        lr = opt.param_groups[0]["lr"]
        f.write(f"step {k} {hx(lr)}\n")
        scale = [0.05, 3.0, 0.3, 10.0][k % 4]   # some steps clip, some don't
        for pname in shapes:
            grad = torch.randn(*params[pname].shape, generator=g) * scale
            params[pname].grad = grad
            v = grad.flatten().tolist()
            f.write(f"grad {pname} {len(v)} " + " ".join(hx(x) for x in v) + "\n")
        if max_norm > 0:
            norm = torch.nn.utils.clip_grad_norm_(list(params.values()), max_norm)
        else:   # transformers skips clipping when max_grad_norm <= 0
            norm = torch.nn.utils.get_total_norm([p.grad for p in params.values()])
        f.write(f"norm {hx(norm.item())}\n")
        opt.step()
        sched.step()
        for pname in shapes:
            v = params[pname].detach().flatten().tolist()
            f.write(f"after {pname} {len(v)} " + " ".join(hx(x) for x in v) + "\n")


def adamw_fixture():
    with open(os.path.join(OUT, "adamw.txt"), "w") as f:
        adamw_case(f, "default", 0.9, 0.999, 1e-8, 0.01, 1.0, 8, 1)
        adamw_case(f, "beta1_0.3", 0.3, 0.95, 1e-6, 0.1, 1.0, 6, 2)   # lerp weight >= 0.5 branch
        adamw_case(f, "noclip_nodecay", 0.8, 0.99, 1e-8, 0.0, 0.0, 5, 3)


def batch_fixture():
    from safetensors.torch import load_file
    t = load_file("tests/fixtures/parity/llama-train-batches.safetensors")
    batches = []
    for k in range(20):
        ids = t[f"batch.{k}.input_ids"]
        lab = t[f"batch.{k}.labels"]
        batches.append((ids, lab))

    def write(path, bs, split):
        B, T = bs[0][0].shape
        toks = sum(int((ids != 0).sum()) for ids, _ in bs)
        labt = sum(int((lab != -100).sum()) for _, lab in bs)
        hdr = {"format": "ft-stream", "version": 1, "kind": "batches",
               "producer": "make_trainer_fixtures.py",
               "meta": {"stage": "sft", "layout": "padded", "split": split, "pad_id": 0,
                        "eos_id": 2, "seq_len": T, "batch_size": B, "rows_per_batch": B,
                        "pairwise": False, "cutoff_len": T, "pad_to_multiple_of": 8, "seed": 42,
                        "tokenizer": "tiny-llama", "vocab_size": 256,
                        "counts": {"batches": len(bs), "examples": B * len(bs),
                                   "tokens": toks, "label_tokens": labt, "pad_tokens": B * T * len(bs) - toks}}}
        with open(path, "w") as f:
            f.write(json.dumps(hdr) + "\n")
            for i, (ids, lab) in enumerate(bs):
                rec = {"index": i, "B": B, "T": T, "input_ids": ids.flatten().tolist(),
                       "labels": lab.flatten().tolist(), "n_label_tokens": int((lab != -100).sum()),
                       "n_tokens": int((ids != 0).sum()), "n_examples": B}
                f.write(json.dumps(rec) + "\n")

    # the same rows as token records (ft-tokenize's kind), for ft-pack
    with open(os.path.join(OUT, "tokens.jsonl"), "w") as f:
        f.write(json.dumps({"format": "ft-stream", "version": 1, "kind": "tokens",
                            "producer": "make_trainer_fixtures.py",
                            "meta": {"stage": "sft", "tokenizer": "tiny-llama", "pad_id": 0,
                                     "eos_id": 2, "vocab_size": 256}}) + "\n")
        for ids, lab in batches:
            for r in range(ids.shape[0]):
                n = int((ids[r] != 0).sum())
                f.write(json.dumps({"input_ids": ids[r, :n].tolist(),
                                    "labels": lab[r, :n].tolist()}) + "\n")
    write(os.path.join(OUT, "parity20.jsonl"), batches, "train")
    # step losses of the PyTorch runs (make_model_fixtures.py, README in
    # tests/fixtures/parity), for ft-train's end-to-end check
    with open(os.path.join(OUT, "parity_losses.txt"), "w") as f:
        for mode in ("lora", "freeze", "full"):
            r = load_file(f"tests/fixtures/parity/llama-train-{mode}.safetensors")
            f.write(mode + " " + " ".join(repr(x) for x in r["losses"].tolist()) + "\n")
    write(os.path.join(OUT, "train.jsonl"), batches[:16], "train")
    write(os.path.join(OUT, "val.jsonl"), batches[16:], "val")


if __name__ == "__main__":
    torch.set_num_threads(1)
    os.makedirs(OUT, exist_ok=True)
    sched_fixture()
    adamw_fixture()
    batch_fixture()
    print("wrote", OUT + "/sched.txt", OUT + "/adamw.txt")
