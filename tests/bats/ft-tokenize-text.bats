#!/usr/bin/env bats
# ft-tokenize text mode: --encode / --decode, every flag and error path.
load helper

SP="$FIXTURES/tokenizer/small-sp.model"

@test "text: --help has usage, EXIT STATUS and an example pipeline" {
	run ft-tokenize --encode --help
	assert_success
	assert_output --partial "Usage: ft-tokenize --tokenizer PATH --encode"
	assert_output --partial "EXIT STATUS"
	assert_output --partial "| ft-tokenize --tokenizer"
}

@test "text: --encode gives the sentencepiece ids for 120 fixture cases" {
	head -n 120 "$FIXTURES/tokenizer/cases.jsonl" > in.jsonl
	run ft-tokenize --tokenizer "$SP" --encode in.jsonl -o out.jsonl
	assert_success
	run cmp out.jsonl "$FIXTURES/tokenizer/small-sp.ids.jsonl"
	assert_success
}

@test "text: -j 2 keeps the order and the ids" {
	for i in 1 2 3 4 5 6 7 8; do cat "$FIXTURES/tokenizer/cases.jsonl"; done > in.jsonl
	ft-tokenize --tokenizer "$SP" --encode -j 1 in.jsonl > a.jsonl
	run ft-tokenize --tokenizer "$SP" --encode --threads 2 in.jsonl
	assert_success
	printf '%s\n' "$output" > b.jsonl
	run cmp a.jsonl b.jsonl
	assert_success
	[ "$(wc -l < b.jsonl)" -eq $((8 * 368)) ]
}

@test "text: stdin by default and with -, blank JSON lines skipped" {
	run bash -c "printf '{\"text\": \"a\"}\n\n{\"text\": \"a\"}\n' | ft-tokenize --tokenizer '$SP' --encode"
	assert_success
	assert_output $'[261]\n[261]'
	run bash -c "printf '{\"text\": \"a\"}\n' | ft-tokenize --tokenizer '$SP' --encode -"
	assert_output '[261]'
}

@test "text: --lines encodes plain lines, an empty line to []" {
	run bash -c "printf 'a\n\nHello world\r\n' | ft-tokenize --tokenizer '$SP' --encode --lines"
	assert_success
	assert_output $'[261]\n[]\n[412,343,407,823]'
}

@test "text: --add_special_tokens adds bos; special-token text is matched" {
	run bash -c "printf 'a\n' | ft-tokenize --tokenizer '$SP' --encode --lines --add_special_tokens"
	assert_output '[1,261]'
	run bash -c "printf 'a</s>\n' | ft-tokenize --tokenizer '$SP' --encode --lines"
	assert_output '[261,2]'
}

@test "text: --decode writes {\"text\": ...}; --skip_special_tokens drops bos/eos" {
	run bash -c "printf '[1,412,343,407,823,2]\n' | ft-tokenize --tokenizer '$SP' --decode"
	assert_success
	assert_output '{"text":"<s> Hello world</s>"}'
	run bash -c "printf '[1,412,343,407,823,2]\n' | ft-tokenize --tokenizer '$SP' --decode --skip_special_tokens"
	assert_output '{"text":"Hello world"}'
}

@test "text: encode | decode --lines round-trips text" {
	printf 'Hello world\n你好，世界！\n  two  spaces\ttab\nemoji 👨‍👩‍👧 é\n' > in.txt
	run bash -c "set -o pipefail; ft-tokenize --tokenizer '$SP' --encode --lines in.txt | ft-tokenize --tokenizer '$SP' --decode --lines"
	assert_success
	[ "$output" = "$(cat in.txt)" ]
}

@test "text: tokenizer.json of the converted model works the same way" {
	run bash -c "printf 'Hello world\n' | ft-tokenize --tokenizer '$FIXTURES/tokenizer/small-sp/tokenizer.json' --encode --lines"
	assert_output '[412,343,407,823]'
	run bash -c "printf 'Hello world\n' | ft-tokenize --tokenizer '$FIXTURES/tokenizer/small-sp' --encode --lines"
	assert_output '[412,343,407,823]'
}

@test "text: qwen3 from ../shared: ChatML special tokens and byte-level round trip" {
	skip_without_shared
	Q="$SHARED/tokenizers/qwen3"
	run bash -c "printf '%s\n' '{\"text\": \"<|im_start|>user\\nHi<|im_end|>\"}' | ft-tokenize --tokenizer '$Q' --encode"
	assert_success
	assert_output '[151644,872,198,13048,151645]'
	run bash -c "printf '[151644,872,198,13048,151645]\n' | ft-tokenize --tokenizer '$Q' --decode --skip_special_tokens"
	assert_output '{"text":"user\nHi"}'
	run bash -c "printf '[151644,872,198,13048,151645]\n' | ft-tokenize --tokenizer '$Q' --decode"
	assert_output '{"text":"<|im_start|>user\nHi<|im_end|>"}'
}

@test "text: -o writes the file and nothing to stdout" {
	run bash -c "printf 'a\n' | ft-tokenize --tokenizer '$SP' --encode --lines -o ids.jsonl"
	assert_success
	assert_output ''
	[ "$(cat ids.jsonl)" = "[261]" ]
}

@test "text: usage errors exit 2" {
	run -2 ft-tokenize --encode /dev/null
	assert_output --partial "--tokenizer PATH is required"
	run -2 ft-tokenize --tokenizer "$SP" --encode --decode /dev/null
	assert_output --partial "exclude each other"
	run -2 ft-tokenize --tokenizer "$SP" --encode -j 0 /dev/null
	run -2 ft-tokenize --tokenizer "$SP" --encode -j x /dev/null
	run -2 ft-tokenize --tokenizer "$SP" --decode --add_special_tokens /dev/null
	run -2 ft-tokenize --tokenizer "$SP" --encode --skip_special_tokens /dev/null
	run -2 ft-tokenize --tokenizer "$SP" --encode --no_such_flag /dev/null
	run -2 ft-tokenize --tokenizer "$SP" --encode a b
	assert_output --partial "one input file"
}

@test "text: bad JSON names the file and line, exit 1, no -o output left" {
	printf '{"text": "a"}\n{"text": oops}\n' > bad.jsonl
	run -1 ft-tokenize --tokenizer "$SP" --encode bad.jsonl -o out.jsonl
	assert_output --partial "bad.jsonl:2:"
	[ ! -e out.jsonl ]
	[ -z "$(ls -A | grep -v bad.jsonl)" ]
}

@test "text: a line without a string text field is an error naming stdin and line" {
	run -1 bash -c "printf '{\"text\": \"a\"}\n{\"txt\": \"a\"}\n' | ft-tokenize --tokenizer '$SP' --encode"
	assert_output --partial "<stdin>:2: expected an object with a string \"text\" field"
	run -1 bash -c "printf '{\"text\": 5}\n' | ft-tokenize --tokenizer '$SP' --encode"
	assert_output --partial "<stdin>:1:"
}

@test "text: invalid UTF-8 with --lines is an error naming the line" {
	run -1 bash -c "printf 'ok\n\xff\xfe\n' | ft-tokenize --tokenizer '$SP' --encode --lines"
	assert_output --partial "<stdin>:2: invalid UTF-8 at byte 0"
}

@test "text: --decode errors: unknown id, not an array, not an id" {
	run -1 bash -c "printf '[1]\n[99999]\n' | ft-tokenize --tokenizer '$SP' --decode"
	assert_output --partial "<stdin>:2: token id 99999 is not in the vocabulary"
	run -1 bash -c "printf '{\"ids\": [1]}\n' | ft-tokenize --tokenizer '$SP' --decode"
	assert_output --partial "<stdin>:1: expected a JSON array"
	run -1 bash -c "printf '[1, \"x\"]\n' | ft-tokenize --tokenizer '$SP' --decode"
	assert_output --partial "element 1 is not a token id"
	run -1 bash -c "printf '[-3]\n' | ft-tokenize --tokenizer '$SP' --decode"
	assert_output --partial "element 0 is not a token id"
}

@test "text: a missing tokenizer or input file exits 1 naming it" {
	run -1 ft-tokenize --tokenizer nowhere/tokenizer.json --encode /dev/null
	assert_output --partial "nowhere/tokenizer.json"
	run -1 ft-tokenize --tokenizer "$SP" --encode missing.jsonl
	assert_output --partial "missing.jsonl"
	mkdir empty
	run -1 ft-tokenize --tokenizer empty --encode /dev/null
	assert_output --partial "no tokenizer.json or tokenizer.model"
}

@test "text: a write error exits 1" {
	[ -w /dev/full ] || skip "no /dev/full"
	run -1 bash -c "printf 'a\n' | ft-tokenize --tokenizer '$SP' --encode --lines > /dev/full"
}
