#!/usr/bin/env python3
"""make_fp8_fixtures.py - reference values for ft-train's --fp8
(LLaMA-Factory's `fp8: true`, fp8_backend torchao/auto; docs/EXTRAS.md).

Run from the repository root (torchao 0.18 in the venv: pip install torchao):
    /work/venv/bin/python tests/reference/make_fp8_fixtures.py

This runs torchao's own Float8Linear on the CPU, not a transcription:
torch._scaled_mm has a CPU kernel in torch 2.15, so the module LLaMA-Factory
trains with is the one measured here.  The model is converted the way it
is in LLaMA-Factory: its trainers only set ACCELERATE_MIXED_PRECISION=fp8
(the Float8LinearConfig "rowwise" and the module filter that
train/fp8_utils.py builds are logged and dropped; the FP8_BACKEND variable
it sets is not one accelerate reads), so accelerate's Accelerator makes its
default AORecipeKwargs() and prepare() calls accelerate.utils.ao's
convert_model_to_fp8_ao: every nn.Linear but the first and the last
(layer 0's q_proj, lm_head), and those with a dimension not divisible by
16, become Float8Linear with Float8LinearConfig(pad_inner_dim=True,
enable_fsdp_float8_all_gather=True): dynamic tensorwise scaling, input and
weight e4m3fn, grad_output e5m2.  This script calls that same function.

Writes into tests/fixtures/extras/:
  fp8_cast.txt    "<f32 bits> <e4m3fn byte> <e5m2 byte>" (hex): torch's
                  Tensor.to(float8_e4m3fn / float8_e5m2) on edge values
                  (every fp8 value, the ties between neighbours and one f32
                  ulp either side, subnormals, the saturation and overflow
                  edges, +-0, +-Inf, NaN) and a log-uniform sweep;
                  then "q <f32 bits of x...>" / "e4m3 <inverse scale> <q...>"
                  / "e5m2 ...": torchao's hp_tensor_to_float8_dynamic on
                  one vector (its _data as float, 1/_scale)
  fp8_losses.txt  "<run> <loss per step>" and "<run>_gnorm <grad norm per
                  step>" for the 10-step runs of tests/fixtures/parity
                  (20 micro-batches, accumulation 2, lr 1e-3, cosine with 2
                  warmup steps, clipping at 1.0, weight_decay 0.1), full
                  fine-tuning, float32 weights (ft's CPU precision; on a GPU
                  LLaMA-Factory's bf16 autocast would give bf16 outputs):
    fp8_full      with the model converted as above
    fp8_freeze    the same with only the last layer trainable
                  (finetuning_type freeze, freeze_trainable_layers 1)
    fp8_lora      LoRA from parity/llama-lora-init (r=4), lr 2e-3, converted
                  after PEFT wraps the model, as accelerate's prepare sees it:
                  the first linear is layer 0's q_proj.base_layer, and
                  lora_A/lora_B (4 features) are left alone
    fp8_qwen2     tiny-qwen2 (q/k/v biases: added after the fp8 product, in
                  full precision), full, lr 1e-3, on the same batches
    plain_full    the same run without fp8 (the test checks that fp8 moves
                  the losses by far more than its tolerance)
    /work/venv/bin/python tests/reference/make_fp8_fixtures.py --nudge
        writes nothing: prints the fp8 runs again with every initial weight
        multiplied by 1 + 1e-7 N(0,1), float32 rounding noise.  That alone
        moves the losses from step 3-4 on by up to ~1e-4 relative (a tensor
        element crosses an fp8 rounding boundary, and AdamW turns the changed
        small gradients into lr-sized steps): the spread any other summation
        order, ft's included, shows from there on (tests/bats/ft-train-fp8.bats).
Made with torch 2.15.0, torchao 0.18.0, accelerate 1.16.0, transformers
5.25 (CPU, float32, 1 thread).
"""
import os
import struct
import sys

import torch
from accelerate.utils import AORecipeKwargs
from accelerate.utils.ao import convert_model_to_fp8_ao
from torchao.float8.float8_scaling_utils import hp_tensor_to_float8_dynamic
from torchao.float8.float8_training_tensor import LinearMMConfig

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from make_model_fixtures import PARITY, build_from  # noqa: E402
from make_extras_fixtures import adamw_run, batches, MODEL, OUT  # noqa: E402

torch.set_num_threads(1)
F8 = {"e4m3": torch.float8_e4m3fn, "e5m2": torch.float8_e5m2}


def bits(x):
    return struct.unpack("<I", struct.pack("<f", x))[0]


def cast_inputs():
    v = [0.0, -0.0, float("inf"), -float("inf"), float("nan"), -float("nan"),
         1e-45, 1e-40, 2.0 ** -126, 448.0, 460.0, 464.0, 465.0, 479.0, 480.0, 500.0, 1e9,
         57344.0, 61439.0, 61440.0, 61441.0, 65536.0, 1e30]
    for dt in F8.values():   # every fp8 value, the ties, one f32 ulp apart
        vals = torch.arange(256, dtype=torch.uint8).view(dt).float()
        vals = sorted(set(x for x in vals.tolist() if x == x and abs(x) != float("inf") and x >= 0))
        for a, b in zip(vals, vals[1:]):
            mid = torch.tensor((a + b) / 2, dtype=torch.float32)
            for t in (torch.tensor(a), mid, torch.nextafter(mid, torch.tensor(0.0)),
                      torch.nextafter(mid, torch.tensor(1e9))):
                v.append(float(t))
    g = torch.Generator().manual_seed(8)
    sweep = torch.exp(torch.empty(1024).uniform_(-25, 14, generator=g)) * torch.sign(torch.randn(1024, generator=g))
    v += sweep.tolist()
    x = torch.tensor(v, dtype=torch.float32)
    return torch.cat([x, -x])


def write_casts(path):
    x = cast_inputs()
    e4 = x.to(torch.float8_e4m3fn).view(torch.uint8).tolist()
    e5 = x.to(torch.float8_e5m2).view(torch.uint8).tolist()
    g = torch.Generator().manual_seed(9)
    q = (torch.randn(257, generator=g) * 3.0).float()
    q[5] = 40.0   # the amax, so one element saturates exactly
    with open(path, "w") as f:
        for a, b, c in zip(x.tolist(), e4, e5):
            f.write(f"{bits(a):08x} {b:02x} {c:02x}\n")
        f.write("q " + " ".join(f"{bits(a):08x}" for a in q.tolist()) + "\n")
        for name, dt in F8.items():
            t = hp_tensor_to_float8_dynamic(q, dt, LinearMMConfig())
            inv = float(t._scale.reciprocal())
            f.write(name + f" {bits(inv):08x} " + " ".join(f"{bits(a):08x}" for a in t._data.float().tolist()) + "\n")


def train(mode, fp8):
    m = build_from(MODEL, "llama") if mode != "qwen2" else build_from(MODEL.replace("llama", "qwen2"), "qwen2")
    lr = 1e-3
    if mode == "lora":
        from peft import PeftModel
        m = PeftModel.from_pretrained(m, os.path.join(PARITY, "llama-lora-init"),
                                      is_trainable=True)
        lr = 2e-3
    if mode == "freeze":
        last = m.config.num_hidden_layers - 1
        for n, p in m.named_parameters():
            p.requires_grad_(f".layers.{last}." in n)
    if fp8:
        convert_model_to_fp8_ao(m, config=AORecipeKwargs().config)
        conv = [n for n, mod in m.named_modules() if type(mod).__name__ == "Float8Linear"]
        print(f"{mode}: {len(conv)} Float8Linear; not: "
              f"{[n for n, mod in m.named_modules() if type(mod) is torch.nn.Linear]}")
    return adamw_run(m, lr, batches())


def nudge():
    orig = build_from

    def nudged(d, kind):
        m = orig(d, kind)
        g = torch.Generator().manual_seed(1)
        with torch.no_grad():
            for p in m.parameters():
                p.mul_(1 + 1e-7 * torch.randn(p.shape, generator=g))
        return m
    globals()["build_from"] = nudged
    for name, mode in [("fp8_full", "full"), ("fp8_freeze", "freeze"), ("fp8_lora", "lora")]:
        losses, norms = train(mode, True)
        print(name, " ".join(repr(x) for x in losses))
        print(name + "_gnorm", " ".join(repr(x) for x in norms))


def main():
    if sys.argv[1:] == ["--nudge"]:
        return nudge()
    write_casts(os.path.join(OUT, "fp8_cast.txt"))
    with open(os.path.join(OUT, "fp8_losses.txt"), "w") as f:
        for name, mode, fp8 in [("fp8_full", "full", True), ("fp8_freeze", "freeze", True),
                                ("fp8_lora", "lora", True), ("fp8_qwen2", "qwen2", True),
                                ("plain_full", "full", False)]:
            losses, norms = train(mode, fp8)
            print(name, [round(x, 6) for x in losses])
            f.write(name + " " + " ".join(repr(x) for x in losses) + "\n")
            f.write(name + "_gnorm " + " ".join(repr(x) for x in norms) + "\n")


if __name__ == "__main__":
    main()
