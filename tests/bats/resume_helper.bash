# resume_helper.bash - loaded (after mpi_helper) by the bats files that
# resume under mpirun from a checkpoint on rank 0's machine only: each
# rank runs in its own directory, r0 or r1 (made by the file's setup, with
# r0/out and tmp), so rank 1 sees neither the checkpoint nor output_dir
# when both are named relatively.  full/ is the uninterrupted run.

# each rank in its own directory; rank 1's private copy goes under tmp
split() { TMPDIR="$PWD/tmp" mpi2 sh -c 'cd "r$OMPI_COMM_WORLD_RANK" && exec "$@"' sh "$@"; }
# the log without the clock and the measured peak memory
steady() { jq -c 'del(.elapsed_time, .remaining_time, .throughput, .peak_memory_bytes)' "$1"; }
# same_as_full FILES...: rank 0's out, resumed, is the uninterrupted run
same_as_full() {
	cmp <(steady full/trainer_log.jsonl) <(steady r0/out/trainer_log.jsonl)
	for f in "$@"; do cmp "full/$f" "r0/out/$f"; done
	# the private copy went at exit; rank 1 wrote nothing of its own
	[ -z "$(ls tmp | grep '^ft-resume-')" ]
	[ -z "$(ls r1/out 2>/dev/null)" ]
}
# start_from STEP LINES: rank 0's out holds full's checkpoint and log so far
start_from() {
	cp -r "full/checkpoint-$1" r0/out/
	head -n "$2" full/trainer_log.jsonl > r0/out/trainer_log.jsonl
}

# sft_case FT FILE [flags]: 8 steps on 2 ranks saving at 4, resumed from 4
sft_case() {
	local ft=$1 f=$2; shift 2
	args=(--model_name_or_path "$MODEL" --train "$PWD/train.zst" --logging_steps 1 --learning_rate 1e-4 -q
		--finetuning_type "$ft" --max_steps 8 --save_steps 4 --gradient_accumulation_steps 2 "$@")
	rm -rf full r0/out r1/out && mkdir r0/out
	run mpi2 ft-train "${args[@]}" --output_dir "$PWD/full"
	assert_success
	start_from 4 4
	# a relative path (LoRA) and true (full), each resolved by rank 0 only
	local from=out/checkpoint-4
	[ "$ft" = full ] && from=true
	run split ft-train "${args[@]}" --output_dir out --resume_from_checkpoint "$from"
	assert_success
	same_as_full "$f" checkpoint-8/optimizer.safetensors
}

# resume_case FILES...: "${args[@]}" (4 steps saving every 2) on 2 ranks
# into full/, then resumed from checkpoint-2 by rank 0's directory alone
# (`true`, resolved by rank 0): the log, FILES and the last checkpoint's
# optimizer state are the uninterrupted run's
resume_case() {
	rm -rf full r0/out r1/out && mkdir r0/out
	run mpi2 ft-train "${args[@]}" --output_dir "$PWD/full"
	assert_success
	start_from 2 2
	run split ft-train "${args[@]}" --output_dir out --resume_from_checkpoint true
	assert_success
	same_as_full "$@" checkpoint-4/optimizer.safetensors
}
# dpo_resume_args / grpo_resume_args [FLAGS...]: the stages' 4-step runs
dpo_resume_args() {
	ft-cat --encode < "$PREF/dpo.jsonl" > dpo.zst
	args=(--stage dpo --train "$PWD/dpo.zst" --model_name_or_path "$MODEL" --adapter_name_or_path "$PREF/llama-lora"
		--max_steps 4 --save_steps 2 --logging_steps 1 --learning_rate 1e-3 -q "$@")
}
grpo_resume_args() {
	ft-cat --encode < "$FIXTURES/grpo/prompts.jsonl" > p8.zst
	printf 'while read -r l; do echo ${#l}; done\n' > len.sh
	args=(--stage grpo --train "$PWD/p8.zst" --max_completion_length 6 --logging_steps 1 --learning_rate 1e-3 -q
		--reward_funcs "len=sh $PWD/len.sh" --beta 0.04 --model_name_or_path "$MODEL" --num_generations 4
		--num_iterations 2 --max_steps 4 --save_steps 2 --gradient_accumulation_steps 1 "$@")
}
