"""trl_pref.py - the steps of bench_pref.c through the trainers themselves:
a DPO step is LLaMA-Factory 0.9.3's CustomDPOTrainer (TRL 0.9.6's
DPOTrainer; sigmoid, beta 0.1, the reference = the policy with its adapters
disabled) running Trainer.training_step on one batch of P pairs; an sft step
is transformers' Trainer.training_step with the LM loss on the same 2P rows.
Both are compute_loss + backward as the Trainer runs them (the optimizer
step is left out, as in bench_pref.c); best of STEPS after a warm-up.
Attention: LLaMA-Factory's default on the CPU (sdpa).

Needs the legacy environment of tests/reference/make_pref_trl_fixtures.py:
    PYTHONPATH=/work/legacy /work/venv/bin/python bench/train-pref/trl_pref.py \\
        HIDDEN LAYERS HEADS KV INTER VOCAB PAIRS T STEPS
"""
import json
import sys
import tempfile
import time
import warnings

import torch
import transformers
from peft import LoraConfig, get_peft_model
from transformers import LlamaConfig, LlamaForCausalLM, Trainer, TrainingArguments

from llamafactory.hparams import FinetuningArguments
from llamafactory.train.dpo.trainer import CustomDPOTrainer

warnings.simplefilter("ignore")
transformers.logging.set_verbosity_error()
h, L, H, KV, I, V, P, T, steps = map(int, sys.argv[1:10])
torch.manual_seed(0)
cfg = LlamaConfig(vocab_size=V, hidden_size=h, intermediate_size=I, num_hidden_layers=L,
                  num_attention_heads=H, num_key_value_heads=KV, max_position_embeddings=4096)
m = LlamaForCausalLM._from_config(cfg, attn_implementation="sdpa")
m = get_peft_model(m, LoraConfig(r=8, lora_alpha=16, target_modules="all-linear", lora_dropout=0.0))
with torch.no_grad():   # B = 0 at init: policy and reference would coincide
    for n, p in m.named_parameters():
        if "lora_B" in n:
            p.normal_(0, 0.01)
ids = torch.randint(0, V, (2 * P, T))
ids[P:, : T // 4] = ids[:P, : T // 4]   # a pair shares its prompt
lab = ids.clone()
lab[:, : T // 4] = -100
batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": lab}

out = tempfile.mkdtemp()
args = TrainingArguments(output_dir=out, per_device_train_batch_size=2 * P, report_to=[], use_cpu=True,
                         remove_unused_columns=False, disable_tqdm=True, save_strategy="no")
collate = lambda f: f[0]  # noqa: E731
sft = Trainer(model=m, args=args, train_dataset=[batch], data_collator=collate)
dpo = CustomDPOTrainer(model=m, ref_model=None, processor=None, tokenizer=None, args=args,
                       finetuning_args=FinetuningArguments(stage="dpo", finetuning_type="lora", pref_loss="sigmoid"),
                       train_dataset=[batch], data_collator=collate)


def best(trainer):
    ts = []
    for s in range(steps + 1):   # the first round warms up
        t = time.perf_counter()
        trainer.training_step(m, dict(batch))
        m.zero_grad()
        if s:
            ts.append(time.perf_counter() - t)
    return min(ts)


b_sft, b_dpo = best(sft), best(dpo)
print(json.dumps({"pairs": P, "T": T, "sft_s": round(b_sft, 4), "dpo_s": round(b_dpo, 4),
                  "ratio": round(b_dpo / b_sft, 3), "trl": __import__("trl").__version__,
                  "llamafactory": __import__("llamafactory").__version__}))
