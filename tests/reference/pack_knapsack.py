#!/usr/bin/env python3
"""pack_knapsack.py - expected knapsack bins and pt blocks from LLaMA-Factory.

Writes tests/fixtures/pack/llamafactory_pack.json, read by
tests/unit/test_pack.c.  Run from the repository root:

    /work/venv/bin/python tests/reference/pack_knapsack.py

Made with llamafactory 0.9.5 (processor_utils.greedy_knapsack, and the
loops of PackedSupervisedDatasetProcessor / PretrainDatasetProcessor
reproduced on token lists, since those classes need a tokenizer).
"""
import importlib.util
import json
import random
import sys
from collections import defaultdict
from itertools import chain

import llamafactory

path = llamafactory.__path__[0] + "/data/processor/processor_utils.py"
spec = importlib.util.spec_from_file_location("processor_utils", path)
pu = importlib.util.module_from_spec(spec)
sys.modules["processor_utils"] = pu
spec.loader.exec_module(pu)   # only stdlib imports: no datasets needed


def lf_knapsack_bins(lengths, capacity):
    """Item indices per bin, in the order PackedSupervisedDatasetProcessor
    concatenates them (length2indexes[length].pop())."""
    length2indexes = defaultdict(list)
    for i, n in enumerate(lengths):
        length2indexes[n].append(i)
    bins = []
    for knapsack in pu.greedy_knapsack(list(lengths), capacity):
        bins.append([length2indexes[n].pop() for n in knapsack])
    return bins


def lf_pt_blocks(texts, block_size):
    """PretrainDatasetProcessor with packing, one preprocessing batch."""
    concatenated = list(chain(*texts))
    total = (len(concatenated) // block_size) * block_size
    return [concatenated[i:i + block_size] for i in range(0, total, block_size)]


rng = random.Random(1234)
cases = []
for capacity, n, hi in [(10, 12, 10), (63, 200, 63), (127, 1000, 100), (2047, 300, 2047), (16, 50, 3)]:
    lengths = [rng.randint(0, hi) for _ in range(n)]
    cases.append({"capacity": capacity, "lengths": lengths, "bins": lf_knapsack_bins(lengths, capacity)})

pt = []
for block, n in [(8, 20), (16, 3), (5, 40)]:
    texts = [[rng.randint(0, 50000) for _ in range(rng.randint(1, 30))] for _ in range(n)]
    pt.append({"block": block, "texts": texts, "blocks": lf_pt_blocks(texts, block)})

out = {"llamafactory": llamafactory.__version__, "knapsack": cases, "pt_blocks": pt}
with open("tests/fixtures/pack/llamafactory_pack.json", "w") as f:
    json.dump(out, f, separators=(",", ":"))
    f.write("\n")
