#!/usr/bin/env bats
# ft-train --stage ppo (docs/PPO.md): an end-to-end greedy run on the tiny
# Llama with a reward filter (deterministic: two runs give the same log),
# an rm adapter as the reward (--reward_model_type lora), a failing
# filter (nothing saved), and the refusals.
load helper

LLAMA="$FIXTURES/models/tiny-llama"
export OMP_NUM_THREADS=1

setup() {
	cd "$BATS_TEST_TMPDIR"
	command -v ft-cat >/dev/null || { echo "ft-cat is not built (run make)" >&2; return 1; }
	ft-cat --encode < "$FIXTURES/ppo/prompts.jsonl" > ppo.zst
}

# the tiny model has no tokenizer: the filter sees token ids, space-separated;
# the reward counts the responses' tokens equal to 42
REWARD="awk -F'\"response\":\"' '{ n = split(\$2, t, /[ \"]/); c = 0; for (i = 1; i <= n; i++) c += t[i] == \"42\"; print c }'"

ppo() {
	ft-train --stage ppo --model_name_or_path "$LLAMA" --train ppo.zst --do_sample false \
		--max_new_tokens 6 --max_steps 3 --logging_steps 1 --learning_rate 1e-3 -q "$@"
}

@test "ppo: a greedy run with a reward filter logs LLaMA-Factory's and TRL's keys, saves adapter and value head" {
	need_jq
	run ppo --output_dir a --reward_model_type api --reward_model "$REWARD" --plot_loss true
	assert_success
	[ -f a/training_loss.png ] && [ -f a/training_reward.png ]
	[ -f a/adapter_model.safetensors ] && [ -f a/adapter_config.json ] && [ -f a/value_head.safetensors ]
	[ "$(wc -l < a/trainer_log.jsonl)" -eq 3 ]
	run jq -r '[.current_steps, .total_steps, (.loss|type), (.reward|type), (.lr|type), .epoch,
		(."ppo/loss/total"|type), (."ppo/policy/clipfrac"|type), (."ppo/val/error"|type),
		(."objective/kl"|type), ."objective/kl_coef"] | @tsv' a/trainer_log.jsonl
	assert_success
	[ "${lines[0]}" = "$(printf '1\t3\tnumber\tnumber\tnumber\t0\tnumber\tnumber\tnumber\tnumber\t0.2')" ]
	# the adaptive KL controller moved the coefficient after the first step
	[ "$(jq -r '."objective/kl_coef"' a/trainer_log.jsonl | sort -u | wc -l)" -eq 3 ]
	head -c 300 a/value_head.safetensors | grep -q v_head.summary.weight
	head -c 300 a/value_head.safetensors | grep -q v_head.summary.bias
	# LLaMA-Factory's epoch: the 0-based step over max_steps
	[ "$(jq -r .epoch a/trainer_log.jsonl | tr '\n' ' ')" = "0.0 0.33 0.67 " ] || [ "$(jq -r .epoch a/trainer_log.jsonl | tr '\n' ' ')" = "0 0.33 0.67 " ]
}

# the property test of the issue: 30 sampled PPO steps of 8 responses
# (batch 2 x buffer 4) where the filter rewards the tokens below 64 raise
# the mean reward: the last 10 steps' mean over the first 10's (2.88 ->
# 4.71 measured with this seed; the margin asked is 0.5, a quarter of
# the gain, so a machine whose BLAS rounds differently and samples other
# responses still passes while a loop that does not learn, or learns the
# wrong way, does not)
@test "ppo: 30 sampled steps where the filter rewards target tokens raise the mean reward" {
	need_jq
	LOW="awk -F'\"response\":\"' '{ n = split(\$2, t, /[ \"]/); c = 0; for (i = 1; i <= n; i++) c += (t[i] != \"\" && t[i] + 0 < 64); print c }'"
	ft-train --stage ppo --model_name_or_path "$LLAMA" --train ppo.zst --do_sample true --top_p 1.0 \
		--temperature 1.0 --max_new_tokens 8 --max_steps 30 --ppo_buffer_size 4 --logging_steps 1 \
		--learning_rate 3e-3 --seed 2 -q --output_dir a --reward_model_type api --reward_model "$LOW"
	[ "$(wc -l < a/trainer_log.jsonl)" -eq 30 ]
	run jq -s '[.[].reward] | ((.[20:30] | add / 10) - (.[0:10] | add / 10)) > 0.5' a/trainer_log.jsonl
	assert_output true
}

@test "ppo: greedy runs are deterministic (two runs, identical logs and adapters)" {
	ppo --output_dir a --reward_model_type api --reward_model "$REWARD"
	ppo --output_dir b --reward_model_type api --reward_model "$REWARD"
	cmp a/trainer_log.jsonl b/trainer_log.jsonl
	cmp a/adapter_model.safetensors b/adapter_model.safetensors
	cmp a/value_head.safetensors b/value_head.safetensors
}

@test "ppo: the reward filter sees one JSON line per response (batch x accumulation x buffer)" {
	run ppo --output_dir a --reward_model_type api --max_steps 1 --gradient_accumulation_steps 2 \
		--reward_model "tee -a $BATS_TEST_TMPDIR/seen | awk '{ print 1 }'"
	assert_success
	[ "$(wc -l < seen)" -eq 4 ]
	grep -q '"prompt":"1 17 33 54 70","response":"' seen
	rm seen
	run ppo --output_dir b --reward_model_type api --max_steps 1 --ppo_buffer_size 2 \
		--reward_model "tee -a $BATS_TEST_TMPDIR/seen | awk '{ print 1 }'"
	assert_success
	[ "$(wc -l < seen)" -eq 4 ]
}

@test "ppo: a reward filter that fails names the line, exits 1 and saves nothing" {
	run ppo --output_dir a --reward_model_type api --reward_model "awk 'NR == 2 { print \"x2\"; next } { print 1 }'"
	[ "$status" -eq 1 ]
	assert_output --partial "reward command: line 2 of its output, 'x2', is not a number"
	[ "${#lines[@]}" -eq 1 ]
	[ ! -e a/adapter_model.safetensors ] && [ ! -e a/value_head.safetensors ]
	run ppo --output_dir b --reward_model_type api --reward_model "exit 3"
	[ "$status" -eq 1 ]
	assert_output --partial "exited with status 3"
	[ ! -e b/adapter_model.safetensors ]
}

@test "ppo: an rm adapter with its value head as the reward (--reward_model_type lora)" {
	ft-cat --encode < "$FIXTURES/pref/rm.jsonl" > rm.zst
	ft-train --stage rm --model_name_or_path "$LLAMA" --train rm.zst --output_dir rm --max_steps 1 -q
	[ -f rm/value_head.safetensors ]
	run ppo --output_dir a --reward_model rm
	assert_success
	[ -f a/adapter_model.safetensors ] && [ -f a/value_head.safetensors ]
	[ "$(wc -l < a/trainer_log.jsonl)" -eq 3 ]
	mkdir nohead && cp "$FIXTURES"/pref/llama-lora/adapter_* nohead/
	run ppo --output_dir b --reward_model nohead
	[ "$status" -eq 1 ]
	assert_output --partial "value_head.safetensors"
}

@test "ppo: freeze and full policies against a frozen copy of the base; the whole model is saved" {
	need_jq
	for ft in full freeze; do
		run ppo --output_dir $ft --reward_model_type api --reward_model "$REWARD" --finetuning_type $ft
		assert_success
		[ -f $ft/model.safetensors ] && [ -f $ft/config.json ] && [ -f $ft/value_head.safetensors ]
		[ ! -e $ft/adapter_model.safetensors ]
		# the first step's policy is the reference: KL 0, then the policy moves away
		[ "$(jq -r '."objective/kl"' $ft/trainer_log.jsonl | head -1)" = 0 ]
		[ "$(jq -r '."objective/kl" > 0' $ft/trainer_log.jsonl | tail -1)" = true ]
	done
	run ft-train --stage ppo --model_name_or_path "$LLAMA" --train ppo.zst --output_dir s -q \
		--finetuning_type freeze --train_from_scratch true --reward_model_type api --reward_model cat
	[ "$status" -eq 2 ]
	assert_output --partial "the reference would be the base"
}

@test "ppo: a separate full reward model (--reward_model_type full) and one of another vocabulary" {
	need_jq
	ft-cat --encode < "$FIXTURES/pref/rm.jsonl" > rm.zst
	ft-train --stage rm --model_name_or_path "$LLAMA" --train rm.zst --output_dir rm --max_steps 1 -q \
		--finetuning_type full
	[ -f rm/model.safetensors ] && [ -f rm/value_head.safetensors ]
	run ppo --output_dir a --reward_model_type full --reward_model rm
	assert_success
	[ "$(wc -l < a/trainer_log.jsonl)" -eq 3 ]
	[ "$(jq -r '.reward != 0' a/trainer_log.jsonl | sort -u)" = true ]
	# with an adapter merged into it, the same flags as LLaMA-Factory's
	ft-train --stage rm --model_name_or_path "$LLAMA" --train rm.zst --output_dir rml --max_steps 1 -q
	run ppo --output_dir b --reward_model_type full --reward_model rm --reward_model_adapters rml
	assert_success
	# the value head is the last adapter's (load_model's add_valuehead): the
	# base with rml merged scores as the rm adapter rml over the policy's base
	# (greedy responses: the same first batch; merged W + s B A against the
	# unmerged sum, float32 rounding ~1e-7 relative, bound 1e-5)
	run ppo --output_dir m --reward_model_type full --reward_model "$LLAMA" --reward_model_adapters rml
	assert_success
	run ppo --output_dir l --reward_model rml
	assert_success
	jq -n --slurpfile a <(head -1 m/trainer_log.jsonl) --slurpfile b <(head -1 l/trainer_log.jsonl) \
		'($a[0].reward - $b[0].reward) | fabs <= 1e-5 * ($b[0].reward | fabs) + 1e-7' | grep -qx true
	mkdir v300 && jq '.vocab_size = 300' "$LLAMA/config.json" > v300/config.json
	ft-train --stage rm --model_name_or_path v300 --train_from_scratch true --train rm.zst --output_dir rm300 \
		--max_steps 1 -q --finetuning_type full
	run ppo --output_dir c --reward_model_type full --reward_model rm300
	[ "$status" -eq 1 ]
	assert_output --partial "--reward_model rm300: vocabulary 300 and hidden size 64, the policy's are 256 and 64"
	[ "${#lines[@]}" -eq 1 ]
	[ ! -e c/value_head.safetensors ]
	run ppo --output_dir d --reward_model_type full --reward_model "$LLAMA"
	[ "$status" -eq 1 ]
	assert_output --partial "value_head.safetensors"
}

@test "ppo: the base's tokenizer files are saved beside the adapter, as sft's outputs" {
	mkdir base && cp "$LLAMA"/* base/
	echo '{"model_max_length": 64}' > base/tokenizer_config.json
	echo '{"eos_token": "</s>"}' > base/special_tokens_map.json
	ft-train --stage ppo --model_name_or_path base --train ppo.zst --do_sample false --max_new_tokens 4 \
		--max_steps 1 -q --output_dir a --reward_model_type api --reward_model "$REWARD"
	cmp base/tokenizer_config.json a/tokenizer_config.json
	cmp base/special_tokens_map.json a/special_tokens_map.json
	[ -f a/adapter_model.safetensors ] && [ -f a/value_head.safetensors ]
}

@test "ppo: --ref_model (with --ref_model_adapters) is the reference, as create_ref_model" {
	need_jq
	strip() { jq -c 'del(.elapsed_time, .remaining_time, .throughput, .peak_memory_bytes)' "$1"; }
	run ppo --output_dir a --reward_model_type api --reward_model "$REWARD"
	assert_success
	# the base itself as the reference: the LoRA policy with its adapters off is that model
	run ppo --output_dir b --reward_model_type api --reward_model "$REWARD" --ref_model "$LLAMA"
	assert_success
	cmp <(strip a/trainer_log.jsonl) <(strip b/trainer_log.jsonl)
	# another reference: the base with an adapter merged gives a non-zero KL from the first step
	run ppo --output_dir c --reward_model_type api --reward_model "$REWARD" --ref_model "$LLAMA" \
		--ref_model_adapters "$FIXTURES/pref/llama-lora"
	assert_success
	[ "$(jq -r '."objective/kl" != 0' c/trainer_log.jsonl | head -1)" = true ]
	[ "$(jq -r '."objective/kl"' a/trainer_log.jsonl | head -1)" = 0 ]
	mkdir v300 && jq '.vocab_size = 300' "$LLAMA/config.json" > v300/config.json
	ft-cat --encode < "$FIXTURES/pref/rm.jsonl" > rm.zst
	ft-train --stage rm --model_name_or_path v300 --train_from_scratch true --train rm.zst --output_dir r300 \
		--max_steps 1 -q --finetuning_type full
	run ppo --output_dir d --reward_model_type api --reward_model "$REWARD" --ref_model r300
	[ "$status" -eq 1 ]
	assert_output --partial "--ref_model r300: vocabulary of 300 tokens, the policy's has 256"
}

@test "ppo: checkpoints every --save_steps; a resumed run gives the same log, adapter and value head" {
	args=(--output_dir A --reward_model_type api --reward_model "$REWARD" --do_sample true --max_steps 4
		--save_steps 2 --ppo_score_norm true --seed 5)
	ppo "${args[@]}"
	[ -f A/checkpoint-2/adapter_model.safetensors ] && [ -f A/checkpoint-2/value_head.safetensors ]
	[ -f A/checkpoint-2/optimizer.safetensors ] && [ -f A/checkpoint-2/ppo_state.json ] && [ -d A/checkpoint-4 ]
	mkdir B && cp -r A/checkpoint-2 B/ && cp A/trainer_log.jsonl B/   # the resumed run trims the log to step 2
	ppo "${args[@]/#A/B}" --resume_from_checkpoint true
	cmp A/trainer_log.jsonl B/trainer_log.jsonl
	cmp A/adapter_model.safetensors B/adapter_model.safetensors
	cmp A/value_head.safetensors B/value_head.safetensors
	run ppo --output_dir A --reward_model_type api --reward_model "$REWARD" --max_steps 5 \
		--resume_from_checkpoint A/checkpoint-2
	[ "$status" -eq 1 ]
	assert_output --partial "resume with the same settings"
	run ppo --output_dir C --reward_model_type api --reward_model "awk '{ print 1 }'" --save_steps 1 --save_total_limit 1
	assert_success
	[ -d C/checkpoint-3 ] && [ ! -e C/checkpoint-2 ]
}

@test "ppo: refusals" {
	run ppo --output_dir a
	[ "$status" -eq 2 ]
	assert_output --partial "--stage ppo needs --reward_model"
	run ppo --output_dir a --reward_model_type api --reward_model cat --ppo_buffer_size 0
	[ "$status" -eq 2 ]
	assert_output --partial "--ppo_buffer_size must be >= 1"
	# --device cuda runs on the device (tests/bats/ft-train-rl-emu.bats); without one it says why
	FT_CUDA_LIB=/nonexistent/libft_cuda.so run ppo --output_dir a --reward_model_type api --reward_model cat --device cuda
	[ "$status" -eq 1 ]
	assert_output --partial "FT_CUDA_LIB=/nonexistent/libft_cuda.so: no such file"
	run ppo --output_dir a --reward_model_type api --reward_model cat --reward_model_adapters x
	[ "$status" -eq 2 ]
	assert_output --partial "only --reward_model_type full uses them"
	run ppo --output_dir a --reward_model_type bogus --reward_model cat
	[ "$status" -eq 2 ]
	assert_output --partial "(lora, full or api)"
	run ppo --output_dir a --reward_model rm --finetuning_type full
	[ "$status" -eq 2 ]
	assert_output --partial "--reward_model_type lora cannot be used for freeze/full PPO training"
	# stage / records mismatch, both ways
	ft-cat --encode < "$FIXTURES/trainer/train.jsonl" > sft.zst
	run ppo --output_dir a --reward_model_type api --reward_model cat --train sft.zst
	[ "$status" -eq 1 ]
	assert_output --partial "packed for stage 'sft' but --stage is ppo"
	run ft-train --stage sft --model_name_or_path "$LLAMA" --train ppo.zst --output_dir a -q
	[ "$status" -eq 1 ]
	assert_output --partial "packed for stage 'ppo' but --stage is sft"
	run ft-train --stage sft --model_name_or_path "$LLAMA" --train sft.zst --output_dir a --ppo_epochs 2 -q
	[ "$status" -eq 2 ]
	assert_output --partial "only --stage ppo uses it"
	[ ! -e a/adapter_model.safetensors ]
}

@test "ppo: --use_dora trains a DoRA adapter; it starts as the base, so the first step's KL to the reference is 0" {
	need_jq
	ppo --output_dir d --reward_model_type api --reward_model "$REWARD" --use_dora true
	ppo --output_dir l --reward_model_type api --reward_model "$REWARD"
	[ "$(jq .use_dora d/adapter_config.json)" = true ]
	[ "$(magnitudes d)" = 14 ]   # the 7 linears (lora_target all, the default) of 2 layers
	[ "$(jq -s '.[0]."objective/kl"' d/trainer_log.jsonl)" = 0 ]
	# the magnitudes train: other updates than plain LoRA's
	[ "$(jq -s '.[0].loss' d/trainer_log.jsonl)" != "$(jq -s '.[0].loss' l/trainer_log.jsonl)" ]
	# sampling reads DoRA's scales of the weights trained so far: a run
	# resumed from checkpoint-2 (scales made afresh from the loaded adapter)
	# draws the uninterrupted run's responses
	args=(--output_dir A --reward_model_type api --reward_model "$REWARD" --do_sample true --max_steps 4
		--save_steps 2 --seed 5 --use_dora true)
	ppo "${args[@]}"
	mkdir B && cp -r A/checkpoint-2 B/ && cp A/trainer_log.jsonl B/
	ppo "${args[@]/#A/B}" --resume_from_checkpoint true
	cmp A/trainer_log.jsonl B/trainer_log.jsonl
	cmp A/adapter_model.safetensors B/adapter_model.safetensors
}

# the optimizer extras and PiSSA: refused (tools/ft-train/rl_args.c), one each
@test "ppo: refuses PiSSA and each optimizer choice the PPO loop does not step" {
	api=(--output_dir a --reward_model_type api --reward_model cat)
	run ppo "${api[@]}" --pissa_init true
	[ "$status" -eq 2 ]; assert_output --partial "--pissa_init: PiSSA cannot be used for --stage ppo"
	run ppo "${api[@]}" --pissa_convert true
	[ "$status" -eq 2 ]; assert_output --partial "--pissa_convert: PiSSA cannot be used for --stage ppo"
	run ppo "${api[@]}" --loraplus_lr_ratio 4
	[ "$status" -eq 2 ]; assert_output --partial "--loraplus_lr_ratio: --stage ppo steps plain AdamW"
	run ppo "${api[@]}" --use_muon true
	[ "$status" -eq 2 ]; assert_output --partial "--use_muon: --stage ppo steps plain AdamW"
	run ppo "${api[@]}" --finetuning_type full --use_galore true
	[ "$status" -eq 2 ]; assert_output --partial "--use_galore: --stage ppo steps plain AdamW"
	run ppo "${api[@]}" --finetuning_type full --use_apollo true
	[ "$status" -eq 2 ]; assert_output --partial "--use_apollo: --stage ppo steps plain AdamW"
	run ppo "${api[@]}" --finetuning_type full --use_badam true
	[ "$status" -eq 2 ]; assert_output --partial "--use_badam: --stage ppo steps plain AdamW"
	run ppo "${api[@]}" --finetuning_type full --use_adam_mini true
	[ "$status" -eq 2 ]; assert_output --partial "--use_adam_mini (--optim adam_mini): --stage ppo steps plain AdamW"
	run ppo "${api[@]}" --finetuning_type full --optim adam_mini
	[ "$status" -eq 2 ]; assert_output --partial "--use_adam_mini (--optim adam_mini): --stage ppo steps plain AdamW"
	[ ! -e a ]
}

# LLaMA-Factory's ppo_train never runs Trainer.train, NEFTune's switch
@test "ppo: --neftune_noise_alpha is ignored with a note, as in LLaMA-Factory: the same run as without it" {
	ppo --output_dir a --reward_model_type api --reward_model "$REWARD"
	run --separate-stderr ft-train --stage ppo --model_name_or_path "$LLAMA" --train ppo.zst --do_sample false \
		--max_new_tokens 6 --max_steps 3 --logging_steps 1 --learning_rate 1e-3 --output_dir b \
		--reward_model_type api --reward_model "$REWARD" --neftune_noise_alpha 5
	[ "$status" -eq 0 ]
	[[ "$stderr" == *"note: --neftune_noise_alpha is ignored by --stage ppo, as in LLaMA-Factory"* ]]
	cmp a/trainer_log.jsonl b/trainer_log.jsonl
	cmp a/adapter_model.safetensors b/adapter_model.safetensors
}
