#!/usr/bin/env python3
"""bench_merge.py - time ft-merge against PEFT merge_and_unload() +
save_pretrained() on the CPU, merging a LoRA adapter into a ~1.2B-parameter
Llama-shaped model (Llama-3.2-1B's shape, random bf16 weights), in one run.

Run from the repository root after `make`:
    /work/venv/bin/python bench/merge/bench_merge.py [--workdir DIR] [--layers N]
It makes DIR/base (random weights, seeded) and DIR/adapter (PEFT LoRA r=16,
alpha=32 on all seven linear modules, non-zero B), then times
  ft-merge  --model_name_or_path base --adapter_name_or_path adapter --export_dir ft
  PEFT      from_pretrained(base, bf16) + PeftModel.from_pretrained + merge_and_unload
            + save_pretrained(peft)
prints both wall times, the ratio, ft-merge's peak RSS, and whether the merged
tensors agree (bit for bit) between the two.  --layers makes the model
smaller (default 16 = the full ~1.2B shape).
"""
import argparse
import gc
import json
import os
import resource
import shutil
import subprocess
import sys
import time

import torch
from peft import LoraConfig, PeftModel, get_peft_model
from safetensors import safe_open
from transformers import AutoModelForCausalLM, LlamaConfig


def make_inputs(work, layers):
    base, adapter = f"{work}/base", f"{work}/adapter"
    if os.path.exists(f"{adapter}/adapter_model.safetensors"):
        return base, adapter
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=128256, hidden_size=2048, intermediate_size=8192,
                      num_hidden_layers=layers, num_attention_heads=32, num_key_value_heads=8,
                      head_dim=64, max_position_embeddings=4096, tie_word_embeddings=True,
                      rope_theta=500000.0, dtype="bfloat16")
    t = time.time()
    model = AutoModelForCausalLM.from_config(cfg, dtype=torch.bfloat16)
    model.save_pretrained(base)
    print(f"made base ({sum(p.numel() for p in model.parameters()) / 1e9:.3f} B parameters) "
          f"in {time.time() - t:.1f} s", flush=True)
    lcfg = LoraConfig(r=16, lora_alpha=32, lora_dropout=0.0, task_type="CAUSAL_LM",
                      target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"])
    pm = get_peft_model(model, lcfg)
    with torch.no_grad():
        for n, p in pm.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.01)
    pm.save_pretrained(adapter)
    del model, pm
    gc.collect()
    return base, adapter


def time_ft(root, base, adapter, out):
    shutil.rmtree(out, ignore_errors=True)
    t = time.time()
    subprocess.run([f"{root}/bin/ft-merge", "--model_name_or_path", base, "--adapter_name_or_path", adapter,
                    "--export_dir", out, "-q"], check=True)
    dt = time.time() - t
    rss = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    return dt, rss


def time_peft(base, adapter, out):
    shutil.rmtree(out, ignore_errors=True)
    t = time.time()
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.bfloat16)
    model = PeftModel.from_pretrained(model, adapter).merge_and_unload()
    model.save_pretrained(out)
    dt = time.time() - t
    del model
    gc.collect()
    return dt


def compare(a, b):
    def load_all(d):
        idx = f"{d}/model.safetensors.index.json"
        files = sorted(set(json.load(open(idx))["weight_map"].values())) if os.path.exists(idx) else ["model.safetensors"]
        return {k: f"{d}/{f}" for f in files for k in safe_open(f"{d}/{f}", "pt").keys()}
    ma, mb = load_all(a), load_all(b)
    common = sorted(set(ma) & set(mb))
    diff = 0
    for k in common:
        with safe_open(ma[k], "pt") as fa, safe_open(mb[k], "pt") as fb:
            if not torch.equal(fa.get_tensor(k), fb.get_tensor(k)):
                diff += 1
    return len(common), diff, sorted(set(ma) ^ set(mb))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--workdir", default="/tmp/ft-bench-merge")
    ap.add_argument("--layers", type=int, default=16)
    args = ap.parse_args()
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    os.makedirs(args.workdir, exist_ok=True)
    base, adapter = make_inputs(args.workdir, args.layers)
    ft_s, ft_rss = time_ft(root, base, adapter, f"{args.workdir}/ft")
    print(f"ft-merge: {ft_s:.1f} s wall, peak RSS {ft_rss:.0f} MB", flush=True)
    peft_s = time_peft(base, adapter, f"{args.workdir}/peft")
    print(f"PEFT merge_and_unload + save_pretrained: {peft_s:.1f} s wall", flush=True)
    print(f"ratio PEFT / ft-merge: {peft_s / ft_s:.2f}x")
    n, diff, only = compare(f"{args.workdir}/ft", f"{args.workdir}/peft")
    print(f"tensors compared: {n}, differing: {diff}, in one output only: {only}")
    print(f"threads: {os.cpu_count()} CPUs, torch {torch.__version__}, torch threads {torch.get_num_threads()}")


if __name__ == "__main__":
    sys.exit(main())
