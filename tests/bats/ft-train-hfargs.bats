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
