#!/usr/bin/env python3
"""make_safetensors_fixture.py - reference fixtures for lib/format/safetensors.c and
lib/util/dtype.c (checked by tests/unit/test_safetensors.c and test_dtype.c).

Run from the repository root:

    /work/venv/bin/python tests/reference/make_safetensors_fixture.py

writes tests/fixtures/safetensors/:
  python.safetensors   every dtype, a 0-d and an empty tensor, a name that
                       needs JSON escaping, __metadata__; written by the
                       Python `safetensors` package.  The C test knows the
                       values (same formulas as TENSORS below), reads them
                       exactly, and writes the same tensors with our writer,
                       which must give this file byte for byte.
  sharded/             two shards + model.safetensors.index.json, as
                       transformers' save_pretrained lays them out (index:
                       json.dumps(indent=2, sort_keys=True) + "\\n").
  dtype.json           torch's f16/bf16 <-> f32 conversions: FNV-1a hashes
                       over all 65536 half patterns (to f32) and over ~1.5M
                       f32 inputs (to f16/bf16; the input sets are generated
                       the same way in test_dtype.c), plus a list of special
                       inputs with their exact outputs.

Our writer read by Python: when build/asan/tests/test_safetensors exists
(`make unit`), this script runs it with FT_ST_EXPORT_DIR set, so it writes
ours.safetensors (one-shot writer) and ours_stream.safetensors (streaming
writer, tensors put in another order than the file's); both are loaded with
safetensors.torch.load_file and compared with TENSORS, and the script fails
if they differ.  That check is not part of `make test` (no Python there).

torch's NaN handling depends on the CPU kernel: these fixtures come from
the AVX2/AVX-512 kernels (f32->bf16 NaN = 0xFFFF); ATEN_CPU_CAPABILITY=default
would give 0x7FC0.  f32->f16 uses F16C everywhere (NaN keeps its payload).

Made with torch 2.15.0, safetensors 0.8.0, numpy 2.4.6 (CPU capability AVX512).
"""
import json
import os
import struct
import subprocess
import sys
import tempfile

import numpy as np
import torch
from safetensors.torch import load_file, save_file

OUT = "tests/fixtures/safetensors"
# One key: with more, the Rust package's HashMap writes them in any order,
# and the byte-for-byte comparison with our writer needs a fixed one.
META = {"format": "pt"}


def fval(n):
    return [(i - 3) * 0.375 for i in range(n)]


# name -> (torch dtype, shape, values); test_safetensors.c mirrors this table
TENSORS = {
    "f32": (torch.float32, [2, 3], fval(6)),
    "f16": (torch.float16, [4], fval(4)),
    "bf16": (torch.bfloat16, [2, 2], fval(4)),
    "f64": (torch.float64, [3], fval(3)),
    "i8": (torch.int8, [5], [i * 37 - 90 for i in range(5)]),
    "u8": (torch.uint8, [4], [i * 70 for i in range(4)]),
    "i16": (torch.int16, [3], [i * 1000 - 1000 for i in range(3)]),
    "i32": (torch.int32, [3], [i * 1000003 - 2000000 for i in range(3)]),
    "i64": (torch.int64, [2], [-(2**40) - 1, 2**62 + 5]),
    "bool": (torch.bool, [5], [i % 3 == 0 for i in range(5)]),
    "scalar": (torch.float32, [], 3.5),
    "empty": (torch.float16, [0, 4], []),
    "deep.3d": (torch.float32, [2, 1, 2], fval(4)),
    "special": (torch.float32, [6], [float("inf"), float("-inf"), float("nan"),
                                     -0.0, 1e-45, 3.4028234663852886e38]),
    'quote"back\\slash é': (torch.uint8, [1], [7]),
}


def make_tensors():
    return {k: torch.tensor(v, dtype=dt).reshape(shape)
            for k, (dt, shape, v) in TENSORS.items()}


def check_tensors(path):
    got = load_file(path)
    want = make_tensors()
    assert sorted(got) == sorted(want), (path, sorted(got))
    for k in want:
        a, b = got[k], want[k]
        assert a.dtype == b.dtype and list(a.shape) == list(b.shape), (path, k)
        # compare bits, so NaN and -0.0 count
        assert a.reshape(-1).view(torch.uint8).tolist() == b.reshape(-1).view(torch.uint8).tolist(), (path, k)


def sharded():
    d = os.path.join(OUT, "sharded")
    os.makedirs(d, exist_ok=True)
    shards = {
        "model-00001-of-00002.safetensors": {
            "a.weight": torch.tensor(fval(4), dtype=torch.float32).reshape(2, 2)},
        "model-00002-of-00002.safetensors": {
            "b.weight": torch.tensor(fval(3), dtype=torch.bfloat16),
            "c.bias": torch.tensor([1.5, -2.0], dtype=torch.float32)},
    }
    wm, size, params = {}, 0, 0
    for f, sd in shards.items():
        save_file(sd, os.path.join(d, f), metadata={"format": "pt"})
        for k, t in sd.items():
            wm[k] = f
            size += t.numel() * t.element_size()
            params += t.numel()
    index = {"metadata": {"total_parameters": params, "total_size": size}, "weight_map": wm}
    with open(os.path.join(d, "model.safetensors.index.json"), "w") as fp:
        fp.write(json.dumps(index, indent=2, sort_keys=True) + "\n")


# ---- dtype ----

def fnv16(words):
    """FNV-1a 64 over 16- or 32-bit words (one xor-multiply per word)."""
    h = 0xcbf29ce484222325
    for w in words.tolist():
        h = ((h ^ w) * 0x100000001b3) & 0xFFFFFFFFFFFFFFFF
    return "%016x" % h


def to16(bits_u32, dt):
    t = torch.from_numpy(bits_u32.astype(np.uint32).view(np.float32).copy())
    return t.to(dt).view(torch.int16).numpy().view(np.uint16)


def half_to_f32_bits(h, dt):
    t = torch.from_numpy(h.astype(np.uint16).view(np.int16).copy()).view(dt)
    return t.float().numpy().view(np.uint32)


def with_signs(cols):
    """cols: list of uint32 arrays, one per variant; rows interleaved as
    v0 v1 .. vk, then the same with the sign bit set."""
    m = np.stack(cols, axis=1)
    return np.concatenate([m, m | np.uint32(0x80000000)], axis=1).reshape(-1)


def dtype_inputs():
    # A: every positive finite half, the midpoints to the next (ties) and
    # one f32 ulp either side of them; negated.
    h = np.arange(0x7c00, dtype=np.uint32)
    x = half_to_f32_bits(h, torch.float16)
    nxt = np.append(x[1:], np.uint32(0x47800000))  # 65536 after 65504
    mid = ((x.view(np.float32).astype(np.float64) + nxt.view(np.float32).astype(np.float64)) / 2
           ).astype(np.float32).view(np.uint32)
    a = with_signs([x, mid, mid - 1, mid + 1])
    # B: the same for bfloat16 (midpoint bits are b<<16 | 0x8000)
    b16 = np.arange(0x7f80, dtype=np.uint32) << 16
    mb = b16 | np.uint32(0x8000)
    b = with_signs([b16, mb, mb - 1, mb + 1])
    # C: a sweep over all f32 patterns
    c = (np.arange(1 << 20, dtype=np.uint64) * 2654435761 & 0xFFFFFFFF).astype(np.uint32)
    return np.concatenate([a, b, c])


SPECIALS = [0x00000000, 0x80000000, 0x7f800000, 0xff800000, 0x7fc00000, 0xffc00000,
            0x7f800001, 0xff800001, 0x7fa00000, 0x7fffffff, 0x7f802000, 0x7fc01234,
            0x3f800000, 0x477fe000, 0x477fefff, 0x477ff000, 0x477ff001, 0x47800000,
            0x7f7fffff, 0x38800000, 0x387fffff, 0x33000000, 0x33000001, 0x32ffffff,
            0x33800000, 0x33c00000, 0x00000001, 0x807fffff, 0x3f808000, 0x3f818000,
            0x3f808001, 0x3f807fff, 0x7f7f8000, 0x7f7f7fff, 0x3c003000, 0x3c001000,
            0x3c002000, 0x3c006000, 0xc0490fdb]


def dtype_fixture():
    allh = np.arange(65536, dtype=np.uint32)
    inp = dtype_inputs()
    sp = np.array(SPECIALS, dtype=np.uint32)
    f16s, bf16s = to16(sp, torch.float16), to16(sp, torch.bfloat16)
    fix = {
        "f16_to_f32_all": fnv16(half_to_f32_bits(allh, torch.float16)),
        "bf16_to_f32_all": fnv16(half_to_f32_bits(allh, torch.bfloat16)),
        "n_inputs": int(len(inp)),
        "inputs_hash": fnv16(inp),
        "f32_to_f16": fnv16(to16(inp, torch.float16)),
        "f32_to_bf16": fnv16(to16(inp, torch.bfloat16)),
        "specials": [["%08x" % s, "%04x" % a, "%04x" % b]
                     for s, a, b in zip(SPECIALS, f16s.tolist(), bf16s.tolist())],
    }
    with open(os.path.join(OUT, "dtype.json"), "w") as fp:
        fp.write(json.dumps(fix, indent=1) + "\n")


def check_ours():
    exe = "build/asan/tests/test_safetensors"
    if not os.path.exists(exe):
        print("note: %s not built; our-writer-read-by-Python check skipped" % exe)
        return
    with tempfile.TemporaryDirectory() as d:
        env = dict(os.environ, FT_ST_EXPORT_DIR=d)
        subprocess.run([exe], env=env, check=True, stdout=subprocess.DEVNULL)
        for f in ("ours.safetensors", "ours_stream.safetensors"):
            p = os.path.join(d, f)
            check_tensors(p)
            from safetensors import safe_open
            with safe_open(p, "pt") as so:
                assert so.metadata() == META, so.metadata()
            print("Python reads our %s: ok" % f)


def main():
    torch.manual_seed(0)
    print("cpu capability:", torch.backends.cpu.get_cpu_capability())
    os.makedirs(OUT, exist_ok=True)
    p = os.path.join(OUT, "python.safetensors")
    save_file(make_tensors(), p, metadata=META)
    check_tensors(p)
    sharded()
    dtype_fixture()
    check_ours()


if __name__ == "__main__":
    sys.exit(main())
