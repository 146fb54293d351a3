#!/usr/bin/env python3
"""make_quant_fixtures.py - bitsandbytes + PEFT reference for QLoRA (lib/model/quant*.c).

Run from the repository root (after make_model_fixtures.py):

    /work/venv/bin/python tests/reference/make_quant_fixtures.py

writes tests/fixtures/quant/ (see README.md there).  The base models are
tests/fixtures/models/tiny-{llama,qwen2}; the batch and the adapters are the
parity fixtures' (tests/fixtures/parity/).

The models are loaded as LLaMA-Factory loads them with --quantization_bit:
transformers' BitsAndBytesConfig (bnb_4bit_compute_dtype float32), so every
decoder linear becomes bnb.nn.Linear4bit / Linear8bitLt and lm_head stays
float32.  bitsandbytes runs on its CPU backend.

Two things about bnb on the CPU that the fixtures depend on:
  * Linear4bit in eval mode under no_grad on a CPU with AVX512-BF16
    repacks the weight (_convert_weight_packed_for_cpu) and runs gemv_4bit
    in bfloat16 (input and absmax cast to bf16): logits ~2e-3 off the
    float32 result.  The compute-dtype path (dequantize_4bit in float32,
    then F.linear) is what training, CUDA and other CPUs run, and what ft
    implements; the fixtures are computed with the modules in train mode
    (dropout 0) so bnb takes that path on any CPU.
  * Linear8bitLt in train mode on the CPU runs MatMul8bitFp (W = CB *
    (SCB / 127) in float32, then F.linear); in eval mode MatMul8bitLt
    (LLM.int8(): fp16 activations quantized row-wise, outlier columns
    |x| >= 6 in the input dtype, int32 accumulation).  Both are recorded.
  * The CPU backend's native dequantize_4bit (cdequantize_blockwise_cpu_*)
    takes a row's first absmax as row * (in_features // 64): right only
    when in_features is a multiple of 64 (every real model), wrong for
    tiny-*'s down_proj (in 96), where a block of 64 straddles rows.
    quantize_4bit (its default backend) blocks the flattened tensor, as
    bnb's CUDA kernels and its reference dequantize do, and so does ft;
    use_reference_dequantize() routes the CPU kernel to that reference
    (backends/default/ops.py _dequantize_4bit_compute) for these fixtures.
"""
import os
import sys

import torch
import torch.nn.functional as F
from safetensors.torch import save_file, load_file
import bitsandbytes as bnb
import bitsandbytes.functional as bf
import transformers
from transformers import AutoModelForCausalLM, BitsAndBytesConfig, get_cosine_schedule_with_warmup
import peft
from peft import PeftModel

torch.set_num_threads(1)
MODELS = "tests/fixtures/models"
PARITY = "tests/fixtures/parity"
OUT = "tests/fixtures/quant"
STEPS, ACCUM, WARMUP, LR = 10, 2, 2, 2e-3
WEIGHT_DECAY, MAX_GRAD_NORM = 0.1, 1.0


def use_reference_dequantize():
    from bitsandbytes.backends.default import ops as dops
    from bitsandbytes.backends.utils import _get_4bit_code

    def dequantize_4bit(A, absmax, blocksize, quant_type, shape, dtype):
        code = _get_4bit_code(quant_type, A.device)
        return dops._dequantize_4bit_compute(A.view(torch.uint8).reshape(-1), absmax, code,
                                             blocksize, shape, dtype)
    torch.library.register_kernel("bitsandbytes::dequantize_4bit", "cpu", dequantize_4bit)


def load(kind, bits, qtype="nf4", dq=True):
    if bits == 4:
        qc = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type=qtype,
                                bnb_4bit_use_double_quant=dq,
                                bnb_4bit_compute_dtype=torch.float32)
    else:
        qc = BitsAndBytesConfig(load_in_8bit=True, llm_int8_threshold=6.0)
    return AutoModelForCausalLM.from_pretrained(
        os.path.join(MODELS, "tiny-" + kind), quantization_config=qc, dtype=torch.float32,
        device_map="cpu", attn_implementation="eager")


def loss_sum(logits, labels):
    lg = logits[:, :-1, :].reshape(-1, logits.shape[-1]).float()
    lb = labels[:, 1:].reshape(-1).long()
    return F.cross_entropy(lg, lb, ignore_index=-100, reduction="sum")


def quant_tensors(kind):
    """Quantized state of two linears (q_proj: in 64, down_proj: in 96, so
    blocks of 64 straddle rows) for every variant, and the code tables."""
    base = load_file(os.path.join(MODELS, "tiny-" + kind, "model.safetensors"))
    t = {"code.nf4": bf.get_4bit_type("nf4", device="cpu"), "code.fp4": bf.get_4bit_type("fp4", device="cpu"),
         "code.dynamic": bf.create_dynamic_map().float()}
    # quantize_blockwise (the nested absmax's quantizer) on values that
    # probe its code search, midpoints included
    g = torch.Generator().manual_seed(3)
    a = torch.rand(256 * 40, generator=g) * 2 - 1
    a[::256] = 1.0
    q8, s8 = bf.quantize_blockwise(a, blocksize=256)
    t["blockwise.a"], t["blockwise.q"], t["blockwise.absmax"] = a, q8, s8.absmax
    for name in ("model.layers.0.self_attn.q_proj.weight", "model.layers.1.mlp.down_proj.weight"):
        w = base[name].float().contiguous()
        t["w." + name] = w
        for qt in ("nf4", "fp4"):
            for dq in (False, True):
                q, s = bf.quantize_4bit(w, blocksize=64, compress_statistics=dq, quant_type=qt)
                p = f"{qt}{'_dq' if dq else ''}.{name}"
                t[p + ".packed"] = q.reshape(-1).contiguous()
                t[p + ".absmax"] = s.absmax.contiguous()
                if dq:
                    t[p + ".absmax2"] = s.state2.absmax.contiguous()
                    t[p + ".offset"] = s.offset.reshape(1).float()
                    t[p + ".code2"] = s.state2.code.float()
                t[p + ".dequant"] = bf.dequantize_4bit(q, s).contiguous()
        cb, scb, _ = bf.int8_vectorwise_quant(w.to(torch.float16))
        t[f"int8.{name}.CB"] = cb.contiguous()
        t[f"int8.{name}.SCB"] = scb.contiguous()
    # every linear of the NF4 model as transformers quantized it on loading
    for n, mod in load(kind, 4, "nf4", True).named_modules():
        if isinstance(mod, bnb.nn.Linear4bit):
            s = mod.weight.quant_state
            p = f"model_nf4_dq.{n}.weight"
            t[p + ".packed"] = mod.weight.data.reshape(-1).contiguous()
            t[p + ".absmax"] = s.absmax.contiguous()
            t[p + ".absmax2"] = s.state2.absmax.contiguous()
            t[p + ".offset"] = s.offset.reshape(1).float()
    return t


def with_adapter(m, adir):
    pm = PeftModel.from_pretrained(m, adir, is_trainable=True)
    return pm


def logits_and_grads(kind, bits, qtype, dq, train_mode, batch, adapter=None):
    """adapter: a PEFT adapter directory (default the parity one, r 4 on all
    seven linears)"""
    m = load(kind, bits, qtype, dq)
    pm = with_adapter(m, adapter or os.path.join(PARITY, kind + "-lora-grad"))
    pm.train(train_mode)
    ids, lab = batch["batch.input_ids"].long(), batch["batch.labels"]
    pm.zero_grad()
    out = pm(input_ids=ids)
    ls = loss_sum(out.logits, lab)
    t = {"logits": out.logits.detach().reshape(ids.numel(), -1).contiguous(),
         "loss_sum": ls.detach().reshape(1)}
    if train_mode:
        ls.backward()
        for n, p in pm.named_parameters():
            if p.requires_grad:
                # PEFT's saved names (DoRA's magnitude without its module's ".weight")
                k = n.replace(".default", "").replace("lora_magnitude_vector.weight", "lora_magnitude_vector")
                t["grad." + k] = p.grad.detach().clone()
    return t


def qlora_train(kind):
    """The parity LoRA run of make_model_fixtures.py on the 4-bit base."""
    m = load(kind, 4, "nf4", True)
    pm = with_adapter(m, os.path.join(PARITY, kind + "-lora-init"))
    bt = load_file(os.path.join(PARITY, kind + "-train-batches.safetensors"))
    batches = [(bt[f"batch.{k}.input_ids"], bt[f"batch.{k}.labels"]) for k in range(STEPS * ACCUM)]
    decay = set(transformers.Trainer.get_decay_parameter_names(None, pm))
    named = [(n, p) for n, p in pm.named_parameters() if p.requires_grad]
    groups = [{"params": [p for n, p in named if n in decay], "weight_decay": WEIGHT_DECAY},
              {"params": [p for n, p in named if n not in decay], "weight_decay": 0.0}]
    opt = torch.optim.AdamW(groups, lr=LR, betas=(0.9, 0.999), eps=1e-8)
    sch = get_cosine_schedule_with_warmup(opt, WARMUP, STEPS)
    pm.train()
    losses, norms = [], []
    for step in range(STEPS):
        mb = batches[step * ACCUM:(step + 1) * ACCUM]
        ntok = sum(int((lab[:, 1:] != -100).sum()) for _, lab in mb)
        tot = 0.0
        for ids, lab in mb:
            ls = loss_sum(pm(input_ids=ids.long()).logits, lab)
            (ls / ntok).backward()
            tot += float(ls) / ntok
        norms.append(float(torch.nn.utils.clip_grad_norm_([p for _, p in named], MAX_GRAD_NORM)))
        opt.step()
        sch.step()
        opt.zero_grad()
        losses.append(tot)
    t = {"losses": torch.tensor(losses, dtype=torch.float64),
         "grad_norms": torch.tensor(norms, dtype=torch.float64)}
    for k, v in peft.get_peft_model_state_dict(pm).items():
        t["final." + k] = v.detach().clone().contiguous()
    return t


def main():
    use_reference_dequantize()
    os.makedirs(OUT, exist_ok=True)
    for kind in ("llama", "qwen2"):
        save_file(quant_tensors(kind), os.path.join(OUT, kind + "-tensors.safetensors"))
        batch = load_file(os.path.join(PARITY, kind + "-lora-grads.safetensors"))
        for tag, bits, qt, dq, tr in (("nf4_dq", 4, "nf4", True, True), ("fp4", 4, "fp4", False, True),
                                      ("int8_train", 8, None, None, True),
                                      ("int8_eval", 8, None, None, False)):
            t = logits_and_grads(kind, bits, qt, dq, tr, batch)
            save_file(t, os.path.join(OUT, f"{kind}-{tag}.safetensors"))
        save_file(qlora_train(kind), os.path.join(OUT, kind + "-train-nf4_dq.safetensors"))
    print("wrote", OUT, "bnb", bnb.__version__, "torch", torch.__version__,
          "transformers", transformers.__version__, "peft", peft.__version__)


if __name__ == "__main__":
    sys.exit(main())
