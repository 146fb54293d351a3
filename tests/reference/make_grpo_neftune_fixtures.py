#!/usr/bin/env python3
"""make_grpo_neftune_fixtures.py - where TRL 1.16's GRPOTrainer adds
NEFTune's noise, and one GRPO step with that noise, for
tests/unit/test_grpo_neftune.c.

1. The placement, observed: a real GRPOTrainer.train (two steps, the tiny
   Llama, num_iterations 2 so the old pass runs, beta 0.04) with
   neftune_noise_alpha, transformers' neftune_post_forward_hook wrapped to
   record every call: which pass (generate, the old or the reference
   log-probs, the training forward), the module's training flag, whether
   noise was added and the width output.size(1).  Once with a LoRA policy
   (the reference is the same model under use_adapter / disable_adapter)
   and once full (the reference a separate model, prepared in eval mode,
   with no hook).  training_step's model.train() runs before
   _prepare_inputs, so every pass of the policy, generation included, is in
   train mode and noised.

2. The numbers: TRL's own _get_per_token_logps_and_entropies and
   _compute_loss on a stand-in `self` (as make_grpo_fixtures.py), the LoRA
   policy in train mode with an embedding hook that is transformers' hook
   (noise only while module.training, alpha / sqrt(size(1) * size(2)) in
   float32) except for its draws: ft's generator cannot be torch's, so the
   hook adds the floats ft's CPU adds (lib/model/extras.c: xoshiro256**
   seeded by ft_neftune_seed(seed, call), one stream over the call's
   [rows, T, D] in ft's layout, each prompt from position 0) at the TRL
   positions of the same tokens (prompts left-padded).  ft's call numbers
   and row orders (its sampler's and micro-batch shuffles, xoshiro too) are
   transcribed here; the passes that get noise are those part 1 observed.
   The step: 2 prompts x G = 3 fixed completions and rewards, one micro-
   batch of 6, loss grpo, beta 0.04, num_iterations 2 (old log-probs from
   their own noised pass).  Also the kl a noise-free reference would give,
   so the test can tell the two apart.

3. The sampling: the two kinds of forward model.generate makes (part 1:
   in train mode, noised, at the width of the left-padded prompts and then
   1), with ft's decoder draws injected: the logits ft's CPU decoder must
   give with ft_model_set_gen_neftune on.

    /work/venv/bin/python tests/reference/make_grpo_neftune_fixtures.py
writes tests/fixtures/grpo/neftune.json.
"""
import inspect
import json
import os
import sys
import types
from collections import defaultdict

import numpy as np
import torch
import transformers.integrations.neftune as nf
from trl.trainer.grpo_trainer import GRPOTrainer
from trl.trainer.utils import add_fused_lm_head

HERE = os.path.dirname(os.path.abspath(__file__))
FIX = os.path.join(HERE, "..", "fixtures")
sys.path.insert(0, HERE)
from make_pref_fixtures import load  # noqa: E402
from make_grpo_fixtures import Acc, advantages  # noqa: E402

M64 = (1 << 64) - 1

# ---- part 1: the passes TRL noises ----


def observe(lora):
    from datasets import Dataset
    from peft import LoraConfig
    from peft.tuners.lora import LoraLayer
    from transformers import AutoTokenizer
    from trl import GRPOConfig
    calls, st = [], {}
    real = nf.neftune_post_forward_hook

    def phase():
        names = [f.function for f in inspect.stack()]
        if "generate" in names:
            return "generate"
        if "_compute_loss" in names:
            return "train"
        if "_get_per_token_logps_and_entropies" in names:
            off = any(m.disable_adapters for m in st["t"].model.modules() if isinstance(m, LoraLayer))
            return "ref" if off else "old"
        return "other"

    def hook(module, inp, out):
        got = real(module, inp, out)
        calls.append({"pass": phase(), "training": module.training, "noised": bool((got != out).any()),
                      "width": out.size(1)})
        return got
    nf.neftune_post_forward_hook = hook
    tok = AutoTokenizer.from_pretrained(os.path.join(FIX, "generate", "tokenizer"))
    ds = Dataset.from_dict({"prompt": ["the tea is hot", "who are you", "x y", "a b c d e"]})
    args = GRPOConfig(output_dir=os.path.join("/tmp", "grpo-neftune-probe"), per_device_train_batch_size=2,
                      num_generations=2, max_completion_length=3, max_steps=2, num_iterations=2, beta=0.04,
                      neftune_noise_alpha=5.0, use_cpu=True, report_to=[], save_strategy="no", seed=1)
    t = GRPOTrainer(model=os.path.join(FIX, "models", "tiny-llama"), args=args, train_dataset=ds,
                    reward_funcs=lambda completions, **k: [float(len(c)) for c in completions],
                    processing_class=tok,
                    peft_config=LoraConfig(r=4, target_modules=["q_proj", "v_proj"]) if lora else None)
    st["t"] = t
    if t.ref_model is not None:   # the separate reference: its own embeddings, no NEFTune hook
        t.ref_model.get_input_embeddings().register_forward_hook(
            lambda m, i, o: calls.append({"pass": "ref", "training": m.training, "noised": False,
                                          "width": o.size(1), "hooked": hasattr(m, "neftune_noise_alpha")}))
    t.train()
    nf.neftune_post_forward_hook = real
    out = {}
    for c in calls:   # per pass: every call's flags agree (checked), the widths seen
        p = out.setdefault(c["pass"], {"training": c["training"], "noised": c["noised"], "widths": []})
        assert (p["training"], p["noised"]) == (c["training"], c["noised"]), (c, p)
        if c["width"] not in p["widths"]:
            p["widths"].append(c["width"])
    return out

# ---- ft's generator (lib/util/rng.c) and NEFTune draws (lib/model/extras.c) ----


class Rng:
    def __init__(self, seed):
        self.s, x = [], seed & M64
        for _ in range(4):
            x = (x + 0x9e3779b97f4a7c15) & M64
            z = x
            z = ((z ^ (z >> 30)) * 0xbf58476d1ce4e5b9) & M64
            z = ((z ^ (z >> 27)) * 0x94d049bb133111eb) & M64
            self.s.append(z ^ (z >> 31))

    def next(self):
        s = self.s
        rotl = lambda x, k: ((x << k) | (x >> (64 - k))) & M64
        r = (rotl((s[1] * 5) & M64, 7) * 9) & M64
        t = (s[1] << 17) & M64
        s[2] ^= s[0]; s[3] ^= s[1]; s[1] ^= s[2]; s[0] ^= s[3]
        s[2] ^= t
        s[3] = rotl(s[3], 45)
        return r

    def below(self, n):
        limit = M64 - M64 % n
        while True:
            x = self.next()
            if x < limit:
                return x % n

    def shuffle(self, v):   # ft_shuffle_i64
        for i in range(len(v), 1, -1):
            j = self.below(i)
            v[i - 1], v[j] = v[j], v[i - 1]
        return v


def ft_noise(seed, call, n, mag):
    """ft_neftune_add's increments: float(-mag + 2 mag u) in double."""
    g = Rng(seed ^ ((0x4e4546 + call * 0x9e3779b97f4a7c15) & M64))
    u = np.array([(g.next() >> 11) * 2.0 ** -53 for _ in range(n)])
    m = float(mag)
    return (-m + 2.0 * m * u).astype(np.float32)

# ---- part 2: one step with ft's draws at TRL's places ----


PROMPTS = [[1, 17, 33, 9], [1, 25, 5]]
# the completions ft's generator would return plus the eos it drops (2);
# the one of length MAXC ends without one (truncated).  The longest
# completion is the shorter prompt's: the longest row (8) is narrower than
# TRL's width, the longest prompt plus the longest completion (9)
COMPLETIONS = [[44, 12, 7, 2], [44, 12, 2], [60, 61, 18, 2],
               [60, 61, 3, 2], [8, 2], [8, 30, 31, 32, 33]]
PER_FUNC = [[1.0, 0.5], [0.0, 0.25], [1.0, 1.0], [0.0, 0.0], [1.0, -0.5], [0.5, 0.75]]
WEIGHTS = [1.0, 0.5]
G, MAXC, ALPHA, SEED, BETA = 3, 5, 1.0, 7, 0.04


def step(noised, ref_noised):
    pm = load("llama")
    add_fused_lm_head(pm.get_base_model(), temperature=1.0, outputs=("log_probs", "entropy"))
    # ft's order: the sampler shuffles the prompts, the rows of a group are
    # consecutive; the micro-batch is a second stream's shuffle of the rows
    uniq = Rng(SEED).shuffle(list(range(len(PROMPTS))))
    rows = [(uniq[i // G], uniq[i // G] * G + i % G) for i in range(len(COMPLETIONS))]
    perm = Rng(SEED).shuffle(list(range(len(rows))))
    P = max(len(p) for p in PROMPTS)
    C = max(len(c) for c in COMPLETIONS)
    T, D = P + C, pm.config.hidden_size
    st = {"call": 0, "order": None}
    emb = pm.base_model.model.get_input_embeddings()

    def hook(module, inp, out):   # transformers' neftune_post_forward_hook, ft's draws
        if not module.training:
            return out
        assert out.size(1) == T
        mag = ALPHA / torch.sqrt(torch.tensor(out.size(1) * out.size(2)))
        st["call"] += 1
        if not st["noise"]:
            return out
        B = out.size(0)
        z = ft_noise(SEED, st["call"], B * T * D, mag).reshape(B, T, D)
        add = torch.zeros_like(out)
        for b, r in enumerate(st["order"]):   # ft's position t to TRL's (left-padded prompt)
            q, c = PROMPTS[rows[r][0]], COMPLETIONS[rows[r][1]]
            for t in range(len(q) + len(c)):
                add[b, P - len(q) + t if t < len(q) else P + t - len(q)] = torch.from_numpy(z[b, t])
        return out + add
    emb.register_forward_hook(hook)
    pm.train()   # training_step's model.train() (part 1: every pass of the policy in train mode)

    def tensors(order):
        B = len(order)
        ids = torch.zeros(B, T, dtype=torch.long)
        am = torch.zeros(B, T, dtype=torch.long)
        cm = torch.zeros(B, C, dtype=torch.long)
        for b, r in enumerate(order):
            q, c = PROMPTS[rows[r][0]], COMPLETIONS[rows[r][1]]
            ids[b, P - len(q):P] = torch.tensor(q)
            am[b, P - len(q):P] = 1
            ids[b, P:P + len(c)] = torch.tensor(c)
            am[b, P:P + len(c)] = 1
            cm[b, :len(c)] = 1
        return ids, am, cm
    me = types.SimpleNamespace(
        loss_type="grpo", beta=BETA, epsilon_low=0.2, epsilon_high=0.2, importance_sampling_level="token",
        top_entropy_quantile=1.0, off_policy_mask_threshold=None, use_vllm=False,
        vllm_importance_sampling_correction=False, _entropy_bonus_enabled=False, aux_loss_enabled=False,
        max_completion_length=MAXC, current_gradient_accumulation_steps=1, accelerator=Acc(), model=pm,
        _metrics={"train": defaultdict(list), "eval": defaultdict(list)},
        args=types.SimpleNamespace(delta=None, use_bias_correction_kl=True, steps_per_generation=1))
    me._get_per_token_logps_and_entropies = types.MethodType(GRPOTrainer._get_per_token_logps_and_entropies, me)
    me.get_high_entropy_mask = types.MethodType(GRPOTrainer.get_high_entropy_mask, me)
    grid = list(range(len(rows)))
    ids, am, _ = tensors(grid)
    with torch.no_grad():   # ft's order: the old pass (call 1), then the reference (call 2)
        st.update(order=grid, noise=noised["old"])
        old = me._get_per_token_logps_and_entropies(pm, ids, am, C)[0]
        st.update(noise=noised["ref"] and ref_noised)
        with pm.disable_adapter():
            ref = me._get_per_token_logps_and_entropies(pm, ids, am, C)[0]
    st.update(order=perm, noise=noised["train"])   # the micro-batch's training forward (call 3)
    ids, am, cm = tensors(perm)
    _, adv = advantages([PER_FUNC[rows[r][1]] for r in grid], WEIGHTS, G, "group")
    inp = {"prompt_ids": ids[:, :P], "prompt_mask": am[:, :P], "completion_ids": ids[:, P:],
           "completion_mask": cm, "advantages": adv[perm], "num_items_in_batch": cm.sum(),
           "old_per_token_logps": old[perm], "ref_per_token_logps": ref[perm]}
    loss = GRPOTrainer._compute_loss(me, pm, inp)
    assert st["call"] == 3
    return {"loss": loss.item(), **{k: v[-1] for k, v in me._metrics["train"].items()}}


def ft_noise_tokens(stream, k, rows, D):
    """ft_neftune_tokens: one decoder forward's increments, token order."""
    W = max(rows.count(r) for r in set(rows))
    mag = ALPHA / torch.sqrt(torch.tensor(W * D))   # the hook's float32 magnitude at width W
    return ft_noise(stream, k, len(rows) * D, mag).reshape(len(rows), D)


def generation(stream):
    """Part 3: model.generate's two kinds of forward, as TRL runs them in
    train mode (part 1: noised, widths the padded prompts' and 1): the
    prefill of the left-padded prompts, positions from the attention mask
    as generate computes them, and one new token per row over the cache;
    ft's draws (its decoder's forwards 0 and 1 of `stream`, tokens packed
    row after row) at the same tokens.  The logits of the prefill's last
    positions and of the new tokens."""
    from transformers import DynamicCache
    pm = load("llama")
    D = pm.config.hidden_size
    P = max(len(q) for q in PROMPTS)
    st = {}

    def hook(module, inp, out):
        assert module.training
        return out + st["add"]
    pm.base_model.model.get_input_embeddings().register_forward_hook(hook)
    pm.train()
    B = len(PROMPTS)
    ids = torch.zeros(B, P, dtype=torch.long)
    am = torch.zeros(B, P, dtype=torch.long)
    rows = [r for r, q in enumerate(PROMPTS) for _ in q]
    z = torch.from_numpy(ft_noise_tokens(stream, 0, rows, D))
    st["add"] = torch.zeros(B, P, D)
    i = 0
    for r, q in enumerate(PROMPTS):
        ids[r, P - len(q):] = torch.tensor(q)
        am[r, P - len(q):] = 1
        for t in range(len(q)):
            st["add"][r, P - len(q) + t] = z[i]
            i += 1
    pos = (am.cumsum(-1) - 1).clamp(min=0)
    cache = DynamicCache()
    with torch.no_grad():
        pre = pm(input_ids=ids, attention_mask=am, position_ids=pos, past_key_values=cache,
                 use_cache=True).logits[:, -1]
        new = torch.tensor([[44], [8]])
        st["add"] = torch.from_numpy(ft_noise_tokens(stream, 1, list(range(B)), D)).unsqueeze(1)
        am2 = torch.cat([am, torch.ones(B, 1, dtype=torch.long)], 1)
        step = pm(input_ids=new, attention_mask=am2, position_ids=pos[:, -1:] + 1, past_key_values=cache,
                  use_cache=True).logits[:, -1]
    return {"stream": stream, "new_tokens": [44, 8], "prefill_logits": pre.tolist(), "step_logits": step.tolist()}


def main():
    passes = {"lora": observe(True), "full": observe(False)}
    lora = {k: v["noised"] for k, v in passes["lora"].items()}
    assert lora == {"generate": True, "old": True, "ref": True, "train": True}, lora
    assert not passes["full"]["ref"]["noised"] and passes["full"]["train"]["noised"], passes["full"]
    out = {"source": "trl 1.16 GRPOTrainer.train / _compute_loss with NEFTune (make_grpo_neftune_fixtures.py)",
           "passes": passes, "prompts": PROMPTS, "completions": COMPLETIONS, "per_func": PER_FUNC,
           "weights": WEIGHTS, "G": G, "max_completion_length": MAXC, "alpha": ALPHA, "seed": SEED,
           "beta": BETA, "step": step(lora, True), "ref_noise_free": step(lora, False),
           "generation": generation(12345)}
    with open(os.path.join(FIX, "grpo", "neftune.json"), "w") as f:
        json.dump(out, f, indent=1)
        f.write("\n")


if __name__ == "__main__":
    main()
