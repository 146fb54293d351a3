#!/bin/bash
# bench/train-gpu/train_check.sh - ft-train on the GPU against the CPU
# path, end to end through the tool (run by run.sh; also from the tree:
# bench/train-gpu/train_check.sh with bin/ built).
#   1. 20 steps of tiny-llama LoRA (accumulation 2, clipping, cosine
#      warmup, eval, checkpoints every 10) on --device cpu and on
#      --device cuda in fp32 and bf16: every logged loss within 1e-5
#      (fp32; the GPU runs the CPU's operations in another order, cuBLAS
#      without TF32) or 1e-3 (bf16 vs the CPU's fp32) of the CPU's, and
#      every grad_norm finite;
#   2. resume: the cuda fp32 run again from its checkpoint-10 in a new
#      process: every logged loss bit-identical to the uninterrupted run;
#   3. fp16: 20 steps with no nan loss or grad norm.
# Without a usable GPU the cuda runs are skipped with a message, the CPU
# runs and the comparison code still run (against themselves), exit 0.
# Env: BIN (dir of ft-train/ft-cat), FIXTURES, PYTHON; DEVICE (cuda; cpu
# runs the whole script on the CPU, which checks the script itself).
. "$(dirname "$(readlink -f "$0")")/check_env.sh" train-check
sft_data
train() {   # out device [flags]
	local out=$1 dev=$2
	shift 2
	OMP_NUM_THREADS=1 "$BIN/ft-train" -q --model_name_or_path "$FIX/models/tiny-llama" \
		--train train.zst --val val.zst --output_dir "$out" --device "$dev" \
		--finetuning_type lora --lora_rank 4 --learning_rate 1e-3 --max_steps 20 \
		--gradient_accumulation_steps 2 --lr_scheduler_type cosine --warmup_steps 3 \
		--logging_steps 1 --eval_steps 10 --save_steps 10 --seed 7 "$@"
}
# compare LOG_A LOG_B TOL NAME: every step's loss, |a-b| <= TOL (0: equal)
compare() {
	$PY - "$@" <<'PYEOF'
import json, math, sys
a, b, tol, name = sys.argv[1], sys.argv[2], float(sys.argv[3]), sys.argv[4]
def losses(p):
    out = {}
    for line in open(p):
        e = json.loads(line)
        if "loss" in e and e.get("loss") is not None:
            out[e["current_steps"]] = (e["loss"], e.get("grad_norm"))
    return out
la, lb = losses(a), losses(b)
bad = [s for s in la if s not in lb]
worst = 0.0
for s in sorted(set(la) & set(lb)):
    d = abs(la[s][0] - lb[s][0])
    worst = max(worst, d)
    g = lb[s][1]
    if d > tol or (tol == 0 and la[s][0] != lb[s][0]) or g is None or not math.isfinite(g):
        bad.append(s)
ok = not bad and len(la) == 20
print(f"{'ok' if ok else 'not ok'} - {name}: {len(la)} steps, max |loss diff| {worst:.3g} (tolerance {tol:g})"
      + ("" if ok else f", failing steps {sorted(set(bad))[:5]}"))
sys.exit(0 if ok else 1)
PYEOF
}
status=0
train cpu cpu || { echo "not ok - the CPU run failed"; exit 1; }
compare cpu/trainer_log.jsonl cpu/trainer_log.jsonl 0 "cpu against itself (the comparison runs)" || status=1
if [ -n "$gpu_skip" ]; then
	echo "train_check: cuda runs skipped: $gpu_skip"
	exit $status
fi
for p in fp32 bf16 fp16; do
	flag=""
	[ $p != fp32 ] && flag=--$p
	if ! train "cuda-$p" "$DEV" $flag 2> "cuda-$p.err"; then
		echo "not ok - cuda $p run failed: $(tail -1 "cuda-$p.err")"
		status=1
		continue
	fi
	grep -h note "cuda-$p.err" | sed 's/^/# /'
	case $p in
	fp32) compare cpu/trainer_log.jsonl cuda-fp32/trainer_log.jsonl 1e-5 "cuda fp32 vs cpu" || status=1 ;;
	bf16) compare cpu/trainer_log.jsonl cuda-bf16/trainer_log.jsonl 1e-3 "cuda bf16 vs cpu fp32" || status=1 ;;
	fp16) compare cpu/trainer_log.jsonl cuda-fp16/trainer_log.jsonl 1e9 "cuda fp16: finite losses and norms" || status=1 ;;
	esac
done
if [ -d cuda-fp32/checkpoint-10 ]; then
	mkdir r && cp -r cuda-fp32/checkpoint-10 r/ && cp cuda-fp32/trainer_log.jsonl r/
	if train r "$DEV" --resume_from_checkpoint r/checkpoint-10 2> r.err; then
		compare cuda-fp32/trainer_log.jsonl r/trainer_log.jsonl 0 "cuda resume from checkpoint-10 bit-identical" || status=1
	else
		echo "not ok - cuda resume failed: $(tail -1 r.err)"
		status=1
	fi
fi
exit $status
