#!/usr/bin/env bats
# ft-pack: every flag, the pipe form, and every error.  Fixtures are JSON
# lines (tests/reference/make_pack_fixtures.py) turned into token streams
# with ft-cat --encode; their ids encode origin: id = example*1000 + pos + 3
# (rejected sequences: + 500), pad_id = 0.
load helper

enc() { ft-cat --encode < "$FIXTURES/pack/$1.jsonl" > "$1.zst"; }
# data records of a stream, one JSON object per line
recs() { ft-cat "$@" | tail -n +2; }
hdr() { ft-cat "$1" | head -n 1; }
# "id,label" pairs of the real (non-pad) tokens, sorted
out_pairs() { recs "$@" | jq -r '[.input_ids, .labels] | transpose[] | select(.[0] != 0) | @csv' | sort; }
in_pairs() { tail -n +2 "$FIXTURES/pack/$1.jsonl" | jq -r '[.input_ids, .labels] | transpose[] | @csv' | sort; }

@test "--help shows usage, an example pipeline and EXIT STATUS" {
	run ft-pack --help
	assert_success
	assert_output --partial "Usage: ft-pack"
	assert_output --partial "EXIT STATUS"
	assert_output --partial "ft-pack --per_device_train_batch_size 4 --val_size 0.1 -o batches/"
}

@test "padded (default for sft): T a multiple of 8, 40 examples in 5 batches of 8" {
	need_jq; enc sft
	run ft-pack sft.zst -o out.zst
	assert_success
	[ "$(hdr out.zst | jq -r '.kind + " " + .meta.layout + " " + (.meta.counts.examples|tostring)')" = "batches padded 40" ]
	[ "$(recs out.zst | jq -s 'length')" = 5 ]
	[ "$(recs out.zst | jq -s 'map(.T % 8) | add')" = 0 ]
	[ "$(recs out.zst | jq -s 'map(select(.position_ids or .segment_ids)) | length')" = 0 ]
	# T is the longest row rounded up, not more
	[ "$(recs out.zst | jq -s 'map(. as $b | [range(0; $b.B) | [$b.input_ids[.*$b.T:(.+1)*$b.T][] | select(. != 0)] | length] | max | (. + 7) / 8 | floor * 8 == $b.T) | all')" = true ]
}

@test "padded: every (id, label) pair survives exactly once; padding has label -100" {
	need_jq; enc sft
	ft-pack sft.zst -o out.zst
	diff <(in_pairs sft) <(out_pairs out.zst)
	[ "$(recs out.zst | jq '[.input_ids, .labels] | transpose[] | select(.[0] == 0) | .[1]' | sort -u)" = "-100" ]
}

# lengths of a padded batch: one per row, the count of its real tokens
# (ids != 0 in these fixtures), all padding after it
lens_ok() { jq -e '. as $b | (.lengths | length) == $b.B and
	([range(0; $b.B) as $r | $b.input_ids[$r * $b.T:($r + 1) * $b.T] | map(select(. != 0)) | length] == $b.lengths) and
	([range(0; $b.B) as $r | $b.input_ids[$r * $b.T + $b.lengths[$r]:($r + 1) * $b.T][]] | all(. == 0))' >/dev/null; }

@test "lengths: every padded row's real tokens (HF's attention_mask), for each stage; none when packed" {
	need_jq
	for s in sft dpo kto; do
		enc $s
		ft-pack --per_device_train_batch_size 3 $s.zst -o $s.out.zst
		recs $s.out.zst | while read -r r; do echo "$r" | lens_ok; done
	done
	enc pt
	ft-pack --packing false --cutoff_len 64 pt.zst -o pt.out.zst
	recs pt.out.zst | while read -r r; do echo "$r" | lens_ok; done
	# packed rows: LLaMA-Factory pads them with attention_mask 1 (plain
	# causal), neat packing masks by segment ids: no lengths
	ft-pack --cutoff_len 16 pt.zst -o a.zst
	ft-pack --packing --cutoff_len 64 sft.zst -o b.zst
	ft-pack --neat_packing --cutoff_len 64 sft.zst -o c.zst
	[ "$(recs a.zst b.zst c.zst | jq -s 'map(select(has("lengths"))) | length')" = 0 ]
}

@test "lengths count a trailing real token equal to pad_id (pad = eos)" {
	need_jq
	printf '%s\n' '{"format": "ft-stream", "version": 1, "kind": "tokens", "meta": {"stage": "sft", "tokenizer": "t", "pad_id": 2, "eos_id": 2}}' \
		'{"input_ids": [5, 6, 7, 2], "labels": [-100, 6, 7, 2]}' '{"input_ids": [8, 2], "labels": [-100, 2]}' |
		ft-cat --encode > e.zst
	ft-pack --shuffle false --pad_to_multiple_of 1 e.zst -o out.zst
	[ "$(recs out.zst | jq -c '[.lengths, .input_ids]')" = "[[4,2],[5,6,7,2,8,2,2,2]]" ]
}

@test "--pad_to_multiple_of 1: T is exactly the longest row" {
	need_jq; enc sft
	ft-pack --pad_to_multiple_of 1 sft.zst -o out.zst
	[ "$(recs out.zst | jq -s 'map(. as $b | [range(0; $b.B) | [$b.input_ids[.*$b.T:(.+1)*$b.T][] | select(. != 0)] | length] | max == $b.T) | all')" = true ]
	[ "$(recs out.zst | jq -s 'map(select(.T % 8 != 0)) | length > 0')" = true ]
}

@test "--per_device_train_batch_size 3 keeps the last partial batch; --dataloader_drop_last drops it" {
	need_jq; enc sft
	ft-pack --per_device_train_batch_size 3 sft.zst -o a.zst
	[ "$(recs a.zst | jq -s 'length')" = 14 ]
	[ "$(recs a.zst | jq -s 'map(.B) | add')" = 40 ]
	[ "$(recs a.zst | jq -s '.[-1].B')" = 1 ]
	ft-pack --per_device-train-batch-size 3 --dataloader_drop_last sft.zst -o b.zst
	[ "$(recs b.zst | jq -s 'length')" = 13 ]
	[ "$(recs b.zst | jq -s 'map(.B == 3) | all')" = true ]
	[ "$(hdr b.zst | jq '.meta.counts.batches')" = 13 ]
}

@test "--packing (sft): rows of exactly cutoff_len, positions restart per example, no token lost" {
	need_jq; enc sft
	run --separate-stderr ft-pack --packing --cutoff_len 64 sft.zst -o out.zst
	assert_success
	[[ "$stderr" == *"fill"* ]]
	[ "$(hdr out.zst | jq -r .meta.layout)" = packed ]
	[ "$(recs out.zst | jq -s 'map(.T == 64 and (.position_ids != null) and (.segment_ids == null)) | all')" = true ]
	diff <(in_pairs sft) <(out_pairs out.zst)
	# position = token's place in its example: (id - 3) % 1000
	[ "$(recs out.zst | jq '[.input_ids, .position_ids] | transpose[] | select(.[0] != 0) | (.[0] - 3) % 1000 == .[1]' | sort -u)" = true ]
}

@test "--neat_packing: segment ids change exactly at example boundaries; padding is segment 0" {
	need_jq; enc sft
	ft-pack --neat_packing true --cutoff_len 64 --per_device_train_batch_size 1 sft.zst -o out.zst
	[ "$(hdr out.zst | jq -r .meta.layout)" = neat_packed ]
	diff <(in_pairs sft) <(out_pairs out.zst)
	# per row: [example, segment] of each real token; the segment starts at
	# 1 and grows by one exactly where the example changes
	[ "$(recs out.zst | jq '. as $b | range(0; .B) as $r | [range($r * $b.T; ($r + 1) * $b.T) | select($b.input_ids[.] != 0) | [(($b.input_ids[.] - 3) / 1000 | floor), $b.segment_ids[.]]] | . as $t | [range(0; length) | if . == 0 then $t[0][1] == 1 else $t[.][1] == $t[. - 1][1] + (if $t[.][0] != $t[. - 1][0] then 1 else 0 end) end] | all' | sort -u)" = true ]
	[ "$(recs out.zst | jq '[.input_ids, .segment_ids] | transpose[] | select(.[0] == 0) | .[1]' | sort -u)" = 0 ]
}

@test "pt (packed by default): unshuffled blocks are the concatenated texts, labels = ids" {
	need_jq; enc pt
	run --separate-stderr ft-pack --cutoff_len 16 --shuffle false pt.zst -o out.zst
	assert_success
	[[ "$stderr" == *"dropped"* ]]
	[ "$(hdr out.zst | jq -r .meta.layout)" = packed ]
	n=$(recs out.zst | jq -s 'map(.B) | add')
	want=$(tail -n +2 "$FIXTURES/pack/pt.jsonl" | jq -s "[.[].input_ids[]] | .[0:$n*16]" -c)
	got=$(recs out.zst | jq -s '[.[].input_ids[]]' -c)
	[ "$want" = "$got" ]
	[ "$(recs out.zst | jq '.labels == .input_ids' | sort -u)" = true ]
}

@test "pt with add_bos_token: every block starts with bos; --packing false pads and prepends bos" {
	need_jq; enc pt_bos
	ft-pack --cutoff_len 16 pt_bos.zst -o a.zst
	[ "$(recs a.zst | jq '. as $b | [range(0; .B) | $b.input_ids[. * $b.T]] | map(. == 1) | all' | sort -u)" = true ]
	ft-pack --packing false --cutoff_len 128 pt_bos.zst -o b.zst
	[ "$(hdr b.zst | jq -r .meta.layout)" = padded ]
	[ "$(recs b.zst | jq -s 'map(.B) | add')" = 30 ]
	[ "$(recs b.zst | jq '. as $b | [range(0; .B) | $b.input_ids[. * $b.T]] | map(. == 1) | all' | sort -u)" = true ]
}

@test "--seed: the same seed gives byte-identical output, another seed differs" {
	enc sft
	ft-pack --seed 1 sft.zst -o a.zst
	ft-pack --seed 1 sft.zst -o b.zst
	ft-pack --seed 2 sft.zst -o c.zst
	cmp a.zst b.zst
	! cmp -s a.zst c.zst || false
}

@test "--data_seed: the training order's own seed (HF's); the split keeps --seed" {
	need_jq; enc sft
	ft-pack -q --seed 1 --val_size 8 -o s1/ sft.zst
	ft-pack -q --seed 1 --data_seed 5 --val_size 8 -o d5/ sft.zst
	ft-pack -q --seed 1 --data_seed 1 --val_size 8 -o d1/ sft.zst
	# the same split: the same validation batches, training the same examples
	diff <(recs s1/val | jq -c .input_ids) <(recs d5/val | jq -c .input_ids)
	diff <(recs s1 | jq -r '.input_ids[] | select(. != 0)' | sort) <(recs d5 | jq -r '.input_ids[] | select(. != 0)' | sort)
	# in another order
	run diff -q <(recs s1 | jq -c .input_ids) <(recs d5 | jq -c .input_ids)
	assert_failure
	[ "$(jq .data_seed d5/manifest.json)" = 5 ] && [ "$(jq .data_seed s1/manifest.json)" = null ]
	# data_seed equal to seed: the same order
	diff <(recs s1 | jq -c .input_ids) <(recs d1 | jq -c .input_ids)
	run -2 ft-pack --data_seed -3 sft.zst -o x.zst
	assert_output --partial "--data_seed: must not be negative"
}

@test "--num_train_epochs 3: three epochs of the same examples, each reshuffled; the first as before" {
	need_jq; enc sft
	ft-pack -q --per_device_train_batch_size 4 --val_size 8 --num_train_epochs 3 -o ep/ sft.zst
	ft-pack -q --per_device_train_batch_size 4 --val_size 8 -o one/ sft.zst
	[ "$(jq .epochs ep/manifest.json)" = 3 ] && [ "$(jq .epochs one/manifest.json)" = 1 ]
	[ "$(jq .counts.batches ep/manifest.json)" = 8 ]
	[ "$(jq '.shards | map(.records) | add' ep/manifest.json)" = 24 ]
	[ "$(recs ep | jq -s 'map(.index) == [range(0; 24)]')" = true ]
	# validation is written once, as before
	[ "$(jq .epochs ep/val/manifest.json)" = 1 ]
	cmp ep/val/shard-00000.ftb.zst one/val/shard-00000.ftb.zst
	# epoch 0 is the one-epoch order; every epoch holds the same examples
	diff <(recs one | jq -c .input_ids) <(recs ep | head -n 8 | jq -c .input_ids)
	for e in 0 1 2; do
		recs ep | sed -n "$((e * 8 + 1)),$((e * 8 + 8))p" | jq -r '.input_ids[] | select(. != 0)' | sort > e$e
	done
	cmp e0 e1 && cmp e0 e2
	# but in another order: the first id of each row differs between epochs
	first() { recs ep | sed -n "$(($1 * 8 + 1)),$(($1 * 8 + 8))p" | jq -c '[.input_ids[0]]'; }
	! diff -q <(first 0) <(first 1) && ! diff -q <(first 1) <(first 2) || false
	# fractional epochs round up, as the trainer's passes over the data
	ft-pack -q --per_device_train_batch_size 4 --num_train_epochs 1.5 -o f.zst sft.zst
	[ "$(hdr f.zst | jq .meta.epochs)" = 2 ] && [ "$(recs f.zst | wc -l)" = 20 ]
	run -2 ft-pack --num_train_epochs 0 sft.zst -o x.zst
	assert_output --partial "--num_train_epochs"
	run -2 ft-pack --num-train-epochs abc sft.zst -o x.zst
}

@test "--val_size 0.25 --output_dir: val and train disjoint and complete" {
	need_jq; enc sft
	run --separate-stderr ft-pack --val_size 0.25 --output_dir out sft.zst
	assert_success
	[[ "$stderr" == *"val: 10 examples"* ]]
	[ "$(jq .counts.examples out/manifest.json)" = 30 ]
	[ "$(jq .counts.examples out/val/manifest.json)" = 10 ]
	[ "$(jq -r .validation out/manifest.json)" = val ]
	exs() { recs "$1" | jq '.input_ids[] | select(. != 0) | (. - 3) / 1000 | floor' | sort -un; }
	exs out > t.txt; exs out/val > v.txt
	[ -z "$(comm -12 t.txt v.txt)" ]
	[ "$(sort -nu t.txt v.txt | wc -l)" = 40 ]
	diff <(in_pairs sft) <( (out_pairs out; out_pairs out/val) | sort)
}

@test "--val_size as a count; with -o it needs --val_output" {
	need_jq; enc sft
	run ft-pack --val_size 5 sft.zst -o a.zst
	assert_failure 2
	assert_output --partial "--val_output"
	ft-pack --val_size 5 --per_device_eval_batch_size 2 sft.zst -o a.zst --val_output v.zst
	[ "$(hdr v.zst | jq -c '[.meta.counts.examples, .meta.batch_size, .meta.counts.batches]')" = "[5,2,3]" ]
	[ "$(hdr a.zst | jq '.meta.batch_size')" = 8 ]
	[ "$(hdr v.zst | jq -r '.meta.split')" = val ]
	[ "$(hdr a.zst | jq '.meta.counts.examples')" = 35 ]
	run ft-pack --val_size 40 sft.zst -o a.zst --val_output v.zst
	assert_failure 1
	assert_output --partial "leaves no training examples"
}

@test "--max_samples takes the first N records of each input; several inputs are one dataset" {
	need_jq; enc sft; enc sft_b
	ft-pack --max_samples 10 sft.zst -o a.zst
	[ "$(hdr a.zst | jq .meta.counts.examples)" = 10 ]
	[ "$(recs a.zst | jq '.input_ids[] | select(. != 0) | (. - 3) / 1000 | floor' | sort -un | tail -1)" = 9 ]
	ft-pack sft.zst sft_b.zst -o b.zst
	[ "$(hdr b.zst | jq .meta.counts.examples)" = 45 ]
	ft-pack --max_samples 2 sft.zst sft_b.zst -o c.zst
	[ "$(hdr c.zst | jq .meta.counts.examples)" = 4 ]
}

@test "--group_by_length cuts padding" {
	need_jq; enc sft
	ft-pack --per_device_train_batch_size 4 sft.zst -o a.zst
	ft-pack --per_device_train_batch_size 4 --group_by_length sft.zst -o b.zst
	[ "$(hdr b.zst | jq .meta.group_by_length)" = true ]
	[ "$(hdr b.zst | jq .meta.counts.pad_tokens)" -lt "$(hdr a.zst | jq .meta.counts.pad_tokens)" ]
	diff <(out_pairs a.zst) <(out_pairs b.zst)
}

@test "--shard_size N batches: shards, manifest records and sha256 agree with the files" {
	need_jq; enc sft
	ft-pack --shard_size 2batches --output_dir out sft.zst
	[ "$(ls out/shard-*.ftb.zst | wc -l)" = 3 ]
	[ "$(jq '[.shards[].records] | add' out/manifest.json)" = 5 ]
	[ "$(jq '.counts.batches' out/manifest.json)" = 5 ]
	for i in 0 1 2; do
		f=$(jq -r ".shards[$i].file" out/manifest.json)
		[ "$(jq -r ".shards[$i].sha256" out/manifest.json)" = "$(sha256sum "out/$f" | cut -d' ' -f1)" ]
		# every shard repeats the header with the split's total counts
		[ "$(hdr "out/$f" | jq .meta.counts.batches)" = 5 ]
	done
	diff <(in_pairs sft) <(out_pairs out)
}

@test "--shard_size in bytes starts new shards" {
	need_jq
	# ~1 MB of batches from random ids (zstd holds up to 128 KB before it writes)
	awk 'BEGIN { srand(7); print "{\"format\":\"ft-stream\",\"version\":1,\"kind\":\"tokens\",\"producer\":\"bats\",\"meta\":{\"stage\":\"pt\",\"tokenizer\":\"t\",\"pad_id\":0,\"eos_id\":2}}";
		for (i = 0; i < 2000; i++) { s = "{\"input_ids\":[3"; for (j = 0; j < 200; j++) s = s "," int(3 + rand() * 100000); print s "]}" } }' \
		| ft-cat --encode > big.zst
	ft-pack -q --cutoff_len 512 --shard_size 300kB --output_dir out big.zst
	[ "$(ls out/shard-*.ftb.zst | wc -l)" -ge 2 ]
	[ "$(jq '[.shards[].records] | add' out/manifest.json)" = "$(jq .counts.batches out/manifest.json)" ]
	for f in out/shard-*.ftb.zst; do [ "$(stat -c %s "$f")" -lt 700000 ]; done
}

@test "--output_dir: a non-empty directory needs --overwrite_output_dir, which clears old shards" {
	enc sft
	ft-pack --shard_size 1batches --output_dir out sft.zst
	[ "$(ls out/shard-*.ftb.zst | wc -l)" -ge 5 ]
	run ft-pack --output_dir out sft.zst
	assert_failure 1
	assert_output --partial "overwrite_output_dir"
	ft-pack --output_dir out --overwrite_output_dir sft.zst
	[ "$(ls out/shard-*.ftb.zst | wc -l)" = 1 ]
}

@test "pipe form: ft-cat --encode | ft-pack -o - | ft-cat" {
	need_jq
	run bash -c "set -o pipefail; ft-cat --encode < '$FIXTURES/pack/sft.jsonl' | ft-pack -q --per_device_train_batch_size 4 -o - | ft-cat > out.jsonl"
	assert_success
	[ "$(head -n 1 out.jsonl | jq -r '.kind + " " + (.meta.counts.batches|tostring)')" = "batches 10" ]
	[ "$(wc -l < out.jsonl)" = 11 ]
	run bash -c "set -o pipefail; ft-cat --encode < '$FIXTURES/pack/sft.jsonl' | ft-pack -q - | ft-cat | tail -n +2 | wc -l"
	assert_output 5
}

@test "dpo: rows 2i/2i+1 are chosen/rejected of the same example" {
	need_jq; enc dpo
	ft-pack --per_device_train_batch_size 3 dpo.zst -o out.zst
	[ "$(hdr out.zst | jq -c '[.meta.pairwise, .meta.rows_per_batch, .meta.counts.examples]')" = "[true,6,20]" ]
	# first token of row r: example = id/1000, rejected = (id % 1000) >= 500
	[ "$(recs out.zst | jq '. as $b | [range(0; .B) | $b.input_ids[. * $b.T] - 3] | [range(0; length / 2) as $i | (.[2*$i] / 1000 | floor) == (.[2*$i+1] / 1000 | floor) and (.[2*$i] % 1000) < 500 and (.[2*$i+1] % 1000) >= 500] | all' | sort -u)" = true ]
	in=$(tail -n +2 "$FIXTURES/pack/dpo.jsonl" | jq -r '([.chosen_input_ids, .chosen_labels] | transpose[]), ([.rejected_input_ids, .rejected_labels] | transpose[]) | @csv' | sort)
	[ "$in" = "$(out_pairs out.zst)" ]
}

@test "dpo: --packing needs --neat_packing; neat packing keeps pairs aligned" {
	need_jq; enc dpo
	run ft-pack --packing dpo.zst -o out.zst
	assert_failure 2
	assert_output --partial "needs --neat_packing"
	ft-pack --neat_packing --cutoff_len 64 dpo.zst -o out.zst
	[ "$(hdr out.zst | jq -r .meta.layout)" = neat_packed ]
	# the examples of row 2i and row 2i+1, in order, are the same
	[ "$(recs out.zst | jq '. as $b | [range(0; .B) | [$b.input_ids[. * $b.T:(. + 1) * $b.T][] | select(. != 0) | (. - 3) / 1000 | floor] | unique] | [range(0; length / 2) as $i | .[2*$i] == .[2*$i+1]] | all' | sort -u)" = true ]
}

@test "kto: rows 2i/2i+1 are an example and its KL sequence, one tag per row; --packing refused" {
	need_jq; enc kto
	ft-pack --per_device_train_batch_size 4 kto.zst -o out.zst
	[ "$(hdr out.zst | jq -c '[.meta.kto_kl, .meta.pairwise, .meta.rows_per_batch]')" = "[true,false,8]" ]
	[ "$(recs out.zst | jq '(.kto_tags | length) == .B' | sort -u)" = true ]
	[ "$(recs out.zst | jq -s '[.[].kto_tags[]] | add')" = 12 ]
	[ "$(recs out.zst | jq '. as $b | [range(0; .B) | $b.input_ids[. * $b.T] - 3] | [range(0; length / 2) as $i | (.[2*$i] / 1000 | floor) == (.[2*$i+1] / 1000 | floor) and (.[2*$i] % 1000) < 500 and (.[2*$i+1] % 1000) >= 500] | all' | sort -u)" = true ]
	in=$(tail -n +2 "$FIXTURES/pack/kto.jsonl" | jq -r '([.input_ids, .labels] | transpose[]), ([.kl_input_ids, .kl_labels] | transpose[]) | @csv' | sort)
	[ "$in" = "$(out_pairs out.zst)" ]
	run ft-pack --packing kto.zst -o out.zst
	assert_failure 2
}

@test "a row longer than cutoff_len is truncated with a warning" {
	need_jq; enc sft_long
	run --separate-stderr ft-pack --cutoff_len 16 sft_long.zst -o out.zst
	assert_success
	[[ "$stderr" == *"truncated 1 sequence longer than 16 tokens (34 tokens removed)"* ]]
	[ "$(recs out.zst | jq '.T')" = 16 ]
}

@test "statistics on stderr; -q silences them" {
	enc sft
	run --separate-stderr ft-pack sft.zst -o out.zst
	[[ "$stderr" == *"40 sft examples"* ]]
	[[ "$stderr" == *"train: 40 examples in 5 batches"* ]]
	[[ "$stderr" == *"padding"* ]]
	run --separate-stderr ft-pack -q sft.zst -o out.zst
	[ -z "$stderr" ]
}

@test "error: streams from different tokenizers or stages are refused" {
	enc sft; enc sft_othertok; enc pt
	run ft-pack sft.zst sft_othertok.zst -o out.zst
	assert_failure 1
	assert_output --partial "different tokenizers"
	assert_output --partial "other-tok"
	run ft-pack sft.zst pt.zst -o out.zst
	assert_failure 1
	assert_output --partial "different stages"
	run ft-pack --stage dpo sft.zst -o out.zst
	assert_failure 1
	assert_output --partial "--stage is 'dpo'"
	[ ! -e out.zst ]
}

@test "error: not a token stream, bad records, truncated and missing input" {
	enc not_tokens; enc sft_badlabels; enc sft_nolabels; enc sft
	run ft-pack not_tokens.zst -o out.zst
	assert_failure 1
	assert_output --partial "not a token stream"
	run ft-pack sft_badlabels.zst -o out.zst
	assert_failure 1
	assert_output --partial "record 1"
	run ft-pack sft_nolabels.zst -o out.zst
	assert_failure 1
	assert_output --partial "labels"
	head -c 300 sft.zst > cut.zst
	run ft-pack cut.zst -o out.zst
	assert_failure 1
	run ft-pack nonexistent.zst -o out.zst
	assert_failure 1
	assert_output --partial "nonexistent.zst"
	[ ! -e out.zst ]
}

@test "usage errors exit 2" {
	enc sft
	run ft-pack --cutoff_len abc sft.zst
	assert_failure 2
	run ft-pack --bogus sft.zst
	assert_failure 2
	run ft-pack --shard_size 2batches sft.zst -o x.zst
	assert_failure 2
	run ft-pack --output_dir d -o x.zst sft.zst
	assert_failure 2
	run ft-pack --val_size 1.5 sft.zst -o x.zst
	assert_failure 2
	run ft-pack --stage nope sft.zst -o x.zst
	assert_failure 2
}

@test "write error on stdout: exit 1" {
	enc sft
	run bash -c 'ft-pack sft.zst -o - > /dev/full'
	assert_failure 1
	assert_output --partial "write error"
}

@test "-o DIR/ writes shards and a manifest like --output_dir" {
	need_jq; enc sft
	ft-pack -q sft.zst -o batches/
	[ -f batches/manifest.json ] && [ -f batches/shard-00000.ftb.zst ]
	[ "$(jq .counts.examples batches/manifest.json)" = 40 ]
}

@test "cutoff_len defaults to the one in the input header" {
	need_jq
	printf '%s\n' '{"format":"ft-stream","version":1,"kind":"tokens","producer":"t","meta":{"stage":"sft","tokenizer":"t","pad_id":0,"eos_id":2,"cutoff_len":16}}' \
		'{"input_ids":[3,4,5,6,7,8,9,10,11,12,13,14,15,16,17,18,19,20],"labels":[3,4,5,6,7,8,9,10,11,12,13,14,15,16,17,18,19,20]}' \
		| ft-cat --encode > c.zst
	run --separate-stderr ft-pack c.zst -o out.zst
	assert_success
	[[ "$stderr" == *"cutoff_len 16"* ]]
	[[ "$stderr" == *"truncated 1 sequence longer than 16 tokens (2 tokens removed)"* ]]
	[ "$(hdr out.zst | jq .meta.cutoff_len)" = 16 ]
}

@test "error: prediction records and an empty input are refused" {
	printf '%s\n' '{"format":"ft-stream","version":1,"kind":"tokens","producer":"t","meta":{"stage":"sft","tokenizer":"t","pad_id":0,"eos_id":2,"predict":true}}' \
		'{"input_ids":[3,4],"label_ids":[5],"label_text":"x"}' | ft-cat --encode > p.zst
	run ft-pack p.zst -o out.zst
	assert_failure 1
	assert_output --partial "prediction records"
	printf '%s\n' '{"format":"ft-stream","version":1,"kind":"tokens","producer":"t","meta":{"stage":"sft","tokenizer":"t","pad_id":0}}' \
		| ft-cat --encode > e.zst
	run ft-pack e.zst -o out.zst
	assert_failure 1
	assert_output --partial "no examples"
	[ ! -e out.zst ]
}

@test "error: a token id outside the header's vocab_size" {
	printf '%s\n' '{"format":"ft-stream","version":1,"kind":"tokens","producer":"t","meta":{"stage":"sft","tokenizer":"t","pad_id":0,"vocab_size":100}}' \
		'{"input_ids":[3,4],"labels":[3,4]}' '{"input_ids":[3,400],"labels":[3,400]}' | ft-cat --encode > v.zst
	run ft-pack v.zst -o out.zst
	assert_failure 1
	assert_output --partial "record 1: 'input_ids'[1] = 400 is not a token id of this vocabulary"
}

@test "refuses to write batches to a terminal without -f" {
	command -v script >/dev/null || skip "script(1) is not installed"
	enc sft
	run script -qec "ft-pack -q sft.zst" /dev/null
	assert_failure 2
	assert_output --partial "refusing to write binary data to a terminal"
}

@test "progress on stderr when forced (FT_FORCE_PROGRESS=1)" {
	enc sft
	run --separate-stderr env FT_FORCE_PROGRESS=1 ft-pack sft.zst -o out.zst
	assert_success
	[[ "$stderr" == *"train: batch 1 of 5"* ]]
}
