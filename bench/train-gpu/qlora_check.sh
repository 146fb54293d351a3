#!/bin/bash
# bench/train-gpu/qlora_check.sh - QLoRA (--quantization_bit) on the GPU
# against the CPU path, end to end through ft-train (run by run.sh; also
# from the tree with bin/ built):
#   1. 20 steps of tiny-llama LoRA on the 4-bit NF4 double-quantized base
#      and on the 8-bit base (eval every 10 steps: LLM.int8()), on
#      --device cpu and --device cuda fp32: every logged loss within 1e-5
#      of the CPU's (the dequantized weights are bit-equal, the GEMMs sum
#      in cuBLAS's order: train_check.sh's bound); 4-bit again with
#      --gradient_checkpointing (1e-5) and in bf16 (1e-3 of the CPU's fp32);
#   2. one throughput line: a Llama-2-7B-shaped QLoRA-4bit step (LoRA r=8
#      on q_proj,v_proj, bf16, gradient checkpointing, 1 x 512) through
#      bench_gpu against PyTorch + PEFT + bitsandbytes (torch_gpu.py
#      qlora4), or a note when bitsandbytes is not installed (part 1 is
#      then the comparison).
# Without a usable GPU the cuda runs are skipped with a message and the
# CPU runs still run (exit 0 when they do).
# Env: BIN, FIXTURES, PYTHON, DEVICE (as train_check.sh), QLORA_BENCH (1; 0 skips part 2).
. "$(dirname "$(readlink -f "$0")")/check_env.sh" qlora-check
sft_data
train() {   # out device bits [flags]
	local out=$1 dev=$2 bits=$3
	shift 3
	OMP_NUM_THREADS=1 "$BIN/ft-train" -q --model_name_or_path "$FIX/models/tiny-llama" \
		--train train.zst --val val.zst --output_dir "$out" --device "$dev" \
		--finetuning_type lora --lora_rank 4 --lora_target all --learning_rate 1e-3 \
		--max_steps 20 --gradient_accumulation_steps 2 --lr_scheduler_type cosine \
		--warmup_steps 3 --logging_steps 1 --eval_steps 10 --seed 7 \
		--quantization_bit "$bits" "$@"
}
compare() {   # LOG_A LOG_B TOL NAME: every step's loss (and eval_loss) within TOL
	$PY - "$@" <<'PYEOF'
import json, math, sys
a, b, tol, name = sys.argv[1], sys.argv[2], float(sys.argv[3]), sys.argv[4]
def losses(p):
    out = {}
    for line in open(p):
        e = json.loads(line)
        for k in ("loss", "eval_loss"):
            if e.get(k) is not None:
                out[(k, e["current_steps"])] = e[k]
    return out
la, lb = losses(a), losses(b)
steps = [s for s in la if s[0] == "loss"]
bad = [s for s in la if s not in lb or not math.isfinite(lb[s]) or abs(la[s] - lb[s]) > tol]
worst = max((abs(la[s] - lb[s]) for s in la if s in lb), default=float("inf"))
ok = not bad and len(steps) == 20
print(f"{'ok' if ok else 'not ok'} - {name}: {len(steps)} steps and {len(la) - len(steps)} evals, "
      f"max |loss diff| {worst:.3g} (tolerance {tol:g})" + ("" if ok else f", failing {sorted(bad)[:4]}"))
sys.exit(0 if ok else 1)
PYEOF
}
status=0
for bits in 4 8; do
	train "cpu$bits" cpu $bits || { echo "not ok - the CPU $bits-bit run failed"; exit 1; }
done
compare cpu4/trainer_log.jsonl cpu4/trainer_log.jsonl 0 "cpu 4-bit against itself (the comparison runs)" || status=1
if [ -n "$gpu_skip" ]; then
	echo "qlora_check: cuda runs skipped: $gpu_skip"
	exit $status
fi
run() {   # name bits tol [flags]
	local name=$1 bits=$2 tol=$3
	shift 3
	if ! train "$name" "$DEV" "$bits" "$@" 2> "$name.err"; then
		echo "not ok - $name failed: $(tail -1 "$name.err")"
		status=1
		return
	fi
	grep -h note "$name.err" | sed 's/^/# /'
	compare "cpu$bits/trainer_log.jsonl" "$name/trainer_log.jsonl" "$tol" "$name vs cpu" || status=1
}
run cuda4 4 1e-5
run cuda8 8 1e-5
run cuda4-ckpt 4 1e-5 --gradient_checkpointing true
run cuda4-bf16 4 1e-3 --bf16
if [ "${QLORA_BENCH:-1}" != 1 ]; then
	echo "# QLoRA-4bit throughput line: not run (QLORA_BENCH=${QLORA_BENCH}: run.sh's DEVICE=emu sets it, a 7B shape needs a GPU and PyTorch on CUDA)"
elif [ -x "$BIN/bench_gpu" ]; then
	args="qlora4 bf16 4096 32 32 32 11008 32000 1 512 5 2 1"
	ft=$(timeout "${CASE_TIMEOUT:-100}" "$BIN/bench_gpu" $args 2> bench.err) ||
		{ echo "not ok - bench_gpu $args: $(tail -1 bench.err)"; status=1; ft='{}'; }
	pt=$(timeout "${CASE_TIMEOUT:-150}" $PY "$here/bench/train-gpu/torch_gpu.py" $args 2> torch.err)
	prc=$?
	$PY - "$ft" "$pt" "$prc" "$(tail -1 torch.err)" <<'PYEOF'
import json, sys
ft, pt, rc, why = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
f = json.loads(ft or "{}")
fts = f.get("tokens_per_s")
line = "QLoRA-4bit Llama-2-7B shape, bf16, r=8 q,v, checkpointing, 1x512: ft %s tokens/s (peak %.2f GiB)" % (
    fts or "failed", f.get("peak_bytes", 0) / 2**30)
if rc == 3:
    line += "; PyTorch+bitsandbytes: not run (%s), the CPU path's losses above are the comparison" % why
elif rc == 0:
    p = json.loads(pt)
    line += "; PyTorch+PEFT+bitsandbytes %s tokens/s (peak %.2f GiB), ratio ft/torch %s" % (
        p["tokens_per_s"], p["peak_bytes"] / 2**30,
        "%.2f" % (fts / p["tokens_per_s"]) if fts else "n/a")
else:
    line += "; PyTorch+bitsandbytes failed: %s" % why
print("# " + line)
PYEOF
fi
exit $status
