#!/usr/bin/env python3
"""make_vocab_fixtures.py - LLaMA-Factory's vocabulary extension, the model
side (test_vocab.c): resize_embedding_layer's rows, a LoRA +
modules_to_save training step, and a PEFT adapter with the resized
embeddings.

Run from the repository root:
    /work/venv/bin/python tests/reference/make_vocab_fixtures.py
LLaMA-Factory's functions come from its source (model/model_utils/embedding.py
at commit ff6d4d12, read from LF_SRC when set, else from the mirror the
`fetch` tool makes): the module's function definitions are compiled on
their own (its imports need the whole package), as make_sftloss_fixtures.py
does with trainer_utils.py.

A tiny random Llama (untied, vocab 802 = the synth-llama3 tokenizer,
hidden 16) gets the tokens of LLaMA-Factory's patch_tokenizer: add_tokens
"<tool_x>" and the 16 special tokens of
examples/extras/multi_tokens/tokens_cfg.yaml (len(tokenizer) 819, resized to
832).  Writes tests/fixtures/vocab/:
  base/          the model before (config, weights, tokenizer files)
  rows.safetensors
      pre_embed, pre_head     the matrices after resize_token_embeddings,
                              before the init (padding rows random)
      avg_embed, avg_head     noise_init's mean (its deterministic part)
      noise_embed             noise_init's rows (mean + torch's noise)
      desc_embed, desc_head   desc_init's matrices (deterministic)
      new_ids                 _resolve_new_token_ids
  tokens.json    len(tokenizer), the new ids, each description's ids
  resized/       the model after desc_init (vocab 832)
  init/          a PEFT adapter on resized/: LoRA (r 4, q_proj v_proj,
                 lora_B random so every gradient is non-zero) with
                 modules_to_save embed_tokens, lm_head
  step.safetensors  input_ids, labels; loss; the gradients of the LoRA
                 factors and of the two copies after one backward (HF's mean
                 over label tokens)
  adapter/       init/ after one SGD step (lr 0.5), saved by PEFT
  logits.safetensors  logits of base/ + adapter/ loaded in PEFT (on the
                 LLaMA-Factory-resized base) for input_ids
Made with torch 2.15.0, transformers 5.25.0, peft 0.21 (CPU, float32, 1 thread).
"""
import ast
import json
import math
import os
import shutil
import subprocess
from collections.abc import Iterable
from contextlib import nullcontext
from typing import Optional

import torch
from omegaconf import OmegaConf
from peft import LoraConfig, PeftModel, get_peft_model
from safetensors.torch import save_file
from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

torch.set_num_threads(1)
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
OUT = os.path.join(ROOT, "tests", "fixtures", "vocab")
TOK = os.path.join(ROOT, "tests", "fixtures", "tokenizer", "synth-llama3")
CFG = os.path.join(ROOT, "tests", "fixtures", "lf-examples", "extras", "multi_tokens", "tokens_cfg.yaml")
MIRROR = "/work/.mirror/hiyouga+LLaMA-Factory/repo"
REL = "src/llamafactory/model/model_utils/embedding.py"


def embedding_py():
    src = os.environ.get("LF_SRC")
    if src:
        path = os.path.join(src, "llamafactory", "model", "model_utils", "embedding.py")
        return open(path).read(), path
    text = subprocess.run(["git", "-C", MIRROR, "show", "ff6d4d12:" + REL], check=True,
                          capture_output=True, text=True).stdout
    return text, REL


class _Log:
    def warning_rank0(self, *a):
        pass

    info_rank0 = warning_rank0


def lf_embedding(hook):
    text, path = embedding_py()
    tree = ast.parse(text, path)
    tree.body = [n for n in tree.body if isinstance(n, ast.FunctionDef)]
    ns = {"torch": torch, "math": math, "Optional": Optional, "Iterable": Iterable,
          "nullcontext": nullcontext, "is_deepspeed_zero3_enabled": lambda: False, "logger": _Log()}
    exec(compile(tree, path, "exec"), ns)
    init = ns["_initialize_embeddings"]

    def spy(embed_weight, *a, **k):   # the matrix as the resize left it, then LF's init
        hook.append(embed_weight.clone())
        return init(embed_weight, *a, **k)

    ns["_initialize_embeddings"] = spy
    return ns


def tokenizer():
    tok = AutoTokenizer.from_pretrained(OUT + "/base")
    desc = OmegaConf.to_container(OmegaConf.load(CFG))
    add, special = ["<tool_x>"], list(desc.keys())
    tok.add_tokens(new_tokens=add, special_tokens=False)   # patch_tokenizer
    tok.add_tokens(new_tokens=special, special_tokens=True)
    return tok, add + special, desc


def base_model():
    cfg = LlamaConfig(vocab_size=802, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                      num_attention_heads=2, num_key_value_heads=1, head_dim=8,
                      max_position_embeddings=64, rms_norm_eps=1e-6, tie_word_embeddings=False,
                      bos_token_id=1, eos_token_id=2)
    torch.manual_seed(0)
    m = LlamaForCausalLM(cfg).float()
    return m


def resized(method, tok, new_tokens, desc):
    hook = []
    ns = lf_embedding(hook)
    m = LlamaForCausalLM.from_pretrained(OUT + "/base")
    torch.manual_seed(1)
    with torch.no_grad():
        ns["resize_embedding_layer"](m, tok, new_tokens=new_tokens, new_special_tokens_config=desc,
                                     init_special_tokens=method)
    ids = ns["_resolve_new_token_ids"](new_tokens, tok, m.get_input_embeddings().weight.size(0))
    return m, hook, ids, ns


def main():
    if os.path.isdir(OUT):
        shutil.rmtree(OUT)
    os.makedirs(OUT)
    base = base_model()
    base.save_pretrained(OUT + "/base")
    for f in os.listdir(TOK):
        shutil.copy(os.path.join(TOK, f), OUT + "/base")
    with open(OUT + "/base/tokenizer_config.json", "w") as f:
        json.dump({"bos_token": "<|begin_of_text|>", "eos_token": "<|eot_id|>"}, f)
    tok, new_tokens, desc = tokenizer()

    m_noise, pre, ids, ns = resized("noise_init", tok, new_tokens, desc)
    n_new = m_noise.get_input_embeddings().weight.size(0) - 802
    avg_e = ns["_existing_embeddings"](pre[0], n_new, ids).mean(dim=0)
    avg_h = ns["_existing_embeddings"](pre[1], n_new, ids).mean(dim=0)
    m_desc, pre2, _, _ = resized("desc_init", tok, new_tokens, desc)
    assert torch.equal(pre[0], pre2[0]) and torch.equal(pre[1], pre2[1]), "resize not reproducible"
    rows = {"pre_embed": pre[0], "pre_head": pre[1], "avg_embed": avg_e, "avg_head": avg_h,
            "noise_embed": m_noise.get_input_embeddings().weight.detach(),
            "desc_embed": m_desc.get_input_embeddings().weight.detach(),
            "desc_head": m_desc.get_output_embeddings().weight.detach(),
            "new_ids": torch.tensor(ids, dtype=torch.int32)}
    save_file({k: v.contiguous() for k, v in rows.items()}, OUT + "/rows.safetensors")
    descs = {t: tok(d, add_special_tokens=False)["input_ids"] for t, d in desc.items()}
    json.dump({"len": len(tok), "vocab": m_desc.config.vocab_size, "new_ids": ids,
               "targets": [tok.convert_tokens_to_ids(t) for t in desc], "descs": list(descs.values())},
              open(OUT + "/tokens.json", "w"), indent=1)
    m_desc.save_pretrained(OUT + "/resized")

    # LoRA + modules_to_save (init_adapter with resize_vocab), one backward
    cfg = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], lora_dropout=0.0,
                     modules_to_save={"embed_tokens", "lm_head"}, task_type="CAUSAL_LM")
    pm = get_peft_model(m_desc, cfg)
    g = torch.Generator().manual_seed(2)
    with torch.no_grad():
        for n, p in pm.named_parameters():
            if "lora_B" in n:
                p.copy_(torch.randn(p.shape, generator=g) * 0.1)
    pm.save_pretrained(OUT + "/init")
    text = ["<|START_OF_SVG|><|start_of_rect|> a rect<|end_of_rect|><|END_OF_SVG|> <tool_x>",
            "hello <|start_of_text|>the text<|end_of_text|> <|start_of_style|>x<|end_of_style|>"]
    enc = [tok(t, add_special_tokens=False)["input_ids"] for t in text]
    T = max(len(e) for e in enc)
    input_ids = torch.tensor([e + [0] * (T - len(e)) for e in enc])
    labels = torch.tensor([e + [-100] * (T - len(e)) for e in enc])
    labels[:, :2] = -100
    out = pm(input_ids=input_ids, labels=labels)
    out.loss.backward()
    step = {"input_ids": input_ids.int(), "labels": labels.int(), "loss": out.loss.detach().reshape(1)}
    for n, p in pm.named_parameters():
        if p.requires_grad:
            step["grad." + n.replace(".default", "").replace(".modules_to_save", "")] = p.grad
    save_file({k: v.contiguous() for k, v in step.items()}, OUT + "/step.safetensors")
    with torch.no_grad():
        for p in pm.parameters():
            if p.requires_grad:
                p -= 0.5 * p.grad
    pm.save_pretrained(OUT + "/adapter")

    # the adapter on a fresh base, as LLaMA-Factory loads it for inference
    # (the same tokens, so the same resize, then PEFT's copies replace the rows)
    m2, _, _, _ = resized("noise_init", tok, new_tokens, desc)
    pm2 = PeftModel.from_pretrained(m2, OUT + "/adapter")
    with torch.no_grad():
        logits = pm2(input_ids=input_ids).logits
    save_file({"logits": logits.contiguous()}, OUT + "/logits.safetensors")
    for d in ("init", "adapter"):
        os.remove(os.path.join(OUT, d, "README.md"))
        c = json.load(open(os.path.join(OUT, d, "adapter_config.json")))
        c["base_model_name_or_path"] = "tests/fixtures/vocab/base"
        json.dump(c, open(os.path.join(OUT, d, "adapter_config.json"), "w"), indent=2)
    print("loss", float(out.loss), "len", len(tok), "vocab", m_desc.config.vocab_size)


if __name__ == "__main__":
    main()
