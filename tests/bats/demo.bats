#!/usr/bin/env bats
# make demo in its reduced mode: the whole workflow runs offline on the
# embedded default, every artifact exists, and the tuned model beats the
# base on the held-out prompts (the script fails otherwise).
load helper

@test "demo (DEMO_FAST=1): pretrain, LoRA sft, plot, merge, predict; tuned beats base" {
	run env DEMO_FAST=1 DEMO_OUT="$BATS_TEST_TMPDIR/demo" "$FT_ROOT/scripts/demo.sh"
	assert_success
	assert_output --regexp "demo: base [0-9]+/6 -> tuned [1-9][0-9]*/6"
	for f in base/model.safetensors lora/adapter_model.safetensors lora/adapter_config.json \
		lora/trainer_log.jsonl lora/training_loss.png merged/model.safetensors \
		predict-merged/generated_predictions.jsonl predict-merged/predict_results.json; do
		[ -s "$BATS_TEST_TMPDIR/demo/$f" ] || { echo "missing $f"; false; }
	done
}
