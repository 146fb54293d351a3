#!/usr/bin/env python3
"""make_ppo_fixtures.py - the PPO arithmetic of TRL's classic PPOTrainer
(trl 0.9.6, the version LLaMA-Factory's CustomPPOTrainer pins) for
tests/unit/test_ppo.c.

TRL 1.x, the version in /work/venv, removed the classic PPOTrainer and
trl/core.py's helpers, so what follows is a transcription of 0.9.6's
compute_rewards, compute_advantages, loss, masked_mean/var/whiten,
AdaptiveKLController and RunningMoments, run in torch float32 with autograd
for the gradients of the loss with respect to the new logprobs and value
predictions (what the C side feeds to the model's backward).  Inputs are
random with a fixed seed; responses of different lengths are masked as a
right-padded batch.

    /work/venv/bin/python tests/reference/make_ppo_fixtures.py
writes tests/fixtures/ppo/math.json.
"""
import json
import os

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "..", "fixtures", "ppo")


# --- trl 0.9.6 trl/core.py ---------------------------------------------------
def masked_mean(values, mask):
    return (values * mask).sum() / mask.sum()


def masked_var(values, mask, unbiased=True):
    mean = masked_mean(values, mask)
    centered = values - mean
    variance = masked_mean(centered**2, mask)
    if unbiased:
        mask_sum = mask.sum()
        variance = variance * (mask_sum / (mask_sum - 1))
    return variance


def masked_whiten(values, mask, shift_mean=True):
    mean, var = masked_mean(values, mask), masked_var(values, mask)
    whitened = (values - mean) * torch.rsqrt(var + 1e-8)
    if not shift_mean:
        whitened += mean
    return whitened


def clip_by_value(x, tensor_min, tensor_max):
    return torch.max(torch.min(x, tensor_max), tensor_min)


class AdaptiveKLController:
    def __init__(self, init_kl_coef, target, horizon):
        self.value, self.target, self.horizon = init_kl_coef, target, horizon

    def update(self, current, n_steps):
        proportional_error = min(max(current / self.target - 1, -0.2), 0.2)
        self.value *= 1 + proportional_error * n_steps / self.horizon


class RunningMoments:
    def __init__(self):
        self.mean, self.std, self.var, self.count = 0, 1, 1, 1e-24

    def update(self, xs):
        xs_count = xs.numel()
        xs_var, xs_mean = torch.var_mean(xs, unbiased=False)
        xs_mean, xs_var = xs_mean.float(), xs_var.float()
        delta = xs_mean - self.mean
        tot_count = self.count + xs_count
        new_sum = xs_var * xs_count
        old_sum = self.var * self.count + delta**2 * self.count * xs_count / tot_count
        tot_sum = old_sum + new_sum
        self.mean += (delta * xs_count / tot_count).item()
        self.var = (tot_sum / tot_count).item()
        self.std = (self.var * tot_count / (tot_count - 1)) ** 0.5
        self.count = tot_count


# --- trl 0.9.6 PPOTrainer ----------------------------------------------------
CFG = dict(gamma=1.0, lam=0.95, cliprange=0.2, cliprange_value=0.2, vf_coef=0.1, ratio_threshold=10.0)


def compute_rewards(scores, logprobs, ref_logprobs, masks, kl_coef):
    rewards = []
    for score, logprob, ref_logprob, mask in zip(scores, logprobs, ref_logprobs, masks):
        kl = logprob - ref_logprob
        reward = (-kl_coef * kl).clone()
        last = mask.nonzero()[-1]
        reward[last] += score
        rewards.append(reward)
    return torch.stack(rewards)


def compute_advantages(values, rewards, mask, whiten_rewards):
    lastgaelam = 0
    rev = []
    gen_len = rewards.shape[-1]
    values = values * mask
    rewards = rewards * mask
    if whiten_rewards:
        rewards = masked_whiten(rewards, mask, shift_mean=False)
    for t in reversed(range(gen_len)):
        nextvalues = values[:, t + 1] if t < gen_len - 1 else 0.0
        delta = rewards[:, t] + CFG["gamma"] * nextvalues - values[:, t]
        lastgaelam = delta + CFG["gamma"] * CFG["lam"] * lastgaelam
        rev.append(lastgaelam)
    advantages = torch.stack(rev[::-1]).transpose(0, 1)
    returns = advantages + values
    advantages = masked_whiten(advantages, mask)
    return values, advantages.detach(), returns


def loss(old_logprobs, values, vpreds, logprobs, mask, advantages, returns):
    vpredclipped = clip_by_value(vpreds, values - CFG["cliprange_value"], values + CFG["cliprange_value"])
    vf_losses1 = (vpreds - returns) ** 2
    vf_losses2 = (vpredclipped - returns) ** 2
    vf_loss = 0.5 * masked_mean(torch.max(vf_losses1, vf_losses2), mask)
    vf_clipfrac = masked_mean(torch.gt(vf_losses2, vf_losses1).float(), mask)
    ratio = torch.exp(logprobs - old_logprobs)
    pg_losses = -advantages * ratio
    pg_losses2 = -advantages * torch.clamp(ratio, 1.0 - CFG["cliprange"], 1.0 + CFG["cliprange"])
    pg_loss = masked_mean(torch.max(pg_losses, pg_losses2), mask)
    pg_clipfrac = masked_mean(torch.gt(pg_losses2, pg_losses).float(), mask)
    total = pg_loss + CFG["vf_coef"] * vf_loss
    stats = {
        "loss_policy": pg_loss.item(), "loss_value": vf_loss.item(), "loss_total": total.item(),
        "policy_approxkl": (0.5 * masked_mean((logprobs - old_logprobs) ** 2, mask)).item(),
        "policy_policykl": masked_mean(old_logprobs - logprobs, mask).item(),
        "policy_clipfrac": pg_clipfrac.item(),
        "policy_advantages_mean": masked_mean(advantages, mask).item(),
        "returns_mean": masked_mean(returns, mask).item(), "returns_var": masked_var(returns, mask).item(),
        "val_vpred": masked_mean(vpreds, mask).item(),
        "val_error": masked_mean((vpreds - returns) ** 2, mask).item(),
        "val_clipfrac": vf_clipfrac.item(),
        "val_mean": masked_mean(values, mask).item(), "val_var": masked_var(values, mask).item(),
    }
    return total, stats


def lst(t):
    return [float(x) for x in t.detach().reshape(-1).tolist()]


def case(seed, whiten_rewards, B=3, T=6, kl_coef=0.2):
    g = torch.Generator().manual_seed(seed)
    lens = [T, T - 2, 3][:B]
    mask = torch.zeros(B, T)
    for b, n in enumerate(lens):
        mask[b, :n] = 1
    scores = torch.randn(B, generator=g)
    logp = -torch.rand(B, T, generator=g) * 3
    ref = logp + torch.randn(B, T, generator=g) * 0.3
    values = torch.randn(B, T, generator=g)
    rewards = compute_rewards(scores, logp, ref, mask, kl_coef)
    mvalues, adv, ret = compute_advantages(values, rewards, mask, whiten_rewards)
    # the policy after some updates: new logprobs and values moved enough
    # that some ratios and some value predictions are clipped
    new_logp = (logp + torch.randn(B, T, generator=g) * 0.25).requires_grad_(True)
    vpred = (values + torch.randn(B, T, generator=g) * 0.4).requires_grad_(True)
    total, stats = loss(logp, mvalues, vpred, new_logp, mask, adv, ret)
    total.backward()
    return {
        "B": B, "T": T, "kl_coef": kl_coef, "whiten_rewards": whiten_rewards,
        "mask": lst(mask), "scores": lst(scores), "logp": lst(logp), "ref_logp": lst(ref),
        "values": lst(values), "rewards": lst(rewards), "advantages": lst(adv), "returns": lst(ret),
        "new_logp": lst(new_logp), "vpred": lst(vpred), "stats": stats,
        "dlogp": lst(new_logp.grad), "dvpred": lst(vpred.grad),
    }


def model_case():
    """One PPO mini-batch of TRL's step() on the tiny Llama with the
    preference fixtures' LoRA (tests/fixtures/pref/llama-lora) and a value
    head: fixed responses, so sampling is out of the comparison.  Rows are
    prompt + response, right-padded; the value head's dropout is 0 (TRL's
    is random).  The first mini-batch of the first PPO epoch sees the
    parameters the old logprobs came from, so its ratio is 1: the grads
    are those of the unclipped objective (clipping is covered above)."""
    import sys
    sys.path.insert(0, HERE)
    from make_pref_fixtures import load, value_head
    from safetensors.torch import save_file
    pm = load("llama")
    vh = value_head("llama")
    B, T = 2, 10
    rows = [([1, 17, 33, 9], [44, 12, 7, 2]), ([1, 25, 5], [60, 61, 3, 18, 2])]
    ids = torch.zeros(B, T, dtype=torch.long)
    lab = torch.full((B, T), -100, dtype=torch.long)
    am = torch.zeros(B, T, dtype=torch.long)
    mask = torch.zeros(B, T - 1)
    for b, (q, r) in enumerate(rows):
        seq = q + r
        ids[b, :len(seq)] = torch.tensor(seq)
        lab[b, len(q):len(seq)] = torch.tensor(r)
        am[b, :len(seq)] = 1
        mask[b, len(q) - 1:len(seq) - 1] = 1

    def fwd():   # batched_forward_pass: logprobs_from_logits(logits[:, :-1], ids[:, 1:]), values[:, :-1]
        out = pm(input_ids=ids, attention_mask=am, output_hidden_states=True)
        lp = torch.gather(out.logits[:, :-1].log_softmax(-1), 2, ids[:, 1:].unsqueeze(2)).squeeze(2)
        return lp, vh(out.hidden_states[-1]).squeeze(-1)[:, :-1]

    with torch.no_grad():
        old_logp, old_values = fwd()
        with pm.disable_adapter():
            ref_logp, _ = fwd()
    scores = torch.tensor([0.7, -0.3])
    rewards = compute_rewards(scores, old_logp, ref_logp, mask, 0.2)
    mvalues, adv, ret = compute_advantages(old_values, rewards, mask, False)
    pm.zero_grad()
    logp, vpred = fwd()
    total, stats = loss(old_logp, mvalues, vpred, logp, mask, adv, ret)
    total.backward()
    t = {"old_logp": old_logp, "values": old_values, "ref_logp": ref_logp, "loss": total.detach().reshape(1)}
    for n, p in pm.named_parameters():
        if p.requires_grad:
            t["grad." + n.replace(".default", "")] = p.grad
    t["grad.v_head.summary.weight"] = vh.weight.grad
    t["grad.v_head.summary.bias"] = vh.bias.grad
    save_file({k: v.detach().float().contiguous() for k, v in t.items()},
              os.path.join(OUT, "llama-minibatch.safetensors"))
    return {"B": B, "T": T, "input_ids": ids.reshape(-1).tolist(), "labels": lab.reshape(-1).tolist(),
            "scores": scores.tolist(), "kl_coef": 0.2, "vh_weight": lst(vh.weight), "vh_bias": vh.bias.item(),
            "stats": stats}


def main():
    torch.manual_seed(0)
    kl = AdaptiveKLController(0.2, 6.0, 10000)
    kl_trace = []
    for cur, n in [(8.0, 4), (1.0, 4), (6.3, 16), (30.0, 2)]:
        kl.update(cur, n)
        kl_trace.append({"current": cur, "n_steps": n, "value": kl.value})
    rm = RunningMoments()
    g = torch.Generator().manual_seed(7)
    batches, norm = [], []
    for _ in range(3):
        s = torch.randn(4, generator=g) * 2 + 1
        rm.update(s)
        eps = torch.finfo(s.dtype).eps
        norm.append(lst((s - rm.mean) / (rm.std + eps)))
        batches.append(lst(s))
    out = {
        "source": "transcription of trl 0.9.6 PPOTrainer / trl.core (make_ppo_fixtures.py)",
        "cases": [case(1, False), case(2, True), case(3, False)],
        "klctl": kl_trace,
        "moments": {"batches": batches, "normalized": norm, "mean": rm.mean, "std": rm.std},
    }
    out["model"] = model_case()
    os.makedirs(OUT, exist_ok=True)
    with open(os.path.join(OUT, "math.json"), "w") as f:
        json.dump(out, f, indent=0)
        f.write("\n")


if __name__ == "__main__":
    main()
