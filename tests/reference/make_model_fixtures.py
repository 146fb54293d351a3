#!/usr/bin/env python3
"""make_model_fixtures.py - PyTorch reference for lib/model + lib/layers.

Run from the repository root:

    /work/venv/bin/python tests/reference/make_model_fixtures.py
        writes tests/fixtures/models/{tiny-llama,tiny-qwen2}/ (config.json +
        model.safetensors) and tests/fixtures/parity/*.safetensors plus two
        PEFT adapter directories (see tests/fixtures/parity/README.md).

    /work/venv/bin/python tests/reference/make_model_fixtures.py --check-adapter DIR
        DIR holds an adapter saved by ft (adapter_model.safetensors +
        adapter_config.json) and ft_logits.safetensors ("logits", the logits
        ft computed with that adapter on the llama fixture batch 0).  Loads
        the adapter with peft.PeftModel.from_pretrained on tiny-llama and
        checks the logits agree (max relative error <= 1e-4); exit 1 if not.
        If DIR/merged exists (ft's merged full model, config.json +
        model.safetensors), transformers loads it and must give the same
        logits too.  tests/unit/test_model.c writes such a DIR when
        FT_PEFT_CHECK_DIR is set in its environment.

Made with torch 2.15.0, transformers 5.24.0, peft 0.21.2 (float32, 1 thread,
eager attention, fixed seeds).
"""
import argparse
import json
import math
import os
import sys

import torch
import torch.nn.functional as F
from safetensors.torch import save_file, load_file
import transformers
from transformers import (LlamaConfig, LlamaForCausalLM, Qwen2Config,
                          Qwen2ForCausalLM, get_cosine_schedule_with_warmup)
from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS
import peft
from peft import LoraConfig, get_peft_model, PeftModel

torch.set_num_threads(1)
torch.set_default_dtype(torch.float32)

MODELS = "tests/fixtures/models"
PARITY = "tests/fixtures/parity"

# Training run shared by the lora/freeze/full fixtures (README documents it).
STEPS, ACCUM, WARMUP = 10, 2, 2
LR = {"lora": 2e-3, "freeze": 1e-3, "full": 1e-3}
WEIGHT_DECAY, MAX_GRAD_NORM = 0.1, 1.0
BETAS, EPS = (0.9, 0.999), 1e-8
B, T = 2, 16


def llama_config():
    return LlamaConfig(
        vocab_size=256, hidden_size=64, intermediate_size=96,
        num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
        max_position_embeddings=64, rms_norm_eps=1e-5, rope_theta=10000.0,
        rope_scaling={"rope_type": "llama3", "factor": 8.0,
                      "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                      "original_max_position_embeddings": 16},
        tie_word_embeddings=False, attention_bias=False, bos_token_id=1,
        eos_token_id=2, pad_token_id=0, dtype="float32")


def qwen2_config():
    return Qwen2Config(
        vocab_size=256, hidden_size=64, intermediate_size=96,
        num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
        max_position_embeddings=64, rms_norm_eps=1e-6, rope_theta=1000000.0,
        tie_word_embeddings=True, use_sliding_window=False, bos_token_id=1,
        eos_token_id=2, pad_token_id=0, dtype="float32")


def build(kind):
    torch.manual_seed(1234 if kind == "llama" else 4321)
    if kind == "llama":
        m = LlamaForCausalLM._from_config(llama_config(), attn_implementation="eager")
    else:
        m = Qwen2ForCausalLM._from_config(qwen2_config(), attn_implementation="eager")
    # Random norms and biases so their gradients and code paths matter.
    with torch.no_grad():
        for n, p in m.named_parameters():
            if "norm" in n:
                p.copy_(1.0 + 0.1 * torch.randn_like(p))
            elif n.endswith(".bias"):
                p.copy_(0.05 * torch.randn_like(p))
    return m.float().eval()


def make_batches(n, seed):
    """n micro-batches [B, T]: right padded, a masked prompt, -100 on pads."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        ids = torch.zeros(B, T, dtype=torch.int32)
        lab = torch.full((B, T), -100, dtype=torch.int32)
        for r in range(B):
            ln = T if r == 0 else int(torch.randint(6, T, (1,), generator=g))
            prompt = int(torch.randint(1, 5, (1,), generator=g))
            row = torch.randint(3, 256, (ln,), generator=g, dtype=torch.int32)
            ids[r, :ln] = row
            lab[r, prompt:ln] = row[prompt:]
        out.append((ids, lab))
    return out


def loss_sum(logits, labels):
    """transformers' ForCausalLMLoss before dividing: shift, sum, ignore -100."""
    lg = logits[:, :-1, :].reshape(-1, logits.shape[-1]).float()
    lb = labels[:, 1:].reshape(-1).long()
    return F.cross_entropy(lg, lb, ignore_index=-100, reduction="sum"), int((lb != -100).sum())


def save_model(m, kind):
    d = os.path.join(MODELS, "tiny-" + kind)
    m.save_pretrained(d, safe_serialization=True)
    return d


def full_grads(m, ids, lab):
    m.zero_grad()
    out = m(input_ids=ids.long())
    ls, n = loss_sum(out.logits, lab)
    ls.backward()
    t = {"logits": out.logits.detach().reshape(B * T, -1).contiguous(),
         "loss_sum": ls.detach().reshape(1), "n_tokens": torch.tensor([float(n)])}
    for name, p in m.named_parameters():
        t["grad." + name] = p.grad.detach().clone()
    return t


def lora_cfg(targets):
    return LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, target_modules=targets,
                      bias="none", task_type="CAUSAL_LM")


def peft_state(pm):
    """Adapter tensors under the names PEFT saves (no adapter name)."""
    return {k: v.detach().clone().contiguous()
            for k, v in peft.get_peft_model_state_dict(pm).items()}


def random_lora_b(m, seed):
    """every lora_B of m = 0.1 N(0, 1) from its own generator (B != 0: the
    adapter changes the model from the first step)"""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for n, p in m.named_parameters():
            if "lora_B" in n:
                p.copy_(0.1 * torch.randn(p.shape, generator=g))


def lora_grads(base_dir, kind, ids, lab):
    base = build_from(base_dir, kind)
    pm = get_peft_model(base, lora_cfg(["q_proj", "k_proj", "v_proj", "o_proj",
                                        "gate_proj", "up_proj", "down_proj"]))
    random_lora_b(pm, 99)
    adir = os.path.join(PARITY, kind + "-lora-grad")
    pm.save_pretrained(adir)
    pm.zero_grad()
    out = pm(input_ids=ids.long())
    ls, n = loss_sum(out.logits, lab)
    ls.backward()
    t = {"logits": out.logits.detach().reshape(B * T, -1).contiguous(),
         "loss_sum": ls.detach().reshape(1), "n_tokens": torch.tensor([float(n)])}
    for name, p in pm.named_parameters():
        if p.requires_grad:
            t["grad." + name.replace(".default", "")] = p.grad.detach().clone()
    return t


def build_from(d, kind):
    cls = LlamaForCausalLM if kind == "llama" else Qwen2ForCausalLM
    return cls.from_pretrained(d, dtype=torch.float32, attn_implementation="eager").eval()


def decay_names(model):
    return set(transformers.Trainer.get_decay_parameter_names(None, model))


def train(base_dir, kind, mode, batches):
    m = build_from(base_dir, kind)
    if mode == "lora":
        torch.manual_seed(7)
        m = get_peft_model(m, lora_cfg(["q_proj", "v_proj"]))
        m.save_pretrained(os.path.join(PARITY, kind + "-lora-init"))
    elif mode == "freeze":
        last = m.config.num_hidden_layers - 1
        for n, p in m.named_parameters():
            p.requires_grad_(f".layers.{last}." in n)
    decay = decay_names(m)
    named = [(n, p) for n, p in m.named_parameters() if p.requires_grad]
    groups = [{"params": [p for n, p in named if n in decay], "weight_decay": WEIGHT_DECAY},
              {"params": [p for n, p in named if n not in decay], "weight_decay": 0.0}]
    opt = torch.optim.AdamW(groups, lr=LR[mode], betas=BETAS, eps=EPS)
    sch = get_cosine_schedule_with_warmup(opt, WARMUP, STEPS)
    m.train()  # dropout is 0 everywhere, so train() only matters for PEFT
    losses, norms, lrs = [], [], []
    for step in range(STEPS):
        mb = batches[step * ACCUM:(step + 1) * ACCUM]
        ntok = sum(int((lab[:, 1:] != -100).sum()) for _, lab in mb)
        tot = 0.0
        for ids, lab in mb:
            ls, _ = loss_sum(m(input_ids=ids.long()).logits, lab)
            (ls / ntok).backward()
            tot += float(ls) / ntok
        norm = torch.nn.utils.clip_grad_norm_([p for _, p in named], MAX_GRAD_NORM)
        lrs.append(sch.get_last_lr()[0])
        opt.step()
        sch.step()
        opt.zero_grad()
        losses.append(tot)
        norms.append(float(norm))
    t = {"losses": torch.tensor(losses, dtype=torch.float64),
         "grad_norms": torch.tensor(norms, dtype=torch.float64),
         "lrs": torch.tensor(lrs, dtype=torch.float64)}
    if mode == "lora":
        for k, v in peft_state(m).items():
            t["final." + k] = v
    else:
        for n, p in named:
            t["final." + n] = p.detach().clone()
    return t


def packed(base_dir, kind):
    """One row of three examples (neat packing) and the examples alone."""
    m = build_from(base_dir, kind)
    g = torch.Generator().manual_seed(5)
    lens = [5, 6, 4]
    ids = torch.zeros(1, T, dtype=torch.int32)
    lab = torch.full((1, T), -100, dtype=torch.int32)
    seg = torch.zeros(1, T, dtype=torch.int32)
    pos = torch.zeros(1, T, dtype=torch.int32)
    per = []
    o = 0
    for i, ln in enumerate(lens):
        row = torch.randint(3, 256, (ln,), generator=g, dtype=torch.int32)
        l1 = row.clone()
        l1[0] = -100  # the first label is never predicted when run alone
        ids[0, o:o + ln] = row
        lab[0, o:o + ln] = l1
        seg[0, o:o + ln] = i + 1
        pos[0, o:o + ln] = torch.arange(ln, dtype=torch.int32)
        with torch.no_grad():
            ls, _ = loss_sum(m(input_ids=row[None].long()).logits, l1[None])
        per.append(float(ls))
        o += ln
    pos[0, o:] = torch.arange(T - o, dtype=torch.int32)
    return {"input_ids": ids, "labels": lab, "segment_ids": seg,
            "position_ids": pos, "loss_per_example": torch.tensor(per, dtype=torch.float64)}


def rope_table():
    """inv_freq of each rope type (head_dim 16) for tests/unit/test_layers.c."""
    t = {}
    cases = {
        "default": None,
        "linear": {"rope_type": "linear", "factor": 2.0},
        "dynamic": {"rope_type": "dynamic", "factor": 2.0},
        "llama3": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                   "high_freq_factor": 4.0, "original_max_position_embeddings": 16},
    }
    for name, rs in cases.items():
        c = LlamaConfig(hidden_size=64, num_attention_heads=4, max_position_embeddings=8,
                        rope_theta=10000.0, rope_scaling=rs)
        c.standardize_rope_params()
        fn = ROPE_INIT_FUNCTIONS.get(name) if name != "default" else None
        if fn is None:
            inv = 1.0 / (10000.0 ** (torch.arange(0, 16, 2, dtype=torch.int64).float() / 16))
        else:
            inv, _ = fn(c, None, seq_len=24 if name == "dynamic" else None)
        t["inv_freq." + name] = inv.float().contiguous()
    return t


def batch_tensors(prefix, batches):
    t = {}
    for i, (ids, lab) in enumerate(batches):
        t[f"{prefix}{i}.input_ids"] = ids.contiguous()
        t[f"{prefix}{i}.labels"] = lab.contiguous()
    return t


def generate():
    os.makedirs(MODELS, exist_ok=True)
    os.makedirs(PARITY, exist_ok=True)
    for kind in ("llama", "qwen2"):
        m = build(kind)
        d = save_model(m, kind)
        m = build_from(d, kind)
        batches = make_batches(STEPS * ACCUM, seed=11 if kind == "llama" else 12)
        ids, lab = batches[0]
        t = {"batch.input_ids": ids, "batch.labels": lab}
        t.update(full_grads(m, ids, lab))
        save_file(t, os.path.join(PARITY, kind + "-full-grads.safetensors"))
        t = {"batch.input_ids": ids, "batch.labels": lab}
        t.update(lora_grads(d, kind, ids, lab))
        save_file(t, os.path.join(PARITY, kind + "-lora-grads.safetensors"))
        bt = batch_tensors("batch.", batches)
        save_file(bt, os.path.join(PARITY, kind + "-train-batches.safetensors"))
        for mode in ("lora", "freeze", "full"):
            t = train(d, kind, mode, batches)
            save_file(t, os.path.join(PARITY, f"{kind}-train-{mode}.safetensors"))
            print(kind, mode, "losses", [round(x, 5) for x in t["losses"].tolist()])
        save_file(packed(d, kind), os.path.join(PARITY, kind + "-packed.safetensors"))
    save_file(rope_table(), os.path.join(PARITY, "rope.safetensors"))


def check_adapter(d):
    base = build_from(os.path.join(MODELS, "tiny-llama"), "llama")
    pm = PeftModel.from_pretrained(base, d).eval()
    ids = load_file(os.path.join(PARITY, "llama-full-grads.safetensors"))["batch.input_ids"]
    ours = load_file(os.path.join(d, "ft_logits.safetensors"))["logits"]
    with torch.no_grad():
        ref = pm(input_ids=ids.long()).logits.reshape(ours.shape)
    err = float((ref - ours).abs().max() / ref.abs().max())
    print(f"adapter {d}: max relative logits error {err:.3g}")
    rc = 0 if err <= 1e-4 else 1
    merged = os.path.join(d, "merged")
    if os.path.isdir(merged):   # ft_model_merge_lora + ft_model_save_full
        with torch.no_grad():
            mref = build_from(merged, "llama")(input_ids=ids.long()).logits.reshape(ours.shape)
        err = float((mref - ours).abs().max() / mref.abs().max())
        print(f"merged model {merged}: max relative logits error {err:.3g}")
        rc |= 0 if err <= 1e-4 else 1
    return rc


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--check-adapter", metavar="DIR")
    a = ap.parse_args()
    if a.check_adapter:
        sys.exit(check_adapter(a.check_adapter))
    generate()
