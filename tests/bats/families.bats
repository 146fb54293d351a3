#!/usr/bin/env bats
# Model families beyond Llama/Mistral/Qwen2 (lib/model/arch.c): refusals,
# ft-train, ft-generate and ft-merge on the Qwen3 fixture (sharded
# safetensors from transformers, tests/reference/make_family_fixtures.py),
# and the reasoning templates' --enable_thinking through the tools.
load helper

QWEN3="$FT_ROOT/tests/fixtures/families/qwen3/model"
QWEN3_LORA="$FT_ROOT/tests/fixtures/families/qwen3/lora"
TOK="$FT_ROOT/tests/fixtures/generate/tokenizer"

gen() { ft-generate --tokenizer "$TOK" --template default --do_sample false --max_new_tokens 8 "$@"; }

moe_model() {
	mkdir -p moe
	jq '.architectures = ["Qwen3MoeForCausalLM"] | .model_type = "qwen3_moe"' "$QWEN3/config.json" > moe/config.json
	cp "$QWEN3"/*.safetensors* moe/
}

@test "an unsupported architecture is refused naming the supported ones, by every loader" {
	moe_model
	want="architecture Qwen3MoeForCausalLM is not supported (LlamaForCausalLM, MistralForCausalLM, Qwen2ForCausalLM, Qwen3ForCausalLM, Gemma2ForCausalLM, Gemma3ForCausalLM, Phi3ForCausalLM)"
	ft-cat --encode < "$FIXTURES/trainer/train.jsonl" > train.zst
	run --separate-stderr ft-train --model_name_or_path moe --train train.zst --output_dir o --max_steps 1
	assert_failure 1
	[[ "$stderr" == *"$want"* ]]
	echo '{"prompt": "a"}' > p.jsonl
	run --separate-stderr gen --model_name_or_path moe p.jsonl
	assert_failure
	[[ "$stderr" == *"$want"* ]]
	run --separate-stderr ft-merge --model_name_or_path moe --adapter_name_or_path "$QWEN3_LORA" --export_dir m
	assert_failure
	[[ "$stderr" == *"$want"* ]]
}

@test "Qwen3 with attention_bias is refused with the reason" {
	mkdir -p b && cp "$QWEN3"/*.safetensors* b/
	jq '.attention_bias = true' "$QWEN3/config.json" > b/config.json
	echo '{"prompt": "a"}' > p.jsonl
	run --separate-stderr gen --model_name_or_path b p.jsonl
	assert_failure
	[[ "$stderr" == *"Qwen3 attention_bias true is not supported"* ]]
}

@test "ft-generate on sharded Qwen3; ft-merge's model answers as base + adapter" {
	printf '%s\n' '{"prompt": "who are you"}' '{"prompt": "the tea is hot"}' > p.jsonl
	gen --model_name_or_path "$QWEN3" p.jsonl > base.jsonl
	gen --model_name_or_path "$QWEN3" --adapter_name_or_path "$QWEN3_LORA" p.jsonl > tuned.jsonl
	[ "$(wc -l < base.jsonl)" -eq 2 ]
	! cmp -s base.jsonl tuned.jsonl || false
	run ft-merge --model_name_or_path "$QWEN3" --adapter_name_or_path "$QWEN3_LORA" --export_dir merged
	assert_success
	[ "$(jq -r '.architectures[0]' merged/config.json)" = Qwen3ForCausalLM ]
	gen --model_name_or_path merged p.jsonl > merged.jsonl
	cmp tuned.jsonl merged.jsonl
}

@test "ft-train on Qwen3: LoRA on all linear modules, full fine-tuning saves q_norm/k_norm" {
	ft-cat --encode < "$FIXTURES/trainer/train.jsonl" > train.zst
	run ft-train -q --model_name_or_path "$QWEN3" --train train.zst --output_dir lora \
		--lora_target all --max_steps 2
	assert_success
	! grep -aq q_norm lora/adapter_model.safetensors || false
	keys=$(jq -r '.target_modules | sort | join(",")' lora/adapter_config.json)
	[ "$keys" = "down_proj,gate_proj,k_proj,o_proj,q_proj,up_proj,v_proj" ]
	run ft-train -q --model_name_or_path "$QWEN3" --train train.zst --output_dir full \
		--finetuning_type full --max_steps 1
	assert_success
	[ "$(jq -r '.architectures[0]' full/config.json)" = Qwen3ForCausalLM ]
	grep -aq 'model.layers.1.self_attn.q_norm.weight' full/model.safetensors
	grep -aq 'model.layers.1.self_attn.k_norm.weight' full/model.safetensors
	echo '{"prompt": "a"}' > p.jsonl
	run gen --model_name_or_path full p.jsonl
	assert_success
}

# A tiny Qwen3 with the real Qwen3 tokenizer, from --train_from_scratch.
tiny_qwen3() {
	cat > qwen3.json <<-EOT
	{"architectures": ["Qwen3ForCausalLM"], "model_type": "qwen3", "hidden_size": 16,
	 "intermediate_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2, "head_dim": 8,
	 "num_key_value_heads": 1, "vocab_size": 151669, "max_position_embeddings": 128,
	 "rms_norm_eps": 1e-6, "rope_theta": 1000000.0, "tie_word_embeddings": true,
	 "bos_token_id": 151643, "eos_token_id": 151645, "hidden_act": "silu", "dtype": "float32"}
	EOT
	from_scratch qwen3.json
}

@test "qwen3 template: --enable_thinking=false puts the empty thought in the prompt" {
	skip_without_shared
	tiny_qwen3
	[ "$(jq -r '.architectures[0]' model/config.json)" = Qwen3ForCausalLM ]
	echo '{"prompt": "hi"}' > p.jsonl
	run ft-generate --model_name_or_path model --template qwen3 --do_sample false --max_new_tokens 2 p.jsonl
	assert_success
	assert_output --partial '"prompt":"<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"'
	run ft-generate --model_name_or_path model --template qwen3 --enable_thinking=false \
		--do_sample false --max_new_tokens 2 p.jsonl
	assert_success
	assert_output --partial 'assistant\n<think>\n\n</think>\n\n"'
}

@test "ft-tokenize qwen3: the empty thought is trained on, or masked with --enable_thinking=false" {
	skip_without_shared
	printf '%s\n' '{"instruction": "hi", "output": "hello"}' > d.json
	printf '{"d": {"file_name": "d.json"}}\n' > dataset_info.json
	tok="$SHARED/tokenizers/qwen3"
	ft-tokenize --dataset d --dataset_dir . --tokenizer "$tok" --template qwen3 --no_cache -o on.zst
	ft-tokenize --dataset d --dataset_dir . --tokenizer "$tok" --template qwen3 --no_cache \
		--enable_thinking=false -o off.zst
	# <think> is 151667: labelled when thinking is on, -100 when off
	run bash -c "ft-cat -H on.zst | jq -c '[.input_ids, .labels] | map(index(151667))'"
	assert_output '[9,9]'
	run bash -c "ft-cat -H off.zst | jq -c '[.input_ids, .labels] | map(index(151667))'"
	assert_output '[9,null]'
	[ "$(ft-cat --header off.zst | jq .meta.enable_thinking)" = false ]
}

@test "ft-run routes enable_thinking and preserve_thinking to ft-tokenize and ft-generate" {
	cat > c.yaml <<-EOT
	stage: sft
	do_train: true
	model_name_or_path: m
	dataset: identity
	template: qwen3
	enable_thinking: false
	preserve_thinking: true
	finetuning_type: lora
	output_dir: out
	EOT
	run ft-run -n train c.yaml
	assert_success
	assert_output --partial "--enable_thinking=false"
	assert_output --partial "--preserve_thinking"
	run ft-run -n chat --model_name_or_path m --template qwen3 --enable_thinking false
	assert_success
	assert_output --partial "ft-generate"
	assert_output --partial "--enable_thinking=false"
}

@test "ft-train --rope_scaling: factor from the batches' cutoff_len, saved in the config; within it, a warning" {
	sed '1s/"cutoff_len": 16/"cutoff_len": 200/' "$FIXTURES/trainer/train.jsonl" | ft-cat --encode > long.zst
	ft-cat --encode < "$FIXTURES/trainer/train.jsonl" > short.zst
	run ft-train -q --model_name_or_path "$QWEN3" --train long.zst --output_dir o --max_steps 1 \
		--finetuning_type full --rope_scaling yarn
	assert_success
	[ "$(jq -c '[.rope_parameters.rope_type, .rope_parameters.factor, .max_position_embeddings]' o/config.json)" = '["yarn",4,256]' ]
	echo '{"prompt": "a"}' > p.jsonl
	run gen --model_name_or_path o p.jsonl
	assert_success
	run --separate-stderr ft-train --model_name_or_path "$QWEN3" --train short.zst --output_dir s \
		--max_steps 1 --rope_scaling llama3
	assert_success
	[[ "$stderr" == *"--rope_scaling llama3: the input length is within the model's"* ]]
	run ft-train --model_name_or_path "$QWEN3" --train short.zst --output_dir x --rope_scaling ntk
	assert_failure 2
	assert_output --partial "not one of linear, dynamic, yarn, llama3"
}

@test "ft-generate --rope_scaling stretches 2x for chat; a bad type is a usage error" {
	echo '{"prompt": "who are you"}' > p.jsonl
	run gen --model_name_or_path "$QWEN3" --rope_scaling linear --max_new_tokens 4 p.jsonl
	assert_success
	run gen --model_name_or_path "$QWEN3" --rope_scaling ntk p.jsonl
	assert_failure 2
	assert_output --partial "--rope_scaling ntk: not one of"
}

@test "ft-run routes rope_scaling to ft-train and ft-generate" {
	run ft-run -n train --stage sft --do_train --model_name_or_path m --dataset identity \
		--template qwen3 --output_dir out --rope_scaling yarn
	assert_success
	assert_output --regexp "ft-train .*--rope_scaling yarn"
	run ft-run -n chat --model_name_or_path m --template qwen3 --rope_scaling dynamic
	assert_success
	assert_output --regexp "ft-generate .*--rope_scaling dynamic"
}

@test "ft-merge --rope_scaling writes the stretched RoPE into the export's config (factor 2)" {
	run ft-merge --model_name_or_path "$QWEN3" --adapter_name_or_path "$QWEN3_LORA" --export_dir m \
		--rope_scaling yarn
	assert_success
	[ "$(jq -c '[.rope_parameters.rope_type, .rope_parameters.factor, .max_position_embeddings]' m/config.json)" = '["yarn",2,128]' ]
	echo '{"prompt": "a"}' > p.jsonl
	run gen --model_name_or_path m p.jsonl
	assert_success
	# Gemma 3: the global layers' entry only; the sliding layers keep theirs
	run ft-merge --model_name_or_path "$FT_ROOT/tests/fixtures/families/gemma3/model" --export_dir g3 \
		--rope_scaling linear
	assert_success
	[ "$(jq -c '[.rope_parameters.full_attention.rope_type, .rope_parameters.full_attention.factor, .rope_parameters.sliding_attention.rope_theta]' g3/config.json)" = '["linear",2,10000]' ]
	run gen --model_name_or_path g3 p.jsonl
	assert_success
	run ft-merge --model_name_or_path "$QWEN3" --export_dir n --rope_scaling ntk
	assert_failure 2
	[ ! -e n ]
	run ft-run -n export --model_name_or_path m --export_dir x --rope_scaling yarn
	assert_output --partial "ft-merge --model_name_or_path m --export_dir x --rope_scaling yarn"
}

@test "Gemma 2 and 3: ft-generate, ft-merge answers as base + adapter, ft-train LoRA and full" {
	ft-cat --encode < "$FIXTURES/trainer/train.jsonl" > train.zst
	printf '%s\n' '{"prompt": "who are you"}' '{"prompt": "the tea is hot"}' > p.jsonl
	for g in gemma2 gemma3; do
		dir="$FT_ROOT/tests/fixtures/families/$g"
		gen --model_name_or_path "$dir/model" --adapter_name_or_path "$dir/lora" p.jsonl > $g-tuned.jsonl
		run ft-merge --model_name_or_path "$dir/model" --adapter_name_or_path "$dir/lora" --export_dir $g-merged
		assert_success
		gen --model_name_or_path $g-merged p.jsonl > $g-merged.jsonl
		cmp $g-tuned.jsonl $g-merged.jsonl
		run ft-train -q --model_name_or_path "$dir/model" --train train.zst --output_dir $g-lora --max_steps 2
		assert_success
		[ -s $g-lora/adapter_model.safetensors ]
		run ft-train -q --model_name_or_path "$dir/model" --train train.zst --output_dir $g-full \
			--finetuning_type full --max_steps 1
		assert_success
		grep -aq 'model.layers.1.post_feedforward_layernorm.weight' $g-full/model.safetensors
		run gen --model_name_or_path $g-full p.jsonl
		assert_success
	done
}

@test "Gemma: training from scratch and other activations are refused with the reason" {
	g="$FT_ROOT/tests/fixtures/families/gemma2/model"
	ft-cat --encode < "$FIXTURES/trainer/train.jsonl" > train.zst
	run ft-train --train_from_scratch --config "$g/config.json" --train train.zst --output_dir o --max_steps 1
	assert_failure 1
	assert_output --partial "training Gemma from scratch is not supported"
	mkdir -p b && cp "$g"/*.safetensors* b/
	jq '.hidden_activation = "gelu"' "$g/config.json" > b/config.json
	echo '{"prompt": "a"}' > p.jsonl
	run gen --model_name_or_path b p.jsonl
	assert_failure
	assert_output --partial "Gemma hidden_activation gelu is not supported (gelu_pytorch_tanh)"
}

@test "Phi-3: fused modules through ft-generate, ft-merge and ft-train; split targets refused" {
	dir="$FT_ROOT/tests/fixtures/families/phi3"
	printf '%s\n' '{"prompt": "who are you"}' '{"prompt": "the tea is hot"}' > p.jsonl
	gen --model_name_or_path "$dir/model" --adapter_name_or_path "$dir/lora" p.jsonl > tuned.jsonl
	run ft-merge --model_name_or_path "$dir/model" --adapter_name_or_path "$dir/lora" --export_dir merged
	assert_success
	gen --model_name_or_path merged p.jsonl > merged.jsonl
	cmp tuned.jsonl merged.jsonl
	ft-cat --encode < "$FIXTURES/trainer/train.jsonl" > train.zst
	run ft-train -q --model_name_or_path "$dir/model" --train train.zst --output_dir lora \
		--lora_target qkv_proj,gate_up_proj --max_steps 2
	assert_success
	[ "$(jq -c '.target_modules | sort' lora/adapter_config.json)" = '["gate_up_proj","qkv_proj"]' ]
	grep -aq 'self_attn.qkv_proj.lora_A.weight' lora/adapter_model.safetensors
	run gen --model_name_or_path "$dir/model" --adapter_name_or_path lora p.jsonl
	assert_success
	run ft-train --model_name_or_path "$dir/model" --train train.zst --output_dir x --lora_target q_proj,v_proj
	assert_failure 1
	assert_output --partial "LoRA targets are qkv_proj, o_proj, gate_up_proj, down_proj"
	# PEFT finds modules by name: Phi-3's unfused names, and its fused ones elsewhere
	run ft-train --model_name_or_path "$dir/model" --train train.zst --output_dir x --lora_target q_proj,k_proj,v_proj
	assert_failure 1
	assert_output --partial "--lora_target q_proj: the model has no such module (Phi-3 fuses them"
	run ft-train --model_name_or_path "$QWEN3" --train train.zst --output_dir x --lora_target qkv_proj
	assert_failure 1
	assert_output --partial "--lora_target qkv_proj: the model has no such module (qkv_proj and gate_up_proj are Phi-3's)"
}

@test "Phi-3: malformed longrope factors and partial rotary embeddings are refused by name" {
	dir="$FT_ROOT/tests/fixtures/families/phi3/model"
	mini="$FT_ROOT/tests/fixtures/families/phi4mini/model"
	mkdir -p a b c d && cp "$dir"/*.safetensors* a/ && cp "$dir"/*.safetensors* b/
	cp "$mini"/*.safetensors* c/ && cp "$QWEN3"/*.safetensors* d/
	jq '.rope_parameters = {"rope_type": "longrope", "rope_theta": 10000.0, "short_factor": [1], "long_factor": [1]}' "$dir/config.json" > a/config.json
	jq '.rope_parameters.partial_rotary_factor = 0.1' "$dir/config.json" > b/config.json
	jq '.rope_parameters.short_factor = [1, 1, 1, 1, 1, 1, 1, 1]' "$mini/config.json" > c/config.json
	jq '.partial_rotary_factor = 0.5' "$QWEN3/config.json" > d/config.json
	echo '{"prompt": "a"}' > p.jsonl
	run gen --model_name_or_path a p.jsonl
	assert_failure
	assert_output --partial "longrope short_factor must list head_dim/2 = 8 numbers"
	run gen --model_name_or_path b p.jsonl
	assert_failure
	assert_output --partial "partial_rotary_factor 0.1 gives 1 rotary values of head_dim 16"
	run gen --model_name_or_path c p.jsonl
	assert_failure
	assert_output --partial "longrope short_factor must list head_dim*partial_rotary_factor/2 = 6 numbers"
	run gen --model_name_or_path d p.jsonl
	assert_failure
	assert_output --partial "partial_rotary_factor 0.5 is supported for Phi3ForCausalLM only"
}

@test "Phi-4-mini (partial rotary, longrope, tied): ft-generate, ft-merge answers as base + adapter, ft-train" {
	dir="$FT_ROOT/tests/fixtures/families/phi4mini"
	printf '%s\n' '{"prompt": "who are you"}' '{"prompt": "the tea is hot"}' > p.jsonl
	gen --model_name_or_path "$dir/model" p.jsonl > base.jsonl
	gen --model_name_or_path "$dir/model" --adapter_name_or_path "$dir/lora" p.jsonl > tuned.jsonl
	! cmp -s base.jsonl tuned.jsonl || false
	run ft-merge --model_name_or_path "$dir/model" --adapter_name_or_path "$dir/lora" --export_dir merged
	assert_success
	[ "$(jq -c '[.partial_rotary_factor, .rope_parameters.partial_rotary_factor, .rope_parameters.rope_type]' merged/config.json)" = '[0.75,0.75,"longrope"]' ]
	gen --model_name_or_path merged p.jsonl > merged.jsonl
	cmp tuned.jsonl merged.jsonl
	ft-cat --encode < "$FIXTURES/trainer/train.jsonl" > train.zst
	run ft-train -q --model_name_or_path "$dir/model" --train train.zst --output_dir lora --max_steps 2
	assert_success
	grep -aq 'self_attn.qkv_proj.lora_A.weight' lora/adapter_model.safetensors
	run ft-train -q --model_name_or_path "$dir/model" --train train.zst --output_dir full \
		--finetuning_type full --max_steps 1
	assert_success
	[ "$(jq -c .rope_parameters.partial_rotary_factor full/config.json)" = 0.75 ]
	run gen --model_name_or_path full p.jsonl
	assert_success
}

@test "every family: gradient checkpointing gives bit-identical losses" {
	ft-cat --encode < "$FIXTURES/trainer/train.jsonl" > t.zst
	for g in qwen3 r1distill gemma2 gemma3 phi3 phi4mini; do
		for gc in false true; do
			ft-train -q --model_name_or_path "$FT_ROOT/tests/fixtures/families/$g/model" --train t.zst \
				--output_dir $g-$gc --max_steps 2 --logging_steps 1 --finetuning_type full \
				--gradient_checkpointing $gc
		done
		cmp <(jq -c .loss $g-false/trainer_log.jsonl) <(jq -c .loss $g-true/trainer_log.jsonl)
	done
}

@test "Gemma 2 (final soft-cap): dpo and kto train through the capped log-probabilities" {
	g="$FT_ROOT/tests/fixtures/families/gemma2/model"
	ft-cat --encode < "$FIXTURES/pref/dpo.jsonl" > dpo.zst
	ft-cat --encode < "$FIXTURES/pref/kto.jsonl" > kto.zst
	run ft-train -q --stage dpo --model_name_or_path "$g" --train dpo.zst --output_dir dpo --max_steps 2 \
		--logging_steps 1
	assert_success
	[ "$(jq -s 'map(select(.loss != null and (.loss | isnan | not))) | length' dpo/trainer_log.jsonl)" -eq 2 ]
	run ft-train -q --stage kto --model_name_or_path "$g" --train kto.zst --output_dir kto --max_steps 2
	assert_success
	[ -s kto/adapter_model.safetensors ]
}
