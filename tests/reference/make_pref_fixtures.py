#!/usr/bin/env python3
"""make_pref_fixtures.py - reference values for ft-train's preference
stages (rm, dpo with each --pref_loss, kto) from transformers + PEFT.

Run from the repository root:
    /work/venv/bin/python tests/reference/make_pref_fixtures.py
    /work/venv/bin/python tests/reference/make_pref_fixtures.py --dpo-extras
The second writes only the files of --pref_bco_weight and --ld_alpha
(LLaMA-Factory's current CustomDPOTrainer.bco_loss with TRL 0.18-0.24's
RunningMoments, get_batch_logps with ld_alpha), beside and without
rewriting the others: <kind>-<case>-b<i>.safetensors for EXTRA_CASES and
<kind>-extras-steps.json, 5 AdamW steps of EXTRA_STEPS with an evaluation
over all batches after steps 2, 4 and 5 (the baseline moves in evaluation
too): per step "loss" and every metric, per evaluation "eval_loss".
Made with torch 2.15.0, transformers 5.25.0, peft 0.21.2, trl 1.16.0 (CPU).

The losses are LLaMA-Factory 0.9.x's (CustomDPOTrainer, CustomKTOTrainer,
PairwiseTrainer) over the TRL they were written for (0.9-0.12 dpo_loss /
kto_loss), written out below in torch with autograd: TRL 1.16 restructured
its DPOTrainer (no dpo_loss(), no kto_pair, no AutoModelForCausalLMWithValueHead),
so it cannot be called the way LLaMA-Factory calls it.  What is checked
against transformers/PEFT is everything ft computes: per-token log-probs
through the real models, the value head over hidden_states[-1], gradients
of every trainable parameter, and AdamW steps (torch.optim.AdamW, clipping,
the linear schedule, as the HF Trainer runs them).

Writes tests/fixtures/pref/:
  <kind>-lora/            PEFT adapter (r 4, alpha 8, all linear, B random)
                          plus value_head.safetensors (v_head.summary.*)
  <kind>-model-nodrop/    config.json with summary_dropout_prob 0 (TRL's
                          ValueHead reads it) beside links to the model files
  {dpo,rm,kto}.jsonl      batch streams as JSON lines (ft-cat --encode)
  <kind>-<case>-b<i>.safetensors   batch i: "loss", "m.<metric>", "grad.<param>"
  <kind>-full_sigmoid-b1.safetensors   full fine-tuning, frozen base as reference
  <kind>-steps.txt        "<case> <loss step 1> ... <loss step 5>"; step 1
                          must equal step 1 of the runs of TRL 0.9.6 itself
                          (make_pref_trl_fixtures.py, which ft-train-pref.bats
                          compares ft's 10-step runs with)
A value head saved by ft is checked to load with torch (trl 1.16 has no
AutoModelForCausalLMWithValueHead) by check_value_head(DIR); in TRL 0.9.6
itself, with its scores, by make_pref_trl_fixtures.py --check-value-head.
"""
import json
import math
import os
import sys

import torch
import torch.nn.functional as F
from peft import LoraConfig, get_peft_model, PeftModel
from safetensors.torch import save_file, load_file
from transformers import LlamaForCausalLM, Qwen2ForCausalLM

MODELS = "tests/fixtures/models"
OUT = "tests/fixtures/pref"
NB, PAIRS, T = 6, 2, 14
LR, STEPS = 5e-3, 5


def pairs_data():
    """NB batches of PAIRS (prompt, chosen, rejected); batch 0 has equal
    lengths everywhere (no padding), the others are padded (the logits/
    metrics average the padding positions too, whose outputs depend on
    the attention_mask: ft's batches carry it as each row's `lengths`)."""
    g = torch.Generator().manual_seed(2024)
    out = []
    for b in range(NB):
        ps = []
        for _ in range(PAIRS):
            p = int(torch.randint(2, 5, (1,), generator=g))
            if b == 0:
                lc = lr = T - 4
                p = 4
            else:
                lc = int(torch.randint(3, T - p + 1, (1,), generator=g))
                lr = int(torch.randint(3, T - p + 1, (1,), generator=g))
            prompt = torch.randint(3, 256, (p,), generator=g).tolist()
            ch = torch.randint(3, 256, (lc - 1,), generator=g).tolist() + [2]
            rj = torch.randint(3, 256, (lr - 1,), generator=g).tolist() + [2]
            ps.append((prompt, ch, rj))
        out.append(ps)
    return out


def row(prompt, resp):
    ids = (prompt + resp)[:T]   # a KL row may be longer: cut as cutoff_len does
    lab = ([-100] * len(prompt) + resp)[:T]
    pad = T - len(ids)
    return ids + [0] * pad, lab + [-100] * pad, [1] * len(ids) + [0] * pad


def header(stage, kto=False):
    return {"format": "ft-stream", "version": 1, "kind": "batches", "producer": "make_pref_fixtures.py",
            "meta": {"stage": stage, "layout": "padded", "split": "train", "pad_id": 0, "eos_id": 2,
                     "seq_len": T, "batch_size": PAIRS, "rows_per_batch": 2 * PAIRS,
                     "pairwise": not kto, "kto_kl": kto, "cutoff_len": T, "pad_to_multiple_of": 1,
                     "seed": 42, "tokenizer": "tiny", "vocab_size": 256,
                     "counts": {"batches": NB, "examples": NB * PAIRS, "tokens": 0, "label_tokens": 0,
                                "pad_tokens": 0}}}


def pair_batches(data):
    """ft rows interleaved (2i chosen, 2i+1 rejected); torch rows concatenated."""
    ft, th = [], []
    for bi, ps in enumerate(data):
        rows = []
        for prompt, ch, rj in ps:
            rows += [row(prompt, ch), row(prompt, rj)]
        ids = [x for r in rows for x in r[0]]
        lab = [x for r in rows for x in r[1]]
        nt = sum(sum(r[2]) for r in rows)
        ft.append({"index": bi, "B": 2 * PAIRS, "T": T, "input_ids": ids, "labels": lab,
                   "lengths": [sum(r[2]) for r in rows],
                   "n_label_tokens": sum(1 for x in lab if x != -100), "n_tokens": nt,
                   "n_examples": PAIRS})
        order = [rows[2 * i] for i in range(PAIRS)] + [rows[2 * i + 1] for i in range(PAIRS)]
        th.append(tuple(torch.tensor([r[k] for r in order]) for k in range(3)))
    return ft, th


def kto_batches(data):
    """Example i of a batch: its prompt with the chosen (even i, desirable)
    or rejected response; KL row: the prompt with the previous example's
    response (ft-pack's FeedbackDatasetProcessor neighbour)."""
    ft, th = [], []
    for bi, ps in enumerate(data):
        ex = [(p, c if i % 2 == 0 else r, i % 2 == 0) for i, (p, c, r) in enumerate(ps)]
        rows, tags = [], []
        for i, (p, resp, tag) in enumerate(ex):
            kl_resp = ex[i - 1][1]
            rows += [row(p, resp), row(p, kl_resp)]
            tags += [int(tag), int(tag)]
        ids = [x for r in rows for x in r[0]]
        lab = [x for r in rows for x in r[1]]
        ft.append({"index": bi, "B": 2 * PAIRS, "T": T, "input_ids": ids, "labels": lab,
                   "kto_tags": tags, "lengths": [sum(r[2]) for r in rows],
                   "n_label_tokens": sum(1 for x in lab if x != -100),
                   "n_tokens": sum(sum(r[2]) for r in rows), "n_examples": PAIRS})
        tgt = [rows[2 * i] for i in range(PAIRS)]
        kl = [rows[2 * i + 1] for i in range(PAIRS)]
        th.append((tuple(torch.tensor([r[k] for r in tgt]) for k in range(3)),
                   tuple(torch.tensor([r[k] for r in kl]) for k in range(3)),
                   torch.tensor([e[2] for e in ex])))
    return ft, th


def write_jsonl(path, hdr, recs):
    with open(path, "w") as f:
        f.write(json.dumps(hdr) + "\n")
        for r in recs:
            f.write(json.dumps(r) + "\n")


# ---- the models ---------------------------------------------------------------

def load(kind):
    cls = LlamaForCausalLM if kind == "llama" else Qwen2ForCausalLM
    base = cls.from_pretrained(os.path.join(MODELS, "tiny-" + kind), dtype=torch.float32,
                               attn_implementation="eager")
    cfg = LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, bias="none", task_type="CAUSAL_LM",
                     target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj",
                                     "down_proj"])
    torch.manual_seed(5)   # PEFT draws lora_A from the global generator
    pm = get_peft_model(base, cfg)
    g = torch.Generator().manual_seed(99)
    with torch.no_grad():
        for n, p in pm.named_parameters():
            if "lora_B" in n:
                p.copy_(0.1 * torch.randn(p.shape, generator=g))
    pm.train()   # dropout is 0 everywhere: train mode changes nothing
    return pm


def value_head(kind):
    g = torch.Generator().manual_seed(7 if kind == "llama" else 8)
    v = torch.nn.Linear(64, 1)
    with torch.no_grad():
        v.weight.copy_(0.2 * torch.randn(v.weight.shape, generator=g))
        v.bias.copy_(0.1 * torch.randn(v.bias.shape, generator=g))
    return v


def logps(model, ids, lab, am, ld_alpha=None):
    """LLaMA-Factory's get_batch_logps: summed label log-probs and counts;
    with ld_alpha (LD-DPO) the positions past the first label position +
    the pair's shorter label count weighted by ld_alpha (its code as is)."""
    logits = model(input_ids=ids, attention_mask=am).logits.float()
    lb = lab[:, 1:].clone()
    lg = logits[:, :-1, :]
    mask = lb != -100
    lb[~mask] = 0
    tok = torch.gather(lg.log_softmax(-1), 2, lb.unsqueeze(2)).squeeze(2)
    vlen = mask.sum(-1)
    if ld_alpha is None:
        return (tok * mask).sum(-1), vlen, logits
    n = lb.shape[0] // 2
    min_len = torch.min(vlen[:n], vlen[n:])
    start = torch.argmax(mask.int(), dim=1)
    public = start + torch.cat([min_len, min_len], dim=0)
    pos = torch.arange(lb.shape[-1]).expand_as(tok)
    ld_mask = pos < public.unsqueeze(1)
    front = (tok * (ld_mask * mask).float()).sum(-1)
    rear = (tok * (~ld_mask * mask).float()).sum(-1)
    return front + ld_alpha * rear, vlen, logits


class RunningMoments:
    """TRL 0.18-0.24 trainer/utils.py RunningMoments.update, one process
    (accelerator.use_distributed False), transcribed with its types:
    mean/var/count Python floats, the arithmetic on float32 tensors."""

    def __init__(self):
        self.mean, self.std, self.var, self.count = 0, 1, 1, 1e-24

    @torch.no_grad()
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
        new_var = tot_sum / tot_count
        self.std = (new_var * tot_count / (tot_count - 1)).float().sqrt().item()
        self.var = new_var.item()
        self.count = tot_count


def ref_logps(pm, ids, lab, am):
    with torch.no_grad(), pm.disable_adapter():
        return logps(pm, ids, lab, am)[0]


def dpo_loss(case, pm, batch, running=None):
    ids, lab, am = batch
    loss_type, beta, ls, ftx, gamma = case["loss"], case["beta"], case["ls"], case["ftx"], case["gamma"]
    n = ids.shape[0] // 2
    all_lp, vlen, logits = logps(pm, ids, lab, am, case.get("ld"))
    avg = loss_type in ("ipo", "orpo", "simpo")
    if avg:
        all_lp = all_lp / vlen
    pc, pr = all_lp[:n], all_lp[n:]
    pc_avg = pc if avg else pc / vlen[:n]
    metrics = {}
    if loss_type in ("orpo", "simpo"):
        if loss_type == "orpo":
            lo = (pc - pr) - (torch.log1p(-torch.exp(pc)) - torch.log1p(-torch.exp(pr)))
            losses = -pc + beta * -F.logsigmoid(lo)
        else:
            losses = -F.logsigmoid(beta * ((pc - pr) - gamma / beta))
        rc_, rr_ = beta * pc.detach(), beta * pr.detach()
    else:
        r = ref_logps(pm, ids, lab, am)
        if avg:
            r = r / vlen
        rc, rr = r[:n], r[n:]
        z = (pc - pr) - (rc - rr)
        if loss_type == "sigmoid":
            losses = -F.logsigmoid(beta * z) * (1 - ls) - F.logsigmoid(-beta * z) * ls
        elif loss_type == "hinge":
            losses = torch.relu(1 - beta * z)
        else:
            losses = (z - 1 / (2 * beta)) ** 2
        rc_, rr_ = beta * (pc - rc).detach(), beta * (pr - rr).detach()
        w = case.get("bco", 0.0)
        if w > 1e-6:   # CustomDPOTrainer.bco_loss, then the re-weighting
            rewards = torch.cat((beta * (pc - rc), beta * (pr - rr)), 0).mean().detach()
            running.update(rewards)
            delta = running.mean
            bco = -F.logsigmoid((beta * (pc - rc)) - delta) - F.logsigmoid(-(beta * (pr - rr) - delta))
            losses = (losses + bco * w) / (1.0 + w)
    sft = -pc_avg
    if ftx > 1e-6:
        losses = losses + ftx * sft
    metrics["rewards/chosen"] = rc_.mean()
    metrics["rewards/rejected"] = rr_.mean()
    metrics["rewards/accuracies"] = (rc_ > rr_).float().mean()
    metrics["rewards/margins"] = (rc_ - rr_).mean()
    metrics["logps/chosen"] = pc.detach().mean()
    metrics["logps/rejected"] = pr.detach().mean()
    metrics["logits/chosen"] = logits[:n].detach().mean()
    metrics["logits/rejected"] = logits[n:].detach().mean()
    if loss_type == "orpo":
        metrics["sft_loss"] = sft.detach().mean()
        metrics["odds_ratio_loss"] = ((losses.detach() - sft.detach()) / beta).mean()
    return losses.mean(), metrics


def kto_loss(case, pm, batch):
    (ids, lab, am), (kids, klab, kam), tags = batch
    beta, wd, wu, ftx = case["beta"], case["wd"], case["wu"], case["ftx"]
    lp, vlen, logits = logps(pm, ids, lab, am)
    with torch.no_grad():
        klp = logps(pm, kids, klab, kam)[0]
    rlp = ref_logps(pm, ids, lab, am)
    rklp = ref_logps(pm, kids, klab, kam)
    t = tags.bool()
    kl = (klp - rklp).mean().clamp(min=0)
    ch, rj = lp[t] - rlp[t], lp[~t] - rlp[~t]
    losses = torch.cat((wd * (1 - torch.sigmoid(beta * (ch - kl))),
                        wu * (1 - torch.sigmoid(beta * (kl - rj)))), 0)
    loss = losses.nanmean()
    nc = int(t.sum())
    if ftx > 1e-6 and nc > 0:
        loss = loss + ftx * (-(lp[t] / vlen[t])).nanmean() / nc * len(lab)
    m = {}
    if nc:
        m["rewards/chosen"] = (beta * ch.detach()).sum() / nc
        m["logps/chosen"] = lp[t].detach().sum() / nc
        m["logits/chosen"] = logits[t].detach().sum() / nc
    if len(lab) - nc:
        nr = len(lab) - nc
        m["rewards/rejected"] = (beta * rj.detach()).sum() / nr
        m["logps/rejected"] = lp[~t].detach().sum() / nr
        m["logits/rejected"] = logits[~t].detach().sum() / nr
    if nc and len(lab) - nc:
        m["rewards/margins"] = m["rewards/chosen"] - m["rewards/rejected"]
    m["kl"] = kl.detach()
    return loss, m


def rm_loss(case, pm, vh, batch):
    ids, lab, am = batch
    out = pm(input_ids=ids, attention_mask=am, output_hidden_states=True)
    values = vh(out.hidden_states[-1]).squeeze(-1)
    n = ids.shape[0] // 2
    idx = am.sum(-1, keepdim=True) - 1
    sc = values.gather(-1, idx).squeeze(-1)
    c, r = sc[:n], sc[n:]
    loss = -F.logsigmoid(c.float() - r.float()).mean()
    return loss, {"accuracy": (c > r).float().mean()}


CASES = [
    {"name": "sigmoid", "stage": "dpo", "loss": "sigmoid", "beta": 0.1, "ls": 0.0, "ftx": 0.0, "gamma": 0.5},
    {"name": "sigmoid_ls_ftx", "stage": "dpo", "loss": "sigmoid", "beta": 0.3, "ls": 0.2, "ftx": 0.5, "gamma": 0.5},
    {"name": "hinge", "stage": "dpo", "loss": "hinge", "beta": 0.1, "ls": 0.0, "ftx": 0.0, "gamma": 0.5},
    {"name": "ipo", "stage": "dpo", "loss": "ipo", "beta": 0.1, "ls": 0.0, "ftx": 0.0, "gamma": 0.5},
    {"name": "orpo", "stage": "dpo", "loss": "orpo", "beta": 0.1, "ls": 0.0, "ftx": 0.0, "gamma": 0.5},
    {"name": "simpo", "stage": "dpo", "loss": "simpo", "beta": 2.0, "ls": 0.0, "ftx": 0.0, "gamma": 0.5},
    {"name": "kto", "stage": "kto", "beta": 0.1, "wd": 1.0, "wu": 1.0, "ftx": 0.0},
    {"name": "kto_weights_ftx", "stage": "kto", "beta": 0.2, "wd": 1.5, "wu": 0.5, "ftx": 0.3},
    {"name": "rm", "stage": "rm"},
]


def case_loss(case, pm, vh, batch):
    if case["stage"] == "dpo":
        return dpo_loss(case, pm, batch)
    if case["stage"] == "kto":
        return kto_loss(case, pm, batch)
    return rm_loss(case, pm, vh, batch)


def trainable(pm, vh, case):
    ps = [(n.replace(".default", ""), p) for n, p in pm.named_parameters() if p.requires_grad]
    if case["stage"] == "rm":
        ps += [("v_head.summary.weight", vh.weight), ("v_head.summary.bias", vh.bias)]
    return ps


def one_batch(kind, case, batch):
    pm = load(kind)
    vh = value_head(kind)
    pm.zero_grad()
    loss, m = case_loss(case, pm, vh, batch)
    loss.backward()
    t = {"loss": loss.detach().double().reshape(1)}
    for k, v in m.items():
        t["m." + k] = torch.tensor([float(v)], dtype=torch.float64)
    for n, p in trainable(pm, vh, case):
        t["grad." + n] = p.grad.detach().clone().contiguous()
    return t


def full_case(kind, batch):
    """dpo sigmoid with full fine-tuning: the reference is a frozen copy
    of the base, so the gradients reach every weight (embeddings and the
    LM head, tied in Qwen2) and the loss starts at log 2."""
    cls = LlamaForCausalLM if kind == "llama" else Qwen2ForCausalLM
    src = os.path.join(MODELS, "tiny-" + kind)
    pol = cls.from_pretrained(src, dtype=torch.float32, attn_implementation="eager")
    ref = cls.from_pretrained(src, dtype=torch.float32, attn_implementation="eager").eval()
    ids, lab, am = batch
    n = ids.shape[0] // 2
    lp = logps(pol, ids, lab, am)[0]
    with torch.no_grad():
        rp = logps(ref, ids, lab, am)[0]
    z = (lp[:n] - lp[n:]) - (rp[:n] - rp[n:])
    loss = (-F.logsigmoid(0.1 * z)).mean()
    loss.backward()
    t = {"loss": loss.detach().double().reshape(1)}
    for name, p in pol.named_parameters():
        t["grad." + name] = p.grad.detach().clone().contiguous()
    return t


def run_steps(kind, case, batches):
    """The HF Trainer's loop: one micro-batch per step, clip 1.0, AdamW
    (lr LR, linear decay over STEPS, no warmup), batches in order."""
    pm = load(kind)
    vh = value_head(kind)
    params = [p for _, p in trainable(pm, vh, case)]
    opt = torch.optim.AdamW(params, lr=LR, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: max(0.0, (STEPS - s) / STEPS))
    out = []
    for s in range(STEPS):
        opt.zero_grad()
        loss, _ = case_loss(case, pm, vh, batches[s % len(batches)])
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        out.append(float(loss))
    return out


def check_value_head(d):
    """A value_head.safetensors written by ft loads with torch as TRL's
    loader reads it (keys v_head.summary.weight [1, hidden], .bias [1])."""
    sd = load_file(os.path.join(d, "value_head.safetensors"))
    assert set(sd) == {"v_head.summary.weight", "v_head.summary.bias"}, sorted(sd)
    v = torch.nn.Linear(sd["v_head.summary.weight"].shape[1], 1)
    v.load_state_dict({"weight": sd["v_head.summary.weight"], "bias": sd["v_head.summary.bias"]})
    print("value head OK:", tuple(v.weight.shape))


EXTRA_CASES = [
    {"name": "sigmoid_ld", "stage": "dpo", "loss": "sigmoid", "beta": 0.1, "ls": 0.0, "ftx": 0.0, "gamma": 0.5,
     "ld": 0.5},
    {"name": "ipo_ld", "stage": "dpo", "loss": "ipo", "beta": 0.1, "ls": 0.0, "ftx": 0.0, "gamma": 0.5, "ld": 0.3},
    {"name": "simpo_ld", "stage": "dpo", "loss": "simpo", "beta": 2.0, "ls": 0.0, "ftx": 0.0, "gamma": 0.5,
     "ld": 0.4},
    {"name": "sigmoid_bco", "stage": "dpo", "loss": "sigmoid", "beta": 0.1, "ls": 0.0, "ftx": 0.0, "gamma": 0.5,
     "bco": 0.5},
    {"name": "hinge_bco_ld_ftx", "stage": "dpo", "loss": "hinge", "beta": 0.1, "ls": 0.0, "ftx": 0.3,
     "gamma": 0.5, "bco": 2.0, "ld": 0.7},
]
EXTRA_STEPS = [c for c in EXTRA_CASES if c["name"] in ("sigmoid_bco", "hinge_bco_ld_ftx")] + [
    {"name": "ipo_bco_ld", "stage": "dpo", "loss": "ipo", "beta": 0.1, "ls": 0.0, "ftx": 0.0, "gamma": 0.5,
     "bco": 1.0, "ld": 0.3},
]


def extras_steps(kind, case, batches):
    """5 steps as run_steps, evaluating every batch after steps 2, 4 and 5
    (ft-train --eval_steps 2 --val: log, evaluate, save): the running
    baseline is updated by every micro-batch, evaluation's included."""
    pm = load(kind)
    params = [p for _, p in trainable(pm, None, case)]
    opt = torch.optim.AdamW(params, lr=LR, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: max(0.0, (STEPS - s) / STEPS))
    running = RunningMoments()
    out = []
    for s in range(STEPS):
        opt.zero_grad()
        loss, m = dpo_loss(case, pm, batches[s % len(batches)], running)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        rec = {"step": s + 1, "loss": float(loss)}
        rec.update({k: float(v) for k, v in m.items()})
        if (s + 1) % 2 == 0 or s + 1 == STEPS:
            with torch.no_grad():
                el = [float(dpo_loss(case, pm, b, running)[0]) for b in batches]
            rec["eval_loss"] = sum(el) / len(el)
        out.append(rec)
    return out


def dpo_extras():
    data = pairs_data()
    _, pth = pair_batches(data)
    for kind in ("llama", "qwen2"):
        for case in EXTRA_CASES:
            for bi in (0, 1):
                pm = load(kind)
                pm.zero_grad()
                loss, m = dpo_loss(case, pm, pth[bi], RunningMoments())
                loss.backward()
                t = {"loss": loss.detach().double().reshape(1)}
                for k, v in m.items():
                    t["m." + k] = torch.tensor([float(v)], dtype=torch.float64)
                for n, p in trainable(pm, None, case):
                    t["grad." + n] = p.grad.detach().clone().contiguous()
                save_file(t, os.path.join(OUT, f"{kind}-{case['name']}-b{bi}.safetensors"))
        steps = {c["name"]: extras_steps(kind, c, pth) for c in EXTRA_STEPS}
        with open(os.path.join(OUT, kind + "-extras-steps.json"), "w") as f:
            json.dump(steps, f, indent=1)
            f.write("\n")
        print(kind, "extras done")


def main():
    if len(sys.argv) == 3 and sys.argv[1] == "--check-value-head":
        check_value_head(sys.argv[2])
        return
    if len(sys.argv) == 2 and sys.argv[1] == "--dpo-extras":
        torch.set_num_threads(1)
        dpo_extras()
        return
    torch.set_num_threads(1)
    os.makedirs(OUT, exist_ok=True)
    data = pairs_data()
    pft, pth = pair_batches(data)
    kft, kth = kto_batches(data)
    write_jsonl(os.path.join(OUT, "dpo.jsonl"), header("dpo"), pft)
    write_jsonl(os.path.join(OUT, "rm.jsonl"), header("rm"), pft)
    write_jsonl(os.path.join(OUT, "kto.jsonl"), header("kto", kto=True), kft)
    for kind in ("llama", "qwen2"):
        pm = load(kind)
        ad = os.path.join(OUT, kind + "-lora")
        pm.save_pretrained(ad)
        if os.path.exists(os.path.join(ad, "README.md")):
            os.remove(os.path.join(ad, "README.md"))   # PEFT's model card template
        vh = value_head(kind)
        save_file({"v_head.summary.weight": vh.weight.detach().contiguous(),
                   "v_head.summary.bias": vh.bias.detach().contiguous()},
                  os.path.join(ad, "value_head.safetensors"), metadata={"format": "pt"})
        nd = os.path.join(OUT, kind + "-model-nodrop")
        os.makedirs(nd, exist_ok=True)
        src = os.path.join(MODELS, "tiny-" + kind)
        cfg = json.load(open(os.path.join(src, "config.json")))
        cfg["summary_dropout_prob"] = 0.0
        json.dump(cfg, open(os.path.join(nd, "config.json"), "w"), indent=2)
        for f in os.listdir(src):
            if f != "config.json" and not os.path.exists(os.path.join(nd, f)):
                os.symlink(os.path.join("..", "..", "models", "tiny-" + kind, f), os.path.join(nd, f))
        lines = []
        for case in CASES:
            bt = kth if case["stage"] == "kto" else pth
            for bi in (0, 1):
                t = one_batch(kind, case, bt[bi])
                save_file(t, os.path.join(OUT, f"{kind}-{case['name']}-b{bi}.safetensors"))
            steps = run_steps(kind, case, bt)
            lines.append(" ".join([case["name"]] + [repr(x) for x in steps]))
        save_file(full_case(kind, pth[1]), os.path.join(OUT, f"{kind}-full_sigmoid-b1.safetensors"))
        with open(os.path.join(OUT, kind + "-steps.txt"), "w") as f:
            f.write("\n".join(lines) + "\n")
        print(kind, "done")


if __name__ == "__main__":
    main()
