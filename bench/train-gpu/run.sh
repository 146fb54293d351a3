#!/bin/bash
# bench/train-gpu/run.sh - the one device check (`make gpu-check` builds
# the bundle and runs this; on the GPU machine: bundle/run.sh): GPU parity
# tests first, then ft-train on the GPU against the CPU path
# (train_check.sh), its preference stages (pref_check.sh) and QLoRA
# (qlora_check.sh, with a throughput line vs bitsandbytes), then the throughput table of ft vs PyTorch +
# transformers + PEFT, same model, batch and steps, in the same run.
# Without a GPU every GPU part is skipped with a message (exit 0 when the
# CPU-runnable parts pass).  Budget: under 8 minutes on an H100/H200.
#   bundle/run.sh [all|parity|train|bench|gen]   (default all)
# gen: ft-generate --device cuda vs transformers generate(), same random
# TinyLlama-1.1B-shaped model, bf16, batch 8, 128 new tokens (gen_torch.py).
# Env: PYTHON (python3), STEPS (5), WARMUP (2), CASES ("0.5b-full 7b-lora"; also 1b-full, 7b-lora-ckpt),
# CASE_TIMEOUT (100 s per side and case).
# Results: printed, and written to results.md (and $OUT/ when set).
set -u
here=$(cd "$(dirname "$(readlink -f "$0")")/../.." && pwd)
cd "$here" || exit 1
what=${1:-all}
asked=$what   # what= falls back to parity when the table cannot run
PY=${PYTHON:-python3}
STEPS=${STEPS:-5}
WARMUP=${WARMUP:-2}
CASES=${CASES:-"0.5b-full 7b-lora"}

# cuBLAS 13 from the CUDA install or from PyTorch's pip wheels
cub=""
for d in /usr/local/cuda/lib64 /usr/local/cuda/lib /usr/lib/x86_64-linux-gnu; do
	[ -e "$d/libcublas.so.13" ] && cub="$cub:$d"
done
site=$($PY -c 'import torch, os; print(os.path.dirname(os.path.dirname(torch.__file__)))' 2>/dev/null)
if [ -n "$site" ]; then
	for f in $(find "$site" -name 'libcublas.so.13*' 2>/dev/null | head -2); do
		cub="$cub:$(dirname "$f")"
	done
fi
fb=""
for f in "$here"/lib/fallback/*; do
	[ -e "$f" ] || continue
	ldconfig -p 2>/dev/null | grep -q "$(basename "$f") " || fb=":$here/lib/fallback"
done
export LD_LIBRARY_PATH="$here/lib$cub$fb:${LD_LIBRARY_PATH:-}"
echo "GPU: $(nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>&1 | head -1)"
echo "glibc here: $(ldd --version | head -1); bundle needs $(cat GLIBC_NEEDED 2>/dev/null)"
res=$here/parity.md
: > "$res"
status=0

if [ "$what" = all ] || [ "$what" = parity ]; then
	FT_GPU_TEST_DIR=$here/bin tests/gpu/run.sh 2>&1 | tee parity.log
	[ "${PIPESTATUS[0]}" -eq 0 ] || status=1
	{ echo "## Parity"; echo; echo '```'; grep -E '^(not ok|ok|#|tests/gpu)' parity.log; echo '```'; echo; } >> "$res"
fi
if [ "$what" = all ] || [ "$what" = train ]; then
	BIN=$here/bin FIXTURES=$here/tests/fixtures PYTHON=$PY timeout 240 \
		bench/train-gpu/train_check.sh 2>&1 | tee train_check.log
	[ "${PIPESTATUS[0]}" -eq 0 ] || status=1
	{ echo "## ft-train on the GPU vs the CPU"; echo; echo '```'; cat train_check.log; echo '```'; echo; } >> "$res"
	BIN=$here/bin FIXTURES=$here/tests/fixtures PYTHON=$PY timeout 180 \
		bench/train-gpu/pref_check.sh 2>&1 | tee pref_check.log
	[ "${PIPESTATUS[0]}" -eq 0 ] || status=1
	{ echo "## ft-train --stage rm/dpo/kto on the GPU vs the CPU"; echo; echo '```'; cat pref_check.log; echo '```'; echo; } >> "$res"
	BIN=$here/bin FIXTURES=$here/tests/fixtures PYTHON=$PY timeout 300 \
		bench/train-gpu/qlora_check.sh 2>&1 | tee qlora_check.log
	[ "${PIPESTATUS[0]}" -eq 0 ] || status=1
	{ echo "## ft-train --quantization_bit 4/8 on the GPU vs the CPU, QLoRA throughput"; echo; echo '```'; cat qlora_check.log; echo '```'; echo; } >> "$res"
fi
if [ "$what" = all ] || [ "$what" = bench ]; then
	if ! nvidia-smi -L >/dev/null 2>&1; then
		echo "bench: throughput table skipped: no usable GPU (nvidia-smi -L fails or is absent)"
		what=parity
	fi
fi

# case: name mode hidden layers heads kv inter vocab B T ckpt
spec() {
	case $1 in
	7b-lora) echo "lora 4096 32 32 32 11008 32000 4 1024 0" ;;
	1b-full) echo "full 2048 22 32 4 5632 32000 4 1024 0" ;;
	0.5b-full) echo "full 896 24 14 2 4864 151936 4 1024 0" ;;   # Qwen2.5-0.5B's shape
	7b-lora-ckpt) echo "lora 4096 32 32 32 11008 32000 4 1024 1" ;;
	*) return 1 ;;
	esac
}

# Regenerate the table from rows.txt (after every case, so a run cut
# short still leaves the finished cases in results.md and $OUT).
table() {
	$PY - "$tf" "$peak" rows.txt <<'PYEOF'
import json, sys
tf = float(sys.argv[1]); dev = json.loads(sys.argv[2])["device"]
rows = [l.rstrip("\n") for l in open(sys.argv[3]) if l.strip()]
print("## Throughput on %s (measured bf16 matmul peak %.0f TFLOP/s)\n" % (dev, tf))
print("| case | impl | tokens/s | MFU | peak memory GiB | ratio ft/torch |")
print("|---|---|---:|---:|---:|---:|")
for r in rows:
    name, s, ft, pt = r.split("|")
    mode, D, L, H, K, F, V, B, T, ck = s.split()
    D, L, V, T = int(D), int(L), int(V), int(T)
    res = {}
    for impl, js in (("ft", ft), ("torch", pt)):
        try:
            res[impl] = json.loads(js)
        except ValueError:
            res[impl] = {}
    for impl in ("ft", "torch"):
        j = res[impl]
        if "tokens_per_s" not in j:
            print("| %s | %s | failed | | | |" % (name, impl)); continue
        n = j["params"] - V * D            # the input embedding costs no products
        att = 12 * L * D * T               # PaLM's attention term (fwd + bwd)
        per_tok = (6 * n if mode == "full" else 4 * n + 6 * j["trainable"]) + att
        mfu = j["tokens_per_s"] * per_tok / (tf * 1e12)
        ratio = ""
        if impl == "ft" and "tokens_per_s" in res["torch"]:
            ratio = "%.2f" % (j["tokens_per_s"] / res["torch"]["tokens_per_s"])
        print("| %s | %s | %.0f | %.1f%% | %.1f | %s |" % (name, impl, j["tokens_per_s"],
              100 * mfu, j["peak_bytes"] / 2**30, ratio))
PYEOF
}

save() {
	cat "$res" > results.md.tmp
	[ -s rows.txt ] && table >> results.md.tmp
	mv results.md.tmp results.md
	[ -n "${OUT:-}" ] && cp results.md parity.log train_check.log pref_check.log qlora_check.log bench.log "$OUT/" 2>/dev/null
	return 0
}

if [ "$what" = all ] || [ "$what" = bench ]; then
	: > rows.txt
	: > bench.log
	peak=$($PY bench/train-gpu/torch_gpu.py peak) || { echo "peak matmul failed"; save; exit 1; }
	echo "measured: $peak" | tee -a bench.log
	tf=$($PY -c 'import json,sys; print(json.loads(sys.argv[1])["bf16_tflops"])' "$peak")
	for c in $CASES; do
		s=$(spec "$c") || { echo "unknown case $c"; continue; }
		set -- $s
		args="$1 bf16 $2 $3 $4 $5 $6 $7 $8 $9 $STEPS $WARMUP ${10}"
		echo "== $c: $args" | tee -a bench.log
		ft=$(timeout "${CASE_TIMEOUT:-100}" bin/bench_gpu $args 2>>bench.log) ||
			{ echo "ft failed on $c" | tee -a bench.log; status=1; ft='{}'; }
		echo "ft:    $ft" | tee -a bench.log
		pt=$(timeout "${CASE_TIMEOUT:-100}" $PY bench/train-gpu/torch_gpu.py $args 2>>bench.log) ||
			{ echo "torch failed on $c" | tee -a bench.log; pt='{}'; }
		echo "torch: $pt" | tee -a bench.log
		echo "$c|$s|$ft|$pt" >> rows.txt
		save
	done
	table
fi

# Generation throughput: one line, ft-generate --device cuda (tokens it
# generated / the seconds of its decoding loop, prefill included:
# predict_results.json) vs transformers generate() on the same model.
if [ "$asked" = all ] || [ "$asked" = gen ]; then
	GEN_B=${GEN_B:-8} GEN_NEW=${GEN_NEW:-128}
	gdev=${DEVICE:-cuda} gshape="TinyLlama-1.1B shape"
	[ "$gdev" = cpu ] && gshape="2-layer script-check model on the CPU"
	if [ "$gdev" = cuda ] && ! nvidia-smi -L >/dev/null 2>&1; then
		echo "gen: generation throughput skipped: no usable GPU (DEVICE=cpu checks the script)" | tee gen.log
	else
		gd=$(mktemp -d)
		{
			[ "$gdev" = cpu ] && export GEN_CHECK=1
			$PY bench/train-gpu/gen_torch.py make "$gd" tests/fixtures/generate/tokenizer "$GEN_B" 48 &&
			rm -rf "$gd/ft" &&
			timeout "${CASE_TIMEOUT:-100}" bin/ft-generate --model_name_or_path "$gd" \
				--tokenizer tests/fixtures/generate/tokenizer --device "$gdev" --bf16 \
				--do_sample false --max_new_tokens "$GEN_NEW" \
				--per_device_eval_batch_size "$GEN_B" --do_predict --output_dir "$gd/ft" \
				"$gd/prompts.jsonl"
		} > gen.log 2>&1 || { echo "gen: ft side failed" >> gen.log; status=1; }
		ft=$($PY -c 'import json,sys; print(json.load(open(sys.argv[1]))["predict_tokens_per_second"])' \
			"$gd/ft/predict_results.json" 2>/dev/null)
		pt=$(timeout "${CASE_TIMEOUT:-100}" $PY bench/train-gpu/gen_torch.py run "$gd" "$GEN_B" "$GEN_NEW" 2>>gen.log) ||
			{ echo "gen: torch side failed" >> gen.log; pt='{}'; }
		ptt=$($PY -c 'import json,sys; print(json.loads(sys.argv[1]).get("tokens_per_s", ""))' "$pt" 2>/dev/null)
		ratio=$($PY -c 'import sys; print("%.2f" % (float(sys.argv[1]) / float(sys.argv[2])))' "$ft" "$ptt" 2>/dev/null)
		echo "generation ($gshape, bf16, batch $GEN_B, $GEN_NEW new tokens, greedy):" \
			"ft-generate --device $gdev ${ft:-failed} tokens/s, transformers generate ${ptt:-failed}" \
			"tokens/s, ratio ${ratio:-n/a}" | tee -a gen.log
		rm -rf "$gd"
	fi
	{ echo "## Generation"; echo; echo '```'; tail -1 gen.log; echo '```'; echo; } >> "$res"
	[ -n "${OUT:-}" ] && cp gen.log "$OUT/" 2>/dev/null
fi
save
exit $status
