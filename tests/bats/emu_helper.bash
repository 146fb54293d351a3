# emu_helper.bash - loaded (after helper) by the bats files that compare
# ft-train --device cuda on the emulated backend (build/libft_cuda_emu.so,
# docs/CUDA.md "Host emulation") with --device cpu: the setup, the 4-step
# run and the relative-tolerance comparison of two trainer logs.

# FT_EMU_LIB: another build of the emulated backend (e.g. one with --coverage)
EMU="${FT_EMU_LIB:-$FT_ROOT/build/libft_cuda_emu.so}"
export OMP_NUM_THREADS=1

setup() {
	cd "$BATS_TEST_TMPDIR"
	[ -f "$EMU" ] || skip "the emulated backend is not built (make unit)"
	command -v jq >/dev/null || skip "jq is not installed"
	export FT_CUDA_LIB=$EMU
}

# tr DEVICE OUT MODEL [flags]: 4 steps
tr() {
	local dev=$1 out=$2 model=$3
	shift 3
	ft-train -q --model_name_or_path "$model" --output_dir "$out" --device "$dev" \
		--max_steps 4 --logging_steps 1 --save_steps 0 --learning_rate 5e-3 --seed 3 "$@"
}
# the log without what names the device or the clock
steady() { jq -c 'del(.elapsed_time, .remaining_time, .throughput, .device, .peak_memory_bytes)' "$1"; }
nums() { jq -r '[.loss, .grad_norm, .eval_loss] | map(select(. != null)) | .[]' "$1"; }
# close A B TOL: the same log lines (same keys, so the same count), at
# least one number, every number within TOL relative
close() {
	diff <(steady "$1" | jq -c keys) <(steady "$2" | jq -c keys)
	[ "$(nums "$1" | wc -l)" -gt 0 ]
	[ "$(nums "$1" | wc -l)" -eq "$(nums "$2" | wc -l)" ]
	paste <(nums "$1") <(nums "$2") | awk -v tol="$3" '
		{ d = $1 - $2; if (d < 0) d = -d; m = $1 < 0 ? -$1 : $1; r = d / (m > 1e-30 ? m : 1e-30)
		  if (r > w) w = r; n++ }
		END { printf "# %d numbers, worst relative difference %.3g (bound %g)\n", n, w, tol
		      exit !(n > 0 && w <= tol) }' >&3
}
# same_run MODEL TOL flags...: CPU and emulated device within TOL
same_run() {
	local model=$1 tol=$2
	shift 2
	tr cpu cpu "$model" "$@"
	tr cuda dev "$model" "$@"
	[[ "$(jq -r .ft.device dev/trainer_state.json)" == "cuda:0 (ft host emulation, "* ]]
	close cpu/trainer_log.jsonl dev/trainer_log.jsonl "$tol"
	rm -rf cpu dev
}
# sft_data: the trainer fixture encoded as train.zst and val.zst
sft_data() { ft-cat --encode < "$FIXTURES/trainer/train.jsonl" > train.zst
	     ft-cat --encode < "$FIXTURES/trainer/val.jsonl" > val.zst; }
# same_tokens MODEL MAX_NEW: ft-generate's greedy tokens for three prompts
# (one long enough for several tiles of the cache), batched two by two,
# equal on the CPU and the emulated device
same_tokens() {
	printf '%s\n' '{"prompt": "Who are you?"}' '{"prompt": "the tea is hot and the cup is full of it"}' \
		'{"prompt": "x"}' > p.jsonl
	for d in cpu cuda; do
		ft-generate --model_name_or_path "$1" --tokenizer "$FIXTURES/generate/tokenizer" \
			--template default --max_new_tokens "$2" --do_sample false \
			--per_device_eval_batch_size 2 --device $d p.jsonl > $d.out
	done
	[ "$(wc -l < cuda.out)" -eq 3 ]
	diff cpu.out cuda.out
}
# maxdiff_le A B BOUND: two safetensors files (or directories) within BOUND
maxdiff_le() {
	local maxdiff="$FT_ROOT/build/tests/st_maxdiff" d
	[ -x "$maxdiff" ] || skip "build/tests/st_maxdiff is not built (make unit)"
	d=$("$maxdiff" "$1" "$2")
	echo "# $1: largest difference $d (bound $3)" >&3
	awk -v d="$d" -v b="$3" 'BEGIN { exit !(d <= b) }'
}
# half_close CPU BF16 FP16: the 4 logged steps of a --bf16 and a --fp16
# device run against the CPU's fp32 run, with ft-train-cuda-emu.bats's half
# bounds (losses 1e-2 / 2e-3, grad norms 5e-2 / 1e-2 relative), and the
# half path really taken (bf16's numbers are not fp32's)
half_close() {
	paste <(jq -r 'select(.loss) | "\(.loss) \(.grad_norm)"' "$1") \
	      <(jq -r 'select(.loss) | "\(.loss) \(.grad_norm)"' "$2") \
	      <(jq -r 'select(.loss) | "\(.loss) \(.grad_norm)"' "$3") | awk '
		function rel(a, b) { d = (a - b) / a; return d < 0 ? -d : d }
		{ if (rel($1, $3) > 1e-2 || rel($1, $5) > 2e-3 || rel($2, $4) > 5e-2 || rel($2, $6) > 1e-2) bad = 1; n++ }
		END { exit !(n == 4 && !bad) }'
	! diff -q <(nums "$1") <(nums "$2")
}
# resume_same flags...: in fp32 and --fp16, 6 device steps saving at 3,
# then from checkpoint-3 in a new process: the log, the adapter (WEIGHTS:
# another output file, model.safetensors for full fine-tuning) and the
# optimizer state (moments come back out of the device) bit-identical
resume_same() {
	local p args
	for p in "" --fp16; do
		args=(--device cuda $p --learning_rate 5e-3 --max_steps 6 --gradient_accumulation_steps 2
		      --max_grad_norm 0.5 --lr_scheduler_type cosine --warmup_steps 2 --logging_steps 1
		      --save_steps 3 -q "$@")
		ft-train --output_dir a "${args[@]}"
		mkdir b && cp -r a/checkpoint-3 b/ && head -n 3 a/trainer_log.jsonl > b/trainer_log.jsonl
		ft-train --output_dir b "${args[@]}" --resume_from_checkpoint true
		diff <(steady a/trainer_log.jsonl) <(steady b/trainer_log.jsonl)
		cmp "a/${WEIGHTS:-adapter_model.safetensors}" "b/${WEIGHTS:-adapter_model.safetensors}"
		cmp a/checkpoint-6/optimizer.safetensors b/checkpoint-6/optimizer.safetensors
		rm -rf a b
	done
}
