#!/usr/bin/env python3
"""make_emu_fixtures.py - a model and data shaped to run the CUDA kernels'
loops more than once (tests/bats/ft-train-cuda-emu.bats).

Run from the repository root:

    /work/venv/bin/python tests/reference/make_emu_fixtures.py

writes tests/fixtures/models/tiny-llama-gqa4/ (config.json +
model.safetensors): a random Llama with 8 query heads over 2 kv heads
(4 per group), head_dim 8, 2 layers, room for 256 positions; and
tests/fixtures/emu/tokens.jsonl: 24 sft token records of 30 to 90 tokens
(ft-pack turns them into batches whose T exceeds the flash-attention tile
of 32 and is not a multiple of it), and tests/fixtures/emu/pt_tokens.jsonl:
16 pt texts of 40 to 120 tokens to pack into rows.

    /work/venv/bin/python tests/reference/make_emu_fixtures.py gemma2-hd256

writes only tests/fixtures/models/tiny-gemma2-hd256/: a random Gemma 2
with Gemma's head_dim 256 (2 query heads over 1 kv head, hidden 64, 2
layers: sliding and full), whose tensor-core attention backward needs
more shared memory than sm_86's 99 KiB, so that the fallback to the
CUDA-core kernels runs on the emulated device
(tests/bats/ft-train-cuda-half-emu.bats).

Nothing here is a numeric reference: the tests compare ft's own CPU path
with its emulated device path.

Made with torch 2.15.0, transformers 5.25 (float32, fixed seeds).
"""
import json
import os
import sys

import torch
from transformers import Gemma2Config, Gemma2ForCausalLM, LlamaConfig, LlamaForCausalLM

torch.set_num_threads(1)
MODEL = "tests/fixtures/models/tiny-llama-gqa4"
DATA = "tests/fixtures/emu/tokens.jsonl"
PT = "tests/fixtures/emu/pt_tokens.jsonl"
GEMMA2_HD256 = "tests/fixtures/models/tiny-gemma2-hd256"


def random_norms(m):
    with torch.no_grad():
        for n, p in m.named_parameters():
            if "norm" in n:   # random norms so their gradients matter
                p.copy_(1.0 + 0.1 * torch.randn_like(p))


def model():
    torch.manual_seed(2026)
    c = LlamaConfig(vocab_size=256, hidden_size=64, intermediate_size=96,
                    num_hidden_layers=2, num_attention_heads=8, num_key_value_heads=2,
                    head_dim=8, max_position_embeddings=256, rms_norm_eps=1e-5,
                    rope_theta=10000.0, tie_word_embeddings=False, attention_bias=False,
                    bos_token_id=1, eos_token_id=2, pad_token_id=0, dtype="float32")
    m = LlamaForCausalLM._from_config(c, attn_implementation="eager")
    random_norms(m)
    m.float().save_pretrained(MODEL, safe_serialization=True)


def gemma2_hd256():
    # the caps and the window of tests/fixtures/families/gemma2 (small, so
    # that tanh and the mask matter); query_pre_attn_scalar 256 as Gemma 2's.
    # Hidden 64: at 32 (seed 2032) --fp16's first step overflows at the
    # initial loss scale and is skipped, which the CPU's fp32 does not do.
    torch.manual_seed(2032)
    c = Gemma2Config(vocab_size=256, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                     num_attention_heads=2, num_key_value_heads=1, head_dim=256,
                     query_pre_attn_scalar=256, sliding_window=4, attn_logit_softcapping=5.0,
                     final_logit_softcapping=3.0, max_position_embeddings=64, rms_norm_eps=1e-6,
                     rope_theta=10000.0, tie_word_embeddings=True, bos_token_id=1,
                     eos_token_id=2, pad_token_id=0, dtype="float32")
    m = Gemma2ForCausalLM._from_config(c, attn_implementation="eager")
    random_norms(m)
    m.float().save_pretrained(GEMMA2_HD256, safe_serialization=True)


def tokens():
    g = torch.Generator().manual_seed(7)
    os.makedirs(os.path.dirname(DATA), exist_ok=True)
    with open(DATA, "w") as f:
        f.write(json.dumps({"format": "ft-stream", "version": 1, "kind": "tokens",
                            "producer": "make_emu_fixtures.py",
                            "meta": {"stage": "sft", "tokenizer": "tiny-llama-gqa4",
                                     "pad_id": 0, "eos_id": 2, "vocab_size": 256}}) + "\n")
        for _ in range(24):
            n = int(torch.randint(30, 91, (1,), generator=g))
            p = int(torch.randint(2, 12, (1,), generator=g))
            ids = torch.randint(3, 256, (n,), generator=g).tolist()
            ids[-1] = 2
            f.write(json.dumps({"input_ids": ids, "labels": [-100] * p + ids[p:]}) + "\n")


def pt_tokens():
    g = torch.Generator().manual_seed(8)
    with open(PT, "w") as f:
        f.write(json.dumps({"format": "ft-stream", "version": 1, "kind": "tokens",
                            "producer": "make_emu_fixtures.py",
                            "meta": {"stage": "pt", "tokenizer": "tiny-llama-gqa4",
                                     "pad_id": 0, "eos_id": 2, "vocab_size": 256}}) + "\n")
        for _ in range(16):
            n = int(torch.randint(40, 121, (1,), generator=g))
            ids = torch.randint(3, 256, (n,), generator=g).tolist() + [2]
            f.write(json.dumps({"input_ids": ids}) + "\n")


if __name__ == "__main__":
    if sys.argv[1:] == ["gemma2-hd256"]:
        gemma2_hd256()
    else:
        model()
        tokens()
        pt_tokens()
        gemma2_hd256()
