"""torch_pref.py - the steps of bench_pref.c in PyTorch + PEFT, as TRL's
DPOTrainer (LLaMA-Factory's concatenated_forward) runs them: sft = one
forward/backward of the 2P rows with the LM loss; dpo = the reference
forward under no_grad with disable_adapter(), the policy forward, the
sigmoid loss on summed log-probs, backward.
usage: torch_pref.py HIDDEN LAYERS HEADS KV INTER VOCAB PAIRS T STEPS"""
import json
import sys
import time

import torch
import torch.nn.functional as F
from peft import LoraConfig, get_peft_model
from transformers import LlamaConfig, LlamaForCausalLM

h, L, H, KV, I, V, P, T, steps = map(int, sys.argv[1:10])
torch.manual_seed(0)
cfg = LlamaConfig(vocab_size=V, hidden_size=h, intermediate_size=I, num_hidden_layers=L,
                  num_attention_heads=H, num_key_value_heads=KV, max_position_embeddings=4096)
m = LlamaForCausalLM._from_config(cfg, attn_implementation="eager")
m = get_peft_model(m, LoraConfig(r=8, lora_alpha=16, target_modules="all-linear", lora_dropout=0.0))
ids = torch.randint(0, V, (2 * P, T))
lab = ids.clone()
lab[:, : T // 4] = -100


def logps(model):
    lg = model(input_ids=ids).logits.float()[:, :-1]
    lb = lab[:, 1:].clone()
    mask = lb != -100
    lb[~mask] = 0
    return (torch.gather(lg.log_softmax(-1), 2, lb.unsqueeze(2)).squeeze(2) * mask).sum(-1)


def sft():
    m(input_ids=ids, labels=lab).loss.backward()
    m.zero_grad()


def dpo():
    with torch.no_grad(), m.disable_adapter():
        r = logps(m)
    p = logps(m)
    z = (p[:P] - p[P:]) - (r[:P] - r[P:])
    (-F.logsigmoid(0.1 * z)).mean().backward()
    m.zero_grad()


best = {}
for name, fn in (("sft", sft), ("dpo", dpo)):
    fn()
    ts = []
    for _ in range(steps):
        t = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t)
    best[name] = min(ts)
print(json.dumps({"pairs": P, "T": T, "sft_s": round(best["sft"], 4), "dpo_s": round(best["dpo"], 4),
                  "ratio": round(best["dpo"] / best["sft"], 3)}))
