#!/usr/bin/env python3
"""make_oft_fixtures.py - reference values for ft-train's OFT
(--finetuning_type oft, docs/EXTRAS.md) and ft-merge of an OFT adapter.

Run from the repository root:
    /work/venv/bin/python tests/reference/make_oft_fixtures.py
The adapter is PEFT's OFTConfig as LLaMA-Factory's _setup_lora_tuning
builds it (r = oft_rank 0, oft_block_size, target_modules from lora_target,
module_dropout; PEFT's defaults otherwise: Cayley-Neumann with 5 terms, no
coft, no block_share).  oft_block_size 24 exercises PEFT's size adjustment:
the 64 inputs of q/k/v/o/gate/up take blocks of 16 (adjust_oft_parameters),
down_proj's 96 inputs blocks of 24.  init_weights=False (normal, std 0.1)
so the rotations are not the identity.  Writes into tests/fixtures/extras/:
    oft-init/            the adapter (PEFT's save_pretrained)
    oft_losses.txt       "oft <loss per step>" and "oft_gnorm <grad norm per
                         step>" of the 10-step run of make_extras_fixtures.py
                         (20 micro-batches, accumulation 2, lr 2e-3, cosine
                         with 2 warmup steps, clipping at 1.0, weight_decay 0.1)
                         from that adapter
    oft-merged.safetensors   the 14 linear weights after merge_and_unload()
Made with torch 2.15.0, transformers 5.25, peft 0.21.2 (CPU, float32, 1 thread).
"""
import os
import shutil
import sys

import torch
from peft import OFTConfig, PeftModel, get_peft_model
from safetensors.torch import save_file

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from make_model_fixtures import build_from  # noqa: E402
from make_extras_fixtures import adamw_run, batches, MODEL, OUT  # noqa: E402

torch.set_num_threads(1)
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
ADAPTER = os.path.join(OUT, "oft-init")


def make_adapter():
    torch.manual_seed(0)
    cfg = OFTConfig(task_type="CAUSAL_LM", inference_mode=False, r=0, oft_block_size=24,
                    target_modules=TARGETS, module_dropout=0.0, init_weights=False)
    m = get_peft_model(build_from(MODEL, "llama"), cfg)
    shutil.rmtree(ADAPTER, ignore_errors=True)
    m.save_pretrained(ADAPTER)
    os.remove(os.path.join(ADAPTER, "README.md"))   # the model card


def train():
    m = PeftModel.from_pretrained(build_from(MODEL, "llama"), ADAPTER, is_trainable=True)
    return adamw_run(m, 2e-3, batches())


def merged():
    m = PeftModel.from_pretrained(build_from(MODEL, "llama"), ADAPTER).merge_and_unload()
    sd = m.state_dict()
    return {k: v.contiguous() for k, v in sd.items() if any(t in k for t in TARGETS)}


def main():
    make_adapter()
    losses, norms = train()
    print("oft", [round(x, 5) for x in losses])
    with open(os.path.join(OUT, "oft_losses.txt"), "w") as f:
        f.write("oft " + " ".join(repr(x) for x in losses) + "\n")
        f.write("oft_gnorm " + " ".join(repr(x) for x in norms) + "\n")
    save_file(merged(), os.path.join(OUT, "oft-merged.safetensors"))


if __name__ == "__main__":
    main()
