#!/usr/bin/env python3
"""make_qdora_fixtures.py - bitsandbytes + PEFT reference for QDoRA: DoRA
(use_dora) on a --quantization_bit base (lib/model/lora_dora.c on
lib/model/model_quant.c's linears; LLaMA-Factory lets DoRA through on bnb
models, only PTQ methods are refused).

Run from the repository root (after make_quant_fixtures.py's inputs exist):

    /work/venv/bin/python tests/reference/make_qdora_fixtures.py

writes into tests/fixtures/quant/ (README.md there):
  {kind}-qdora-init/   PEFT's DoRA adapter made on the NF4 double-quantized
                       base (r 4, alpha 8, all seven linears): its
                       magnitudes are PEFT's init, the row norms of the
                       DEQUANTIZED weight (dequantize_module_weight), then
                       lora_B = 0.1 N(0, 1) (seeded) so every norm and
                       factor differs from the magnitude
  {kind}-qdora-{nf4_dq,int8_train,int8_eval}.safetensors
                       that adapter on the 4-bit / 8-bit base, train mode
                       (dropout 0) or eval (8-bit: LLM.int8()), on the parity
                       batch: logits, loss_sum, grad.<PEFT name> (train)
  qdora_losses.txt     "<run> <loss per step...>", 10-step runs on the llama
                       parity batches as make_extras_fixtures.py's
                       (accumulation 2, AdamW 2e-3, cosine, warmup 2, decay
                       0.1, clip 1.0) from llama-qdora-init:
      qdora_nf4        NF4 + double quantization, no dropout
      qdora_nf4_drop   the same with lora_dropout 0.1 under ft's masks
                       (make_dropout_fixtures.py's FtDropout: PEFT then
                       takes DoRA's dropped-input branch, base_result None,
                       whose base product is F.linear on the dequantized
                       weight)
      qdora_int8_drop  8-bit base (MatMul8bitFp in training), dropout 0.1
bnb runs on its CPU backend with make_quant_fixtures.py's reference
dequantize (see there).  One CPU-only fault is routed around: PEFT's
dequantize_module_weight, on a CPU, reassigns an 8-bit module's weight
with Int8Params.to("cpu"), which leaves the new parameter's SCB None once
Linear8bitLt's first forward has moved CB/SCB into its state, so the
second forward fails (MatMul8bitFp: SCB None).  On a GPU (is_cpu False)
the reassignment never happens; keep_8bit_weight() gives the CPU that
path (the same dequantized values: CB * SCB / 127 of the state).  Made with bitsandbytes 0.50.2, torch 2.15.0,
transformers 5.25.0, peft 0.22.0 (float32, one thread).
"""
import os
import sys

import torch
from safetensors.torch import save_file, load_file
from peft import LoraConfig, PeftModel, get_peft_model

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from make_quant_fixtures import OUT, PARITY, load, logits_and_grads, use_reference_dequantize  # noqa: E402
from make_dropout_fixtures import LINS, ticking, with_ft_dropout  # noqa: E402
from make_extras_fixtures import adamw_run, batches  # noqa: E402
from make_model_fixtures import random_lora_b  # noqa: E402

torch.set_num_threads(1)


def keep_8bit_weight():
    import peft.tuners.lora.dora as dora
    from peft.utils.integrations import dequantize_bnb_weight
    orig = dora.dequantize_module_weight

    def dequantize(module):
        if module.weight.__class__.__name__ == "Int8Params":
            return dequantize_bnb_weight(module.weight, state=module.state)
        return orig(module)
    dora.dequantize_module_weight = dequantize


def init_adapter(kind):
    """PEFT's DoRA init on the NF4 base, then B randomized; saved."""
    torch.manual_seed(5)
    cfg = LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, use_dora=True, bias="none",
                     task_type="CAUSAL_LM", target_modules=LINS)
    m = get_peft_model(load(kind, 4, "nf4", True), cfg)
    random_lora_b(m, 6)
    d = os.path.join(OUT, kind + "-qdora-init")
    m.save_pretrained(d)
    return d


def run(adapter, bits, p, bs):
    m = load("llama", bits, "nf4", True)
    pm = PeftModel.from_pretrained(m, adapter, is_trainable=True)
    if p:
        clock = with_ft_dropout(pm, p)
        return adamw_run(pm, 2e-3, bs, micro=ticking(clock))[0]
    return adamw_run(pm, 2e-3, bs)[0]


def main():
    use_reference_dequantize()
    keep_8bit_weight()
    for kind in ("llama", "qwen2"):
        d = init_adapter(kind)
        batch = load_file(os.path.join(PARITY, kind + "-lora-grads.safetensors"))
        for tag, bits, qt, dq, tr in (("nf4_dq", 4, "nf4", True, True),
                                      ("int8_train", 8, None, None, True),
                                      ("int8_eval", 8, None, None, False)):
            t = logits_and_grads(kind, bits, qt, dq, tr, batch, adapter=d)
            save_file(t, os.path.join(OUT, f"{kind}-qdora-{tag}.safetensors"))
    bs = batches()
    d = os.path.join(OUT, "llama-qdora-init")
    runs = [("qdora_nf4", run(d, 4, 0.0, bs)), ("qdora_nf4_drop", run(d, 4, 0.1, bs)),
            ("qdora_int8_drop", run(d, 8, 0.1, bs))]
    with open(os.path.join(OUT, "qdora_losses.txt"), "w") as f:
        for name, losses in runs:
            f.write(name + " " + " ".join(repr(x) for x in losses) + "\n")
            print(name, [round(x, 5) for x in losses])


if __name__ == "__main__":
    sys.exit(main())
