#!/usr/bin/env python3
"""make_merge_fixtures.py - PEFT LoRA adapters on the tiny fixture models and
the weights PEFT's merge_and_unload() makes from them, for ft-merge's tests.

Run from the repository root:
    /work/venv/bin/python tests/reference/make_merge_fixtures.py
Made with torch 2.15.0 (CPU), transformers 5.24.0, peft 0.21.2,
safetensors 0.8.0.  Input: tests/fixtures/models/tiny-{llama,qwen2}.

Writes tests/fixtures/merge/<case>/ for each case:
  adapter/                  adapter_config.json + adapter_model.safetensors
                            as PEFT saves them (lora_B made non-zero)
  expected.safetensors      the tensors merge_and_unload() changed, float32
  logits.safetensors        logits of PeftModel(base, adapter) (unmerged) on
                            a fixed batch "input_ids" [2, 12], float32
Cases:
  llama-r4      r=4, alpha=8, all seven linear modules
  qwen2-rslora  r=8, alpha=16, use_rslora, rank_pattern {v_proj: 4},
                alpha_pattern {down_proj: 32}, q/k/v/o/down only (Qwen2 has
                q/k/v biases); a copy adapter-default/ renames the tensors
                the way older PEFT wrote them (...lora_A.default.weight)
  qwen2-bias    r=4 on q/v with lora_bias=True (lora_B has a bias, added
                to Qwen2's q/v biases)
  llama-mts     r=2 on q with modules_to_save=["lm_head"] (the trained copy
                replaces lm_head)
  llama-r4-then-r2  expected weights after merging llama-r4's adapter and
                then a second adapter (r=2, q/v) on top, as two successive
                merge_and_unload() calls do
"""
import json
import os
import shutil

import torch
from peft import LoraConfig, PeftModel, get_peft_model
from safetensors.torch import load_file, save_file
from transformers import AutoModelForCausalLM

MODELS = "tests/fixtures/models"
OUT = "tests/fixtures/merge"
ALL = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def make_adapter(base_dir, cfg, seed, out_dir):
    torch.manual_seed(seed)
    base = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    model = get_peft_model(base, cfg)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_B" in n or "lora_A" in n or "modules_to_save" in n:
                p.copy_(torch.randn_like(p) * 0.05)   # non-zero B, so the merge matters
    model.save_pretrained(out_dir)
    os.remove(os.path.join(out_dir, "README.md"))   # PEFT's model card: not needed
    return model


def merged_state(base_dir, adapter_dirs):
    model = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    for a in adapter_dirs:
        model = PeftModel.from_pretrained(model, a).merge_and_unload()
    return {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}


def save_expected(base_dir, merged, path):
    base = load_file(os.path.join(base_dir, "model.safetensors"))
    changed = {k: v for k, v in merged.items() if k in base and not torch.equal(base[k], v)}
    save_file(changed, path)
    return changed


def save_logits(base_dir, adapter_dir, path):
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32),
                                      adapter_dir)
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(3, 256, (2, 12), generator=g)
    with torch.no_grad():
        logits = model(input_ids=ids).logits.float().contiguous()
    save_file({"input_ids": ids.to(torch.int64), "logits": logits}, path)


def case(name, model, cfg, seed):
    d = f"{OUT}/{name}"
    shutil.rmtree(d, ignore_errors=True)
    os.makedirs(d)
    base_dir = f"{MODELS}/{model}"
    make_adapter(base_dir, cfg, seed, f"{d}/adapter")
    changed = save_expected(base_dir, merged_state(base_dir, [f"{d}/adapter"]), f"{d}/expected.safetensors")
    save_logits(base_dir, f"{d}/adapter", f"{d}/logits.safetensors")
    print(name, len(changed), "tensors changed")
    return d


def main():
    a = case("llama-r4", "tiny-llama",
             LoraConfig(r=4, lora_alpha=8, target_modules=ALL, lora_dropout=0.0, task_type="CAUSAL_LM"), 1)
    q = case("qwen2-rslora", "tiny-qwen2",
             LoraConfig(r=8, lora_alpha=16, use_rslora=True, rank_pattern={"v_proj": 4},
                        alpha_pattern={"down_proj": 32},
                        target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "down_proj"],
                        lora_dropout=0.0, task_type="CAUSAL_LM"), 2)
    case("qwen2-bias", "tiny-qwen2",
         LoraConfig(r=4, lora_alpha=4, target_modules=["q_proj", "v_proj"], lora_bias=True,
                    lora_dropout=0.0, task_type="CAUSAL_LM"), 4)
    case("llama-mts", "tiny-llama",
         LoraConfig(r=2, lora_alpha=4, target_modules=["q_proj"], modules_to_save=["lm_head"],
                    lora_dropout=0.0, task_type="CAUSAL_LM"), 5)
    # older PEFT naming: ...lora_A.default.weight
    os.makedirs(f"{q}/adapter-default", exist_ok=True)
    shutil.copy(f"{q}/adapter/adapter_config.json", f"{q}/adapter-default/")
    t = load_file(f"{q}/adapter/adapter_model.safetensors")
    save_file({k.replace(".weight", ".default.weight"): v for k, v in t.items()},
              f"{q}/adapter-default/adapter_model.safetensors")
    # two adapters in order
    d = f"{OUT}/llama-r4-then-r2"
    shutil.rmtree(d, ignore_errors=True)
    os.makedirs(d)
    make_adapter(f"{MODELS}/tiny-llama",
                 LoraConfig(r=2, lora_alpha=4, target_modules=["q_proj", "v_proj"], lora_dropout=0.0,
                            task_type="CAUSAL_LM"), 3, f"{d}/adapter")
    merged = merged_state(f"{MODELS}/tiny-llama", [f"{a}/adapter", f"{d}/adapter"])
    print("llama-r4-then-r2", len(save_expected(f"{MODELS}/tiny-llama", merged, f"{d}/expected.safetensors")))


if __name__ == "__main__":
    main()
