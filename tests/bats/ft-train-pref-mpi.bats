#!/usr/bin/env bats
# mpirun -np 2 ft-train --stage rm | dpo | kto: the preference stages data
# parallel (docs/PREFERENCE.md, docs/DISTRIBUTED.md).  Two ranks x
# accumulation 1 against one process x accumulation 2 on the same batches
# (tests/fixtures/pref: 6 micro-batches of 2 pairs), LoRA on tiny-llama.
# Skipped with a message where mpirun or build/libft_mpi.so is absent.
#
# Tolerances.  Each micro-batch's loss and metrics are computed by the same
# forward passes on the same weights; a step's loss is the mean of its
# micro-batches' means (summed over the ranks in another order) and the
# metrics' sums and counts are summed over the ranks, so they differ from
# one process by float rounding; the gradients are (g0) + (g1) against
# g0 + g1 in float32.  Over 3 steps at lr 1e-3 the weights move by ~lr per
# step through AdamW, so an order-of-addition difference stays far below
# 1e-6; a missing rank's share of the metrics or the loss is ~1e-1 off.
load helper
load mpi_helper

PREF="$FIXTURES/pref"
MODEL="$FIXTURES/models/tiny-llama"

setup() {
	cd "$BATS_TEST_TMPDIR"
	command -v ft-cat >/dev/null || { echo "ft-cat is not built (run make)" >&2; return 1; }
	for s in dpo rm kto; do ft-cat --encode < "$PREF/$s.jsonl" > $s.zst; done
}

# compare STAGE FILE KEYS...: one process x 2 against 2 ranks x 1
compare() {
	local stage=$1 file=$2; shift 2
	local args="--stage $stage --train $stage.zst --model_name_or_path $MODEL --adapter_name_or_path $PREF/llama-lora
		--max_steps 3 --logging_steps 1 --learning_rate 1e-3 --save_strategy no -q"
	[ "$stage" = rm ] && args="$args --model_name_or_path $PREF/llama-model-nodrop"
	run ft-train $args --gradient_accumulation_steps 2 --output_dir one
	assert_success
	run mpi2 ft-train $args --gradient_accumulation_steps 1 --output_dir two
	assert_success
	[ "$(jq -s 'map(select(.loss != null)) | length' one/trainer_log.jsonl)" = 3 ]
	[ "$(jq -s 'map(select(.loss != null)) | length' two/trainer_log.jsonl)" = 3 ]
	for k in loss "$@"; do
		[ "$(jq -s "map(select(.loss != null) | has(\"$k\")) | all" two/trainer_log.jsonl)" = true ] ||
			{ echo "no $k in the 2-rank log"; return 1; }
		d=$(field_diff one/trainer_log.jsonl two/trainer_log.jsonl "$k" 'select(.loss != null)')  # training lines
		within "$d" 1e-6 || { echo "$k differs by $d"; return 1; }
	done
	w=$("$MAXDIFF" "one/$file" "two/$file")
	within "$w" 1e-6 || { echo "$file differs by $w"; return 1; }
}

@test "mpirun dpo: 2 ranks x 1 == 1 process x 2 (loss, rewards, logps, adapter within 1e-6)" {
	need_mpi
	compare dpo adapter_model.safetensors rewards/chosen rewards/rejected rewards/accuracies \
		rewards/margins logps/chosen logps/rejected
}

@test "mpirun kto: 2 ranks x 1 == 1 process x 2 (loss, rewards, kl, adapter within 1e-6)" {
	need_mpi
	compare kto adapter_model.safetensors rewards/chosen rewards/rejected kl
}

@test "mpirun rm: 2 ranks x 1 == 1 process x 2 (loss, adapter and value head within 1e-6)" {
	need_mpi
	compare rm adapter_model.safetensors
	w=$("$MAXDIFF" one/value_head.safetensors two/value_head.safetensors)
	within "$w" 1e-6 || { echo "value head differs by $w"; return 1; }
}

@test "mpirun rm --do_eval: evaluation metrics over the whole validation set, written once" {
	need_mpi
	args="--stage rm --val rm.zst --model_name_or_path $PREF/llama-model-nodrop
		--adapter_name_or_path $PREF/llama-lora --do_eval -q"
	run ft-train $args --output_dir one
	assert_success
	run mpi2 ft-train $args --output_dir two
	assert_success
	[ "$(jq .eval_accuracy one/eval_results.json)" = "$(jq .eval_accuracy two/eval_results.json)" ]
	[ "$(jq .eval_loss one/eval_results.json)" = "$(jq .eval_loss two/eval_results.json)" ]
}
