#!/usr/bin/env bats
# ft-train's LLaMA-Factory extras (docs/EXTRAS.md): NEFTune, LoRA+, LLaMA
# Pro, BAdam.  Parity runs against tests/fixtures/extras/losses.txt
# (tests/reference/make_extras_fixtures.py: PEFT, LLaMA-Factory's optimizer
# groups and the badam package's BlockOptimizer), the flags, the refusals,
# and resume equality for the state the extras add.
load helper

MODEL="$FIXTURES/models/tiny-llama"
export OMP_NUM_THREADS=1

setup() {
	cd "$BATS_TEST_TMPDIR"
	command -v ft-cat >/dev/null || { echo "ft-cat is not built (run make)" >&2; return 1; }
	ft-cat --encode < "$FIXTURES/trainer/train.jsonl" > train.zst
}
steady() { jq -c '{current_steps, total_steps, loss, eval_loss, lr, epoch, grad_norm, total_tokens}' "$1"; }
train() { ft-train --model_name_or_path "$MODEL" --train train.zst --output_dir out "$@"; }

# parity_run (helper.bash) against losses.txt: every step loss within 1e-5
# relative (the same bound as the plain lora/freeze/full parity runs:
# float32 sums in another order)
PARITY_REF=extras/losses.txt

@test "--help lists the extras" {
	run ft-train --help
	assert_success
	assert_output --partial "--neftune_noise_alpha"
	assert_output --partial "--loraplus_lr_ratio"
	assert_output --partial "--use_llama_pro"
	assert_output --partial "--badam_switch_mode"
}

# ---- LoRA+ ------------------------------------------------------------------

@test "LoRA+: parity with LLaMA-Factory's loraplus param groups (ratio 16)" {
	need_jq
	parity_run loraplus lora --learning_rate 2e-3 --adapter_name_or_path "$FIXTURES/parity/llama-lora-init" \
		--loraplus_lr_ratio 16
}

@test "LoRA+: ratio 1 is plain LoRA, bit for bit; the embedding lr is accepted" {
	need_jq
	run train --learning_rate 5e-3 --max_steps 3 --logging_steps 1 -q
	assert_success
	run ft-train --model_name_or_path "$MODEL" --train train.zst --output_dir b --learning_rate 5e-3 \
		--max_steps 3 --logging_steps 1 -q --loraplus_lr_ratio 1 --loraplus_lr_embedding 1e-5
	assert_success
	diff <(steady out/trainer_log.jsonl) <(steady b/trainer_log.jsonl)
	cmp out/adapter_model.safetensors b/adapter_model.safetensors
}

@test "LoRA+: refused outside LoRA, negative ratios refused" {
	run -2 train --finetuning_type full --loraplus_lr_ratio 16
	assert_output --partial "only valid for LoRA training"
	run -2 train --loraplus_lr_ratio -1
	assert_output --partial "must be >= 0"
	run -2 train --loraplus_lr_ratio x
	assert_output --partial "loraplus_lr_ratio"
}

@test "LoRA+: resume from a checkpoint matches the uninterrupted run" {
	need_jq
	args=(--learning_rate 5e-3 --max_steps 8 --logging_steps 1 --save_steps 4 --loraplus_lr_ratio 8 -q)
	resumes_exactly 4 adapter_model.safetensors "${args[@]}"
}

# ---- NEFTune ----------------------------------------------------------------

@test "NEFTune: noise changes training, not evaluation; resume continues the noise exactly" {
	need_jq
	ft-cat --encode < "$FIXTURES/trainer/val.jsonl" > val.zst
	args=(--learning_rate 5e-3 --max_steps 8 --logging_steps 1 --save_steps 4 -q)
	run train "${args[@]}" --neftune_noise_alpha 5
	assert_success
	run ft-train --model_name_or_path "$MODEL" --train train.zst --output_dir plain "${args[@]}"
	assert_success
	# the first step's loss is already computed on noisy embeddings
	[ "$(jq -s '.[0].loss' out/trainer_log.jsonl)" != "$(jq -s '.[0].loss' plain/trainer_log.jsonl)" ]
	mkdir b && cp -r out/checkpoint-4 b/ && head -n 4 out/trainer_log.jsonl > b/trainer_log.jsonl
	run ft-train --model_name_or_path "$MODEL" --train train.zst --output_dir b "${args[@]}" \
		--neftune_noise_alpha 5 --resume_from_checkpoint b/checkpoint-4
	assert_success
	diff <(steady out/trainer_log.jsonl) <(steady b/trainer_log.jsonl)
	cmp out/adapter_model.safetensors b/adapter_model.safetensors
	# evaluation of the same adapter is noise free: equal with and without the flag
	run ft-train --model_name_or_path "$MODEL" --adapter_name_or_path out --val val.zst --do_eval \
		--output_dir e1 -q
	assert_success
	run ft-train --model_name_or_path "$MODEL" --adapter_name_or_path out --val val.zst --do_eval \
		--output_dir e2 -q --neftune_noise_alpha 5
	assert_success
	[ "$(jq .eval_loss e1/eval_results.json)" = "$(jq .eval_loss e2/eval_results.json)" ]
}

@test "NEFTune: negative alpha refused; alpha 0 is no noise; works with full tuning" {
	need_jq
	run -2 train --neftune_noise_alpha -1
	assert_output --partial "neftune_noise_alpha must be >= 0"
	run train --max_steps 2 --logging_steps 1 -q --neftune_noise_alpha 0
	assert_success
	run ft-train --model_name_or_path "$MODEL" --train train.zst --output_dir b --max_steps 2 --logging_steps 1 -q
	assert_success
	diff <(steady out/trainer_log.jsonl) <(steady b/trainer_log.jsonl)
	run ft-train --model_name_or_path "$MODEL" --train train.zst --output_dir full --finetuning_type full \
		--max_steps 2 -q --neftune_noise_alpha 5
	assert_success
}

# ---- LLaMA Pro --------------------------------------------------------------

@test "LLaMA Pro: freeze tuning trains every stride-th layer (4 layers, 2 expanded: 1 and 3)" {
	need_jq
	jq '.num_hidden_layers = 4' "$MODEL/config.json" > cfg4.json
	run ft-train --train_from_scratch --config cfg4.json --finetuning_type full --train train.zst \
		--output_dir base --max_steps 1 -q
	assert_success
	run ft-train --model_name_or_path base --train train.zst --output_dir out --finetuning_type freeze \
		--use_llama_pro --freeze_trainable_layers 2 --learning_rate 1e-2 --max_steps 2 -q
	assert_success
	# the optimizer state names exactly the trainable tensors (its
	# safetensors header: 8-byte length, then JSON)
	f=out/checkpoint-2/optimizer.safetensors
	keys=$(tail -c +9 "$f" | head -c "$(od -An -t u8 -N8 "$f" | tr -d ' ')" | jq -r 'keys[]')
	layers=$(grep -o 'model\.layers\.[0-9]*\.' <<< "$keys" | sort -u | tr '\n' ' ')
	[ "$layers" = "model.layers.1. model.layers.3. " ] || { echo "trained: $layers"; return 1; }
	run ft-train --model_name_or_path base --train train.zst --output_dir out3 --finetuning_type freeze \
		--use_llama_pro --freeze_trainable_layers 3 --max_steps 1 -q
	[ "$status" -eq 2 ]
	assert_output --partial "divisible by freeze_trainable_layers 3"
}

@test "LLaMA Pro: refused with full tuning, with LoRA (not yet) and with negative layers" {
	run -2 train --finetuning_type full --use_llama_pro
	assert_output --partial "only valid for Freeze or LoRA training"
	run -2 train --finetuning_type lora --use_llama_pro
	assert_output --partial "not implemented in ft yet"
	run -2 train --finetuning_type freeze --use_llama_pro --freeze_trainable_layers -1
	assert_output --partial "positive --freeze_trainable_layers"
}

# ---- several adapters, create_new_adapter -----------------------------------

# LLaMA-Factory's init_adapter: all but the last adapter merged, the last
# trained further (make_multi_adapter_fixtures.py runs PEFT's
# merge_and_unload, then from_pretrained trainable); 1e-5 as above
@test "adapter list: the first merged and the last trained, as LLaMA-Factory (parity with PEFT)" {
	need_jq
	REF=extras/multi_adapter_losses.txt parity_run merge_resume lora --learning_rate 2e-3 \
		--adapter_name_or_path "$FIXTURES/parity/llama-lora-grad,$FIXTURES/parity/llama-lora-init"
}

# the same runs spelled out with ft-merge first: the merge is the same
# float32 W + s B A on both sides, so everything is bit for bit
@test "adapter list and create_new_adapter: the runs on an ft-merge'd base, bit for bit; refusals" {
	need_jq
	a="$FIXTURES/parity/llama-lora-grad" b="$FIXTURES/extras/llama-dora-init"
	common=(--max_steps 3 --logging_steps 1 --learning_rate 5e-3 -q)
	run ft-merge -q --model_name_or_path "$MODEL" --adapter_name_or_path "$a" --export_dir ma
	assert_success
	run train "${common[@]}" --adapter_name_or_path "$a,$b"
	assert_success
	run ft-train --model_name_or_path ma --train train.zst --output_dir onma "${common[@]}" --adapter_name_or_path "$b"
	assert_success
	cmp out/adapter_model.safetensors onma/adapter_model.safetensors
	diff <(steady out/trainer_log.jsonl) <(steady onma/trainer_log.jsonl)
	[ "$(jq .use_dora out/adapter_config.json)" = true ]   # the last adapter's own config
	# create_new_adapter: every adapter merged, a new one from the flags
	run ft-merge -q --model_name_or_path "$MODEL" --adapter_name_or_path "$a,$b" --export_dir mab
	assert_success
	run ft-train --model_name_or_path "$MODEL" --train train.zst --output_dir new "${common[@]}" \
		--adapter_name_or_path "$a,$b" --create_new_adapter --lora_rank 2 --lora_target all
	assert_success
	run ft-train --model_name_or_path mab --train train.zst --output_dir onmab "${common[@]}" \
		--lora_rank 2 --lora_target all
	assert_success
	cmp new/adapter_model.safetensors onmab/adapter_model.safetensors
	[ "$(jq -c '[.r, .use_dora]' new/adapter_config.json)" = '[2,false]' ]
	# LLaMA-Factory's refusals, and where ft has the list
	run -2 train --quantization_bit 4 --adapter_name_or_path "$a,$b"
	assert_output --partial "Quantized model only accepts a single adapter. Merge them first."
	run -2 train --quantization_bit 4 --adapter_name_or_path "$a" --create_new_adapter
	assert_output --partial "Cannot create new adapter upon a quantized model."
	run -2 train --stage dpo --adapter_name_or_path "$a,$b"
	assert_output --partial "not implemented in ft yet (pt and sft)"
}

# ---- freeze_extra_modules ---------------------------------------------------

# make_freeze_extra_fixtures.py transcribes LLaMA-Factory's
# _setup_freeze_tuning (a parameter trains when any trainable name is a
# substring of its own: "norm" also trains every layer's norms); 1e-5 as
# the other parity runs
@test "freeze_extra_modules: parity with LLaMA-Factory's freeze tuning (norm; embed_tokens,norm,lm_head; a tied embedding)" {
	need_jq
	export REF=extras/freeze_extra_losses.txt
	fx=(--learning_rate 1e-3 --freeze_trainable_layers 1)
	parity_run fx_norm freeze "${fx[@]}" --freeze_extra_modules norm
	parity_run fx_all_mlp freeze "${fx[@]}" --freeze_trainable_modules mlp \
		--freeze_extra_modules embed_tokens,norm,lm_head
	MODEL="$FIXTURES/models/tiny-qwen2" parity_run fx_qwen2_emb freeze "${fx[@]}" --freeze_extra_modules embed_tokens
	# the extras trained: without them the numbers differ
	REF=trainer/parity_losses.txt parity_run freeze freeze "${fx[@]}"
	run cmp -s <(jq -c .loss freeze/trainer_log.jsonl) <(jq -c .loss fx_norm/trainer_log.jsonl)
	assert_failure
}

@test "freeze_extra_modules: resume bit for bit; LLaMA-Factory's refusals; no effect outside freeze" {
	need_jq
	args=(--finetuning_type freeze --freeze_trainable_layers 1 --freeze_extra_modules embed_tokens,lm_head
	      --learning_rate 5e-3 --max_steps 6 --logging_steps 1 --save_steps 3 -q)
	resumes_exactly 3 model.safetensors "${args[@]}"
	run -2 train --finetuning_type freeze --freeze_extra_modules mlp
	assert_output --partial "Module mlp is not found, please choose from embed_tokens, norm, lm_head"
	run -1 ft-train --model_name_or_path "$FIXTURES/models/tiny-qwen2" --train train.zst --output_dir q \
		--finetuning_type freeze --freeze_extra_modules lm_head
	assert_output --partial "Module lm_head is not found"
	# LoRA: LLaMA-Factory reads it in freeze tuning only
	run train --max_steps 2 --logging_steps 1 -q --freeze_extra_modules norm --output_dir l1
	assert_success
	run train --max_steps 2 --logging_steps 1 -q --output_dir l2
	cmp l1/adapter_model.safetensors l2/adapter_model.safetensors
}

# ---- BAdam ------------------------------------------------------------------

@test "BAdam: parity with badam's BlockOptimizer (ascending/3, descending/4, fixed/3 from block 1)" {
	need_jq
	parity_run badam_asc3 full --learning_rate 1e-3 --use_badam --badam_switch_interval 3 \
		--badam_switch_mode ascending
	parity_run badam_desc4 full --learning_rate 1e-3 --use_badam --badam_switch_interval 4 \
		--badam_switch_mode descending
	parity_run badam_fixed3 full --learning_rate 1e-3 --use_badam --badam_switch_interval 3 \
		--badam_switch_mode fixed --badam_start_block 1
}

@test "BAdam: resume mid-block and across a switch matches the uninterrupted run (random order too)" {
	need_jq
	for mode in ascending random; do
		args=(--finetuning_type full --learning_rate 1e-3 --max_steps 9 --logging_steps 1 --save_steps 4
		      --use_badam --badam_switch_interval 3 --badam_switch_mode $mode -q)
		run ft-train --model_name_or_path "$MODEL" --train train.zst --output_dir "a$mode" "${args[@]}"
		assert_success
		[ -f "a$mode/checkpoint-4/badam_state.json" ]
		mkdir "b$mode" && cp -r "a$mode/checkpoint-4" "b$mode/"
		head -n 4 "a$mode/trainer_log.jsonl" > "b$mode/trainer_log.jsonl"
		run ft-train --model_name_or_path "$MODEL" --train train.zst --output_dir "b$mode" "${args[@]}" \
			--resume_from_checkpoint "b$mode/checkpoint-4"
		assert_success
		diff <(steady "a$mode/trainer_log.jsonl") <(steady "b$mode/trainer_log.jsonl")
		cmp "a$mode/model.safetensors" "b$mode/model.safetensors"
	done
}

@test "BAdam: --badam_verbose 1 names each block as it switches; the example's keys are accepted" {
	run ft-train --model_name_or_path "$MODEL" --train train.zst --output_dir out --finetuning_type full \
		--max_steps 4 --use_badam --badam_mode layer --badam_switch_interval 2 --badam_verbose 1 \
		--badam_update_ratio 0.05 --badam_mask_mode adjacent
	assert_success
	assert_output --partial "BAdam: training block 0 (model.layers.0.*)"
	assert_output --partial "BAdam: training block 1 (model.layers.1.*)"
}

@test "BAdam: refusals with one reason each" {
	run -2 train --use_badam
	assert_output --partial "cannot use LoRA with GaLore, APOLLO or BAdam together"
	run -2 train --finetuning_type freeze --use_badam
	assert_output --partial "needs --finetuning_type full"
	run -2 train --finetuning_type full --use_badam --badam_mode ratio
	assert_output --partial "badam_mode ratio"
	run -2 train --finetuning_type full --use_badam --badam_switch_mode sideways
	assert_output --partial "not a BAdam switch mode"
	run -2 train --finetuning_type full --use_badam --badam_switch_interval 0
	assert_output --partial "must not be 0"
	run -1 train --finetuning_type full --use_badam --badam_start_block 2 --max_steps 1
	assert_output --partial "the model has 2 blocks"
}

# ---- PiSSA ------------------------------------------------------------------

pissa_args=(--lora_rank 4 --lora_alpha 8 --lora_target all --learning_rate 2e-3 --pissa_init)

@test "PiSSA: parity with PEFT's init_lora_weights pissa (exact SVD)" {
	need_jq
	parity_run pissa lora "${pissa_args[@]}" --pissa_iter -1
}

# torch.svd_lowrank starts from torch.randn, ft from its own generator: on
# these random weights (flat spectra, so 16 power iterations leave ~1e-4 of
# the top-4 subspace unconverged) torch's own niter16 run is 1.3e-4 from the
# exact one and ft's 2.2e-4, so the bound is 1e-3 against either.
@test "PiSSA: pissa_niter_16 (the default) within the randomized SVD's spread of PEFT's" {
	need_jq
	ft-cat --encode < "$FIXTURES/trainer/parity20.jsonl" > p20.zst
	run ft-train --model_name_or_path "$MODEL" --train p20.zst --output_dir n16 --weight_decay 0.1 \
		--lr_scheduler_type cosine --warmup_steps 2 --gradient_accumulation_steps 2 --num_train_epochs 1 \
		--logging_steps 1 -q "${pissa_args[@]}"
	assert_success
	jq -r 'select(.loss) | .loss' n16/trainer_log.jsonl > got
	for ref in pissa_niter16 pissa; do
		grep "^$ref " "$FIXTURES/extras/losses.txt" | tr ' ' '\n' | tail -n +2 > want
		paste got want | awk '{ d = ($1 - $2) / $2; if (d < 0) d = -d; if (d > 1e-3) { print "step " NR ": " $1 " vs " $2; bad = 1 } } END { exit bad }'
	done
	[ "$(jq -r .init_lora_weights n16/adapter_config.json)" = pissa_niter_16 ]
}

@test "PiSSA: pissa_convert writes pissa_init, pissa_backup and a rank-2r plain LoRA that evaluates the same" {
	need_jq
	ft-cat --encode < "$FIXTURES/trainer/val.jsonl" > val.zst
	run train "${pissa_args[@]}" --pissa_iter -1 --pissa_convert --max_steps 4 -q
	assert_success
	[ "$(jq -r .init_lora_weights out/adapter_config.json)" = pissa ]
	for d in pissa_init pissa_backup; do
		[ "$(jq -c '[.r, .lora_alpha, .init_lora_weights]' out/$d/adapter_config.json)" = '[4,8,true]' ]
	done
	[ "$(jq -c '[.r, .lora_alpha, .init_lora_weights]' out/pissa_converted/adapter_config.json)" = '[8,16,true]' ]
	cmp out/adapter_model.safetensors out/pissa_backup/adapter_model.safetensors
	# the PiSSA adapter (its load redoes the init on the base) and the plain
	# conversion on the untouched base: the same model up to float32 rounding
	for a in out out/pissa_converted; do
		run ft-train --model_name_or_path "$MODEL" --adapter_name_or_path "$a" --val val.zst --do_eval \
			--output_dir "e${a//\//_}" -q
		assert_success
	done
	jq -n --slurpfile a eout/eval_results.json --slurpfile b eout_pissa_converted/eval_results.json \
		'($a[0].eval_loss - $b[0].eval_loss) / $b[0].eval_loss | fabs < 1e-5' | grep -qx true
	# ft-merge: the converted adapter merges into the original base, and so
	# does the PiSSA one (ft-merge redoes its init, as PEFT's from_pretrained):
	# both evaluate as the adapter, up to float32 rounding
	run ft-merge --model_name_or_path "$MODEL" --adapter_name_or_path out/pissa_converted --export_dir m -q
	assert_success
	run ft-merge --model_name_or_path "$MODEL" --adapter_name_or_path out --export_dir m2 -q
	assert_success
	for d in m m2; do
		run ft-train --model_name_or_path $d --finetuning_type full --val val.zst --do_eval --output_dir e$d -q
		assert_success
		jq -n --slurpfile a eout/eval_results.json --slurpfile b e$d/eval_results.json \
			'($a[0].eval_loss - $b[0].eval_loss) / $b[0].eval_loss | fabs < 1e-5' | grep -qx true
	done
}

@test "PiSSA: resume recomputes the residual and continues bit for bit" {
	need_jq
	args=("${pissa_args[@]}" --max_steps 8 --logging_steps 1 --save_steps 4 -q)
	resumes_exactly 4 adapter_model.safetensors "${args[@]}"
}

@test "PiSSA: refusals" {
	run -2 train --finetuning_type full --pissa_init
	assert_output --partial "only valid for LoRA training"
	run -2 train --pissa_init --pissa_iter -2
	assert_output --partial "--pissa_iter must be -1"
	run -2 train --pissa_init --adapter_name_or_path "$FIXTURES/parity/llama-lora-init"
	assert_output --partial "initializes a new adapter"
	run -1 train --pissa_init --lora_rank 40 --max_steps 1
	assert_output --partial "exceeds the module's smaller side"
}

# ---- DoRA -------------------------------------------------------------------

@test "DoRA: parity with PEFT's use_dora from its own adapter (all linears, B != 0)" {
	need_jq
	parity_run dora lora --learning_rate 2e-3 --adapter_name_or_path "$FIXTURES/extras/llama-dora-init"
}

@test "DoRA: a new adapter starts as the base (magnitude ||W||); saved with PEFT's names" {
	need_jq
	run train --max_steps 2 --logging_steps 1 --learning_rate 5e-3 -q --use_dora
	assert_success
	run ft-train --model_name_or_path "$MODEL" --train train.zst --output_dir plain --max_steps 2 --logging_steps 1 \
		--learning_rate 5e-3 -q
	assert_success
	# step 1 is computed before any update: the same model
	[ "$(jq -s '.[0].loss' out/trainer_log.jsonl)" = "$(jq -s '.[0].loss' plain/trainer_log.jsonl)" ]
	[ "$(jq -s '.[1].loss' out/trainer_log.jsonl)" != "$(jq -s '.[1].loss' plain/trainer_log.jsonl)" ]
	[ "$(jq .use_dora out/adapter_config.json)" = true ]
	f=out/adapter_model.safetensors
	n=$(tail -c +9 "$f" | head -c "$(od -An -t u8 -N8 "$f" | tr -d ' ')" | jq '[keys[] | select(endswith(".lora_magnitude_vector"))] | length')
	[ "$n" = 14 ]
}

@test "DoRA: ft-merge folds the magnitude in as PEFT's merge: the merged model evaluates as the adapter" {
	need_jq
	ft-cat --encode < "$FIXTURES/trainer/val.jsonl" > val.zst
	run train --max_steps 3 --learning_rate 1e-2 -q --use_dora
	assert_success
	merge_evaluates_as out
}

@test "DoRA: resume continues bit for bit" {
	need_jq
	args=(--use_dora --learning_rate 5e-3 --max_steps 8 --logging_steps 1 --save_steps 4 -q)
	resumes_exactly 4 adapter_model.safetensors "${args[@]}"
}

@test "DoRA: refusals" {
	run -2 train --finetuning_type freeze --use_dora
	assert_output --partial "only valid for LoRA training"
	run -2 train --use_dora --adapter_name_or_path "$FIXTURES/extras/llama-dora-init"
	assert_output --partial "says whether it is DoRA"
}

# ---- DoRA with PiSSA ---------------------------------------------------------

# PEFT's update_layer runs the PiSSA init (base = W_res), then DoRA's
# (magnitude ||W_res + s B A||).  The reference is its own file
# (make_extras_fixtures.py --pissa-dora); same 1e-5 bound as the pissa and
# dora runs (measured 1e-7), and the run differs from plain PiSSA's by
# 1.1e-4, so DoRA is on.
@test "DoRA+PiSSA: parity with PEFT's use_dora with init_lora_weights pissa (exact SVD)" {
	need_jq
	REF=extras/pissa_dora_losses.txt parity_run pissa_dora lora "${pissa_args[@]}" --pissa_iter -1 --use_dora
	[ "$(jq -c '[.use_dora, .init_lora_weights, .r, .lora_alpha]' pissa_dora/adapter_config.json)" = \
		'[true,"pissa",4,8]' ]
	[ "$(magnitudes pissa_dora)" = 14 ]
	jq -r 'select(.loss) | .loss' pissa_dora/trainer_log.jsonl > got
	grep '^pissa ' "$FIXTURES/extras/losses.txt" | tr ' ' '\n' | tail -n +2 > plain
	[ "$(paste got plain | awk '{ d = ($1 - $2) / $2; if (d < 0) d = -d; if (d > m) m = d } END { print (m > 1e-5) }')" = 1 ]
}

# Loading redoes the PiSSA init on the base and takes the saved magnitudes
# (the trained ones, no longer ||W_res + s B A||): the same eval as the
# run's last, exactly; ft-merge into the original base (the init redone
# there too) evaluates as the adapter up to float32 rounding.  pissa_niter_4:
# ft's fixed per-module start, the same in all three.
@test "DoRA+PiSSA: the saved adapter loads back and merges as trained (pissa_niter_4)" {
	need_jq
	ft-cat --encode < "$FIXTURES/trainer/val.jsonl" > val.zst
	run train "${pissa_args[@]}" --pissa_iter 4 --use_dora --learning_rate 1e-2 --max_steps 4 -q \
		--val val.zst --eval_steps 4
	assert_success
	[ "$(jq -c '[.use_dora, .init_lora_weights]' out/adapter_config.json)" = '[true,"pissa_niter_4"]' ]
	run ft-train --model_name_or_path "$MODEL" --adapter_name_or_path out --val val.zst --do_eval --output_dir e -q
	assert_success
	jq -n --slurpfile a e/eval_results.json --slurpfile b <(jq -s '[.[] | select(.eval_loss)] | last' out/trainer_log.jsonl) \
		'$a[0].eval_loss == $b[0].eval_loss' | grep -qx true
	merge_evaluates_as out
}

@test "DoRA+PiSSA: resume recomputes the residual and continues bit for bit" {
	need_jq
	args=("${pissa_args[@]}" --use_dora --max_steps 8 --logging_steps 1 --save_steps 4 -q)
	resumes_exactly 4 adapter_model.safetensors "${args[@]}"
}

@test "DoRA+PiSSA: --pissa_convert refused (PEFT's conversion drops the magnitudes)" {
	run -2 train "${pissa_args[@]}" --use_dora --pissa_convert --max_steps 1
	assert_output --partial "--pissa_convert with --use_dora"
	assert_output --partial "drops DoRA's magnitudes"
	[ ! -e out ]
}

# With lora_dropout, PEFT recomputes the base product on the dropped-out
# input; the reference runs PEFT with ft's masks in its dropout modules
# (make_dropout_fixtures.py), so every other operation is PEFT's own.
# Same 1e-5 bound as the runs above.
@test "DoRA with lora_dropout: parity with PEFT's dropout branch under ft's masks (p 0.1 and 0.3); LoRA's too" {
	need_jq
	# the adapters as PEFT saves them with that lora_dropout (PeftModel.from_pretrained,
	# LLaMA-Factory's resume, reads it from adapter_config.json)
	with_dropout() {
		mkdir "$3" && cp "$FIXTURES/$1"/* "$3"/
		jq --argjson p "$2" '.lora_dropout = $p' "$FIXTURES/$1/adapter_config.json" > "$3/adapter_config.json"
	}
	with_dropout parity/llama-lora-init 0.1 lora01
	with_dropout extras/llama-dora-init 0.1 dora01
	with_dropout extras/llama-dora-init 0.3 dora03
	REF=extras/dropout_losses.txt parity_run lora_drop lora --learning_rate 2e-3 \
		--adapter_name_or_path lora01 --lora_dropout 0.1
	REF=extras/dropout_losses.txt parity_run dora_drop lora --learning_rate 2e-3 \
		--adapter_name_or_path dora01 --lora_dropout 0.1
	REF=extras/dropout_losses.txt parity_run dora_drop3 lora --learning_rate 2e-3 \
		--adapter_name_or_path dora03 --lora_dropout 0.3
	# the dropout ran: the references without it differ
	[ "$(grep '^dora ' "$FIXTURES/extras/losses.txt" | cut -d' ' -f2)" != \
		"$(grep '^dora_drop ' "$FIXTURES/extras/dropout_losses.txt" | cut -d' ' -f2)" ]
	[ "$(jq -s '.[0].loss' dora_drop/trainer_log.jsonl)" != "$(jq -s '.[0].loss' dora_drop3/trainer_log.jsonl)" ]
}

@test "DoRA with lora_dropout: gradient checkpointing and resume bit for bit; eval has no dropout" {
	need_jq
	ft-cat --encode < "$FIXTURES/trainer/val.jsonl" > val.zst
	args=(--use_dora --lora_dropout 0.2 --learning_rate 5e-3 --max_steps 6 --logging_steps 1 -q)
	run train "${args[@]}" --save_steps 3 --val val.zst --eval_steps 3
	assert_success
	run ft-train --model_name_or_path "$MODEL" --train train.zst --output_dir gc "${args[@]}" \
		--save_steps 3 --val val.zst --eval_steps 3 --gradient_checkpointing
	assert_success
	diff <(steady out/trainer_log.jsonl) <(steady gc/trainer_log.jsonl)
	cmp out/adapter_model.safetensors gc/adapter_model.safetensors
	mkdir b && cp -r out/checkpoint-3 b/ && head -n 4 out/trainer_log.jsonl > b/trainer_log.jsonl
	run ft-train --model_name_or_path "$MODEL" --train train.zst --output_dir b "${args[@]}" \
		--save_steps 3 --val val.zst --eval_steps 3 --resume_from_checkpoint b/checkpoint-3
	assert_success
	diff <(steady out/trainer_log.jsonl) <(steady b/trainer_log.jsonl)
	cmp out/adapter_model.safetensors b/adapter_model.safetensors
	# the evaluation of the saved adapter (no dropout) is the run's last eval_loss
	run ft-train --model_name_or_path "$MODEL" --adapter_name_or_path out --val val.zst --do_eval \
		--output_dir e -q --lora_dropout 0.2
	assert_success
	jq -n --slurpfile a e/eval_results.json --slurpfile b <(jq -s '[.[] | select(.eval_loss)] | last' out/trainer_log.jsonl) \
		'$a[0].eval_loss == $b[0].eval_loss' | grep -qx true
}

# ---- Muon -------------------------------------------------------------------

# LLaMA-Factory's third_party Muon runs Newton-Schulz in bfloat16: the same
# roundings here, but float32 sums in another order flip one now and then
# (2^-8 relative on that element), so full tuning (where every linear is
# Muon's) agrees to 1e-4 (measured 1e-5); LoRA to 1e-5 (measured 1e-7).
@test "Muon: parity with LLaMA-Factory's Muon (full, and LoRA)" {
	need_jq
	TOL=1e-4 parity_run muon_full full --learning_rate 1e-3 --use_muon
	parity_run muon_lora lora --learning_rate 2e-3 --adapter_name_or_path "$FIXTURES/parity/llama-lora-init" \
		--use_muon
}

@test "Muon: resume continues bit for bit; LoRA+ takes precedence as in LLaMA-Factory" {
	need_jq
	args=(--finetuning_type full --use_muon --learning_rate 1e-3 --max_steps 8 --logging_steps 1 --save_steps 4 -q)
	run train "${args[@]}"
	assert_success
	[ -f out/checkpoint-4/muon_optimizer.safetensors ]
	mkdir b && cp -r out/checkpoint-4 b/ && head -n 4 out/trainer_log.jsonl > b/trainer_log.jsonl
	run ft-train --model_name_or_path "$MODEL" --train train.zst --output_dir b "${args[@]}" \
		--resume_from_checkpoint b/checkpoint-4
	assert_success
	diff <(steady out/trainer_log.jsonl) <(steady b/trainer_log.jsonl)
	cmp out/model.safetensors b/model.safetensors
	run ft-train --model_name_or_path "$MODEL" --train train.zst --output_dir lp --use_muon --loraplus_lr_ratio 4 \
		--max_steps 1
	assert_success
	assert_output --partial "--use_muon is ignored with --loraplus_lr_ratio"
}

# ---- Adam-mini --------------------------------------------------------------

@test "Adam-mini: parity with the adam_mini package (full, and freeze)" {
	need_jq
	parity_run adam_mini_full full --learning_rate 1e-3 --use_adam_mini
	parity_run adam_mini_freeze freeze --learning_rate 1e-3 --freeze_trainable_layers 1 --optim adam_mini
}

@test "Adam-mini: resume continues bit for bit; refused with LoRA" {
	need_jq
	args=(--finetuning_type full --use_adam_mini --learning_rate 1e-3 --max_steps 8 --logging_steps 1 --save_steps 4 -q)
	run train "${args[@]}"
	assert_success
	[ -f out/checkpoint-4/adam_mini_optimizer.safetensors ]
	mkdir b && cp -r out/checkpoint-4 b/ && head -n 4 out/trainer_log.jsonl > b/trainer_log.jsonl
	run ft-train --model_name_or_path "$MODEL" --train train.zst --output_dir b "${args[@]}" \
		--resume_from_checkpoint b/checkpoint-4
	assert_success
	diff <(steady out/trainer_log.jsonl) <(steady b/trainer_log.jsonl)
	cmp out/model.safetensors b/model.safetensors
	run -2 train --use_adam_mini
	assert_output --partial "LoRA factors are not"
	run -2 train --optim adam_mini
	assert_output --partial "LoRA factors are not"
}

# ---- GaLore -----------------------------------------------------------------

# One projection in the run (interval 200): the same arithmetic, 1e-5
# (measured 1e-7).  With new projections every 3 steps the moments carry
# over into the new subspace, so the singular vectors' signs matter, and
# LAPACK builds choose them differently (OpenBLAS here, MKL in torch's
# wheel): identical until the first re-projection, then within 1e-3
# (measured 1.5e-4).
@test "GaLore: parity with galore_torch's GaLoreAdamW (std all linears, right on mlp, re-projections)" {
	need_jq
	parity_run galore_full full --learning_rate 1e-3 --use_galore --galore_rank 4 --galore_scale 2.0
	parity_run galore_freeze freeze --learning_rate 1e-3 --freeze_trainable_layers 1 --use_galore \
		--galore_target mlp --galore_rank 8 --galore_scale 0.5 --galore_proj_type right
	TOL=1e-3 parity_run galore_reproj full --learning_rate 1e-3 --use_galore --galore_rank 4 \
		--galore_update_interval 3
}

@test "GaLore: resume across a re-projection continues bit for bit" {
	need_jq
	args=(--finetuning_type full --use_galore --galore_rank 4 --galore_update_interval 3 --learning_rate 1e-3
	      --max_steps 8 --logging_steps 1 --save_steps 4 -q)
	run train "${args[@]}"
	assert_success
	[ -f out/checkpoint-4/galore_optimizer.safetensors ]
	mkdir b && cp -r out/checkpoint-4 b/ && head -n 4 out/trainer_log.jsonl > b/trainer_log.jsonl
	run ft-train --model_name_or_path "$MODEL" --train train.zst --output_dir b "${args[@]}" \
		--resume_from_checkpoint b/checkpoint-4
	assert_success
	diff <(steady out/trainer_log.jsonl) <(steady b/trainer_log.jsonl)
	cmp out/model.safetensors b/model.safetensors
}

@test "GaLore: refusals" {
	run -2 train --use_galore
	assert_output --partial "cannot use LoRA with GaLore"
	run -2 train --finetuning_type full --use_galore --use_badam
	assert_output --partial "cannot use GaLore, APOLLO or BAdam together"
	run -2 train --finetuning_type full --use_galore --galore_layerwise --gradient_accumulation_steps 2
	assert_output --partial "galore_layerwise"
	run -2 train --finetuning_type full --use_galore --galore_proj_type full
	assert_output --partial "not implemented in ft"
	run -2 train --finetuning_type full --use_galore --optim adamw_torch_fused
	assert_output --partial "GaLoreAdamW"
	run -2 train --finetuning_type full --use_galore --galore_rank 0
	assert_output --partial "must be >= 1"
}
