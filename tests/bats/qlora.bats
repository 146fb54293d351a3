#!/usr/bin/env bats
# QLoRA: --quantization_bit 4|8 and its companion flags on ft-train,
# ft-generate and ft-merge, and every refusal.  The numbers (bytes equal to
# bitsandbytes, logits and gradients against PEFT) are checked by
# tests/unit/test_quant.c; here the tools.
bats_require_minimum_version 1.5.0
load helper

MODEL="$FIXTURES/models/tiny-llama"
TOK="$FIXTURES/generate/tokenizer"
export OMP_NUM_THREADS=1

setup() {
	cd "$BATS_TEST_TMPDIR"
	command -v ft-cat >/dev/null || { echo "ft-cat is not built (run make)" >&2; return 1; }
	ft-cat --encode < "$FIXTURES/trainer/train.jsonl" > train.zst
}
train() { ft-train --model_name_or_path "$MODEL" --train train.zst --max_steps 2 --logging_steps 1 "$@"; }

@test "--help lists the QLoRA flags and the memory each plans" {
	run ft-train --help
	assert_success
	assert_output --partial "--quantization_bit 4|8"
	assert_output --partial "--quantization_type nf4|fp4 (nf4)"
	assert_output --partial "--double_quantization true|false (true)"
	assert_output --partial "--quantization_method bnb"
	assert_output --regexp "Memory: Llama-2-7B.*"
	assert_output --regexp "GB with --quantization_bit 8, [0-9.]+ GB with 4"
}

@test "--quantization_bit 4 trains a LoRA adapter in PEFT's format and logs the resident bytes" {
	run --separate-stderr train --quantization_bit 4 --output_dir out
	assert_success
	[[ "$stderr" == *"base weights resident"*"--quantization_bit 4 nf4, double quantization"*"in float32)"* ]]
	[ -s out/adapter_model.safetensors ]
	jq -e '.peft_type == "LORA" and .r == 8' out/adapter_config.json
	[ "$(grep -c '"loss"' out/trainer_log.jsonl)" -eq 2 ]
}

@test "--device cuda accepts a quantized model: the backend table's run is the CPU's, the device-resident base logged" {
	# FT_CUDA_LIB: the fake backend (tests/emu/fake_backend.c, the CPU model
	# behind the table) stands in for a GPU, so this tests the tool's device
	# wiring; the kernels are tests/emu/test_quant_emu.cc's and tests/gpu's
	fake="$FT_ROOT/build/tests/libft_fake_cuda.so"
	[ -f "$fake" ] || skip "the fake backend is not built (make unit)"
	train --quantization_bit 4 --output_dir cpu --device cpu 2>/dev/null
	run --separate-stderr env FT_CUDA_LIB="$fake" ft-train --model_name_or_path "$MODEL" \
		--train train.zst --max_steps 2 --logging_steps 1 --quantization_bit 4 --output_dir dev --device cuda
	assert_success
	[[ "$stderr" == *"training on cuda:0"* ]]
	[[ "$stderr" == *"base weights resident on the device"*"(4-bit linears, the rest in float32)"* ]]
	diff <(jq -c .loss cpu/trainer_log.jsonl) <(jq -c .loss dev/trainer_log.jsonl)
	run --separate-stderr env FT_CUDA_LIB="$fake" ft-train --model_name_or_path "$MODEL" \
		--train train.zst --max_steps 1 --quantization_bit 8 --output_dir auto --device auto
	assert_success
	[[ "$stderr" == *"training on cuda:0"* ]]
	[[ "$stderr" != *"training on the CPU"* ]]
}

@test "fp4, no double quantization, 8-bit and gradient checkpointing all train" {
	run train --quantization_bit 4 --quantization_type fp4 --double_quantization false --output_dir a
	assert_success
	run train --quantization_bit 8 --output_dir b
	assert_success
	run train --quantization_bit 4 --gradient_checkpointing --output_dir c
	assert_success
	# checkpointing recomputes through the same quantized tiles: same losses
	run train --quantization_bit 4 --output_dir d
	diff <(jq -c .loss c/trainer_log.jsonl) <(jq -c .loss d/trainer_log.jsonl)
	# and quantization changes the model: not the unquantized losses
	run train --output_dir e
	run diff -q <(jq -c .loss e/trainer_log.jsonl) <(jq -c .loss d/trainer_log.jsonl)
	assert_failure
}

@test "a QLoRA run resumed from its checkpoint matches the uninterrupted run" {
	args=(--quantization_bit 4 --learning_rate 5e-3 --max_steps 6 --gradient_accumulation_steps 2
	      --logging_steps 1 --save_steps 3 -q)
	ft-train --model_name_or_path "$MODEL" --train train.zst --output_dir out "${args[@]}"
	mkdir b && cp -r out/checkpoint-3 b/
	head -n 3 out/trainer_log.jsonl > b/trainer_log.jsonl
	run ft-train --model_name_or_path "$MODEL" --train train.zst --output_dir b "${args[@]}" \
		--resume_from_checkpoint true
	assert_success
	diff <(jq -c '{current_steps, loss, grad_norm}' out/trainer_log.jsonl) \
		<(jq -c '{current_steps, loss, grad_norm}' b/trainer_log.jsonl)
	cmp out/adapter_model.safetensors b/adapter_model.safetensors
}

@test "--val evaluates the quantized model (8-bit: LLM.int8(), as bnb in eval mode)" {
	ft-cat --encode < "$FIXTURES/trainer/val.jsonl" > val.zst
	for b in 4 8; do
		run train --quantization_bit $b --val val.zst --eval_steps 2 --output_dir v$b
		assert_success
		jq -e '.eval_loss > 0' v$b/eval_results.json
	done
}

@test "the flags come from a YAML config too, with dashes accepted" {
	printf 'quantization_bit: 4\nquantization_method: bnb\ndouble_quantization: false\n' > q.yaml
	run ft-train q.yaml --model_name_or_path "$MODEL" --train train.zst --max_steps 1 --output_dir o \
		--quantization-type nf4
	assert_success
	[ -s o/adapter_model.safetensors ]
}

@test "--quantization_bit 3 is refused as bitsandbytes refuses it" {
	run -2 train --quantization_bit 3 --output_dir o
	assert_output --partial "Bitsandbytes only accepts 4-bit or 8-bit quantization."
	run -2 train --quantization_bit four --output_dir o
}

@test "quantization with --finetuning_type full or freeze: LLaMA-Factory's error" {
	run -2 train --quantization_bit 4 --finetuning_type full --output_dir o
	assert_output --partial "Quantization is only compatible with the LoRA or OFT method."
	run -2 train --quantization_bit 8 --finetuning_type freeze --output_dir o
	assert_output --partial "Quantization is only compatible with the LoRA or OFT method."
}

@test "other quantization methods are refused by name" {
	for m in gptq awq hqq eetq; do
		run -2 train --quantization_bit 4 --quantization_method $m --output_dir o
		assert_output --partial "--quantization_method $m: only bnb"
	done
	run -2 train --quantization_bit 4 --quantization_method foo --output_dir o
	assert_output --partial "not a quantization method"
}

@test "bad --quantization_type and --double_quantization values are refused" {
	run -2 train --quantization_bit 4 --quantization_type int4 --output_dir o
	assert_output --partial "--quantization_type 'int4': use nf4 or fp4"
	run -2 train --quantization_bit 4 --double_quantization maybe --output_dir o
	assert_output --partial "--double_quantization 'maybe'"
}

@test "ft-generate runs a QLoRA adapter on the quantized base, 4-bit and 8-bit" {
	train --quantization_bit 4 --output_dir ad -q
	printf '%s\n' '{"prompt": "Who are you?"}' > p.jsonl
	for b in 4 8; do
		run ft-generate --model_name_or_path "$MODEL" --tokenizer "$TOK" --template default \
			--max_new_tokens 4 --do_sample false --quantization_bit $b --adapter_name_or_path ad p.jsonl
		assert_success
		assert_output --partial '"predict"'
	done
	run -2 ft-generate --model_name_or_path "$MODEL" --quantization_bit 3 p.jsonl
	assert_output --partial "4-bit or 8-bit"
	run -2 ft-generate --model_name_or_path "$MODEL" --quantization_bit 4 --quantization_method awq p.jsonl
	assert_output --partial "awq"
	run -2 ft-generate --model_name_or_path "$MODEL" --quantization_bit 4 --adapter_name_or_path ad,ad p.jsonl
	assert_output --partial "Quantized model only accepts a single adapter."
}

@test "ft-merge folds a QLoRA adapter into the unquantized base; a quantized merge is refused" {
	train --quantization_bit 4 --output_dir ad -q
	run ft-merge --model_name_or_path "$MODEL" --adapter_name_or_path ad --export_dir merged
	assert_success
	[ -s merged/model.safetensors ]
	run -2 ft-merge --model_name_or_path "$MODEL" --adapter_name_or_path ad --export_dir m2 --quantization_bit 4
	assert_output --partial "Cannot merge adapters to a quantized model."
	[ ! -e m2 ]
	run -2 ft-merge --model_name_or_path "$MODEL" --export_dir m3 --quantization_bit 8
	assert_output --partial "quantized export is not supported"
}

# ---- QDoRA: --use_dora on the quantized base ----------------------------------

# against tests/fixtures/quant/qdora_losses.txt (make_qdora_fixtures.py: PEFT's
# DoRA on bnb's Linear4bit / Linear8bitLt, dropout under ft's masks); every
# step within 1e-5 relative, the bound of the unquantized DoRA runs (float32
# sums in another order; the dequantized weights are bnb's bit for bit)
@test "QDoRA: 10 steps on the NF4 base match PEFT on bnb; with lora_dropout 0.1 on 4-bit and 8-bit too" {
	need_jq
	mkdir qd01 && cp "$FIXTURES/quant/llama-qdora-init"/* qd01/
	jq '.lora_dropout = 0.1' "$FIXTURES/quant/llama-qdora-init/adapter_config.json" > qd01/adapter_config.json
	export REF=quant/qdora_losses.txt
	parity_run qdora_nf4 lora --learning_rate 2e-3 --quantization_bit 4 \
		--adapter_name_or_path "$FIXTURES/quant/llama-qdora-init"
	parity_run qdora_nf4_drop lora --learning_rate 2e-3 --quantization_bit 4 --adapter_name_or_path qd01 \
		--lora_dropout 0.1
	parity_run qdora_int8_drop lora --learning_rate 2e-3 --quantization_bit 8 --adapter_name_or_path qd01 \
		--lora_dropout 0.1
	# the quantization shows: the same adapter on the float32 base differs
	run ft-train --model_name_or_path "$MODEL" --train p20.zst --output_dir f32 --max_steps 1 -q \
		--adapter_name_or_path "$FIXTURES/quant/llama-qdora-init" --logging_steps 1
	assert_success
	[ "$(jq -s '.[0].loss' f32/trainer_log.jsonl)" != "$(jq -s '.[0].loss' qdora_nf4/trainer_log.jsonl)" ]
}

@test "QDoRA: --use_dora --quantization_bit 4 starts as the quantized base and saves PEFT's DoRA adapter" {
	need_jq
	run train --quantization_bit 4 --use_dora --learning_rate 5e-3 --output_dir d -q
	assert_success
	run train --quantization_bit 4 --learning_rate 5e-3 --output_dir l -q
	assert_success
	# step 1 runs before any update: magnitude = ||dequantized W||, the same model
	[ "$(jq -s '.[0].loss' d/trainer_log.jsonl)" = "$(jq -s '.[0].loss' l/trainer_log.jsonl)" ]
	[ "$(jq -s '.[1].loss' d/trainer_log.jsonl)" != "$(jq -s '.[1].loss' l/trainer_log.jsonl)" ]
	[ "$(jq .use_dora d/adapter_config.json)" = true ]
	[ "$(magnitudes d)" = 14 ]
}

@test "QDoRA: resume and gradient checkpointing bit for bit, 4-bit with dropout and 8-bit" {
	need_jq
	for q in "4 --lora_dropout 0.1" "8"; do
		args=(--quantization_bit $q --use_dora --learning_rate 5e-3 --max_steps 6 --logging_steps 1
		      --save_steps 3 -q)
		rm -rf out b g
		ft-train --model_name_or_path "$MODEL" --train train.zst --output_dir out "${args[@]}"
		mkdir b && cp -r out/checkpoint-3 b/ && head -n 3 out/trainer_log.jsonl > b/trainer_log.jsonl
		run ft-train --model_name_or_path "$MODEL" --train train.zst --output_dir b "${args[@]}" \
			--resume_from_checkpoint b/checkpoint-3
		assert_success
		diff <(jq -c '{current_steps, loss, grad_norm}' out/trainer_log.jsonl) \
			<(jq -c '{current_steps, loss, grad_norm}' b/trainer_log.jsonl)
		cmp out/adapter_model.safetensors b/adapter_model.safetensors
		run ft-train --model_name_or_path "$MODEL" --train train.zst --output_dir g "${args[@]}" \
			--gradient_checkpointing true
		assert_success
		cmp out/adapter_model.safetensors g/adapter_model.safetensors
	done
}

@test "QDoRA: evaluation and ft-generate on the quantized base; ft-merge into the float32 base" {
	need_jq
	ft-cat --encode < "$FIXTURES/trainer/val.jsonl" > val.zst
	train --quantization_bit 4 --use_dora --learning_rate 1e-2 --max_steps 3 --output_dir ad -q
	printf '%s\n' '{"prompt": "Who are you?"}' > p.jsonl
	for b in 4 8; do
		run ft-train --model_name_or_path "$MODEL" --adapter_name_or_path ad --quantization_bit $b \
			--val val.zst --do_eval --output_dir e$b -q
		assert_success
		jq -e '.eval_loss > 0' e$b/eval_results.json
		run ft-generate --model_name_or_path "$MODEL" --tokenizer "$TOK" --template default \
			--max_new_tokens 4 --do_sample false --quantization_bit $b --adapter_name_or_path ad p.jsonl
		assert_success
		assert_output --partial '"predict"'
	done
	# LLaMA-Factory's export: the adapter onto the unquantized base (PEFT's
	# DoRA merge), evaluated as the adapter there (float32 rounding)
	merge_evaluates_as ad
	[ "$(jq .eval_loss ad-ea/eval_results.json)" != "$(jq .eval_loss e4/eval_results.json)" ]
	run -2 ft-merge --model_name_or_path "$MODEL" --adapter_name_or_path ad --export_dir m2 --quantization_bit 4
	assert_output --partial "Cannot merge adapters to a quantized model."
}

@test "QDoRA with --pissa_init stays refused (PiSSA rewrites the base weights; LLaMA-Factory refuses it too)" {
	run -2 train --quantization_bit 4 --use_dora --pissa_init --output_dir o
	assert_output --partial "quantization_bit"
}

@test "ft-run routes the QLoRA keys to ft-train" {
	printf '%s\n' "model_name_or_path: $MODEL" "stage: sft" "finetuning_type: lora" "quantization_bit: 4" \
		"quantization_type: fp4" "double_quantization: false" "quantization_method: bnb" \
		"do_train: true" "dataset: identity" "template: default" "output_dir: out" > run.yaml
	run ft-run -n train run.yaml
	assert_success
	assert_output --partial "--quantization_bit 4"
	assert_output --partial "--quantization_type fp4"
	assert_output --partial "--double_quantization=false"
	assert_output --partial "--quantization_method bnb"
}
