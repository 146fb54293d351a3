#!/usr/bin/env bats
# mpirun -np 2 ft-train --stage grpo --device cuda: each rank samples,
# scores and trains its own rows of the generation batch (as on the CPU,
# tests/bats/ft-train-grpo-mpi.bats), its rollouts decoded on its own
# emulated device (lib/cuda/decoder.c) and the gradients summed over the
# fake NCCL (lib/train/cuda_pref.c's sum_group, after the micro-batch's
# backward).  FT_CUDA_LIB=build/libft_cuda_emu.so, FT_EMU_DEVICES=2,
# FT_NCCL_LIB=build/libnccl_emu.so, as ft-train-nccl-emu.bats.
#
# Tolerances.  Against one emulated device with twice the accumulation
# (the same generation batch): ft-train-grpo-mpi.bats's argument, one
# device for the CPU: the samples are the same bits (each row's generator
# is seeded by its index in the whole batch, and a row's logits do not
# depend on the rows beside it), so the rewards and generation metrics are
# equal exactly; kl and entropy 1e-6 absolute, the loss (4 decimals) one
# unit of its last digit, the adapter 1e-5.  Against the CPU's 2 ranks:
# ft-train-rl-emu.bats's device-vs-CPU argument (the device's decoder
# draws the CPU's tokens, so the rewards are equal; every other number
# within 1e-4 relative or 1e-5 absolute, the loss one unit of its 4th
# decimal).  A 2-rank checkpoint resumed on 2 ranks: bit for bit.  A
# missing or stale gradient sum moves the rewards of the next generation
# and the KL by > 10% (checked by hand: the device policy's sum disabled).
bats_require_minimum_version 1.5.0
load helper
load mpi_helper

setup() {
	cd "$BATS_TEST_TMPDIR"
	need_nccl_emu
	ft-cat --encode < "$FIXTURES/grpo/prompts.jsonl" > p8.zst   # 8 prompts, batch_size 8
	printf 'while read -r l; do echo ${#l}; done\n' > len.sh      # a reward that varies: the line's length
}
grpo_args() {
	args=(--stage grpo --train p8.zst --max_completion_length 6 --logging_steps 1 --learning_rate 1e-3 -q
		--reward_funcs "len=sh len.sh" --beta 0.04 --model_name_or_path "$FIXTURES/models/tiny-llama"
		--num_generations 4 --num_iterations 2 --max_steps 4 --save_steps 2 "$@")
}
# every number of every log line but the clock's, as "key value"; KEEP=0
# leaves out TRL's clip ratios' min and max, which are per-rank values
# gathered (nanmin/nanmax over the ranks' means) and so a mean over other
# micro-batches on one process (ft-train-grpo-mpi.bats compares region_mean)
gnums() { jq -r --argjson keep "${KEEP:-1}" 'del(.elapsed_time, .remaining_time, .throughput) | to_entries[] |
		select($keep == 1 or (.key | test("^clip_ratio/.*_(min|max)$") | not)) |
		select(.value | type == "number") | "\(.key) \(.value)"' "$1"; }
# close A B REL ABS: the same keys line by line; rewards and the
# generation's counts equal, the loss within 1.01e-4, others within REL
# relative or ABS absolute
close() {
	[ "$(gnums "$1" | wc -l)" -gt 10 ]
	[ "$(gnums "$1" | wc -l)" -eq "$(gnums "$2" | wc -l)" ]
	paste -d' ' <(gnums "$1") <(gnums "$2") | awk -v rel="$3" -v abs="$4" '
		$1 != $3 { print "# key " $1 " against " $3; bad = 1 }
		{ d = $2 - $4; if (d < 0) d = -d; m = $2 < 0 ? -$2 : $2
		  exact = $1 ~ /^(reward|reward_std|rewards\/|frac_reward_zero_std|completions\/|lr|epoch|current_steps)/
		  if (exact && d > 0) { print "# " $1 ": " $2 " against " $4; bad = 1 }
		  if (d > ($1 == "loss" ? 1.01e-4 : abs) && d > rel * m) { print "# " $1 ": " $2 " against " $4; bad = 1 }
		  if (m > 1e-2 && d / m > w) w = d / m; n++ }
		END { printf "# %d numbers, worst relative difference %.3g on those above 1e-2\n", n, w
		      exit bad || n == 0 }' >&3
}

@test "NCCL (emulated) grpo: 2 ranks == 1 device x 2 == the CPU's 2 ranks; a 2-rank checkpoint resumes on 2 ranks bit for bit" {
	grpo_args
	run --separate-stderr mpi2 ft-train "${args[@]}" -v --device cuda --gradient_accumulation_steps 1 \
		--output_dir two
	assert_success
	[[ "$stderr" == *"rank 0: note: training on cuda:0 (ft host emulation"* ]]
	[[ "$stderr" == *"rank 0: note: rollouts decoded on cuda:0 (ft host emulation"* ]]
	[ "$(wc -l < two/trainer_log.jsonl)" -eq 4 ] && [ -d two/checkpoint-4 ]
	run ft-train "${args[@]}" --device cuda --gradient_accumulation_steps 2 --output_dir one
	assert_success
	KEEP=0 close one/trainer_log.jsonl two/trainer_log.jsonl 0 1e-6
	w=$("$MAXDIFF" one/adapter_model.safetensors two/adapter_model.safetensors)
	echo "# 2 emulated GPUs against 1: adapter within $w" >&3
	within "$w" 1e-5
	run mpi2 ft-train "${args[@]}" --device cpu --gradient_accumulation_steps 1 --output_dir cpu
	assert_success
	close cpu/trainer_log.jsonl two/trainer_log.jsonl 1e-4 1e-5
	# resumed on two ranks from the device's checkpoint-2: the same log and adapter
	mkdir three && cp -r two/checkpoint-2 three/ && head -n 2 two/trainer_log.jsonl > three/trainer_log.jsonl
	run mpi2 ft-train "${args[@]}" --device cuda --gradient_accumulation_steps 1 --output_dir three \
		--resume_from_checkpoint three/checkpoint-2
	assert_success
	cmp <(jq -c 'del(.elapsed_time, .remaining_time, .throughput)' two/trainer_log.jsonl) \
	    <(jq -c 'del(.elapsed_time, .remaining_time, .throughput)' three/trainer_log.jsonl)
	cmp two/adapter_model.safetensors three/adapter_model.safetensors
	cmp two/checkpoint-4/optimizer.safetensors three/checkpoint-4/optimizer.safetensors
}

@test "NCCL (emulated) grpo: a group straddling the ranks (16 generations of one prompt) matches 1 device" {
	grpo_args --num_generations 16 --loss_type grpo --num_iterations 1 --max_steps 3 --save_steps 0 \
		--model_name_or_path "$FIXTURES/grpo/peaky-llama"
	run mpi2 ft-train "${args[@]}" --device cuda --gradient_accumulation_steps 1 --output_dir two
	assert_success
	run ft-train "${args[@]}" --device cuda --gradient_accumulation_steps 2 --output_dir one
	assert_success
	[ "$(jq -r '.reward_std > 0' two/trainer_log.jsonl | sort -u)" = true ]
	KEEP=0 close one/trainer_log.jsonl two/trainer_log.jsonl 0 1e-6
	within "$("$MAXDIFF" one/adapter_model.safetensors two/adapter_model.safetensors)" 1e-5
}

@test "NCCL (emulated) grpo full fine-tuning (reference: a frozen base on each rank's device) matches 1 device" {
	grpo_args --finetuning_type full --max_steps 2 --save_steps 0
	run mpi2 ft-train "${args[@]}" --device cuda --gradient_accumulation_steps 1 --output_dir two
	assert_success
	run ft-train "${args[@]}" --device cuda --gradient_accumulation_steps 2 --output_dir one
	assert_success
	KEEP=0 close one/trainer_log.jsonl two/trainer_log.jsonl 0 1e-6
	run mpi2 ft-train "${args[@]}" --device cpu --gradient_accumulation_steps 1 --output_dir cpu
	assert_success
	close cpu/trainer_log.jsonl two/trainer_log.jsonl 1e-4 1e-5
	within "$("$MAXDIFF" one/model.safetensors two/model.safetensors)" 1e-5
}

# NEFTune's noise streams are per rank (a process's own draws), so two
# ranks are compared with the CPU's two ranks, not with one process
@test "NCCL (emulated) grpo --neftune_noise_alpha: 2 ranks == the CPU's 2 ranks (each rank's noise streams)" {
	grpo_args --neftune_noise_alpha 1 --num_iterations 1 --max_steps 3 --save_steps 0
	run mpi2 ft-train "${args[@]}" --device cuda --output_dir two
	assert_success
	run mpi2 ft-train "${args[@]}" --device cpu --output_dir cpu
	assert_success
	close cpu/trainer_log.jsonl two/trainer_log.jsonl 1e-4 1e-5
}

@test "NCCL (emulated) grpo, ppo: what stays refused under mpirun on GPUs names its reason" {
	grpo_args --max_steps 2 --save_steps 0
	run mpi2 ft-train "${args[@]}" --device cuda --zero 1 --output_dir z
	[ "$status" -eq 2 ]
	assert_output --partial "--zero 1: --stage grpo under mpirun keeps the whole AdamW state on every rank"
	run mpi2 ft-train --stage ppo --train p8.zst --model_name_or_path "$FIXTURES/models/tiny-llama" \
		--reward_model "$FIXTURES/pref/llama-lora" --device cuda --zero 1 --output_dir p -q
	[ "$status" -eq 2 ]
	assert_output --partial "--zero 1: --stage ppo under mpirun keeps the whole AdamW state on every rank"
	# --device auto now takes the GPUs for grpo under mpirun
	run --separate-stderr mpi2 ft-train "${args[@]}" -v --device auto --output_dir a
	assert_success
	[[ "$stderr" == *"rank 0: note: training on cuda:0 (ft host emulation"* ]]
}
