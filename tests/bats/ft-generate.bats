#!/usr/bin/env bats
# ft-generate: prompts in, answers out; prediction files; errors.
load helper

MODEL="$FT_ROOT/tests/fixtures/models/tiny-llama"
TOK="$FT_ROOT/tests/fixtures/generate/tokenizer"
ADAPTER="$FT_ROOT/tests/fixtures/merge/llama-r4/adapter"

gen() { ft-generate --model_name_or_path "$MODEL" --tokenizer "$TOK" --template default --max_new_tokens 6 "$@"; }

@test "ft-generate --help shows an example and exit status" {
	run ft-generate --help
	assert_success
	assert_output --partial "Example"
	assert_output --partial "Exit status"
}

@test "ft-generate answers JSON-line prompts greedily, one line each" {
	printf '%s\n' '{"prompt": "Who are you?"}' '{"instruction": "Say", "input": "hi", "output": "hello"}' > p.jsonl
	run gen --do_sample false p.jsonl
	assert_success
	assert_equal "${#lines[@]}" 2
	assert_line --index 0 --partial '"prompt":"Human: Who are you?</s>\nAssistant:"'
	assert_line --index 1 --partial '"label":"hello"'
}

@test "ft-generate reads stdin and plain lines with --lines" {
	run bash -c "printf 'Who are you?\nare you there\n' | ft-generate --model_name_or_path '$MODEL' --tokenizer '$TOK' --template default --max_new_tokens 4 --lines --do_sample=false"
	assert_success
	assert_equal "${#lines[@]}" 2
	assert_line --index 1 --partial 'are you there'
}

@test "ft-generate: greedy is deterministic and batching does not change it" {
	printf '%s\n' '{"prompt": "a"}' '{"prompt": "the tea is hot"}' '{"prompt": "who"}' > p.jsonl
	gen --do_sample false --per_device_eval_batch_size 1 p.jsonl > one.jsonl
	gen --do_sample false --per_device_eval_batch_size 3 p.jsonl > three.jsonl
	cmp one.jsonl three.jsonl
}

@test "ft-generate: the same seed gives the same samples, another seed differs" {
	printf '%s\n' '{"prompt": "a"}' '{"prompt": "the tea"}' > p.jsonl
	gen --max_new_tokens 12 --temperature 1.5 --top_p 1 --seed 1 p.jsonl > a.jsonl
	gen --max_new_tokens 12 --temperature 1.5 --top_p 1 --seed 1 p.jsonl > b.jsonl
	gen --max_new_tokens 12 --temperature 1.5 --top_p 1 --seed 2 p.jsonl > c.jsonl
	cmp a.jsonl b.jsonl
	! cmp -s a.jsonl c.jsonl || false
}

@test "ft-generate applies a LoRA adapter: answers change" {
	printf '%s\n' '{"prompt": "who are you"}' > p.jsonl
	gen --do_sample false --max_new_tokens 12 p.jsonl > base.jsonl
	gen --do_sample false --max_new_tokens 12 --adapter_name_or_path "$ADAPTER" p.jsonl > tuned.jsonl
	! cmp -s base.jsonl tuned.jsonl || false
}

@test "ft-generate: a string target_modules is PEFT's regular expression over whole module names" {
	printf '%s\n' '{"prompt": "who are you"}' > p.jsonl
	gen --do_sample false --max_new_tokens 12 --adapter_name_or_path "$ADAPTER" p.jsonl > list.jsonl
	cp -r "$ADAPTER" re
	retarget() { jq --arg t "$1" '.target_modules = $t' "$ADAPTER/adapter_config.json" > re/adapter_config.json; }
	retarget 'model\.layers\.\d+\.(self_attn|mlp)\.(q|k|v|o|gate|up|down)_proj'
	gen --do_sample false --max_new_tokens 12 --adapter_name_or_path re p.jsonl > re.jsonl
	cmp list.jsonl re.jsonl
	retarget 'model\.layers\.0\..*_proj'
	run --separate-stderr gen --do_sample false --adapter_name_or_path re p.jsonl
	assert_failure 1
	[[ "$stderr" == *"target_modules selects q_proj in 1 of the 2 layers"* ]]
	retarget '.*'
	run --separate-stderr gen --do_sample false --adapter_name_or_path re p.jsonl
	assert_failure 1
	[[ "$stderr" == *"target_modules selects lm_head"* ]]
	retarget 'q_proj'   # fullmatch: a bare name matches no whole module name
	run --separate-stderr gen --do_sample false --adapter_name_or_path re p.jsonl
	assert_failure 1
	[[ "$stderr" == *"target_modules 'q_proj' selects none"* ]]
}

@test "ft-generate skips malformed lines with a count, --strict makes them fatal" {
	printf '%s\n' '{"prompt": "a"}' 'not json' '{"nothing": 1}' '{"messages": [{"role": "wizard", "content": "x"}]}' > p.jsonl
	run --separate-stderr gen --do_sample false p.jsonl
	assert_success
	assert_equal "${#lines[@]}" 1
	[[ "$stderr" == *"p.jsonl:2:"* ]]
	[[ "$stderr" == *"p.jsonl:3:"*"prompt"* ]]
	[[ "$stderr" == *"skipped 3 malformed inputs"* ]]
	run --separate-stderr gen --do_sample false --strict p.jsonl
	assert_failure 1
	[[ "$stderr" == *"p.jsonl:2:"* ]]
}

@test "ft-generate -o writes a file atomically" {
	printf '%s\n' '{"prompt": "a"}' > p.jsonl
	run gen --do_sample false -o out.jsonl p.jsonl
	assert_success
	assert_output ""
	[ -s out.jsonl ]
	run ls -A
	refute_output --partial ".tmp."
}

@test "ft-generate --do_predict writes predictions and LLaMA-Factory's metrics" {
	printf '%s\n' '{"prompt": "a", "label": "the tea"}' '{"prompt": "b", "label": "who are you"}' > p.jsonl
	run gen --do_sample false --do_predict --output_dir pred p.jsonl
	assert_success
	[ "$(wc -l < pred/generated_predictions.jsonl)" -eq 2 ]
	run cat pred/predict_results.json
	assert_output --partial '"predict_bleu-4"'
	assert_output --partial '"predict_rouge-l"'
	assert_output --partial '"predict_samples_per_second"'
	run gen --do_sample false --do_predict --output_dir pred p.jsonl
	assert_failure 1
	assert_output --partial "not empty"
	run gen --do_sample false --do_predict --overwrite_output_dir --output_dir pred p.jsonl
	assert_success
}

@test "ft-generate --do_predict from a dataset in LLaMA-Factory's registry" {
	skip_without_shared
	run ft-generate --model_name_or_path "$MODEL" --tokenizer "$TOK" --template default --max_new_tokens 2 \
		--do_sample false --do_predict --dataset identity --dataset_dir "$SHARED/data/llamafactory" \
		--max_samples 3 --output_dir pred
	assert_success
	[ "$(wc -l < pred/generated_predictions.jsonl)" -eq 3 ]
	run head -1 pred/generated_predictions.jsonl
	assert_output --partial '"label":"'
}

@test "ft-generate -i chats, keeps history, and quits on exit" {
	run bash -c "printf 'hi\nagain\nclear\nexit\n' | ft-generate -i --model_name_or_path '$MODEL' --tokenizer '$TOK' --template default --max_new_tokens 3 --do_sample false"
	assert_success
	assert_output --partial "User: "
	assert_output --partial "Assistant: "
	assert_output --partial "History has been removed."
}

@test "ft-generate usage and data errors" {
	run ft-generate --template default
	assert_failure 2
	assert_output --partial "--model_name_or_path is required"
	run gen --temperature 0 --do_sample true x
	assert_failure 2
	assert_output --partial "temperature"
	run gen --max_new_tokens 0 x
	assert_failure 2
	run gen --device gpu x
	assert_failure 2
	run gen --bogus
	assert_failure 2
	run gen --do_predict x
	assert_failure 2
	assert_output --partial "output_dir"
	run gen missing.jsonl
	assert_failure 1
	assert_output --partial "missing.jsonl"
	run ft-generate --model_name_or_path /nonexistent --tokenizer "$TOK"
	assert_failure 1
	run gen --template nosuchtemplate x
	assert_failure 2
	assert_output --partial "default"
}

@test "ft-generate reads prediction records from an ft stream" {
	printf '%s\n' '{"format":"ft-stream","version":1,"kind":"tokens","producer":"test","meta":{"stage":"sft","predict":true}}' \
		'{"input_ids":[40,60,70],"labels":[71,72]}' | ft-cat --encode -o recs.ftb.zst
	run gen --do_sample false recs.ftb.zst
	assert_success
	assert_equal "${#lines[@]}" 1
	assert_output --partial '"label":"'
	printf '%s\n' '{"format":"ft-stream","version":1,"kind":"tokens","producer":"test","meta":{"stage":"sft"}}' \
		'{"input_ids":[40,60,70],"labels":[71,72,73]}' | ft-cat --encode -o train.ftb.zst
	run gen train.ftb.zst
	assert_failure 1
	assert_output --partial "--predict"
}
