#!/usr/bin/env bats
# OFT (--finetuning_type oft) on the emulated device (lib/cuda/oft.cu)
# against the CPU's lib/model/model_oft.c, the PEFT-exact reference (its
# fixtures in extras_more.bats).
#
# Tolerances.  The Cayley-Neumann series and its backward are the CPU's
# double b x b products in the CPU's order, rounded once to float, so the
# rotations agree to the last bit or one rounding; the block rotations
# of the input and dR = x^T dxr are fp32 GEMMs like the LoRA path's, and
# the rest is ft-train-cuda-emu.bats's fp32 path (bound 1e-4, argued
# there).  Observed: <= 2e-7 relative in every loss, grad norm and eval
# loss.  The saved adapters: AdamW's step is about lr = 5e-3 per element
# whatever the gradient's size, so rounding-level gradient differences
# move the weights by ~lr * 1e-6, more only where g is near 0; observed
# <= 8.2e-6, bound 1e-4, 100 times below what one wrong gradient element
# does in 4 steps (a flipped update: 2 lr = 1e-2).  --bf16 / --fp16: the
# half bounds of ft-train-cuda-emu.bats.  Resume and gradient
# checkpointing bit for bit (the emulation is deterministic).
load helper
load emu_helper

LLAMA="$FIXTURES/models/tiny-llama"
QWEN="$FIXTURES/models/tiny-qwen2"
MAXDIFF="$FT_ROOT/build/tests/st_maxdiff"

# maxdiff_le A B BOUND: two safetensors files (or directories) within BOUND
maxdiff_le() {
	[ -x "$MAXDIFF" ] || skip "build/tests/st_maxdiff is not built (make unit)"
	local d
	d=$("$MAXDIFF" "$1" "$2")
	echo "# $1: largest difference $d (bound $3)" >&3
	awk -v d="$d" -v b="$3" 'BEGIN { exit !(d <= b) }'
}

# oft_run MODEL flags...: CPU and device, the logs within 1e-4, the
# adapters within 1e-4 and their merges (ft-merge) within 1e-4
oft_run() {
	local model=$1
	shift
	tr cpu cpu "$model" --finetuning_type oft "$@"
	tr cuda dev "$model" --finetuning_type oft "$@"
	[[ "$(jq -r .ft.device dev/trainer_state.json)" == "cuda:0 (ft host emulation, "* ]]
	close cpu/trainer_log.jsonl dev/trainer_log.jsonl 1e-4
	grep -aq oft_R.weight dev/adapter_model.safetensors
	maxdiff_le cpu/adapter_model.safetensors dev/adapter_model.safetensors 1e-4
	rm -rf cpu dev
}

@test "emulated device OFT: llama (q, v, down: a fused q|k|v with a plain member), qwen2 all modules (biases, blocks of 8), accumulation, clipping, eval" {
	sft_data
	common=(--train train.zst --val val.zst --eval_steps 2)
	oft_run "$LLAMA" "${common[@]}" --lora_target q_proj,v_proj,down_proj \
		--gradient_accumulation_steps 2 --max_grad_norm 0.5 --warmup_steps 2
	oft_run "$QWEN" "${common[@]}" --lora_target all --oft_block_size 8
	oft_run "$QWEN" --train train.zst --lora_target all --oft_rank 2 --oft_block_size 0
}

@test "emulated device QOFT: 4-bit NF4 and 8-bit bases; gradient checkpointing bit-identical" {
	sft_data
	oft_run "$LLAMA" --train train.zst --lora_target all --quantization_bit 4
	oft_run "$LLAMA" --train train.zst --lora_target all --quantization_bit 8
	tr cuda a "$LLAMA" --train train.zst --lora_target all --quantization_bit 4 --finetuning_type oft
	tr cuda b "$LLAMA" --train train.zst --lora_target all --quantization_bit 4 --finetuning_type oft \
		--gradient_checkpointing
	diff <(steady a/trainer_log.jsonl) <(steady b/trainer_log.jsonl)
	cmp a/adapter_model.safetensors b/adapter_model.safetensors
}

@test "emulated device OFT --bf16 and --fp16 against the CPU's fp32; --device auto picks the device; ft-merge of the device's adapter" {
	sft_data
	tr cpu cpu "$QWEN" --train train.zst --lora_target all --finetuning_type oft
	for p in bf16 fp16; do
		tr cuda $p "$QWEN" --train train.zst --lora_target all --finetuning_type oft --$p
		[[ "$(jq -r .ft.device $p/trainer_state.json)" == *", $p" ]]
	done
	paste <(jq -r 'select(.loss) | "\(.loss) \(.grad_norm)"' cpu/trainer_log.jsonl) \
	      <(jq -r 'select(.loss) | "\(.loss) \(.grad_norm)"' bf16/trainer_log.jsonl) \
	      <(jq -r 'select(.loss) | "\(.loss) \(.grad_norm)"' fp16/trainer_log.jsonl) | awk '
		function rel(a, b) { d = (a - b) / a; return d < 0 ? -d : d }
		{ if (rel($1, $3) > 1e-2 || rel($1, $5) > 2e-3 || rel($2, $4) > 5e-2 || rel($2, $6) > 1e-2) bad = 1; n++ }
		END { exit !(n == 4 && !bad) }'
	! diff -q <(nums cpu/trainer_log.jsonl) <(nums bf16/trainer_log.jsonl)
	tr auto dev "$QWEN" --train train.zst --lora_target all --finetuning_type oft
	[[ "$(jq -r .ft.device dev/trainer_state.json)" == "cuda:0 (ft host emulation, "* ]]
	# the adapter format is the CPU's: ft-merge folds either the same way
	for d in cpu dev; do
		ft-merge -q --model_name_or_path "$QWEN" --adapter_name_or_path $d --export_dir $d-merged
	done
	maxdiff_le cpu-merged dev-merged 1e-4
}

@test "emulated device OFT resume: bit-identical to the uninterrupted device run (fp32, --fp16)" {
	sft_data
	for p in "" --fp16; do
		args=(--model_name_or_path "$LLAMA" --train train.zst --device cuda --finetuning_type oft $p
		      --lora_target all --learning_rate 5e-3 --max_steps 6 --gradient_accumulation_steps 2
		      --max_grad_norm 0.5 --lr_scheduler_type cosine --warmup_steps 2 --logging_steps 1
		      --save_steps 3 -q)
		ft-train --output_dir a "${args[@]}"
		mkdir b && cp -r a/checkpoint-3 b/ && head -n 3 a/trainer_log.jsonl > b/trainer_log.jsonl
		ft-train --output_dir b "${args[@]}" --resume_from_checkpoint true
		diff <(steady a/trainer_log.jsonl) <(steady b/trainer_log.jsonl)
		cmp a/adapter_model.safetensors b/adapter_model.safetensors
		cmp a/checkpoint-6/optimizer.safetensors b/checkpoint-6/optimizer.safetensors
		rm -rf a b
	done
}

@test "emulated device OFT dpo: the CPU's numbers within 1e-4" {
	ft-cat --encode < "$FIXTURES/pref/dpo.jsonl" > dpo.zst
	same_run "$LLAMA" 1e-4 --stage dpo --train dpo.zst --finetuning_type oft
}
