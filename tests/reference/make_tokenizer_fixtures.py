#!/usr/bin/env python3
"""Tokenizer parity fixtures for tests/unit/test_tokenizer.c.

Run from the repository root (needs ../shared):
    /work/venv/bin/python tests/reference/make_tokenizer_fixtures.py

Made with tokenizers 0.23.3, sentencepiece 0.2.3, transformers 5.24.0
(protobuf installed for the tokenizer.model conversion).

Writes tests/fixtures/tokenizer/:
  cases.jsonl         the input texts, one {"text": ...} per line
  small-sp.model      a BPE SentencePiece model trained here (byte_fallback,
                      4000 pieces, English + Chinese demo text)
  small-sp/tokenizer.json   that model converted by transformers
                      (LlamaTokenizerFast), to test the tokenizer.json path
  small-sp.ids.jsonl  ft-tokenize --encode output for the first 120 cases
  small-sp-nfkc.model, small-sp-nfkc.ids.jsonl  a tokenizer.model with
                      sentencepiece's default nmt_nfkc charsmap and
                      remove_extra_whitespaces, and its ids for 150 cases
  small-sp-nobf.model, small-sp-nobf.ids.jsonl  one without byte_fallback
  <name>.expected.jsonl  one line per case: {"ids": encode without special
                      tokens, "ids_special": with them, "text": decode(ids),
                      "text_skip": decode(ids_special, skip_special_tokens)};
                      text is left out when it equals the input, text_skip
                      when it equals text, ids_special when it equals ids
  synth-*/tokenizer.json  small tokenizers trained here with `tokenizers` for
                      configurations ../shared lacks (GPT-2/RoBERTa byte-level,
                      Llama-3 split + ignore_merges, Metaspace + Split
                      behaviours); expected files over the first 150 cases
for name in qwen3, mistral-sp (../shared/tokenizers), small-sp (the .model:
ids from the sentencepiece package, except for texts holding control-piece
text such as "<s>", where ids come from the tokenizers conversion, which
matches those as special tokens), small-sp-json (the converted tokenizer.json).
"""
import json
import os
import sys

import sentencepiece as spm
from tokenizers import Tokenizer

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SHARED = os.environ.get("FT_SHARED", os.path.join(ROOT, "..", "shared"))
OUT = os.path.join(ROOT, "tests", "fixtures", "tokenizer")
DATA = os.path.join(SHARED, "data", "llamafactory")

HAND = [
    "", " ", "  ", "\n", "a", "Hello, world!", "Hello world", " Hello", "  leading spaces",
    "trailing spaces   ", "multiple   inner    spaces", "tabs\tand\t\ttabs", "CRLF line\r\nnext\r\n",
    "mixed \t \r\n \n\n\n blank lines", "\n\n\nnewlines first", "word\u00a0nbsp\u3000ideographic space",
    "The quick brown fox jumps over the lazy dog. 1234567890 3.14159 -42 1e10",
    "I'm you're he's we've they'll she'd IT'S DON'T",
    "你好，世界！这是一个测试。", "中文标点：「引号」、《书名》……——（括号）【方括号】",
    "全角字符：ＡＢＣ１２３！？", "日本語のテキストとカタカナ、ひらがな。", "한국어 텍스트입니다.",
    "Emoji: 😀🎉👍🏽 flags 🇺🇸🇨🇳 family 👨‍👩‍👧‍👦 zwj 👩🏽‍💻 heart ❤️",
    "Combining: e\u0301 cafe\u0301 n\u0303 A\u030a \u1e9b\u0323 Hangul \u1100\u1161\u11a8",
    "NFC already: é ñ Å ḉ", "Compatibility: ﬁ ﬀ ① ㎏ ™ ½ Ⅻ",
    "def f(x):\n    return x * 2  # comment\n\nclass A:\n\tpass\n",
    "#include <stdio.h>\nint main(void) { printf(\"%d\\n\", 42); return 0; }",
    "for (i = 0; i < n; i++) { a[i] = b[i] + c[i]; }",
    '{"key": [1, 2, 3], "nested": {"a": null, "b": true}}',
    "https://example.com/path?query=1&other=two#frag user@example.org",
    "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
    "ab" * 300, "哈" * 200, "  " * 150 + "x", "!!!???..." * 40, "\t" * 64, "0" * 100,
    "<|im_start|>system\nYou are helpful.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n",
    "<|endoftext|>", "text<|endoftext|>more", "<|im_start|><|im_end|>", "< |im_start| >",
    "<s>[INST] hello [/INST] answer</s>", "</s>", "<s>", "<unk>", "a<s>b</s>c", " <s> ",
    "<s><s></s>", "<0x0A> literal byte token text", "▁ already has the metaspace ▁▁x",
    "Ġ and Ċ characters", "Special: \u0000 nul \u0001 \u007f del \ufeff bom \u200b zwsp",
    "Private use \ue000 and astral 𝔘𝔫𝔦𝔠𝔬𝔡𝔢 𠀀𠀁 and rare 𪚥",
    "Arabic مرحبا بالعالم and Hebrew שלום עולם", "Thai สวัสดีครับ Devanagari नमस्ते",
    "Русский текст с ёлкой. Ελληνικά γράμματα.", "x" + " " * 7 + "y\n" + " " * 3 + "\n",
    "Mixed中English文本with数字123和标点，.", "\u2028line sep\u2029para sep\u0085nel",
    "    indented code\n        more\n", "end with newline\n", "ends with space ",
    "İstanbul ǅ ß ẞ ﬃ", "sentence.Another sentence!Yes?No", "'s 's 'S 'll 'LL ''",
]


def demo_texts():
    out = []
    def take(name, n, fields):
        with open(os.path.join(DATA, name), encoding="utf-8") as f:
            rows = json.load(f)
        for r in rows[:n]:
            for k in fields:
                if r.get(k):
                    out.append(r[k])
    take("alpaca_en_demo.json", 40, ["instruction", "input", "output"])
    take("alpaca_zh_demo.json", 40, ["instruction", "input", "output"])
    take("identity.json", 10, ["instruction", "output"])
    with open(os.path.join(DATA, "glaive_toolcall_en_demo.json"), encoding="utf-8") as f:
        rows = json.load(f)
    for r in rows[:10]:
        out.extend(m["value"] for m in r["conversations"])
        if r.get("tools"):
            out.append(r["tools"])
    with open(os.path.join(DATA, "c4_demo.jsonl"), encoding="utf-8") as f:
        for i, line in enumerate(f):
            if i >= 15:
                break
            out.append(json.loads(line)["text"])
    return out


def train_small_sp(path_prefix):
    text = []
    for name in ["alpaca_en_demo.json", "alpaca_zh_demo.json", "identity.json"]:
        with open(os.path.join(DATA, name), encoding="utf-8") as f:
            for r in json.load(f):
                text.extend(v for k, v in r.items() if isinstance(v, str) and v)
    with open(os.path.join(DATA, "c4_demo.jsonl"), encoding="utf-8") as f:
        text.extend(json.loads(l)["text"] for l in f)
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(text), model_prefix=path_prefix, model_type="bpe",
        vocab_size=4000, byte_fallback=True, character_coverage=0.9995,
        normalization_rule_name="identity", remove_extra_whitespaces=False,
        add_dummy_prefix=True, split_digits=True, num_threads=2,
        user_defined_symbols=["<|user|>"], minloglevel=2)


def compact(x, r):
    """Leave out what the test can infer: text equal to the input,
    text_skip equal to text, ids_special equal to ids."""
    r = dict(r)
    if r.get("text_skip") == r.get("text"):
        r.pop("text_skip", None)
    if r.get("text") == x:
        r.pop("text", None)
    if r.get("ids_special") == r.get("ids"):
        r.pop("ids_special", None)
    return r


def sp_encoder(sp):
    """sentencepiece, with control/unknown pieces matched in the text as
    special tokens (leftmost-longest) and each piece between them encoded on
    its own, as ft does with a tokenizer.model"""
    controls = {sp.id_to_piece(i): i for i in range(sp.get_piece_size())
                if sp.is_control(i) or sp.is_unknown(i)}

    def enc(x):
        ids, i, start = [], 0, 0
        while i < len(x):
            m = max((c for c in controls if x.startswith(c, i)), key=len, default=None)
            if m is None:
                i += 1
                continue
            if start < i:
                ids += sp.encode(x[start:i])
            ids.append(controls[m])
            i = start = i + len(m)
        if start < len(x):
            ids += sp.encode(x[start:])
        return ids
    return enc


def nfkc_model(cases):
    """A second tokenizer.model with sentencepiece's defaults: the nmt_nfkc
    precompiled charsmap and remove_extra_whitespaces; ids from sentencepiece
    for the first 150 cases (decode is not compared: no tokenizers twin)."""
    texts = []
    with open(os.path.join(DATA, "alpaca_zh_demo.json"), encoding="utf-8") as f:
        for r in json.load(f):
            texts.extend(v for v in r.values() if isinstance(v, str) and v)
    with open(os.path.join(DATA, "alpaca_en_demo.json"), encoding="utf-8") as f:
        for r in json.load(f):
            texts.extend(v for v in r.values() if isinstance(v, str) and v)
    prefix = os.path.join(OUT, "small-sp-nfkc")
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(texts), model_prefix=prefix, model_type="bpe",
        vocab_size=2000, byte_fallback=True, character_coverage=0.995,
        num_threads=2, minloglevel=2)
    os.remove(prefix + ".vocab")
    sp = spm.SentencePieceProcessor(model_file=prefix + ".model")
    enc = sp_encoder(sp)
    with open(prefix + ".ids.jsonl", "w") as f:
        for x in cases[:150]:
            f.write(json.dumps(enc(x), separators=(",", ":")) + "\n")


def nobf_model(cases):
    """A tokenizer.model without byte_fallback (runs of unknown characters
    become one <unk>), English only; ids for the first 150 cases."""
    with open(os.path.join(DATA, "alpaca_en_demo.json"), encoding="utf-8") as f:
        texts = [r["output"] for r in json.load(f)]
    prefix = os.path.join(OUT, "small-sp-nobf")
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(texts), model_prefix=prefix, model_type="bpe",
        vocab_size=500, normalization_rule_name="identity", num_threads=2, minloglevel=2)
    os.remove(prefix + ".vocab")
    enc = sp_encoder(spm.SentencePieceProcessor(model_file=prefix + ".model"))
    with open(prefix + ".ids.jsonl", "w") as f:
        for x in cases[:150]:
            f.write(json.dumps(enc(x), separators=(",", ":")) + "\n")


def dump(path, rows, cases=None):
    if cases is not None:
        rows = [compact(x, r) for x, r in zip(cases, rows)]
    with open(path, "w", encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps(r, ensure_ascii=False, separators=(",", ":")) + "\n")


def expected_hf(tok, cases):
    rows = []
    for x in cases:
        ids = tok.encode(x, add_special_tokens=False).ids
        ids_sp = tok.encode(x, add_special_tokens=True).ids
        rows.append({"ids": ids, "ids_special": ids_sp,
                     "text": tok.decode(ids, skip_special_tokens=False),
                     "text_skip": tok.decode(ids_sp, skip_special_tokens=True)})
    return rows


def main():
    if not os.path.isdir(SHARED):
        sys.exit("needs ../shared (or FT_SHARED)")
    os.makedirs(OUT, exist_ok=True)
    cases = HAND + demo_texts()
    dump(os.path.join(OUT, "cases.jsonl"), [{"text": x} for x in cases])

    for name in ["qwen3", "mistral-sp"]:
        tok = Tokenizer.from_file(os.path.join(SHARED, "tokenizers", name, "tokenizer.json"))
        dump(os.path.join(OUT, name + ".expected.jsonl"), expected_hf(tok, cases), cases)

    prefix = os.path.join(OUT, "small-sp")
    train_small_sp(prefix)
    os.remove(prefix + ".vocab")
    # what transformers (AutoTokenizer, LlamaTokenizer) makes of the .model
    import shutil
    import tempfile
    from transformers import AutoTokenizer
    with tempfile.TemporaryDirectory() as d:
        shutil.copy(prefix + ".model", os.path.join(d, "tokenizer.model"))
        with open(os.path.join(d, "tokenizer_config.json"), "w") as f:
            json.dump({"tokenizer_class": "LlamaTokenizer", "legacy": True}, f)
        hf = AutoTokenizer.from_pretrained(d)
    os.makedirs(prefix, exist_ok=True)
    hf.backend_tokenizer.save(os.path.join(prefix, "tokenizer.json"))
    conv = Tokenizer.from_file(os.path.join(prefix, "tokenizer.json"))
    dump(os.path.join(OUT, "small-sp-json.expected.jsonl"), expected_hf(conv, cases), cases)

    # the .model itself: sentencepiece, with control/unknown pieces matched
    # in the text as special tokens (leftmost-longest) and each piece between
    # them encoded on its own, as ft does
    sp = spm.SentencePieceProcessor(model_file=prefix + ".model")
    controls = {sp.id_to_piece(i): i for i in range(sp.get_piece_size())
                if sp.is_control(i) or sp.is_unknown(i)}

    def sp_encode(x):
        ids, i, start = [], 0, 0
        while i < len(x):
            m = max((c for c in controls if x.startswith(c, i)), key=len, default=None)
            if m is None:
                i += 1
                continue
            if start < i:
                ids += sp.encode(x[start:i])
            ids.append(controls[m])
            i = start = i + len(m)
        if start < len(x):
            ids += sp.encode(x[start:])
        return ids

    rows = []
    differ = 0
    for x in cases:
        ids = sp_encode(x)
        ids_sp = [sp.bos_id()] + ids
        if ids != conv.encode(x, add_special_tokens=False).ids:
            differ += 1
        rows.append({"ids": ids, "ids_special": ids_sp,
                     "text": conv.decode(ids, skip_special_tokens=False),
                     "text_skip": conv.decode(ids_sp, skip_special_tokens=True)})
    dump(os.path.join(OUT, "small-sp.expected.jsonl"), rows, cases)
    # for the bats tests: ft-tokenize --encode output of the first 120 cases
    with open(os.path.join(OUT, "small-sp.ids.jsonl"), "w") as f:
        for r in rows[:120]:
            f.write(json.dumps(r["ids"], separators=(",", ":")) + "\n")
    print(f"{len(cases)} cases; sentencepiece and the conversion differ on {differ}")


if __name__ == "__main__":
    main()


# ---- synthetic tokenizers: the configurations the shared ones lack ----
LLAMA3_RE = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}|"
             r" ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")


def synthetic(cases):
    from tokenizers import AddedToken, Regex, decoders, models, normalizers
    from tokenizers import pre_tokenizers, processors, trainers
    texts = demo_texts()
    made = {}

    # GPT-2 / RoBERTa style: ByteLevel with its regex and a prefix space,
    # NFKC + Lowercase, RobertaProcessing, lstrip / single_word added tokens
    t = Tokenizer(models.BPE())
    t.normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Lowercase()])
    t.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=True, use_regex=True)
    t.decoder = decoders.ByteLevel()
    t.train_from_iterator(texts, trainers.BpeTrainer(
        vocab_size=800, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        special_tokens=["<s>", "</s>"], show_progress=False))
    t.add_special_tokens([AddedToken("<mask>", lstrip=True, special=True)])
    t.add_tokens([AddedToken("[word]", single_word=True, normalized=False),
                  AddedToken("rstrip>", rstrip=True, normalized=False)])
    t.post_processor = processors.RobertaProcessing(("</s>", t.token_to_id("</s>")),
                                                    ("<s>", t.token_to_id("<s>")))
    made["synth-gpt2"] = t

    # Llama-3 style: Split regex + ByteLevel without regex, ignore_merges,
    # Sequence(ByteLevel, TemplateProcessing), a normalized added token
    t = Tokenizer(models.BPE(ignore_merges=True))
    t.normalizer = normalizers.NFKC()
    t.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(LLAMA3_RE), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    t.decoder = decoders.ByteLevel()
    t.train_from_iterator(texts, trainers.BpeTrainer(
        vocab_size=800, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        special_tokens=["<|begin_of_text|>", "<|eot_id|>"], show_progress=False))
    t.add_tokens([AddedToken("ＡＢＣ", normalized=True), AddedToken("the fox", normalized=True)])
    t.post_processor = processors.Sequence([
        processors.ByteLevel(trim_offsets=False),
        processors.TemplateProcessing(single="<|begin_of_text|> $A <|eot_id|>",
                                      special_tokens=[("<|begin_of_text|>", t.token_to_id("<|begin_of_text|>")),
                                                      ("<|eot_id|>", t.token_to_id("<|eot_id|>"))])])
    made["synth-llama3"] = t

    # Metaspace (prepend_scheme first, split) after Split behaviours,
    # Strip / Replace-regex normalizers, unk with fuse_unk, Metaspace decoder
    t = Tokenizer(models.BPE(unk_token="<unk>", fuse_unk=True))
    t.normalizer = normalizers.Sequence([normalizers.Strip(), normalizers.Replace(Regex(r"[ \t]+"), " ")])
    t.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split("-", behavior="merged_with_previous"),
        pre_tokenizers.Split(Regex(r"[0-9]+"), behavior="merged_with_next"),
        pre_tokenizers.Split(Regex(r"[.!?]"), behavior="contiguous"),
        pre_tokenizers.Split(",", behavior="removed"),
        pre_tokenizers.Split(Regex(r"\w+"), behavior="isolated", invert=True),
        pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first", split=True)])
    t.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="first")
    t.train_from_iterator([x for x in texts if x.isascii()], trainers.BpeTrainer(
        vocab_size=600, special_tokens=["<unk>", "<s>", "</s>"], show_progress=False))
    t.post_processor = processors.TemplateProcessing(
        single="<s> $A </s>", special_tokens=[("<s>", 1), ("</s>", 2)])
    made["synth-metaspace"] = t

    # Whitespace, Digits, WhitespaceSplit pre-tokenizers; no decoder (HF
    # joins tokens with spaces); no post-processor
    t = Tokenizer(models.BPE(unk_token="<unk>"))
    t.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Digits(individual_digits=True),
        pre_tokenizers.Whitespace()])
    t.train_from_iterator(texts, trainers.BpeTrainer(
        vocab_size=700, special_tokens=["<unk>"], show_progress=False))
    made["synth-words"] = t

    sub = cases[:150]
    for name, tok in made.items():
        d = os.path.join(OUT, name)
        os.makedirs(d, exist_ok=True)
        tok.save(os.path.join(d, "tokenizer.json"))
        tok = Tokenizer.from_file(os.path.join(d, "tokenizer.json"))
        dump(os.path.join(OUT, name + ".expected.jsonl"), expected_hf(tok, sub), sub)


if __name__ == "__main__" and os.environ.get("FT_SYNTH", "1") == "1":
    synthetic(HAND + demo_texts())
    nfkc_model(HAND + demo_texts())
    nobf_model(HAND + demo_texts())
