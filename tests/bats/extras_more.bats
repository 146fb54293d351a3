#!/usr/bin/env bats
# More of ft-train's LLaMA-Factory extras (docs/EXTRAS.md): the DFT and
# EAFT losses, layer-wise GaLore.  Parity runs against
# tests/fixtures/extras/sft_losses.txt (tests/reference/make_sftloss_fixtures.py:
# LLaMA-Factory's own loss functions in transformers' accumulation loop) and
# layerwise_losses.txt (make_layerwise_fixtures.py), the flags, the refusals.
load helper

MODEL="$FIXTURES/models/tiny-llama"
export OMP_NUM_THREADS=1

setup() {
	cd "$BATS_TEST_TMPDIR"
	command -v ft-cat >/dev/null || { echo "ft-cat is not built (run make)" >&2; return 1; }
	ft-cat --encode < "$FIXTURES/trainer/train.jsonl" > train.zst
}
need_jq() { command -v jq >/dev/null || skip "jq is not installed"; }
train() { ft-train --model_name_or_path "$MODEL" --train train.zst --output_dir out "$@"; }

# The 10-step parity run of extras.bats against sft_losses.txt's line $1:
# every step loss within TOL relative (default 1e-5, the bound of the plain
# parity runs: the same float32 arithmetic summed in another order).
parity_run() {
	local name=$1 mode=$2 tol=${TOL:-1e-5}; shift 2
	ft-cat --encode < "$FIXTURES/trainer/parity20.jsonl" > p20.zst
	run ft-train --model_name_or_path "$MODEL" --train p20.zst --output_dir "$name" --finetuning_type "$mode" \
		--weight_decay 0.1 --max_grad_norm 1.0 --lr_scheduler_type cosine --warmup_steps 2 \
		--gradient_accumulation_steps 2 --num_train_epochs 1 --logging_steps 1 -q "$@"
	assert_success
	jq -r 'select(.loss) | .loss' "$name/trainer_log.jsonl" > got
	grep "^$name " "$FIXTURES/extras/sft_losses.txt" | tr ' ' '\n' | tail -n +2 > want
	[ "$(wc -l < got)" = 10 ]
	paste got want | awk -v tol="$tol" '{ d = ($1 - $2) / $2; if (d < 0) d = -d; if (d > tol + 0) { print "step " NR ": " $1 " vs " $2; bad = 1 } } END { exit bad }'
}

# ---- DFT / EAFT ---------------------------------------------------------------

@test "DFT loss: parity with LLaMA-Factory's dft_loss_func (full, and LoRA)" {
	need_jq
	parity_run dft_full full --learning_rate 1e-3 --use_dft_loss
	parity_run dft_lora lora --learning_rate 2e-3 --adapter_name_or_path "$FIXTURES/parity/llama-lora-init" \
		--use_dft_loss
}

# EAFT's weight is the top-20 entropy, computed in double here and in
# float32 by torch (~1e-7 apart): the same 1e-5 bound.
@test "EAFT loss: parity with LLaMA-Factory's eaft_loss_func (alpha 1, and 0.5 on LoRA)" {
	need_jq
	parity_run eaft_full full --learning_rate 1e-3 --use_eaft_loss
	parity_run eaft_lora lora --learning_rate 2e-3 --adapter_name_or_path "$FIXTURES/parity/llama-lora-init" \
		--use_eaft_loss --eaft_alpha 0.5
}

@test "DFT/EAFT: the eval loss is the weighted loss too (transformers' prediction_step)" {
	need_jq
	run train --finetuning_type lora --max_steps 2 --logging_steps 1 --val train.zst --eval_steps 2 -q
	assert_success
	plain=$(jq -r 'select(.eval_loss) | .eval_loss' out/trainer_log.jsonl | tail -1)
	rm -rf out
	run train --finetuning_type lora --max_steps 2 --logging_steps 1 --val train.zst --eval_steps 2 -q \
		--use_dft_loss
	assert_success
	dft=$(jq -r 'select(.eval_loss) | .eval_loss' out/trainer_log.jsonl | tail -1)
	# p(target) < 1 weights every token down
	awk -v a="$dft" -v b="$plain" 'BEGIN { exit !(a > 0 && a < b) }'
}

@test "DFT/EAFT: gradient checkpointing gives the same weights bit for bit" {
	for l in dft eaft; do
		run train --finetuning_type lora --max_steps 3 --use_${l}_loss -q --output_dir a$l
		assert_success
		run train --finetuning_type lora --max_steps 3 --use_${l}_loss -q --output_dir b$l --gradient_checkpointing
		assert_success
		cmp a$l/adapter_model.safetensors b$l/adapter_model.safetensors
	done
}

@test "DFT/EAFT: DFT over EAFT with a note, ignored by other stages, a bad boolean" {
	run train --finetuning_type lora --max_steps 1 --use_dft_loss --use_eaft_loss
	assert_success
	assert_output --partial "--use_dft_loss takes precedence over --use_eaft_loss"
	# (the sft batches are then refused for pt, after the note)
	run train --finetuning_type lora --max_steps 1 --use_dft_loss --stage pt
	assert_output --partial "--use_dft_loss is ignored by --stage pt"
	run -2 train --use_dft_loss maybe
	assert_output --partial "use_dft_loss"
}

# ---- GaLore layer-wise ------------------------------------------------------

# 10 steps of one micro-batch (layer-wise GaLore refuses accumulation),
# against layerwise_losses.txt's line $1 (make_layerwise_fixtures.py:
# LLaMA-Factory's per-param optimizers and schedulers in gradient hooks).
layerwise_run() {
	local name=$1 tol=${TOL:-1e-5}; shift
	ft-cat --encode < "$FIXTURES/trainer/parity20.jsonl" > p20.zst
	run ft-train --model_name_or_path "$MODEL" --train p20.zst --output_dir "$name" --finetuning_type full \
		--weight_decay 0.1 --lr_scheduler_type cosine --warmup_steps 2 --max_steps 10 --logging_steps 1 \
		--learning_rate 1e-3 --use_galore --galore_layerwise --galore_rank 4 -q "$@"
	assert_success
	jq -r 'select(.loss) | .loss' "$name/trainer_log.jsonl" > got
	grep "^$name " "$FIXTURES/extras/layerwise_losses.txt" | tr ' ' '\n' | tail -n +2 > want
	[ "$(wc -l < got)" = 10 ]
	paste got want | awk -v tol="$tol" '{ d = ($1 - $2) / $2; if (d < 0) d = -d; if (d > tol + 0) { print "step " NR ": " $1 " vs " $2; bad = 1 } } END { exit bad }'
}

# Same bounds as extras.bats' GaLore runs: 1e-5 with one projection, 1e-3
# after re-projections (the singular vectors' signs are each LAPACK's own).
@test "GaLore layer-wise: parity with LLaMA-Factory's per-param hooks (clipping has no effect)" {
	need_jq
	layerwise_run galore_lw_full
	TOL=1e-3 layerwise_run galore_lw_reproj --galore_update_interval 3
	# max_grad_norm does nothing there: the same losses with a tiny one
	rm -rf galore_lw_full
	TOL=1e-5 layerwise_run galore_lw_full --max_grad_norm 1e-3
}

@test "GaLore layer-wise: the note, and LLaMA-Factory's refusal of accumulation" {
	run train --finetuning_type full --use_galore --galore_layerwise --max_steps 1
	assert_success
	assert_output --partial "--galore_layerwise: no gradient clipping"
	run -2 train --finetuning_type full --use_galore --galore_layerwise --gradient_accumulation_steps 2
	assert_output --partial "Per-layer GaLore does not support gradient accumulation"
}

@test "GaLore layer-wise under mpirun: LLaMA-Factory's refusal" {
	command -v mpirun >/dev/null || skip "mpirun is absent"
	[ -f "$FT_ROOT/build/libft_mpi.so" ] || skip "build/libft_mpi.so is not built (make with mpicc present)"
	run mpirun --oversubscribe --allow-run-as-root -np 2 ft-train --model_name_or_path "$MODEL" \
		--train train.zst --output_dir out --finetuning_type full --use_galore --galore_layerwise --max_steps 1
	assert_failure
	assert_output --partial "Distributed training does not support layer-wise GaLore"
}
