#!/usr/bin/env python3
"""make_pref_trl_fixtures.py - 10-step reference runs of ft-train's
preference stages by LLaMA-Factory 0.9.3's own trainers over TRL 0.9.6.

The trainers are LLaMA-Factory's classes, imported from its package and
driven as its workflows drive them (CustomDPOTrainer for sigmoid, hinge,
ipo, orpo, simpo; CustomKTOTrainer; PairwiseTrainer over TRL's
AutoModelForCausalLMWithValueHead), on the batch files ft-train is fed
(tests/fixtures/pref/{dpo,kto,rm}.jsonl, written by make_pref_fixtures.py)
with the fixture LoRA adapters and value heads.  Not driven: its data
pipeline (templates, tokenizer, collator): the fixture batches are random
token ids, handed over as ready tensors in LLaMA-Factory's collated layout
(all chosen rows, then all rejected ones; kto: kl_* beside the rows).
`llamafactory-cli train` cannot be fed these batches, and ft's tokenize
and pack stages have fixtures of their own.

The legacy environment (torch 2.15 from /work/venv; nothing of it touches
the repository), recreate it with:
    /work/venv/bin/pip install --no-deps --target /work/legacy \\
        llamafactory==0.9.3 trl==0.9.6 transformers==4.52.4 peft==0.15.2 \\
        accelerate==1.7.0 tokenizers==0.21.1 huggingface_hub==0.33.1 \\
        datasets==3.6.0 dill==0.3.8 multiprocess==0.70.16 fsspec==2025.3.0 \\
        kernels==0.4.4 omegaconf==2.3.0 antlr4-python3-runtime==4.9.3 \\
        pillow==11.0.0 requests==2.32.3 urllib3==2.2.3 idna==3.10 \\
        charset-normalizer==3.4.0 certifi==2024.8.30
    /work/venv/bin/pip install --target /work/legacy aiohttp==3.10.10
llamafactory 0.9.3 is the last release over TRL 0.9.x (it pins trl<=0.9.6,
transformers<=4.52.4, peft<=0.15.2); 0.9.1 (transformers 4.46) divides
ipo/orpo/simpo's averaged log-probs by the length a second time for
sft_loss / odds_ratio_loss / --pref_ftx, a bug 0.9.2 fixed.  kernels 0.4.4
shadows the venv's newer one, which needs a newer huggingface_hub.  The
install writes nothing into the repository.  peft 0.15.2 dispatches LoRA
layers to any importable gptqmodel / torchao; newer ones in /work/venv
break that import, so hide them for the run (a directory on PYTHONPATH
whose sitecustomize.py sets sys.modules[name] = None for both).

Run from the repository root:
    PYTHONPATH=/work/legacy /work/venv/bin/python tests/reference/make_pref_trl_fixtures.py
    PYTHONPATH=/work/legacy /work/venv/bin/python tests/reference/make_pref_trl_fixtures.py \\
        --check-value-head DIR [--model M] [--data tests/fixtures/pref/rm.jsonl] [--predictions F]
The second form loads an rm directory of ft-train (adapter +
value_head.safetensors) into TRL's AutoModelForCausalLMWithValueHead as
LLaMA-Factory's load_model does, scores the pairs of --data and compares
with F (ft-train --do_predict's generated_predictions.jsonl, by default
in DIR).

The models' config.json are written by transformers 5 (rope_parameters,
dtype); 4.52 reads rope_theta / rope_scaling / torch_dtype, so each model
is loaded from a temporary copy with the config translated (the llama3
rope scaling of tiny-llama would otherwise be dropped silently).  Step 1
of every case must equal step 1 of make_pref_fixtures.py's hand-written
runs (checked below).

Settings as ft-train's defaults and the bats runs: lr 5e-3, linear decay
over 10 steps, no warmup, AdamW (adamw_torch, weight decay 0), clip 1.0,
one micro-batch per step, the batches in file order (LLaMA-Factory's
--disable_shuffling), dropout 0 (dpo/kto
disable it; rm loads the *-model-nodrop config, summary_dropout_prob 0).

Writes tests/fixtures/pref/trl-steps.json:
  {"meta": {...}, "<kind>": {"<case>": [{"step": 1, "padded": false, "loss": ..,
   "grad_norm": .., "learning_rate": .., "<metric>": ..}, ...]}}
  (loss unrounded: the Trainer's log rounds it to 4 digits)
and tests/fixtures/pref/trl-rm-scores.json: TRL's scores of rm.jsonl's
pairs with the fixture adapter and value head of each kind (unrounded).
"""
import argparse
import json
import os
import shutil
import sys
import tempfile

import torch
import transformers
import trl
import peft
import llamafactory
from peft import LoraConfig, get_peft_model, set_peft_model_state_dict
from safetensors.torch import load_file
from transformers import (AutoModelForCausalLM, TrainerCallback, TrainingArguments)
from trl import AutoModelForCausalLMWithValueHead

from llamafactory.hparams import FinetuningArguments
from llamafactory.model.model_utils.valuehead import load_valuehead_params
from llamafactory.model.patcher import patch_valuehead_model
from llamafactory.train.dpo.trainer import CustomDPOTrainer
from llamafactory.train.kto.trainer import CustomKTOTrainer
from llamafactory.train.rm.trainer import PairwiseTrainer

PREF = "tests/fixtures/pref"
MODELS = "tests/fixtures/models"
STEPS, LR = 10, 5e-3
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]

# the cases of make_pref_fixtures.py, as LLaMA-Factory's FinetuningArguments
CASES = {
    "sigmoid": dict(stage="dpo", pref_loss="sigmoid"),
    "sigmoid_ls_ftx": dict(stage="dpo", pref_loss="sigmoid", pref_beta=0.3, dpo_label_smoothing=0.2, pref_ftx=0.5),
    "hinge": dict(stage="dpo", pref_loss="hinge"),
    "ipo": dict(stage="dpo", pref_loss="ipo"),
    "orpo": dict(stage="dpo", pref_loss="orpo"),
    "simpo": dict(stage="dpo", pref_loss="simpo", pref_beta=2.0, simpo_gamma=0.5),
    "kto": dict(stage="kto"),
    "kto_weights_ftx": dict(stage="kto", pref_beta=0.2, kto_chosen_weight=1.5, kto_rejected_weight=0.5,
                            pref_ftx=0.3),
    "rm": dict(stage="rm"),
}


# ---- the batches ft-train reads ------------------------------------------------

def read_stream(path):
    with open(path) as f:
        hdr, *recs = [json.loads(line) for line in f]
    return hdr["meta"], recs


def rows_of(meta, rec):
    """[B, T] tensors of one record and each row's attention mask, from
    the record's `lengths` (what ft-train masks by: positions >= length
    are padding); the fixture's content tokens are >= 2 and pad_id 0
    fills each row's tail, which the mask must agree with."""
    B, T = rec["B"], rec["T"]
    ids = torch.tensor(rec["input_ids"]).view(B, T)
    lab = torch.tensor(rec["labels"]).view(B, T)
    am = (torch.arange(T)[None, :] < torch.tensor(rec["lengths"])[:, None]).long()
    assert bool((am == (ids != meta["pad_id"]).long()).all()), "lengths do not match the padding"
    assert int(am.sum()) == rec["n_tokens"], "pad positions do not match n_tokens"
    return ids, lab, am


def pair_batches(path):
    """LLaMA-Factory's PairwiseDataCollatorWithPadding layout: chosen rows
    (ft's even rows) first, then the rejected ones (odd rows)."""
    meta, recs = read_stream(path)
    assert meta["pairwise"], path + ": not pairwise batches"
    out = []
    for rec in recs:
        ids, lab, am = rows_of(meta, rec)
        order = list(range(0, rec["B"], 2)) + list(range(1, rec["B"], 2))
        out.append({"input_ids": ids[order], "attention_mask": am[order], "labels": lab[order]})
    return out


def kto_batches():
    """KTODataCollatorWithPadding's layout: the examples (ft's even rows),
    their KL rows (odd rows) as kl_*, kto_tags as bools."""
    meta, recs = read_stream(os.path.join(PREF, "kto.jsonl"))
    out = []
    for rec in recs:
        ids, lab, am = rows_of(meta, rec)
        t = torch.tensor(rec["kto_tags"][0::2]).bool()
        out.append({"input_ids": ids[0::2], "attention_mask": am[0::2], "labels": lab[0::2],
                    "kl_input_ids": ids[1::2], "kl_attention_mask": am[1::2], "kl_labels": lab[1::2],
                    "kto_tags": t})
    return out


# ---- the models, as transformers 4.52 and PEFT 0.15 read them ------------------------

def legacy_model_dir(src, tmp):
    """A copy of model dir src whose config.json transformers 4.52 reads
    as 5.x read the original (rope_parameters -> rope_theta/rope_scaling)."""
    d = os.path.join(tmp, os.path.basename(os.path.normpath(src)))
    os.makedirs(d, exist_ok=True)
    cfg = json.load(open(os.path.join(src, "config.json")))
    rp = cfg.pop("rope_parameters", None)
    if rp is not None:
        rp = dict(rp)
        cfg["rope_theta"] = rp.pop("rope_theta")
        if rp.get("rope_type", "default") != "default":
            cfg["rope_scaling"] = rp
    if "dtype" in cfg:
        cfg["torch_dtype"] = cfg.pop("dtype")
    json.dump(cfg, open(os.path.join(d, "config.json"), "w"), indent=2)
    for f in os.listdir(src):
        if f != "config.json":
            os.symlink(os.path.realpath(os.path.join(src, f)), os.path.join(d, f))
    return d


def load_policy(model_dir, adapter_dir, tmp):
    """The base with the adapter of adapter_dir, trainable: PEFT 0.15 cannot
    parse a 0.21 adapter_config.json, so the config is rebuilt from its r,
    alpha and targets and the weights loaded into it (every key must land)."""
    base = AutoModelForCausalLM.from_pretrained(legacy_model_dir(model_dir, tmp), torch_dtype=torch.float32,
                                                attn_implementation="eager")
    ac = json.load(open(os.path.join(adapter_dir, "adapter_config.json")))
    cfg = LoraConfig(r=ac["r"], lora_alpha=ac["lora_alpha"], lora_dropout=ac.get("lora_dropout", 0.0),
                     bias="none", task_type="CAUSAL_LM", target_modules=ac["target_modules"],
                     use_rslora=ac.get("use_rslora", False))
    assert not ac.get("use_dora"), "DoRA adapters are not fixtures"
    pm = get_peft_model(base, cfg)
    sd = load_file(os.path.join(adapter_dir, "adapter_model.safetensors"))
    res = set_peft_model_state_dict(pm, sd)
    assert not res.unexpected_keys, res.unexpected_keys
    missing = [k for k in res.missing_keys if "lora_" in k]
    assert not missing, missing
    return pm


def value_head_model(pm, adapter_dir):
    """LLaMA-Factory's load_model for stage rm: TRL's wrapper, patched, the
    value head read from the adapter directory (load_valuehead_params)."""
    model = AutoModelForCausalLMWithValueHead.from_pretrained(pm)
    patch_valuehead_model(model)
    vhead = load_valuehead_params(adapter_dir, argparse.Namespace(cache_dir=None, hf_hub_token=None))
    assert vhead is not None, adapter_dir + ": no value_head.safetensors"
    model.load_state_dict(vhead, strict=False)
    assert torch.equal(model.v_head.summary.weight, vhead["v_head.summary.weight"])
    return model


# ---- the runs ----------------------------------------------------------------------

class Record(TrainerCallback):
    def __init__(self):
        self.logs = []

    def on_log(self, args, state, control, logs=None, **kw):
        if logs is not None and "loss" in logs:
            self.logs.append(dict(logs, step=state.global_step))


def exact_loss(cls):
    """cls whose training losses are kept unrounded, with whether the
    step's batch has padding (logits/ metrics average the pad positions
    too, whose outputs depend on the attention_mask; ft masks by the
    batches' lengths)."""
    class T(cls):
        def compute_loss(self, model, inputs, return_outputs=False, **kw):
            out = super().compute_loss(model, inputs, return_outputs, **kw)
            if model.training:
                self.exact.append(float((out[0] if return_outputs else out).detach()))
                masks = [v for k, v in inputs.items() if k.endswith("attention_mask")]
                self.padded.append(any(bool((m == 0).any()) for m in masks))
            return out
    return T


def train_args(out):
    return TrainingArguments(output_dir=out, max_steps=STEPS, learning_rate=LR, lr_scheduler_type="linear",
                             warmup_steps=0, weight_decay=0.0, max_grad_norm=1.0, optim="adamw_torch",
                             per_device_train_batch_size=1, gradient_accumulation_steps=1, logging_steps=1,
                             save_strategy="no", report_to=[], use_cpu=True, remove_unused_columns=False,
                             dataloader_num_workers=0, disable_tqdm=True, seed=42)


def run_case(kind, name, tmp):
    spec = dict(CASES[name])
    stage = spec["stage"]
    model_dir = os.path.join(PREF, kind + "-model-nodrop") if stage == "rm" else os.path.join(MODELS, "tiny-" + kind)
    adapter = os.path.join(PREF, kind + "-lora")
    fa = FinetuningArguments(finetuning_type="lora", disable_shuffling=True, **spec)
    pm = load_policy(model_dir, adapter, tempfile.mkdtemp(dir=tmp))
    data = kto_batches() if stage == "kto" else pair_batches(os.path.join(PREF, stage + ".jsonl"))
    common = dict(args=train_args(os.path.join(tmp, kind + "-" + name)), train_dataset=data,
                  data_collator=lambda feats: feats[0], tokenizer=None)
    if stage == "rm":
        cls, kwargs = exact_loss(PairwiseTrainer), dict(model=value_head_model(pm, adapter))
    elif stage == "dpo":
        cls, kwargs = exact_loss(CustomDPOTrainer), dict(model=pm, ref_model=None)
    else:
        cls, kwargs = exact_loss(CustomKTOTrainer), dict(model=pm, ref_model=None)
    trainer = cls(finetuning_args=fa, processor=None, **kwargs, **common)
    trainer.exact, trainer.padded = [], []
    rec = Record()
    trainer.add_callback(rec)
    trainer.train()
    assert len(rec.logs) == STEPS == len(trainer.exact), (len(rec.logs), len(trainer.exact))
    steps = []
    for lg, loss, padded in zip(rec.logs, trainer.exact, trainer.padded):
        assert abs(round(loss, 4) - lg["loss"]) < 1e-9, (loss, lg["loss"])
        row = {"step": lg["step"], "padded": padded, "loss": loss}
        for k, v in lg.items():
            if k not in ("loss", "step", "epoch"):
                row[k] = float(v)
        steps.append(row)
    return steps


def first_steps(kind):
    """Step 1 of make_pref_fixtures.py's hand-written 5-step runs."""
    with open(os.path.join(PREF, kind + "-steps.txt")) as f:
        return {ln.split()[0]: float(ln.split()[1]) for ln in f if ln.strip()}


def scores(model, batches):
    """PairwiseTrainer's scores: the value at each row's last attended position."""
    model.eval()
    out = []
    with torch.no_grad():
        for b in batches:
            _, _, values = model(input_ids=b["input_ids"], attention_mask=b["attention_mask"],
                                 output_hidden_states=True, return_dict=True, use_cache=False)
            sc = values.gather(-1, b["attention_mask"].sum(-1, keepdim=True) - 1).squeeze(-1)
            n = sc.shape[0] // 2
            out += [{"chosen": float(c), "rejected": float(r)} for c, r in zip(sc[:n], sc[n:])]
    return out


def check_value_head(d, model_dir, data, pred):
    """ft's rm directory d in TRL: the same scores as ft-train --do_predict
    wrote (rounded to 2 decimals there: agreement within 0.005 + 1e-5)."""
    with tempfile.TemporaryDirectory() as tmp:
        model = value_head_model(load_policy(model_dir, d, tmp), d)
        trl_scores = scores(model, pair_batches(data))
    with open(pred or os.path.join(d, "generated_predictions.jsonl")) as f:
        ft_scores = [json.loads(line) for line in f if line.strip()]
    assert len(ft_scores) == len(trl_scores), (len(ft_scores), len(trl_scores))
    bad = []
    for i, (a, b) in enumerate(zip(ft_scores, trl_scores)):
        for k in ("chosen", "rejected"):
            if not same_rounded(a[k], b[k]):
                bad.append(f"pair {i} {k}: ft {a[k]} TRL {b[k]:.6f}")
    worst = max(abs(a[k] - b[k]) for a, b in zip(ft_scores, trl_scores) for k in ("chosen", "rejected"))
    print(f"value head: {len(trl_scores)} pairs, worst |ft - TRL| = {worst:.6f} (ft rounds to 2 decimals)")
    if bad:
        sys.exit("value head: " + "; ".join(bad))
    print("value head OK: every score is TRL's, rounded as LLaMA-Factory rounds it")


def same_rounded(ft, ref):
    """ft's 2-decimal score is round(ref, 2); within 1e-4 of a rounding
    boundary either neighbour is (float32 on both sides)."""
    if abs(ft - round(ref, 2)) < 1e-9:
        return True
    return abs(abs(ref * 100 - int(ref * 100)) - 0.5) < 1e-2 and abs(ft - ref) <= 0.005 + 1e-4


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--check-value-head", metavar="DIR")
    ap.add_argument("--model", default=os.path.join(PREF, "llama-model-nodrop"))
    ap.add_argument("--data", default=os.path.join(PREF, "rm.jsonl"))
    ap.add_argument("--predictions", help="ft-train --do_predict's file (default DIR/generated_predictions.jsonl)")
    ap.add_argument("--kinds", default="llama,qwen2")
    a = ap.parse_args()
    torch.set_num_threads(1)
    if a.check_value_head:
        check_value_head(a.check_value_head, a.model, a.data, a.predictions)
        return
    transformers.logging.set_verbosity_error()
    meta = {"producer": "make_pref_trl_fixtures.py", "torch": torch.__version__,
            "transformers": transformers.__version__, "trl": trl.__version__, "peft": peft.__version__,
            "llamafactory": llamafactory.__version__, "steps": STEPS, "learning_rate": LR}
    res = {"meta": meta}
    rm_scores = {"meta": meta}
    tmp = tempfile.mkdtemp()
    try:
        for kind in a.kinds.split(","):
            first = first_steps(kind)
            res[kind] = {}
            for name in CASES:
                res[kind][name] = run_case(kind, name, tmp)
                got = res[kind][name][0]["loss"]
                assert abs(got - first[name]) < 1e-5, (kind, name, got, first[name])
                print(kind, name, " ".join(f"{r['loss']:.6f}" for r in res[kind][name]), flush=True)
            adapter = os.path.join(PREF, kind + "-lora")
            vm = value_head_model(load_policy(os.path.join(PREF, kind + "-model-nodrop"), adapter,
                                              tempfile.mkdtemp(dir=tmp)), adapter)
            rm_scores[kind] = scores(vm, pair_batches(os.path.join(PREF, "rm.jsonl")))
    finally:
        shutil.rmtree(tmp)
    write_rows(os.path.join(PREF, "trl-steps.json"), res)
    write_rows(os.path.join(PREF, "trl-rm-scores.json"), rm_scores)


def write_rows(path, obj):
    """JSON with one step (or pair) per line: small, and diffs read per step."""
    def dump(v, ind):
        if isinstance(v, dict) and not all(not isinstance(x, (dict, list)) for x in v.values()):
            items = [f'{" " * (ind + 1)}{json.dumps(k)}: {dump(x, ind + 1)}' for k, x in v.items()]
            return "{\n" + ",\n".join(items) + "\n" + " " * ind + "}"
        if isinstance(v, list):
            return "[\n" + ",\n".join(" " * (ind + 1) + dump(x, ind + 1) for x in v) + "\n" + " " * ind + "]"
        return json.dumps(v)
    with open(path, "w") as f:
        f.write(dump(obj, 0) + "\n")


if __name__ == "__main__":
    main()
