#!/usr/bin/env bats
# ft-pack against LLaMA-Factory 0.9.5: the same token records give the same
# rows and batches (fixtures: tests/reference/pack_lf_parity.py).  Packed
# without shuffling so the order is LLaMA-Factory's dataset order.
load helper

enc() { ft-cat --encode < "$FIXTURES/pack/lf_$1.tokens.jsonl" > "$1.zst"; }
recs() { ft-cat "$1" | tail -n +2; }
# our batches split into rows: {input_ids, labels, position_ids, segment_ids}
rows() { recs "$1" | jq -c '. as $b | range(0; .B) as $r | {input_ids: $b.input_ids[$r * $b.T:($r + 1) * $b.T], labels: $b.labels[$r * $b.T:($r + 1) * $b.T], position_ids: ($b.position_ids // [])[$r * $b.T:($r + 1) * $b.T], segment_ids: ($b.segment_ids // [])[$r * $b.T:($r + 1) * $b.T]}'; }

@test "padded sft batches = LLaMA-Factory's SFT collator (pad_to_multiple_of 8)" {
	need_jq; enc sft_padded
	ft-pack -q --shuffle false --cutoff_len 256 --per_device_train_batch_size 4 sft_padded.zst -o out.zst
	diff <(jq -c '[.input_ids, .labels]' "$FIXTURES/pack/lf_sft_padded.expect.jsonl") \
	     <(recs out.zst | jq -c '. as $b | [[range(0; .B) | $b.input_ids[. * $b.T:(. + 1) * $b.T]], [range(0; .B) | $b.labels[. * $b.T:(. + 1) * $b.T]]]')
	# the collator's attention_mask is 1 on each example's tokens: lengths
	diff <(tail -n +2 "$FIXTURES/pack/lf_sft_padded.tokens.jsonl" | jq '[.input_ids | length, 256] | min') \
	     <(recs out.zst | jq '.lengths[]')
}

@test "packed sft rows = LLaMA-Factory's packing (greedy_knapsack, position ids)" {
	need_jq; enc sft_packed
	ft-pack -q --shuffle false --packing --cutoff_len 256 --per_device_train_batch_size 1 sft_packed.zst -o out.zst
	diff <(jq -c '[.input_ids, .labels, .position_ids]' "$FIXTURES/pack/lf_sft_packed.expect.jsonl") \
	     <(rows out.zst | jq -c '[.input_ids, .labels, .position_ids]')
}

@test "neat-packed sft rows = LLaMA-Factory's neat_packing (segment ids = its attention_mask)" {
	need_jq; enc sft_packed
	ft-pack -q --shuffle false --neat_packing --cutoff_len 256 --per_device_train_batch_size 3 sft_packed.zst -o out.zst
	diff <(jq -c '[.input_ids, .labels, .position_ids, .attention_mask]' "$FIXTURES/pack/lf_sft_neat.expect.jsonl") \
	     <(rows out.zst | jq -c '[.input_ids, .labels, .position_ids, .segment_ids]')
}

@test "pt blocks = LLaMA-Factory's pretrain packing" {
	need_jq; enc pt
	ft-pack -q --shuffle false --cutoff_len 128 --per_device_train_batch_size 2 pt.zst -o out.zst
	diff <(jq -c '.input_ids' "$FIXTURES/pack/lf_pt.expect.jsonl") <(rows out.zst | jq -c '.input_ids')
	# labels: ids, with pad (= eos for this tokenizer) masked as DataCollatorForLanguageModeling
	[ "$(rows out.zst | jq '[.input_ids, .labels] | transpose | map(if .[0] == 2 then .[1] == -100 else .[1] == .[0] end) | all' | sort -u)" = true ]
}

# The whole pipeline on the demo data (LLaMA-Factory's, from ../shared).
need_tokenize() {
	skip_without_shared
}

@test "ft-tokenize | ft-pack = LLaMA-Factory's batches (alpaca_en_demo, qwen, padded)" {
	need_jq; need_tokenize
	ft-tokenize --dataset alpaca_en_demo --dataset_dir "$SHARED/data/llamafactory" --template qwen \
		--tokenizer "$SHARED/tokenizers/qwen3" --cutoff_len 256 --max_samples 40 -o tok.zst
	ft-pack -q --shuffle false --per_device_train_batch_size 4 tok.zst -o out.zst
	diff <(jq -c '[.input_ids, .labels]' "$FIXTURES/pack/lf_sft_padded.expect.jsonl") \
	     <(recs out.zst | jq -c '. as $b | [[range(0; .B) | $b.input_ids[. * $b.T:(. + 1) * $b.T]], [range(0; .B) | $b.labels[. * $b.T:(. + 1) * $b.T]]]')
	# the collator's attention_mask is 1 on each example's tokens: lengths
	diff <(tail -n +2 "$FIXTURES/pack/lf_sft_padded.tokens.jsonl" | jq '[.input_ids | length, 256] | min') \
	     <(recs out.zst | jq '.lengths[]')
}

@test "ft-tokenize --cutoff_len 255 | ft-pack --neat_packing --cutoff_len 256 = LLaMA-Factory's neat rows" {
	need_jq; need_tokenize
	ft-tokenize --dataset alpaca_en_demo --dataset_dir "$SHARED/data/llamafactory" --template qwen \
		--tokenizer "$SHARED/tokenizers/qwen3" --cutoff_len 255 --max_samples 40 -o tok.zst
	ft-pack -q --shuffle false --neat_packing --cutoff_len 256 --per_device_train_batch_size 1 tok.zst -o out.zst
	diff <(jq -c '[.input_ids, .labels, .position_ids, .attention_mask]' "$FIXTURES/pack/lf_sft_neat.expect.jsonl") \
	     <(rows out.zst | jq -c '[.input_ids, .labels, .position_ids, .segment_ids]')
}
