#!/usr/bin/env bats
# ft-train's settings of transformers' Seq2SeqTrainingArguments and of
# LLaMA-Factory's FinetuningArguments for the pt and sft trainers
# (tools/ft-train/hfargs.c, docs/TRAINING.md): --label_smoothing_factor.
# Parity runs against tests/fixtures/hfargs/label_smoothing.txt
# (tests/reference/make_hfargs_fixtures.py: transformers' own LabelSmoother
# in its accumulation loop).
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
	fi
	# predict_with_generate false with it is fine
	printf 'compute_accuracy: true\npredict_with_generate: false\n' > nogen.yaml
	run ft-train nogen.yaml --model_name_or_path "$MODEL" --train train.zst --output_dir out --max_steps 1 --val val.zst -q
	assert_success
}
