#!/usr/bin/env python3
"""Vocabulary extension fixtures (LLaMA-Factory's add_tokens /
add_special_tokens / new_special_tokens_config), part 1: the tokenizer.

For each tokenizer, transformers 5.25's tokenizer.add_tokens(..., special_tokens=False)
then (..., special_tokens=True), as LLaMA-Factory's patch_tokenizer calls them, and
the ids, decodes and len(tokenizer) that follow, into
tests/fixtures/newtokens/tokenizer.jsonl (test_newtokens.c compares ft's).

  /work/venv/bin/python tests/reference/make_newtokens_fixtures.py [SHARED_DIR]
"""
import json
import os
import sys

from transformers import AutoTokenizer

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SHARED = sys.argv[1] if len(sys.argv) > 1 else os.path.join(ROOT, "..", "shared")
OUT = os.path.join(ROOT, "tests", "fixtures", "newtokens")

# (name, path relative to the repo or to SHARED, add_tokens, add_special_tokens)
SVG = ["<|START_OF_SVG|>", "<|END_OF_SVG|>", "<|start_of_g|>", "<|end_of_g|>", "<|start_of_text|>"]
SETS = [
    ("synth-metaspace", "tests/fixtures/tokenizer/synth-metaspace",
     ["<tool_x>", " spaced ", "abc", "<tool_x>", "", "hello"], SVG + ["<s>", "<|é|>"]),
    ("synth-llama3", "tests/fixtures/tokenizer/synth-llama3",
     ["<tool_x>", " spaced ", "the", "Hello"], SVG + ["<|begin_of_text|>"]),
    ("synth-gpt2", "tests/fixtures/tokenizer/synth-gpt2", ["<tool_x>", "ab c"], SVG),
    ("qwen3", "shared:tokenizers/qwen3",
     ["<tool_x>", " spaced ", "abc", "hello", "<|im_end|>"], SVG + ["<|endoftext|>", "<think>"]),
    # not mistral-sp: transformers 5 runs its Prepend + Replace normalizer as
    # LlamaTokenizer's own Metaspace pipeline, which ft's tokenizer (checked
    # against the `tokenizers` package, make_tokenizer_fixtures.py) is not;
    # test_newtokens.c checks that ft refuses its non-special tokens
]
TEXTS = [
    "x<tool_x>y <|START_OF_SVG|>z  spaced abc hello",
    "<|START_OF_SVG|><|START_OF_SVG|><|END_OF_SVG|>",
    "A <tool_x> B<|start_of_g|>rect<|end_of_g|> the Hello",
    "<|start_of_text|>héllo wörld<|é|> ab c <s>",
    "<think>abc</think><|im_end|>\n<|endoftext|>",
    "no new tokens here",
]


def one(name, path, add, special):
    if path.startswith("shared:"):
        path = os.path.join(SHARED, path[7:])
        shared = True
    else:
        path = os.path.join(ROOT, path)
        shared = False
    if not os.path.isdir(path):
        print(f"skip {name}: {path} is absent")
        return None
    tok = AutoTokenizer.from_pretrained(path)
    n0 = len(tok)
    a = tok.add_tokens(add, special_tokens=False) if add else 0
    b = tok.add_tokens(special, special_tokens=True)
    cases = []
    for t in TEXTS:
        ids = tok(t, add_special_tokens=False)["input_ids"]
        cases.append({"text": t, "ids": ids, "decoded": tok.decode(ids),
                      "ids_special": tok(t)["input_ids"]})
    ids_of = {s: tok.convert_tokens_to_ids(s) for s in add + special if s}
    return {"name": name, "path": os.path.relpath(path, ROOT) if not shared else path[len(SHARED) + 1:],
            "shared": shared, "add": add, "special": special, "len_before": n0,
            "n_added": a + b, "len": len(tok), "ids": ids_of, "cases": cases,
            "added_tokens": json.loads(tok._tokenizer.to_str())["added_tokens"]}


def main():
    os.makedirs(OUT, exist_ok=True)
    rows = [r for r in (one(*s) for s in SETS) if r]
    with open(os.path.join(OUT, "tokenizer.jsonl"), "w") as f:
        for r in rows:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
    print(f"wrote {len(rows)} tokenizers")


if __name__ == "__main__":
    main()
