#!/usr/bin/env bats
# ft-train's settings of transformers' Seq2SeqTrainingArguments and of
# LLaMA-Factory's FinetuningArguments for the pt and sft trainers
# (tools/ft-train/hfargs.c, docs/TRAINING.md): --label_smoothing_factor,
# --compute_accuracy, --metric_for_best_model, --greater_is_better,
# --load_best_model_at_end, --early_stopping_steps.  References in
# tests/fixtures/hfargs/ (tests/reference/make_hfargs_fixtures.py:
# transformers' own LabelSmoother in its accumulation loop, LLaMA-Factory's
# own ComputeAccuracy).
load helper

MODEL="$FIXTURES/models/tiny-llama"
export OMP_NUM_THREADS=1

setup() {
	cd "$BATS_TEST_TMPDIR"
	command -v ft-cat >/dev/null || { echo "ft-cat is not built (run make)" >&2; return 1; }
	ft-cat --encode < "$FIXTURES/trainer/train.jsonl" > train.zst
}
train() { ft-train --model_name_or_path "$MODEL" --train train.zst --output_dir out "$@"; }

# parity_run (helper.bash): every step loss within 1e-5 relative, the bound
# of the plain parity runs.  The smoothed term adds one sum over the
# vocabulary per token (double here, float32 in torch: ~256 * 6e-8 / 5 of
# the loss, 3e-6 relative at worst, so the bound holds for it as well).
PARITY_REF=hfargs/label_smoothing.txt

# ---- label_smoothing_factor ----------------------------------------------------

@test "label_smoothing_factor 0.1: parity with transformers' LabelSmoother (full, and LoRA; 0.3)" {
	need_jq
	parity_run ls_full full --learning_rate 1e-3 --label_smoothing_factor 0.1
	parity_run ls_lora lora --learning_rate 2e-3 --adapter_name_or_path "$FIXTURES/parity/llama-lora-init" \
		--label_smoothing_factor 0.1
	parity_run ls_lora3 lora --learning_rate 2e-3 --adapter_name_or_path "$FIXTURES/parity/llama-lora-init" \
		--label_smoothing_factor 0.3
	# the smoothing matters: the plain run is outside the bound
	rm -rf ls_full
	run parity_run ls_full full --learning_rate 1e-3
	assert_failure
	assert_output --partial "step 1: "
}

# transformers' prediction_step calls compute_loss, so the eval loss is
# smoothed too; the same 1e-5 bound (one forward, no training).
@test "label_smoothing_factor: the eval loss is the smoothed loss (transformers' prediction_step)" {
	need_jq
	ft-cat --encode < "$FIXTURES/trainer/parity20.jsonl" > p20.zst
	run ft-train --model_name_or_path "$MODEL" --val p20.zst --do_train false --do_eval true \
		--output_dir ev --label_smoothing_factor 0.1 -q
	assert_success
	got=$(jq .eval_loss ev/eval_results.json)
	want=$(grep '^eval_ls ' "$FIXTURES/hfargs/label_smoothing.txt" | cut -d' ' -f2)
	awk -v a="$got" -v b="$want" 'BEGIN { d = (a - b) / b; if (d < 0) d = -d; print "# " a " vs " b; exit !(d <= 1e-5) }'
}

@test "label_smoothing_factor: default 0 is the plain loss bit for bit; 0 given the same" {
	need_jq
	train --max_steps 2 --logging_steps 1 -q --output_dir a
	train --max_steps 2 --logging_steps 1 -q --output_dir b --label_smoothing_factor 0
	train --max_steps 2 --logging_steps 1 -q --output_dir c --label-smoothing-factor 0.2
	cmp a/adapter_model.safetensors b/adapter_model.safetensors
	run cmp a/adapter_model.safetensors c/adapter_model.safetensors
	assert_failure
	run ft-train --help
	assert_output --partial "--label_smoothing_factor"
}

@test "label_smoothing_factor: pt stage too, resume bit for bit, gradient checkpointing the same" {
	need_jq
	args=(--finetuning_type lora --max_steps 4 --logging_steps 1 --save_steps 2 --label_smoothing_factor 0.1 -q)
	# the sft fixture relabelled pt (the loss reads the same labels)
	sed '1s/"stage": "sft"/"stage": "pt"/' "$FIXTURES/trainer/train.jsonl" | ft-cat --encode > pt.zst
	train "${args[@]}" --stage pt --train pt.zst --output_dir a
	mkdir b && cp -r a/checkpoint-2 b/ && head -n 2 a/trainer_log.jsonl > b/trainer_log.jsonl
	train "${args[@]}" --stage pt --train pt.zst --output_dir b --resume_from_checkpoint true
	cmp <(jq -c 'select(.loss) | .loss' a/trainer_log.jsonl) <(jq -c 'select(.loss) | .loss' b/trainer_log.jsonl)
	cmp a/adapter_model.safetensors b/adapter_model.safetensors
	train "${args[@]}" --output_dir g --gradient_checkpointing true
	train "${args[@]}" --output_dir h
	cmp g/adapter_model.safetensors h/adapter_model.safetensors
}

@test "label_smoothing_factor: refusals (range, other stages, DFT/EAFT/ASFT)" {
	for v in -0.1 1.5 x; do
		run train --label_smoothing_factor "$v"
		assert_failure 2
	done
	ft-cat --encode < "$FIXTURES/pref/dpo.jsonl" > dpo.zst
	for s in dpo rm kto; do
		run --separate-stderr train --stage $s --train dpo.zst --label_smoothing_factor 0.1
		assert_failure 2
		[[ "$stderr" == *"only --stage pt and sft apply it"* ]]
	done
	for l in dft eaft; do
		run --separate-stderr train --use_${l}_loss true --label_smoothing_factor 0.1
		assert_failure 2
		[[ "$stderr" == *"--use_${l}_loss"* ]]
	done
	run --separate-stderr train --use_asft_loss true --ref_model "$MODEL" --label_smoothing_factor 0.1
	assert_failure 2
	[[ "$stderr" == *"--use_asft_loss"* ]]
}

# ---- compute_accuracy -----------------------------------------------------------

# accuracy.txt: LLaMA-Factory's own ComputeAccuracy over eval_logit_processor's
# argmax (make_hfargs_fixtures.py) for tiny-llama + acc-lora on the parity
# batches.  Each row's share is a ratio of small integers and the mean of 40
# of them in double: the arithmetic agrees to ~1e-16.  A single argmax
# flipped by ft's logits (~1e-6 from torch's) would move the value by at
# least 1 / (40 rows * 15 labels) = 1.7e-3, so the bound 1e-12 says that
# none flipped.  The token-pooled accuracy (pooled, not LLaMA-Factory's) is
# outside it.
@test "compute_accuracy: eval_accuracy as LLaMA-Factory's ComputeAccuracy (per row, then the rows' mean)" {
	need_jq
	ft-cat --encode < "$FIXTURES/trainer/parity20.jsonl" > p20.zst
	run ft-train --model_name_or_path "$MODEL" --adapter_name_or_path "$FIXTURES/hfargs/acc-lora" --val p20.zst \
		--do_train false --do_eval true --output_dir ev --compute_accuracy true -q
	assert_success
	got=$(jq .eval_accuracy ev/eval_results.json)
	[ "$(jq .eval_accuracy ev/all_results.json)" = "$got" ]
	want=$(awk '$1 == "acc" { print $2 }' "$FIXTURES/hfargs/accuracy.txt")
	pooled=$(awk '$1 == "pooled" { print $2 }' "$FIXTURES/hfargs/accuracy.txt")
	within() { awk -v a="$1" -v b="$2" 'BEGIN { d = a - b; if (d < 0) d = -d; exit !(d <= 1e-12 * b) }'; }
	echo "# $got vs $want (pooled $pooled)" >&3
	within "$got" "$want"
	run within "$pooled" "$want"
	assert_failure
}

@test "compute_accuracy: in the eval log lines, log_history and eval_results.json; off by default" {
	need_jq
	ft-cat --encode < "$FIXTURES/trainer/val.jsonl" > val.zst
	train --max_steps 4 --logging_steps 2 --eval_steps 2 --val val.zst --compute_accuracy true -q
	[ "$(jq -s '[.[] | select(.eval_loss)] | length' out/trainer_log.jsonl)" = 2 ]
	[ "$(jq -s '[.[] | select(.eval_loss) | select(.eval_accuracy >= 0 and .eval_accuracy <= 1)] | length' \
		out/trainer_log.jsonl)" = 2 ]
	[ "$(jq '[.log_history[] | select(.eval_accuracy)] | length' out/trainer_state.json)" -ge 1 ]
	jq -e '.eval_accuracy >= 0' out/eval_results.json
	# the last eval line's accuracy is the one in eval_results.json
	[ "$(jq -s -c '[.[] | select(.eval_loss)] | last | .eval_accuracy' out/trainer_log.jsonl)" = \
	  "$(jq -c .eval_accuracy out/eval_results.json)" ]
	train --max_steps 4 --logging_steps 2 --eval_steps 2 --val val.zst -q --output_dir plain
	[ "$(jq -s '[.[] | select(.eval_accuracy)] | length' plain/trainer_log.jsonl)" = 0 ]
	jq -e 'has("eval_accuracy") | not' plain/eval_results.json
	# training is not changed by it
	cmp out/adapter_model.safetensors plain/adapter_model.safetensors
}

@test "compute_accuracy: resume bit for bit" {
	need_jq
	ft-cat --encode < "$FIXTURES/trainer/val.jsonl" > val.zst
	args=(--max_steps 4 --logging_steps 1 --eval_steps 2 --save_steps 2 --val val.zst --compute_accuracy true -q)
	train "${args[@]}" --output_dir a
	mkdir b && cp -r a/checkpoint-2 b/ && head -n 3 a/trainer_log.jsonl > b/trainer_log.jsonl
	train "${args[@]}" --output_dir b --resume_from_checkpoint true
	diff <(jq -c 'del(.elapsed_time, .remaining_time, .throughput)' a/trainer_log.jsonl) \
	     <(jq -c 'del(.elapsed_time, .remaining_time, .throughput)' b/trainer_log.jsonl)
	cmp <(jq .eval_accuracy a/eval_results.json) <(jq .eval_accuracy b/eval_results.json)
}

@test "compute_accuracy: refusals (pt, other stages, predict_with_generate, DFT/EAFT/ASFT, the device)" {
	ft-cat --encode < "$FIXTURES/trainer/val.jsonl" > val.zst
	run -2 train --stage pt --compute_accuracy true
	assert_output --partial "only --stage sft computes it"
	ft-cat --encode < "$FIXTURES/pref/dpo.jsonl" > dpo.zst
	run -2 train --stage dpo --train dpo.zst --compute_accuracy true
	assert_output --partial "only --stage sft computes it"
	# (predict_with_generate reaches ft-train only from a config: it is ft-generate's)
	printf 'compute_accuracy: true\npredict_with_generate: true\n' > gen.yaml
	run -2 ft-train gen.yaml --model_name_or_path "$MODEL" --train train.zst --output_dir out
	assert_output --partial "Cannot use --predict_with_generate and --compute_accuracy together"
	for l in dft eaft; do
		run -2 train --compute_accuracy true --use_${l}_loss true
		assert_output --partial "--use_${l}_loss"
	done
	run -2 train --compute_accuracy true --use_asft_loss true --ref_model "$MODEL"
	assert_output --partial "--use_asft_loss"
	run -2 train --compute_accuracy maybe
	local emu="$FT_ROOT/build/libft_cuda_emu.so"
	if [ -f "$emu" ]; then
		FT_CUDA_LIB=$emu run -2 train --compute_accuracy true --device cuda --max_steps 1 --val val.zst
		assert_output --partial "not implemented on --device cuda"
		# --device auto (ft-run's) trains on the CPU then, and says so
		FT_CUDA_LIB=$emu run --separate-stderr train --compute_accuracy true --device auto --max_steps 1 \
			--val val.zst --output_dir auto
		assert_success
		[[ "$stderr" == *"--device auto: training on the CPU: --compute_accuracy runs on the CPU only"* ]]
		jq -e '.eval_accuracy >= 0' auto/eval_results.json
	fi
	# predict_with_generate false with it is fine
	printf 'compute_accuracy: true\npredict_with_generate: false\n' > nogen.yaml
	run ft-train nogen.yaml --model_name_or_path "$MODEL" --train train.zst --output_dir out --max_steps 1 --val val.zst -q
	assert_success
}

# ---- load_best_model_at_end, metric_for_best_model, greater_is_better, early_stopping_steps

# a run whose eval loss rises after the first step and falls later (lr 3e-2
# on the trainer fixture; measured: best at step 6 of 8, at step 1 of 1..4)
best_run() {
	ft-cat --encode < "$FIXTURES/trainer/val.jsonl" > val.zst
	train --val val.zst --max_steps 8 --eval_steps 1 --save_steps 1 --logging_steps 1 --learning_rate 3e-2 \
		-q "$@"
}
# the step of the smallest eval loss in DIR's log (the first of equal ones)
min_step() {
	jq -s -r '[.[] | select(.eval_loss)] | min_by(.eval_loss) | .current_steps' "$1/trainer_log.jsonl"
}

@test "load_best_model_at_end: the final adapter is the best checkpoint's; trainer_state names it" {
	need_jq
	best_run --output_dir out --load_best_model_at_end true
	best=$(min_step out)
	last=$(jq .global_step out/trainer_state.json)
	[ "$best" != "$last" ]   # the run is one where the last model is not the best
	[ "$(jq .best_global_step out/trainer_state.json)" = "$best" ]
	[ "$(jq -r .best_model_checkpoint out/trainer_state.json)" = "out/checkpoint-$best" ]
	[ "$(jq .best_metric out/trainer_state.json)" = \
	  "$(jq -s "[.[] | select(.eval_loss and .current_steps == $best)][0].eval_loss" out/trainer_log.jsonl)" ]
	cmp out/adapter_model.safetensors "out/checkpoint-$best/adapter_model.safetensors"
	run cmp out/adapter_model.safetensors "out/checkpoint-$last/adapter_model.safetensors"
	assert_failure
	# eval_results.json: the best model's evaluation
	[ "$(jq .eval_loss out/eval_results.json)" = "$(jq .best_metric out/trainer_state.json)" ]
	# the checkpoint's own state names itself
	[ "$(jq -r .best_model_checkpoint "out/checkpoint-$best/trainer_state.json")" = "out/checkpoint-$best" ]
	# without it: the last model, best_metric still tracked with a metric given
	best_run --output_dir plain --metric_for_best_model loss
	cmp plain/adapter_model.safetensors "plain/checkpoint-$last/adapter_model.safetensors"
	[ "$(jq .best_global_step plain/trainer_state.json)" = "$best" ]
	best_run --output_dir none
	[ "$(jq .best_metric none/trainer_state.json)" = null ]
}

@test "load_best_model_at_end: full fine-tuning, greater_is_better, metric names with and without eval_" {
	need_jq
	best_run --output_dir full --finetuning_type full --learning_rate 1e-2 --load_best_model_at_end true
	b=$(jq .best_global_step full/trainer_state.json)
	[ "$b" = "$(min_step full)" ]
	cmp full/model.safetensors "full/checkpoint-$b/model.safetensors"
	# greater_is_better on the loss picks the largest
	best_run --output_dir g --load_best_model_at_end true --metric_for_best_model eval_loss --greater_is_better true
	[ "$(jq .best_global_step g/trainer_state.json)" = \
	  "$(jq -s -r '[.[] | select(.eval_loss)] | max_by(.eval_loss) | .current_steps' g/trainer_log.jsonl)" ]
	# a metric not ending in loss defaults to greater is better: accuracy
	best_run --output_dir acc --load_best_model_at_end true --metric_for_best_model accuracy --compute_accuracy true
	[ "$(jq .best_metric acc/trainer_state.json)" = \
	  "$(jq -s '[.[] | select(.eval_accuracy)] | map(.eval_accuracy) | max' acc/trainer_log.jsonl)" ]
}

@test "early_stopping_steps: stops after N evaluations without improvement; the counter in trainer_state" {
	need_jq
	best_run --output_dir e2 --early_stopping_steps 2 --metric_for_best_model loss
	# evals: step 1 best, 2 and 3 worse: stopped at 3
	[ "$(jq .global_step e2/trainer_state.json)" = 3 ]
	[ "$(jq .stateful_callbacks.EarlyStoppingCallback.attributes.early_stopping_patience_counter e2/trainer_state.json)" = 2 ]
	[ "$(jq .stateful_callbacks.EarlyStoppingCallback.args.early_stopping_patience e2/trainer_state.json)" = 2 ]
	best_run --output_dir e3 --early_stopping_steps 3 --load_best_model_at_end true --save_total_limit 2
	[ "$(jq .global_step e3/trainer_state.json)" = 4 ]
	# the rotation keeps the best checkpoint (transformers' _sorted_checkpoints)
	[ -d e3/checkpoint-1 ] && [ -d e3/checkpoint-4 ]
	[ ! -d e3/checkpoint-2 ] && [ ! -d e3/checkpoint-3 ]
	cmp e3/adapter_model.safetensors e3/checkpoint-1/adapter_model.safetensors
	# patience 0: the first evaluation stops it
	best_run --output_dir e0 --early_stopping_steps 0 --metric_for_best_model loss
	[ "$(jq .global_step e0/trainer_state.json)" = 1 ]
	# a long patience never triggers
	best_run --output_dir e9 --early_stopping_steps 9 --metric_for_best_model loss
	[ "$(jq .global_step e9/trainer_state.json)" = 8 ]
}

@test "best model and early stopping: resume bit for bit (best_metric and the counter restored)" {
	need_jq
	args=(--early_stopping_steps 3 --load_best_model_at_end true)
	best_run --output_dir a "${args[@]}"
	mkdir b && cp -r a/checkpoint-1 a/checkpoint-2 b/ && head -n 4 a/trainer_log.jsonl > b/trainer_log.jsonl
	[ "$(jq -c 'select(.current_steps <= 2)' a/trainer_log.jsonl | wc -l)" = 4 ]
	best_run --output_dir b "${args[@]}" --resume_from_checkpoint true
	steady() { jq -c 'del(.elapsed_time, .remaining_time, .throughput)' "$1"; }
	diff <(steady a/trainer_log.jsonl) <(steady b/trainer_log.jsonl)
	for k in global_step best_metric best_global_step stateful_callbacks; do
		[ "$(jq -c .$k a/trainer_state.json)" = "$(jq -c .$k b/trainer_state.json)" ]
	done
	[ "$(jq -r .best_model_checkpoint b/trainer_state.json)" = b/checkpoint-1 ]
	cmp a/adapter_model.safetensors b/adapter_model.safetensors
}

@test "best model settings: transformers' and LLaMA-Factory's refusals (exit 2)" {
	ft-cat --encode < "$FIXTURES/trainer/val.jsonl" > val.zst
	run -2 train --val val.zst --load_best_model_at_end true --eval_strategy steps --save_strategy epoch
	assert_output --partial "requires the save and eval strategy to match"
	run -2 train --val val.zst --load_best_model_at_end true --eval_steps 2 --save_steps 3
	assert_output --partial "round multiple of the evaluation steps"
	run -2 train --load_best_model_at_end true
	assert_output --partial "needs evaluation"
	run -2 train --val val.zst --early_stopping_steps 2
	assert_output --partial "requires --metric_for_best_model"
	run -2 train --val val.zst --early_stopping_steps 2 --metric_for_best_model loss --eval_strategy no
	assert_output --partial "requires evaluation"
	run -2 train --val val.zst --early_stopping_steps -1 --metric_for_best_model loss
	run -2 train --val val.zst --greater_is_better true
	assert_output --partial "needs --metric_for_best_model"
	ft-cat --encode < "$FIXTURES/pref/dpo.jsonl" > dpo.zst
	run -2 train --stage dpo --train dpo.zst --val dpo.zst --load_best_model_at_end true
	assert_output --partial "only --stage pt and sft"
	# a metric the evaluation does not report: transformers' KeyError, exit 1
	run -1 train --val val.zst --max_steps 2 --eval_steps 1 --metric_for_best_model bleu -q
	assert_output --partial "metric_for_best_model 'eval_bleu' is not among the evaluation metrics (eval_loss)"
}
