#!/usr/bin/env bats
# More of ft-train's LLaMA-Factory extras (docs/EXTRAS.md): the DFT and
# EAFT losses, layer-wise GaLore, APOLLO.  Parity runs against
# tests/fixtures/extras/sft_losses.txt (tests/reference/make_sftloss_fixtures.py:
# LLaMA-Factory's own loss functions in transformers' accumulation loop) and
# layerwise_losses.txt (make_layerwise_fixtures.py) and apollo_losses.txt
# (make_apollo_fixtures.py: apollo-torch's APOLLOAdamW), the flags, the refusals;
# Mixture-of-Depths, refused everywhere with one reason.
load helper

MODEL="$FIXTURES/models/tiny-llama"
export OMP_NUM_THREADS=1

setup() {
	cd "$BATS_TEST_TMPDIR"
	command -v ft-cat >/dev/null || { echo "ft-cat is not built (run make)" >&2; return 1; }
	ft-cat --encode < "$FIXTURES/trainer/train.jsonl" > train.zst
}
train() { ft-train --model_name_or_path "$MODEL" --train train.zst --output_dir out "$@"; }

# parity_run (helper.bash) against sft_losses.txt (or REF=extras/...): every
# step loss within TOL relative (default 1e-5, the bound of the plain parity
# runs: the same float32 arithmetic summed in another order)
PARITY_REF=extras/sft_losses.txt

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
# ---- ASFT -------------------------------------------------------------------------

# The reference's logits come from the same float32 model code as the
# policy's, the KL in double here and float32 in torch (~1e-7 relative):
# the plain runs' 1e-5 bound.  asft_lora's alpha 1 makes the KL term ~5%
# of the loss by step 10, so a wrong KL or its gradient shows.
@test "ASFT loss: parity with LLaMA-Factory's asft_loss_func (full: a frozen copy; LoRA: --ref_model)" {
	need_jq
	REF=extras/asft_losses.txt parity_run asft_full full --learning_rate 1e-3 --use_asft_loss
	REF=extras/asft_losses.txt parity_run asft_lora lora --learning_rate 2e-3 \
		--adapter_name_or_path "$FIXTURES/parity/llama-lora-init" --use_asft_loss --asft_alpha 1.0 \
		--ref_model "$MODEL"
}

@test "ASFT: gradient checkpointing gives the same weights bit for bit; the eval loss is ASFT's" {
	need_jq
	run train --finetuning_type full --max_steps 2 --use_asft_loss -q --output_dir a
	assert_success
	run train --finetuning_type full --max_steps 2 --use_asft_loss -q --output_dir b --gradient_checkpointing
	assert_success
	cmp a/model.safetensors b/model.safetensors
	# before any step the model is its reference: KL 0, so the eval loss is
	# the mean of the batches' mean DFT losses (the fixture's batches hold
	# equal label counts: the token-weighted DFT eval loss, to rounding)
	run train --finetuning_type full --do_train=false --do_eval --val train.zst --use_asft_loss -q --output_dir e
	assert_success
	asft=$(jq -r .eval_loss e/eval_results.json)
	run train --finetuning_type full --do_train=false --do_eval --val train.zst --use_dft_loss -q --output_dir d
	assert_success
	dft=$(jq -r .eval_loss d/eval_results.json)
	awk -v a="$asft" -v b="$dft" 'BEGIN { d = (a - b) / b; if (d < 0) d = -d; exit !(a > 0 && d < 1e-6) }'
}

@test "ASFT: LoRA needs --ref_model, not with DFT/EAFT, ignored by other stages, a bad alpha" {
	run train --finetuning_type lora --max_steps 1 --use_asft_loss
	assert_failure 2
	assert_output --partial "--use_asft_loss --finetuning_type lora needs --ref_model DIR"
	run train --finetuning_type full --max_steps 1 --use_asft_loss --use_dft_loss
	assert_failure 2
	assert_output --partial "--use_asft_loss with --use_dft_loss"
	# (the sft batches are then refused for pt, after the note)
	run train --stage pt --finetuning_type lora --max_steps 1 --use_asft_loss --output_dir pt
	assert_output --partial "--use_asft_loss is ignored by --stage pt"
	run train --finetuning_type full --max_steps 1 --use_asft_loss --asft_alpha x
	assert_failure 2
}

# ---- OFT --------------------------------------------------------------------------

# oft_losses.txt (tests/reference/make_oft_fixtures.py): PEFT's OFT from the
# oft-init adapter (random rotations, blocks adjusted 24 -> 16 on 64 inputs),
# 10 steps; the rotations are b x b products in double here, float32 in
# torch: the plain runs' 1e-5 bound on the losses and the gradient norms.
@test "OFT: parity with PEFT's OFTConfig (losses and gradient norms, 10 steps from a PEFT adapter)" {
	need_jq
	REF=extras/oft_losses.txt parity_run oft oft --learning_rate 2e-3 --adapter_name_or_path "$FIXTURES/extras/oft-init"
	jq -r 'select(.loss) | .grad_norm' oft/trainer_log.jsonl > got
	grep "^oft_gnorm " "$FIXTURES/extras/oft_losses.txt" | tr ' ' '\n' | tail -n +2 > want
	paste got want | awk '{ d = ($1 - $2) / $2; if (d < 0) d = -d; if (d > 1e-5) { print "step " NR ": " $1 " vs " $2; bad = 1 } } END { exit bad }'
}

@test "OFT: a new adapter saved as PEFT's, resumed, checkpointing bit for bit, on a 4-bit base" {
	need_jq
	run train --finetuning_type oft --lora_target all --max_steps 2 -q --learning_rate 1e-2 --output_dir a
	assert_success
	[ "$(jq -r .peft_type a/adapter_config.json)" = OFT ]
	[ "$(jq -r .oft_block_size a/adapter_config.json)" = 32 ]
	[ "$(jq -r .use_cayley_neumann a/adapter_config.json)" = true ]
	[ "$(jq -r '.target_modules | length' a/adapter_config.json)" = 7 ]
	run train --finetuning_type oft --lora_target all --max_steps 2 -q --learning_rate 1e-2 --output_dir b \
		--gradient_checkpointing
	assert_success
	cmp a/adapter_model.safetensors b/adapter_model.safetensors
	# training on from the saved adapter, and through ft-merge
	run train --finetuning_type oft --max_steps 1 -q --adapter_name_or_path a --output_dir c
	assert_success
	run ft-merge -q --model_name_or_path "$MODEL" --adapter_name_or_path c --export_dir merged
	assert_success
	[ -s merged/model.safetensors ]
	# QLoRA's 4-bit base: the rotation runs before the quantized layer
	run train --finetuning_type oft --lora_target q_proj,v_proj --quantization_bit 4 --max_steps 2 -q \
		--output_dir q
	assert_success
	[ "$(jq -r '.target_modules | length' q/adapter_config.json)" = 2 ]
}

@test "OFT: refusals and notes (rank and block size, LoRA adapter, GaLore, dropout, oft_target)" {
	run train --finetuning_type oft --oft_rank 4 --max_steps 1
	assert_failure 2
	assert_output --partial "You can only specify either r or oft_block_size"
	run train --finetuning_type oft --adapter_name_or_path "$FIXTURES/parity/llama-lora-init" --max_steps 1
	assert_failure
	assert_output --partial "a LoRA adapter cannot be trained further with finetuning type oft"
	run train --finetuning_type oft --use_galore --max_steps 1
	assert_failure 2
	assert_output --partial "--use_galore with --finetuning_type oft is not implemented"
	run train --finetuning_type oft --max_steps 1 --output_dir n --module_dropout 0.1 --oft_target q_proj \
		--oft_rank 2 --oft_block_size 0
	assert_success
	assert_output --partial "--module_dropout 0.1 has no effect"
	assert_output --partial "never reads oft_target"
	[ "$(jq -r .r n/adapter_config.json)" = 2 ]
	run train --finetuning_type oft --lora_dropout 0.1 --max_steps 1
	assert_failure 2
}

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

@test "GaLore and APOLLO layer-wise under mpirun: LLaMA-Factory's refusal" {
	command -v mpirun >/dev/null || skip "mpirun is absent"
	[ -f "$FT_ROOT/build/libft_mpi.so" ] || skip "build/libft_mpi.so is not built (make with mpicc present)"
	run mpirun --oversubscribe --allow-run-as-root -np 2 ft-train --model_name_or_path "$MODEL" \
		--train train.zst --output_dir out --finetuning_type full --use_galore --galore_layerwise --max_steps 1
	assert_failure
	assert_output --partial "Distributed training does not support layer-wise GaLore"
	run mpirun --oversubscribe --allow-run-as-root -np 2 ft-train --model_name_or_path "$MODEL" \
		--train train.zst --output_dir out --finetuning_type full --use_apollo --apollo_layerwise --max_steps 1
	assert_failure
	assert_output --partial "Distributed training does not support layer-wise APOLLO"
}

# ---- APOLLO -------------------------------------------------------------------

# The random projections are torch.randn from torch's mt19937, reproduced
# (SLEEF's log/sin/cos in torch's AVX2 path against libm here: ~1 ulp in
# P), so re-projections carry no sign choice: 1e-5 throughout (measured
# 1.3e-7, 9.6e-8 with new projections every 3 steps, 1.1e-7 layer-wise).
apollo_run() {
	local name=$1; shift
	ft-cat --encode < "$FIXTURES/trainer/parity20.jsonl" > p20.zst
	run ft-train --model_name_or_path "$MODEL" --train p20.zst --output_dir "$name" --finetuning_type full \
		--weight_decay 0.1 --lr_scheduler_type cosine --warmup_steps 2 --logging_steps 1 \
		--learning_rate 1e-3 --use_apollo -q "$@"
	assert_success
	jq -r 'select(.loss) | .loss' "$name/trainer_log.jsonl" > got
	grep "^$name " "$FIXTURES/extras/apollo_losses.txt" | tr ' ' '\n' | tail -n +2 > want
	[ "$(wc -l < got)" = 10 ]
	paste got want | awk '{ d = ($1 - $2) / $2; if (d < 0) d = -d; if (d > 1e-5) { print "step " NR ": " $1 " vs " $2; bad = 1 } } END { exit bad }'
}

@test "APOLLO: parity with apollo-torch's APOLLOAdamW (channel, tensor + scale_front + re-projections, layer-wise, svd)" {
	need_jq
	local acc=(--max_grad_norm 1.0 --gradient_accumulation_steps 2 --num_train_epochs 1)
	apollo_run apollo_full "${acc[@]}" --apollo_rank 4
	apollo_run apollo_tensor "${acc[@]}" --apollo_rank 8 --apollo_update_interval 3 --apollo_scale 16 \
		--apollo_scale_type tensor --apollo_scale_front
	apollo_run apollo_lw --max_steps 10 --apollo_rank 4 --apollo_layerwise
	# svd: GaLore's projector, one projection in the run (its signs are
	# each LAPACK's choice only from a re-projection on)
	apollo_run apollo_svd "${acc[@]}" --apollo_rank 4 --apollo_proj svd
}

@test "APOLLO: resume across a re-projection continues bit for bit" {
	need_jq
	args=(--finetuning_type full --use_apollo --apollo_rank 4 --apollo_update_interval 3 --learning_rate 1e-3
	      --max_steps 8 --logging_steps 1 --save_steps 4 -q)
	run train "${args[@]}"
	assert_success
	[ -f out/checkpoint-4/apollo_optimizer.safetensors ]
	mkdir b && cp -r out/checkpoint-4 b/ && head -n 4 out/trainer_log.jsonl > b/trainer_log.jsonl
	run ft-train --model_name_or_path "$MODEL" --train train.zst --output_dir b "${args[@]}" \
		--resume_from_checkpoint b/checkpoint-4
	assert_success
	cmp out/model.safetensors b/model.safetensors
}

@test "APOLLO: refusals, as LLaMA-Factory's and where ft differs" {
	run -2 train --use_apollo
	assert_output --partial "cannot use LoRA with GaLore, APOLLO or BAdam together"
	run -2 train --finetuning_type full --use_apollo --use_galore
	assert_output --partial "cannot use GaLore, APOLLO or BAdam together"
	run -2 train --finetuning_type full --use_apollo --apollo_layerwise --gradient_accumulation_steps 2
	assert_output --partial "Per-layer APOLLO does not support gradient accumulation"
	run -2 train --finetuning_type full --use_apollo --apollo_proj qr
	assert_output --partial "svd or random"
	run -2 train --finetuning_type full --use_apollo --apollo_proj_type left
	assert_output --partial "channel scaling fails on that side"
	run -2 train --finetuning_type full --use_apollo --apollo_scale_type row
	assert_output --partial "channel or tensor"
	run -2 train --finetuning_type full --use_apollo --optim adamw_torch_fused
	assert_output --partial "APOLLOAdamW"
	run -2 train --finetuning_type full --use_apollo --apollo_rank 0
	assert_output --partial "must be >= 1"
}

# LLaMA-Factory's MoD is the mixture-of-depth package's, which does not run
# under the transformers LLaMA-Factory requires (docs/EXTRAS.md,
# tests/reference/check_mod_package.py): the flag, a config key and a
# checkpoint it saved are refused with that reason, not "unknown option".
@test "Mixture-of-Depths: refused by ft-train, in a config, and as a saved MoD model, with the reason" {
	run -2 train --finetuning_type full --mixture_of_depths convert
	assert_output --partial "--mixture_of_depths is not supported: Mixture-of-Depths: its package (mixture-of-depth 1.2.0"
	assert_output --partial "so ft has no behaviour to match"
	refute_output --partial "unknown option"
	printf 'finetuning_type: full\nmixture_of_depths: load\n' > c.yaml
	run -2 ft-train c.yaml --model_name_or_path "$MODEL" --train train.zst --output_dir out
	assert_output --partial "c.yaml:2: 'mixture_of_depths' is not supported: Mixture-of-Depths"
	[ ! -e out ]
	need_jq
	mkdir mod && cp "$MODEL"/* mod/
	jq '.architectures = ["LlamaMoDForCausalLM"]' "$MODEL/config.json" > mod/config.json
	run -1 ft-train --model_name_or_path mod --train train.zst --output_dir out2 --finetuning_type full
	assert_output --partial "architecture LlamaMoDForCausalLM is a Mixture-of-Depths model, which ft does not run"
	run -1 ft-generate --model_name_or_path mod --tokenizer "$FT_ROOT/tests/fixtures/generate/tokenizer" \
		--template default --max_new_tokens 2 <<< '{"prompt": "hi"}'
	assert_output --partial "is a Mixture-of-Depths model"
}
