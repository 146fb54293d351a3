#!/usr/bin/env bats
# DoRA (--use_dora) on the emulated device (lib/cuda/dora.cu) against the
# CPU's lib/model/lora_dora.c, the PEFT-exact reference (its fixtures in
# test_extras).
#
# Tolerances.  The device computes DoRA's row norms ||W + s B A|| with
# the same float products and double sums as the CPU, in a block-tree
# order (one reordered double sum: ~1e-16, then rounded to float), and
# the magnitude's gradient with a double sum over the tokens in another
# order; everything else is the LoRA path of ft-train-cuda-emu.bats,
# whose losses, grad norms and eval losses agree within ~1e-6 relative
# (bound 1e-4, argued there).  Observed here: <= 3e-7.  The saved
# adapters: AdamW's step is lr * m / (sqrt(v) + eps), about lr = 5e-3
# per element and step whatever the gradient's size, so a gradient
# element that differs by its rounding (~1e-6 relative) moves the weight
# by ~lr * 1e-6, and more only where g is near 0 and m / sqrt(v) is
# ill-conditioned; plain LoRA's adapters land within 1.2e-5 of the
# CPU's, DoRA's within 4.1e-5.  The bound 2e-4 is 5 times that and 50
# times below what one wrong gradient element does in 4 steps (a
# flipped update: 2 lr = 1e-2).  --bf16 / --fp16: the half bounds of
# ft-train-cuda-emu.bats (one rounding of a matmul operand 2^-9 / 2^-12;
# DoRA's norm adds the fp32 B A to the half W, as PEFT's does).  Resume
# and gradient checkpointing are compared bit for bit (the emulation is
# deterministic; checkpointing reruns each layer's forward, DoRA's norm
# and factor included, with the same operations).
#
# With --lora_dropout 0.1 (PEFT's dropped-input form: the base product
# once more on the dropped input, lora_dora.c's ftp_dora_forward_dropped)
# the same bounds: the masks are the CPU's bit for bit (one generator,
# ft_k_dropout_elem), the extra product xd W^T is one more GEMM of the
# same shapes as the base one (cuBLAS order against the CPU's sgemm:
# ~1e-7 relative), (g - 1) dy W one more accumulation into the masked
# gradient, and the fused groups add their members' dx in another order
# than the CPU's module by module; nothing else changes, so the losses
# stay at the LoRA path's ~1e-6 (bound 1e-4; measured 1.2e-7 on qwen2,
# 0 on llama) and the adapters within the 2e-4 above (measured 3.3e-6).
# --bf16 / --fp16 keep the half bounds: the extra GEMM reads xd and W in
# the half operand type as the base product does, so it adds one more
# rounding of the same size (measured on qwen2: bf16 losses 1.8e-4, grad
# norms 1.7e-3; fp16 7.1e-5, 3.4e-3; without dropout 4.7e-5, 2.9e-3 and
# 1.5e-5, 3.1e-4).  Checkpointing and resume stay bit for bit: the masks'
# position advances once per forward-backward (so the recomputed forward
# redraws the same masks) and is saved in the checkpoint.
#
# With --pissa_init the PiSSA init (the residual base, A and B from the
# SVD) and then DoRA's magnitudes are made on the CPU before the model is
# bound, so the device gets the same starting weights and the bounds above
# hold unchanged.  Measured on qwen2: losses 5.9e-7; adapters 7.8e-5, one
# magnitude element of layer 1's gate_proj (its gradient near 0, so
# AdamW's m / sqrt(v) ill-conditioned, the case named above), every A and
# B within 1.7e-6; still 2.5 times below 2e-4 and 100 times below one
# flipped update.
load helper
load emu_helper

LLAMA="$FIXTURES/models/tiny-llama"
QWEN="$FIXTURES/models/tiny-qwen2"

# adapters_close A B: the saved adapters (magnitudes included) within 2e-4
adapters_close() {
	grep -aq lora_magnitude_vector "$1/adapter_model.safetensors"
	maxdiff_le "$1/adapter_model.safetensors" "$2/adapter_model.safetensors" 2e-4
}

@test "emulated device DoRA: qwen2 (biases, all modules: fused q|k|v, gate|up), llama with accumulation, clipping, eval; adapters as the CPU's" {
	sft_data
	common=(--train train.zst --val val.zst --eval_steps 2 --finetuning_type lora --use_dora)
	for m in "$QWEN" "$LLAMA"; do
		extra=(--lora_target all)
		[ "$m" = "$LLAMA" ] && extra=(--gradient_accumulation_steps 2 --max_grad_norm 0.5 --warmup_steps 2)
		tr cpu cpu "$m" "${common[@]}" "${extra[@]}"
		tr cuda dev "$m" "${common[@]}" "${extra[@]}"
		[[ "$(jq -r .ft.device dev/trainer_state.json)" == "cuda:0 (ft host emulation, "* ]]
		close cpu/trainer_log.jsonl dev/trainer_log.jsonl 1e-4
		adapters_close cpu dev
		jq -e '.use_dora == true' dev/adapter_config.json
		# DoRA really ran: plain LoRA's numbers differ from the second step on
		tr cuda lora "$m" "${common[@]:0:6}" --finetuning_type lora "${extra[@]}"
		! diff -q <(nums lora/trainer_log.jsonl) <(nums dev/trainer_log.jsonl) || false
		rm -rf cpu dev lora
	done
}

@test "emulated device DoRA: gradient checkpointing bit-identical, --device auto picks the device, resume bit-identical" {
	sft_data
	tr cuda a "$QWEN" --train train.zst --lora_target all --use_dora
	tr auto b "$QWEN" --train train.zst --lora_target all --use_dora --gradient_checkpointing
	[[ "$(jq -r .ft.device b/trainer_state.json)" == "cuda:0 (ft host emulation, "* ]]
	diff <(steady a/trainer_log.jsonl) <(steady b/trainer_log.jsonl)
	cmp a/adapter_model.safetensors b/adapter_model.safetensors
	rm -rf a b
	# the magnitudes' moments come back out of the device too
	resume_same --model_name_or_path "$LLAMA" --train train.zst --use_dora
}

@test "emulated device DoRA --bf16 and --fp16: half operands against the CPU's fp32, within their rounding" {
	sft_data
	tr cpu cpu "$QWEN" --train train.zst --lora_target all --use_dora
	for p in bf16 fp16; do
		tr cuda $p "$QWEN" --train train.zst --lora_target all --use_dora --$p
		[[ "$(jq -r .ft.device $p/trainer_state.json)" == *", $p" ]]
	done
	half_close cpu/trainer_log.jsonl bf16/trainer_log.jsonl fp16/trainer_log.jsonl
}

@test "emulated device DoRA adapter: dpo with the reference as the adapters disabled, and ft-generate's greedy tokens as the CPU's" {
	sft_data
	tr cpu dora "$QWEN" --train train.zst --lora_target all --use_dora --learning_rate 5e-2
	ft-cat --encode < "$FIXTURES/pref/dpo.jsonl" > dpo.zst
	same_run "$LLAMA" 1e-4 --stage dpo --train dpo.zst --use_dora
	# decoding (lib/cuda/infer.cu) through the trained magnitudes
	printf '%s\n' '{"prompt": "Who are you?"}' '{"prompt": "the tea is hot and the cup is full of it"}' > p.jsonl
	for d in cpu cuda; do
		ft-generate --model_name_or_path "$QWEN" --adapter_name_or_path dora \
			--tokenizer "$FIXTURES/generate/tokenizer" --template default --max_new_tokens 24 \
			--do_sample false --per_device_eval_batch_size 2 --device $d p.jsonl > $d.out
	done
	[ "$(wc -l < cuda.out)" -eq 2 ]
	diff cpu.out cuda.out
}

@test "emulated device DoRA --lora_dropout 0.1: qwen2 (biases, all modules, fused groups), llama with accumulation; adapters as the CPU's; the dropout ran" {
	sft_data
	common=(--train train.zst --val val.zst --eval_steps 2 --finetuning_type lora --use_dora)
	for m in "$QWEN" "$LLAMA"; do
		extra=(--lora_target all)
		[ "$m" = "$LLAMA" ] && extra=(--gradient_accumulation_steps 2 --max_grad_norm 0.5 --warmup_steps 2)
		tr cpu cpu "$m" "${common[@]}" "${extra[@]}" --lora_dropout 0.1
		tr cuda dev "$m" "${common[@]}" "${extra[@]}" --lora_dropout 0.1
		[[ "$(jq -r .ft.device dev/trainer_state.json)" == "cuda:0 (ft host emulation, "* ]]
		close cpu/trainer_log.jsonl dev/trainer_log.jsonl 1e-4
		adapters_close cpu dev
		jq -e '.use_dora == true and .lora_dropout == 0.1' dev/adapter_config.json
		# the dropout really ran: without it the numbers differ
		tr cuda nodrop "$m" "${common[@]}" "${extra[@]}"
		! diff -q <(nums nodrop/trainer_log.jsonl) <(nums dev/trainer_log.jsonl) || false
		rm -rf cpu dev nodrop
	done
}

@test "emulated device DoRA --lora_dropout 0.1: gradient checkpointing bit-identical, resume bit-identical" {
	sft_data
	d=(--train train.zst --lora_target all --use_dora --lora_dropout 0.1)
	tr cuda a "$QWEN" "${d[@]}"
	tr cuda b "$QWEN" "${d[@]}" --gradient_checkpointing
	diff <(steady a/trainer_log.jsonl) <(steady b/trainer_log.jsonl)
	cmp a/adapter_model.safetensors b/adapter_model.safetensors
	rm -rf a b
	resume_same --model_name_or_path "$QWEN" --train train.zst --lora_target all --use_dora \
		--lora_dropout 0.1
}

@test "emulated device DoRA --lora_dropout 0.1 --bf16 and --fp16: against the CPU's fp32, within their rounding" {
	sft_data
	d=(--train train.zst --lora_target all --use_dora --lora_dropout 0.1)
	tr cpu cpu "$QWEN" "${d[@]}"
	for p in bf16 fp16; do
		tr cuda $p "$QWEN" "${d[@]}" --$p
		[[ "$(jq -r .ft.device $p/trainer_state.json)" == *", $p" ]]
	done
	half_close cpu/trainer_log.jsonl bf16/trainer_log.jsonl fp16/trainer_log.jsonl
}

# QDoRA: DoRA on a quantized base (docs/QLORA.md, "QDoRA").  The device's
# dequantized weights are the CPU's bits (test_quant_emu), its norms read
# them a tile of rows at a time as the CPU's, and the dropped-input product
# runs through the same tiled dequantize + GEMM as the base one; so the
# bounds above hold unchanged (measured: losses <= 3.1e-7, adapters
# <= 7.4e-5).
@test "emulated device QDoRA: 4-bit qwen2 (fused groups) with dropout, 8-bit llama with checkpointing and dropout; adapters as the CPU's; DoRA ran" {
	sft_data
	common=(--train train.zst --val val.zst --eval_steps 2 --lora_target all --use_dora)
	for q in "$QWEN --quantization_bit 4 --lora_dropout 0.1" "$LLAMA --quantization_bit 4" \
		 "$LLAMA --quantization_bit 8 --gradient_checkpointing --lora_dropout 0.1"; do
		set -- $q
		m=$1
		shift
		tr cpu cpu "$m" "${common[@]}" "$@"
		tr cuda dev "$m" "${common[@]}" "$@"
		[[ "$(jq -r .ft.device dev/trainer_state.json)" == "cuda:0 (ft host emulation, "* ]]
		close cpu/trainer_log.jsonl dev/trainer_log.jsonl 1e-4
		adapters_close cpu dev
		# QLoRA without DoRA differs from the second step on
		tr cuda lora "$m" --train train.zst --val val.zst --eval_steps 2 --lora_target all "$@"
		! diff -q <(nums lora/trainer_log.jsonl) <(nums dev/trainer_log.jsonl) || false
		rm -rf cpu dev lora
	done
}

@test "emulated device QDoRA: resume bit-identical, --bf16 within the half bounds, ft-generate's greedy tokens as the CPU's" {
	sft_data
	resume_same --model_name_or_path "$QWEN" --train train.zst --lora_target all --use_dora \
		--quantization_bit 4 --lora_dropout 0.1
	d=(--train train.zst --lora_target all --use_dora --quantization_bit 4)
	tr cpu cpu "$QWEN" "${d[@]}"
	for p in bf16 fp16; do
		tr cuda $p "$QWEN" "${d[@]}" --$p
	done
	half_close cpu/trainer_log.jsonl bf16/trainer_log.jsonl fp16/trainer_log.jsonl
	tr cpu dora "$QWEN" "${d[@]}" --learning_rate 5e-2
	printf '%s\n' '{"prompt": "Who are you?"}' '{"prompt": "the tea is hot and the cup is full of it"}' > p.jsonl
	for dev in cpu cuda; do
		ft-generate --model_name_or_path "$QWEN" --adapter_name_or_path dora --quantization_bit 4 \
			--tokenizer "$FIXTURES/generate/tokenizer" --template default --max_new_tokens 24 \
			--do_sample false --per_device_eval_batch_size 2 --device $dev p.jsonl > $dev.out
	done
	[ "$(wc -l < cuda.out)" -eq 2 ]
	diff cpu.out cuda.out
}

@test "emulated device DoRA+PiSSA: qwen2 (biases, all modules) as the CPU's, the adapter's greedy tokens too; resume bit-identical" {
	sft_data
	pd=(--train train.zst --val val.zst --eval_steps 2 --lora_target all --use_dora --pissa_init --pissa_iter -1)
	tr cpu cpu "$QWEN" "${pd[@]}"
	tr cuda dev "$QWEN" "${pd[@]}"
	[[ "$(jq -r .ft.device dev/trainer_state.json)" == "cuda:0 (ft host emulation, "* ]]
	close cpu/trainer_log.jsonl dev/trainer_log.jsonl 1e-4
	adapters_close cpu dev
	jq -e '.use_dora == true and .init_lora_weights == "pissa"' dev/adapter_config.json
	# PiSSA really ran: DoRA alone differs from the second step on
	tr cuda dora "$QWEN" "${pd[@]:0:9}"
	run diff -q <(nums dora/trainer_log.jsonl) <(nums dev/trainer_log.jsonl)
	assert_failure
	# loading redoes the init on the base (on the CPU) before binding
	printf '%s\n' '{"prompt": "Who are you?"}' '{"prompt": "the tea is hot and the cup is full of it"}' > p.jsonl
	for d in cpu cuda; do
		ft-generate --model_name_or_path "$QWEN" --adapter_name_or_path dev \
			--tokenizer "$FIXTURES/generate/tokenizer" --template default --max_new_tokens 24 \
			--do_sample false --per_device_eval_batch_size 2 --device $d p.jsonl > $d.out
	done
	[ "$(wc -l < cuda.out)" -eq 2 ]
	diff cpu.out cuda.out
	rm -rf cpu dev dora
	resume_same --model_name_or_path "$LLAMA" --train train.zst --use_dora --pissa_init --lora_rank 4
}
