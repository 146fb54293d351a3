#!/bin/bash
# bench/train-gpu/run.sh - the one device check (`make gpu-check` builds
# the bundle and runs this; on the GPU machine: bundle/run.sh).  Parts,
# most important first, so that a run cut short loses the least:
#   libs      check_libs.sh: every library the binaries need is bundled or
#             the image's (seconds)
#   parity    tests/gpu/run.sh: the backend against the PyTorch fixtures
#             and the CPU (test_gpu_parity, _generate, _qlora, _attn_half)
#   train     train_check.sh: ft-train 20 steps cpu vs cuda (fp32, bf16,
#             fp16) and the bit-identical resume from checkpoint-10
#   features  features_check.sh: the optimizer extras, SFT losses,
#             DoRA/OFT, GRPO, half activations and families, cpu vs cuda
#   bench     the throughput table, ft vs PyTorch + transformers + PEFT,
#             same model, batch and steps
#   pref      pref_check.sh (--stage rm/dpo/kto)
#   qlora     qlora_check.sh (--quantization_bit, and a QLoRA throughput
#             line vs bitsandbytes: bundle.sh bundles it in py/); `train`
#             names pref and qlora too
#   gen       ft-generate --device cuda vs transformers generate(), same
#             random TinyLlama-1.1B-shaped model, bf16, batch 8, 128 new
#             tokens (gen_torch.py)
#   bundle/run.sh [all|PART[,PART...]]   (default all)
# Time: TIME_BUDGET seconds (default 450, under the 8 minutes the device
# session allows): each part's time limit is cut to what is left, and a
# part that would start with under 15 s left is skipped with a note in
# results.md; 0 means no budget and no limits.  Each part's wall time is
# in its results.md heading, written after every part (and every bench
# case), so a run killed from outside still leaves what finished.
# DEVICE=emu: the dry run on this machine (make gpu-check-dry): the host
# emulation of the backend (FT_CUDA_LIB=.../libft_cuda_emu.so) stands in
# for the GPU, so every script, file name, fixture and results.md line
# runs; what cannot run there says so (PyTorch on CUDA, the bf16 peak, the
# table's timings, the 7B QLoRA line, TinyLlama generation: the table runs
# bench_gpu on a tiny shape, gen a 2-layer model on both sides).  Default
# TIME_BUDGET there: 0.
# Without a GPU (and DEVICE not emu) every GPU part is skipped with a
# message (exit 0 when the CPU-runnable parts pass).
# Env: PYTHON (python3), STEPS (5), WARMUP (2), CASES ("0.5b-full 7b-lora";
# also 1b-full, 7b-lora-ckpt, tiny), CASE_TIMEOUT (100 s per side and
# case), TIME_BUDGET, DEVICE (cuda | emu), GEN_B (8), GEN_NEW (128).
# Results: printed, and written to results.md (and $OUT/ when set).
set -u
here=$(cd "$(dirname "$(readlink -f "$0")")/../.." && pwd)
cd "$here" || exit 1
what=${1:-all}
PY=${PYTHON:-python3}
STEPS=${STEPS:-5}
WARMUP=${WARMUP:-2}
DEVICE=${DEVICE:-cuda}
emu=0
if [ "$DEVICE" = emu ]; then
	emu=1
	[ -f "${FT_CUDA_LIB:-}" ] || { echo "run.sh: DEVICE=emu needs FT_CUDA_LIB=.../libft_cuda_emu.so (make unit builds it)" >&2; exit 2; }
	FT_CUDA_LIB=$(readlink -f "$FT_CUDA_LIB")
	export FT_CUDA_LIB
fi
TIME_BUDGET=${TIME_BUDGET:-$([ $emu = 1 ] && echo 0 || echo 450)}
CASES=${CASES:-$([ $emu = 1 ] && echo tiny || echo "0.5b-full 7b-lora")}
t_start=$SECONDS

# want PART: asked for (all, or named in the comma list)
want() {
	case ",$what," in *,all,*|*,"$1",*) return 0 ;; esac
	[ "$1" = pref ] || [ "$1" = qlora ] && case ",$what," in *,train,*) return 0 ;; esac
	return 1
}
# left: seconds of the budget left (a large number without a budget)
left() { [ "$TIME_BUDGET" -gt 0 ] && echo $((TIME_BUDGET - (SECONDS - t_start))) || echo 999999; }
# limit N: N cut to the budget left; 0 (no limit) without a budget
limit() {
	[ "$TIME_BUDGET" -gt 0 ] || { echo 0; return; }
	local l
	l=$(left)
	[ "$l" -lt "$1" ] && echo "$l" || echo "$1"
}
# gpu: can the GPU parts run
gpu() { [ $emu = 1 ] || nvidia-smi -L >/dev/null 2>&1; }

# bin/, lib/ and tests/ travel as bundle.sh's payload.tar.xz (the device
# tool's 64 MiB): unpack it once (tar, else Python's tarfile, as an image
# may lack xz); .unpacked marks a finished unpack
if [ -f payload.tar.xz ] && [ ! -e .unpacked ]; then
	{ tar -xJf payload.tar.xz 2>/dev/null ||
		$PY -c 'import sys, tarfile; f = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}
tarfile.open(sys.argv[1]).extractall(".", **f)' payload.tar.xz; } &&
		touch .unpacked || { echo "run.sh: cannot unpack payload.tar.xz" >&2; exit 1; }
fi

# bundle.sh's bitsandbytes (py/, for qlora_check.sh's QLoRA line) where
# the machine's Python has none
if [ -d py ] && ! $PY -c 'import importlib.util as u, sys; sys.exit(u.find_spec("bitsandbytes") is None)' 2>/dev/null; then
	export PYTHONPATH="$here/py${PYTHONPATH:+:$PYTHONPATH}"
fi

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
# lib/fallback (Debian 12's libstdc++, libgcc_s, libexpat: they need glibc
# 2.36): one by one, only those the machine lacks, the Python
# environment's copy first (a conda image keeps its libstdc++ there)
fb=""
pyprefix=$($PY -c 'import sys; print(sys.prefix)' 2>/dev/null)
rm -rf lib/fallback.use
for f in "$here"/lib/fallback/*; do
	[ -e "$f" ] || continue
	n=$(basename "$f")
	ldconfig -p 2>/dev/null | grep -q "$n " && continue
	mkdir -p lib/fallback.use
	src=$f
	[ -n "$pyprefix" ] && [ -e "$pyprefix/lib/$n" ] && src=$pyprefix/lib/$n
	ln -sf "$src" "lib/fallback.use/$n"
	fb=":$here/lib/fallback.use"
	echo "run.sh: $n from $src (the machine has none)"
done
export LD_LIBRARY_PATH="$here/lib$cub$fb:${LD_LIBRARY_PATH:-}"

res=$here/parity.md   # the sections so far
: > "$res"
: > short.md   # the short report, printed last (brief)
status=0
{
	if [ $emu = 1 ]; then
		echo "Dry run on the host emulation ($FT_CUDA_LIB): script paths and numbers of the emulation, no GPU timings."
	else
		echo "GPU: $(nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>&1 | head -1)"
	fi
	echo "glibc here: $(ldd --version | head -1); bundle needs $(cat GLIBC_NEEDED 2>/dev/null)"
	echo "TIME_BUDGET: $TIME_BUDGET s"
	echo
} | tee header.md

save() {
	cat header.md "$res" > results.md.tmp
	[ -s table.partial ] && cat table.partial >> results.md.tmp
	mv results.md.tmp results.md
	# the device tool brings back at most 8 files: results.md, the short
	# report and every part's log in one file
	[ -n "${OUT:-}" ] && { cp results.md "$OUT/"; cp short.md "$OUT/report.txt"
		for f in *.log gen.err; do [ -f "$f" ] && { echo "==> $f <=="; cat "$f"; }; done > "$OUT/logs.txt"; }
	return 0
}
# brief NAME SECONDS RC LOG: the part's lines of the short report: its
# passes and failures counted (tests' ok/not ok, features' PASS/FAIL,
# check_libs), then each line saying what failed, was skipped or measured
brief() {
	local ok bad
	ok=$(grep -cE '^(ok|PASS) |^check_libs: closed' "$4")
	bad=$(grep -cE '^(not ok|FAIL) |^check_libs: .* needs ' "$4")
	echo "$1: $ok passed, $bad failed ($2 s$([ "$3" -ne 0 ] && echo ", exit $3"))"
	grep -E '^(not ok|FAIL|SKIP) |^check_libs: .* needs |stopped by its time limit|^# QLoRA' "$4" | cut -c1-300 | sed 's/^/  /'
	[ "$3" -ne 0 ] && [ "$bad" -eq 0 ] && echo "  last line: $(tail -1 "$4" | cut -c1-300)"
	return 0
} >> short.md
# skipped NAME TITLE: the budget is spent
skipped() {
	echo "## $2: skipped: the time budget is spent ($((SECONDS - t_start)) s of TIME_BUDGET $TIME_BUDGET s)" |
		tee -a "$res"
	echo >> "$res"
	echo "$1: skipped: the time budget is spent" >> short.md
	save
}
# part NAME TITLE LIMIT FILTER cmd...: cmd under timeout (LIMIT cut to the
# budget), its output in NAME.log, the lines FILTER (a grep -E pattern;
# . for all) keeps in a results.md section headed with its wall time
part() {
	local name=$1 title=$2 lim=$3 filt=$4 t0=$SECONDS rc
	shift 4
	[ "$(left)" -lt 15 ] && { skipped "$name" "$title"; return; }
	lim=$(limit "$lim")
	timeout "$lim" "$@" 2>&1 | tee "$name.log"
	rc=${PIPESTATUS[0]}
	[ $rc -eq 124 ] && echo "$name: stopped by its time limit, $lim s" | tee -a "$name.log"
	[ $rc -eq 0 ] || status=1
	brief "$name" "$((SECONDS - t0))" "$rc" "$name.log"
	{ echo "## $title ($((SECONDS - t0)) s$([ $rc -ne 0 ] && echo ", exit $rc"))"; echo; echo '```'
	  grep -E "$filt" "$name.log"; echo '```'; echo; } >> "$res"
	save
}

envs=(env BIN="$here/bin" FIXTURES="$here/tests/fixtures" PYTHON="$PY" DEVICE="$DEVICE")
want libs && part libs "Library closure (check_libs.sh)" 60 . \
	bash -c 'bench/train-gpu/check_libs.sh "$1" && bench/train-gpu/check_libs.sh "$1" --runtime' - "$here"
want parity && part parity "Parity (tests/gpu)" 180 '^(not ok|ok|#|tests/gpu)' \
	env FT_GPU_TEST_DIR="$here/bin" DEVICE="$DEVICE" tests/gpu/run.sh
# the 20-step cpu vs cuda run and the bit-identical resume: seconds, so
# before the longer parts
want train && part train "ft-train on the GPU vs the CPU, resume (train_check.sh)" 120 . \
	"${envs[@]}" bench/train-gpu/train_check.sh
want features && part features "Device features vs the CPU (features_check.sh)" 150 . \
	"${envs[@]}" bench/train-gpu/features_check.sh

# case: name mode hidden layers heads kv inter vocab B T ckpt
spec() {
	case $1 in
	7b-lora) echo "lora 4096 32 32 32 11008 32000 4 1024 0" ;;
	1b-full) echo "full 2048 22 32 4 5632 32000 4 1024 0" ;;
	0.5b-full) echo "full 896 24 14 2 4864 151936 4 1024 0" ;;   # Qwen2.5-0.5B's shape
	7b-lora-ckpt) echo "lora 4096 32 32 32 11008 32000 4 1024 1" ;;
	tiny) echo "full 64 2 4 2 128 256 2 64 0" ;;   # the dry run's: the script, not a timing
	*) return 1 ;;
	esac
}

# The table from rows.txt (after every case, so a run cut short still
# leaves the finished cases in results.md and $OUT).  tf 0: no measured
# peak (the emulation), MFU n/a.
table() {
	$PY - "$tf" "$peak" rows.txt <<'PYEOF'
import json, sys
tf = float(sys.argv[1]); dev = json.loads(sys.argv[2])["device"]
rows = [l.rstrip("\n") for l in open(sys.argv[3]) if l.strip()]
print("## Throughput on %s (%s)\n" % (dev, "measured bf16 matmul peak %.0f TFLOP/s" % tf if tf > 0
      else "no measured peak: MFU n/a"))
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
            print("| %s | %s | %s | | | |" % (name, impl, j.get("skipped", "failed"))); continue
        n = j["params"] - V * D            # the input embedding costs no products
        att = 12 * L * D * T               # PaLM's attention term (fwd + bwd)
        per_tok = (6 * n if mode == "full" else 4 * n + 6 * j["trainable"]) + att
        mfu = "%.1f%%" % (100 * j["tokens_per_s"] * per_tok / (tf * 1e12)) if tf > 0 else "n/a"
        ratio = ""
        if impl == "ft" and "tokens_per_s" in res["torch"]:
            ratio = "%.2f" % (j["tokens_per_s"] / res["torch"]["tokens_per_s"])
        print("| %s | %s | %.0f | %s | %.1f | %s |" % (name, impl, j["tokens_per_s"], mfu,
              j["peak_bytes"] / 2**30, ratio))
PYEOF
}

if want bench; then
	t0=$SECONDS
	if ! gpu; then
		echo "bench: throughput table skipped: no usable GPU (nvidia-smi -L fails or is absent)" | tee bench.log
		{ echo "## Throughput"; echo; tail -1 bench.log; echo; } >> "$res"
		tail -1 bench.log >> short.md
	elif [ "$(left)" -lt 15 ]; then
		skipped bench "Throughput"
	else
		: > rows.txt
		: > bench.log
		if [ $emu = 1 ]; then
			peak='{"bf16_tflops": 0, "device": "the host emulation (a script check: no timing meaning)"}'
		else
			peak=$(timeout "$(limit 60)" $PY bench/train-gpu/torch_gpu.py peak 2>>bench.log) ||
				{ echo "peak matmul failed: $(tail -1 bench.log)" | tee -a bench.log; peak='{"bf16_tflops": 0, "device": "unknown"}'; }
		fi
		echo "measured: $peak" | tee -a bench.log
		tf=$($PY -c 'import json,sys; print(json.loads(sys.argv[1])["bf16_tflops"])' "$peak")
		for c in $CASES; do
			s=$(spec "$c") || { echo "unknown case $c" | tee -a bench.log; continue; }
			if [ "$(left)" -lt 15 ]; then
				echo "$c: skipped: the time budget is spent" | tee -a bench.log
				continue
			fi
			set -- $s
			args="$1 bf16 $2 $3 $4 $5 $6 $7 $8 $9 $STEPS $WARMUP ${10}"
			echo "== $c: $args" | tee -a bench.log
			ft=$(timeout "$(limit "${CASE_TIMEOUT:-100}")" bin/bench_gpu $args 2>>bench.log) ||
				{ echo "ft failed on $c" | tee -a bench.log; status=1; ft='{}'; }
			echo "ft:    $ft" | tee -a bench.log
			if [ $emu = 1 ]; then
				pt='{"skipped": "not run on the emulation (PyTorch needs CUDA)"}'
			elif [ "$(left)" -lt 15 ]; then
				pt='{"skipped": "skipped: the time budget is spent"}'
			else
				pt=$(timeout "$(limit "${CASE_TIMEOUT:-100}")" $PY bench/train-gpu/torch_gpu.py $args 2>>bench.log) ||
					{ echo "torch failed on $c" | tee -a bench.log; pt='{}'; }
			fi
			echo "torch: $pt" | tee -a bench.log
			echo "$c|$s|$ft|$pt" >> rows.txt
			table > table.partial
			save
		done
		table > table.partial
		sed "1s/\$/ ($((SECONDS - t0)) s)/" table.partial >> "$res"
		echo >> "$res"
		{ echo "bench ($((SECONDS - t0)) s): $(grep -c . rows.txt) cases, tokens/s, MFU, peak GiB, ft/torch:"
		  grep -E '^\| ' table.partial | grep -v '^| case ' | sed 's/^/  /'
		  grep -E ' failed|: skipped: ' bench.log | sed 's/^/  /'; } >> short.md
		rm -f table.partial
	fi
	save
fi

if want pref; then
	part pref "ft-train --stage rm/dpo/kto on the GPU vs the CPU (pref_check.sh)" 180 . \
		"${envs[@]}" bench/train-gpu/pref_check.sh
fi
if want qlora; then
	# the 7B QLoRA throughput line needs a GPU's memory and PyTorch on CUDA
	qb=${QLORA_BENCH:-$([ $emu = 1 ] && echo 0 || echo 1)}
	part qlora "ft-train --quantization_bit 4/8 on the GPU vs the CPU, QLoRA throughput (qlora_check.sh)" 300 . \
		"${envs[@]}" QLORA_BENCH="$qb" bench/train-gpu/qlora_check.sh
fi

# Generation throughput: one line, ft-generate --device cuda (tokens it
# generated / the seconds of its decoding loop, prefill included:
# predict_results.json) vs transformers generate() on the same model.
# On the emulation (and DEVICE=cpu) a 2-layer model, both sides on the CPU
# but ft's through the emulated backend: the script, not a timing.
gen() {
	local gdev=cuda gshape="TinyLlama-1.1B shape" gd ft pt ptt ratio
	[ $emu = 1 ] && gshape="2-layer script-check model, ft on the host emulation, transformers on the CPU"
	[ "$DEVICE" = cpu ] && gdev=cpu gshape="2-layer script-check model on the CPU"
	if [ $emu = 0 ] && [ "$gdev" = cuda ] && ! gpu; then
		echo "gen: generation throughput skipped: no usable GPU (DEVICE=cpu or emu checks the script)"
		return 0
	fi
	# the model and the reference side are transformers': a dry run here
	# may have a Python without torch (the GPU image has it; PYTHON= picks one)
	if [ $emu = 1 ] && ! $PY -c 'import torch, transformers' 2>/dev/null; then
		echo "gen: generation skipped: $PY has no torch/transformers (set PYTHON to one that has)"
		return 0
	fi
	[ "$gdev" = cpu ] || [ $emu = 1 ] && export GEN_CHECK=1
	gd=$(mktemp -d)
	$PY bench/train-gpu/gen_torch.py make "$gd" tests/fixtures/generate/tokenizer "$GEN_B" 48 &&
		rm -rf "$gd/ft" &&
		timeout "$(limit "${CASE_TIMEOUT:-100}")" bin/ft-generate --model_name_or_path "$gd" \
			--tokenizer tests/fixtures/generate/tokenizer --device "$gdev" --bf16 \
			--do_sample false --max_new_tokens "$GEN_NEW" \
			--per_device_eval_batch_size "$GEN_B" --do_predict --output_dir "$gd/ft" \
			"$gd/prompts.jsonl" >&2 || { echo "gen: ft side failed"; status=1; }
	ft=$($PY -c 'import json,sys; print(json.load(open(sys.argv[1]))["predict_tokens_per_second"])' \
		"$gd/ft/predict_results.json" 2>/dev/null)
	pt=$(timeout "$(limit "${CASE_TIMEOUT:-100}")" $PY bench/train-gpu/gen_torch.py run "$gd" "$GEN_B" "$GEN_NEW") ||
		{ echo "gen: torch side failed"; pt='{}'; }
	ptt=$($PY -c 'import json,sys; print(json.loads(sys.argv[1]).get("tokens_per_s", ""))' "$pt" 2>/dev/null)
	ratio=$($PY -c 'import sys; print("%.2f" % (float(sys.argv[1]) / float(sys.argv[2])))' "$ft" "$ptt" 2>/dev/null)
	echo "generation ($gshape, bf16, batch $GEN_B, $GEN_NEW new tokens, greedy):" \
		"ft-generate --device $gdev ${ft:-failed} tokens/s, transformers generate ${ptt:-failed}" \
		"tokens/s, ratio ${ratio:-n/a}"
	rm -rf "$gd"
	[ -n "$ft" ] && [ -n "$ptt" ]
}
if want gen; then
	GEN_B=${GEN_B:-8} GEN_NEW=${GEN_NEW:-128}
	t0=$SECONDS
	if [ "$(left)" -lt 15 ]; then
		skipped gen "Generation"
	else
		gen > gen.log 2> gen.err || status=1
		cat gen.log
		sed 's/^/gen: /' gen.log >> short.md
		{ echo "## Generation ($((SECONDS - t0)) s)"; echo; echo '```'; cat gen.log; echo '```'; echo; } >> "$res"
		save
	fi
fi
echo "run.sh: $((SECONDS - t_start)) s in all$([ $status -ne 0 ] && echo ", something failed (results.md)")" |
	tee -a "$res" >> short.md
save
# the short report last, so the device tool's output tail holds it whole
echo
echo "==== short report (the whole: results.md, logs.txt and report.txt in \$OUT) ===="
cat header.md short.md
exit $status
