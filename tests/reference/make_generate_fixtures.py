"""make_generate_fixtures.py - greedy generation reference from transformers.

Run:  /work/venv/bin/python tests/reference/make_generate_fixtures.py
(torch 2.15, transformers 5.24, peft 0.21).  Writes
tests/fixtures/generate/greedy.json: for the tiny fixture models in
tests/fixtures/models (and tiny-llama with the PEFT adapter from
tests/fixtures/merge/llama-r4/adapter), three prompts of different lengths
generated greedily (do_sample=False, max_new_tokens=12) one at a time and
as one left-padded batch.  ft-generate must produce the same tokens.
"""
import json, os
import torch
from transformers import AutoModelForCausalLM

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
FIX = os.path.join(ROOT, "tests/fixtures")
PROMPTS = [[5, 17, 99, 3, 42, 8, 120], [200, 7], [33, 33, 14, 250, 61]]
MAX_NEW = 12


def new_tokens(model, ids, mask, eos):
    out = model.generate(input_ids=ids, attention_mask=mask, do_sample=False, max_new_tokens=MAX_NEW,
                         pad_token_id=0, eos_token_id=eos)
    rows = []
    for row in out[:, ids.shape[1]:].tolist():
        if eos in row:
            row = row[: row.index(eos)]
        rows.append(row)
    return rows


def run(model, eos):
    one = [new_tokens(model, torch.tensor([p]), torch.ones(1, len(p), dtype=torch.long), eos)[0] for p in PROMPTS]
    width = max(map(len, PROMPTS))
    ids = torch.tensor([[0] * (width - len(p)) + p for p in PROMPTS])
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in PROMPTS])
    batched = new_tokens(model, ids, mask, eos)
    return {"unbatched": one, "batched": batched}


def make_tokenizer():
    """A byte-level BPE tokenizer whose ids fit the tiny models' 256-token
    vocabulary (0 <pad>, 1 <s>, 2 </s> as their config), for CLI tests."""
    from tokenizers import Tokenizer, models, pre_tokenizers, decoders, AddedToken
    from tokenizers.pre_tokenizers import ByteLevel
    alphabet = ByteLevel.alphabet()
    chars = sorted(c for c in alphabet if c.isprintable() and ord(c) < 0x7f) + ["\u0120", "\u010a"]
    vocab = {"<pad>": 0, "<s>": 1, "</s>": 2}
    for c in chars:
        vocab.setdefault(c, len(vocab))
    merges = []
    for a, b in [("\u0120", "t"), ("h", "e"), ("\u0120t", "he"), ("i", "s"), ("\u0120", "a"), ("o", "u"),
                 ("\u0120", "w"), ("a", "t"), ("\u0120w", "h"), ("\u0120wh", "o"), ("\u0120", "y"),
                 ("\u0120y", "ou"), ("a", "r"), ("\u0120", "ar"), ("\u0120ar", "e")]:
        merges.append((a, b))
        vocab.setdefault(a + b, len(vocab))
    assert len(vocab) <= 256
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens([AddedToken(t, special=True) for t in ("<pad>", "<s>", "</s>")])
    out = os.path.join(FIX, "generate/tokenizer")
    os.makedirs(out, exist_ok=True)
    tok.save(os.path.join(out, "tokenizer.json"))
    json.dump({"bos_token": "<s>", "eos_token": "</s>", "pad_token": "<pad>", "add_bos_token": False,
               "tokenizer_class": "PreTrainedTokenizerFast"},
              open(os.path.join(out, "tokenizer_config.json"), "w"), indent=1)


def main():
    make_tokenizer()
    torch.manual_seed(0)
    result = {"prompts": PROMPTS, "max_new_tokens": MAX_NEW, "cases": {}}
    for name in ("tiny-llama", "tiny-qwen2"):
        path = os.path.join(FIX, "models", name)
        model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
        result["cases"][name] = run(model, model.config.eos_token_id)
    adapter = os.path.join(FIX, "merge/llama-r4/adapter")
    if os.path.isdir(adapter):
        from peft import PeftModel
        base = AutoModelForCausalLM.from_pretrained(os.path.join(FIX, "models/tiny-llama"), dtype=torch.float32)
        model = PeftModel.from_pretrained(base, adapter).eval()
        result["cases"]["tiny-llama+llama-r4"] = run(model, base.config.eos_token_id)
    with open(os.path.join(FIX, "generate/greedy.json"), "w") as f:
        json.dump(result, f, indent=1)
    for k, v in result["cases"].items():
        same = v["batched"] == v["unbatched"]
        print(k, "batched==unbatched" if same else "batched differs", v["unbatched"])


if __name__ == "__main__":
    main()
