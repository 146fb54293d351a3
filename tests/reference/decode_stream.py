#!/usr/bin/env python3
"""decode_stream.py - read an ft record stream with stock Python packages.

This is the proof that docs/FORMAT.md section 1 is enough to read our
streams without any ft code: only `zstandard` and `msgpack` are used.

    /work/venv/bin/python tests/reference/decode_stream.py FILE|DIR... [--verify EXPECTED.jsonl]

Prints the stream as JSON lines (header first).  With --verify, checks
that the decoded header and records equal those in EXPECTED.jsonl (as
`ft-cat` prints them): same keys in the same order, integers as integers,
floats as floats with the same bits; exits 1 on any difference.

Run for the committed fixture (tests/fixtures/stream/tiny.ftb.zst) with
zstandard 0.25.0, msgpack 1.2.4 (Python 3.11):
    /work/venv/bin/python tests/reference/decode_stream.py \
        tests/fixtures/stream/tiny.ftb.zst --verify tests/fixtures/stream/tiny.jsonl
Not run by `make test` (which must not need Python).
"""
import json
import math
import os
import struct
import sys

import msgpack
import zstandard

ZSTD_MAGIC = 0xFD2FB528
SKIPPABLE_MIN, SKIPPABLE_MAX = 0x184D2A50, 0x184D2A5F


def decompress_all(data, name):
    """Concatenated zstd frames -> bytes.  Skippable frames are passed over;
    a frame cut short is an error (FORMAT.md: truncation)."""
    out = bytearray()
    off = 0
    while off < len(data):
        if len(data) - off < 4:
            raise ValueError(f"{name}: byte {off}: truncated frame magic")
        magic = struct.unpack_from("<I", data, off)[0]
        if SKIPPABLE_MIN <= magic <= SKIPPABLE_MAX:
            if len(data) - off < 8:
                raise ValueError(f"{name}: byte {off}: truncated skippable frame")
            size = struct.unpack_from("<I", data, off + 4)[0]
            off += 8 + size
            continue
        if magic != ZSTD_MAGIC:
            raise ValueError(f"{name}: byte {off}: not a zstd frame (magic {magic:#x})")
        d = zstandard.ZstdDecompressor().decompressobj()
        out += d.decompress(data[off:])
        if not d.eof:
            raise ValueError(f"{name}: truncated stream (input ends inside a zstd frame)")
        off = len(data) - len(d.unused_data)
    return bytes(out)


def is_header(rec):
    return isinstance(rec, dict) and rec.get("format") == "ft-stream"


def compatible(a, b):
    def meta(h):
        m = dict(h.get("meta", {}))
        m.pop("counts", None)
        return m
    return a.get("kind") == b.get("kind") and a.get("version") == b.get("version") and meta(a) == meta(b)


def stream_files(paths):
    for p in paths:
        if os.path.isdir(p):
            names = sorted(n for n in os.listdir(p) if n.endswith(".zst") and not n.startswith("."))
            if not names:
                raise ValueError(f"{p}: no stream shards (*.zst) in this directory")
            for n in names:
                yield os.path.join(p, n)
        else:
            yield p


def read_stream(paths):
    """Yield the first header, then every data record of every file."""
    header = None
    for path in stream_files(paths):
        with open(path, "rb") as f:
            raw = decompress_all(f.read(), path)
        unpacker = msgpack.Unpacker(raw=False, strict_map_key=True)
        unpacker.feed(raw)
        first = True
        for rec in unpacker:
            if not isinstance(rec, dict):
                raise ValueError(f"{path}: a record is not a map")
            if is_header(rec):
                if rec.get("version", 0) > 1:
                    raise ValueError(f"{path}: stream version {rec['version']} is newer than 1")
                if header is None:
                    header = rec
                    yield rec
                elif not compatible(header, rec):
                    raise ValueError(f"{path}: header does not match the first header")
            elif first:
                raise ValueError(f"{path}: not an ft stream (the first record is not a header)")
            else:
                yield rec
            first = False
        if first:
            raise ValueError(f"{path}: not an ft stream (empty input, no header)")
        # msgpack.Unpacker stops silently at a partial record: check for one
        if unpacker.tell() != len(raw):
            raise ValueError(f"{path}: truncated stream (input ends inside a record)")


def to_json(v):
    """FORMAT.md's JSON mapping: NaN/Inf have no JSON form and become null."""
    if isinstance(v, float) and not math.isfinite(v):
        return None
    if isinstance(v, list):
        return [to_json(x) for x in v]
    if isinstance(v, dict):
        return {k: to_json(x) for k, x in v.items()}
    return v


def same(a, b):
    """Equal values of equal JSON types; floats compared by their bits."""
    if type(a) is not type(b):
        return False
    if isinstance(a, float):
        return struct.pack("<d", a) == struct.pack("<d", b)
    if isinstance(a, list):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    if isinstance(a, dict):
        return list(a) == list(b) and all(same(a[k], b[k]) for k in a)
    return a == b


def main(argv):
    args = list(argv)
    expected = None
    if "--verify" in args:
        i = args.index("--verify")
        expected = args[i + 1]
        del args[i:i + 2]
    if not args:
        print(__doc__, file=sys.stderr)
        return 2
    try:
        records = [to_json(r) for r in read_stream(args)]
    except ValueError as e:
        print(f"decode_stream.py: {e}", file=sys.stderr)
        return 1
    if expected is None:
        for r in records:
            print(json.dumps(r, ensure_ascii=False, separators=(",", ":")))
        return 0
    with open(expected, encoding="utf-8") as f:
        want = [json.loads(line) for line in f if line.strip()]
    if len(want) != len(records):
        print(f"decode_stream.py: {len(records)} lines decoded, {len(want)} expected", file=sys.stderr)
        return 1
    for i, (got, exp) in enumerate(zip(records, want)):
        if not same(got, exp):
            print(f"decode_stream.py: line {i + 1} differs:\n  got  {got}\n  want {exp}", file=sys.stderr)
            return 1
    print(f"decode_stream.py: {len(records)} lines match {expected}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
