#!/usr/bin/env bats
# ft-tokenize dataset mode: every flag and error path.  A small
# SentencePiece tokenizer from the tokenizer fixtures (with a config giving
# it <s>/</s>) serves when ../shared is absent; the qwen3 tokenizer and
# LLaMA-Factory's demo data are used where noted.
load helper

DATA="$FIXTURES/llamafactory/data"

setup() {
	cd "$BATS_TEST_TMPDIR"
	mkdir -p tok
	cp "$FIXTURES/tokenizer/small-sp/tokenizer.json" tok/
	printf '{"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>", "add_bos_token": true}\n' \
		> tok/tokenizer_config.json
	export XDG_CACHE_HOME="$BATS_TEST_TMPDIR/cache"
}

# tokenize ARGS...: run ft-tokenize on the tiny tokenizer into out.zst
tok() {
	run --separate-stderr ft-tokenize --tokenizer tok --dataset_dir "$DATA" -o out.zst "$@"
}

# records FILE: the data records as JSON lines
records() { ft-cat -H "${1:-out.zst}"; }
header() { ft-cat --header "${1:-out.zst}"; }
nrec() { records "$@" | wc -l; }

@test "--help has an example pipeline and EXIT STATUS" {
	run ft-tokenize --help
	assert_success
	assert_output --partial "EXIT STATUS"
	assert_output --partial " |"
	assert_output --partial "ft-pack"
	grep -q -- "--dataset_dir" <<< "$output"
}

@test "--template list prints the built-in templates" {
	run ft-tokenize --template list
	assert_success
	assert_output --partial "qwen"
	assert_output --partial "chatglm3"
}

@test "registry dataset: sft records with labels -100 on the prompt" {
	tok --dataset tiny_alpaca --template alpaca
	assert_success
	[ "$(nrec)" -eq 3 ]
	header | grep -q '"kind":"tokens"'
	header | grep -q '"stage":"sft"'
	header | grep -q '"template":"alpaca"'
	header | grep -q '"eos_id":2'
	header | grep -q '"cutoff_len":2048'
	header | grep -q '"vocab_size":4000'
	records | head -1 | grep -q '"labels":\[-100,'
	[[ "$stderr" == *"3 examples read, 3 records written, 0 skipped"* ]]
}

@test "records are identical with --model_name_or_path" {
	tok --dataset tiny_alpaca --template alpaca --no_cache
	run --separate-stderr ft-tokenize --model_name_or_path tok --dataset_dir "$DATA" --dataset tiny_alpaca \
		--template alpaca --no_cache -o out2.zst
	assert_success
	cmp <(records) <(records out2.zst)
}

@test "dataset given as a path: JSON array, JSON lines, directory" {
	tok --dataset "$DATA/tiny_alpaca.json" --template alpaca
	assert_success
	[ "$(nrec)" -eq 3 ]
	tok --dataset "$DATA/tiny_history.jsonl" --template alpaca
	assert_success
	[ "$(nrec)" -eq 2 ]
	tok --dataset tiny_dir --template alpaca
	assert_success
	[ "$(nrec)" -eq 2 ]
}

@test "stdin: format detected from the fields, or --formatting" {
	printf '{"instruction": "hi", "output": "yo"}\n' > in1
	tok --dataset - --template alpaca < in1
	assert_success
	[ "$(nrec)" -eq 1 ]
	records | grep -q '"labels":\[-100'
	printf '[{"conversations": [{"from": "human", "value": "a"}, {"from": "gpt", "value": "b"}]}]' > in2
	tok --dataset - --template alpaca < in2
	assert_success
	[ "$(nrec)" -eq 1 ]
	printf '{"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]}\n' > in3
	tok --dataset - --template alpaca --formatting sharegpt < in3
	assert_success
	[ "$(nrec)" -eq 1 ]
	printf 'line one\nline two\nline three\n' > in4
	tok --dataset - --formatting text --stage pt < in4
	assert_success
	[ "$(nrec)" -eq 3 ]
	# alpaca rows read as sharegpt have no conversations: nothing valid, exit 1
	tok --dataset - --template alpaca --formatting sharegpt < in1
	assert_failure 1
	[[ "$stderr" == *"<stdin>: example 0 skipped: missing column"* ]]
	[[ "$stderr" == *"Cannot find valid samples"* ]]
}

@test "--stage pt: text + eos, no labels; add_bos_token in the header" {
	tok --dataset tiny_text --stage pt
	assert_success
	[ "$(nrec)" -eq 2 ]
	records | head -1 | grep -q ',2\]}$'
	! records | grep -q labels || false
	header | grep -q '"add_bos_token":'
	header | grep -q '"stage":"pt"'
}

@test "--stage rm and dpo: chosen and rejected" {
	for s in rm dpo; do
		tok --dataset tiny_rank --stage $s --template alpaca
		assert_success
		records | grep -q chosen_input_ids
		records | grep -q rejected_labels
		header | grep -q "\"stage\":\"$s\""
	done
}

@test "--stage kto: tag, kl sequence from the neighbour" {
	tok --dataset tiny_kto --stage kto --template alpaca
	assert_success
	[ "$(nrec)" -eq 2 ]
	records | head -1 | grep -q '"kto_tag":true'
	records | tail -1 | grep -q '"kto_tag":false'
	records | grep -q kl_input_ids
}

@test "--preprocessing_batch_size sets kto's window" {
	tok --dataset tiny_kto --stage kto --template alpaca
	records > a.jsonl
	tok --dataset tiny_kto --stage kto --template alpaca --preprocessing_batch_size 1
	assert_success
	records > b.jsonl
	# alone in its window, an example pairs with its own response
	! cmp -s a.jsonl b.jsonl || false
}

@test "--stage ppo and --predict_with_generate: prompt ids + label ids and text" {
	tok --dataset tiny_alpaca --stage ppo --template alpaca
	assert_success
	records | head -1 | grep -q '"label_text":"Hello!"'
	records | head -1 | grep -q '"label_ids":\['
	tok --dataset tiny_alpaca --predict_with_generate --template alpaca
	assert_success
	records | head -1 | grep -q '"label_text":"Hello!"'
	header | grep -q '"predict":true'
}

@test "--cutoff_len truncates and counts" {
	tok --dataset tiny_alpaca --template alpaca --cutoff_len 8
	assert_success
	[[ "$stderr" == *"3 truncated"* ]]
	records | while read -r l; do
		n=$(grep -o '"input_ids":\[[^]]*\]' <<< "$l" | tr -cd , | wc -c)
		[ $((n + 1)) -le 8 ]
	done
}

@test "--train_on_prompt labels the prompt; --mask_history only the last turn" {
	tok --dataset tiny_alpaca --template alpaca --train_on_prompt
	assert_success
	! records | grep -q -- -100 || false
	tok --dataset tiny_history --template alpaca --mask_history
	assert_success
	tok --dataset tiny_history --template alpaca --mask_history=false -o out2.zst
	assert_success
	a=$(records | head -1 | grep -o -- '-100' | wc -l)
	b=$(records out2.zst | head -1 | grep -o -- '-100' | wc -l)
	[ "$a" -gt "$b" ]
}

@test "--max_samples takes the first rows of each dataset" {
	tok --dataset tiny_alpaca,tiny_history --template alpaca --max_samples 1
	assert_success
	[ "$(nrec)" -eq 2 ]
}

@test "--mix_strategy interleave_under / interleave_over, --interleave_probs, --seed" {
	tok --dataset tiny_alpaca,tiny_history --template alpaca --mix_strategy interleave_under
	assert_success
	[ "$(nrec)" -eq 4 ]
	tok --dataset tiny_alpaca,tiny_history --template alpaca --mix_strategy interleave_over
	assert_success
	[ "$(nrec)" -eq 6 ]
	tok --dataset tiny_alpaca,tiny_history --template alpaca --mix_strategy interleave_over \
		--interleave_probs 0.5,0.5 --seed 1
	assert_success
	records > s1
	tok --dataset tiny_alpaca,tiny_history --template alpaca --mix_strategy interleave_over \
		--interleave_probs 0.5,0.5 --seed 1
	records > s1b
	cmp s1 s1b
	tok --dataset tiny_alpaca,tiny_history --template alpaca --mix_strategy interleave_over \
		--interleave_probs 0.9,0.1 --seed 3
	records > s2
	! cmp -s s1 s2 || false
}

@test "--default_system and a user template file" {
	tok --dataset tiny_alpaca --template alpaca
	records > a
	tok --dataset tiny_alpaca --template alpaca --default_system "Be brief."
	assert_success
	records > b
	! cmp -s a b || false
	printf '{"name": "mine", "format_user": ["<user>{{content}}</user>"], "format_assistant": ["{{content}}", {"eos_token": true}]}' > mine.json
	tok --dataset tiny_alpaca --template ./mine.json
	assert_success
	header | grep -q '"template":"mine"'
}

@test "--tool_format changes the tool rendering" {
	tok --dataset tiny_sharegpt --template alpaca
	assert_success
	records > a
	tok --dataset tiny_sharegpt --template alpaca --tool_format qwen
	assert_success
	records > b
	! cmp -s a b || false
	tok --dataset tiny_sharegpt --template alpaca --tool_format nosuch
	assert_failure 2
}

@test "malformed examples are skipped with warnings naming file and index" {
	tok --dataset tiny_bad --template alpaca
	assert_success
	[ "$(nrec)" -eq 2 ]
	[[ "$stderr" == *"tiny_bad.json: example 1 skipped: no response"* ]]
	[[ "$stderr" == *"tiny_bad.json: example 2 skipped: wrong type"* ]]
	[[ "$stderr" == *"tiny_bad.json: example 3 skipped: wrong type"* ]]
	[[ "$stderr" == *"5 examples read, 2 records written, 3 skipped (wrong type: 2, no response: 1)"* ]]
	tok --dataset tiny_bad_sharegpt --template alpaca
	assert_success
	[ "$(nrec)" -eq 1 ]
	[[ "$stderr" == *"example 1 skipped: bad role order"* ]]
	[[ "$stderr" == *"example 2 skipped: bad message count"* ]]
	[[ "$stderr" == *"example 3 skipped: unrenderable"* ]]
	[[ "$stderr" == *"example 4 skipped: missing column"* ]]
}

@test "--strict makes the first malformed example fatal" {
	tok --dataset tiny_bad --template alpaca --strict
	assert_failure 1
	[[ "$stderr" == *"tiny_bad.json: example 1: no response"* ]]
}

@test "-q silences the summary and warnings; -v adds notes" {
	tok --dataset tiny_bad --template alpaca -q
	assert_success
	[ -z "$stderr" ]
	tok --dataset tiny_alpaca --template alpaca -v
	[[ "$stderr" == *"tiny_alpaca: 3 rows"* ]]
}

@test "cache: reused unless --overwrite_cache; --cache_dir; --no_cache" {
	tok --dataset tiny_alpaca --template alpaca --cache_dir cdir
	assert_success
	ls cdir/tokens-*.ftt.zst
	tok --dataset tiny_alpaca --template alpaca --cache_dir cdir -o again.zst
	assert_success
	[[ "$stderr" == *"reused cdir/tokens-"* ]]
	cmp out.zst again.zst
	tok --dataset tiny_alpaca --template alpaca --cache_dir cdir --overwrite_cache -o again.zst
	[[ "$stderr" != *"reused"* ]]
	tok --dataset tiny_alpaca --template alpaca --cache_dir cdir --cutoff_len 9 -o other.zst
	[[ "$stderr" != *"reused"* ]]
	[ "$(ls cdir | wc -l)" -eq 2 ]
	tok --dataset tiny_alpaca --template alpaca --no_cache -o nc.zst
	[ ! -d cache/ft ] || [ -z "$(ls cache/ft)" ]
}

@test "the cache key covers the input's contents" {
	cp "$DATA/tiny_alpaca.json" mine.json
	tok --dataset mine.json --template alpaca --cache_dir cdir
	sed -i 's/Hello!/Hi!/' mine.json
	tok --dataset mine.json --template alpaca --cache_dir cdir
	[[ "$stderr" != *"reused"* ]]
	records | grep -q -v '"label_text"'
}

@test "default cache under XDG_CACHE_HOME/ft" {
	tok --dataset tiny_alpaca --template alpaca
	ls cache/ft/tokens-*.ftt.zst
}

@test "output to stdout; refuses a terminal without -f" {
	run bash -c "ft-tokenize --tokenizer tok --dataset_dir '$DATA' --dataset tiny_alpaca --template alpaca -q | ft-cat -H | wc -l"
	assert_output "3"
	command -v script >/dev/null || skip "no script(1)"
	run script -qec "ft-tokenize --tokenizer tok --dataset_dir '$DATA' --dataset tiny_alpaca --template alpaca" /dev/null
	assert_failure 2
	assert_output --partial "terminal"
	run script -qec "ft-tokenize --tokenizer tok --dataset_dir '$DATA' --dataset tiny_alpaca --template alpaca -f -q > /dev/null" /dev/null
	assert_success
}

@test "write errors are reported; devices are written into, not replaced" {
	run bash -c "ft-tokenize --tokenizer tok --dataset_dir '$DATA' --dataset tiny_alpaca --template alpaca --no_cache > /dev/full"
	assert_failure 1
	run bash -c "ft-tokenize --tokenizer tok --dataset_dir '$DATA' --dataset tiny_alpaca --template alpaca > /dev/full"
	assert_failure 1
	tok --dataset tiny_alpaca --template alpaca --no_cache -o /dev/full
	assert_failure 1
	[ -c /dev/full ]
	tok --dataset tiny_alpaca --template alpaca -o /dev/null
	assert_success
	[ -c /dev/null ]
}

# ---- errors -----------------------------------------------------------

@test "usage errors exit 2" {
	run ft-tokenize --tokenizer tok
	assert_failure 2
	assert_output --partial "--dataset is required"
	run ft-tokenize --dataset x
	assert_failure 2
	assert_output --partial "--tokenizer"
	for bad in "--cutoff_len 0" "--max_samples 0" "--stage nope" "--mix_strategy zip" "--formatting xml" \
		   "--interleave_probs 0.5,0.5" "--seed -1" "--preprocessing_batch_size 0" "--cutoff_len x" \
		   "--bogus" "extra_arg" "--train_on_prompt=maybe"; do
		run ft-tokenize --tokenizer tok --dataset tiny_alpaca --dataset_dir "$DATA" $bad
		[ "$status" -eq 2 ] || { echo "$bad: $status $output"; false; }
	done
	run ft-tokenize --tokenizer tok --dataset tiny_alpaca,tiny_history --dataset_dir "$DATA" \
		--mix_strategy interleave_under --interleave_probs 1
	assert_failure 2
	assert_output --partial "has 1 values for 2 datasets"
}

@test "unknown template: usage error listing the known ones" {
	tok --dataset tiny_alpaca --template nosuch
	assert_failure 2
	[[ "$stderr" == *"unknown template 'nosuch'"*"qwen"*"chatglm3"* ]]
}

@test "bad user template files" {
	printf '{"format_user": ["no placeholder"]}' > t1.json
	tok --dataset tiny_alpaca --template ./t1.json
	assert_failure 1
	[[ "$stderr" == *"t1.json"*"placeholder"* ]]
	printf '{"format_user": [' > t2.json
	tok --dataset tiny_alpaca --template ./t2.json
	assert_failure 1
	[[ "$stderr" == *"t2.json:1:"* ]]
	tok --dataset tiny_alpaca --template ./missing.json
	assert_failure 1
}

@test "template tokens the tokenizer lacks are an error" {
	tok --dataset tiny_alpaca --template qwen
	assert_failure 1
	[[ "$stderr" == *"needs the eos token '<|im_end|>'"* ]]
	tok --dataset tiny_alpaca --template chatglm3
	assert_failure 1
	[[ "$stderr" == *"needs the stop word '<|observation|>'"* ]]
	printf '{"base": "alpaca", "format_prefix": [{"token": "[gMASK]"}]}' > gm.json
	tok --dataset tiny_alpaca --template ./gm.json
	assert_failure 1
	[[ "$stderr" == *"needs the token '[gMASK]'"* ]]
}

@test "--train_on_prompt with an efficient_eos template is refused" {
	tok --dataset tiny_alpaca --template chatglm3 --train_on_prompt
	assert_failure 2
	[[ "$stderr" == *"does not support --train_on_prompt"* ]]
}

@test "warns when the template's stop word is not the tokenizer's eos" {
	printf '{"base": "alpaca", "name": "stops", "stop_words": ["<|user|>"]}' > stops.json
	tok --dataset tiny_alpaca --template ./stops.json
	assert_success
	[[ "$stderr" == *"ends turns with '<|user|>' but the tokenizer's eos is '</s>'"* ]]
}

@test "hub entries and missing files: clear errors naming the entry" {
	tok --dataset hub_entry
	assert_failure 1
	[[ "$stderr" == *"dataset 'hub_entry'"*"hf_hub_url 'someone/some_data'"*"local files only"* ]]
	tok --dataset script_entry
	assert_failure 1
	[[ "$stderr" == *"script_url"*"local files only"* ]]
	tok --dataset missing_file
	assert_failure 1
	[[ "$stderr" == *"dataset 'missing_file': file "*"nope.json not found"* ]]
	tok --dataset no_file
	assert_failure 1
	[[ "$stderr" == *"'no_file'"*"no file_name"* ]]
	tok --dataset undefined_thing
	assert_failure 1
	[[ "$stderr" == *"'undefined_thing' is neither defined in"*"dataset_info.json nor a file"* ]]
	tok --dataset openai_entry
	assert_failure 1
	[[ "$stderr" == *"formatting 'openai' is not supported"* ]]
	tok --dataset mm_entry
	assert_failure 1
	[[ "$stderr" == *"multimodal"* ]]
	run ft-tokenize --tokenizer tok --dataset tiny_alpaca --dataset_dir /nonexistent -o out.zst
	assert_failure 1
}

@test "ranking datasets only for rm/dpo, and the reverse" {
	tok --dataset tiny_rank --template alpaca
	assert_failure 1
	[[ "$stderr" == *"'tiny_rank' is a ranking dataset: it cannot be used for stage sft"* ]]
	tok --dataset tiny_alpaca --template alpaca --stage dpo
	assert_failure 1
	[[ "$stderr" == *"is not a ranking dataset"* ]]
}

@test "invalid JSON input names file, line and column" {
	printf '[{"instruction": "a", "output": "b"},\n {"instruction": }]' > broken.json
	tok --dataset ./broken.json
	assert_failure 1
	[[ "$stderr" == *"broken.json:2:"* ]]
	printf '{"instruction": "a", "output": "b"}\n{oops\n' > broken.jsonl
	tok --dataset ./broken.jsonl
	assert_failure 1
	[[ "$stderr" == *"broken.jsonl:2:"* ]]
}

@test "every example skipped: exit 1 with LLaMA-Factory's 'Cannot find valid samples', the warning names the column" {
	printf '[{"instruction": "a"}]' > noresp.json
	tok -v --dataset ./noresp.json --template alpaca
	assert_failure 1
	[[ "$stderr" == *"Cannot find valid samples"* ]]
	[[ "$stderr" == *'no response: column "output" (dataset_info.json columns.response) is missing'* ]]
}

# ---- against LLaMA-Factory (needs ../shared) ------------------------------

@test "qwen3 + qwen on alpaca_en_demo: the hash of llamafactory's records" {
	skip_without_shared
	run --separate-stderr ft-tokenize --tokenizer "$SHARED/tokenizers/qwen3" --template qwen \
		--dataset alpaca_en_demo --dataset_dir "$SHARED/data/llamafactory" --no_cache -o out.zst
	assert_success
	want=$(grep -A8 '"qwen3/alpaca_en"' "$FIXTURES/llamafactory/expected.json" | sed -n 's/.*"sha256": "\(.*\)".*/\1/p')
	got=$(ft-cat -H out.zst | sed 's/^{"input_ids":\(.*\),"labels":\(.*\)}$/{"input_ids":\1,"labels":\2}/' | sha256sum | cut -d' ' -f1)
	[ "$got" = "$want" ]
}

@test "demo registry: hub entries are refused" {
	skip_without_shared
	run ft-tokenize --tokenizer "$SHARED/tokenizers/qwen3" --template qwen --dataset alpaca_gpt4_en \
		--dataset_dir "$SHARED/data/llamafactory" -o out.zst
	assert_failure 1
	assert_output --partial "local files only"
}

# Every case of expected.json (llamafactory 0.9.5's own preprocessing) with
# the release binary: record count and the sha256 of the canonical lines
# (see tests/reference/make_llamafactory_fixtures.py).  The mistral-sp cases
# made with transformers 5's rebuilt Llama tokenizer are left out: ft's
# tokenizer follows tokenizer.json (the mistral-sp-raw cases).
@test "llamafactory parity: every fixture case, all records" {
	skip_without_shared
	command -v jq >/dev/null || skip "jq is not installed"
	lf="$SHARED/data/llamafactory"
	jq -r 'to_entries[] | select(.key | startswith("mistral-sp/") | not) |
		[.key, .value.tokenizer, .value.template, .value.dataset, .value.stage, .value.sha256,
		 (.value.count|tostring), (.value.bos_id // -1 | tostring),
		 (.value.options.dataset_dir // "LF"),
		 (.value.options | to_entries | map(select(.key != "template" and .key != "dataset_dir")) |
		  map(if .value == true then "--\(.key)" else "--\(.key) \(.value)" end) | join(" "))] | @tsv' "$FIXTURES/llamafactory/expected.json" > cases.tsv
	[ "$(wc -l < cases.tsv)" -ge 50 ]
	fails=0
	while IFS=$'\t' read -r key tokn tmpl ds stage sha count bos dirkind opts; do
		dir="$lf" dsarg="$ds"
		if [ "$dirkind" = TINY ]; then dir="$DATA"; fi
		if [ "$dirkind" = BOTH ]; then dir="$DATA"; dsarg="${ds/alpaca_en_demo/$lf/alpaca_en_demo.json}"; fi
		# shellcheck disable=SC2086
		ft-tokenize -q --no_cache --tokenizer "$SHARED/tokenizers/${tokn%-raw}" --template "$tmpl" \
			--dataset "$dsarg" --dataset_dir "$dir" --stage "$stage" $opts -o c.zst || { echo "$key: failed"; fails=$((fails + 1)); continue; }
		add_bos=$(ft-cat --header c.zst | grep -c '"add_bos_token":true' || true)
		ft-cat -H c.zst | case "$stage" in
			kto) sed 's/"kto_tag":/"kto_tags":/' ;;
			ppo) sed -E 's/,"label_text":.*\}$/}/; s/"label_ids":/"labels":/' ;;
			pt) if [ "$add_bos" = 1 ]; then sed "s/^{\"input_ids\":\[/{\"input_ids\":[$bos,/"; else cat; fi ;;
			*) cat ;;
		esac > lines
		got=$(sha256sum < lines | cut -d' ' -f1)
		n=$(wc -l < lines)
		if [ "$got" != "$sha" ] || [ "$n" != "$count" ]; then
			echo "$key: $n records (want $count), sha256 $got (want $sha)"
			fails=$((fails + 1))
		fi
	done < cases.tsv
	[ "$fails" -eq 0 ]
}
