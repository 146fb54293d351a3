#!/usr/bin/env python3
"""make_grpo_fixtures.py - TRL 1.16 GRPOTrainer's loss on fixed
completions and rewards, for tests/unit/test_grpo.c.

Sampling is out of the comparison: the completions, their rewards and the
old log-probabilities are fixed here.  What runs is TRL's own code:

* GRPOTrainer._compute_loss and _get_per_token_logps_and_entropies are
  called unbound on a stand-in `self` carrying the attributes they read
  (loss_type, epsilon_low/high, beta, args.use_bias_correction_kl, the
  accumulation steps, a one-process accelerator), over the tiny Llama with
  the preference fixtures' LoRA (make_pref_fixtures.load) patched by TRL's
  add_fused_lm_head as the trainer patches it.  The returned loss is
  backpropagated: the LoRA gradients, and d loss / d logp (kept with
  retain_grad on the log-probabilities), which is the per-token loss's
  derivative the C side feeds to the model's backward.
* Options beyond the loss types: mask_truncated_completions (the
  completion_mask rows of completions ending in neither eos nor pad
  zeroed, as _generate_and_score_completions does before
  num_items_in_batch), top_entropy_quantile (TRL's own
  get_high_entropy_mask, bound on the stand-in), TRL's `entropy` metric
  in every case, and a full fine-tuning case: the policy a plain
  LlamaForCausalLM (tests/fixtures/grpo/peaky-llama, every weight
  trainable), the reference a separate frozen copy of the base
  (tests/fixtures/models/tiny-llama, as TRL creates one from the model's
  path for a non-PEFT policy), the gradients of all its weights.
* The advantages are a transcription of _generate_and_score_completions'
  sum_then_normalize block (it sits inside the generation method and
  cannot be driven without a generator); nanstd is TRL's own.

    /work/venv/bin/python tests/reference/make_grpo_fixtures.py
writes tests/fixtures/grpo/cases.json and tests/fixtures/grpo/llama-<case>.safetensors.
"""
import json
import os
import sys
import types
from collections import defaultdict
from contextlib import nullcontext

import torch
from safetensors.torch import save_file
from trl.trainer.grpo_trainer import GRPOTrainer
from transformers import LlamaForCausalLM
from trl.trainer.utils import add_fused_lm_head, nanstd

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "..", "fixtures", "grpo")
sys.path.insert(0, HERE)
from make_pref_fixtures import load  # noqa: E402

# 2 prompts x G=3 completions (eos 2 ends some, others run to the limit)
PROMPTS = [[1, 17, 33, 9], [1, 25, 5]]
COMPLETIONS = [[44, 12, 7, 2], [44, 12, 2], [60, 61, 3, 18, 9],
               [60, 61, 3, 2], [8, 2], [8, 30, 31, 32, 33]]
G = 3
PER_FUNC = [[1.0, 0.5], [0.0, 0.25], [1.0, 1.0], [0.0, 0.0], [1.0, -0.5], [0.5, 0.75]]
WEIGHTS = [1.0, 0.5]


def advantages(per_func, weights, G, scale):
    """_generate_and_score_completions, multi_objective_aggregation
    sum_then_normalize (transcribed)."""
    rewards_per_func = torch.tensor(per_func, dtype=torch.float32)
    rewards = (rewards_per_func * torch.tensor(weights).unsqueeze(0)).nansum(dim=1)
    mean_grouped = torch.nanmean(rewards.view(-1, G), dim=1).repeat_interleave(G, dim=0)
    if scale in ("group", "none"):
        std = nanstd(rewards.view(-1, G), dim=1).repeat_interleave(G, dim=0)
    else:
        std = nanstd(rewards).expand_as(rewards)
    adv = rewards - mean_grouped
    if scale != "none":
        adv = adv / (std + 1e-4)
    return rewards, adv


class Acc:
    """A one-process accelerator: what _compute_loss calls on it."""
    num_processes = 1
    is_main_process = True
    autocast = staticmethod(nullcontext)
    reduce = staticmethod(lambda t, reduction="sum": t)
    gather = staticmethod(lambda t: t)
    gather_for_metrics = staticmethod(lambda t: t)
    pad_across_processes = staticmethod(lambda t, dim=0, pad_index=0: t)


EOS, PAD = 2, 0


def inputs_of(pm, mask_truncated=False):
    B = len(COMPLETIONS)
    P = max(len(p) for p in PROMPTS)
    C = max(len(c) for c in COMPLETIONS)
    prompt_ids = torch.zeros(B, P, dtype=torch.long)     # left-padded, as TRL pads prompts
    prompt_mask = torch.zeros(B, P, dtype=torch.long)
    completion_ids = torch.zeros(B, C, dtype=torch.long)
    completion_mask = torch.zeros(B, C, dtype=torch.long)
    for i, c in enumerate(COMPLETIONS):
        p = PROMPTS[i // G]
        prompt_ids[i, P - len(p):] = torch.tensor(p)
        prompt_mask[i, P - len(p):] = 1
        completion_ids[i, :len(c)] = torch.tensor(c)
        completion_mask[i, :len(c)] = 1
        if mask_truncated and c[-1] not in (EOS, PAD):   # is_truncated
            completion_mask[i] = 0
    return {"prompt_ids": prompt_ids, "prompt_mask": prompt_mask, "completion_ids": completion_ids,
            "completion_mask": completion_mask}


def full_models():
    """The full fine-tuning case: a plain policy and its frozen reference."""
    models = os.path.join(HERE, "..", "fixtures")
    pol = LlamaForCausalLM.from_pretrained(os.path.join(models, "grpo", "peaky-llama"), dtype=torch.float32,
                                           attn_implementation="eager")
    ref = LlamaForCausalLM.from_pretrained(os.path.join(models, "models", "tiny-llama"), dtype=torch.float32,
                                           attn_implementation="eager")
    pol.train()
    ref.eval()
    for p in ref.parameters():
        p.requires_grad_(False)
    return pol, ref


def run_case(name, loss_type, beta, eps_low, eps_high, scale, old_noise, accum, max_len, temperature,
             mask_truncated=False, top_q=1.0, full=False):
    if full:
        pm, ref = full_models()
        add_fused_lm_head(pm, temperature=temperature, outputs=("log_probs", "entropy"))
        add_fused_lm_head(ref, temperature=temperature, outputs=("log_probs", "entropy"))
    else:
        pm, ref = load("llama"), None
        add_fused_lm_head(pm.get_base_model(), temperature=temperature, outputs=("log_probs", "entropy"))
    inp = inputs_of(pm, mask_truncated)
    rewards, adv = advantages(PER_FUNC, WEIGHTS, G, scale)
    inp["advantages"] = adv
    inp["num_items_in_batch"] = inp["completion_mask"].sum()
    kept = {}
    me = types.SimpleNamespace(
        loss_type=loss_type, beta=beta, epsilon_low=eps_low, epsilon_high=eps_high,
        importance_sampling_level="token", top_entropy_quantile=top_q, off_policy_mask_threshold=None,
        use_vllm=False, vllm_importance_sampling_correction=False, _entropy_bonus_enabled=False,
        aux_loss_enabled=False, max_completion_length=max_len, current_gradient_accumulation_steps=accum,
        accelerator=Acc(), model=pm, _metrics={"train": defaultdict(list), "eval": defaultdict(list)},
        args=types.SimpleNamespace(delta=None, use_bias_correction_kl=True, steps_per_generation=accum),
    )
    me.get_high_entropy_mask = types.MethodType(GRPOTrainer.get_high_entropy_mask, me)
    real = GRPOTrainer._get_per_token_logps_and_entropies

    def logps(self, *a, **k):
        lp, ent, aux = real(self, *a, **k)
        if lp.requires_grad:
            lp.retain_grad()
            kept["logp"] = lp
        return lp, ent, aux
    me._get_per_token_logps_and_entropies = types.MethodType(logps, me)
    ids = torch.cat([inp["prompt_ids"], inp["completion_ids"]], 1)
    am = torch.cat([inp["prompt_mask"], inp["completion_mask"]], 1)
    C = inp["completion_ids"].size(1)
    with torch.no_grad():
        cur = real(me, pm, ids, am, C)[0]
        if beta != 0 and ref is not None:   # TRL's ref_model
            inp["ref_per_token_logps"] = real(me, ref, ids, am, C)[0]
        elif beta != 0:
            with pm.disable_adapter():
                inp["ref_per_token_logps"] = real(me, pm, ids, am, C)[0]
    if old_noise:
        g = torch.Generator().manual_seed(3)
        inp["old_per_token_logps"] = cur + old_noise * torch.randn(cur.shape, generator=g)
    pm.zero_grad()
    loss = GRPOTrainer._compute_loss(me, pm, inp)
    loss.backward()
    t = {"logp": kept["logp"], "dlogp": kept["logp"].grad, "loss": loss.detach().reshape(1)}
    if "old_per_token_logps" in inp:
        t["old_logp"] = inp["old_per_token_logps"]
    if beta != 0:
        t["ref_logp"] = inp["ref_per_token_logps"]
    for n, p in pm.named_parameters():
        if p.requires_grad:
            t["grad." + n.replace(".default", "")] = p.grad
    save_file({k: v.detach().float().contiguous() for k, v in t.items()},
              os.path.join(OUT, "llama-%s.safetensors" % name))
    metrics = {k: v[-1] for k, v in me._metrics["train"].items()}
    return {"name": name, "loss_type": loss_type, "beta": beta, "epsilon": eps_low, "epsilon_high": eps_high,
            "scale_rewards": scale, "accum": accum, "max_completion_length": max_len,
            "temperature": temperature, "old": bool(old_noise), "mask_truncated": mask_truncated,
            "top_entropy_quantile": top_q, "full": full,
            "rewards": rewards.tolist(), "advantages": adv.tolist(), "loss": loss.item(), "metrics": metrics}


def peaky_model():
    """The tiny Llama with its lm_head scaled by 16, for the bats property
    test (tests/bats/ft-train-grpo.bats): the fixture's logits spread about
    0.16, so its distribution is nearly uniform and no LoRA on the layers
    can move it far; scaled, sampling is peaked enough that a preference
    shows within 30 GRPO steps."""
    import shutil
    from safetensors.torch import load_file
    src = os.path.join(HERE, "..", "fixtures", "models", "tiny-llama")
    dst = os.path.join(OUT, "peaky-llama")
    os.makedirs(dst, exist_ok=True)
    for f in ("config.json", "generation_config.json"):
        shutil.copy(os.path.join(src, f), os.path.join(dst, f))
    w = load_file(os.path.join(src, "model.safetensors"))
    w["lm_head.weight"] = (w["lm_head.weight"] * 16).contiguous()
    save_file(w, os.path.join(dst, "model.safetensors"), metadata={"format": "pt"})


def main():
    os.makedirs(OUT, exist_ok=True)
    peaky_model()
    torch.manual_seed(0)
    cases = [
        # name, loss_type, beta, eps_low, eps_high, scale, old noise, accum, max_completion_length, temperature
        ("grpo", "grpo", 0.04, 0.2, 0.2, "group", 0.3, 2, 8, 1.0),
        ("bnpo", "bnpo", 0.04, 0.2, 0.2, "group", 0.3, 2, 8, 1.0),
        ("dr_grpo", "dr_grpo", 0.04, 0.2, 0.2, "none", 0.3, 2, 8, 1.0),
        ("dapo", "dapo", 0.04, 0.2, 0.28, "batch", 0.3, 2, 8, 1.0),
        ("onpolicy", "dapo", 0.0, 0.2, 0.2, "group", 0, 1, 8, 1.0),
        # --temperature: logits / 0.7 in every pass (current, old and reference)
        ("temp", "grpo", 0.04, 0.2, 0.2, "group", 0.3, 2, 8, 0.7),
        # mask_truncated_completions: rows 2 and 5 end without eos
        ("masktrunc", "dapo", 0.04, 0.2, 0.2, "group", 0.3, 2, 8, 1.0, True),
        # top_entropy_quantile 0.3: the policy term on the top 30% entropy tokens
        ("topent", "grpo", 0.04, 0.2, 0.2, "group", 0.3, 2, 8, 1.0, False, 0.3),
        # full fine-tuning: a frozen copy of the base as the reference
        ("full", "grpo", 0.04, 0.2, 0.2, "group", 0.3, 2, 8, 1.0, False, 1.0, True),
    ]
    out = {"source": "trl 1.16 GRPOTrainer._compute_loss (make_grpo_fixtures.py)",
           "prompts": PROMPTS, "completions": COMPLETIONS, "G": G, "per_func": PER_FUNC, "weights": WEIGHTS,
           "cases": [run_case(*c) for c in cases]}
    with open(os.path.join(OUT, "cases.json"), "w") as f:
        json.dump(out, f, indent=1)
        f.write("\n")


if __name__ == "__main__":
    main()
