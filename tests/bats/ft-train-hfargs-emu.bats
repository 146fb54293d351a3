#!/usr/bin/env bats
# ft-train's transformers trainer settings on the emulated device
# (FT_CUDA_LIB=build/libft_cuda_emu.so, docs/CUDA-TESTING.md "Host
# emulation") against the CPU: --label_smoothing_factor in lmhead.cu's
# cross-entropy kernel; the best model and early stopping.
#
# Tolerance 1e-4 relative, ft-train-cuda-emu.bats' bound: both paths use
# kernels.h's ft_k_ce_loss and ft_k_ce_grad_ls; they differ in summation
# order only (the device's block-tree sums of the row's exp and of its
# logits against the CPU's loops, ~1e-6 relative).  The smoothing is
# shown to matter (the device run without it differs by > 1e-2 in some
# loss or norm), resume is compared bit for bit.
load helper
load emu_helper

LLAMA="$FIXTURES/models/tiny-llama"
QWEN="$FIXTURES/models/tiny-qwen2"
GEMMA2="$FIXTURES/families/gemma2/model"

differ() {
	paste <(nums "$1") <(nums "$2") | awk '
		{ d = $1 - $2; if (d < 0) d = -d; m = $1 < 0 ? -$1 : $1; if (d > 1e-2 * m) n++ }
		END { exit !(n > 0) }'
}

@test "emulated device label smoothing: lora, full, qwen2, Gemma 2's cap, accumulation and eval" {
	sft_data
	common=(--train train.zst --val val.zst --eval_steps 2 --gradient_accumulation_steps 2
		--max_grad_norm 0.5 --label_smoothing_factor 0.1)
	same_run "$LLAMA" 1e-4 "${common[@]}" --finetuning_type lora --lora_dropout 0.1
	same_run "$LLAMA" 1e-4 "${common[@]}" --finetuning_type full
	same_run "$QWEN" 1e-4 "${common[@]}" --finetuning_type lora --lora_target all
	same_run "$GEMMA2" 1e-4 --train train.zst --label_smoothing_factor 0.3
	tr cuda ce "$LLAMA" --train train.zst --learning_rate 5e-2
	tr cuda ls "$LLAMA" --train train.zst --learning_rate 5e-2 --label_smoothing_factor 0.5
	differ ce/trainer_log.jsonl ls/trainer_log.jsonl
}

@test "emulated device label smoothing: resume bit for bit" {
	sft_data
	local args=(--model_name_or_path "$LLAMA" --train train.zst --device cuda --max_steps 6 --logging_steps 1
		--save_steps 3 --seed 3 -q --label_smoothing_factor 0.1)
	ft-train --output_dir a "${args[@]}"
	mkdir b && cp -r a/checkpoint-3 b/ && head -n 3 a/trainer_log.jsonl > b/trainer_log.jsonl
	ft-train --output_dir b "${args[@]}" --resume_from_checkpoint true
	diff <(steady a/trainer_log.jsonl) <(steady b/trainer_log.jsonl)
	cmp a/adapter_model.safetensors b/adapter_model.safetensors
}

# the best model on the device: the same loop code, the device binding's
# save; the eval losses are the CPU's within 1e-4 (above), and each eval
# here is >= 2.3e-3 relative from the best so far (measured: 5.5574 best,
# then 5.5875, 5.5837, 5.5705), so every comparison, the best step and the
# stopping step are the CPU's
@test "emulated device load_best_model_at_end and early_stopping_steps: the CPU's best step, the checkpoint's adapter" {
	sft_data
	for d in cpu cuda; do
		ft-train -q --model_name_or_path "$LLAMA" --train train.zst --val val.zst --device $d --output_dir $d \
			--max_steps 8 --eval_steps 1 --save_steps 1 --logging_steps 1 --learning_rate 3e-2 \
			--load_best_model_at_end true --early_stopping_steps 3
	done
	b=$(jq .best_global_step cuda/trainer_state.json)
	[ "$b" = "$(jq .best_global_step cpu/trainer_state.json)" ]
	[ "$(jq .global_step cuda/trainer_state.json)" = "$(jq .global_step cpu/trainer_state.json)" ]
	cmp cuda/adapter_model.safetensors "cuda/checkpoint-$b/adapter_model.safetensors"
	[ "$(jq .global_step cuda/trainer_state.json)" != "$b" ]
}
