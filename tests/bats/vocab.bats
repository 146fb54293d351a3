#!/usr/bin/env bats
# LLaMA-Factory's vocabulary extension (docs/VOCAB.md): add_tokens,
# add_special_tokens, new_special_tokens_config (its example
# extras/multi_tokens/tokens_cfg.yaml), init_special_tokens, resize_vocab,
# through ft-tokenize, ft-train, ft-merge, ft-generate and ft-run, on the
# tiny Llama of tests/fixtures/vocab (synth-llama3's 802 tokens).
load helper

CFG="$FIXTURES/lf-examples/extras/multi_tokens/tokens_cfg.yaml"

# the tiny model and a dataset that uses the new tokens
setup_model() {
	cp -r "$FIXTURES/vocab/base" model
	mkdir -p data
	cat > data/svg.json <<-'EOT'
	[{"instruction": "Draw a box", "input": "", "output": "<|START_OF_SVG|><|start_of_rect|>w 2<|end_of_rect|><|END_OF_SVG|>"},
	 {"instruction": "Write hi", "input": "", "output": "<|START_OF_SVG|><|start_of_text|>hi<|end_of_text|><|END_OF_SVG|> <tool_x>"},
	 {"instruction": "A circle", "input": "", "output": "<|start_of_circle|>r 1<|end_of_circle|>"},
	 {"instruction": "Style", "input": "", "output": "<|start_of_style|>x<|end_of_style|>"}]
	EOT
	echo '{"svg": {"file_name": "svg.json"}}' > data/dataset_info.json
}

tokenize() {
	ft-tokenize -q --dataset svg --dataset_dir data --template empty --model_name_or_path model \
		--cutoff_len 64 --no_cache "$@"
}

@test "ft-tokenize: the new tokens encode whole, with ids after the vocabulary" {
	setup_model
	tokenize --add_tokens "<tool_x>" --new_special_tokens_config "$CFG" -o t.zst
	run ft-cat t.zst
	assert_success
	# <|START_OF_SVG|> is the first special token (803), after <tool_x> (802)
	ids='[.[] | select(.input_ids) | .input_ids[]]'
	[ "$(ft-cat t.zst | jq -s "$ids | (index(802) != null) and (index(803) != null)")" = true ]
	[ "$(ft-cat --header t.zst | jq .meta.vocab_size)" -eq 819 ]
	# without the tokens the text splits into pieces, and the identity differs
	tokenize -o plain.zst
	[ "$(ft-cat --header plain.zst | jq .meta.vocab_size)" -eq 802 ]
	[ "$(ft-cat plain.zst | jq -s "$ids | max")" -lt 802 ]
	[ "$(ft-cat --header plain.zst | jq .meta.tokenizer)" != "$(ft-cat --header t.zst | jq .meta.tokenizer)" ]
}

@test "ft-train: LoRA with new tokens trains embed_tokens and lm_head as PEFT's modules_to_save" {
	setup_model
	tokenize --add_tokens "<tool_x>" --new_special_tokens_config "$CFG" -o t.zst
	ft-pack -q --cutoff_len 64 --per_device_train_batch_size 2 -o packed t.zst
	run ft-train --model_name_or_path model --train packed --output_dir out --max_steps 2 \
		--add_tokens "<tool_x>" --new_special_tokens_config "$CFG" --init_special_tokens desc_init_w_noise
	assert_success
	[ "$(jq -c '.modules_to_save | sort' out/adapter_config.json)" = '["embed_tokens","lm_head"]' ]
	for t in model.embed_tokens lm_head; do
		for s in weight modules_to_save.weight original_module.weight; do
			grep -aq "\"base_model.model.$t.$s\"" out/adapter_model.safetensors
		done
	done
	# the tokenizer it trained with, beside the adapter
	[ "$(jq '[.added_tokens[] | select(.content == "<|START_OF_SVG|>" and .special)][0].id' out/tokenizer.json)" -eq 803 ]
	[ "$(jq '[.added_tokens[] | select(.content == "<tool_x>")][0].normalized' out/tokenizer.json)" = true ]
	# the batches must come from that tokenizer: without the flags they are refused
	run ft-train --model_name_or_path model --train packed --output_dir out2 --max_steps 1
	assert_failure 1
	assert_output --partial "another tokenizer"
	# and ft-train with the flags refuses batches made without them
	tokenize -o plain.zst
	ft-pack -q --cutoff_len 64 --per_device_train_batch_size 2 -o plain plain.zst
	run ft-train --model_name_or_path model --train plain --output_dir out3 --max_steps 1 \
		--add_special_tokens "<x>"
	assert_failure 1
	assert_output --partial "with the new tokens"
}

@test "ft-merge and ft-generate load the base with the trained adapter" {
	setup_model
	tokenize --add_special_tokens "<|START_OF_SVG|>,<|END_OF_SVG|>" -o t.zst
	ft-pack -q --cutoff_len 64 --per_device_train_batch_size 2 -o packed t.zst
	ft-train -q --model_name_or_path model --train packed --output_dir out --max_steps 2 \
		--add_special_tokens "<|START_OF_SVG|>,<|END_OF_SVG|>"
	run ft-merge -q --model_name_or_path model --adapter_name_or_path out --export_dir merged
	assert_success
	[ "$(jq .vocab_size merged/config.json)" -eq 832 ]
	[ "$(jq '.added_tokens | map(select(.content == "<|END_OF_SVG|>")) | .[0].id' merged/tokenizer.json)" -eq 803 ]
	echo '{"prompt": "Draw <|START_OF_SVG|>"}' > p.jsonl
	run ft-generate -q --model_name_or_path merged --max_new_tokens 3 --do_sample false --skip_special_tokens false p.jsonl
	assert_success
	merged_out=$output
	run ft-generate -q --model_name_or_path model --adapter_name_or_path out --max_new_tokens 3 --do_sample false \
		--skip_special_tokens false --add_special_tokens "<|START_OF_SVG|>,<|END_OF_SVG|>" p.jsonl
	assert_success
	[ "$output" = "$merged_out" ]
}

@test "full fine-tuning saves the resized vocab_size; resize_vocab alone trains the embeddings too" {
	setup_model
	tokenize --add_special_tokens "<|START_OF_SVG|>" -o t.zst
	ft-pack -q --cutoff_len 64 --per_device_train_batch_size 2 -o packed t.zst
	run ft-train -q --model_name_or_path model --train packed --output_dir full --max_steps 1 \
		--finetuning_type full --add_special_tokens "<|START_OF_SVG|>"
	assert_success
	[ "$(jq .vocab_size full/config.json)" -eq 832 ]
	jq -e '.added_tokens | map(.content) | index("<|START_OF_SVG|>")' full/tokenizer.json > /dev/null
	# resize_vocab alone changes nothing when the tokenizer fits the model
	tokenize -o plain.zst
	ft-pack -q --cutoff_len 64 --per_device_train_batch_size 2 -o plain plain.zst
	run ft-train -q --model_name_or_path model --train plain --output_dir rv --max_steps 1 --resize_vocab
	assert_success
	[ "$(jq -c '.modules_to_save | sort' rv/adapter_config.json)" = '["embed_tokens","lm_head"]' ]
	grep -aq '"base_model.model.model.embed_tokens.weight"' rv/adapter_model.safetensors
	! grep -aq 'original_module' rv/adapter_model.safetensors || false
}

# LLaMA-Factory's additional_target is PEFT's modules_to_save; resize_vocab
# with a tokenizer that fits sets it to embed_tokens,lm_head (adapter.py),
# so the two runs are the same model, step by step
@test "additional_target embed_tokens,lm_head trains them beside LoRA as resize_vocab's; other sets refused" {
	setup_model
	tokenize -o plain.zst
	ft-pack -q --cutoff_len 64 --per_device_train_batch_size 2 -o plain plain.zst
	run ft-train -q --model_name_or_path model --train plain --output_dir rv --max_steps 2 --resize_vocab \
		--logging_steps 1
	assert_success
	run --separate-stderr ft-train --model_name_or_path model --train plain --output_dir at --max_steps 2 \
		--additional_target "lm_head, embed_tokens" --logging_steps 1
	assert_success
	[[ "$stderr" != *"Vocab has been resized"* ]]
	[ "$(jq -c '.modules_to_save | sort' at/adapter_config.json)" = '["embed_tokens","lm_head"]' ]
	cmp rv/adapter_model.safetensors at/adapter_model.safetensors
	diff <(jq -c '{loss, grad_norm}' rv/trainer_log.jsonl) <(jq -c '{loss, grad_norm}' at/trainer_log.jsonl)
	run ft-train -q --model_name_or_path model --train plain --output_dir plain_lora --max_steps 2 --logging_steps 1
	run cmp -s plain_lora/adapter_model.safetensors at/adapter_model.safetensors
	assert_failure
	run ft-merge -q --model_name_or_path model --adapter_name_or_path at --export_dir merged
	assert_success
	for t in "embed_tokens" "lm_head,norm" "q_proj"; do
		run ft-train --model_name_or_path model --train plain --output_dir x --additional_target "$t"
		assert_failure 2
		assert_output --partial "other module sets are not implemented in ft yet"
	done
	run ft-train --model_name_or_path model --train plain --output_dir x --stage dpo \
		--additional_target embed_tokens,lm_head
	assert_failure 2
	run ft-train --model_name_or_path model --train plain --output_dir x --finetuning_type oft \
		--additional_target embed_tokens,lm_head
	assert_failure 2
	run --separate-stderr ft-train --model_name_or_path model --train plain --output_dir f --max_steps 1 \
		--finetuning_type full --additional_target embed_tokens,lm_head
	assert_success
	[[ "$stderr" == *"--additional_target has no effect with --finetuning_type full"* ]]
}

@test "bad settings are refused with one line" {
	setup_model
	run ft-train --model_name_or_path model --train x --output_dir o --init_special_tokens mean
	assert_failure 2
	assert_output --partial "init_special_tokens: 'mean' is not"
	printf '"<a>": one\n"<a>": two\n' > dup.yaml
	run ft-tokenize --dataset svg --dataset_dir data --model_name_or_path model --new_special_tokens_config dup.yaml
	assert_failure 1
	assert_output --partial "dup.yaml:2"
	run ft-train --model_name_or_path model --train x --output_dir o --stage dpo --add_tokens "<a>"
	assert_failure 2
	assert_output --partial "not implemented in ft yet"
}

@test "ft-run: a training config naming tokens_cfg.yaml runs, then its merge" {
	setup_model
	cp "$CFG" tokens_cfg.yaml
	cat > train.yaml <<-'EOT'
	model_name_or_path: model
	stage: sft
	do_train: true
	finetuning_type: lora
	lora_target: all
	add_tokens: "<tool_x>"
	new_special_tokens_config: tokens_cfg.yaml
	init_special_tokens: desc_init
	dataset: svg
	dataset_dir: data
	template: empty
	cutoff_len: 64
	per_device_train_batch_size: 2
	max_steps: 2
	output_dir: saves/svg
	EOT
	run ft-run -n train train.yaml
	assert_success
	assert_output --partial "--new_special_tokens_config tokens_cfg.yaml"
	run ft-run -q train train.yaml < /dev/null
	assert_success
	[ "$(jq -c '.modules_to_save | sort' saves/svg/adapter_config.json)" = '["embed_tokens","lm_head"]' ]
	cat > merge.yaml <<-'EOT'
	model_name_or_path: model
	adapter_name_or_path: saves/svg
	add_tokens: "<tool_x>"
	new_special_tokens_config: tokens_cfg.yaml
	export_dir: saves/svg_merged
	EOT
	run ft-run -q export merge.yaml < /dev/null
	assert_success
	[ "$(jq .vocab_size saves/svg_merged/config.json)" -eq 832 ]
	[ "$(jq '.added_tokens | map(select(.content == "<|end_of_style|>")) | .[0].id' saves/svg_merged/tokenizer.json)" -eq 818 ]
}

@test "a tied model: PEFT's two copies train, the merge unties" {
	setup_model
	jq '.tie_word_embeddings = true' model/config.json > c.json
	ft-cat --encode < "$FIXTURES/trainer/train.jsonl" > init.zst
	ft-train -q --train_from_scratch --config c.json --finetuning_type full --train init.zst \
		--output_dir tied --max_steps 1
	cp model/tokenizer*.json tied/
	rm -rf model && mv tied model
	tokenize --add_special_tokens "<a>,<b>" -o t.zst
	ft-pack -q --cutoff_len 64 --per_device_train_batch_size 2 -o packed t.zst
	run ft-train -q --model_name_or_path model --train packed --output_dir out --max_steps 2 \
		--add_special_tokens "<a>,<b>"
	assert_success
	grep -aq '"base_model.model.lm_head.weight"' out/adapter_model.safetensors
	grep -aq '"base_model.model.model.embed_tokens.weight"' out/adapter_model.safetensors
	run ft-merge -q --model_name_or_path model --adapter_name_or_path out --export_dir merged
	assert_success
	[ "$(jq .tie_word_embeddings merged/config.json)" = false ]
	[ "$(jq .vocab_size merged/config.json)" -eq 832 ]
}
