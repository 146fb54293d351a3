#!/usr/bin/env bats
# ft-train --stage grpo (docs/GRPO.md): runs on the tiny Llama with reward
# commands (TRL's metrics in trainer_log.jsonl, completions.jsonl, the
# plot), a property test (a reward preferring one token raises the mean
# reward within 30 steps), determinism, reward commands that fail, and the
# refusals.
load helper

LLAMA="$FIXTURES/models/tiny-llama"
PEAKY="$FIXTURES/grpo/peaky-llama"
export OMP_NUM_THREADS=1

setup() {
	cd "$BATS_TEST_TMPDIR"
	command -v ft-cat >/dev/null || { echo "ft-cat is not built (run make)" >&2; return 1; }
	ft-cat --encode < "$FIXTURES/grpo/prompts.jsonl" > p8.zst   # 8 prompts, batch_size 8
	ft-cat --encode < "$FIXTURES/ppo/prompts.jsonl" > p2.zst    # 4 prompts, batch_size 2
}

# The tiny model has no tokenizer: a reward sees token ids, space-separated.
# count TOKEN: a reward command answering, per line, how often TOKEN is in
# the completion (a shell loop: it answers each line as it reads it).
count() {
	printf '%s' "while IFS= read -r l; do c=\${l#*\\\"completion\\\":\\\"}; c=\${c%%\\\"*}; n=0; for t in \$c; do [ \"\$t\" = $1 ] && n=\$((n+1)); done; echo \$n; done"
}
ONE='while read -r l; do echo 1; done'

GRPO=(ft-train --stage grpo --train p8.zst --max_completion_length 6 --max_steps 3 --logging_steps 1
	--learning_rate 1e-3 -q)
grpo() { "${GRPO[@]}" --model_name_or_path "$LLAMA" "$@"; }

# grpo in place of the shell that runs it: started with &, its $! is
# ft-train's own pid, so kill -9 stops ft-train (not a subshell that
# would leave it running into the resumed run's directory)
grpo_exec() { exec "${GRPO[@]}" --model_name_or_path "$LLAMA" "$@"; }

@test "grpo: a run logs TRL's metrics, saves the adapter, writes completions.jsonl and plots reward beside loss" {
	need_jq
	run grpo --output_dir a --reward_funcs "c97=$(count 97)" --log_completions true --plot_loss true --beta 0.04
	assert_success
	[ -f a/adapter_model.safetensors ] && [ -f a/adapter_config.json ]
	[ -f a/training_loss.png ] && [ -f a/training_reward.png ]
	[ "$(wc -l < a/trainer_log.jsonl)" -eq 3 ]
	run jq -r '[.current_steps, .total_steps, (.loss|type), (.reward|type), (.reward_std|type),
		(."rewards/c97/mean"|type), (."rewards/c97/std"|type), (.kl|type), ."completions/mean_length",
		(."completions/clipped_ratio"|type), (."clip_ratio/region_mean"|type), (."clip_ratio/low_min"|type),
		(.frac_reward_zero_std|type), .entropy > 5] | @tsv' a/trainer_log.jsonl
	assert_success
	[ "${lines[0]}" = "$(printf '1\t3\tnumber\tnumber\tnumber\tnumber\tnumber\tnumber\t6\tnumber\tnumber\tnumber\tnumber\ttrue')" ]
	# one JSON line per completion: 8 completions (1 prompt x 8 generations) per step
	[ "$(wc -l < a/completions.jsonl)" -eq 24 ]
	run jq -r '[.step, (.prompt|type), (.completion|type), (.rewards.c97|type), (.advantage|type)] | @tsv' a/completions.jsonl
	[ "${lines[0]}" = "$(printf '0\tstring\tstring\tnumber\tnumber')" ]
	# every completion of a step shares its prompt (a group)
	[ "$(jq -r 'select(.step == 0) | .prompt' a/completions.jsonl | sort -u | wc -l)" -eq 1 ]
	# ft-plot reads the keys
	run ft-plot --ascii --width 60 --height 6 --keys loss,reward,rewards/c97/mean a/trainer_log.jsonl
	assert_success
	assert_output --partial reward
}

@test "grpo: property: a reward preferring one token raises the mean reward within 30 steps (fixed seed)" {
	need_jq
	run ft-train --stage grpo --model_name_or_path "$PEAKY" --train p8.zst --output_dir a \
		--max_completion_length 8 --max_steps 30 --logging_steps 1 --learning_rate 1e-2 \
		--lr_scheduler_type constant --reward_funcs "$(count 97)" -q
	assert_success
	first=$(jq -s '[.[:5][].reward] | add / 5' a/trainer_log.jsonl)
	last=$(jq -s '[.[-5:][].reward] | add / 5' a/trainer_log.jsonl)
	echo "mean reward of the first 5 steps $first, of the last 5 $last"
	# 8 tokens per completion: from about 0.3 to nearly all of them
	jq -en "$last > $first + 3" >/dev/null
}

@test "grpo: runs are deterministic (same seed: identical logs and adapters)" {
	grpo --output_dir a --reward_funcs "$(count 97)" --num_iterations 2 --beta 0.1
	grpo --output_dir b --reward_funcs "$(count 97)" --num_iterations 2 --beta 0.1
	cmp a/trainer_log.jsonl b/trainer_log.jsonl
	cmp a/adapter_model.safetensors b/adapter_model.safetensors
	grpo --output_dir c --reward_funcs "$(count 97)" --num_iterations 2 --beta 0.1 --seed 7
	! cmp -s a/adapter_model.safetensors c/adapter_model.safetensors || false
}

@test "grpo: each reward command starts once per run and sees one JSON line per completion" {
	need_jq
	run grpo --output_dir a --reward_funcs "echo started >> $BATS_TEST_TMPDIR/starts; tee -a $BATS_TEST_TMPDIR/seen | $ONE"
	assert_success
	[ "$(wc -l < starts)" -eq 1 ]
	[ "$(wc -l < seen)" -eq 24 ]
	run jq -r 'keys_unsorted | join(",")' seen
	[ "${lines[0]}" = "prompt,completion" ]
	jq -e '.prompt | test("^1( [0-9]+)+$")' seen >/dev/null
}

@test "grpo: several reward commands with --reward_weights: the weighted sum, one rewards/NAME each" {
	need_jq
	run grpo --output_dir a --max_steps 1 --reward_funcs "one=$ONE,two=while read -r l; do echo 2; done" \
		--reward_weights 0.5,2
	assert_success
	run jq -r '[.reward, ."rewards/one/mean", ."rewards/two/mean", .reward_std, .frac_reward_zero_std] | @tsv' a/trainer_log.jsonl
	[ "$output" = "$(printf '4.5\t1\t2\t0\t1')" ]
	# a comma inside quotes or brackets does not split the command
	run grpo --output_dir b --max_steps 1 --reward_funcs "c=while read -r l; do echo \"1,5\" | cut -d\",\" -f1; done"
	assert_success
	[ "$(jq -r '."rewards/c/mean"' b/trainer_log.jsonl)" = 1 ]
}

@test "grpo: beta 0 computes no KL; num_iterations 2 reuses a generation batch for two steps" {
	need_jq
	grpo --output_dir a --reward_funcs "$(count 97)" --num_iterations 2 --max_steps 4
	[ "$(jq -r 'has("kl")' a/trainer_log.jsonl | sort -u)" = false ]
	# generation metrics on steps 1 and 3 only (TRL logs what the window recorded)
	[ "$(jq -r 'has("reward")' a/trainer_log.jsonl | tr '\n' ' ')" = "true false true false " ]
	[ "$(jq -r 'has("clip_ratio/region_mean")' a/trainer_log.jsonl | sort -u)" = true ]
	grpo --output_dir b --reward_funcs "$(count 97)" --beta 0.04 --max_steps 1
	[ "$(jq -r '.kl | type' b/trainer_log.jsonl)" = number ]
}

@test "grpo: every --loss_type trains (their normalisations: tests/unit/test_grpo.c against TRL)" {
	need_jq
	for t in grpo bnpo dr_grpo dapo; do
		grpo --output_dir "$t" --reward_funcs "$(count 97)" --loss_type "$t" --max_steps 2 \
			--num_iterations 2 --scale_rewards false
		[ -f "$t/adapter_model.safetensors" ]
		[ "$(jq -r '.loss | type' "$t/trainer_log.jsonl" | sort -u)" = number ]
	done
}

@test "grpo: --temperature samples sharper and trains (its log-probabilities: tests/unit/test_grpo.c)" {
	need_jq
	# the peaky model at 0.05 is nearly greedy: a group's 8 completions
	# collapse to one or two, where 1.0 gives eight different ones
	for t in 0.05 1.0; do
		run grpo --model_name_or_path "$PEAKY" --output_dir "t$t" --reward_funcs "$ONE" --beta 0.04 \
			--max_steps 2 --log_completions true --temperature "$t"
		assert_success
		[ "$(wc -l < "t$t/trainer_log.jsonl")" -eq 2 ]
	done
	[ "$(jq -r 'select(.step == 0) | .completion' t0.05/completions.jsonl | sort -u | wc -l)" -le 2 ]
	[ "$(jq -r 'select(.step == 0) | .completion' t1.0/completions.jsonl | sort -u | wc -l)" -ge 6 ]
	[ "$(jq -r '.kl' t0.05/trainer_log.jsonl | tail -1)" != "$(jq -r '.kl' t1.0/trainer_log.jsonl | tail -1)" ]
}

@test "grpo: an rm adapter as one more reward (--reward_model), weighted, with its own rewards/NAME/mean" {
	need_jq
	ft-cat --encode < "$FIXTURES/pref/rm.jsonl" > rm.zst
	ft-train --stage rm --model_name_or_path "$LLAMA" --train rm.zst --output_dir myrm --max_steps 1 -q
	run grpo --output_dir a --reward_funcs "one=$ONE" --reward_model myrm/ --reward_weights 1,2 --log_completions true
	assert_success
	# reward = 1 x one + 2 x the rm's score, per completion and in the mean
	run jq -r '[(.rewards.myrm|type), (.rewards.one + 2 * .rewards.myrm)] | @tsv' a/completions.jsonl
	assert_success
	[ "${lines[0]%%$'\t'*}" = number ]
	run jq -r '[."rewards/one/mean", (."rewards/myrm/mean"|type), ."rewards/myrm/std" > 0,
		((.reward - 1 - 2 * ."rewards/myrm/mean") | fabs < 1e-5)] | @tsv' a/trainer_log.jsonl
	assert_success
	[ "${lines[0]}" = "$(printf '1\tnumber\ttrue\ttrue')" ]
	# the rm alone is a reward; the same completions get the same scores (a deterministic head)
	run grpo --output_dir b --reward_model myrm --log_completions true
	assert_success
	[ "$(jq -c '.rewards.myrm' b/completions.jsonl | head -8)" = "$(jq -c '.rewards.myrm' a/completions.jsonl | head -8)" ]
	mkdir nohead && cp "$FIXTURES"/pref/llama-lora/adapter_* nohead/
	run grpo --output_dir c --reward_model nohead
	[ "$status" -eq 1 ]; assert_output --partial "nohead/value_head.safetensors"
}

@test "grpo: a full reward model (--reward_model_type full, --reward_model_adapters) scores as the rm adapter it merges" {
	need_jq
	ft-cat --encode < "$FIXTURES/pref/rm.jsonl" > rm.zst
	ft-train --stage rm --model_name_or_path "$LLAMA" --train rm.zst --output_dir myrm --max_steps 1 -q
	run grpo --output_dir l --reward_model myrm --log_completions true --max_steps 1
	assert_success
	# the base with myrm merged, the value head the last adapter's (LLaMA-Factory's
	# create_reward_model + load_model); the same completions (one step: the same
	# policy), scores within float32 rounding of the merged W + s B A through two
	# layers and the head (measured 2.4e-7 on scores ~0.3; bound 2e-6); the
	# full model is named by its directory, as TRL names a reward model
	mkdir f
	run grpo --output_dir f/g --reward_model_type full --reward_model "$LLAMA" --reward_model_adapters myrm \
		--log_completions true --max_steps 1
	assert_success
	[ "$(jq -c .completion f/g/completions.jsonl)" = "$(jq -c .completion l/completions.jsonl)" ]
	paste <(jq .rewards.myrm l/completions.jsonl) <(jq '.rewards["tiny-llama"]' f/g/completions.jsonl) |
		awk '{ d = $1 - $2; if (d < 0) d = -d; if (d > 2e-6 || $2 == "null") bad = 1; n++ } END { exit bad || n != 8 }'
	# a full rm directory (model + value head) alone
	ft-train --stage rm --model_name_or_path "$LLAMA" --train rm.zst --output_dir fullrm --max_steps 1 -q \
		--finetuning_type full
	run grpo --output_dir g2 --reward_model_type full --reward_model fullrm --finetuning_type full
	assert_success
	[ "$(jq -r '."rewards/fullrm/mean" | type' g2/trainer_log.jsonl | sort -u)" = number ]
	run grpo --output_dir g3 --reward_model_type full --reward_model "$LLAMA"
	[ "$status" -eq 1 ]; assert_output --partial "value_head.safetensors"
	run grpo --output_dir g4 --reward_model_type full --reward_funcs "$ONE"
	[ "$status" -eq 2 ]; assert_output --partial "--reward_model_type full needs --reward_model DIR"
	run grpo --output_dir g5 --reward_model myrm --reward_model_adapters myrm
	[ "$status" -eq 2 ]; assert_output --partial "--reward_model_adapters: only --reward_model_type full uses them"
}

@test "grpo: a reward command that fails names the line, exits 1 and saves nothing" {
	run grpo --output_dir a --reward_funcs "bad=awk -W interactive 'NR == 2 { print \"x2\"; next } { print 1 }'"
	[ "$status" -eq 1 ]
	assert_output --partial "reward bad: line 2 of its output (completion 2 of the batch), 'x2', is not a number"
	[ ! -e a/adapter_model.safetensors ]
	run grpo --output_dir b --reward_funcs "quits=read -r l; echo 1; exit 3"
	[ "$status" -eq 1 ]
	assert_output --partial "reward quits exited with status 3 after 1 of 8 answers"
	[ ! -e b/adapter_model.safetensors ]
	run grpo --output_dir c --reward_funcs "twice=while read -r l; do echo 1; echo 1; done"
	[ "$status" -eq 1 ]
	# the surplus is seen when it arrives: right after the first request's
	# answers (line 9), or, on a loaded machine, with the next request's
	# (line 17); either way the run stops with nothing saved
	assert_output --regexp "reward twice: line (9|17) of its output: more lines than the 8 completions"
	[ ! -e c/adapter_model.safetensors ]
	run grpo --output_dir d --reward_funcs "no-such-command-x"
	[ "$status" -eq 1 ]
	assert_output --partial "status 127"
}

@test "grpo: refusals name the flag and the reason" {
	run grpo --output_dir a
	[ "$status" -eq 2 ]; assert_output --partial "--stage grpo needs --reward_funcs"
	run grpo --output_dir a --reward_funcs "$ONE" --num_generations 1
	[ "$status" -eq 2 ]; assert_output --partial "at least 2 completions per prompt"
	run ft-train --stage grpo --model_name_or_path "$LLAMA" --train p2.zst --output_dir a --reward_funcs "$ONE" -q
	[ "$status" -eq 2 ]; assert_output --partial "2 x 1, must be divisible by --num_generations 8"
	run grpo --output_dir a --reward_funcs "$ONE" --loss_type cispo
	[ "$status" -eq 2 ]; assert_output --partial "--loss_type: 'cispo'"
	run grpo --output_dir a --reward_funcs "$ONE" --scale_rewards sometimes
	[ "$status" -eq 2 ]; assert_output --partial "--scale_rewards: 'sometimes'"
	run grpo --output_dir a --reward_funcs "$ONE" --temperature 0
	[ "$status" -eq 2 ]; assert_output --partial "--temperature 0: must be > 0"
	run grpo --output_dir a --reward_funcs "$ONE" --max_new_tokens 4
	[ "$status" -eq 2 ]; assert_output --partial "--max_new_tokens: a --stage ppo setting; --stage grpo uses --max_completion_length"
	run grpo --output_dir a --reward_funcs "$ONE" --reward_weights 1,2
	[ "$status" -eq 2 ]; assert_output --partial "more weights than the 1 rewards"
	run grpo --output_dir a --reward_model some/rm --reward_model_type api
	[ "$status" -eq 2 ]; assert_output --partial "--reward_model_type api: with --stage grpo a command is a --reward_funcs entry"
	run grpo --output_dir a --reward_funcs "$ONE" --ref_model "$LLAMA"
	[ "$status" -eq 2 ]; assert_output --partial "--ref_model: --beta 0 (the default) uses no reference"
	run grpo --output_dir a --reward_funcs "$ONE" --finetuning_type full --train_from_scratch true --beta 0.1
	[ "$status" -eq 2 ]; assert_output --partial "the reference would be the base, which is random here"
	run grpo --output_dir a --reward_funcs "$ONE" --top_entropy_quantile 1.5
	[ "$status" -eq 2 ]; assert_output --partial "--top_entropy_quantile 1.5: must be in [0, 1]"
	run grpo --output_dir a --reward_funcs "$ONE" --mask_truncated_completions maybe
	[ "$status" -eq 2 ]; assert_output --partial "mask_truncated_completions"
	run ft-train --stage sft --model_name_or_path "$LLAMA" --train p8.zst --output_dir a --num_generations 4 -q
	[ "$status" -eq 2 ]; assert_output --partial "--num_generations: only --stage grpo uses it"
	run grpo --output_dir a --reward_funcs "$ONE" --num_generations 4 --max_steps 1 --ppo_epochs 2
	[ "$status" -eq 2 ]; assert_output --partial "--ppo_epochs: a --stage ppo setting; --stage grpo uses --num_iterations"
	run grpo --output_dir a --reward_funcs "a'b"
	[ "$status" -eq 2 ]; assert_output --partial "unterminated ' quote"
}

@test "grpo: freeze and full policies against a frozen copy of the base; the whole model is saved" {
	need_jq
	for ft in full freeze; do
		run grpo --output_dir $ft --reward_funcs "$(count 97)" --finetuning_type $ft --beta 0.04
		assert_success
		[ -f $ft/model.safetensors ] && [ -f $ft/config.json ] && [ ! -e $ft/adapter_model.safetensors ]
		# the first step's policy is the reference: KL 0, then the policy moves away
		[ "$(jq -r '.kl' $ft/trainer_log.jsonl | head -1)" = 0 ]
		[ "$(jq -r '.kl > 0' $ft/trainer_log.jsonl | tail -1)" = true ]
		cmp -s $ft/model.safetensors "$LLAMA/model.safetensors" && false
	done
	# a LoRA policy against --ref_model (the base): as its adapters off
	grpo --output_dir l1 --reward_funcs "$(count 97)" --beta 0.04
	grpo --output_dir l2 --reward_funcs "$(count 97)" --beta 0.04 --ref_model "$LLAMA"
	cmp l1/trainer_log.jsonl l2/trainer_log.jsonl
	# another reference: KL from the first step
	grpo --output_dir l3 --reward_funcs "$(count 97)" --beta 0.04 --ref_model "$PEAKY"
	[ "$(jq -r '.kl > 0' l3/trainer_log.jsonl | head -1)" = true ]
	# a full policy with an rm adapter as its reward: the rm keeps its own base
	ft-cat --encode < "$FIXTURES/pref/rm.jsonl" > rm.zst
	ft-train --stage rm --model_name_or_path "$LLAMA" --train rm.zst --output_dir rm --max_steps 1 -q
	run grpo --output_dir f2 --reward_model rm --finetuning_type full
	assert_success
	[ "$(jq -r '."rewards/rm/mean" | type' f2/trainer_log.jsonl | sort -u)" = number ]
}

@test "grpo: TRL's entropy metric, --mask_truncated_completions and --top_entropy_quantile" {
	need_jq
	# max_completion_length 6: the tiny model never stops, so every completion
	# is truncated and, masked, nothing is trained (loss and entropy 0, the
	# adapter as initialised)
	grpo --output_dir m --reward_funcs "$(count 97)" --mask_truncated_completions true --save_steps 1 --max_steps 2
	[ "$(jq -r '[."completions/clipped_ratio", .loss, .entropy] | @tsv' m/trainer_log.jsonl | sort -u)" = "$(printf '1\t0\t0')" ]
	cmp m/checkpoint-1/adapter_model.safetensors m/adapter_model.safetensors
	grpo --output_dir u --reward_funcs "$(count 97)" --max_steps 2
	[ "$(jq -r '.entropy > 5' u/trainer_log.jsonl | sort -u)" = true ]
	# the peaky model with eos 221 (a token it samples often) ends some
	# completions: those train, the truncated ones are left out
	mkdir e221 && cp "$PEAKY"/* e221/
	for f in config.json generation_config.json; do jq '.eos_token_id = 221' "$PEAKY/$f" > e221/$f; done
	grpo --model_name_or_path e221 --output_dir p --reward_funcs "$(count 97)" --max_completion_length 16 \
		--mask_truncated_completions true --max_steps 2
	[ "$(jq -r '."completions/clipped_ratio" < 1 and ."completions/clipped_ratio" > 0' p/trainer_log.jsonl | sort -u)" = true ]
	[ "$(jq -r '.entropy > 0' p/trainer_log.jsonl | sort -u)" = true ]
	grpo --model_name_or_path e221 --output_dir p2 --reward_funcs "$(count 97)" --max_completion_length 16 --max_steps 2
	[ "$(jq -r .reward p/trainer_log.jsonl | head -1)" = "$(jq -r .reward p2/trainer_log.jsonl | head -1)" ]
	[ "$(jq -r .entropy p/trainer_log.jsonl | head -1)" != "$(jq -r .entropy p2/trainer_log.jsonl | head -1)" ]
	# top_entropy_quantile: the policy term on the top 20% tokens only; the
	# same samples at step 1, another loss (on the peaky model, whose groups
	# differ in reward)
	grpo --model_name_or_path "$PEAKY" --output_dir q1 --reward_funcs "$(count 97)" --max_steps 2
	grpo --model_name_or_path "$PEAKY" --output_dir q --reward_funcs "$(count 97)" --max_steps 2 --top_entropy_quantile 0.2
	[ "$(jq -r .reward q1/trainer_log.jsonl | head -1)" = "$(jq -r .reward q/trainer_log.jsonl | head -1)" ]
	[ "$(jq -r .loss q1/trainer_log.jsonl | head -1)" != "$(jq -r .loss q/trainer_log.jsonl | head -1)" ]
	run cmp -s q1/adapter_model.safetensors q/adapter_model.safetensors
	[ "$status" -eq 1 ]
}

# r.sh: the count 97 reward, killing ft-train (its pid in ft.pid) when it
# reads line KILL_AT, as a crash would
killer() {
	cat > r.sh <<-'EOF'
	n=0
	while IFS= read -r l; do
		n=$((n+1))
		[ "$n" = "${KILL_AT:-0}" ] && kill -9 "$(cat ft.pid)"
		c=${l#*\"completion\":\"}; c=${c%%\"*}; k=0
		for t in $c; do [ "$t" = 97 ] && k=$((k+1)); done
		echo $k
	done
	EOF
}

@test "grpo: killed and resumed from --save_steps checkpoints, the same log, completions and weights as an uninterrupted run" {
	need_jq
	killer
	# lora: beta > 0, num_iterations 2, the checkpoint at step 3 inside the
	# second generation batch (its completions, advantages, old and
	# reference log-probabilities saved); the kill at line 17, the third
	# generation batch's first completion, after the checkpoint.
	# full: one iteration per batch, the whole model in the checkpoint; the
	# kill in the fourth batch
	for ft in lora full; do
		args=(--reward_funcs "c97=sh r.sh" --finetuning_type $ft --beta 0.04 --num_iterations 2 --max_steps 6
			--save_steps 3 --log_completions true --num_generations 4 --seed 7)
		kill_at=17
		[ $ft = full ] && args+=(--num_iterations 1) && kill_at=25   # 8 completions a batch, one batch a step
		grpo --output_dir U$ft "${args[@]}"
		[ -f U$ft/checkpoint-3/optimizer.safetensors ] && [ -f U$ft/checkpoint-3/grpo_state.json ]
		[ -f U$ft/checkpoint-3/grpo_buffer.safetensors ] && [ -d U$ft/checkpoint-6 ]
		(KILL_AT=$kill_at; export KILL_AT; grpo_exec --output_dir K$ft "${args[@]}" & echo $! > ft.pid; wait $!) && false
		[ -d K$ft/checkpoint-3 ] && [ ! -e K$ft/checkpoint-6 ]
		grpo --output_dir K$ft "${args[@]}" --resume_from_checkpoint true
		cmp U$ft/trainer_log.jsonl K$ft/trainer_log.jsonl
		cmp U$ft/completions.jsonl K$ft/completions.jsonl
		if [ $ft = lora ]; then
			cmp U$ft/adapter_model.safetensors K$ft/adapter_model.safetensors
			[ "$(jq -r .iterations_done U$ft/checkpoint-3/grpo_state.json)" = 1 ]
		else
			cmp U$ft/model.safetensors K$ft/model.safetensors
		fi
		cmp U$ft/checkpoint-6/optimizer.safetensors K$ft/checkpoint-6/optimizer.safetensors
	done
	run grpo --output_dir Klora "${args[@]}" --max_steps 8 --resume_from_checkpoint Klora/checkpoint-3
	[ "$status" -eq 1 ]
	assert_output --partial "resume with the same settings"
	run grpo --output_dir S --reward_funcs "$ONE" --save_steps 1 --save_total_limit 1
	assert_success
	[ -d S/checkpoint-3 ] && [ ! -e S/checkpoint-2 ]
}

@test "examples/grpo.mk: tokenize, pack, GRPO with the arithmetic checker, plot; check.sh scores answers" {
	need_jq
	# the checker reads the dataset's answer column, passed along with the line
	run sh "$FT_ROOT/examples/grpo/check.sh" <<-'IN'
	{"prompt":"Human: What is 3+4?\nAssistant:","completion":" 7, I think","answer":7}
	{"prompt":"Human: What is 3+4?\nAssistant:","completion":"8","answer":7}
	{"prompt":"Human: hello","completion":"no number","answer":7}
	{"prompt":"Human: What is 9+9?\nAssistant:","completion":"18 (\"answer\":3)","answer":18}
	IN
	[ "$output" = "$(printf '1\n0\n0\n1')" ]
	run sh "$FT_ROOT/examples/grpo/check.sh" <<< '{"prompt":"What is 3+4?","completion":"7"}'
	[ "$status" -eq 1 ]; assert_output --partial 'check.sh: no numeric "answer" in'
	[ "$(jq -c 'keys_unsorted' "$FT_ROOT/examples/grpo/arith.jsonl" | sort -u)" = '["instruction","answer"]' ]
	mkdir m && cp "$LLAMA"/* "$FIXTURES"/generate/tokenizer/* m/   # the tiny model with a tokenizer
	run make -f "$FT_ROOT/examples/grpo.mk" MODEL="$BATS_TEST_TMPDIR/m" OUT=out MAX_STEPS=3
	assert_success
	[ -s out/reward.svg ] && [ -s out/adapter/adapter_model.safetensors ]
	[ "$(wc -l < out/adapter/trainer_log.jsonl)" -eq 3 ]
	jq -e '.prompt | test("What is [0-9]\\+[0-9]\\?")' out/adapter/completions.jsonl >/dev/null
	[ "$(jq -r '."rewards/acc/mean" | type' out/adapter/trainer_log.jsonl | sort -u)" = number ]
}

@test "grpo: --use_dora trains a DoRA adapter; it starts as the base, so the first step's KL to the reference is 0" {
	need_jq
	grpo --output_dir d --reward_funcs "$(count 97)" --beta 0.04 --log_completions true --use_dora true
	grpo --output_dir l --reward_funcs "$(count 97)" --beta 0.04 --log_completions true
	[ "$(jq .use_dora d/adapter_config.json)" = true ]
	[ "$(magnitudes d)" = 14 ]   # the 7 linears (lora_target all, the default) of 2 layers
	[ "$(jq -s '.[0].kl' d/trainer_log.jsonl)" = 0 ]
	# the first completions are the base's either way; the updates differ
	# (the KL after two of them)
	cmp <(jq -c 'select(.step == 0)' d/completions.jsonl) <(jq -c 'select(.step == 0)' l/completions.jsonl)
	[ "$(jq -s '.[2].kl' d/trainer_log.jsonl)" != "$(jq -s '.[2].kl' l/trainer_log.jsonl)" ]
	# sampling reads DoRA's scales of the weights trained so far: a run
	# resumed from checkpoint-2 (scales made afresh from the loaded adapter)
	# draws the uninterrupted run's completions
	args=(--reward_funcs "$(count 97)" --beta 0.04 --log_completions true --use_dora true --save_steps 2
		--max_steps 4 --learning_rate 1e-2)
	grpo --output_dir U "${args[@]}"
	mkdir K && cp -r U/checkpoint-2 K/ && cp U/trainer_log.jsonl U/completions.jsonl K/
	grpo --output_dir K "${args[@]}" --resume_from_checkpoint true
	cmp U/completions.jsonl K/completions.jsonl
	cmp U/trainer_log.jsonl K/trainer_log.jsonl
}

# the optimizer extras and PiSSA: refused (tools/ft-train/rl_args.c), one each
@test "grpo: refuses PiSSA and each optimizer choice the GRPO loop does not step" {
	run grpo --output_dir a --reward_funcs "$ONE" --pissa_init true
	[ "$status" -eq 2 ]; assert_output --partial "--pissa_init: PiSSA cannot be used for --stage grpo"
	run grpo --output_dir a --reward_funcs "$ONE" --pissa_convert true
	[ "$status" -eq 2 ]; assert_output --partial "--pissa_convert: PiSSA cannot be used for --stage grpo"
	run grpo --output_dir a --reward_funcs "$ONE" --loraplus_lr_ratio 4
	[ "$status" -eq 2 ]; assert_output --partial "--loraplus_lr_ratio: --stage grpo steps plain AdamW"
	run grpo --output_dir a --reward_funcs "$ONE" --use_muon true
	[ "$status" -eq 2 ]; assert_output --partial "--use_muon: --stage grpo steps plain AdamW"
	run grpo --output_dir a --reward_funcs "$ONE" --finetuning_type full --use_galore true
	[ "$status" -eq 2 ]; assert_output --partial "--use_galore: --stage grpo steps plain AdamW"
	run grpo --output_dir a --reward_funcs "$ONE" --finetuning_type full --use_apollo true
	[ "$status" -eq 2 ]; assert_output --partial "--use_apollo: --stage grpo steps plain AdamW"
	run grpo --output_dir a --reward_funcs "$ONE" --finetuning_type full --use_badam true
	[ "$status" -eq 2 ]; assert_output --partial "--use_badam: --stage grpo steps plain AdamW"
	run grpo --output_dir a --reward_funcs "$ONE" --finetuning_type full --use_adam_mini true
	[ "$status" -eq 2 ]; assert_output --partial "--use_adam_mini (--optim adam_mini): --stage grpo steps plain AdamW"
	run grpo --output_dir a --reward_funcs "$ONE" --finetuning_type full --optim adam_mini
	[ "$status" -eq 2 ]; assert_output --partial "--use_adam_mini (--optim adam_mini): --stage grpo steps plain AdamW"
	[ ! -e a ]
}
