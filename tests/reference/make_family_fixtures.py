#!/usr/bin/env python3
"""make_family_fixtures.py - transformers/PEFT reference for the model
families of lib/model/arch.c (tests/unit/test_families.c,
tests/bats/families.bats).

Run from the repository root:

    /work/venv/bin/python tests/reference/make_family_fixtures.py

writes tests/fixtures/families/<family>/ for each family (qwen3,
r1distill: DeepSeek-R1-Distill-Qwen's Qwen2 shape, phi3, phi4mini:
Phi-4-mini's partial rotary embeddings with longrope, gemma2, gemma3; or
those named as arguments): a tiny random model saved sharded, full and LoRA gradients, one
AdamW step, a greedy generation and the PEFT adapter used for the merge
check.  Batches, losses and the LoRA construction are those of
make_model_fixtures.py (imported, one copy of each helper).

    /work/venv/bin/python tests/reference/make_family_fixtures.py rope

writes tests/fixtures/families/rope.safetensors: yarn's inverse
frequencies and attention factor from transformers' ROPE_INIT_FUNCTIONS
for several parameter sets, and the qwen3 fixture's logits and greedy
generation under llamafactory's own configure_rope (--rope_scaling
linear, dynamic, yarn, llama3 with model_max_length 200).

    /work/venv/bin/python tests/reference/make_family_fixtures.py longrope

writes tests/fixtures/families/phi3-longrope/: a Phi-3 with longrope RoPE
and its logits, gradients and greedy generation across the switch from
the short to the long factors.

    /work/venv/bin/python tests/reference/make_family_fixtures.py pref

writes tests/fixtures/families/gemma2/pref.safetensors: the preference
stages' log-probabilities of Gemma 2's soft-capped logits, the logit
means and the gradients of a weighted sum of them, full and LoRA.

    /work/venv/bin/python tests/reference/make_family_fixtures.py tokloss

writes tests/fixtures/families/gemma2/tokloss.safetensors: LLaMA-Factory's
dft_loss_func and eaft_loss_func (eaft_alpha 0.5; taken from $LF_SRC's
train/trainer_utils.py as make_sftloss_fixtures.py does) on Gemma 2's
soft-capped logits with num_items_in_batch 1 (the weighted sum), and
asft_loss_func (asft_alpha 0.5, a mean) against the model with the
fixture's LoRA adapter as the reference; each with the gradient of every
tensor of the full model.

    /work/venv/bin/python tests/reference/make_family_fixtures.py templates [../shared]

writes tests/fixtures/families/templates.json: the family templates
(qwen3, qwen3_nothink, deepseekr1) encoded by llamafactory's own
Template.encode_oneturn / encode_multiturn ($LF_SRC, default /work/lf/src,
imported as llamafactory: src/ of github:hiyouga/LLaMA-Factory) with the Qwen3 tokenizer of ../shared/tokenizers/qwen3, for
single-turn, multi-turn (thoughts in earlier turns), system and tool
conversations, under each enable_thinking / preserve_thinking /
mask_history setting that changes the result.

Made with torch 2.15.0, transformers 5.25.0, peft 0.21.2 (float32,
1 thread, eager attention, fixed seeds).
"""
import json
import os
import sys

import torch
from safetensors.torch import save_file
from transformers import (Gemma2Config, Gemma2ForCausalLM, Gemma3ForCausalLM, Gemma3TextConfig,
                          Phi3Config, Phi3ForCausalLM, Qwen2Config, Qwen2ForCausalLM, Qwen3Config,
                          Qwen3ForCausalLM)
from peft import get_peft_model

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import make_model_fixtures as mm  # noqa: E402  (B, T, batches, losses, LoRA)

torch.set_num_threads(1)
torch.set_default_dtype(torch.float32)

OUT = "tests/fixtures/families"
ALL_LINEAR = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
PHI3_LINEAR = ["qkv_proj", "o_proj", "gate_up_proj", "down_proj"]   # PEFT's names for Phi-3
LR, WD = 1e-3, 0.1


def qwen3_config():
    # head_dim 24 is not hidden/heads (16): Qwen3 states it explicitly.
    return Qwen3Config(
        vocab_size=256, hidden_size=64, intermediate_size=96,
        num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
        head_dim=24, max_position_embeddings=64, rms_norm_eps=1e-6,
        rope_theta=1000000.0, tie_word_embeddings=True, attention_bias=False,
        use_sliding_window=False, bos_token_id=1, eos_token_id=2, pad_token_id=0,
        dtype="float32")


def gemma2_config():
    # small soft-caps and a 4-token window so tanh and the mask matter at
    # T=16; query_pre_attn_scalar 24 is not head_dim
    return Gemma2Config(
        vocab_size=256, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, head_dim=16, query_pre_attn_scalar=24,
        sliding_window=4, attn_logit_softcapping=5.0, final_logit_softcapping=3.0,
        max_position_embeddings=64, rms_norm_eps=1e-6, rope_theta=10000.0,
        tie_word_embeddings=True, bos_token_id=1, eos_token_id=2, pad_token_id=0, dtype="float32")


def gemma3_config():
    return Gemma3TextConfig(
        vocab_size=256, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, head_dim=16, query_pre_attn_scalar=24,
        sliding_window=4, layer_types=["sliding_attention", "full_attention"],
        rope_parameters={"full_attention": {"rope_type": "linear", "factor": 2.0, "rope_theta": 1000000.0},
                         "sliding_attention": {"rope_type": "default", "rope_theta": 10000.0}},
        max_position_embeddings=64, rms_norm_eps=1e-6, tie_word_embeddings=True,
        bos_token_id=1, eos_token_id=2, pad_token_id=0, dtype="float32")


def phi3_config():
    return Phi3Config(
        vocab_size=256, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
        original_max_position_embeddings=64, rms_norm_eps=1e-5, rope_theta=10000.0,
        sliding_window=None, tie_word_embeddings=False, resid_pdrop=0.0, embd_pdrop=0.0,
        attention_dropout=0.0, bos_token_id=1, eos_token_id=2, pad_token_id=0, dtype="float32")


def phi4mini_config():
    """Phi-4-mini's shape: partial_rotary_factor 0.75 (RoPE on 12 of each
    head's 16 values), longrope, tied embeddings.  The original length 12
    is below the batches' 16 tokens, so training uses the long factors,
    the greedy generation's 6-token prefill the short ones and then the
    long ones."""
    g = torch.Generator().manual_seed(4)
    rd = int(16 * 0.75)
    return Phi3Config(
        vocab_size=256, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
        original_max_position_embeddings=12, rms_norm_eps=1e-5, partial_rotary_factor=0.75,
        rope_parameters={"rope_type": "longrope", "rope_theta": 10000.0, "partial_rotary_factor": 0.75,
                         "short_factor": (1 + torch.rand(rd // 2, generator=g)).tolist(),
                         "long_factor": (1 + 4 * torch.rand(rd // 2, generator=g)).tolist()},
        sliding_window=None, tie_word_embeddings=True, resid_pdrop=0.0, embd_pdrop=0.0,
        attention_dropout=0.0, bos_token_id=1, eos_token_id=2, pad_token_id=0, dtype="float32")


def r1distill_config():
    """DeepSeek-R1-Distill-Qwen's shape: a Qwen2 (q/k/v biases, untied,
    sliding_window set but use_sliding_window false, as its config)."""
    return Qwen2Config(
        vocab_size=256, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
        rms_norm_eps=1e-6, rope_theta=10000.0, sliding_window=4096, use_sliding_window=False,
        max_window_layers=2, tie_word_embeddings=False, bos_token_id=1, eos_token_id=2,
        pad_token_id=0, dtype="float32")


FAMILIES = {"qwen3": (Qwen3ForCausalLM, qwen3_config, 2025),
            "r1distill": (Qwen2ForCausalLM, r1distill_config, 2031),
            "phi3": (Phi3ForCausalLM, phi3_config, 2028),
            "phi4mini": (Phi3ForCausalLM, phi4mini_config, 2030),
            "gemma2": (Gemma2ForCausalLM, gemma2_config, 2026),
            "gemma3": (Gemma3ForCausalLM, gemma3_config, 2027)}


def build(fam):
    cls, cfg, seed = FAMILIES[fam]
    torch.manual_seed(seed)
    m = cls._from_config(cfg(), attn_implementation="eager")
    with torch.no_grad():   # random norms so q_norm/k_norm matter
        for n, p in m.named_parameters():
            if "norm" in n:
                p.copy_(1.0 + 0.1 * torch.randn_like(p))
    return m.float().eval()


def load(fam, d):
    return FAMILIES[fam][0].from_pretrained(d, dtype=torch.float32,
                                            attn_implementation="eager").eval()


def grads_of(m, ids, lab, peft_names=False):
    m.zero_grad()
    out = m(input_ids=ids.long())
    ls, n = mm.loss_sum(out.logits, lab)
    ls.backward()
    t = {"batch.input_ids": ids, "batch.labels": lab,
         "logits": out.logits.detach().reshape(mm.B * mm.T, -1).contiguous(),
         "loss_sum": ls.detach().reshape(1), "n_tokens": torch.tensor([float(n)])}
    for name, p in m.named_parameters():
        if p.requires_grad and p.grad is not None:
            nm = name.replace(".default", "") if peft_names else name
            t["grad." + nm] = p.grad.detach().clone()
    return t


def adamw_step(m, ids, lab):
    """One AdamW step of full fine-tuning on the batch (grad_scale
    1/n_tokens, no clipping), decay groups as transformers'."""
    decay = mm.decay_names(m)
    named = [(n, p) for n, p in m.named_parameters()]
    opt = torch.optim.AdamW(
        [{"params": [p for n, p in named if n in decay], "weight_decay": WD},
         {"params": [p for n, p in named if n not in decay], "weight_decay": 0.0}],
        lr=LR, betas=mm.BETAS, eps=mm.EPS)
    m.zero_grad()
    ls, n = mm.loss_sum(m(input_ids=ids.long()).logits, lab)
    (ls / n).backward()
    opt.step()
    return {"after." + n: p.detach().clone() for n, p in named}


def greedy(m, prompt, n=20):
    with torch.no_grad():
        out = m.generate(input_ids=prompt[None].long(), max_new_tokens=n, do_sample=False,
                         min_new_tokens=n, use_cache=True, pad_token_id=0)
    return out[0, prompt.numel():].to(torch.int32).contiguous()


def family(fam):
    d = os.path.join(OUT, fam)
    mdir = os.path.join(d, "model")
    os.makedirs(d, exist_ok=True)
    build(fam).save_pretrained(mdir, safe_serialization=True, max_shard_size="60KB")
    (ids, lab), = mm.make_batches(1, 77)
    save_file(grads_of(load(fam, mdir), ids, lab), os.path.join(d, "full-grads.safetensors"))

    base = load(fam, mdir)
    pm = get_peft_model(base, mm.lora_cfg(PHI3_LINEAR if fam.startswith("phi") else ALL_LINEAR))
    g = torch.Generator().manual_seed(99)
    with torch.no_grad():
        for n, p in pm.named_parameters():
            if "lora_B" in n:
                p.copy_(0.1 * torch.randn(p.shape, generator=g))
    pm.save_pretrained(os.path.join(d, "lora"))
    t = grads_of(pm, ids, lab, peft_names=True)
    pm.eval()
    prompt = ids[0, :6].clone()
    t["gen.prompt"] = prompt
    t["gen.lora_tokens"] = greedy(pm, prompt)
    save_file(t, os.path.join(d, "lora-grads.safetensors"))

    m = load(fam, mdir)
    extra = {"gen.prompt": prompt, "gen.tokens": greedy(m, prompt)}
    extra.update(adamw_step(m, ids, lab))
    save_file(extra, os.path.join(d, "step.safetensors"))
    print(fam, "ok")


THINK = "<think>\nLet me see.\n</think>\n\n"
TOOLS = json.dumps([{"name": "get_weather", "description": "Get the weather in a city",
                     "parameters": {"type": "object",
                                    "properties": {"city": {"type": "string"}},
                                    "required": ["city"]}}])
CASES = [
    ("single", "", "", [("user", "Hi there"), ("assistant", "Hello.")]),
    ("single_thought", "", "", [("user", "2+2?"), ("assistant", THINK + "4")]),
    ("multi", "", "", [("user", "Hi"), ("assistant", THINK + "Hello."),
                       ("user", "2+2?"), ("assistant", "<think>\nadd\n</think>\n\n4"),
                       ("user", "Thanks"), ("assistant", "You're welcome!")]),
    ("system", "You are terse.", "", [("user", "Say hi"), ("assistant", "hi")]),
    ("tools", "", TOOLS, [("user", "Weather in Paris?"),
                          ("function", '{"name": "get_weather", "arguments": {"city": "Paris"}}'),
                          ("observation", '{"temp": 21}'), ("assistant", "It is 21 degrees.")]),
]
SETTINGS = [  # (template, enable_thinking, preserve_thinking, mask_history)
    ("qwen3", True, False, False), ("qwen3", False, False, False),
    ("qwen3", True, True, False), ("qwen3", True, False, True),
    ("qwen3_nothink", True, False, False), ("deepseekr1", True, False, False),
    ("deepseekr1", False, False, False),
]


def templates(shared):
    import copy
    import_llamafactory()
    from llamafactory.data.template import TEMPLATES
    from transformers import AutoTokenizer
    rows = []
    for name, think, keep, mask in SETTINGS:
        tok = AutoTokenizer.from_pretrained(os.path.join(shared, "tokenizers", "qwen3"))
        t = copy.deepcopy(TEMPLATES[name])
        t.enable_thinking, t.preserve_thinking = think, keep
        t.fix_special_tokens(tok)
        for case, system, tools, msgs in CASES:
            messages = [{"role": r, "content": c} for r, c in msgs]
            pairs = t.encode_multiturn(tok, copy.deepcopy(messages), system, tools,
                                       mask and not keep)
            prompt, response = t.encode_oneturn(tok, copy.deepcopy(messages), system, tools)
            rows.append({"template": name, "enable_thinking": think, "preserve_thinking": keep,
                         "mask_history": mask, "case": case, "system": system, "tools": tools,
                         "messages": messages, "multiturn": [list(p) for p in pairs],
                         "oneturn": [prompt, response]})
    # templates whose tokens the Qwen3 tokenizer lacks (llamafactory would
    # add them): Template._encode's elements as text, bos "<s>", eos the
    # first stop word, a named token ({"<|endoftext|>"}) as itself, as
    # make_llamafactory_fixtures.py renders; the Phi templates with tools
    # too (phi4_mini's format_tools is a StringFormatter)
    for name in ["phi4", "gemma3", "phi4_mini", "phi", "phi_small"]:
        t = copy.deepcopy(TEMPLATES[name])
        eos = t.stop_words[0]

        def to_text(tokenizer, elements, eos=eos):
            out = ""
            for e in elements:
                out += e if isinstance(e, str) else e["token"] if isinstance(e, dict) else \
                    "<s>" if "bos_token" in e else eos if "eos_token" in e else next(iter(e))
            return [out]

        t._convert_elements_to_ids = to_text
        for case, system, tools, msgs in CASES:
            if tools and name in ("phi4", "gemma3"):
                continue  # as first made: without tools
            messages = [{"role": r, "content": c} for r, c in msgs]
            rows.append({"template": name, "case": case, "system": system, "tools": tools,
                         "messages": messages, "eos": eos,
                         "rendered": [m[0] for m in t._encode(None, messages, system, tools)]})
    with open(os.path.join(OUT, "templates.json"), "w") as f:
        json.dump(rows, f, ensure_ascii=False, indent=0)
        f.write("\n")
    print("templates.json:", len(rows), "cases")


def import_llamafactory():
    import importlib.machinery
    import types
    os.environ.setdefault("DISABLE_VERSION_CHECK", "1")
    ta = types.ModuleType("torchaudio")
    ta.__spec__ = importlib.machinery.ModuleSpec("torchaudio", None)
    sys.modules.setdefault("torchaudio", ta)
    sys.path.insert(0, os.environ.get("LF_SRC", "/work/lf/src"))
    # llamafactory.model imports TRL's value-head model, which this TRL no
    # longer has; rope.py does not use it.
    import trl
    if not hasattr(trl, "AutoModelForCausalLMWithValueHead"):
        trl.AutoModelForCausalLMWithValueHead = object


YARN_CASES = {  # name: (rope_parameters beyond rope_theta 1e6, max_position_embeddings)
    "yarn": ({"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 16}, 64),
    "yarn_mscale": ({"rope_type": "yarn", "factor": 8.0, "original_max_position_embeddings": 16,
                     "mscale": 0.707, "mscale_all_dim": 1.0, "beta_fast": 16, "beta_slow": 2}, 128),
    "yarn_notrunc": ({"rope_type": "yarn", "factor": 2.0, "original_max_position_embeddings": 32,
                      "truncate": False, "attention_factor": 1.25}, 64),
    "yarn_nofactor": ({"rope_type": "yarn", "factor": None, "original_max_position_embeddings": 16}, 64),
}


class Recorder:
    """A config stand-in that records what configure_rope sets."""
    def __init__(self, cfg):
        self.__dict__["_cfg"], self.__dict__["set"] = cfg, {}

    def __getattr__(self, k):
        return self.set[k] if k in self.set else getattr(self._cfg, k)

    def __setattr__(self, k, v):
        self.set[k] = v


def lf_configure_rope(configure_rope, cfg, args):
    """llamafactory's configure_rope, its settings applied to a
    transformers 5 config.  Run directly it fails there: it sets
    max_position_embeddings to a float (old * factor), which the strict
    config refuses, and its rope_scaling dict has no rope_theta (which
    transformers 5 then sets to None).  So the integer value is set and
    rope_theta kept, the only working reading of it."""
    rec = Recorder(cfg)
    configure_rope(rec, args)
    cfg.max_position_embeddings = int(rec.set["max_position_embeddings"])
    cfg.rope_parameters = dict(rec.set["rope_scaling"], rope_theta=cfg.rope_parameters["rope_theta"])


def rope():
    """yarn's inv_freq and attention factor (transformers), and the Qwen3
    fixture under llamafactory's --rope_scaling (configure_rope with
    model_max_length 200, as cutoff_len 200 in training): logits and a
    greedy generation for each type."""
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS
    import_llamafactory()
    from types import SimpleNamespace
    from llamafactory.extras.constants import RopeScaling
    from llamafactory.model.model_utils.rope import configure_rope
    t = {}
    for name, (rp, mp) in YARN_CASES.items():
        cfg = qwen3_config()
        cfg.max_position_embeddings = mp
        cfg.rope_parameters = dict(rp, rope_theta=1000000.0)
        inv, att = ROPE_INIT_FUNCTIONS["yarn"](cfg, "cpu")
        t["inv_freq." + name] = inv.float().contiguous()
        t["attention_factor." + name] = torch.tensor([float(att)], dtype=torch.float64)
    mdir = os.path.join(OUT, "qwen3", "model")
    (ids, lab), = mm.make_batches(1, 77)
    prompt = ids[0, :6].clone()
    for kind in ["linear", "dynamic", "yarn", "llama3"]:
        cfg = Qwen3Config.from_pretrained(mdir)
        lf_configure_rope(configure_rope, cfg,
                          SimpleNamespace(rope_scaling=RopeScaling(kind), model_max_length=200))
        m = Qwen3ForCausalLM.from_pretrained(mdir, config=cfg, dtype=torch.float32,
                                             attn_implementation="eager").eval()
        with torch.no_grad():
            t["logits." + kind] = m(input_ids=ids.long()).logits.reshape(mm.B * mm.T, -1).contiguous()
        t["gen." + kind] = greedy(m, prompt)
        t["max_pos." + kind] = torch.tensor([cfg.max_position_embeddings], dtype=torch.int32)
    t["batch.input_ids"], t["gen.prompt"] = ids, prompt
    save_file(t, os.path.join(OUT, "rope.safetensors"))
    print("rope.safetensors:", len(t), "tensors")


def longrope():
    """Phi-3 with longrope (original 16 of 64 positions): logits of a
    24-token batch (long factors) and of its first 12 tokens (short),
    gradients of the long one, and a greedy generation of 20 tokens after
    6 (it crosses 16, where transformers switches to the long factors)."""
    cfg = phi3_config()
    cfg.original_max_position_embeddings = 16
    hd = cfg.hidden_size // cfg.num_attention_heads
    g = torch.Generator().manual_seed(3)
    cfg.rope_parameters = {"rope_type": "longrope", "rope_theta": 10000.0, "partial_rotary_factor": 1.0,
                           "short_factor": (1 + torch.rand(hd // 2, generator=g)).tolist(),
                           "long_factor": (1 + 4 * torch.rand(hd // 2, generator=g)).tolist()}
    torch.manual_seed(2029)
    m = Phi3ForCausalLM._from_config(cfg, attn_implementation="eager").float().eval()
    d = os.path.join(OUT, "phi3-longrope")
    m.save_pretrained(os.path.join(d, "model"), safe_serialization=True)
    m = Phi3ForCausalLM.from_pretrained(os.path.join(d, "model"), dtype=torch.float32,
                                        attn_implementation="eager").eval()
    ids = torch.randint(3, 256, (1, 24), generator=g, dtype=torch.int32)
    lab = ids.clone()
    lab[0, :4] = -100
    m.zero_grad()
    out = m(input_ids=ids.long())
    ls, n = mm.loss_sum(out.logits, lab)
    ls.backward()
    t = {"batch.input_ids": ids, "batch.labels": lab, "logits": out.logits[0].detach().contiguous(),
         "loss_sum": ls.detach().reshape(1)}
    for name, p in m.named_parameters():
        t["grad." + name] = p.grad.detach().clone()
    with torch.no_grad():
        t["logits.short"] = m(input_ids=ids[:, :12].long()).logits[0].contiguous()
    t["gen.prompt"] = ids[0, :6].clone()
    t["gen.tokens"] = greedy(m, ids[0, :6])
    save_file(t, os.path.join(d, "longrope.safetensors"))
    print("phi3-longrope ok")


def pref_logps(m, ids, lab, w):
    """The preference stages' log-probabilities (llamafactory's
    get_batch_logps on the model's logits, soft-capped by Gemma 2's
    forward), every position's logit mean (the logits/ metrics), and the
    gradients of sum(w * logp)."""
    m.zero_grad()
    logits = m(input_ids=ids.long()).logits.float()
    tg = lab[:, 1:].long()
    mask = tg != -100
    lp = torch.gather(logits[:, :-1].log_softmax(-1), 2, tg.clamp(min=0).unsqueeze(2)).squeeze(2) * mask
    full = torch.zeros(ids.shape)
    full[:, :-1] = lp
    (full * w).sum().backward()
    t = {"logp": full.detach().reshape(-1).contiguous(),
         "lmean": logits.detach().mean(-1).reshape(-1).contiguous()}
    for name, p in m.named_parameters():
        if p.requires_grad and p.grad is not None:
            t["grad." + name.replace(".default", "")] = p.grad.detach().clone()
    return t


def pref():
    """Gemma 2 (final_logit_softcapping 3) through the preference stages'
    log-prob head: logp, logit means and the gradients of sum(w * logp)
    for random weights w, full and with the fixture's LoRA adapter."""
    from peft import PeftModel
    d = os.path.join(OUT, "gemma2")
    (ids, lab), = mm.make_batches(1, 77)
    w = torch.randn(ids.shape, generator=torch.Generator().manual_seed(5))
    w[:, :-1] *= lab[:, 1:] != -100
    w[:, -1] = 0
    t = {"batch.input_ids": ids, "batch.labels": lab, "w": w.reshape(-1).contiguous()}
    for k, v in pref_logps(load("gemma2", os.path.join(d, "model")), ids, lab, w).items():
        t["full." + k] = v
    pm = PeftModel.from_pretrained(load("gemma2", os.path.join(d, "model")), os.path.join(d, "lora"),
                                   is_trainable=True)
    for k, v in pref_logps(pm, ids, lab, w).items():
        t["lora." + k] = v
    save_file(t, os.path.join(d, "pref.safetensors"))
    print("gemma2/pref.safetensors:", len(t), "tensors")


def tokloss():
    """Gemma 2 under the DFT and EAFT token losses: the weighted sums and
    the gradients of each, full fine-tuning."""
    from peft import PeftModel
    import make_asft_fixtures
    import make_sftloss_fixtures
    lf = make_sftloss_fixtures.lf_losses()
    asft = make_asft_fixtures.lf_losses()["asft_loss_func"]
    d = os.path.join(OUT, "gemma2")
    (ids, lab), = mm.make_batches(1, 77)
    t = {"batch.input_ids": ids, "batch.labels": lab}
    ref = PeftModel.from_pretrained(load("gemma2", os.path.join(d, "model")), os.path.join(d, "lora")).eval()
    with torch.no_grad():
        ref_logits = ref(input_ids=ids.long()).logits
    one = torch.tensor(1)
    losses = {"dft": lambda o, y: lf["dft_loss_func"](o, y, one),
              "eaft": lambda o, y: lf["eaft_loss_func"](o, y, one, 0.5),
              "asft": lambda o, y: asft(o, y, ref_logits, asft_alpha=0.5)}
    for name, f in losses.items():
        m = load("gemma2", os.path.join(d, "model"))
        m.zero_grad()
        loss = f({"logits": m(input_ids=ids.long()).logits}, lab.long())
        loss.backward()
        t[name + ".loss_sum"] = loss.detach().reshape(1).double()
        for pn, p in m.named_parameters():
            if p.grad is not None:
                t[name + ".grad." + pn] = p.grad.detach().clone()
        print(name, float(loss))
    save_file(t, os.path.join(d, "tokloss.safetensors"))


if __name__ == "__main__":
    if sys.argv[1:2] == ["tokloss"]:
        tokloss()
    elif sys.argv[1:2] == ["longrope"]:
        longrope()
    elif sys.argv[1:2] == ["pref"]:
        pref()
    elif sys.argv[1:2] == ["rope"]:
        rope()
    elif sys.argv[1:2] == ["templates"]:
        templates(sys.argv[2] if len(sys.argv) > 2 else "../shared")
    else:
        for f in (sys.argv[1:] or FAMILIES):
            family(f)
