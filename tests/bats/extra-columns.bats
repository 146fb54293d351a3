#!/usr/bin/env bats
# A dataset's extra columns (docs/FORMAT.md 2.2.1, docs/GRPO.md): the
# columns the dataset_info mapping does not read go from ft-tokenize's ppo
# records through ft-pack's batches to every reward command's JSON line, as
# TRL's GRPOTrainer passes them to reward functions; bad or oversized
# extras are one-line errors naming the file and the record.
load helper

LLAMA="$FIXTURES/models/tiny-llama"
export OMP_NUM_THREADS=1

setup() {
	cd "$BATS_TEST_TMPDIR"
	command -v jq >/dev/null || skip "jq is not installed"
	mkdir m && cp "$LLAMA"/* "$FIXTURES"/generate/tokenizer/* m/   # the tiny model with a tokenizer
	for i in 1 2 3 4 5 6 7 8; do
		printf '{"instruction": "What is %d+%d?", "answer": %d, "meta": {"id": "r%d", "tags": [%d, null]}}\n' \
			"$i" "$i" $((i + i)) "$i" "$i"
	done > arith.jsonl
}

tok() { ft-tokenize --model_name_or_path m --template default --no_cache -q "$@"; }
# need: a reward command that keeps each line it is sent in seen.jsonl and
# fails (exit 1, naming the line) when the line has no "answer"
NEED='while IFS= read -r l; do case "$l" in *\"answer\":*) printf "%s\n" "$l" >> seen.jsonl; echo 1;; *) echo "no answer in: $l" >&2; exit 1;; esac; done'
grpo() {
	ft-train --stage grpo --model_name_or_path m --finetuning_type lora --max_completion_length 4 \
		--max_steps 2 --logging_steps 1 --learning_rate 1e-3 -q "$@"
}

@test "ft-tokenize: ppo records keep the columns the mapping does not read, in row order (alpaca, mapped, sharegpt)" {
	run tok --stage ppo --dataset arith.jsonl -o t.zst
	assert_success
	[ "$(ft-cat --header t.zst | jq .meta.record_version)" = 2 ]
	run bash -c "ft-cat -H t.zst | head -1 | jq -c .extra_columns"
	assert_output '{"answer":2,"meta":{"id":"r1","tags":[1,null]}}'
	# system is read when the row has it (a path's detection, as DatasetAttr's)
	echo '{"instruction": "hi", "system": "be brief", "output": "yo", "level": 3}' > s.jsonl
	run bash -c "ft-tokenize --model_name_or_path m --template default --no_cache -q --stage ppo --dataset s.jsonl | ft-cat -H | jq -c .extra_columns"
	assert_output '{"level":3}'
	# a registry mapping: the columns it names are read, instruction is not
	mkdir d
	echo '{"question": "q?", "sol": "s", "instruction": "kept", "answer": 1}' > d/q.jsonl
	echo '{"q": {"file_name": "q.jsonl", "columns": {"prompt": "question", "response": "sol"}}}' > d/dataset_info.json
	run bash -c "ft-tokenize --model_name_or_path m --template default --no_cache -q --stage ppo --dataset q --dataset_dir d | ft-cat -H | jq -c '[.extra_columns, .label_text]'"
	assert_output '[{"instruction":"kept","answer":1},"s"]'
	# sharegpt: messages (and system, tools) are read, alpaca's names are not
	echo '{"conversations": [{"from": "human", "value": "hi"}, {"from": "gpt", "value": "yo"}], "instruction": "kept", "answer": "x"}' > g.jsonl
	run bash -c "ft-tokenize --model_name_or_path m --template default --no_cache -q --stage ppo --dataset g.jsonl | ft-cat -H | jq -c .extra_columns"
	assert_output '{"instruction":"kept","answer":"x"}'
	# a row without other columns has {}; sft records are unchanged
	echo '{"instruction": "hi", "output": "yo"}' > plain.jsonl
	run bash -c "ft-tokenize --model_name_or_path m --template default --no_cache -q --stage ppo --dataset plain.jsonl | ft-cat -H | jq -c .extra_columns"
	assert_output '{}'
	run bash -c "ft-tokenize --model_name_or_path m --template default --no_cache -q --stage sft --dataset s.jsonl | ft-cat -H | jq -c 'keys'"
	assert_output '["input_ids","labels"]'
}

@test "ft-pack: ppo batches carry each row's extra columns (ft-cat shows them); format 2; v1 streams still pack" {
	tok --stage ppo --dataset arith.jsonl -o t.zst
	run ft-pack --stage ppo --per_device_train_batch_size 4 -q --output_dir b t.zst
	assert_success
	[ "$(jq .version b/manifest.json)" = 2 ] && [ "$(jq .record_version b/manifest.json)" = 2 ]
	# every row's extras, in its batch's row order: the answer is the prompt's sum
	run bash -c "ft-cat -H b | jq -c '.extra_columns | length'"
	assert_output "$(printf '4\n4')"
	[ "$(ft-cat -H b | jq -r '.extra_columns[].answer' | sort -n | tr '\n' ' ')" = "2 4 6 8 10 12 14 16 " ]
	# ft-train's prompts pair row i with extra_columns[i]: checked end to end below;
	# here the pairing after the shuffle: the batch's row order is the records' order
	[ "$(ft-cat -H b | jq -c '.extra_columns[0].meta.tags | length' | head -1)" = 2 ]
	# a version 1 token stream (no record_version, no extra_columns) packs, without extras
	ft-cat t.zst | jq -c 'del(.meta.record_version) | del(.extra_columns)' | ft-cat --encode -o v1.zst
	run ft-pack --stage ppo --per_device_train_batch_size 4 -q -o v1b.zst v1.zst
	assert_success
	[ "$(ft-cat -H v1b.zst | jq -c 'has("extra_columns")' | sort -u)" = false ]
	# a dataset without other columns packs as before: no extra_columns at all
	echo '{"instruction": "hi", "output": "yo"}' > plain.jsonl
	tok --stage ppo --dataset plain.jsonl | ft-pack --stage ppo --per_device_train_batch_size 1 -q -o p.zst
	[ "$(ft-cat -H p.zst | jq -c 'has("extra_columns")')" = false ]
}

@test "bad extra columns: one-line errors naming the file and the record, exit 1" {
	tok --stage ppo --dataset arith.jsonl -o t.zst
	ft-cat t.zst | jq -c 'if .input_ids and .extra_columns.answer == 6 then .extra_columns = [6] else . end' \
		| ft-cat --encode -o bad.zst
	run ft-pack --stage ppo --per_device_train_batch_size 4 -q -o x.zst bad.zst
	[ "$status" -eq 1 ]
	assert_output "ft-pack: bad.zst: record 2: 'extra_columns': the extra columns are an array, not an object"
	# a newer token record version is refused
	ft-cat t.zst | jq -c 'if .meta then .meta.record_version = 3 else . end' | ft-cat --encode -o v3.zst
	run ft-pack --stage ppo --per_device_train_batch_size 4 -q -o x.zst v3.zst
	[ "$status" -eq 1 ]; assert_output --partial "v3.zst: token record version 3 is newer than this program reads (2)"
	# a batch record whose extra_columns are not B objects
	ft-pack --stage ppo --per_device_train_batch_size 8 -q -o b.zst t.zst
	ft-cat b.zst | jq -c 'if .B then .extra_columns[3] = "x" else . end' | ft-cat --encode -o bb.zst
	run grpo --train bb.zst --output_dir o --reward_funcs "$NEED"
	[ "$status" -eq 1 ]
	assert_output --partial "bb.zst: batch record 0: row 3: the extra columns are a string, not an object"
	ft-cat b.zst | jq -c 'if .B then .extra_columns |= .[1:] else . end' | ft-cat --encode -o bc.zst
	run grpo --train bc.zst --output_dir o --reward_funcs "$NEED"
	[ "$status" -eq 1 ]
	assert_output --partial "bc.zst: batch record 0: 'extra_columns' is not an array of 8 objects (one per row)"
	# a newer batch format is refused
	ft-cat b.zst | jq -c 'if .meta then .meta.record_version = 3 else . end' | ft-cat --encode -o b3.zst
	run grpo --train b3.zst --output_dir o --reward_funcs "$NEED"
	[ "$status" -eq 1 ]; assert_output --partial "batch format version 3 is newer than this program reads (2)"
	# a row whose extras exceed 1 MiB, or nest deeper than 24 levels
	head -c 1100000 /dev/zero | tr '\0' a | jq -Rc '{instruction: "hi", blob: .}' > huge.jsonl
	run tok --stage ppo --dataset huge.jsonl -o h.zst
	[ "$status" -eq 1 ]
	assert_output "ft-tokenize: huge.jsonl: example 0: the extra columns take 1100011 bytes as JSON, more than the 1048576 a row may carry"
	[ ! -e h.zst ]
	jq -nc '{instruction: "hi", deep: (reduce range(30) as $i (1; [.]))}' > deep.jsonl
	run tok --stage ppo --dataset deep.jsonl -o h.zst
	[ "$status" -eq 1 ]
	assert_output "ft-tokenize: deep.jsonl: example 0: the extra columns nest deeper than 24 levels"
}

@test "grpo: every reward line carries its prompt's extra columns; old batches without them fail a command that needs one" {
	tok --stage ppo --dataset arith.jsonl -o t.zst
	ft-pack --stage ppo --per_device_train_batch_size 8 -q --output_dir b t.zst
	run grpo --train b --output_dir o --reward_funcs "need=$NEED"
	assert_success
	[ "$(wc -l < seen.jsonl)" -eq 16 ]   # 2 steps x 8 completions of one prompt
	# keys in order: prompt, completion, then the row's columns
	[ "$(head -1 seen.jsonl | jq -c 'keys_unsorted')" = '["prompt","completion","answer","meta"]' ]
	# each line's answer is its own prompt's (A+A), nested values as they were
	run jq -r 'select((.prompt | capture("What is (?<a>[0-9]+)\\+") | .a | tonumber) * 2 != .answer) | .prompt' seen.jsonl
	assert_success; assert_output ''
	[ "$(head -1 seen.jsonl | jq -c '.meta.tags[1]')" = null ]
	# the same prompts packed before extra_columns: the command stops the run
	ft-cat b | jq -c 'del(.meta.record_version) | del(.extra_columns)' | ft-cat --encode -o old.zst
	rm seen.jsonl
	run grpo --train old.zst --output_dir o2 --reward_funcs "need=$NEED"
	[ "$status" -eq 1 ]
	assert_output --partial 'no answer in: {"prompt":"Human: What is'
	assert_output --partial "reward need"
	[ ! -e o2/adapter_model.safetensors ]
}

@test "grpo: the request's prompt and completion win over columns of those names" {
	for i in 1 2 3 4 5 6 7 8; do
		printf '{"instruction": "What is %d+%d?", "prompt": "FAKE", "completion": "FAKE", "answer": %d}\n' "$i" "$i" $((i + i))
	done > c.jsonl
	tok --stage ppo --dataset c.jsonl | ft-pack --stage ppo --per_device_train_batch_size 8 -q -o b.zst
	# the records keep both columns (nothing is lost in the data) ...
	[ "$(ft-cat -H b.zst | jq -c '.extra_columns[0] | keys_unsorted')" = '["prompt","completion","answer"]' ]
	run grpo --train b.zst --output_dir o --max_steps 1 --reward_funcs "$NEED"
	assert_success
	# ... but the request sends the rendered prompt and the sampled completion
	[ "$(jq -c 'keys_unsorted' seen.jsonl | sort -u)" = '["prompt","completion","answer"]' ]
	! grep -q FAKE seen.jsonl || false
	[ "$(jq -r '.prompt' seen.jsonl | grep -c '^Human: What is')" -eq 8 ]
}

@test "ppo: the api reward filter gets the same extra columns after prompt and response" {
	tok --stage ppo --dataset arith.jsonl | ft-pack --stage ppo --per_device_train_batch_size 2 -q -o b.zst
	# the model without its tokenizer: the filter sees ids (the fixture's vocabulary is larger
	# than the fixture tokenizer's, and ppo decodes what it samples)
	run ft-train --stage ppo --model_name_or_path "$LLAMA" --finetuning_type lora --train b.zst --do_sample false \
		--max_new_tokens 3 --max_steps 1 -q --output_dir o --reward_model_type api \
		--reward_model "tee -a $BATS_TEST_TMPDIR/seen.jsonl | awk '{ print 1 }'"
	assert_success
	[ "$(wc -l < seen.jsonl)" -eq 2 ]
	[ "$(jq -c 'keys_unsorted' seen.jsonl | sort -u)" = '["prompt","response","answer","meta"]' ]
	# step 1 scores the first batch's rows: each prompt with its own row's columns
	pad=$(ft-cat --header b.zst | jq .meta.pad_id)
	want=$(ft-cat -H b.zst | head -1 | jq -c --argjson pad "$pad" '. as $b | [range($b.B) | {p: ($b.input_ids[. * $b.T:(. + 1) * $b.T]
		| map(select(. != $pad)) | map(tostring) | join(" ")), a: $b.extra_columns[.].answer, id: $b.extra_columns[.].meta.id}] | sort')
	[ "$(jq -sc 'map({p: .prompt, a: .answer, id: .meta.id}) | sort' seen.jsonl)" = "$want" ]
}
