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

@test "integrity: a shard swapped for another valid one fails manifest.json's sha256 (ft-train, ft-cat)" {
	pack_dir data
	# same layout, other shuffle: a valid shard with other bytes
	ft-pack --per_device_train_batch_size 2 --shard_size 4 --seed 7 --output_dir other tok.zst
	cp other/shard-00000.ftb.zst data/shard-00000.ftb.zst
	run --separate-stderr train --train data
	[ "$status" -eq 1 ]
	[[ "$stderr" == *"data/shard-00000.ftb.zst"*"sha256"*"manifest.json"* ]]
	# every reader checks it: ft-cat too
	run --separate-stderr ft-cat data
	[ "$status" -eq 1 ]
	[[ "$stderr" == *"data/shard-00000.ftb.zst: sha256"* ]]
}

@test "integrity: a shard not listed in manifest.json is refused" {
	pack_dir data
	cp data/shard-00000.ftb.zst data/shard-00099.ftb.zst
	run --separate-stderr train --train data
	[ "$status" -eq 1 ]
	[[ "$stderr" == *"shard-00099.ftb.zst"*"not listed in"*"manifest.json"* ]]
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

# a tiny-llama copy whose config.json has KEY set to VALUE (JSON)
bad_model() { mkdir -p "$1" && cp "$MODEL"/* "$1"/ && jq ".$2 = $3" "$MODEL/config.json" > "$1/config.json"; }
GEN_TOK="$FIXTURES/generate/tokenizer"
gen() { echo '{"prompt": "hi"}' | ft-generate --tokenizer "$GEN_TOK" --template default --max_new_tokens 2 "$@"; }

@test "config: out-of-range numbers are refused by every loader (ft-train, ft-generate, ft-merge) naming key and file" {
	pack_dir data
	for kv in "num_hidden_layers 1000000" "hidden_size 1048577" "rms_norm_eps -1" "rms_norm_eps 0" \
		  "vocab_size 0" "num_key_value_heads 8" "max_position_embeddings 0" "initializer_range -1" \
		  "rope_parameters.rope_theta -5"; do
		set -- $kv
		rm -rf bad && bad_model bad "$1" "$2"
		key=${1##*.}; [ "$key" = rope_theta ] && key=rope_theta
		run --separate-stderr ft-train --model_name_or_path bad --max_steps 1 --train data --output_dir out
		[ "$status" -eq 1 ] || { echo "ft-train accepted $kv"; false; }
		[[ "$stderr" == *"bad/config.json: "*"$key"* ]] || { echo "$kv: $stderr"; false; }
		run --separate-stderr gen --model_name_or_path bad
		[ "$status" -eq 1 ] || { echo "ft-generate accepted $kv"; false; }
		[[ "$stderr" == *"bad/config.json: "*"$key"* ]]
		run --separate-stderr ft-merge --model_name_or_path bad --adapter_name_or_path "$FIXTURES/merge/llama-r4/adapter" --export_dir merged
		[ "$status" -eq 1 ] || { echo "ft-merge accepted $kv"; false; }
		[[ "$stderr" == *"bad/config.json: "*"$key"* ]]
		[ ! -e merged ]
	done
}

@test "config: the memory plan refuses before allocating, with needed and available bytes" {
	run --separate-stderr env FT_MEMORY_AVAILABLE=100000 ft-generate --model_name_or_path "$MODEL" \
		--tokenizer "$GEN_TOK" --template default --max_new_tokens 2 --lines < /dev/null
	[ "$status" -eq 1 ]
	[[ "$stderr" == *"tiny-llama: the model's float32 weights need 378.11 KB, 100.00 KB of memory available"* ]] || { echo "$stderr"; false; }
}

@test "config: the weights' sizes are checked against config.json before allocating" {
	# fewer layers than the weights hold: before, the extra layers were silently ignored
	bad_model fewer num_hidden_layers 1
	run --separate-stderr gen --model_name_or_path fewer
	[ "$status" -eq 1 ]
	[[ "$stderr" == *"fewer: the weights hold more layers than num_hidden_layers 1"* ]] || { echo "$stderr"; false; }
	bad_model more num_hidden_layers 3
	run --separate-stderr gen --model_name_or_path more
	[ "$status" -eq 1 ]
	[[ "$stderr" == *"tensor model.layers.2.input_layernorm.weight is missing (config.json and the weights disagree)"* ]]
	bad_model wide intermediate_size 97
	run --separate-stderr gen --model_name_or_path wide
	[ "$status" -eq 1 ]
	[[ "$stderr" == *"gate_proj.weight has shape [96, 64], config.json says [97, 64]"* ]] || { echo "$stderr"; false; }
}

@test "out of memory: the message carries the size asked for" {
	[[ "${FT_BIN:-}" != *asan* ]] || skip "ASan reserves more address space than the limit"
	# a config whose embeddings (1 GiB each) pass the plan but not a 1 GB address space
	pack_dir data
	bad_model big hidden_size 1048576
	run bash -c 'ulimit -v 1000000; FT_MEMORY_AVAILABLE=1e15 ft-train --train_from_scratch --config big/config.json --train data --output_dir out'
	assert_failure
	[[ "$output" == *"out of memory allocating 1073741824 bytes"* ]] || { echo "$output"; false; }
	[[ "$output" != *"allocating 1 bytes"* ]]
}

@test "training: a NaN loss stops the run with the step, the batch and a hint; --skip_nonfinite goes on" {
	pack_dir data
	mkdir nan && cp "$MODEL"/* nan/
	# model.norm.weight[0] = NaN (float32 0x7fc00000, little-endian)
	hlen=$(head -c 8 nan/model.safetensors | od -An -tu8 | tr -d ' ')
	off=$(dd if=nan/model.safetensors bs=1 skip=8 count="$hlen" 2>/dev/null | jq '.["model.norm.weight"].data_offsets[0]')
	printf '\x00\x00\xc0\x7f' | dd of=nan/model.safetensors bs=1 seek=$((8 + hlen + off)) conv=notrunc 2>/dev/null
	run --separate-stderr ft-train --model_name_or_path nan --max_steps 2 --train data --output_dir out
	[ "$status" -eq 1 ]
	[[ "$stderr" == *"step 1 (from batch 0 of the epoch): the loss is nan"*"--skip_nonfinite"* ]] || { echo "$stderr"; false; }
	run ft-train --model_name_or_path nan --max_steps 2 --train data --output_dir out2 --skip_nonfinite
	assert_success
}

@test "flags: nonsense values are usage errors (ft-generate --cutoff_len, ft-train --per_device_train_batch_size)" {
	pack_dir data
	for v in 0 -1; do
		run -2 gen --model_name_or_path "$MODEL" --cutoff_len $v
		assert_output --partial "--cutoff_len must be >= 1"
		run -2 train --train data --per_device_train_batch_size $v
		assert_output --partial "--per_device_train_batch_size must be >= 1"
		refute_output --partial "re-pack"
	done
}

@test "messages: a bad batch names its file; ft-generate names the user's file, not its temporary copy" {
	# token id 99999 in a batch for a vocabulary of 256
	jq -c 'if .input_ids then .input_ids[0] = 99999 else . end' "$FIXTURES/trainer/train.jsonl" | ft-cat --encode > oov.zst
	run --separate-stderr train --train oov.zst
	[ "$status" -eq 1 ]
	[[ "$stderr" == *"oov.zst: batch 0: token id 99999"*"outside the vocabulary (256)"* ]] || { echo "$stderr"; false; }
	# a cut prompt stream
	ft-cat --encode < "$FIXTURES/trainer/tokens.jsonl" > p.zst
	head -c 300 p.zst > cut.zst
	run --separate-stderr ft-generate --model_name_or_path "$MODEL" --tokenizer "$GEN_TOK" --template default cut.zst
	[ "$status" -eq 1 ]
	[[ "$stderr" == *"cut.zst"* ]]
	[[ "$stderr" != *"/tmp/ft-generate-"* ]]
}

@test "messages: ft-merge's disk check prints a unit that fits a small model" {
	run -1 env FT_MERGE_DISK_FREE=1000 ft-merge --model_name_or_path "$MODEL" \
		--adapter_name_or_path "$FIXTURES/merge/llama-r4/adapter" --export_dir out
	assert_output --partial "needs "
	assert_output --partial " KB, 1.00 KB available"
	refute_output --partial "0.00 GB"
}
