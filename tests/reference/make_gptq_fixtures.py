#!/usr/bin/env python3
"""make_gptq_fixtures.py - GPTQ exports made by the real libraries, for
ft-merge --export_quantization_bit (lib/export/gptq*.c, tests/unit/test_gptq.c).

Run from the repository root:
    /work/venv/bin/python tests/reference/make_gptq_fixtures.py
Made with torch 2.15.0 (CPU), transformers 5.25.0, optimum 2.3.0,
gptqmodel 7.7.0 (its CPU path; the first run compiles two torch
extensions, a few minutes), tokenizers from the same environment.

What LLaMA-Factory's export does with export_quantization_bit, on the CPU
and in float32 (LLaMA-Factory loads the model in float16 on a GPU; ft
computes in float32, so the reference does too):
  samples = _get_quantization_dataset(...)   # transcribed below, random.seed(42)
  model = AutoModelForCausalLM.from_pretrained(base, quantization_config=
              GPTQConfig(bits=B, dataset=samples), device_map="cpu")
  model.save_pretrained(out)

Writes tests/fixtures/gptq/:
  calib.jsonl          16 synthetic texts (words from a fixed list), JSON lines
  windows.json         seed 42: randint draws of CPython's random module, and
                       the nsamples=6, maxlen=64 windows LLaMA-Factory's
                       sampling takes from calib.jsonl with the synth-llama3
                       tokenizer (its post-processor adds <|begin_of_text|>
                       and <|eot_id|>)
  <case>/base/         the float16 model (config.json, model.safetensors,
                       tokenizer.json)
  <case>/expected.safetensors  the packed tensors of the GPTQ checkpoint
                       transformers saved (qweight, qzeros, scales, g_idx
                       of each linear)
  <case>/config.json   that checkpoint's config.json
  <case>/logits.safetensors  "input_ids" [2, 16] and "logits" [2, 16, V]:
                       float32 forward of the base with every linear replaced
                       by its dequantized weights scales * (code - zero)
  linear-<name>.safetensors  one nn.Linear through gptqmodel's GPTQ class
                       as optimum drives it (add_batch per sample, then
                       fasterquant(percdamp=0.1, group_size=128)): "W"
                       [out, in], "H" (the final Hessian 2/N sum X^T X as
                       gptqmodel built it, float32), "codes" (uint8
                       [out, in], round(Q / scale + zero) as its pack
                       computes them), "scale" [out, groups] float32, "Q"
                       [out, in] the dequantized weights it leaves in the layer
                       linear-b4: 64 x 320 (2 full groups and a tail of 64,
                       3 blocks; inputs with channel scales 0.1..10 and 5
                       dead channels), 4 bits; linear-b3: the same W and H
                       (not stored again), 3 bits; linear-b8: 32 x 256, 8 bits

    make_gptq_fixtures.py --check-export DIR [BASE]
loads ft-merge's export DIR (of tests/fixtures/gptq/llama/base unless BASE
is given) with transformers and gptqmodel, as a user would, and prints how
far its logits are from the float32 dequantization of DIR's tensors
(the kernel computes in float16: about 1e-3 on these models).

Cases:
  llama   hidden 256 (two groups of 128, two blocks), intermediate 384
          (three groups), 4 heads of 64, 1 kv head, 2 layers, tied
          embeddings, 4 bits
  llama3b the same model, 3 bits (the 10-1-10-1-10 packing)
  qwen3   hidden 128 (one group), intermediate 256, 2 heads of 64, 1 kv
          head, q/k norms with non-unit weights, 2 layers, 4 bits
  qwen2   the same shapes with Qwen2's q/k/v biases (non-zero; kept in
          float16 beside the packed weights), 4 bits
"""
import json
import os
import random
import shutil

import torch
from safetensors.torch import load_file, save_file
from tokenizers import Tokenizer
from transformers import AutoModelForCausalLM, GPTQConfig, LlamaConfig, Qwen2Config, Qwen3Config

OUT = "tests/fixtures/gptq"
TOK = "tests/fixtures/tokenizer/synth-llama3/tokenizer.json"
SEED, NSAMPLES, MAXLEN = 42, 6, 64

WORDS = ("the fox jumps over a lazy dog while quick brown cats sleep under warm sun "
         "and rivers flow past old mills where bakers knead bread each morning as "
         "children run to school through narrow streets lined with tall trees").split()


def make_texts():
    g = random.Random(7)
    texts = []
    for i in range(16):
        n = g.choice([8, 15, 30, 60, 90, 140])
        texts.append(" ".join(g.choice(WORDS) for _ in range(n)) + ".")
    return texts


def lf_quantization_dataset(tok, texts, nsamples, maxlen):
    """LLaMA-Factory's _get_quantization_dataset, with `tokenizer(text)` as
    the tokenizers package's encode (add_special_tokens=True)."""
    samples = []
    for _ in range(nsamples):
        n_try = 0
        while True:
            if n_try > 100:
                raise ValueError("Cannot find satisfying example, considering decrease `export_quantization_maxlen`.")
            sample_idx = random.randint(0, len(texts) - 1)
            ids = tok.encode(texts[sample_idx]).ids
            n_try += 1
            if len(ids) > maxlen:
                break
        word_idx = random.randint(0, len(ids) - maxlen - 1)
        window = ids[word_idx: word_idx + maxlen]
        samples.append({"input_ids": [window], "attention_mask": [[1] * maxlen]})
    return samples


def make_base(cfg, path, seed):
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(cfg)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "norm" in n:
                p.copy_(1 + 0.1 * torch.randn_like(p))
            elif n.endswith(".bias"):      # Qwen2's q/k/v biases: non-zero
                p.copy_(0.05 * torch.randn_like(p))
    model = model.to(torch.float16)
    model.save_pretrained(path)
    shutil.copy(TOK, os.path.join(path, "tokenizer.json"))
    for f in ("generation_config.json",):
        if os.path.exists(os.path.join(path, f)):
            os.remove(os.path.join(path, f))


def unpack(qweight, bits, cols):
    """codes [cols, rows] from qweight [cols*bits/32, rows] (gptqmodel's layouts)."""
    qw = qweight.to(torch.int64) & 0xFFFFFFFF
    rows = qw.shape[1]
    out = torch.zeros(cols, rows, dtype=torch.int64)
    for b in range(cols // 32):
        w = qw[b * bits:(b + 1) * bits]
        if bits != 3:
            pf = 32 // bits
            for k in range(32):
                out[b * 32 + k] = (w[k // pf] >> ((k % pf) * bits)) & ((1 << bits) - 1)
        else:
            for k in range(10):
                out[b * 32 + k] = (w[0] >> (3 * k)) & 7
            out[b * 32 + 10] = (w[0] >> 30) | ((w[1] & 1) << 2)
            for k in range(10):
                out[b * 32 + 11 + k] = (w[1] >> (3 * k + 1)) & 7
            out[b * 32 + 21] = (w[1] >> 31) | ((w[2] & 3) << 1)
            for k in range(10):
                out[b * 32 + 22 + k] = (w[2] >> (3 * k + 2)) & 7
    return out


def dequantized_logits(base, tensors, bits, input_ids):
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    maxq = (1 << bits) - 1
    with torch.no_grad():
        for name, mod in model.named_modules():
            if not isinstance(mod, torch.nn.Linear) or name == "lm_head":
                continue
            qw, sc, gi = tensors[name + ".qweight"], tensors[name + ".scales"], tensors[name + ".g_idx"]
            cols = mod.weight.shape[1]
            codes = unpack(qw, bits, cols).to(torch.float32)          # [cols, rows]
            s = sc.to(torch.float32)[gi.long()]                       # [cols, rows]
            z = float((maxq + 1) // 2)                                # gptq_v2 zeros of sym
            mod.weight.copy_((s * (codes - z)).t())
        return model(input_ids).logits.float()


def run_case(name, cfg, bits, seed, samples):
    d = os.path.join(OUT, name)
    base = os.path.join(d, "base")
    if name == "llama3b":
        base = os.path.join(OUT, "llama", "base")   # the same model
    else:
        make_base(cfg, base, seed)
    q = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32, device_map="cpu",
                                             quantization_config=GPTQConfig(bits=bits, dataset=samples))
    tmp = os.path.join(d, "tmp-out")
    q.save_pretrained(tmp)
    tensors = load_file(os.path.join(tmp, "model.safetensors"))
    packed = {k: v for k, v in tensors.items() if k.rsplit(".", 1)[1] in ("qweight", "qzeros", "scales", "g_idx")}
    save_file(packed, os.path.join(d, "expected.safetensors"), metadata={"format": "pt"})
    shutil.copy(os.path.join(tmp, "config.json"), os.path.join(d, "config.json"))
    shutil.rmtree(tmp)
    g = torch.Generator().manual_seed(seed + 1)
    ids = torch.randint(0, 800, (2, 16), generator=g)
    logits = dequantized_logits(base, tensors, bits, ids)
    save_file({"input_ids": ids.to(torch.int32).contiguous(), "logits": logits.contiguous()},
              os.path.join(d, "logits.safetensors"))
    # the kernel transformers runs on this checkpoint, against the dequantized reference
    with torch.no_grad():
        kl = q(ids).logits.float()
    print(f"{name}: gptqmodel kernel vs dequantized float32 logits: max |diff| "
          f"{(kl - logits).abs().max().item():.3g} (|logits| max {logits.abs().max().item():.3g})")


def linear_case(name, rows, cols, bits, seed):
    from gptqmodel import QuantizeConfig
    from gptqmodel.quantization import GPTQ
    g = torch.Generator().manual_seed(seed)
    lin = torch.nn.Linear(cols, rows, bias=False)
    with torch.no_grad():
        lin.weight.copy_(torch.randn(rows, cols, generator=g) * 0.05)
    chan = torch.logspace(-1, 1, cols)[torch.randperm(cols, generator=g)]
    chan[torch.randperm(cols, generator=g)[:5]] = 0          # dead channels
    mix = torch.eye(cols) + 0.3 * torch.randn(cols, cols, generator=g) / cols ** 0.5
    qcfg = QuantizeConfig(bits=bits, group_size=128, damp_percent=0.1, desc_act=False, act_group_aware=True,
                          sym=True, true_sequential=True, offload_to_disk=False)
    gq = GPTQ(lin, qcfg=qcfg)
    gq.quantizer.configure(bits=bits, sym=True, perchannel=True)
    for _ in range(3):                                      # three samples of 48 tokens
        x = (torch.randn(1, 48, cols, generator=g) @ mix) * chan
        gq.add_batch(x, None)
    H = gq.finalize_hessian().clone()
    W = lin.weight.detach().clone()
    scale, zero, g_idx, *_ = gq.fasterquant(percdamp=0.1, group_size=128, actorder=False)
    Q = lin.weight.detach().clone()
    s = scale[:, g_idx.long()]
    codes = torch.round(Q / s + zero[:, g_idx.long()]).clamp(0, (1 << bits) - 1).to(torch.uint8)
    out = {"codes": codes.contiguous(), "scale": scale.float().contiguous(), "Q": Q.contiguous(),
           "g_idx": g_idx.to(torch.int32).contiguous()}
    if name != "b3":   # b3 quantizes b4's W with b4's H
        out.update({"W": W.contiguous(), "H": H.contiguous()})
    save_file(out, os.path.join(OUT, f"linear-{name}.safetensors"))


def main():
    os.makedirs(OUT, exist_ok=True)
    texts = make_texts()
    with open(os.path.join(OUT, "calib.jsonl"), "w") as f:
        for t in texts:
            f.write(json.dumps({"text": t}) + "\n")
    tok = Tokenizer.from_file(TOK)
    random.seed(SEED)
    draws = [[n, random.randint(0, n)] for n in (0, 1, 2, 3, 7, 15, 100, 1000, 65535, 65536, 2**31 - 1, 2**32 - 1)]
    random.seed(SEED)
    samples = lf_quantization_dataset(tok, texts, NSAMPLES, MAXLEN)
    with open(os.path.join(OUT, "windows.json"), "w") as f:
        json.dump({"seed": SEED, "randint": draws, "nsamples": NSAMPLES, "maxlen": MAXLEN,
                   "windows": [s["input_ids"][0] for s in samples]}, f)
        f.write("\n")
    common = dict(vocab_size=808, max_position_embeddings=256, num_hidden_layers=2, head_dim=64,
                  num_key_value_heads=1, tie_word_embeddings=True, bos_token_id=0, eos_token_id=1,
                  rms_norm_eps=1e-6, rope_theta=10000.0)
    llama = LlamaConfig(hidden_size=256, intermediate_size=384, num_attention_heads=4, **common)
    qwen3 = Qwen3Config(hidden_size=128, intermediate_size=256, num_attention_heads=2, **common)
    linear_case("b4", 64, 320, 4, 11)
    linear_case("b3", 64, 320, 3, 11)
    linear_case("b8", 32, 256, 8, 12)
    run_case("llama", llama, 4, 1, samples)
    run_case("llama3b", llama, 3, 1, samples)
    run_case("qwen3", qwen3, 4, 2, samples)
    qwen2 = Qwen2Config(hidden_size=128, intermediate_size=256, num_attention_heads=2, **common)
    run_case("qwen2", qwen2, 4, 3, samples)


def check_export(out, base):
    """ft's GPTQ directory through transformers' loader and gptqmodel's kernel."""
    import sys
    model = AutoModelForCausalLM.from_pretrained(out, device_map="cpu")
    bits = model.config.quantization_config.bits
    ids = torch.randint(0, 800, (2, 16), generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        got = model(ids).logits.float()
    want = dequantized_logits(base, load_file(os.path.join(out, "model.safetensors")), bits, ids)
    print(f"{out}: {type(model.model.layers[0].self_attn.q_proj).__name__}, {bits} bits: "
          f"max |kernel - dequantized float32| {(got - want).abs().max().item():.3g}", file=sys.stderr)


if __name__ == "__main__":
    import sys
    if len(sys.argv) > 2 and sys.argv[1] == "--check-export":
        check_export(sys.argv[2], sys.argv[3] if len(sys.argv) > 3 else os.path.join(OUT, "llama", "base"))
    else:
        main()
