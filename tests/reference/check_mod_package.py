#!/usr/bin/env python3
"""Why ft refuses LLaMA-Factory's mixture_of_depths: rerun on a new release.

LLaMA-Factory's `mixture_of_depths: convert` calls the mixture-of-depth
package's apply_mod_to_hf on the loaded model; `load` calls its
AutoMoDModelForCausalLM.from_pretrained (src/llamafactory/model/model_utils/
mod.py).  ft would build MoD to match the package, so the package has to
run first.  This script writes no fixture: it tries each path LLaMA-Factory
takes on a tiny random Llama (4 layers, fp32) with whatever transformers the
interpreter imports, prints one line per check, and exits 1 when any check
fails (docs/EXTRAS.md has the results for transformers 4.41-5.25).

    /work/venv/bin/pip install --no-deps mixture-of-depth
    /work/venv/bin/python tests/reference/check_mod_package.py
    # another transformers beside the venv's torch:
    pip install --target /tmp/tf transformers==4.55.4
    PYTHONPATH=/tmp/tf /work/venv/bin/python tests/reference/check_mod_package.py
"""
import sys
import tempfile
import traceback
import warnings

import torch
import transformers
import transformers.utils.import_utils as iu

warnings.filterwarnings("ignore")
# the venv's `kernels` needs huggingface-hub 1.x; an older transformers
# beside it would import it and fail before MoD is reached
if hasattr(iu, "_kernels_available"):
    iu._kernels_available = False

failed = 0


def check(name, fn):
    global failed
    try:
        r = fn()
        print(f"ok    {name}" + (f": {r}" if r is not None else ""))
        return True
    except Exception as e:  # the point is to report each failure and go on
        failed += 1
        where = traceback.extract_tb(e.__traceback__)[-1]
        print(f"FAIL  {name}: {type(e).__name__}: {e} ({where.filename.split('site-packages/')[-1]}:{where.lineno})")
        return False


def tiny():
    from transformers import LlamaConfig, LlamaForCausalLM
    cfg = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=4,
                      num_attention_heads=4, num_key_value_heads=2, architectures=["LlamaForCausalLM"])
    torch.manual_seed(0)
    return LlamaForCausalLM(cfg)


def step(m, b, train):
    m.train(train)
    ids = torch.randint(0, 64, (b, 12), generator=torch.Generator().manual_seed(1))
    out = m(input_ids=ids, labels=ids)
    if train:
        out.loss.backward()
    return f"loss {out.loss.item():.6f}"


def main():
    print(f"transformers {transformers.__version__}, torch {torch.__version__}")
    if not check("import MoD", lambda: __import__("MoD") and None):
        return 1
    import MoD
    m = MoD.apply_mod_to_hf(tiny())
    check("convert: router on layers 1 and 3",
          lambda: [n for n, _ in m.named_parameters() if "router" in n])
    for b in (1, 2):
        check(f"convert: train forward+backward, batch {b}", lambda: step(m, b, True))
        check(f"convert: eval forward, batch {b}", lambda: step(m, b, False))
    d = tempfile.mkdtemp()
    check("convert: save_pretrained", lambda: m.save_pretrained(d) or
          __import__("json").load(open(f"{d}/config.json"))["architectures"])
    loaded = []
    check("load: AutoMoDModelForCausalLM.from_pretrained",
          lambda: loaded.append(MoD.AutoMoDModelForCausalLM.from_pretrained(d)) or type(loaded[0]).__name__)
    if loaded:
        lm = loaded[0]
        for b in (1, 2):
            check(f"load: train forward+backward, batch {b}", lambda: step(lm, b, True))
            check(f"load: eval forward, batch {b}", lambda: step(lm, b, False))
        lm.eval()
        check("load: greedy generate", lambda: lm.generate(torch.tensor([[3, 5, 7]]), max_new_tokens=5,
                                                           do_sample=False, pad_token_id=0).tolist())
    print(f"{failed} check(s) failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
