#!/usr/bin/env bats
# mpirun -np 2 ft-train --stage ppo (docs/PPO.md "Several processes"):
# each rank takes its own batch of prompts per step (batch k of the step's
# W to rank k), generates, scores and whitens its own rollouts (TRL 0.9.6's
# masked_whiten is per process), so two ranks are not one process with
# twice the batch.  What must be equal, and is compared bit for bit:
#
# - Two ranks given the same prompts (the file's two batches equal) are
#   one process on those prompts: the same samples (every rank seeds its
#   generator alike, as set_seed does in each process), the same local
#   advantages, and DDP's mean of two equal gradients ((g + g) / 2 is g
#   exactly); only the KL controller's update differs, by its n_steps
#   batch x processes, which the test recomputes from the logged numbers.
# - Swapping the ranks' prompts (AB against BA) changes nothing but rank
#   0's own numbers (LLaMA-Factory's reward meter, TRL's tokens/ lengths):
#   the gradients, score moments and gathered statistics are sums of two
#   numbers, a + b = b + a exactly.  Without the gradient sum each rank
#   would train on its own prompts and the two runs' weights would differ.
# - At the first step, before any update, a rank's rollout is a one-process
#   run's on its prompts: the gathered rollout statistics are the mean of
#   the two one-process runs' ((a + b) / 2 in double, as the gather).
load helper
load mpi_helper

LLAMA="$FIXTURES/models/tiny-llama"

setup() {
	cd "$BATS_TEST_TMPDIR"
	command -v ft-cat >/dev/null || { echo "ft-cat is not built (run make)" >&2; return 1; }
	# A = batch 0 (two prompts), B = batch 1; ab.zst is the fixture itself
	f="$FIXTURES/ppo/prompts.jsonl"
	ft-cat --encode < "$f" > ab.zst
	pick() { head -1 "$f"; sed -n "$(($1 + 2))p" "$f" | jq -c '.index = 0'; sed -n "$(($2 + 2))p" "$f" | jq -c '.index = 1'; }
	pick 0 0 | ft-cat --encode > aa.zst
	pick 1 1 | ft-cat --encode > bb.zst
	pick 1 0 | ft-cat --encode > ba.zst
}

# a reward that varies with the sampled tokens: (sum of the response's ids mod 13) / 4
REWARD="awk -F'\"response\":\"' '{ split(\$2, u, \"\\\"\"); n = split(u[1], t, \" \"); s = 0; for (i = 1; i <= n; i++) s += t[i]; print (s % 13) / 4 }'"

ppo_args() {
	args=(--stage ppo --model_name_or_path "$LLAMA" --do_sample true --max_new_tokens 6 --logging_steps 1
		--learning_rate 1e-3 --seed 3 -q --reward_model_type api --reward_model "$REWARD" "$@")
}

# the log lines of two runs equal but for the keys given
same_log() {
	local del="del(.[\"reward\"])"
	for k in "${@:3}"; do del="$del | del(.[\"$k\"])"; done
	diff <(jq -c "$del" "$1/trainer_log.jsonl") <(jq -c "$del" "$2/trainer_log.jsonl")
}

@test "ppo mpi: two ranks with the same prompts are one process on them, the KL controller counting batch x processes" {
	need_mpi
	ppo_args --train aa.zst --max_steps 1
	ft-train "${args[@]}" --output_dir one
	mpi2 ft-train "${args[@]}" --output_dir two
	cmp one/trainer_log.jsonl two/trainer_log.jsonl
	cmp one/adapter_model.safetensors two/adapter_model.safetensors
	cmp one/value_head.safetensors two/value_head.safetensors
	# two steps: the second coefficient is init x (1 + clip(kl / target - 1, +-0.2) x n / horizon)
	ppo_args --train aa.zst --max_steps 2
	ft-train "${args[@]}" --output_dir one2
	mpi2 ft-train "${args[@]}" --output_dir two2
	for run in "one2 2" "two2 4"; do
		set -- $run
		read -r kl c0 < <(jq -r 'select(.current_steps == 1) | "\(."objective/kl") \(."objective/kl_coef")"' $1/trainer_log.jsonl)
		c1=$(jq -r 'select(.current_steps == 2) | ."objective/kl_coef"' $1/trainer_log.jsonl)
		awk -v kl="$kl" -v c0="$c0" -v c1="$c1" -v n="$2" 'BEGIN {
			e = kl / 6 - 1; if (e < -0.2) e = -0.2; if (e > 0.2) e = 0.2
			c = c0 * (1 + e * n / 10000); exit !(c == c1 + 0) }' || { echo "$1: kl_coef $c1 (kl $kl, n $2)" >&2; return 1; }
	done
	! cmp -s one2/adapter_model.safetensors two2/adapter_model.safetensors || false
}

@test "ppo mpi: the ranks' prompts swapped give the same weights and gathered statistics; rank 0 logs its own reward" {
	need_mpi
	ppo_args --max_steps 3 --ppo_score_norm true
	mpi2 ft-train "${args[@]}" --train ab.zst --output_dir ab
	mpi2 ft-train "${args[@]}" --train ba.zst --output_dir ba
	cmp ab/adapter_model.safetensors ba/adapter_model.safetensors
	cmp ab/value_head.safetensors ba/value_head.safetensors
	same_log ab ba tokens/queries_len_mean tokens/queries_len_std tokens/responses_len_mean tokens/responses_len_std
	# the ranks' rewards differ (else the swap would show nothing)
	[ "$(jq -c '[.reward]' ab/trainer_log.jsonl)" != "$(jq -c '[.reward]' ba/trainer_log.jsonl)" ]
}

@test "ppo mpi: the first step's rollout statistics are the mean of each rank's one-process run; reward and lengths rank 0's" {
	need_mpi
	ppo_args --max_steps 1
	mpi2 ft-train "${args[@]}" --train ab.zst --output_dir ab
	ft-train "${args[@]}" --train aa.zst --output_dir a
	ft-train "${args[@]}" --train bb.zst --output_dir b
	for k in reward tokens/queries_len_mean tokens/responses_len_mean tokens/responses_len_std; do
		[ "$(jq ".[\"$k\"]" ab/trainer_log.jsonl)" = "$(jq ".[\"$k\"]" a/trainer_log.jsonl)" ] ||
			{ echo "$k is not rank 0's" >&2; return 1; }
	done
	for k in ppo/mean_scores ppo/std_scores objective/kl objective/entropy ppo/mean_non_score_reward; do
		x=$(jq ".[\"$k\"]" a/trainer_log.jsonl) y=$(jq ".[\"$k\"]" b/trainer_log.jsonl) z=$(jq ".[\"$k\"]" ab/trainer_log.jsonl)
		awk -v x="$x" -v y="$y" -v z="$z" 'BEGIN { exit !((x + y) / 2 == z + 0) }' ||
			{ echo "$k: $z is not the mean of $x and $y" >&2; return 1; }
	done
	[ "$(jq '.["ppo/mean_scores"]' a/trainer_log.jsonl)" != "$(jq '.["ppo/mean_scores"]' b/trainer_log.jsonl)" ]
}

@test "ppo mpi: --ppo_score_norm's running moments count every rank's scores (get_global_statistics)" {
	need_mpi
	# two ranks of the same 2 scores: the batch's std over 4 scores is
	# sqrt(4/3 var), so each rank's normalised scores have std
	# sqrt(2 var) / sqrt(4/3 var) = sqrt(3/2); one process: 1 (float32
	# scores and eps: 1e-6)
	ppo_args --train aa.zst --max_steps 1 --ppo_score_norm true
	ft-train "${args[@]}" --output_dir one
	mpi2 ft-train "${args[@]}" --output_dir two
	for run in "one 1" "two 1.224744871391589"; do
		set -- $run
		s=$(jq '.["ppo/std_scores"]' $1/trainer_log.jsonl)
		awk -v s="$s" -v w="$2" 'BEGIN { d = s - w; exit !(d < 1e-6 && d > -1e-6) }' ||
			{ echo "$1: std_scores $s, not $2" >&2; return 1; }
	done
}

@test "ppo mpi: each rank runs its own reward command on its own responses" {
	need_mpi
	REWARD='tee -a seen.$PPID | awk "{ print 1 }"'   # $PPID: the rank's ft-train
	ppo_args --train ab.zst --max_steps 2
	mpi2 ft-train "${args[@]}" --output_dir a
	[ "$(ls seen.* | wc -l)" -eq 2 ]
	for f in seen.*; do [ "$(wc -l < $f)" -eq 4 ]; done   # 2 responses x 2 steps
	[ "$(cat seen.* | jq -r .prompt | sort -u | wc -l)" -eq 4 ]   # between them every prompt
}

@test "ppo mpi: a checkpoint resumed on two ranks gives the same log, adapter and value head" {
	need_mpi
	ppo_args --train ab.zst --max_steps 4 --save_steps 2 --ppo_score_norm true
	mpi2 ft-train "${args[@]}" --output_dir A
	[ -f A/checkpoint-2/ppo_state.json ] && [ -d A/checkpoint-4 ]
	[ "$(jq .processes A/checkpoint-2/ppo_state.json)" -eq 2 ]
	mkdir B && cp -r A/checkpoint-2 B/ && cp A/trainer_log.jsonl B/
	mpi2 ft-train "${args[@]}" --output_dir B --resume_from_checkpoint true
	cmp A/trainer_log.jsonl B/trainer_log.jsonl
	cmp A/adapter_model.safetensors B/adapter_model.safetensors
	cmp A/value_head.safetensors B/value_head.safetensors
	run ft-train "${args[@]}" --output_dir A --resume_from_checkpoint A/checkpoint-2
	[ "$status" -eq 1 ]
	assert_output --partial "the checkpoint was made by 2 processes; this run has 1: resume with as many"
}

@test "ppo mpi: --zero is refused with the reason" {
	need_mpi
	ppo_args --train ab.zst --max_steps 1
	run mpi2 ft-train "${args[@]}" --output_dir a --zero 1
	[ "$status" -ne 0 ]
	assert_output --partial "--zero 1: --stage ppo under mpirun keeps the whole AdamW state on every rank"
}
