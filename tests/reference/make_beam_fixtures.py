"""make_beam_fixtures.py - beam search reference from transformers.

Run:  /work/venv/bin/python tests/reference/make_beam_fixtures.py
(torch 2.15, transformers 5.25).  Writes tests/fixtures/generate/beam.json:
for tiny-llama and tiny-qwen2 (tests/fixtures/models), five prompts
generated one at a time (no padding) with model.generate(do_sample=False,
num_beams=2|4, length_penalty 1.0|0.5|2.0, early_stopping false|true|never,
a repetition penalty in one case, one or two eos ids), keeping the new
tokens (the final eos dropped, as ft-generate does) and
sequences_scores.  The eos id of each model is a token its beams reach
after a few steps for some prompts and not for others (chosen below from
a first beam run), so both endings, eos and max_new_tokens, are covered;
each case records which ("ended": "eos" or "max").
tests/unit/test_beam.c must produce the same tokens.
"""
import json, os
import torch
from transformers import AutoModelForCausalLM

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
FIX = os.path.join(ROOT, "tests/fixtures")
PROMPTS = [[5, 17, 99, 3, 42, 8, 120], [200, 7], [33, 33, 14, 250, 61], [9, 81, 160, 4], [77, 12, 240]]
MAX_NEW = 10
CASES = [  # num_beams, length_penalty, early_stopping, repetition_penalty, extra eos ids
    (2, 1.0, False, 1.0, []),
    (4, 1.0, False, 1.0, []),
    (4, 0.5, False, 1.0, []),
    (4, 2.0, False, 1.0, []),
    (2, 2.0, False, 1.0, []),
    (4, 1.0, True, 1.0, []),
    (4, 2.0, "never", 1.0, []),
    (4, 1.0, False, 1.3, []),
    (2, 1.0, False, 1.0, [2]),
]


def beam(model, prompt, eos, nb, lp, es, rep):
    out = model.generate(input_ids=torch.tensor([prompt]), attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
                         do_sample=False, num_beams=nb, length_penalty=lp, early_stopping=es,
                         repetition_penalty=rep, max_new_tokens=MAX_NEW, pad_token_id=0, eos_token_id=eos,
                         num_return_sequences=1, return_dict_in_generate=True, output_scores=True)
    row = out.sequences[0, len(prompt):].tolist()
    ended = "max"
    for i, t in enumerate(row):
        if t in eos:
            row, ended = row[:i], "eos"
            break
    return row, ended, float(out.sequences_scores[0])


def pick_eos(model):
    """A token the 4-beam search reaches within the first few steps for
    some prompts (so those end early) but not for all."""
    firsts = [beam(model, p, [2], 4, 1.0, False, 1.0)[0] for p in PROMPTS]
    for t in [x for row in firsts for x in row[2:6]]:
        hit = [t in row[:8] for row in firsts]
        if 0 < sum(hit) < len(PROMPTS) and all(t not in p for p in PROMPTS):
            return t
    raise SystemExit("no eos candidate")


def main():
    torch.manual_seed(0)
    result = {"prompts": PROMPTS, "max_new_tokens": MAX_NEW, "models": {}}
    for name in ("tiny-llama", "tiny-qwen2"):
        path = os.path.join(FIX, "models", name)
        model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
        eos = pick_eos(model)
        cases = []
        for nb, lp, es, rep, extra in CASES:
            ids = [eos] + extra
            runs = [beam(model, p, ids, nb, lp, es, rep) for p in PROMPTS]
            cases.append({"num_beams": nb, "length_penalty": lp,
                          "early_stopping": es if isinstance(es, str) else ("true" if es else "false"),
                          "repetition_penalty": rep, "eos": ids,
                          "tokens": [r[0] for r in runs], "ended": [r[1] for r in runs],
                          "scores": [r[2] for r in runs]})
            print(name, nb, lp, es, rep, ids, [r[1] for r in runs])
        result["models"][name] = {"eos": eos, "cases": cases}
    with open(os.path.join(FIX, "generate/beam.json"), "w") as f:
        json.dump(result, f, indent=1)


if __name__ == "__main__":
    main()
