#!/usr/bin/env bats
# ft-merge: flags, outputs and refusals (weights against PEFT: test_merge.c)
load helper

BASE="$FIXTURES/models/tiny-llama"
AD="$FIXTURES/merge/llama-r4/adapter"

@test "ft-merge --help has an example and EXIT STATUS" {
	run ft-merge --help
	assert_success
	assert_output --partial "EXIT STATUS"
	assert_output --partial "Example:"
	assert_output --partial "--export_size"
}

@test "ft-merge: merged directory with config, generation config and tokenizer files" {
	mkdir base && cp "$BASE"/* base/
	echo '{"model_max_length": 64}' > base/tokenizer_config.json
	echo '{% for m in messages %}{{ m.content }}{% endfor %}' > base/chat_template.jinja
	run ft-merge --model_name_or_path base --adapter_name_or_path "$AD" --export_dir out
	assert_success
	[ -f out/model.safetensors ]
	[ -f out/config.json ] && [ -f out/generation_config.json ]
	cmp base/tokenizer_config.json out/tokenizer_config.json
	cmp base/chat_template.jinja out/chat_template.jinja
	grep -q '"dtype": "float32"' out/config.json
	! cmp -s base/model.safetensors out/model.safetensors || false
	# no temporary directory left beside it
	[ "$(ls -A | grep -c tmp)" -eq 0 ]
}

@test "ft-merge: dashes, bf16, torch_dtype configs (transformers 4) keep their field" {
	mkdir base && cp "$BASE"/* base/
	sed -i 's/"dtype": "float32"/"torch_dtype": "bfloat16"/' base/config.json
	run ft-merge --model-name-or-path base --adapter-name-or-path "$AD" --export-dir out
	assert_success
	grep -q '"torch_dtype": "bfloat16"' out/config.json
	! grep -q '"dtype"' out/config.json || false
	run ft-merge --model_name_or_path "$BASE" --adapter_name_or_path "$AD" --export_dir out2 --export_dtype fp16
	assert_success
	grep -q '"dtype": "float16"' out2/config.json
	# only the dtype changes: the rest of config.json is the base's, byte for byte
	diff <(grep -v dtype "$BASE/config.json") <(grep -v dtype out2/config.json)
	# no dtype field at all: auto takes the tensors' dtype and adds the field
	mkdir nodtype && cp "$BASE"/* nodtype/ && sed -i '/"dtype"/d' nodtype/config.json
	run ft-merge --model_name_or_path nodtype --adapter_name_or_path "$AD" --export_dir out3
	assert_success
	grep -q '"dtype": "float32"' out3/config.json
	[ "$(sed -n 2p out3/config.json)" = '  "dtype": "float32",' ]
	[ "$(stat -c %s out2/model.safetensors)" -lt "$(stat -c %s "$BASE/model.safetensors")" ]
}

@test "ft-merge: --export_size shards with an index; bare numbers are GB" {
	run ft-merge --model_name_or_path "$BASE" --adapter_name_or_path "$AD" --export_dir out --export_size 100kB
	assert_success
	[ -f out/model.safetensors.index.json ]
	[ ! -f out/model.safetensors ]
	n=$(ls out/model-*-of-*.safetensors | wc -l)
	[ "$n" -gt 1 ]
	[ -f "out/model-00001-of-0000$n.safetensors" ]
	grep -q '"total_size": 378112' out/model.safetensors.index.json
	run ft-merge --model_name_or_path "$BASE" --adapter_name_or_path "$AD" --export_dir out2 --export_size 2
	assert_success
	[ -f out2/model.safetensors ]
}

@test "ft-merge: a LLaMA-Factory merge YAML, flags override it" {
	cat > merge.yaml <<-YAML
	### model
	model_name_or_path: $BASE
	adapter_name_or_path: $AD
	template: llama3
	trust_remote_code: true
	### export
	export_dir: from_yaml
	export_size: 5
	export_device: cpu
	export_legacy_format: false
	YAML
	run ft-merge -v merge.yaml --export_dir from_flag
	assert_success
	assert_output --partial "ignoring template"
	assert_output --partial "merged 1 adapter into from_flag"
	[ -f from_flag/model.safetensors ]
	[ ! -e from_yaml ]
}

@test "ft-merge: two adapters applied in order, -j, comma list" {
	run ft-merge -j 1 --model_name_or_path "$BASE" --adapter_name_or_path "$AD,$FIXTURES/merge/llama-r4-then-r2/adapter" --export_dir two
	assert_success
	run ft-merge --model_name_or_path "$BASE" --adapter_name_or_path "$AD" --export_dir one
	assert_success
	! cmp -s one/model.safetensors two/model.safetensors || false
}

@test "ft-merge: progress only when asked (FT_FORCE_PROGRESS) and never on stdout" {
	run --separate-stderr env FT_FORCE_PROGRESS=1 ft-merge --model_name_or_path "$BASE" --adapter_name_or_path "$AD" --export_dir out
	assert_success
	[ -z "$output" ]
	[[ "$stderr" == *"merging:"* ]]
}

@test "ft-merge refuses a non-empty export dir without --overwrite" {
	mkdir out && touch out/keep
	run -1 ft-merge --model_name_or_path "$BASE" --adapter_name_or_path "$AD" --export_dir out
	assert_output --partial "not empty (use --overwrite"
	[ -f out/keep ]
	run ft-merge --model_name_or_path "$BASE" --adapter_name_or_path "$AD" --export_dir out --overwrite
	assert_success
	[ ! -f out/keep ] && [ -f out/model.safetensors ]
	mkdir empty
	run ft-merge --model_name_or_path "$BASE" --adapter_name_or_path "$AD" --export_dir empty/
	assert_success
	[ -f empty/model.safetensors ]
	mkdir base && cp "$BASE"/* base/
	run -1 ft-merge --model_name_or_path base --adapter_name_or_path "$AD" --export_dir base --overwrite
	assert_output --partial "is the base model directory"
}

@test "ft-merge refuses too little disk space before writing" {
	run -1 env FT_MERGE_DISK_FREE=1000 ft-merge --model_name_or_path "$BASE" --adapter_name_or_path "$AD" --export_dir out
	assert_output --partial "not enough disk space"
	[ ! -e out ]
}

@test "ft-merge refuses non-LoRA, DoRA without magnitudes, unknown targets, .bin adapters (shape mismatches: test_merge.c)" {
	mkdir ia3 dora tgt bin
	for d in ia3 dora tgt; do cp "$AD"/* $d/; done
	sed -i 's/"LORA"/"IA3"/' ia3/adapter_config.json
	sed -i 's/"use_dora": false/"use_dora": true/' dora/adapter_config.json
	sed -i 's/"q_proj"/"wqkv"/' tgt/adapter_config.json
	cp "$AD/adapter_config.json" bin/ && echo x > bin/adapter_model.bin
	run -1 ft-merge --model_name_or_path "$BASE" --adapter_name_or_path ia3 --export_dir o
	assert_output --partial "peft_type is IA3; only LoRA"
	run -1 ft-merge --model_name_or_path "$BASE" --adapter_name_or_path dora --export_dir o
	assert_output --partial "DoRA"
	run -1 ft-merge --model_name_or_path "$BASE" --adapter_name_or_path tgt --export_dir o
	assert_output --partial "unknown target module 'wqkv'"
	run -1 ft-merge --model_name_or_path "$BASE" --adapter_name_or_path bin --export_dir o
	assert_output --partial "safetensors only"
	[ ! -e o ]
	run -1 ft-merge --model_name_or_path nonexistent --adapter_name_or_path "$AD" --export_dir o
	assert_output --partial "nonexistent"
}

@test "ft-merge usage errors exit 2" {
	run -2 ft-merge --adapter_name_or_path x --export_dir o
	assert_output --partial "--model_name_or_path is required"
	run -2 ft-merge --model_name_or_path x --adapter_name_or_path y
	run -2 ft-merge --model_name_or_path x --adapter_name_or_path y --export_dir o --export_dtype int8
	run -2 ft-merge --model_name_or_path x --adapter_name_or_path y --export_dir o --export_size lots
	run -2 ft-merge --model_name_or_path x --adapter_name_or_path y --export_dir o --bogus 1
	assert_output --partial "unknown option 'bogus'"
	run -2 ft-merge --model_name_or_path x --adapter_name_or_path y --export_dir o --export_legacy_format true
	run -2 ft-merge -x
	# settings of a LLaMA-Factory config: ft-run's refusals, with the reason
	run -2 ft-merge --model_name_or_path x --adapter_name_or_path y --export_dir o --image_max_pixels 9
	assert_output --partial "'image_max_pixels' is not supported: ft trains text-only models"
}

@test "ft-merge: no adapter exports the model itself (dtype, shards), LLaMA-Factory keys ignored" {
	run ft-merge -v --model_name_or_path "$BASE" --export_dir out --export_dtype bf16 \
		--export_device cpu --report_to none --template qwen
	assert_success
	assert_output --partial "ignoring export_device"
	assert_output --partial "exported"
	grep -q '"dtype": "bfloat16"' out/config.json
	[ -f out/model.safetensors ]
	run ft-merge --model_name_or_path "$BASE" --export_dir out2 --finetuning_type full
	assert_success
}
