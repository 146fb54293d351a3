#!/usr/bin/env python3
"""torch_gpu.py - the PyTorch side of bench/train-gpu, and the card's
measured bf16 matmul peak.

usage: torch_gpu.py peak
       torch_gpu.py MODE PREC HIDDEN LAYERS HEADS KV INTER VOCAB B T STEPS WARMUP CKPT

Training as LLaMA-Factory runs it with --bf16: transformers
LlamaForCausalLM (sdpa attention), torch.autocast(bfloat16); lora: base
weights in bf16, PEFT LoRA r=8 alpha 16 on q_proj,v_proj (adapters fp32,
PEFT's autocast_adapter_dtype); qlora4 / qlora8: the same LoRA on
bitsandbytes' Linear4bit (NF4, double quantization, compute dtype PREC) or
Linear8bitLt (threshold 6.0) for every decoder linear, as transformers'
BitsAndBytesConfig loads them (exits 3 with a message when bitsandbytes is
not installed); full: fp32 master weights; AdamW (torch default
implementation), clip_grad_norm_ 1.0.  Prints one JSON line.
"""
import json
import sys
import time

import torch


def peak():
    n, reps = 8192, 30
    a = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    for _ in range(5):
        a @ b
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(reps):
        a @ b
    torch.cuda.synchronize()
    dt = time.perf_counter() - t0
    print(json.dumps({"bf16_tflops": round(2 * n ** 3 * reps / dt / 1e12, 1),
                      "device": torch.cuda.get_device_name(0)}))


LINEARS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def quantize(m, bits, dt):
    """Every decoder linear replaced by bnb's, quantized on the GPU as
    transformers' bnb integration does on loading."""
    import bitsandbytes as bnb
    for mod in list(m.modules()):
        for name, ch in list(mod.named_children()):
            if not isinstance(ch, torch.nn.Linear) or name not in LINEARS:
                continue
            w = ch.weight.data.to("cpu", torch.float16 if bits == 8 else dt)
            if bits == 4:
                q = bnb.nn.Linear4bit(ch.in_features, ch.out_features, bias=ch.bias is not None,
                                      compute_dtype=dt, compress_statistics=True, quant_type="nf4")
                q.weight = bnb.nn.Params4bit(w, requires_grad=False, compress_statistics=True,
                                             quant_type="nf4")
            else:
                q = bnb.nn.Linear8bitLt(ch.in_features, ch.out_features, bias=ch.bias is not None,
                                        has_fp16_weights=False, threshold=6.0)
                q.weight = bnb.nn.Int8Params(w, requires_grad=False, has_fp16_weights=False)
            setattr(mod, name, q.cuda())
            del ch
    torch.cuda.empty_cache()


def train(argv):
    from transformers import LlamaConfig, LlamaForCausalLM
    mode, prec = argv[0], argv[1]
    h, L, A, K, F, V, B, T, steps, warm, ckpt = map(int, argv[2:13])
    dt_ = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[prec]
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=V, hidden_size=h, intermediate_size=F, num_hidden_layers=L,
                      num_attention_heads=A, num_key_value_heads=K, max_position_embeddings=4096,
                      rms_norm_eps=1e-5, rope_theta=10000.0, tie_word_embeddings=False)
    qbits = {"qlora4": 4, "qlora8": 8}.get(mode, 0)
    if qbits:
        try:
            import bitsandbytes  # noqa: F401
        except ImportError as e:
            print(f"torch_gpu.py: bitsandbytes is not installed ({e})", file=sys.stderr)
            sys.exit(3)
        mode = "lora"
    base_dtype = dt_ if mode == "lora" else torch.float32
    with torch.device("cuda"):   # initialise on the GPU (fast), then cast
        m = LlamaForCausalLM._from_config(cfg, attn_implementation="sdpa")
    m = m.to(base_dtype)
    if qbits:
        quantize(m, qbits, dt_)
    if ckpt:
        m.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if mode == "lora":
        from peft import LoraConfig, get_peft_model
        m.enable_input_require_grads()
        m = get_peft_model(m, LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0,
                                         target_modules=["q_proj", "v_proj"],
                                         task_type="CAUSAL_LM"))
    m.train()
    params = [p for p in m.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-5, weight_decay=0.01)
    scaler = torch.amp.GradScaler("cuda", enabled=prec == "fp16")
    ids = torch.randint(0, V, (B, T), device="cuda")
    np_ = sum(p.numel() for p in m.parameters())
    times = []
    torch.cuda.reset_peak_memory_stats()
    for st in range(warm + steps):
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        with torch.autocast("cuda", dtype=dt_, enabled=prec != "fp32"):
            out = m(input_ids=ids, labels=ids)
        scaler.scale(out.loss).backward()
        scaler.unscale_(opt)
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        scaler.step(opt)
        scaler.update()
        torch.cuda.synchronize()
        if st >= warm:
            times.append(time.perf_counter() - t0)
    times.sort()
    dt = times[len(times) // 2]   # median step
    print(json.dumps({"impl": "torch", "params": np_,
                      "trainable": sum(p.numel() for p in params),
                      "tokens_per_s": round(B * T / dt, 1), "step_s": round(dt, 4),
                      "peak_bytes": torch.cuda.max_memory_reserved(),
                      "loss": round(float(out.loss.detach()), 4)}))


if __name__ == "__main__":
    if sys.argv[1:2] == ["peak"]:
        peak()
    else:
        train(sys.argv[1:])
