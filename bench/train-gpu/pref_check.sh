#!/bin/bash
# bench/train-gpu/pref_check.sh - ft-train's preference stages on the GPU
# against the CPU path, end to end through the tool (run by run.sh after
# train_check.sh; also from the tree with bin/ built).  Tiny Llama, fp32,
# 6 steps (2 micro-batches each for rm), eval at steps 3 and 6, every
# trainer_log.jsonl number compared: loss, grad_norm, and TRL's metrics
# (rewards/*, logps/*, logits/*, kl; eval_* at the evaluations).
#   dpo sigmoid  LoRA, reference = the adapters disabled (random B: it differs)
#   dpo ipo      per-token mean log-probs
#   dpo orpo     no reference; the sft term
#   dpo full     full fine-tuning, reference = a frozen device copy of the base
#   kto          desirable/undesirable, the KL rows
#   rm           the value head on the device (dropout 0.1 from TRL's default,
#                LoRA dropout 0.1: the masks must be the CPU's), then its
#                value_head.safetensors and --do_predict scores
# Tolerance: |gpu - cpu| <= 1e-5 * max(1, |cpu|).  fp32 on both sides,
# cuBLAS without TF32; only summation orders differ (GEMM K loops, block
# tree sums), so values agree to a few float ulps per operation; logps
# sums reach ~100 in magnitude, where one fp32 ulp is 8e-6, hence relative
# above 1.  Without a usable GPU the cuda runs are skipped with a message;
# the CPU runs and the comparison still run (against themselves).
# Env: BIN, FIXTURES, PYTHON, DEVICE (cuda; cpu checks the script).
. "$(dirname "$(readlink -f "$0")")/check_env.sh" pref-check
PREF=$FIX/pref
for s in dpo kto rm; do "$BIN/ft-cat" --encode < "$PREF/$s.jsonl" > $s.zst || exit 1; done
# rm's adapter with lora_dropout 0.1 in its adapter_config.json (what it trains with)
mkdir -p ad01 && cp "$PREF/llama-lora"/* ad01/ &&
	sed 's/"lora_dropout": *[0-9.e-]*/"lora_dropout": 0.1/' "$PREF/llama-lora/adapter_config.json" > ad01/adapter_config.json || exit 1
flags() {
	case $1 in
	sigmoid) echo "--stage dpo --train dpo.zst --val dpo.zst --adapter_name_or_path $PREF/llama-lora" ;;
	ipo) echo "--stage dpo --pref_loss ipo --train dpo.zst --val dpo.zst --adapter_name_or_path $PREF/llama-lora" ;;
	orpo) echo "--stage dpo --pref_loss orpo --train dpo.zst --val dpo.zst --adapter_name_or_path $PREF/llama-lora" ;;
	full) echo "--stage dpo --finetuning_type full --train dpo.zst --val dpo.zst" ;;
	kto) echo "--stage kto --train kto.zst --val kto.zst --adapter_name_or_path $PREF/llama-lora" ;;
	rm) echo "--stage rm --train rm.zst --val rm.zst --adapter_name_or_path ad01 --gradient_accumulation_steps 2 --do_train true --do_predict true" ;;
	esac
}
run() {   # case out device [flags]
	OMP_NUM_THREADS=1 "$BIN/ft-train" -q --model_name_or_path "$FIX/models/tiny-llama" $(flags "$1") \
		--output_dir "$2" --device "$3" --max_steps 6 --logging_steps 1 --eval_steps 3 --save_steps 0 \
		--learning_rate 5e-3 --seed 11 "${@:4}"
}
# compare LOG_A LOG_B NAME [TOL]: every number of every line, keys and steps equal
compare() {
	$PY - "$@" <<'PYEOF'
import json, math, sys
a, b, name = sys.argv[1:4]
tol = float(sys.argv[4]) if len(sys.argv) > 4 else 1e-5
skip = {"epoch", "current_steps", "total_steps", "percentage", "elapsed_time", "remaining_time",
        "learning_rate", "peak_memory_bytes", "device", "throughput", "total_tokens"}
def lines(p):
    out = []
    for line in open(p):
        e = json.loads(line)
        out.append((e.get("current_steps"), {k: v for k, v in e.items()
                     if k not in skip and isinstance(v, (int, float)) and not isinstance(v, bool)}))
    return out
la, lb = lines(a), lines(b)
worst, bad = 0.0, []
if [s for s, _ in la] != [s for s, _ in lb]:
    bad.append("steps differ")
for (s, x), (_, y) in zip(la, lb):
    if set(x) != set(y):
        bad.append(f"step {s}: keys {sorted(set(x) ^ set(y))}")
    for k in set(x) & set(y):
        d = abs(x[k] - y[k]) / max(1.0, abs(y[k]))
        worst = max(worst, d)
        if not math.isfinite(x[k]) or d > tol:
            bad.append(f"step {s} {k}: {x[k]} vs {y[k]}")
n = sum(len(x) for _, x in la)
ok = not bad and len(la) >= 6
print(f"{'ok' if ok else 'not ok'} - {name}: {len(la)} log lines, {n} numbers, "
      f"max relative diff {worst:.3g} (tolerance {tol:g})" + ("" if ok else f"; {bad[:4]}"))
sys.exit(0 if ok else 1)
PYEOF
}
# same_preds A B: rm's generated_predictions.jsonl (2 decimals) and value head
same_rm() {
	$PY - "$@" <<'PYEOF'
import json, struct, sys
a, b, name = sys.argv[1:4]
pa = [json.loads(l) for l in open(f"{a}/generated_predictions.jsonl")]
pb = [json.loads(l) for l in open(f"{b}/generated_predictions.jsonl")]
def head(d):
    raw = open(f"{d}/value_head.safetensors", "rb").read()
    n = struct.unpack("<Q", raw[:8])[0]
    hdr = json.loads(raw[8:8 + n])
    vals = []
    for k in sorted(k for k in hdr if k != "__metadata__"):
        s, e = hdr[k]["data_offsets"]
        blob = raw[8 + n + s:8 + n + e]
        vals += struct.unpack(f"<{len(blob) // 4}f", blob)
    return vals
ha, hb = head(a), head(b)
dh = max(abs(x - y) for x, y in zip(ha, hb)) if len(ha) == len(hb) and ha else float("inf")
# scores rounded to 2 decimals may differ by one step where a value sits on a boundary
dp = max((abs(x[k] - y[k]) for x, y in zip(pa, pb) for k in ("chosen", "rejected")), default=float("inf"))
ok = len(pa) == len(pb) and len(pa) > 0 and dh <= 1e-5 and dp <= 0.0100001
print(f"{'ok' if ok else 'not ok'} - {name}: {len(pa)} predictions (max diff {dp:.3g}), "
      f"value head max diff {dh:.3g}")
sys.exit(0 if ok else 1)
PYEOF
}
cases="sigmoid ipo orpo full kto rm"
status=0
for c in $cases; do
	run $c "cpu-$c" cpu 2> "cpu-$c.err" || { echo "not ok - the CPU $c run failed: $(tail -1 "cpu-$c.err")"; status=1; }
done
compare cpu-sigmoid/trainer_log.jsonl cpu-sigmoid/trainer_log.jsonl "cpu against itself (the comparison runs)" || status=1
if [ -n "$gpu_skip" ]; then
	echo "pref_check: cuda runs skipped: $gpu_skip"
	exit $status
fi
for c in $cases; do
	[ -f "cpu-$c/trainer_log.jsonl" ] || continue
	if ! run $c "gpu-$c" "$DEV" 2> "gpu-$c.err"; then
		echo "not ok - $DEV $c run failed: $(tail -1 "gpu-$c.err")"
		status=1
		continue
	fi
	compare "cpu-$c/trainer_log.jsonl" "gpu-$c/trainer_log.jsonl" "$DEV fp32 $c vs cpu" || status=1
	[ $c = rm ] && { same_rm "cpu-$c" "gpu-$c" "$DEV rm predictions and value head vs cpu" || status=1; }
done
# bf16: the same dpo sigmoid run, every number finite (no parity claim:
# the CPU computes in fp32)
if run sigmoid gpu-bf16 "$DEV" --bf16 2> gpu-bf16.err; then
	compare gpu-bf16/trainer_log.jsonl cpu-sigmoid/trainer_log.jsonl "$DEV bf16 dpo sigmoid: finite" 1e30 ||
		status=1
else
	echo "not ok - $DEV bf16 dpo sigmoid failed: $(tail -1 gpu-bf16.err)"
	status=1
fi
exit $status
