#!/usr/bin/env bats
# mpirun -np 2 ft-train --resume_from_checkpoint with the checkpoint on
# rank 0's machine only (lib/train/dist_ckpt.c, docs/DISTRIBUTED.md
# "Several machines"): each rank runs in its own directory (r0, r1) and the
# checkpoint and output_dir are named relatively, so rank 1 sees neither.
# Rank 0 resolves the path and sends the rest what they read, so the
# resumed run is the uninterrupted 2-rank run bit for bit (logs, weights,
# the last checkpoint's optimizer state): the same data in the same
# order, as a resume from a shared directory.  Skipped with a message
# where mpirun or build/libft_mpi.so is absent.
load helper
load mpi_helper
load resume_helper

MODEL="$FIXTURES/models/tiny-llama"
PREF="$FIXTURES/pref"

setup() {
	cd "$BATS_TEST_TMPDIR"
	command -v ft-cat >/dev/null || { echo "ft-cat is not built (run make)" >&2; return 1; }
	mkdir -p r0/out r1 tmp
}

@test "sft LoRA and full, with and without --zero 1: a checkpoint on rank 0's machine only resumes bit for bit" {
	need_mpi
	ft-cat --encode < "$FIXTURES/trainer/train.jsonl" > train.zst
	sft_case lora adapter_model.safetensors
	sft_case lora adapter_model.safetensors --zero 1
	sft_case full model.safetensors
	sft_case full model.safetensors --zero 1
}

# the extras' optimizers keep their state in files of their own, sent by
# rank 0 as the other small files
@test "sft with Muon and BAdam: their optimizer states come from rank 0's checkpoint too; bit for bit" {
	need_mpi
	ft-cat --encode < "$FIXTURES/trainer/train.jsonl" > train.zst
	sft_case full model.safetensors --use_muon --learning_rate 1e-3
	[ -f full/checkpoint-4/muon_optimizer.safetensors ]
	sft_case full model.safetensors --use_badam --badam_switch_interval 3 --learning_rate 1e-3
	[ -f full/checkpoint-4/badam_state.json ]
}

@test "dpo: a checkpoint on rank 0's machine only resumes bit for bit" {
	need_mpi
	dpo_resume_args
	resume_case adapter_model.safetensors
}

@test "grpo: a checkpoint on rank 0's machine only resumes bit for bit (its buffer and state sent by rank 0)" {
	need_mpi
	grpo_resume_args
	resume_case adapter_model.safetensors
}

@test "ppo: a checkpoint on rank 0's machine only resumes bit for bit (adapter, value head, ppo_state sent by rank 0)" {
	need_mpi
	ft-cat --encode < "$FIXTURES/ppo/prompts.jsonl" > ab.zst
	printf 'while read -r l; do echo ${#l}; done\n' > len.sh
	args=(--stage ppo --train "$PWD/ab.zst" --model_name_or_path "$MODEL" --do_sample true --max_new_tokens 6
		--logging_steps 1 --learning_rate 1e-3 --seed 3 -q --reward_model_type api
		--reward_model "sh $PWD/len.sh" --max_steps 4 --save_steps 2)
	resume_case adapter_model.safetensors value_head.safetensors
}

@test "a checkpoint missing on rank 0's machine: rank 0 names it in one line, the job ends non-zero" {
	need_mpi
	ft-cat --encode < "$FIXTURES/trainer/train.jsonl" > train.zst
	args=(--model_name_or_path "$MODEL" --train "$PWD/train.zst" -q --max_steps 2 --save_steps 1)
	run mpi2 ft-train "${args[@]}" --output_dir "$PWD/full"
	assert_success
	# rank 1 has it, rank 0 does not: only rank 0 looks
	mkdir r1/out && cp -r full/checkpoint-1 r1/ck && cp -r full/checkpoint-1 r1/out/
	run split ft-train "${args[@]}" --output_dir out --resume_from_checkpoint ck
	[ "$status" -ne 0 ]
	[ "$(grep -c '^ft-train: ' <<< "$output")" = 1 ]
	assert_output --partial "ft-train: rank 0: --resume_from_checkpoint ck: not a checkpoint directory"
	run split ft-train "${args[@]}" --output_dir out --resume_from_checkpoint true
	[ "$status" -ne 0 ]
	[ "$(grep -c '^ft-train: ' <<< "$output")" = 1 ]
	assert_output --partial "ft-train: rank 0: --resume_from_checkpoint true: out: no checkpoint-N directory to resume from"
}

# Every rank checks its copy of trainer_state.json (grpo_state.json) against
# the run; rank 0 reports a mismatch, naming the checkpoint as given, and
# the others wait for it to end the job instead of racing it with words
# about their private copies.
@test "a checkpoint that does not fit the run: rank 0 names it in one line (sft, grpo)" {
	need_mpi
	ft-cat --encode < "$FIXTURES/trainer/train.jsonl" > train.zst
	args=(--model_name_or_path "$MODEL" --train "$PWD/train.zst" -q --max_steps 2 --save_steps 1)
	run mpi2 ft-train "${args[@]}" --output_dir "$PWD/full"
	assert_success
	start_from 1 1
	for i in 1 2 3; do   # a race would show now and then
		run split ft-train "${args[@]}" --gradient_accumulation_steps 2 --output_dir out --resume_from_checkpoint true
		[ "$status" -ne 0 ]
		[ "$(grep -c '^ft-train: ' <<< "$output")" = 1 ]
		assert_output --partial "ft-train: rank 0: out/checkpoint-1: the checkpoint was made with 16 batches per epoch and 2 ranks x gradient_accumulation_steps 1"
	done
	ft-cat --encode < "$FIXTURES/grpo/prompts.jsonl" > p8.zst
	printf 'while read -r l; do echo ${#l}; done\n' > len.sh
	args=(--stage grpo --train "$PWD/p8.zst" --max_completion_length 6 -q --reward_funcs "len=sh $PWD/len.sh"
		--model_name_or_path "$MODEL" --num_generations 4 --max_steps 2 --save_steps 1)
	rm -rf full r0/out && mkdir r0/out
	run mpi2 ft-train "${args[@]}" --output_dir "$PWD/full"
	assert_success
	start_from 1 1
	run split ft-train "${args[@]}" --num_generations 8 --output_dir out --resume_from_checkpoint true
	[ "$status" -ne 0 ]
	[ "$(grep -c '^ft-train: ' <<< "$output")" = 1 ]
	assert_output --regexp "ft-train: rank 0: .*out/checkpoint-1: the checkpoint was made with"
}
