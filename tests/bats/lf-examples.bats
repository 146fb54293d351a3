#!/usr/bin/env bats
# LLaMA-Factory's own example configs (tests/fixtures/lf-examples, see its
# NOTICE) through ft-run, with a tiny local model for the hub ids: each one
# either runs, or is refused with every reason at once.
load helper

EX="$FT_ROOT/tests/fixtures/lf-examples"

# train, export or chat, as llamafactory-cli is called for the folder
command_for() {
	case "$1" in
	merge_lora/*) echo export ;;
	inference/*) echo chat ;;
	*) echo train ;;
	esac
}

# The configs ft-run accepts today (the others are refused, with reasons).
RUNNABLE="extras/adam_mini/qwen2_full_sft.yaml
extras/apollo/llama3_full_sft.yaml
extras/asft/llama2_full_asft.yaml
extras/asft/qwen2_full_asft.yaml
extras/badam/llama3_full_sft.yaml
extras/dft/qwen2_full_sft.yaml
extras/eaft/qwen25_05b_eaft_full.yaml
extras/fp8/llama3_fp8_deepspeed_sft.yaml
extras/fp8/llama3_fp8_fsdp_sft.yaml
extras/fsdp_qlora/llama3_lora_sft.yaml
extras/galore/llama3_full_sft.yaml
extras/llama_pro/llama3_freeze_sft.yaml
extras/loraplus/llama3_lora_sft.yaml
extras/muon/qwen2_full_sft.yaml
extras/nlg_eval/llama3_lora_predict.yaml
extras/oft/llama3_oft_sft.yaml
extras/pissa/llama3_lora_sft.yaml
extras/qoft/llama3_oft_sft_awq.yaml
extras/qoft/llama3_oft_sft_bnb_npu.yaml
extras/qoft/llama3_oft_sft_gptq.yaml
inference/qwen3.yaml
inference/qwen3_full_sft.yaml
inference/qwen3_lora_sft.yaml
merge_lora/qwen3_full_sft.yaml
merge_lora/qwen3_gptq.yaml
merge_lora/qwen3_lora_sft.yaml
train_full/qwen3_full_sft.yaml
train_lora/qwen3_lora_dpo.yaml
train_lora/qwen3_lora_kto.yaml
train_lora/qwen3_lora_pretrain.yaml
train_lora/qwen3_lora_reward.yaml
train_lora/qwen3_lora_sft.yaml
train_lora/qwen3_lora_sft_ds3.yaml
train_lora/qwen3_lora_sft_ray.yaml
train_lora/qwen3_preprocess.yaml
train_qlora/llama3_lora_sft_aqlm.yaml
train_qlora/llama3_lora_sft_awq.yaml
train_qlora/llama3_lora_sft_gptq.yaml
train_qlora/qwen3_lora_sft_bnb_npu.yaml
train_qlora/qwen3_lora_sft_otfq.yaml"

@test "every example config: a plan, or each problem on its own line with the count" {
	cd "$EX"
	accepted=""
	n=0
	for f in $(find . -name '*.yaml' | sed 's|^\./||' | sort); do
		n=$((n + 1))
		cmd=$(command_for "$f")
		run --separate-stderr ft-run -n "$cmd" "$f" model_name_or_path=model
		if [ "$status" -eq 0 ]; then
			accepted+="$f"$'\n'
			[[ "$output" == "set -euo pipefail"* ]] || { echo "$f: no plan"; return 1; }
			continue
		fi
		[ "$status" -eq 1 ] || { echo "$f: status $status"; return 1; }
		# every line but the last names the config, its line, and why
		probs=$(sed '$d' <<< "$stderr")
		count=$(tail -1 <<< "$stderr" | sed -n 's/^ft-run: \([0-9]*\) settings\{0,1\} ft cannot run$/\1/p')
		[ -n "$count" ] || { echo "$f: last line: $(tail -1 <<< "$stderr")"; return 1; }
		[ "$(wc -l <<< "$probs")" -eq "$count" ] || { echo "$f: $count problems, lines:"; echo "$probs"; return 1; }
		if grep -v "^ft-run: $f:[0-9]*: " <<< "$probs"; then echo "$f: a line without its origin"; return 1; fi
	done
	[ "$n" -eq 52 ]
	diff <(echo "$RUNNABLE") <(printf '%s' "$accepted")
}

# The runnable ones, end to end on a tiny model in the order a user would
# run them: the merge and chat configs use the adapter the sft config
# trains (the paths in the configs line up).
run_example() {
	local f=$1; shift
	run ft-run -q "$(command_for "$f")" "$EX/$f" model_name_or_path=model \
		dataset_dir="$SHARED/data/llamafactory" "$@" < /dev/null
	[ "$status" -eq 0 ] || { echo "$f: $output"; return 1; }
}

# A tiny Qwen2 with the real Qwen3 tokenizer (the templates qwen3_nothink
# and llama3 need its special tokens): random weights from ft-train's
# --train_from_scratch, one step on the trainer fixture's batches.
tiny_qwen() {
	cat > qwen.json <<-EOT
	{"architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2", "hidden_size": 16,
	 "intermediate_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2,
	 "num_key_value_heads": 1, "vocab_size": 151669, "max_position_embeddings": 128,
	 "rms_norm_eps": 1e-6, "rope_theta": 1000000.0, "tie_word_embeddings": true,
	 "bos_token_id": 151643, "eos_token_id": 151645, "hidden_act": "silu", "dtype": "float32"}
	EOT
	from_scratch qwen.json
}

@test "the runnable example configs run end to end on a tiny model" {
	skip_without_shared
	tiny_qwen
	small="max_samples=8 cutoff_len=64 max_steps=2 logging_steps=1"
	run_example train_lora/qwen3_lora_sft.yaml $small
	[ -s saves/qwen3-4b/lora/sft/adapter_model.safetensors ]
	[ -s saves/qwen3-4b/lora/sft/training_loss.png ]
	run_example train_lora/qwen3_lora_pretrain.yaml $small
	[ -s saves/qwen3-4b/lora/pretrain/adapter_model.safetensors ]
	# tokenized_path: the first run packs and stops, the second trains
	run_example train_lora/qwen3_preprocess.yaml $small
	[ -s saves/qwen3-4b/dataset/sft/manifest.json ]
	[ ! -e saves/qwen3-4b/lora/sft-preprocessed ]
	run_example train_lora/qwen3_preprocess.yaml $small output_dir=saves/pre
	[ -s saves/pre/adapter_model.safetensors ]
	run_example merge_lora/qwen3_lora_sft.yaml
	[ -s saves/qwen3_sft_merged/model.safetensors ]
	# both merge configs export to saves/qwen3_sft_merged
	run_example merge_lora/qwen3_full_sft.yaml export_dir=saves/full_merged
	[ -s saves/full_merged/model.safetensors ]
	run_example inference/qwen3_lora_sft.yaml max_new_tokens=2
	run_example inference/qwen3.yaml max_new_tokens=2
	# the llama3 configs: ../shared has no Llama-3 tokenizer, so the tiny
	# model's Qwen template stands in for the llama3 one
	run_example extras/nlg_eval/llama3_lora_predict.yaml adapter_name_or_path=saves/qwen3-4b/lora/sft \
		max_samples=4 max_new_tokens=2 template=qwen3_nothink
	[ -s saves/llama3-8b/lora/predict/generated_predictions.jsonl ]
	for q in aqlm awq gptq; do
		run_example train_qlora/llama3_lora_sft_$q.yaml $small template=qwen3_nothink
	done
	# the extras ft-train runs (the tiny model has one layer: LLaMA Pro
	# expands it as its only trainable layer)
	run_example extras/loraplus/llama3_lora_sft.yaml $small template=qwen3_nothink
	[ -s saves/llama3-8b/lora/sft/adapter_model.safetensors ]
	run_example extras/badam/llama3_full_sft.yaml $small template=qwen3_nothink
	[ -s saves/llama3-8b/full/sft/model.safetensors ]
	run_example extras/llama_pro/llama3_freeze_sft.yaml $small template=qwen3_nothink freeze_trainable_layers=1
	[ -s saves/llama3-8b-pro/freeze/sft/model.safetensors ]
	run_example extras/adam_mini/qwen2_full_sft.yaml $small
	[ -s saves/qwen2-1_5b/full/sft/model.safetensors ]
	run_example extras/muon/qwen2_full_sft.yaml $small overwrite_output_dir=true
	[ -s saves/qwen2-1_5b/full/sft/model.safetensors ]
	# PiSSA with pissa_convert (the loraplus run above used the same output_dir)
	run_example extras/pissa/llama3_lora_sft.yaml $small template=qwen3_nothink lora_rank=4
	[ -s saves/llama3-8b/lora/sft/pissa_converted/adapter_model.safetensors ]
	# QLoRA (bitsandbytes 4-bit on the fly): NF4, with and without double quantization
	run_example train_qlora/qwen3_lora_sft_otfq.yaml $small output_dir=saves/qlora
	[ -s saves/qlora/adapter_model.safetensors ]
	run_example train_qlora/qwen3_lora_sft_bnb_npu.yaml $small output_dir=saves/qlora_npu
	[ -s saves/qlora_npu/adapter_model.safetensors ]
	# the DFT and EAFT losses
	run_example extras/dft/qwen2_full_sft.yaml $small overwrite_output_dir=true output_dir=saves/dft
	[ -s saves/dft/model.safetensors ]
	run_example extras/eaft/qwen25_05b_eaft_full.yaml $small output_dir=saves/eaft
	[ -s saves/eaft/model.safetensors ]
	# DeepSpeed's ZeRO-3 configs: one process here, with --zero 1
	ln -s "$EX" examples
	run_example train_full/qwen3_full_sft.yaml $small output_dir=saves/ds3_full
	[ -s saves/ds3_full/model.safetensors ]
	run_example train_lora/qwen3_lora_sft_ds3.yaml $small output_dir=saves/ds3_lora
	[ -s saves/ds3_lora/adapter_model.safetensors ]
	# fp8 (torchao's Float8Linear numerics; the CPU here, no GPU), under DeepSpeed's
	# ZeRO-3 fp8 config and FSDP: ft's data parallel with --zero 1
	run_example extras/fp8/llama3_fp8_deepspeed_sft.yaml $small template=qwen3_nothink report_to=none
	[ -s saves/llama3-8b/fp8-deepspeed/sft/model.safetensors ]
	run_example extras/fp8/llama3_fp8_fsdp_sft.yaml $small template=qwen3_nothink report_to=none
	[ -s saves/llama3-8b/fp8-fsdp/sft/model.safetensors ]
	# ASFT (a frozen copy of the model as the reference); their datasets
	# med and math are the user's own, not in LLaMA-Factory's registry
	run_example extras/asft/qwen2_full_asft.yaml $small dataset=alpaca_en_demo output_dir=saves/asft
	[ -s saves/asft/model.safetensors ]
	run_example extras/asft/llama2_full_asft.yaml $small dataset=alpaca_en_demo template=qwen3_nothink \
		output_dir=saves/asft2
	[ -s saves/asft2/model.safetensors ]
	# OFT (its block size 32 is above the tiny model's 16 inputs: PEFT's
	# adjustment makes one block), on a 4-bit base too; the adapter merges
	run_example extras/oft/llama3_oft_sft.yaml $small template=qwen3_nothink output_dir=saves/oft
	[ "$(jq -r .peft_type saves/oft/adapter_config.json)" = OFT ]
	run ft-merge -q --model_name_or_path model --adapter_name_or_path saves/oft --export_dir saves/oft_merged
	assert_success
	run_example extras/qoft/llama3_oft_sft_bnb_npu.yaml $small template=qwen3_nothink output_dir=saves/qoft
	[ -s saves/qoft/adapter_model.safetensors ]
	for q in awq gptq; do
		run_example extras/qoft/llama3_oft_sft_$q.yaml $small template=qwen3_nothink output_dir=saves/qoft_$q
	done
	# layer-wise GaLore (its galore_rank 128 is above the tiny model's dimensions: the full space)
	run_example extras/galore/llama3_full_sft.yaml $small template=qwen3_nothink output_dir=saves/galore
	[ -s saves/galore/model.safetensors ]
	# layer-wise APOLLO (apollo_rank 128: random projections need no cap)
	run_example extras/apollo/llama3_full_sft.yaml $small template=qwen3_nothink output_dir=saves/apollo
	[ -s saves/apollo/model.safetensors ]
}

# merge_lora/qwen3_gptq.yaml as it is: 4-bit GPTQ on data/c4_demo.jsonl
# (LLaMA-Factory's data/ from ../shared), 128 windows of 1024 tokens, on a
# tiny Qwen3 whose linears GPTQ can pack (multiples of 32).
@test "merge_lora/qwen3_gptq.yaml: a GPTQ export end to end on a tiny Qwen3" {
	skip_without_shared
	cat > qwen3.json <<-EOT
	{"architectures": ["Qwen3ForCausalLM"], "model_type": "qwen3", "hidden_size": 64,
	 "intermediate_size": 128, "num_hidden_layers": 1, "num_attention_heads": 2,
	 "num_key_value_heads": 1, "head_dim": 32, "vocab_size": 151669, "max_position_embeddings": 2048,
	 "rms_norm_eps": 1e-6, "rope_theta": 1000000.0, "tie_word_embeddings": true,
	 "bos_token_id": 151643, "eos_token_id": 151645, "hidden_act": "silu", "dtype": "float32"}
	EOT
	from_scratch qwen3.json
	ln -s "$SHARED/data/llamafactory" data
	run ft-run -q export "$EX/merge_lora/qwen3_gptq.yaml" model_name_or_path=model < /dev/null
	assert_success
	jq -e '.dtype == "float16" and .quantization_config.bits == 4 and
	       (.quantization_config.dataset | length) == 128 and
	       (.quantization_config.dataset[127].input_ids[0] | length) == 1024' saves/qwen3_gptq/config.json
	[ -s saves/qwen3_gptq/model.safetensors ] && [ -s saves/qwen3_gptq/tokenizer.json ]
	# what the other tools do with it: refuse it by name
	run ft-generate --model_name_or_path saves/qwen3_gptq --do_predict --output_dir g < /dev/null
	assert_failure
	assert_output --partial "pre-quantized checkpoint (gptq)"
}

# The DeepSpeed configs the examples name, from the checkout's root as
# LLaMA-Factory reads them (examples/deepspeed/...).
@test "deepspeed and fsdp: ft's data parallel, --zero 1 when the ZeRO stage shards, with a note" {
	ln -s "$EX" examples
	run --separate-stderr ft-run -v -n examples/train_full/qwen3_full_sft.yaml model_name_or_path=model
	assert_success
	[[ "$output" == *"--zero 1 --gradient_checkpointing --device auto --train"* ]]
	[[ "$stderr" == *"qwen3_full_sft.yaml:9: deepspeed examples/deepspeed/ds_z3_config.json (ZeRO stage 3): runs as ft's data parallel"*"the gradient and parameter sharding of ZeRO-2/3 is not done"* ]]
	# stage 0 shards nothing; an explicit zero wins; an unreadable config says so
	run --separate-stderr ft-run -v -n examples/train_full/qwen3_full_sft.yaml model_name_or_path=model \
		deepspeed=examples/deepspeed/ds_z0_config.json
	assert_success
	[[ "$output" != *"--zero"* ]]
	[[ "$stderr" == *"(ZeRO stage 0): runs as ft's data parallel"*"nothing sharded"* ]]
	run --separate-stderr ft-run -n examples/train_full/qwen3_full_sft.yaml model_name_or_path=model zero=0
	[[ "$output" == *"--zero 0 "* && "$output" != *"--zero 1"* ]]
	run --separate-stderr ft-run -v -n examples/train_full/qwen3_full_sft.yaml model_name_or_path=model \
		deepspeed=missing.json
	assert_success
	[[ "$output" != *"--zero"* ]]
	[[ "$stderr" == *"deepspeed missing.json cannot be read here, so its ZeRO stage is unknown"* ]]
	run --separate-stderr ft-run -v -n examples/train_full/qwen3_full_sft.yaml model_name_or_path=model \
		deepspeed=examples/deepspeed/ds_z3_offload_config.json
	[[ "$stderr" == *"its CPU offload is not done either"* ]]
	# fsdp's sharding words are ZeRO-1 here too
	run --separate-stderr ft-run -v -n examples/train_lora/qwen3_lora_sft.yaml model_name_or_path=model \
		fsdp="full_shard auto_wrap" fsdp_transformer_layer_cls_to_wrap=Qwen3DecoderLayer
	assert_success
	[[ "$output" == *"--zero 1 --gradient_checkpointing --device auto --train"* ]]
	[[ "$stderr" == *"fsdp full_shard auto_wrap: runs as ft's data parallel"* ]]
	# ft-train itself names the equivalent
	run ft-train --deepspeed examples/deepspeed/ds_z3_config.json --train x --output_dir o
	assert_failure 2
	assert_output --partial "--zero 1"
}

# extras/mod is the one config whose every other setting ft runs: MoD alone
# stops it, with the reason (docs/EXTRAS.md: the mixture-of-depth package
# fails under the transformers LLaMA-Factory requires).
@test "extras/mod: refused for mixture_of_depths alone, with why" {
	run --separate-stderr ft-run -n train "$EX/extras/mod/llama3_full_sft.yaml" model_name_or_path=model
	assert_failure 1
	[ "$(wc -l <<< "$stderr")" -eq 2 ]
	[[ "$stderr" == *"llama3_full_sft.yaml:9: 'mixture_of_depths' is not supported: Mixture-of-Depths: its package"* ]]
	[[ "$stderr" == *"ft-run: 1 setting ft cannot run" ]]
	[ -z "$output" ]
}

@test "a pre-quantized checkpoint is refused by name, as its config says" {
	cp -r "$FT_ROOT/tests/fixtures/models/tiny-llama" model
	jq '. + {quantization_config: {quant_method: "awq", bits: 4}}' model/config.json > c && mv c model/config.json
	run --separate-stderr ft-run -n "$EX/train_qlora/llama3_lora_sft_awq.yaml" model_name_or_path=model
	assert_failure 1
	[[ "$stderr" == *"model is a pre-quantized checkpoint (awq)"* ]]
}

@test "every tool that loads a pre-quantized checkpoint refuses it by method" {
	cp -r "$FT_ROOT/tests/fixtures/models/tiny-llama" model
	jq '. + {quantization_config: {quant_method: "gptq", bits: 4}}' model/config.json > c && mv c model/config.json
	ft-cat --encode < "$FIXTURES/trainer/train.jsonl" > train.zst
	run ft-train --model_name_or_path model --train train.zst --output_dir o --max_steps 1
	assert_failure 1
	assert_output --partial "a pre-quantized checkpoint (gptq)"
	run ft-merge --model_name_or_path model --export_dir x
	assert_failure 1
	assert_output --partial "a pre-quantized checkpoint (gptq)"
	run ft-merge --model_name_or_path model --adapter_name_or_path "$FIXTURES/merge/llama-r4/adapter" --export_dir x
	assert_failure 1
	assert_output --partial "a pre-quantized checkpoint (gptq)"
	run ft-generate --model_name_or_path model --do_predict --output_dir g < /dev/null
	assert_failure
	assert_output --partial "pre-quantized checkpoint (gptq)"
}

@test "the dpo, kto and reward example configs run end to end on a tiny model" {
	skip_without_shared
	tiny_qwen
	small="max_samples=8 cutoff_len=64 max_steps=2 logging_steps=1"
	run_example train_lora/qwen3_lora_dpo.yaml $small
	[ -s saves/qwen3-4b/lora/dpo/adapter_model.safetensors ]
	[ -s saves/qwen3-4b/lora/dpo/training_rewards_accuracies.png ]
	grep -q '"rewards/accuracies"' saves/qwen3-4b/lora/dpo/trainer_log.jsonl
	run_example train_lora/qwen3_lora_kto.yaml $small
	[ -s saves/qwen3-4b/lora/kto/adapter_model.safetensors ]
	grep -q '"kl"' saves/qwen3-4b/lora/kto/trainer_log.jsonl
	run_example train_lora/qwen3_lora_reward.yaml $small
	[ -s saves/qwen3-4b/lora/reward/value_head.safetensors ]
}
