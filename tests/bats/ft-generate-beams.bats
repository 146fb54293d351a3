#!/usr/bin/env bats
# ft-generate --num_beams / --length_penalty / --early_stopping: beam
# search as transformers' generate (token parity: tests/unit/test_beam.c),
# its defaults, refusals and exit codes, and the CPU-only device rule.
bats_require_minimum_version 1.5.0
load helper

MODEL="$FT_ROOT/tests/fixtures/models/tiny-llama"
TOK="$FT_ROOT/tests/fixtures/generate/tokenizer"

gen() { ft-generate --model_name_or_path "$MODEL" --tokenizer "$TOK" --template default --max_new_tokens 8 "$@"; }

prompts() { printf '%s\n' '{"prompt": "a"}' '{"prompt": "the tea is hot"}' '{"prompt": "who"}' > p.jsonl; }

@test "--help documents --num_beams, --length_penalty and --early_stopping" {
	run -0 ft-generate --help
	assert_output --partial "--num_beams N"
	assert_output --partial "--length_penalty X"
	assert_output --partial "--early_stopping false|true|never"
}

@test "--num_beams 1 (the default) is the greedy output, bit for bit; the beam flags do nothing then" {
	prompts
	gen --do_sample false p.jsonl > greedy.jsonl
	gen --do_sample false --num_beams 1 p.jsonl > one.jsonl
	cmp greedy.jsonl one.jsonl
	gen --do_sample false --num_beams 1 --length_penalty 2 --early_stopping true p.jsonl > flags.jsonl
	cmp greedy.jsonl flags.jsonl
}

@test "--num_beams 4 is beam search: not the greedy answers, deterministic, independent of the batch size" {
	prompts
	gen --do_sample false p.jsonl > greedy.jsonl
	gen --do_sample false --num_beams 4 p.jsonl > b4.jsonl
	run -1 cmp -s greedy.jsonl b4.jsonl
	assert_equal "$(wc -l < b4.jsonl)" 3
	gen --do_sample false --num_beams 4 p.jsonl | cmp - b4.jsonl
	gen --do_sample false --num_beams 4 --per_device_eval_batch_size 1 p.jsonl | cmp - b4.jsonl
	gen --do_sample false --num_beams 4 --per_device_eval_batch_size 2 p.jsonl | cmp - b4.jsonl
	# the defaults spelled out give the same
	gen --do_sample false --num_beams 4 --length_penalty 1.0 --early_stopping false p.jsonl | cmp - b4.jsonl
	run -0 gen --do_sample false --num_beams 2 --length_penalty 0.5 --early_stopping never p.jsonl
	assert_equal "${#lines[@]}" 3
	run -0 gen --do_sample false --num_beams 2 --early_stopping true p.jsonl
	assert_equal "${#lines[@]}" 3
}

@test "bad beam values are usage errors (exit 2)" {
	prompts
	run -2 gen --do_sample false --num_beams 0 p.jsonl
	assert_output --partial "--num_beams must be at least 1 (got 0)"
	run -2 gen --do_sample false --num_beams -3 p.jsonl
	assert_output --partial "--num_beams must be at least 1 (got -3)"
	run -2 gen --do_sample false --num_beams two p.jsonl
	assert_output --partial "num_beams"
	run -2 gen --do_sample false --num_beams 2 --length_penalty x p.jsonl
	assert_output --partial "length_penalty"
	run -2 gen --do_sample false --num_beams 2 --early_stopping maybe p.jsonl
	assert_output --partial "--early_stopping must be true, false or never (got 'maybe')"
}

@test "--num_beams with sampling (LLaMA-Factory's default do_sample) is refused, saying why (exit 2)" {
	prompts
	run -2 --separate-stderr gen --num_beams 4 p.jsonl
	[[ "$stderr" == *"--num_beams 4 with --do_sample true"*"torch.multinomial"*"add --do_sample false"* ]]
	assert_equal "$output" ""
	run -2 gen --do_sample true --num_beams 2 p.jsonl
	assert_output --partial "beam sampling"
}

@test "--num_beams runs on the CPU: --device auto notes it, --device cuda refuses in one line (exit 2)" {
	prompts
	gen --do_sample false --num_beams 2 p.jsonl > cpu.jsonl
	run -0 --separate-stderr gen --do_sample false --num_beams 2 --device auto p.jsonl
	assert_equal "$stderr" "ft-generate: note: --device auto: --num_beams 2 runs on the CPU (the device decoder cannot copy KV-cache rows between beams)"
	assert_equal "$output" "$(cat cpu.jsonl)"
	run -2 --separate-stderr gen --do_sample false --num_beams 2 --device cuda:0 p.jsonl
	assert_equal "$(printf '%s\n' "$stderr" | head -1)" "ft-generate: --device cuda:0: --num_beams 2 runs on the CPU only (the device decoder cannot copy KV-cache rows between beams); use --device cpu or auto"
	assert_equal "$output" ""
}

@test "--num_beams with --do_predict writes the beam answers" {
	prompts
	gen --do_sample false --num_beams 4 p.jsonl > b4.jsonl
	run -0 gen --do_sample false --num_beams 4 --do_predict --output_dir out p.jsonl
	[ -s out/generated_predictions.jsonl ]
	[ -s out/predict_results.json ]
	assert_equal "$(wc -l < out/generated_predictions.jsonl)" 3
	assert_equal "$(grep -o '"predict":"[^"]*"' out/generated_predictions.jsonl)" \
		"$(grep -o '"predict":"[^"]*"' b4.jsonl)"
}
