#!/usr/bin/env python3
"""bench/tokenize: ft-tokenize --encode against the `tokenizers` package.

    /work/venv/bin/python bench/tokenize/bench.py [--mb 24] [--tokenizer DIR ...]

Builds a corpus of JSON lines ({"text": ...}) from LLaMA-Factory's demo
datasets (every string field of every example, one line each) repeated to
about --mb megabytes, then in one run times, per tokenizer:
  * ft-tokenize --encode -j 1 and -j <all cores> (whole process: JSON in,
    JSON arrays out),
  * tokenizers' Tokenizer.encode_batch(texts, add_special_tokens=False) with
    RAYON_NUM_THREADS=1 and with all cores (encode only, texts already in
    memory, in a fresh process each),
prints MB/s (of text, UTF-8) and the ratios, and checks that both gave the
same ids (SHA-256 over all ids).  Needs bin/ft-tokenize (make) and ../shared.
"""
import argparse
import hashlib
import json
import os
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SHARED = os.environ.get("FT_SHARED", os.path.join(ROOT, "..", "shared"))
DATA = os.path.join(SHARED, "data", "llamafactory")

HF_CHILD = r"""
import hashlib, json, sys, time
from tokenizers import Tokenizer
tok = Tokenizer.from_file(sys.argv[1])
texts = [json.loads(l)["text"] for l in open(sys.argv[2], encoding="utf-8")]
t0 = time.perf_counter(); c0 = time.process_time()
enc = tok.encode_batch(texts, add_special_tokens=False)
t1 = time.perf_counter(); c1 = time.process_time()
h = hashlib.sha256()
for e in enc:
    h.update((json.dumps(e.ids, separators=(",", ":")) + "\n").encode())
print(json.dumps({"wall": t1 - t0, "cpu": c1 - c0, "sha": h.hexdigest()}))
"""


def corpus_texts():
    texts = []
    for name in sorted(os.listdir(DATA)):
        path = os.path.join(DATA, name)
        if name.endswith(".jsonl"):
            rows = [json.loads(l) for l in open(path, encoding="utf-8")]
        elif name.endswith(".json") and name != "dataset_info.json":
            rows = json.load(open(path, encoding="utf-8"))
        else:
            continue
        def walk(v):
            if isinstance(v, str):
                if v.strip():
                    texts.append(v)
            elif isinstance(v, dict):
                for x in v.values():
                    walk(x)
            elif isinstance(v, list):
                for x in v:
                    walk(x)
        walk(rows)
    return texts


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--mb", type=float, default=24)
    ap.add_argument("--tokenizer", action="append")
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    a = ap.parse_args()
    toks = a.tokenizer or [os.path.join(SHARED, "tokenizers", n) for n in ("qwen3", "mistral-sp")]
    base = corpus_texts()
    lines = [json.dumps({"text": t}, ensure_ascii=False) for t in base]
    size1 = sum(len(t.encode()) for t in base)
    reps = max(1, round(a.mb * 1e6 / size1))
    tmp = tempfile.mkdtemp(prefix="ft-bench-tok-")
    corpus = os.path.join(tmp, "corpus.jsonl")
    with open(corpus, "w", encoding="utf-8") as f:
        for _ in range(reps):
            f.write("\n".join(lines) + "\n")
    mb = size1 * reps / 1e6
    ft = os.path.join(ROOT, "bin", "ft-tokenize")
    print(f"corpus: {len(base) * reps} texts, {mb:.1f} MB of text ({reps} x the demo datasets); "
          f"{os.cpu_count()} cores")
    print(f"{'tokenizer':<12} {'impl':<22} {'wall s':>7} {'cpu s':>7} {'MB/s':>7}")
    for tdir in toks:
        name = os.path.basename(tdir.rstrip("/"))
        tj = os.path.join(tdir, "tokenizer.json")
        res = {}
        for th in (1, a.threads):
            env = dict(os.environ, RAYON_NUM_THREADS=str(th))
            out = subprocess.run([sys.executable, "-c", HF_CHILD, tj, corpus], env=env,
                                 capture_output=True, text=True, check=True)
            r = json.loads(out.stdout)
            res[f"tokenizers -t{th}"] = r
        for th in (1, a.threads):
            outp = os.path.join(tmp, "ids.jsonl")
            r0 = os.times()
            t0 = time.perf_counter()
            subprocess.run([ft, "--tokenizer", tdir, "--encode", "-j", str(th), "-o", outp, corpus],
                           check=True)
            t1 = time.perf_counter()
            r1 = os.times()
            h = hashlib.sha256(open(outp, "rb").read()).hexdigest()
            res[f"ft-tokenize -j{th}"] = {"wall": t1 - t0,
                                          "cpu": (r1.children_user - r0.children_user) +
                                                 (r1.children_system - r0.children_system),
                                          "sha": h}
        shas = {r["sha"] for r in res.values()}
        for k, r in res.items():
            print(f"{name:<12} {k:<22} {r['wall']:7.2f} {r['cpu']:7.2f} {mb / r['wall']:7.2f}")
        f1, h1 = res["ft-tokenize -j1"]["wall"], res["tokenizers -t1"]["wall"]
        fn, hn = res[f"ft-tokenize -j{a.threads}"]["wall"], res[f"tokenizers -t{a.threads}"]["wall"]
        print(f"{name:<12} single thread: ft-tokenize {h1 / f1:.2f}x tokenizers; "
              f"{a.threads} threads: {hn / fn:.2f}x; ids {'identical' if len(shas) == 1 else 'DIFFER'}")
    os.remove(corpus)
    os.remove(os.path.join(tmp, "ids.jsonl"))
    os.rmdir(tmp)


if __name__ == "__main__":
    main()
