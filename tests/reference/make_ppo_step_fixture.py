#!/usr/bin/env python3
"""make_ppo_step_fixture.py - one whole PPOTrainer.step() of TRL 0.9.6
(the version LLaMA-Factory's CustomPPOTrainer pins) on the tiny Llama with
the preference fixtures' LoRA and a value head, for tests/unit/test_ppo_step.c.

This runs TRL 0.9.6 itself, not a transcription.  TRL 1.x (the venv's)
has no classic PPOTrainer; 0.9.6 installs beside it without its
dependencies and imports once its one missing module (tyro, used only in
PPOConfig's type annotations) is stubbed:

    /work/venv/bin/pip install --no-deps --target /tmp/trl096 trl==0.9.6
    PYTHONPATH=/tmp/trl096 /work/venv/bin/python tests/reference/make_ppo_step_fixture.py

writes tests/fixtures/ppo/step.json and step.safetensors.

The step is LLaMA-Factory's PPOConfig for per_device_train_batch_size 1,
gradient_accumulation_steps 2, ppo_buffer_size 2 (batch 4, backward
batch 2, mini-batch 1), ppo_epochs 4, max_grad_norm 1, AdamW as
LLaMA-Factory's create_optimizer builds it (weight decay off for biases),
on four fixed responses (sampling is out of the comparison), the value
head's dropout 0 (LLaMA-Factory's models have it from the config; the
tiny one's is 0 in ft's runs too).  np.random.permutation, which step()
draws each PPO epoch's row order from, is recorded so the C side can
replay the same order.  Right padding, as ppo_train sets it for step().
"""
import json
import os
import sys
import types

import numpy as np
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "..", "fixtures", "ppo")
sys.path.insert(0, HERE)

# tyro is only in PPOConfig's annotations (tyro.conf.Suppress[...], tyro.conf.arg(...))
_tyro, _conf = types.ModuleType("tyro"), types.ModuleType("tyro.conf")


class _Ann:
    def __getitem__(self, k):
        return k


_conf.Suppress = _conf.Suppressed = _Ann()
_conf.arg = lambda **k: None
_tyro.conf = _conf
sys.modules.setdefault("tyro", _tyro)
sys.modules.setdefault("tyro.conf", _conf)

import trl  # noqa: E402
from trl import AutoModelForCausalLMWithValueHead, PPOConfig, PPOTrainer  # noqa: E402
from safetensors.torch import save_file  # noqa: E402
from tokenizers import Tokenizer  # noqa: E402
from tokenizers.models import WordLevel  # noqa: E402
from transformers import PreTrainedTokenizerFast  # noqa: E402

from make_pref_fixtures import load, value_head  # noqa: E402

assert trl.__version__ == "0.9.6", trl.__version__

ROWS = [  # (prompt, response): lengths differ so the right padding and masks matter
    ([1, 17, 33, 9], [44, 12, 7, 2]),
    ([1, 25, 5], [60, 61, 3, 18, 2]),
    ([1, 40, 41, 42, 43], [90, 91]),
    ([1, 8], [120, 121, 122, 2]),
]
SCORES = [0.7, -0.3, 1.2, 0.1]
LR = 5e-3


def tokenizer():
    vocab = {f"t{i}": i for i in range(256)}
    tok = PreTrainedTokenizerFast(tokenizer_object=Tokenizer(WordLevel(vocab, unk_token="t3")),
                                  pad_token="t0", eos_token="t2", bos_token="t1")
    tok.padding_side = "right"   # ppo_train sets right padding around step()
    return tok


def main():
    pm = load("llama")
    vh = value_head("llama")
    model = AutoModelForCausalLMWithValueHead.from_pretrained(pm, summary_dropout_prob=0.0)
    with torch.no_grad():
        model.v_head.summary.weight.copy_(vh.weight)
        model.v_head.summary.bias.copy_(vh.bias)
    before = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    # LLaMA-Factory's create_optimizer: decay on weights, none on biases and norms (decay 0 here anyway)
    decay = [p for n, p in model.named_parameters() if p.requires_grad and not n.endswith("bias")]
    nodecay = [p for n, p in model.named_parameters() if p.requires_grad and n.endswith("bias")]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.0}, {"params": nodecay, "weight_decay": 0.0}],
                            lr=LR, betas=(0.9, 0.999), eps=1e-8)
    cfg = PPOConfig(mini_batch_size=1, batch_size=4, gradient_accumulation_steps=2, ppo_epochs=4,
                    max_grad_norm=1.0, seed=42, target=6.0, learning_rate=LR, log_with=None,
                    accelerator_kwargs={"step_scheduler_with_optimizer": False})
    trainer = PPOTrainer(cfg, model, ref_model=None, tokenizer=tokenizer(), optimizer=opt)
    perms = []
    real_perm = np.random.permutation

    def perm(n):
        p = real_perm(n)
        perms.append([int(x) for x in p])
        return p

    np.random.permutation = perm
    # record step()'s advantages and returns as compute_advantages gives them
    seen = {}
    real_adv = trainer.compute_advantages

    def adv(values, rewards, mask):
        v, a, r = real_adv(values, rewards, mask)
        seen.update(values=v, advantages=a, returns=r, rewards=rewards, mask=mask)
        return v, a, r

    trainer.compute_advantages = adv
    queries = [torch.tensor(q) for q, _ in ROWS]
    responses = [torch.tensor(r) for _, r in ROWS]
    stats = trainer.step(queries, responses, [torch.tensor(s) for s in SCORES])
    np.random.permutation = real_perm
    t = {k: v.detach().float().contiguous() for k, v in seen.items()}
    for n, p in model.named_parameters():
        if p.requires_grad:
            name = n.replace("pretrained_model.base_model.model.", "base_model.model.").replace(".default", "")
            t["after." + name] = p.detach().float().contiguous()
            t["delta." + name] = (p.detach() - before[n]).float().contiguous()
    save_file(t, os.path.join(OUT, "step.safetensors"))
    keep = {k: float(np.asarray(v).reshape(-1)[0]) for k, v in stats.items()
            if np.asarray(v).size == 1 and not k.startswith("time/")}
    out = {
        "source": "trl 0.9.6 PPOTrainer.step() (make_ppo_step_fixture.py)",
        "rows": [{"prompt": q, "response": r} for q, r in ROWS], "scores": SCORES,
        "batch_size": 1, "gradient_accumulation_steps": 2, "ppo_buffer_size": 2, "ppo_epochs": 4,
        "max_grad_norm": 1.0, "learning_rate": LR, "pad_id": 0,
        "vh_weight": [float(x) for x in vh.weight.reshape(-1)], "vh_bias": float(vh.bias),
        "perms": perms, "stats": keep, "kl_coef_after": float(trainer.kl_ctl.value),
    }
    with open(os.path.join(OUT, "step.json"), "w") as f:
        json.dump(out, f, indent=0)
        f.write("\n")


if __name__ == "__main__":
    main()
