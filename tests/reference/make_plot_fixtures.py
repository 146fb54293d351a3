#!/usr/bin/env python3
"""make_plot_fixtures.py - sample trainer logs and LLaMA-Factory smoothing
values for ft-plot's tests (tests/fixtures/plot/).

Run from the repository root:
    /work/venv/bin/python tests/reference/make_plot_fixtures.py
Made with llamafactory 0.9.5 (extras/ploting.py smooth()), Python 3.11.

Writes
  run_a/trainer_log.jsonl, run_b/trainer_log.jsonl  LLaMA-Factory LogCallback
      lines (current_steps, total_steps, loss, lr, epoch, percentage,
      elapsed_time, remaining_time; eval lines with eval_loss), fixed numbers
  bad/trainer_log.jsonl   good lines mixed with garbage, a non-object, a line
      without current_steps, a line whose loss is a string, and a partial
      last line without newline
  smooth.json   {"series": [...], "smoothed": [...]} for several lengths,
      values printed with repr() so the C side can compare bit for bit
"""
import json
import math
import os
import random

from llamafactory.extras.ploting import smooth

OUT = "tests/fixtures/plot"


def timedelta(s):
    s = int(s)
    return "%d:%02d:%02d" % (s // 3600, s // 60 % 60, s % 60)


def write_log(path, n, seed, eval_every=10, base=2.5):
    rng = random.Random(seed)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    lines = []
    for step in range(1, n + 1):
        loss = round(base * math.exp(-step / 30) + 0.6 + rng.uniform(-0.15, 0.15), 4)
        lr = 5e-05 * (1 - (step - 1) / n)
        lines.append(dict(current_steps=step, total_steps=n, loss=loss, lr=lr,
                          epoch=round(step / 20, 2), percentage=round(step / n * 100, 2),
                          elapsed_time=timedelta(step * 3), remaining_time=timedelta((n - step) * 3)))
        if step % eval_every == 0:
            lines.append(dict(current_steps=step, total_steps=n,
                              eval_loss=round(base * math.exp(-step / 30) + 0.7, 4),
                              epoch=round(step / 20, 2), percentage=round(step / n * 100, 2),
                              elapsed_time=timedelta(step * 3), remaining_time=timedelta((n - step) * 3)))
    with open(path, "w") as f:
        for l in lines:
            f.write(json.dumps(l, ensure_ascii=False) + "\n")
    return lines


def main():
    write_log(f"{OUT}/run_a/trainer_log.jsonl", 60, 1)
    write_log(f"{OUT}/run_b/trainer_log.jsonl", 40, 2, base=2.0)
    good = write_log(f"{OUT}/bad/trainer_log.jsonl", 12, 3, eval_every=100)
    with open(f"{OUT}/bad/trainer_log.jsonl", "w") as f:
        for i, l in enumerate(good):
            f.write(json.dumps(l) + "\n")
            if i == 2:
                f.write("this is not json\n")
            if i == 4:
                f.write("[1, 2, 3]\n")
            if i == 6:
                f.write('{"loss": "high", "current_steps": 7}\n')
            if i == 8:
                f.write("\n")
        f.write('{"current_steps": 13, "total_steps": 12, "lo')   # partial last line
    rng = random.Random(7)
    cases = []
    for n in (1, 2, 5, 37, 200):
        series = [rng.uniform(0.5, 3.0) for _ in range(n)]
        cases.append({"series": series, "smoothed": smooth(series)})
    with open(f"{OUT}/smooth.json", "w") as f:
        json.dump(cases, f, indent=0)   # json writes floats with repr(): exact


if __name__ == "__main__":
    main()
