#!/bin/bash
# bench/train-gpu/features_check.sh - the device features the parity part
# predates, each a few steps of ft-train on a tiny fixture on --device cpu
# and --device cuda, compared with the bound its emulation test argues
# (the bats file named on each line; the argument is there).  Run by
# run.sh after the parity tests; also from the tree with bin/ built.
#   optimizers  LoRA+, BAdam, Adam-mini, Muon, GaLore, APOLLO
#               (tests/bats/ft-train-cuda-optim-emu.bats)
#   losses      DFT, EAFT, ASFT, NEFTune, modules_to_save
#               (tests/bats/ft-train-cuda-losses-emu.bats)
#   adapters    DoRA, without and with LoRA dropout, and on a 4-bit base
#               (ft-train-cuda-dora-emu.bats), OFT
#               (ft-train-cuda-oft-emu.bats): the logs, and the saved
#               adapters element by element
#   grpo        --stage grpo, completions byte-equal (ft-train-rl-emu.bats)
#   half        --bf16 / --fp16, 20 steps against the CPU's fp32
#               (ft-train-cuda-half-emu.bats)
#   families    one model per family: Qwen2 (DoRA above), Qwen3, Gemma 2,
#               Gemma 3, Phi-3, Phi-4-mini (ft-train-cuda-families-emu.bats)
#   fp8         --fp8: full (checkpointing), LoRA, Qwen2 in fp32; full and
#               LoRA in bf16 against the CPU's fp32 (ft-train-cuda-emu.bats)
#   ppo         only where ft-train accepts --stage ppo --device cuda
# One line per case: PASS/FAIL (or SKIP), the worst difference and the
# bound, the seconds it took.  A failing case (a refused flag, a crash, a
# difference over its bound, a timeout of CASE_TIMEOUT s) fails that line
# only; the exit status is 1 when any line failed.  The CPU reference of
# each case runs beside its device run (one thread each), so a case costs
# about its device run: on an H100 a tiny model's 4 steps are the
# process's start and the CUDA context (~1-2 s), ~35 cases ~60 s.
# Without a usable GPU the device runs are skipped with a message, as in
# train_check.sh.  Env: BIN, FIXTURES, PYTHON, DEVICE (check_env.sh),
# CASE_TIMEOUT (60), ONLY (a regular expression: the cases whose names
# match), JOBS (4; 1 where nvidia-smi shows an exclusive compute mode).
. "$(dirname "$(readlink -f "$0")")/check_env.sh" features-check
sft_data
"$BIN/ft-cat" --encode < "$FIX/grpo/prompts.jsonl" > p8.zst || exit 1
LLAMA=$FIX/models/tiny-llama
QWEN=$FIX/models/tiny-qwen2
FAM=$FIX/families
status=0

# The comparisons.  cmp_logs MODE A B TOL [GTOL]: prints "WORST BOUND
# DETAIL" and exits 0 when within.
#   close  emu_helper.bash's close: the same keys per log line, every
#          loss, grad_norm and eval_loss within TOL relative
#   half   ft-train-cuda-half-emu.bats's worst: 20 losses, losses and
#          eval losses within TOL relative, grad norms within GTOL (the
#          keys may differ: the half runs log what fp32's do not)
#   all    ft-train-rl-emu.bats's both: every number of every line
#          within TOL relative or 1e-5 absolute (the loss, rounded to 4
#          decimals by the log, 1.01e-4 absolute)
#   st     two safetensors files, max |a - b| over every tensor <= TOL
cmp_logs() {
	$PY - "$@" <<'PYEOF'
import json, math, struct, sys
mode, a, b, tol = sys.argv[1], sys.argv[2], sys.argv[3], float(sys.argv[4])
gtol = float(sys.argv[5]) if len(sys.argv) > 5 and sys.argv[5] != "-" else tol
clock = {"elapsed_time", "remaining_time", "throughput", "device", "peak_memory_bytes"}
def lines(p):
    return [{k: v for k, v in json.loads(l).items() if k not in clock} for l in open(p) if l.strip()]
def rel(x, y):
    return abs(x - y) / max(abs(x), 1e-30)
def out(worst, bound, detail, good):
    print(f"{worst:.3g}\t{bound}\t{detail}")
    sys.exit(0 if good else 1)
def tensors(p):
    raw = open(p, "rb").read()
    n = struct.unpack("<Q", raw[:8])[0]
    hdr = json.loads(raw[8:8 + n])
    res = {}
    for k, h in hdr.items():
        if k == "__metadata__":
            continue
        s, e = h["data_offsets"]
        blob = raw[8 + n + s:8 + n + e]
        if h["dtype"] == "F32":
            res[k] = struct.unpack(f"<{len(blob) // 4}f", blob)
        elif h["dtype"] == "F16":
            res[k] = struct.unpack(f"<{len(blob) // 2}e", blob)
        elif h["dtype"] == "BF16":
            res[k] = [struct.unpack("<f", b"\0\0" + blob[i:i + 2])[0] for i in range(0, len(blob), 2)]
        else:
            res[k] = None
    return res
if mode == "st":
    ta, tb = tensors(a), tensors(b)
    if set(ta) != set(tb):
        out(math.inf, tol, f"tensor names differ: {sorted(set(ta) ^ set(tb))[:3]}", False)
    w = 0.0
    for k in ta:
        if ta[k] is None or tb[k] is None or len(ta[k]) != len(tb[k]):
            out(math.inf, tol, f"{k}: dtype or shape differs", False)
        for x, y in zip(ta[k], tb[k]):
            d = abs(x - y)
            w = max(w, d if math.isfinite(d) else math.inf)
    out(w, tol, f"{len(ta)} tensors, max |cpu - device|", w <= tol)
la, lb = lines(a), lines(b)
if mode != "half" and [sorted(x) for x in la] != [sorted(y) for y in lb]:
    out(math.inf, tol, f"the log lines' keys differ ({len(la)} and {len(lb)} lines)", False)
if mode == "close":
    keys = ("loss", "grad_norm", "eval_loss")
    pairs = [(x[k], y[k]) for x, y in zip(la, lb) for k in keys if x.get(k) is not None]
    w = max((rel(x, y) for x, y in pairs), default=math.inf)
    w = w if all(math.isfinite(y) for _, y in pairs) else math.inf
    out(w, tol, f"{len(pairs)} losses and norms, worst relative", pairs and w <= tol)
if mode == "half":
    ws = {}
    for k, t in (("loss", tol), ("eval_loss", tol), ("grad_norm", gtol)):
        p = [(x[k], y[k]) for x, y in zip(la, lb) if x.get(k) is not None]
        ws[k] = (max((rel(x, y) for x, y in p), default=math.inf) if len(p) >= 2 else math.inf, t)
    n = sum(1 for x in la if x.get("loss") is not None)
    good = n == 20 and all(w <= t for w, t in ws.values())
    out(ws["loss"][0], f"{tol:g}, grad norms {gtol:g}",
        f"{n} steps; worst relative eval_loss {ws['eval_loss'][0]:.3g}, grad_norm {ws['grad_norm'][0]:.3g}; loss", good)
w, bad, n = 0.0, [], 0
for x, y in zip(la, lb):
    for k, v in x.items():
        if not isinstance(v, (int, float)) or isinstance(v, bool):
            continue
        u = y[k]
        d, n = abs(v - u), n + 1
        lim = 1.01e-4 if k == "loss" else 1e-5
        if not math.isfinite(u) or (d > lim and d > tol * abs(v)):
            bad.append(f"{k} {v} vs {u}")
        if abs(v) > 1e-2:
            w = max(w, d / abs(v))
out(w if not bad else math.inf, f"{tol:g} (or 1e-5 absolute)",
    f"{n} numbers, worst relative on those above 1e-2" + (f"; {bad[:2]}" if bad else ""), n > 10 and not bad)
PYEOF
}

# sft OUT DEVICE MODEL [flags]: one ft-train (4 steps unless flags say
# otherwise), emu_helper.bash's tr: lr 5e-3, seed 3, a log line a step
sft() {
	local out=$1 dev=$2 model=$3
	shift 3
	OMP_NUM_THREADS=1 timeout "${CASE_TIMEOUT:-60}" "$BIN/ft-train" -q -v --model_name_or_path "$model" \
		--output_dir "$out" --device "$dev" --max_steps 4 --logging_steps 1 --save_steps 0 \
		--learning_rate 5e-3 --seed 3 "$@"
}

# failed RC ERRFILE: why a run failed, in a few words
failed() {
	[ "$1" -eq 124 ] && { echo "timed out (CASE_TIMEOUT ${CASE_TIMEOUT:-60} s)"; return; }
	echo "failed (exit $1): $(grep -v '^ft-train: note:' "$2" | tail -1)"
}

# feat NAME MODE TOL GTOL SOURCE MODEL [flags]: the CPU run (in the
# background) and the device run, then the comparison of MODE; case
# directory NAME/; the device run's note must say it trained on cuda
# (-q -v: the notes only).
# GRPO's cases compare completions.jsonl byte for byte too.  ST_BOUND set:
# the saved adapters within it (DoRA, OFT).
feat_one() {
	local name=$1 mode=$2 tol=$3 gtol=$4 src=$5 model=$6
	shift 6
	local t0=$SECONDS why="" r
	mkdir -p "$name"
	runner "$name/cpu" cpu "$model" "$@" 2> "$name/cpu.err" &
	local cpid=$!
	runner "$name/dev" "$DEV" "$model" "$@" 2> "$name/dev.err" || why="device run $(failed $? "$name/dev.err")"
	wait $cpid || { r=$?; [ -n "$why" ] || why="CPU run $(failed $r "$name/cpu.err")"; }
	if [ -z "$why" ] && [ "$DEV" != cpu ]; then
		grep -q "note: training on cuda" "$name/dev.err" || why="the device run did not train on cuda"
	fi
	if [ -z "$why" ] && [ -f "$name/cpu/completions.jsonl" ]; then
		cmp -s "$name/cpu/completions.jsonl" "$name/dev/completions.jsonl" || why="completions.jsonl differ"
	fi
	if [ -z "$why" ]; then
		r=$(cmp_logs "$mode" "$name/cpu/trainer_log.jsonl" "$name/dev/trainer_log.jsonl" "$tol" "$gtol" 2>&1) ||
			why="over the bound: $(echo "$r" | tr '\t' ' ')"
	fi
	if [ -z "$why" ] && [ -n "${ST_BOUND:-}" ]; then
		local s
		s=$(cmp_logs st "$name/cpu/adapter_model.safetensors" "$name/dev/adapter_model.safetensors" "$ST_BOUND" 2>&1) ||
			why="adapters over the bound: $(echo "$s" | tr '\t' ' ')"
		r="$r; adapters max |diff| ${s%%	*} (bound $ST_BOUND)"
	fi
	local sec=$((SECONDS - t0))
	if [ -n "$why" ]; then
		echo "FAIL $name: $why (${sec}s; $src)"
	else
		local w b d
		IFS=$'\t' read -r w b d <<< "$r"
		echo "PASS $name: worst $w (bound $b; $d) (${sec}s; $src)"
	fi
	rm -rf "$name"
}
# feat: feat_one, JOBS cases at a time (each case's line printed when it
# ends, and kept in lines.txt for the exit status)
feat() {
	[ -n "${ONLY:-}" ] && ! [[ $1 =~ $ONLY ]] && return 0
	while [ "$(jobs -rp | wc -l)" -ge "$JOBS" ]; do wait -n; done
	feat_one "$@" | tee -a lines.txt &
}
: > lines.txt
# Cases run JOBS at a time (default 4: a tiny model's device process is
# mostly its CUDA start, and a card takes several processes at once);
# one at a time where the card's compute mode allows one process only.
cmode=$(nvidia-smi --query-gpu=compute_mode --format=csv,noheader 2>/dev/null | head -1)
JOBS=${JOBS:-$(case $cmode in *Exclusive*|*Prohibited*) echo 1 ;; *) echo 4 ;; esac)}
runner() { sft "$@"; }

if [ -n "$gpu_skip" ]; then
	echo "features_check: device runs skipped: $gpu_skip"
	exit 0
fi

O=tests/bats/ft-train-cuda-optim-emu.bats
acc=(--train train.zst --val val.zst --eval_steps 2 --gradient_accumulation_steps 2 --max_grad_norm 0.5)
feat loraplus close 1e-4 - $O "$LLAMA" "${acc[@]}" --lr_scheduler_type cosine --warmup_steps 2 \
	--finetuning_type lora --lora_target all --loraplus_lr_ratio 16
feat badam close 1e-4 - $O "$LLAMA" --train train.zst --finetuning_type full --use_badam true \
	--badam_switch_interval 2 --max_grad_norm 0.5 --max_steps 6
feat adam_mini close 1e-4 - $O "$LLAMA" "${acc[@]}" --finetuning_type full --weight_decay 0.1 --use_adam_mini true
feat muon_full close 1e-4 - $O "$LLAMA" "${acc[@]}" --weight_decay 0.1 --learning_rate 1e-3 \
	--finetuning_type full --use_muon true
feat muon_lora close 1e-5 - $O "$LLAMA" "${acc[@]}" --weight_decay 0.1 --learning_rate 1e-3 \
	--finetuning_type lora --lora_target all --use_muon true
feat galore close 1e-4 - $O "$LLAMA" "${acc[@]}" --finetuning_type full --use_galore true --weight_decay 0.1 \
	--galore_rank 4 --galore_update_interval 200
feat galore_reproject close 1e-4 - $O "$LLAMA" --train train.zst --finetuning_type full --use_galore true \
	--weight_decay 0.1 --max_grad_norm 0.5 --galore_rank 1 --galore_update_interval 2 --galore_layerwise true
feat apollo close 1e-4 - $O "$LLAMA" "${acc[@]}" --finetuning_type full --use_apollo true --weight_decay 0.1 \
	--apollo_rank 4 --apollo_update_interval 2

L=tests/bats/ft-train-cuda-losses-emu.bats
feat dft close 1e-4 - $L "$LLAMA" "${acc[@]}" --use_dft_loss true --finetuning_type lora --lora_dropout 0.1
feat eaft close 1e-4 - $L "$LLAMA" "${acc[@]}" --use_eaft_loss true --eaft_alpha 1.5 --finetuning_type full
feat asft close 1e-4 - $L "$LLAMA" "${acc[@]}" --finetuning_type full --use_asft_loss true --asft_alpha 2 \
	--learning_rate 1e-2
feat neftune close 1e-4 - $L "$LLAMA" "${acc[@]}" --neftune_noise_alpha 5 --lora_dropout 0.1
feat gemma2_eaft close 1e-4 - $L "$FAM/gemma2/model" --train train.zst --use_eaft_loss true
# modules_to_save: new tokens (the vocabulary fixture, as the bats file's
# vocab_data / vocab_pack) train embed_tokens and lm_head beside LoRA
mts_data() {
	cp -r "$FIX/vocab/base" vocab-model && mkdir -p vdata || return 1
	cat > vdata/svg.json <<-'EOT'
	[{"instruction": "Draw a box", "input": "", "output": "<|START_OF_SVG|><|start_of_rect|>w 2<|end_of_rect|><|END_OF_SVG|>"},
	 {"instruction": "Write hi", "input": "", "output": "<|START_OF_SVG|><|start_of_text|>hi<|end_of_text|><|END_OF_SVG|> <tool_x>"},
	 {"instruction": "A circle", "input": "", "output": "<|start_of_circle|>r 1<|end_of_circle|>"}]
	EOT
	echo '{"svg": {"file_name": "svg.json"}}' > vdata/dataset_info.json
	"$BIN/ft-tokenize" -q --dataset svg --dataset_dir vdata --template empty --model_name_or_path vocab-model \
		--cutoff_len 64 --no_cache --add_tokens "<tool_x>" --new_special_tokens_config "$MTS_CFG" -o vt.zst &&
		"$BIN/ft-pack" -q --cutoff_len 64 --per_device_train_batch_size 2 -o vpacked.zst vt.zst
}
MTS_CFG=$FIX/lf-examples/extras/multi_tokens/tokens_cfg.yaml
if [ -z "${ONLY:-}" ] || [[ modules_to_save =~ $ONLY ]]; then
	if mts_data 2> mts.err; then
		ST_BOUND=1e-4 feat modules_to_save close 1e-4 - $L vocab-model --train vpacked.zst \
			--add_tokens "<tool_x>" --new_special_tokens_config "$MTS_CFG" --init_special_tokens desc_init_w_noise
	else
		echo "FAIL modules_to_save: the data could not be made: $(tail -1 mts.err) ($L)" | tee -a lines.txt
	fi
fi

ST_BOUND=2e-4 feat dora close 1e-4 - tests/bats/ft-train-cuda-dora-emu.bats "$QWEN" --train train.zst \
	--val val.zst --eval_steps 2 --finetuning_type lora --use_dora --lora_target all
ST_BOUND=2e-4 feat dora_dropout close 1e-4 - tests/bats/ft-train-cuda-dora-emu.bats "$QWEN" --train train.zst \
	--val val.zst --eval_steps 2 --finetuning_type lora --use_dora --lora_target all --lora_dropout 0.1
ST_BOUND=2e-4 feat qdora close 1e-4 - tests/bats/ft-train-cuda-dora-emu.bats "$QWEN" --train train.zst \
	--val val.zst --eval_steps 2 --finetuning_type lora --use_dora --lora_target all --lora_dropout 0.1 \
	--quantization_bit 4
ST_BOUND=1e-4 feat oft close 1e-4 - tests/bats/ft-train-cuda-oft-emu.bats "$LLAMA" --train train.zst \
	--val val.zst --eval_steps 2 --finetuning_type oft --lora_target q_proj,v_proj,down_proj \
	--gradient_accumulation_steps 2 --max_grad_norm 0.5 --warmup_steps 2

# GRPO (ft-train-rl-emu.bats's g): 4 steps on the peaky model, rewarded
# for its frequent token 221, completions logged
count221='while IFS= read -r l; do c=${l#*\"completion\":\"}; c=${c%%\"*}; n=0; for t in $c; do [ "$t" = 221 ] && n=$((n+1)); done; echo $n; done'
grpo() {
	local out=$1 dev=$2 model=$3
	shift 3
	OMP_NUM_THREADS=1 timeout "${CASE_TIMEOUT:-60}" "$BIN/ft-train" -q -v --stage grpo --model_name_or_path "$model" \
		--train p8.zst --output_dir "$out" --device "$dev" --reward_funcs "c221=$count221" \
		--max_completion_length 6 --max_steps 4 --logging_steps 1 --learning_rate 1e-2 --seed 5 \
		--log_completions true "$@"
}
runner() { grpo "$@"; }
G=tests/bats/ft-train-rl-emu.bats
feat grpo_lora all 1e-4 - $G "$FIX/grpo/peaky-llama" --temperature 0.7 --beta 0.04 --num_iterations 2 --max_grad_norm 0.5
feat grpo_full all 1e-4 - $G "$FIX/grpo/peaky-llama" --finetuning_type full --beta 0.04 --temperature 1.3

# --bf16 / --fp16 (ft-train-cuda-half-emu.bats's t20): 20 steps, eval every 10
t20() {
	local out=$1 dev=$2 model=$3
	shift 3
	OMP_NUM_THREADS=1 timeout "${CASE_TIMEOUT:-60}" "$BIN/ft-train" -q -v --model_name_or_path "$model" \
		--output_dir "$out" --device "$dev" --train train.zst --val val.zst --eval_steps 10 \
		--max_steps 20 --logging_steps 1 --save_steps 0 --seed 3 "$@"
}
# the device runs get the precision flag, the CPU's stay fp32
half_prec=bf16
runner() { if [ "$2" = cpu ]; then t20 "$@"; else t20 "$@" --$half_prec; fi; }
H=tests/bats/ft-train-cuda-half-emu.bats
for half_prec in bf16 fp16; do
	feat llama_lora_$half_prec half 1e-3 3e-2 $H "$LLAMA" --finetuning_type lora --lora_dropout 0.1 --learning_rate 5e-3
	feat gemma2_lora_ckpt_$half_prec half 3e-3 6e-2 $H "$FAM/gemma2/model" --finetuning_type lora \
		--gradient_checkpointing --learning_rate 5e-3
done
feat qwen3_lora_bf16 half 1e-3 3e-2 $H "$FAM/qwen3/model" --finetuning_type lora --learning_rate 5e-3
half_prec=bf16

runner() { sft "$@"; }
F=tests/bats/ft-train-cuda-families-emu.bats
feat qwen3_full close 1e-4 - $F "$FAM/qwen3/model" "${acc[@]}" --finetuning_type full
feat gemma2_full close 1e-4 - $F "$FAM/gemma2/model" "${acc[@]}" --finetuning_type full
feat gemma3_lora close 1e-4 - $F "$FAM/gemma3/model" --train train.zst --finetuning_type lora --lora_target all
feat phi3_full close 1e-4 - $F "$FAM/phi3/model" "${acc[@]}" --finetuning_type full
feat phi4mini_lora close 1e-4 - $F "$FAM/phi4mini/model" --train train.zst --finetuning_type lora \
	--lora_target all --lora_dropout 0.1

# --fp8 (ft-train-cuda-emu.bats's fp8 test): fp32 within 1e-4 (the same
# fp8 operands, sums in another order); bf16 against the CPU's fp32 within
# its grad norms' 5e-2 (a half input's amax moves the scale, and every
# element's fp8 rounding with it: fp8's own noise, the bats file argues)
E=tests/bats/ft-train-cuda-emu.bats
feat fp8_full_ckpt close 1e-4 - $E "$LLAMA" --train train.zst --finetuning_type full --fp8 \
	--gradient_checkpointing
feat fp8_lora close 1e-4 - $E "$LLAMA" --train train.zst --finetuning_type lora --fp8
feat fp8_qwen2 close 1e-4 - $E "$QWEN" --train train.zst --finetuning_type full --fp8
wait
runner() { if [ "$2" = cpu ]; then sft "$@"; else sft "$@" --bf16; fi; }
feat fp8_full_bf16 close 5e-2 - $E "$LLAMA" --train train.zst --finetuning_type full --fp8
feat fp8_lora_bf16 close 5e-2 - $E "$LLAMA" --train train.zst --finetuning_type lora --fp8
wait
runner() { sft "$@"; }

# ---- PPO on the device -------------------------------------------------
# A one-step probe first, so that a build that refuses --stage ppo
# --device cuda says so in one SKIP line instead of failing the case.  The
# bound is ft-train-rl-emu.bats's for PPO (1e-4 relative or 1e-5
# absolute: the fp32 bound of every other stage here).
if [ -z "${ONLY:-}" ] || [[ ppo =~ $ONLY ]]; then
	"$BIN/ft-cat" --encode < "$FIX/ppo/prompts.jsonl" > ppo.zst
	REWARD="awk -F'\"response\":\"' '{ n = split(\$2, t, /[ \"]/); c = 0; for (i = 1; i <= n; i++) c += t[i] == \"42\"; print c }'"
	ppo() {   # out device model [flags]: tests/bats/ft-train-ppo.bats's ppo
		local out=$1 dev=$2 model=$3
		shift 3
		OMP_NUM_THREADS=1 timeout "${CASE_TIMEOUT:-60}" "$BIN/ft-train" -q -v --stage ppo --model_name_or_path "$model" \
			--train ppo.zst --output_dir "$out" --device "$dev" --do_sample false --max_new_tokens 6 \
			--max_steps 3 --logging_steps 1 --learning_rate 1e-3 --reward_model_type api \
			--reward_model "$REWARD" "$@"
	}
	ppo ppo-probe "$DEV" "$LLAMA" --max_steps 1 2> ppo-probe.err
	case $? in
	0)	runner() { ppo "$@"; }
		feat ppo all 1e-4 - "tests/bats/ft-train-ppo.bats; bound: the fp32 stages'" "$LLAMA"
		wait
		runner() { sft "$@"; } ;;
	2)	echo "SKIP ppo: ft-train --stage ppo --device $DEV refused: $(head -1 ppo-probe.err)" | tee -a lines.txt ;;
	*)	echo "FAIL ppo: the one-step probe failed: $(tail -1 ppo-probe.err)" | tee -a lines.txt ;;
	esac
fi
# -----------------------------------------------------------------------
wait
grep -q '^FAIL' lines.txt && status=1
echo "features_check: $(grep -c '^PASS' lines.txt) passed, $(grep -c '^FAIL' lines.txt) failed, $JOBS at a time, ${SECONDS}s"
exit $status
