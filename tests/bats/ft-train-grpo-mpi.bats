#!/usr/bin/env bats
# mpirun -np 2 ft-train --stage grpo (docs/GRPO.md, docs/DISTRIBUTED.md):
# two ranks x accumulation 1 against one process x accumulation 2, the
# same generation batch of 16 completions.  Skipped with a message where
# mpirun or build/libft_mpi.so is absent.
#
# Tolerances.  The samples are the same bits (each row's generator is
# seeded by its index in the whole generation batch, and a row's logits do
# not depend on the rows beside it), so the rewards and the generation
# metrics are equal exactly.  The gradient of a step is the same sum over
# the same tokens (dapo: / the whole batch's tokens; grpo: per sequence),
# summed over the ranks in another order: float32 rounding, ~1e-7 relative.
# Through AdamW at lr 1e-3 over 3-4 steps the weights then differ by
# ~1e-6 (measured 1.5e-6 on the peaky model): 1e-5 allows for other BLAS
# kernels, far below the ~1e-3 per step a wrong gradient (a missing rank's
# share) moves them.  kl and entropy are TRL's global masked means of a
# micro-batch position over the ranks; the one process averages its two
# micro-batches' means, the same number where (as here) every completion
# has the same length: 1e-6 absolute (they are ~1e-2 and ~5).
load helper
load mpi_helper


setup() {
	cd "$BATS_TEST_TMPDIR"
	command -v ft-cat >/dev/null || { echo "ft-cat is not built (run make)" >&2; return 1; }
	ft-cat --encode < "$FIXTURES/grpo/prompts.jsonl" > p8.zst   # 8 prompts, batch_size 8
	printf 'while read -r l; do echo ${#l}; done\n' > len.sh      # a reward that varies: the line's length
}
grpo_args() {
	args=(--stage grpo --train p8.zst --max_completion_length 6 --logging_steps 1 --learning_rate 1e-3 -q
		--reward_funcs "len=sh len.sh" --beta 0.04 "$@")
}
same_run() {
	for k in reward reward_std rewards/len/mean rewards/len/std frac_reward_zero_std completions/mean_length \
		 completions/clipped_ratio lr epoch; do
		[ "$(jq -c ".[\"$k\"]" one/trainer_log.jsonl)" = "$(jq -c ".[\"$k\"]" two/trainer_log.jsonl)" ] ||
			{ echo "$k differs" >&2; return 1; }
	done
	for k in kl entropy clip_ratio/region_mean; do
		d=$(field_diff one/trainer_log.jsonl two/trainer_log.jsonl "$k")
		awk -v d="$d" 'BEGIN { exit !(d < 1e-6) }' || { echo "$k: $d" >&2; return 1; }
	done
	# the loss is rounded to 4 digits (and -0 prints as such): one unit of
	# the last digit where the two sums straddle a rounding boundary
	d=$(field_diff one/trainer_log.jsonl two/trainer_log.jsonl loss)
	awk -v d="$d" 'BEGIN { exit !(d < 1.01e-4) }' || { echo "loss: $d" >&2; return 1; }
	w=$("$MAXDIFF" one/adapter_model.safetensors two/adapter_model.safetensors)
	awk -v d="$w" 'BEGIN { exit !(d < 1e-5) }' || { echo "adapter: $w" >&2; return 1; }
}

@test "grpo mpi: 2 ranks equal 1 process with the same generation batch (groups within a rank; num_iterations 2)" {
	need_mpi
	grpo_args --model_name_or_path "$FIXTURES/models/tiny-llama" --num_generations 4 --num_iterations 2 \
		--max_steps 4 --save_steps 2
	ft-train "${args[@]}" --output_dir one --gradient_accumulation_steps 2
	mpi2 ft-train "${args[@]}" --output_dir two --gradient_accumulation_steps 1
	[ "$(wc -l < two/trainer_log.jsonl)" -eq 4 ] && [ -d two/checkpoint-4 ]
	same_run
	# resumed on two ranks from a checkpoint: the same log and adapter
	mkdir three && cp -r two/checkpoint-2 three/ && cp two/trainer_log.jsonl three/
	mpi2 ft-train "${args[@]}" --output_dir three --gradient_accumulation_steps 1 --resume_from_checkpoint true
	cmp two/trainer_log.jsonl three/trainer_log.jsonl
	cmp two/adapter_model.safetensors three/adapter_model.safetensors
}

@test "grpo mpi: a group straddling the ranks gets the advantages of the whole group (TRL gathers the rewards)" {
	need_mpi
	# 16 generations of one prompt: rank 0 samples 8, rank 1 the other 8
	grpo_args --model_name_or_path "$FIXTURES/grpo/peaky-llama" --num_generations 16 --loss_type grpo --max_steps 3
	ft-train "${args[@]}" --output_dir one --gradient_accumulation_steps 2
	mpi2 ft-train "${args[@]}" --output_dir two --gradient_accumulation_steps 1
	[ "$(jq -r '.reward_std > 0' two/trainer_log.jsonl | sort -u)" = true ]
	same_run
}

@test "grpo mpi: refusals name the reason" {
	need_mpi
	grpo_args --model_name_or_path "$FIXTURES/models/tiny-llama" --num_generations 4 --max_steps 2
	run mpi2 ft-train "${args[@]}" --output_dir a --log_completions true
	[ "$status" -ne 0 ]; assert_output --partial "--log_completions: under mpirun each rank holds only its own"
	run mpi2 ft-train "${args[@]}" --output_dir a --num_iterations 2 --save_steps 3
	[ "$status" -ne 0 ]; assert_output --partial "a multiple of --num_iterations 2"
	run mpi2 ft-train "${args[@]}" --output_dir a --num_generations 3
	[ "$status" -ne 0 ]; assert_output --partial "8 x 1 x 2, must be divisible by --num_generations 3"
}
