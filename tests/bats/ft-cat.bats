#!/usr/bin/env bats
# ft-cat: streams <-> JSON lines

load helper

# N records in canonical form (exactly as ft-cat prints them): the header,
# then ints, shortest-form floats, strings with escapes, arrays, nesting.
make_jsonl() {
	awk -v n="$1" 'BEGIN {
		print "{\"format\":\"ft-stream\",\"version\":1,\"kind\":\"test\",\"producer\":\"awk\",\"meta\":{\"vocab_size\":1000}}"
		for (i = 0; i < n; i++)
			printf "{\"i\":%d,\"input_ids\":[%d,%d,%d],\"w\":%d.5,\"e\":1e-%d,\"s\":\"r%d\\t\\\"q\\\"\",\"ok\":%s,\"m\":{\"a\":[],\"b\":null}}\n", i, i, i * 7 % 1000, -1 - i % 100, i, 10 + i % 90, i, i % 2 ? "true" : "false"
	}'
}

@test "--help: usage, EXIT STATUS and an example pipeline" {
	run -0 ft-cat --help
	assert_output --partial "Usage: ft-cat"
	assert_output --partial "EXIT STATUS"
	assert_output --partial "| ft-cat | jq"
}

@test "usage errors exit 2" {
	run -2 ft-cat --bogus x
	run -2 ft-cat --header -H x
	run -2 ft-cat -o out x
	run -2 ft-cat --encode a b
	run -2 ft-cat --encode --shard-records 5 x
	run -2 ft-cat --encode -d d --shard-records 0 x
	run -2 ft-cat --encode -d d --shard-size lots x
	run -2 ft-cat -f x
	run -2 ft-cat --encode --level 0 x
	assert_output --partial "Try 'ft-cat --help'"
}

@test "100k records: JSON lines -> stream -> JSON lines is bit-exact, and re-encoding gives the same bytes" {
	make_jsonl 100000 > in.jsonl
	run -0 ft-cat --encode in.jsonl -o s.zst
	ft-cat s.zst > out.jsonl
	cmp in.jsonl out.jsonl
	ft-cat --encode out.jsonl -o s2.zst
	cmp s.zst s2.zst
	[ "$(wc -l < out.jsonl)" -eq 100001 ]
}

@test "- is stdin and stdout; a pipe works both ways" {
	make_jsonl 1000 > in.jsonl
	run -0 bash -c 'set -o pipefail; ft-cat --encode - -o - < in.jsonl | ft-cat - > out.jsonl'
	cmp in.jsonl out.jsonl
	run -0 bash -c 'set -o pipefail; cat in.jsonl | ft-cat --encode | cat | ft-cat > out2.jsonl'
	cmp in.jsonl out2.jsonl
}

@test "-H omits the header, --header prints only it" {
	make_jsonl 3 | ft-cat --encode -o s.zst
	run -0 ft-cat -H s.zst
	[ "${#lines[@]}" -eq 3 ]
	assert_line --index 0 --partial '{"i":0,'
	run -0 ft-cat --header s.zst
	[ "${#lines[@]}" -eq 1 ]
	assert_output --partial '"format":"ft-stream","version":1,"kind":"test"'
}

@test "directory of shards: rotation by records and by size, read back in order" {
	make_jsonl 10000 > in.jsonl
	run -0 ft-cat --encode -d shards --shard-records 3000 in.jsonl
	run -0 ls shards
	assert_output $'shard-00000.ftb.zst\nshard-00001.ftb.zst\nshard-00002.ftb.zst\nshard-00003.ftb.zst'
	ft-cat shards > out.jsonl
	cmp in.jsonl out.jsonl
	# every shard is a stream with its own header
	run -0 ft-cat -H shards/shard-00003.ftb.zst
	[ "${#lines[@]}" -eq 1000 ]
	assert_line --index 0 --partial '{"i":9000,'
	# listing the shards by hand reads the same
	ft-cat shards/shard-0000{0,1,2,3}.ftb.zst | cmp - in.jsonl
	run -0 ft-cat --encode -d bysize --shard-size 20KB in.jsonl
	[ "$(ls bysize | wc -l)" -gt 3 ]
	ft-cat bysize | cmp - in.jsonl
	# an existing shard directory is not mixed into
	run -1 ft-cat --encode -d shards in.jsonl
	assert_output --partial "already holds shards"
	run -0 ft-cat --encode -d shards --overwrite in.jsonl
	run -0 ls shards
	assert_output "shard-00000.ftb.zst"
}

@test "concatenated streams read as one; mismatched headers are an error" {
	make_jsonl 5 | ft-cat --encode -o a.zst
	cat a.zst a.zst > aa.zst
	run -0 ft-cat -H aa.zst
	[ "${#lines[@]}" -eq 10 ]
	run -0 ft-cat -H a.zst a.zst
	[ "${#lines[@]}" -eq 10 ]
	make_jsonl 5 | sed '1s/"vocab_size":1000/"vocab_size":7/' | ft-cat --encode -o b.zst
	run --separate-stderr -1 ft-cat a.zst b.zst
	[[ "$stderr" == *"b.zst: byte "*"record 5: header does not match the first input's header (meta.vocab_size differs)"* ]]
	[ "${#lines[@]}" -eq 6 ]
	# the JSON of two streams encodes to one: a repeated header is dropped,
	# a mismatched one refused
	(ft-cat a.zst; ft-cat a.zst) | ft-cat --encode -o c.zst
	run -0 ft-cat c.zst
	[ "${#lines[@]}" -eq 11 ]
	run -1 bash -c '(ft-cat a.zst; ft-cat b.zst) | ft-cat --encode -o d.zst'
	assert_output --partial "<stdin>:7: a header record that does not match the first header (meta.vocab_size differs)"
}

@test "a truncated stream: error with byte offset and record, records before it printed, exit 1" {
	make_jsonl 100000 > in.jsonl
	ft-cat --encode in.jsonl -o s.zst
	size=$(stat -c %s s.zst)
	head -c $((size / 2)) s.zst > cut.zst
	run --separate-stderr -1 ft-cat cut.zst
	[[ "$stderr" == "ft-cat: cut.zst: byte $((size / 2)), record "*": truncated stream (input ends inside a zstd frame)" ]]
	n=${#lines[@]}
	[ "$n" -gt 40000 ]
	# what was printed is exactly the start of the stream
	head -n "$n" in.jsonl > want.jsonl
	printf '%s\n' "${lines[@]}" | cmp - want.jsonl
	# the record index in the message is the first one not printed
	[[ "$stderr" == *"record $((n - 1)): truncated"* ]]
}

@test "corrupt bytes: a clear error, exit 1, never a crash" {
	make_jsonl 2000 > in.jsonl
	ft-cat --encode in.jsonl -o s.zst
	size=$(stat -c %s s.zst)
	for off in 4 5 100 $((size / 3)) $((size / 2)) $((size - 3)); do
		cp s.zst bad.zst
		printf '\x55' | dd of=bad.zst bs=1 seek="$off" conv=notrunc status=none
		run --separate-stderr ft-cat bad.zst
		# an error naming the file, or (a flip in an unused header bit) the right data
		if [ "$status" -eq 0 ]; then
			printf '%s\n' "${lines[@]}" | cmp - in.jsonl
		else
			[ "$status" -eq 1 ]
			[[ "$stderr" == "ft-cat: bad.zst: "* ]]
		fi
	done
	run -1 ft-cat "$FIXTURES/stream/tiny.jsonl"
	assert_output --partial "tiny.jsonl: not an ft stream (not zstd data)"
	run -1 bash -c ': | ft-cat'
	assert_output --partial "<stdin>: not an ft stream (empty input, no header)"
	run -1 ft-cat missing.zst
	assert_output --partial "missing.zst: No such file or directory"
}

@test "--encode: a bad JSON line is named by line and column, and no output appears" {
	make_jsonl 5 > in.jsonl
	sed -i '4s/.*/{"i": 3, oops}/' in.jsonl
	run -1 ft-cat --encode in.jsonl -o s.zst
	assert_output --regexp "^ft-cat: in.jsonl:4:[0-9]+: "
	[ ! -e s.zst ]
	[ -z "$(ls -A)" ] || [ "$(ls -A)" = "in.jsonl" ]
	printf '{"kind":"t","producer":"p"}\n[1,2]\n' > arr.jsonl
	run -1 ft-cat --encode arr.jsonl -o s.zst
	assert_output "ft-cat: arr.jsonl:2: record is not a JSON object"
	printf '{"producer":"p"}\n' > nokind.jsonl
	run -1 ft-cat --encode nokind.jsonl -o s.zst
	assert_output --partial "nokind.jsonl:1: stream header: \"kind\" must be a non-empty string"
	run -1 ft-cat --encode /dev/null -o s.zst
	assert_output --partial "empty input"
}

@test "binary output to a terminal is refused without -f; a reader on a terminal prints usage" {
	make_jsonl 2 > in.jsonl
	run -0 script -qec "ft-cat --encode in.jsonl; echo rc=\$?" /dev/null
	assert_output --partial "refusing to write binary data to a terminal"
	assert_output --partial "rc=2"
	run -0 script -qec "ft-cat --encode -f in.jsonl > /dev/null; echo rc=\$?" /dev/null
	assert_output --partial "rc=0"
	run -0 script -qec "ft-cat; echo rc=\$?" /dev/null
	assert_output --partial "Usage: ft-cat"
	assert_output --partial "rc=2"
}

@test "write errors: /dev/full fails with exit 1" {
	make_jsonl 20000 > in.jsonl
	ft-cat --encode in.jsonl -o s.zst
	run -1 bash -c 'ft-cat s.zst > /dev/full'
	assert_output "ft-cat: write error on stdout: No space left on device"
	run -1 bash -c 'ft-cat --encode in.jsonl > /dev/full'
	assert_output "ft-cat: write error on stdout: No space left on device"
}

@test "ft-cat x | head ends quietly" {
	make_jsonl 100000 | ft-cat --encode -o s.zst
	run -0 bash -c 'ft-cat s.zst 2> err.txt | head -n 2; cat err.txt'
	[ "${#lines[@]}" -eq 2 ]
}

@test "the committed fixture decodes to its JSON lines (format stability)" {
	run -0 ft-cat "$FIXTURES/stream/tiny.ftb.zst"
	ft-cat "$FIXTURES/stream/tiny.ftb.zst" | cmp - "$FIXTURES/stream/tiny.jsonl"
	ft-cat --encode "$FIXTURES/stream/tiny.jsonl" | ft-cat | cmp - "$FIXTURES/stream/tiny.jsonl"
}
