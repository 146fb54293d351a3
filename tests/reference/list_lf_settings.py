#!/usr/bin/env python3
"""list_lf_settings.py - every setting a LLaMA-Factory train/export/chat
config can hold: the fields of LLaMA-Factory's argument dataclasses
(src/llamafactory/hparams/*.py, read with ast, so LLaMA-Factory need not
be installed) and of transformers' Seq2SeqTrainingArguments (LF's
TrainingArguments extends it).  tests/bats/ft-run.bats checks that ft-run
knows each one: routed, accepted with a reason, or refused with one.

    /work/venv/bin/python tests/reference/list_lf_settings.py LF_REPO > tests/fixtures/llamafactory/settings.txt

LF_REPO: a LLaMA-Factory checkout (made from ff6d4d12e with transformers
5.25.0).  Output: "<source> <key>" per line, sorted; source lf or hf.
"""
import ast
import dataclasses
import os
import sys

import transformers


def lf_fields(repo):
    out = set()
    d = os.path.join(repo, "src", "llamafactory", "hparams")
    for f in sorted(os.listdir(d)):
        if not f.endswith(".py"):
            continue
        tree = ast.parse(open(os.path.join(d, f)).read())
        for node in ast.walk(tree):
            if isinstance(node, ast.ClassDef) and any(
                    isinstance(dec, (ast.Name, ast.Attribute, ast.Call)) and "dataclass" in ast.dump(dec)
                    for dec in node.decorator_list):
                for st in node.body:
                    if isinstance(st, ast.AnnAssign) and isinstance(st.target, ast.Name):
                        out.add(st.target.id)
    return out


def main():
    lf = lf_fields(sys.argv[1])
    hf = {f.name for f in dataclasses.fields(transformers.Seq2SeqTrainingArguments) if f.init}
    for k in sorted(lf):
        print("lf", k)
    for k in sorted(hf - lf):
        print("hf", k)


if __name__ == "__main__":
    main()
