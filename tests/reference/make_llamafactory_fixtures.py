#!/usr/bin/env python3
"""make_llamafactory_fixtures.py - expected ft-tokenize output, made by
llamafactory's own code.

Run from the repository root:
    /work/venv/bin/python tests/reference/make_llamafactory_fixtures.py [../shared]

Writes tests/fixtures/llamafactory/:
  templates.jsonl  every built-in template ft has, rendered by llamafactory's
                   Template._encode (elements joined as text: bos shown as
                   "<s>", eos as "</s>" or, for replace_eos templates, the
                   first stop word) for a few conversations: system + multi-
                   turn, default system, tools + function call + observation.
                   Needs no tokenizer.
  expected.json    for each (tokenizer, template, dataset, stage, options):
                   the number of records, the sha256 of the canonical
                   serialization of all of them, and the first records in
                   full.  Made with llamafactory.data.get_dataset (the real
                   loader, converter, template and processors) on the demo
                   datasets in ../shared/data/llamafactory and the tokenizers
                   in ../shared/tokenizers.

Canonical serialization (what the hash covers): one line per record, the
record's fields in the order listed in FIELDS for its stage, as compact JSON
(separators "," and ":"), each line ending in "\\n"; sha256 of the UTF-8
bytes of all lines.  pt records are llamafactory's unpacked pretrain output
(bos + text + eos when the tokenizer adds bos) with cutoff_len large enough
that nothing is cut.

Versions used: llamafactory 0.9.5, transformers 5.24.0, tokenizers (as
installed with transformers), datasets 5.2.0, Python 3.11.
torchaudio is stubbed: llamafactory imports it only for audio inputs.
"""
import hashlib
import importlib.machinery
import json
import os
import sys
import tempfile
import types

os.environ.setdefault("DISABLE_VERSION_CHECK", "1")  # transformers 5.24 is newer than it pins
_ta = types.ModuleType("torchaudio")
_ta.__spec__ = importlib.machinery.ModuleSpec("torchaudio", None)
sys.modules.setdefault("torchaudio", _ta)

from llamafactory.data.template import TEMPLATES  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
OUT = os.path.join(ROOT, "tests", "fixtures", "llamafactory")
TINY = os.path.join(OUT, "data")
SHARED = sys.argv[1] if len(sys.argv) > 1 else os.path.join(ROOT, "..", "shared")

TEMPLATE_NAMES = ["default", "empty", "alpaca", "vicuna", "llama2", "llama2_zh", "llama3", "mistral",
                  "qwen", "qwen3_nothink", "chatml", "yi", "gemma", "deepseek", "chatglm3"]

TOOLS = json.dumps([{
    "name": "get_weather",
    "description": "Get the weather in a city",
    "parameters": {"type": "object",
                   "properties": {"city": {"type": "string", "description": "City name"},
                                  "unit": {"type": "string", "enum": ["c", "f"]},
                                  "days": {"type": "array", "items": {"type": "integer"}}},
                   "required": ["city"]}}])

CASES = [
    ("system_multiturn", "You are terse.", "", [
        ("user", "Hi {{idx}} there"), ("assistant", "Hello."),
        ("user", "2+2?"), ("assistant", "4"),
        ("user", "Thanks 谢谢"), ("assistant", "You're welcome!")]),
    ("default_system", "", "", [("user", "Say hi"), ("assistant", "hi")]),
    ("tools", "", TOOLS, [
        ("user", "Weather in Paris?"),
        ("function", '{"name": "get_weather", "arguments": {"city": "Paris", "temp": 1.5e-7, "n": 3}}'),
        ("observation", '{"temp": 21}'), ("assistant", "It is 21 degrees.")]),
]


def render_templates():
    class FakeTok:
        bos_token, bos_token_id = "<s>", 1
        eos_token, eos_token_id = "</s>", 2

    rows = []
    for name in TEMPLATE_NAMES:
        t = TEMPLATES[name]
        eos = t.stop_words[0] if t.replace_eos else "</s>"

        def to_text(tokenizer, elements, eos=eos):
            out = ""
            for e in elements:
                if isinstance(e, str):
                    out += e
                elif isinstance(e, dict):
                    out += e["token"]
                elif "bos_token" in e:
                    out += "<s>"
                elif "eos_token" in e:
                    out += eos
            return [out]

        t._convert_elements_to_ids = to_text
        for case, system, tools, msgs in CASES:
            if tools and name == "llama3":
                continue  # its tool prompt carries today's date
            messages = [{"role": r, "content": c} for r, c in msgs]
            try:
                enc = t._encode(None, messages, system, tools)
                rendered = [m[0] for m in enc]
                error = None
            except Exception as e:  # noqa: BLE001
                rendered, error = None, str(e)
            rows.append({"template": name, "case": case, "system": system, "tools": tools,
                         "messages": [{"role": r, "content": c} for r, c in msgs],
                         "bos": "<s>", "eos": eos, "rendered": rendered, "error": error})
        del t._convert_elements_to_ids
    with open(os.path.join(OUT, "templates.jsonl"), "w") as f:
        for r in rows:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
    print(f"templates.jsonl: {len(rows)} renderings")


FIELDS = {
    "pt": ["input_ids"],
    "sft": ["input_ids", "labels"],
    "rm": ["chosen_input_ids", "chosen_labels", "rejected_input_ids", "rejected_labels"],
    "kto": ["input_ids", "labels", "kl_input_ids", "kl_labels", "kto_tags"],
    "ppo": ["input_ids", "labels"],
}

# (config name, tokenizer dir, template, dataset, stage, extra data args)
# mistral-sp is loaded twice: with AutoTokenizer, as llamafactory does (transformers 5
# rebuilds Llama-class tokenizers with Metaspace(prepend_scheme="always"), which differs
# from tokenizer.json on text that starts with a space), and as "mistral-sp-raw": the
# tokenizer.json as the `tokenizers` package reads it (what transformers 4.x loads),
# which is the tokenizer module's parity target.
TOKENIZERS = [("qwen3", "qwen"), ("mistral-sp", "mistral"), ("mistral-sp-raw", "mistral")]
RUNS = [
    ("alpaca_en", "alpaca_en_demo", "sft", {}),
    ("alpaca_zh", "alpaca_zh_demo", "sft", {}),
    ("identity", "identity", "sft", {}),
    ("glaive", "glaive_toolcall_en_demo", "sft", {}),
    ("glaive_cut", "glaive_toolcall_en_demo", "sft", {"cutoff_len": 96}),
    ("glaive_mask", "glaive_toolcall_en_demo", "sft", {"mask_history": True, "cutoff_len": 200}),
    ("alpaca_prompt", "alpaca_en_demo", "sft", {"train_on_prompt": True, "max_samples": 100}),
    ("mixed", "identity,alpaca_zh_demo", "sft", {"max_samples": 50}),
    ("dpo", "dpo_en_demo", "rm", {}),
    ("dpo_cut", "dpo_en_demo", "rm", {"cutoff_len": 128, "max_samples": 200}),
    ("kto", "kto_en_demo", "kto", {}),
    ("c4", "c4_demo", "pt", {"cutoff_len": 1000000}),
    ("ppo", "alpaca_en_demo", "ppo", {"cutoff_len": 64, "max_samples": 200}),
    ("under", "identity,alpaca_en_demo", "sft", {"mix_strategy": "interleave_under", "max_samples": 30}),
    ("over", "identity,alpaca_zh_demo", "sft", {"mix_strategy": "interleave_over", "max_samples": 40,
                                               "interleave_probs": "0.2,0.8"}),
    ("under_p", "alpaca_en_demo,identity", "sft", {"mix_strategy": "interleave_under", "interleave_probs": "0.5,0.5",
                                                   "seed": 7}),
    # the small datasets of tests/fixtures/llamafactory/data
    ("t_history", "tiny_history", "sft", {"dataset_dir": "TINY"}),
    ("t_sharegpt", "tiny_sharegpt", "sft", {"dataset_dir": "TINY"}),
    ("t_roles", "tiny_roles", "sft", {"dataset_dir": "TINY"}),
    ("t_rank", "tiny_rank", "rm", {"dataset_dir": "TINY"}),
    ("t_kto", "tiny_kto", "kto", {"dataset_dir": "TINY"}),
    ("t_text", "tiny_text", "pt", {"dataset_dir": "TINY", "cutoff_len": 1000000}),
    # (no directory dataset: llamafactory reads its files in os.listdir order)
]
# other templates on the same data (template name as the key suffix)
for _t in ["default", "alpaca", "vicuna", "empty", "llama2", "llama2_zh", "deepseek", "chatml", "yi"]:
    RUNS.append((f"tmpl_{_t}", "alpaca_en_demo,tiny_sharegpt", "sft",
                 {"max_samples": 40, "template": _t, "dataset_dir": "BOTH"}))
HEAD = 2


def canonical(rec, stage):
    return json.dumps({k: rec[k] for k in FIELDS[stage]}, separators=(",", ":"), ensure_ascii=False) + "\n"


def load_tokenizer(name):
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    if name.endswith("-raw"):
        d = os.path.join(SHARED, "tokenizers", name[:-4])
        cfg = json.load(open(os.path.join(d, "tokenizer_config.json")))
        tok = PreTrainedTokenizerFast(tokenizer_file=os.path.join(d, "tokenizer.json"),
                                      bos_token=cfg.get("bos_token"), eos_token=cfg.get("eos_token"),
                                      unk_token=cfg.get("unk_token"), pad_token=cfg.get("pad_token"))
        tok.add_bos_token = cfg.get("add_bos_token", False)
        return tok
    return AutoTokenizer.from_pretrained(os.path.join(SHARED, "tokenizers", name))


def run_llamafactory():
    from types import SimpleNamespace

    from transformers import Seq2SeqTrainingArguments

    from llamafactory.data import get_dataset, get_template_and_fix_tokenizer
    from llamafactory.hparams import DataArguments

    data_dir = os.path.join(SHARED, "data", "llamafactory")
    expected = {}
    tmp = tempfile.mkdtemp()
    for tok_dir, template in TOKENIZERS:
        for name, dataset, stage, extra in RUNS:
            tok = load_tokenizer(tok_dir)
            if extra.get("template") in ("chatml", "yi") and not tok_dir.startswith("qwen"):
                continue  # needs <|im_start|>/<|im_end|>, which llamafactory would add
            args = dict(template=template, dataset=dataset, dataset_dir=data_dir, cutoff_len=2048,
                        overwrite_cache=True, packing=False, preprocessing_num_workers=None)
            args.update(extra)
            if args["dataset_dir"] in ("TINY", "BOTH"):
                if args["dataset_dir"] == "BOTH":  # a registry naming files in both places
                    both = tempfile.mkdtemp()
                    info = json.load(open(os.path.join(TINY, "dataset_info.json")))
                    info["alpaca_en_demo"] = {"file_name": os.path.join(data_dir, "alpaca_en_demo.json")}
                    info["tiny_sharegpt"]["file_name"] = os.path.join(TINY, "tiny_sharegpt.json")
                    json.dump(info, open(os.path.join(both, "dataset_info.json"), "w"))
                    args["dataset_dir"] = both
                else:
                    args["dataset_dir"] = TINY
            seed = args.pop("seed", 42)
            data_args = DataArguments(**args)
            training_args = Seq2SeqTrainingArguments(output_dir=tmp, seed=seed, report_to="none")
            model_args = SimpleNamespace(cache_dir=None, hf_hub_token=None, ms_hub_token=None,
                                         om_hub_token=None)
            tmpl = get_template_and_fix_tokenizer(tok, data_args)
            lf_stage = "rm" if stage == "rm" else stage
            module = get_dataset(tmpl, model_args, data_args, training_args, lf_stage, tok)
            ds = module["train_dataset"]
            h = hashlib.sha256()
            head = []
            n = 0
            for rec in ds:
                line = canonical(rec, stage)
                h.update(line.encode())
                if n < HEAD:
                    head.append(json.loads(line))
                n += 1
            key = f"{tok_dir}/{name}"
            expected[key] = {"tokenizer": tok_dir, "template": args["template"], "dataset": dataset,
                             "stage": stage, "options": extra, "count": n,
                             "sha256": h.hexdigest(), "head": head,
                             "eos_id": tok.eos_token_id, "bos_id": tok.bos_token_id,
                             "pad_id": tok.pad_token_id}
            print(f"{key}: {n} records {h.hexdigest()[:16]}")
    with open(os.path.join(OUT, "expected.json"), "w") as f:
        json.dump(expected, f, ensure_ascii=False, indent=1)
        f.write("\n")


if __name__ == "__main__":
    os.makedirs(OUT, exist_ok=True)
    render_templates()
    if os.path.isdir(SHARED):
        run_llamafactory()
    else:
        print(f"{SHARED} not found: expected.json not made")
