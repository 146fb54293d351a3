#!/usr/bin/env bats
# Reliability (docs/RELIABILITY.md): shard integrity, tokenizer identity,
# atomic and reclaimable output directories, validation before allocation,
# non-finite training stops, and messages that name the user's file.
load helper

MODEL="$FIXTURES/models/tiny-llama"
export OMP_NUM_THREADS=1

# tokens for tiny-llama (41 examples, vocab 256) packed into a directory
pack_dir() { ft-pack --per_device_train_batch_size 2 --shard_size 4 --output_dir "$1" tok.zst; }
train() { ft-train --model_name_or_path "$MODEL" --max_steps 2 --output_dir out "$@"; }

setup() {
	cd "$BATS_TEST_TMPDIR"
	ft-cat --encode < "$FIXTURES/trainer/tokens.jsonl" > tok.zst
}

@test "integrity: a shard missing its last bytes (the frame checksum) is refused by ft-train" {
	pack_dir data
	last=$(ls data/shard-*.ftb.zst | tail -n 1)
	size=$(stat -c %s "$last")
	truncate -s $((size - 2)) "$last"
	run --separate-stderr ft-train --model_name_or_path "$MODEL" --num_train_epochs 1 --train data --output_dir out
	[ "$status" -eq 1 ]
	[[ "$stderr" == *"$last"* ]]
	# a single stream file has no manifest: the missing checksum itself is the error
	ft-pack --per_device_train_batch_size 2 -o one.ftb.zst tok.zst
	size=$(stat -c %s one.ftb.zst)
	truncate -s $((size - 3)) one.ftb.zst
	run --separate-stderr ft-train --model_name_or_path "$MODEL" --num_train_epochs 1 --train one.ftb.zst --output_dir out2
	[ "$status" -eq 1 ]
	[[ "$stderr" == *"one.ftb.zst"*"truncated stream"* ]]
}

@test "integrity: a shard swapped for another valid one fails manifest.json's sha256" {
	pack_dir data
	pack_dir other
	# same layout, other shuffle: a valid shard with other bytes
	ft-pack --per_device_train_batch_size 2 --shard_size 4 --seed 7 --output_dir other2 tok.zst
	cp other2/shard-00000.ftb.zst data/shard-00000.ftb.zst
	run --separate-stderr train --train data
	[ "$status" -eq 1 ]
	[[ "$stderr" == *"data/shard-00000.ftb.zst"*"sha256"*"manifest.json"* ]]
}

@test "integrity: a shard not listed in manifest.json is refused" {
	pack_dir data
	cp data/shard-00000.ftb.zst data/shard-00099.ftb.zst
	run --separate-stderr train --train data
	[ "$status" -eq 1 ]
	[[ "$stderr" == *"shard-00099.ftb.zst"*"not listed in"*"manifest.json"* ]]
}

@test "integrity: ft-cat checks manifest.json's sha256 as well" {
	pack_dir data
	ft-pack --per_device_train_batch_size 2 --shard_size 4 --seed 7 --output_dir other tok.zst
	cp other/shard-00000.ftb.zst data/shard-00000.ftb.zst
	run --separate-stderr ft-cat data
	[ "$status" -eq 1 ]
	[[ "$stderr" == *"sha256"* ]]
}

# a tiny-llama copy with a tokenizer, and batches whose header names a tokenizer by hash
tok_model() {
	mkdir -p model && cp "$MODEL"/* model/ && cp "$FT_ROOT/demo/tokenizer.json" model/
	sha=$(sha256sum "${2:-model/tokenizer.json}" | cut -d' ' -f1)
	jq -c "if .format then .meta.tokenizer = \"$1:$sha\" else . end" "$FIXTURES/trainer/tokens.jsonl" |
		ft-cat --encode > named.zst
	ft-pack --per_device_train_batch_size 2 --output_dir "$1-data" named.zst
}

@test "tokenizer: batches from another tokenizer are refused naming both; --allow_tokenizer_mismatch overrides" {
	tok_model other "$FIXTURES/trainer/tokens.jsonl"
	run --separate-stderr ft-train --model_name_or_path model --max_steps 2 --train other-data --output_dir out0
	[ "$status" -eq 1 ]
	[[ "$stderr" == *"other-data: the batches were tokenized with 'other'"*"--model_name_or_path model"* ]] || {
		echo "$stderr"; false; }
	[[ "$stderr" == *"--allow_tokenizer_mismatch"* ]]
	run ft-train --model_name_or_path model --max_steps 2 --train other-data --output_dir out \
		--allow_tokenizer_mismatch
	assert_success
}

@test "tokenizer: batches made with the model's own tokenizer train" {
	tok_model same
	run ft-train --model_name_or_path model --max_steps 2 --train same-data --output_dir out
	assert_success
}

# a pid that ran and is gone
dead_pid() { bash -c 'echo $$'; }

@test "ft-pack --output_dir: killed while writing, it leaves no directory that looks usable" {
	# the file size limit kills ft-pack (SIGXFSZ) when it writes manifest.json,
	# after the shards: before, DIR held shards and no manifest
	run bash -c 'ulimit -f 2; ft-pack -q --per_device_train_batch_size 2 --shard_size 1 --output_dir data tok.zst'
	assert_failure
	[ ! -e data ]
	[ -n "$(ls -A | grep '^\.data\.tmp\.')" ]
	run --separate-stderr ft-cat data
	[ "$status" -eq 1 ]
	# the rerun reclaims the killed run's temporary and writes a complete directory
	pack_dir data
	[ -z "$(ls -A | grep '^\.data\.tmp\.')" ]
	[ -f data/manifest.json ]
	ft-cat data > /dev/null
}

@test "reruns reclaim leftovers of killed runs (.out.tmp.*, .checkpoint-N.tmp.*), never a live run's" {
	pid=$(dead_pid)
	mkdir -p ".data.tmp.$pid.0" && touch ".data.tmp.$pid.0/shard-00000.ftb.zst"
	touch ".out.zst.tmp.$pid.3"
	sleep 1000 & live=$!
	touch ".out.zst.tmp.$live.0"
	pack_dir data
	ft-pack -q --per_device_train_batch_size 2 -o out.zst tok.zst
	[ ! -e ".data.tmp.$pid.0" ] && [ ! -e ".out.zst.tmp.$pid.3" ]
	[ -e ".out.zst.tmp.$live.0" ]
	kill $live
	# ft-train: a killed run's checkpoint temporary does not make out "not empty"
	mkdir -p out/.checkpoint-2.tmp.$pid.0
	run train --train data
	assert_success
	[ ! -e "out/.checkpoint-2.tmp.$pid.0" ]
	[ -d out/checkpoint-2 ]
}

@test "ft-train: a failed run's empty trainer_log.jsonl does not block its own rerun" {
	pack_dir data
	mkdir out && : > out/trainer_log.jsonl
	run train --train data
	assert_success
}

@test "ft-pack: two runs into one new --output_dir: one wins, the other fails and leaves nothing in it" {
	for i in 1 2 3 4 5 6; do
		rm -rf "d$i"
		ft-pack -q --per_device_train_batch_size 2 --shard_size 1 --output_dir "d$i" tok.zst 2> a.err & a=$!
		ft-pack -q --per_device_train_batch_size 1 --shard_size 1 --output_dir "d$i" tok.zst 2> b.err & b=$!
		ra=0; rb=0
		wait $a || ra=$?
		wait $b || rb=$?
		# exactly one succeeded
		[ $(( (ra == 0) + (rb == 0) )) -eq 1 ]
		# the directory holds exactly the winner's shards (the reader checks the list)
		ft-cat "d$i" > /dev/null
		[ -z "$(ls -A | grep "^\.d$i\.tmp\.")" ]
	done
}

@test "ft-pack --overwrite_output_dir replaces an ft-pack output whole, and refuses a directory holding other files" {
	pack_dir data
	ft-pack -q --per_device_train_batch_size 1 --overwrite_output_dir --output_dir data tok.zst
	[ "$(jq .batch_size data/manifest.json)" = 1 ]
	touch data/notes.txt
	run ft-pack -q --per_device_train_batch_size 2 --overwrite_output_dir --output_dir data tok.zst
	assert_failure 1
	assert_output --partial "notes.txt in it was not written by ft-pack"
}
