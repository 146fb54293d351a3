#!/usr/bin/env python3
"""make_multi_adapter_fixtures.py - LLaMA-Factory's init_adapter with two
adapters in adapter_name_or_path, for ft-train's parity run
(tests/bats/extras.bats): the first is merged into the base
(PeftModel.from_pretrained(...).merge_and_unload(), model/adapter.py's
adapter_to_merge), the last is loaded trainable (adapter_to_resume) and
trained as make_extras_fixtures.py's runs (20 micro-batches of the llama
parity batches, accumulation 2, AdamW lr 2e-3, cosine, warmup 2, decay 0.1,
clipping 1.0).  Run from the repository root:

    /work/venv/bin/python tests/reference/make_multi_adapter_fixtures.py

Writes tests/fixtures/extras/multi_adapter_losses.txt, "<run> <loss per step...>":
    merge_resume   parity/llama-lora-grad merged, parity/llama-lora-init trained
Made with torch 2.15.0 (CPU), transformers 5.25.0, peft 0.22.0 (float32, 1 thread).
"""
import os
import sys

import torch
from peft import PeftModel

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from make_model_fixtures import build_from  # noqa: E402
from make_extras_fixtures import adamw_run, batches, MODEL, OUT, PARITY  # noqa: E402

torch.set_num_threads(1)


def main():
    base = build_from(MODEL, "llama")
    merged = PeftModel.from_pretrained(base, os.path.join(PARITY, "llama-lora-grad")).merge_and_unload()
    m = PeftModel.from_pretrained(merged, os.path.join(PARITY, "llama-lora-init"), is_trainable=True)
    losses = adamw_run(m, 2e-3, batches())[0]
    with open(os.path.join(OUT, "multi_adapter_losses.txt"), "w") as f:
        f.write("merge_resume " + " ".join(repr(x) for x in losses) + "\n")
    print("merge_resume", [round(x, 5) for x in losses])


if __name__ == "__main__":
    main()
