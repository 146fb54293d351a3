#!/usr/bin/env bats
# ft-merge --export_quantization_bit: the GPTQ export's flags, outputs and
# refusals (the quantization itself against gptqmodel: test_gptq.c)
load helper

BASE="$FIXTURES/gptq/llama/base"
CAL="$FIXTURES/gptq/calib.jsonl"

q() {   # q ARGS...: a small GPTQ export of the fixture model
	ft-merge -q --model_name_or_path "$BASE" --export_quantization_dataset "$CAL" \
		--export_quantization_nsamples 4 --export_quantization_maxlen 32 "$@"
}

@test "GPTQ export: the checkpoint transformers saves, tokenizer beside it, nothing left behind" {
	run q --export_quantization_bit 4 --export_dir out
	assert_success
	[ -f out/model.safetensors ] && [ -f out/config.json ]
	cmp "$BASE/tokenizer.json" out/tokenizer.json
	jq -e '.dtype == "float16" and .quantization_config.quant_method == "gptq" and
	       .quantization_config.bits == 4 and .quantization_config.group_size == 128 and
	       .quantization_config.checkpoint_format == "gptq_v2" and
	       (.quantization_config.dataset | length) == 4 and
	       (.quantization_config.dataset[0].input_ids[0] | length) == 32' out/config.json
	[ "$(ls -A | grep -c tmp)" -eq 0 ]
	# the same seed, the same checkpoint; another seed, other windows
	run q --export_quantization_bit 4 --export_dir again
	assert_success
	cmp out/model.safetensors again/model.safetensors
	run q --export_quantization_bit 4 --export_dir other --seed 7
	assert_success
	! cmp -s out/config.json other/config.json || false
}

@test "GPTQ export: every ft tool refuses the quantized directory by its method" {
	q --export_quantization_bit 4 --export_dir out
	ft-cat --encode < "$FIXTURES/trainer/train.jsonl" > train.zst
	run ft-train --model_name_or_path out --train train.zst --output_dir o --max_steps 1
	assert_failure 1
	assert_output --partial "a pre-quantized checkpoint (gptq)"
	run ft-generate --model_name_or_path out --do_predict --output_dir g < /dev/null
	assert_failure
	assert_output --partial "pre-quantized checkpoint (gptq)"
	run ft-merge --model_name_or_path out --export_dir again
	assert_failure 1
	assert_output --partial "pre-quantized checkpoint (gptq)"
	run q --export_quantization_bit 4 --model_name_or_path out --export_dir again
	assert_failure 1
	assert_output --partial "pre-quantized checkpoint (gptq)"
}

@test "GPTQ export: 2, 3 and 8 bits too; other bits refused with LLaMA-Factory's words" {
	run q --export_quantization_bit 2 --export_dir b2
	assert_success
	run q --export_quantization_bit 3 --export_dir b3
	assert_success
	jq -e '.quantization_config.bits == 3' b3/config.json
	run q --export_quantization_bit 8 --export_dir b8 --export_dtype fp16
	assert_success
	run q --export_quantization_bit 5 --export_dir x
	assert_failure 2
	assert_output --partial "AutoGPTQ only accepts 2/3/4/8-bit quantization."
	[ ! -e x ]
}

@test "GPTQ export: bad calibration input is refused, naming the file, and leaves nothing" {
	run q --export_quantization_bit 4 --export_dir x --export_quantization_dataset missing.jsonl
	assert_failure 1
	assert_output --partial "missing.jsonl"
	printf '{"text": "a b c"}\nnot json\n' > bad.jsonl
	run q --export_quantization_bit 4 --export_dir x --export_quantization_dataset bad.jsonl
	assert_failure 1
	assert_output --partial "bad.jsonl:2: not JSON"
	printf '{"text": "a b c"}\n{"content": "x"}\n' > notext.jsonl
	run q --export_quantization_bit 4 --export_dir x --export_quantization_dataset notext.jsonl
	assert_failure 1
	assert_output --partial "notext.jsonl: record 2 has no \"text\" string"
	: > empty.jsonl
	run q --export_quantization_bit 4 --export_dir x --export_quantization_dataset empty.jsonl
	assert_failure 1
	assert_output --partial "empty.jsonl"
	# no text longer than maxlen: LLaMA-Factory's error after 101 draws
	run q --export_quantization_bit 4 --export_dir x --export_quantization_maxlen 100000
	assert_failure 1
	assert_output --partial "Cannot find satisfying example"
	[ ! -e x ]
}

@test "GPTQ export: more windows than texts is fine (drawn with replacement, as LLaMA-Factory)" {
	[ "$(wc -l < "$CAL")" -lt 40 ]
	run q --export_quantization_bit 4 --export_dir out --export_quantization_nsamples 40
	assert_success
	jq -e '(.quantization_config.dataset | length) == 40' out/config.json
}

@test "GPTQ export: usage errors name the flag" {
	run ft-merge --model_name_or_path "$BASE" --export_dir x --export_quantization_bit 4
	assert_failure 2
	assert_output --partial "Quantization dataset is necessary for exporting."
	run q --export_quantization_bit 4 --export_dir x --adapter_name_or_path "$FIXTURES/merge/llama-r4/adapter"
	assert_failure 2
	assert_output --partial "Please merge adapters before quantizing the model."
	run q --export_quantization_bit 4 --export_dir x --export_quantization_nsamples 0
	assert_failure 2
	assert_output --partial "export_quantization_nsamples"
	run q --export_quantization_bit 4 --export_dir x --export_quantization_maxlen abc
	assert_failure 2
	run q --export_quantization_bit 4 --export_dir x --export_dtype bf16
	assert_failure 2
	assert_output --partial "float16"
	run q --export_quantization_bit 4 --export_dir x --seed -1
	assert_failure 2
	[ ! -e x ]
}

@test "GPTQ export: a model GPTQ cannot pack is refused before calibration" {
	mkdir base && cp "$BASE"/* base/
	jq '.intermediate_size = 100' base/config.json > c && mv c base/config.json
	run q --export_quantization_bit 4 --export_dir x --model_name_or_path base
	assert_failure 1
	assert_output --partial "multiples of 32"
	[ ! -e x ]
}

@test "GPTQ export: a non-empty export directory needs --overwrite" {
	mkdir out && touch out/keep
	run q --export_quantization_bit 4 --export_dir out
	assert_failure 1
	assert_output --partial "--overwrite"
	run q --export_quantization_bit 4 --export_dir out --overwrite
	assert_success
	[ ! -e out/keep ] && [ -f out/model.safetensors ]
}

@test "ft-run export maps LLaMA-Factory's export_quantization keys to ft-merge" {
	cat > q.yaml <<-EOT
	model_name_or_path: $BASE
	export_dir: out
	export_quantization_bit: 4
	export_quantization_dataset: $CAL
	export_quantization_nsamples: 4
	export_quantization_maxlen: 32
	export_size: 5
	EOT
	run --separate-stderr ft-run -n export q.yaml
	assert_success
	[[ "$output" == *"ft-merge"*"--export_quantization_bit 4"* ]]
	[[ "$output" == *"--export_quantization_nsamples 4"*"--export_quantization_maxlen 32"* ]]
	run ft-run -q export q.yaml
	assert_success
	jq -e '.quantization_config.bits == 4' out/config.json
	echo "adapter_name_or_path: $FIXTURES/merge/llama-r4/adapter" >> q.yaml
	run --separate-stderr ft-run -n export q.yaml
	assert_failure
	[[ "$stderr" == *"Please merge adapters before quantizing the model."* ]]
}

@test "GPTQ export: shards and their index past --export_size, as the plain export" {
	run q --export_quantization_bit 4 --export_dir out --export_size 200KB
	assert_success
	[ ! -e out/model.safetensors ]
	n=$(ls out/model-0000*-of-*.safetensors | wc -l)
	[ "$n" -gt 1 ]
	jq -e '.weight_map["model.layers.0.self_attn.q_proj.qweight"] and
	       .weight_map["model.embed_tokens.weight"] and .metadata.total_size > 0' \
		out/model.safetensors.index.json
}
