#!/usr/bin/env bats
# The example Makefiles end to end on the tiny fixture model and a
# LLaMA-Factory demo dataset: tokenize -> pack -> train -> plot -> merge ->
# predict, re-runs redo only what changed.
load helper

ARGS=()
setup() {
	cd "$BATS_TEST_TMPDIR"
	ARGS=(-f "$FT_ROOT/examples/sft-lora.mk" MODEL="$FT_ROOT/tests/fixtures/models/tiny-llama"
		TOKENIZER="$FT_ROOT/tests/fixtures/generate/tokenizer" DATASET=identity
		DATASET_DIR="$SHARED/data/llamafactory" TEMPLATE=default OUT=out EPOCHS=1 CUTOFF_LEN=64
		MAX_SAMPLES=40 PREDICT_SAMPLES=3 MAX_NEW_TOKENS=4 LOGGING_STEPS=1)
}

@test "examples/sft-lora.mk runs every stage and re-runs only what changed" {
	skip_without_shared
	run make -j2 "${ARGS[@]}"
	assert_success
	for f in tokens.ftb.zst batches/manifest.json adapter/adapter_model.safetensors \
		adapter/training_loss.png loss.svg merged/config.json merged/model.safetensors \
		predict/generated_predictions.jsonl predict/predict_results.json; do
		[ -s "out/$f" ] || { echo "missing out/$f"; false; }
	done
	run make "${ARGS[@]}"
	assert_success
	refute_output --partial "bin/ft-"
	run make "${ARGS[@]}" LR=1e-3
	assert_success
	assert_output --partial "ft-train"
	refute_output --partial "ft-tokenize"
	refute_output --partial "ft-pack"
}

@test "examples/sft-lora.mk names the missing parameter" {
	run make -f "$FT_ROOT/examples/sft-lora.mk" DATASET=x
	assert_failure
	assert_output --partial "set MODEL="
}

@test "examples/pt.mk: continued pretraining with a validation split and eval loss" {
	skip_without_shared
	run make -f "$FT_ROOT/examples/pt.mk" MODEL="$FT_ROOT/tests/fixtures/models/tiny-llama" \
		TOKENIZER="$FT_ROOT/tests/fixtures/generate/tokenizer" DATASET=c4_demo \
		DATASET_DIR="$SHARED/data/llamafactory" OUT=pt CUTOFF_LEN=32 MAX_SAMPLES=3 VAL_SIZE=0.2
	assert_success
	[ -s pt/model/model.safetensors ]
	[ -s pt/loss.svg ]
	run cat pt/model/all_results.json
	assert_output --partial '"eval_loss"'
}
