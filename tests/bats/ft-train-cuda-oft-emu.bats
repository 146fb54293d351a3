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
	half_close cpu/trainer_log.jsonl bf16/trainer_log.jsonl fp16/trainer_log.jsonl
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
	resume_same --model_name_or_path "$LLAMA" --train train.zst --finetuning_type oft --lora_target all
}

@test "emulated device OFT dpo: the CPU's numbers within 1e-4" {
	ft-cat --encode < "$FIXTURES/pref/dpo.jsonl" > dpo.zst
	same_run "$LLAMA" 1e-4 --stage dpo --train dpo.zst --finetuning_type oft
}
