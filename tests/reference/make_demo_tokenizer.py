"""make_demo_tokenizer.py - train the demo's small byte-level BPE tokenizer.

Run:  /work/venv/bin/python tests/reference/make_demo_tokenizer.py
(tokenizers 0.23.x).  Writes demo/tokenizer.json and demo/tokenizer_config.json.

The tokenizer is shaped like Qwen2's (NFC normalizer, Split with the Qwen
regex, ByteLevel without its own regex, ByteLevel decoder) so the demo
exercises the same code path as real byte-level models, with 512 pieces so
the demo model stays tiny.  It is trained on the demo's generated data
(scripts/demo-data.sh) plus the template words.
"""
import json, os, subprocess, sys, tempfile
from tokenizers import Tokenizer, Regex, models, normalizers, pre_tokenizers, decoders, trainers

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
QWEN_SPLIT = r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"""
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]


def corpus_lines(tmp):
    subprocess.run([os.path.join(ROOT, "scripts/demo-data.sh"), tmp], check=True)
    for line in open(os.path.join(tmp, "corpus.jsonl")):
        yield json.loads(line)["text"]
    for ex in json.load(open(os.path.join(tmp, "identity.json"))):
        yield ex["instruction"] + "\n" + ex["output"]
    for line in open(os.path.join(tmp, "heldout.jsonl")):
        yield json.loads(line)["prompt"]
    yield "Human: hello\nAssistant: hi\n### Instruction:\n### Response:\n"


def main():
    tok = Tokenizer(models.BPE(unk_token=None, byte_fallback=False))
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(QWEN_SPLIT), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=512, special_tokens=SPECIALS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    with tempfile.TemporaryDirectory() as tmp:
        tok.train_from_iterator(list(corpus_lines(tmp)), trainer=trainer)
    out = os.path.join(ROOT, "demo")
    os.makedirs(out, exist_ok=True)
    tok.save(os.path.join(out, "tokenizer.json"))
    cfg = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": None, "eos_token": "<|endoftext|>", "pad_token": "<|endoftext|>",
        "add_bos_token": False, "add_eos_token": False, "model_max_length": 512,
    }
    json.dump(cfg, open(os.path.join(out, "tokenizer_config.json"), "w"), indent=2)
    print("vocab", tok.get_vocab_size(), file=sys.stderr)


if __name__ == "__main__":
    main()
