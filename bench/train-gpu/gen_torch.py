#!/usr/bin/env python3
"""gen_torch.py - the generation line of bench/train-gpu: a random-weight
model directory both sides load, and transformers' generate() timed on it.

usage: gen_torch.py make DIR TOKENIZER_DIR B PROMPT_WORDS
       gen_torch.py run DIR B NEW

make: a TinyLlama-1.1B-shaped LlamaForCausalLM (hidden 2048, 22 layers,
32 heads, 4 kv heads, intermediate 5632, vocab 32000) with random weights
(initializer_range 0.02), saved in bf16 as DIR/model.safetensors, and
DIR/prompts.jsonl: B prompts of PROMPT_WORDS words for ft-generate, with
their ids under the bench's tokenizer (TOKENIZER_DIR/tokenizer.json) in
DIR/prompt_ids.json for the transformers side, so both decode the same
prompts (ft's "empty" template renders a prompt as its text; it may add
the tokenizer's bos, one token).

run: generate() greedy in bf16 with sdpa attention, B prompts left-padded
into one batch, exactly NEW new tokens (min_new_tokens = NEW, so it never
stops early), one untimed warm-up call; prints one JSON line with
tokens_per_s = B * NEW / seconds (prefill included, as ft-generate's
predict_tokens_per_second).

GEN_CHECK=1: a 2-layer 64-wide model on the CPU, to check the script
without a GPU (DEVICE=cpu in run.sh's gen part does the same for ft).
"""
import json
import os
import sys
import time

import torch

CHECK = bool(os.environ.get("GEN_CHECK"))
DEV = "cpu" if CHECK else "cuda"


def make(out, tok_dir, B, words):
    from transformers import LlamaConfig, LlamaForCausalLM
    from tokenizers import Tokenizer
    shape = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, intermediate_size=128) if CHECK else \
        dict(hidden_size=2048, num_hidden_layers=22, num_attention_heads=32,
             num_key_value_heads=4, intermediate_size=5632)
    cfg = LlamaConfig(**shape, vocab_size=32000,
                      max_position_embeddings=2048, initializer_range=0.02,
                      bos_token_id=1, eos_token_id=2, tie_word_embeddings=False)
    torch.manual_seed(0)
    with torch.device(DEV):
        model = LlamaForCausalLM(cfg)
    model.to(torch.bfloat16).save_pretrained(out, safe_serialization=True)
    tok = Tokenizer.from_file(os.path.join(tok_dir, "tokenizer.json"))
    vocab = ["the", "tea", "is", "hot", "and", "who", "are", "you", "there", "a"]
    prompts, ids = [], []
    for b in range(B):
        text = " ".join(vocab[(b * 7 + i * 3) % len(vocab)] for i in range(words))
        prompts.append(text)
        ids.append(tok.encode(text).ids)
    with open(os.path.join(out, "prompts.jsonl"), "w") as f:
        for p in prompts:
            f.write(json.dumps({"prompt": p}) + "\n")
    with open(os.path.join(out, "prompt_ids.json"), "w") as f:
        json.dump(ids, f)


def run(d, B, new):
    from transformers import LlamaForCausalLM
    model = LlamaForCausalLM.from_pretrained(d, torch_dtype=torch.bfloat16,
                                             attn_implementation="sdpa").to(DEV).eval()
    ids = json.load(open(os.path.join(d, "prompt_ids.json")))[:B]
    T = max(len(x) for x in ids)
    inp = torch.zeros(B, T, dtype=torch.long)
    mask = torch.zeros(B, T, dtype=torch.long)
    for b, x in enumerate(ids):               # left padding, as generate() wants
        inp[b, T - len(x):] = torch.tensor(x)
        mask[b, T - len(x):] = 1
    inp, mask = inp.to(DEV), mask.to(DEV)
    sync = torch.cuda.synchronize if DEV == "cuda" else (lambda: None)
    kw = dict(attention_mask=mask, do_sample=False, max_new_tokens=new, min_new_tokens=new,
              pad_token_id=0)
    with torch.no_grad():
        model.generate(inp, **dict(kw, max_new_tokens=8, min_new_tokens=8))
        sync()
        t0 = time.perf_counter()
        out = model.generate(inp, **kw)
        sync()
        dt = time.perf_counter() - t0
    made = (out.shape[1] - T) * B
    print(json.dumps({"tokens_per_s": round(made / dt, 1), "tokens": made,
                      "seconds": round(dt, 3), "peak_bytes": torch.cuda.max_memory_reserved() if DEV == "cuda" else 0}))


if __name__ == "__main__":
    if len(sys.argv) == 6 and sys.argv[1] == "make":
        make(sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5]))
    elif len(sys.argv) == 5 and sys.argv[1] == "run":
        run(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]))
    else:
        sys.exit(__doc__)
