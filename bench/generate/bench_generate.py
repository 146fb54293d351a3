"""bench_generate.py - tokens/s of ft-generate against transformers' generate
on the same CPU, model, prompts and settings, in one run.

Run from the repository root after `make`:
    /work/venv/bin/python bench/generate/bench_generate.py [--hidden 512 --layers 8]
It builds a random Llama-shaped model (seeded) with the demo tokenizer,
then greedy-decodes the same prompts with both (batch of 8, left padding
for transformers, ragged rows for ft) and prints new tokens per second
for each and the ratio.  Threads: both use all cores.
"""
import argparse, json, os, shutil, subprocess, tempfile, time
import torch
from transformers import LlamaConfig, LlamaForCausalLM

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--hidden", type=int, default=512)
    ap.add_argument("--layers", type=int, default=8)
    ap.add_argument("--prompts", type=int, default=8)
    ap.add_argument("--new", type=int, default=64)
    a = ap.parse_args()
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=512, hidden_size=a.hidden, intermediate_size=a.hidden * 8 // 3 // 64 * 64,
                      num_hidden_layers=a.layers, num_attention_heads=a.hidden // 64,
                      num_key_value_heads=max(1, a.hidden // 128), max_position_embeddings=1024,
                      tie_word_embeddings=True, eos_token_id=0, pad_token_id=0, bos_token_id=None)
    model = LlamaForCausalLM(cfg).eval()
    nparams = sum(p.numel() for p in model.parameters())
    tmp = tempfile.mkdtemp()
    model.save_pretrained(tmp)
    for f in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(os.path.join(ROOT, "demo", f), tmp)
    g = torch.Generator().manual_seed(1)
    prompts = [torch.randint(3, 512, (16 + 4 * i,), generator=g).tolist() for i in range(a.prompts)]

    # transformers: one left-padded batch; eos disabled so both run the full length
    width = max(map(len, prompts))
    ids = torch.tensor([[0] * (width - len(p)) + p for p in prompts])
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
    with torch.no_grad():
        t0 = time.perf_counter()
        out = model.generate(input_ids=ids, attention_mask=mask, do_sample=False, max_new_tokens=a.new,
                             min_new_tokens=a.new, pad_token_id=0, eos_token_id=None)
        t_hf = time.perf_counter() - t0
    hf_tokens = (out.shape[1] - width) * len(prompts)

    # ft-generate: prompt records on stdin, --do_predict reports its own timing
    recs = os.path.join(tmp, "prompts.jsonl")
    with open(recs, "w") as f:
        f.write(json.dumps({"format": "ft-stream", "version": 1, "kind": "tokens", "producer": "bench",
                            "meta": {"stage": "sft", "predict": True}}) + "\n")
        for p in prompts:
            f.write(json.dumps({"input_ids": p, "labels": []}) + "\n")
    stream = os.path.join(tmp, "prompts.ftb.zst")
    subprocess.run([os.path.join(ROOT, "bin/ft-cat"), "--encode", recs, "-o", stream], check=True)
    pred = os.path.join(tmp, "pred")
    t0 = time.perf_counter()
    subprocess.run([os.path.join(ROOT, "bin/ft-generate"), "--model_name_or_path", tmp, "--do_sample", "false",
                    "--max_new_tokens", str(a.new), "--per_device_eval_batch_size", str(len(prompts)),
                    "--do_predict", "--output_dir", pred, "-q", stream], check=True)
    t_ft_wall = time.perf_counter() - t0
    res = json.load(open(os.path.join(pred, "predict_results.json")))
    lines = [json.loads(l) for l in open(os.path.join(pred, "generated_predictions.jsonl"))]
    ft_tps = res["predict_tokens_per_second"]
    print(f"model: Llama {a.layers} layers, hidden {a.hidden}, {nparams/1e6:.1f}M params; "
          f"{len(prompts)} prompts, {a.new} new tokens each, greedy, {torch.get_num_threads()} threads")
    print(f"transformers generate: {hf_tokens / t_hf:8.1f} tokens/s ({t_hf:.2f} s)")
    print(f"ft-generate          : {ft_tps:8.1f} tokens/s (decode {res['predict_runtime']:.2f} s, "
          f"{t_ft_wall:.2f} s with model load; stops at eos, so it may emit fewer tokens)")
    print(f"ratio ft/transformers: {ft_tps / (hf_tokens / t_hf):.2f}x")
    shutil.rmtree(tmp)


if __name__ == "__main__":
    main()
