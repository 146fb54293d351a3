#!/usr/bin/env bats
# The resume of ft-train-resume-mpi.bats (the checkpoint on rank 0's
# machine only: rank 1 runs in another directory) on 2 emulated GPUs
# (build/libft_cuda_emu.so, one device per rank, build/libnccl_emu.so for
# the sums; docs/CUDA-TESTING.md): the ranks' host side is MPI as on the
# CPU, so rank 0 sends the same files and tensors, which the device
# bindings upload (state_in, ZeRO-1's own_in) as from a local file.  The
# resumed run is the uninterrupted one bit for bit: sft LoRA and full, with
# and without --zero 1, fp16 (scaler.json, sent as a file), dpo and grpo.
load helper
load mpi_helper
load resume_helper

MODEL="$FIXTURES/models/tiny-llama"
PREF="$FIXTURES/pref"
EMU="$FT_ROOT/build/libft_cuda_emu.so"
NCCL="$FT_ROOT/build/libnccl_emu.so"
export FT_EMU_THREADS=1 FT_EMU_DEVICES=2

setup() {
	cd "$BATS_TEST_TMPDIR"
	need_mpi
	[ -f "$EMU" ] && [ -f "$NCCL" ] || skip "the emulated backend or fake NCCL is not built (make unit)"
	export FT_CUDA_LIB=$EMU FT_NCCL_LIB=$NCCL
	mkdir -p r0/out r1 tmp
}
mpi2() { timeout 600 mpirun --oversubscribe --allow-run-as-root -np 2 "$@"; }

@test "NCCL (emulated) sft LoRA and full, with and without --zero 1: a checkpoint on rank 0's machine only resumes bit for bit" {
	ft-cat --encode < "$FIXTURES/trainer/train.jsonl" > train.zst
	sft_case lora adapter_model.safetensors --device cuda
	sft_case lora adapter_model.safetensors --device cuda --zero 1
	sft_case full model.safetensors --device cuda
	sft_case full model.safetensors --device cuda --zero 1
}

# fp16's loss scaler is in scaler.json: rank 1 gets it from rank 0 (at lr
# 0.6 a step before the checkpoint overflows, so its scale is not the
# initial 65536 a rank without the file would start from)
@test "NCCL (emulated) sft --fp16: the loss scaler comes from rank 0's checkpoint; bit for bit" {
	ft-cat --encode < "$FIXTURES/trainer/train.jsonl" > train.zst
	sft_case full model.safetensors --device cuda --fp16 --learning_rate 0.6
	[ "$(jq .scale full/checkpoint-4/scaler.json)" = 32768 ]
}

@test "NCCL (emulated) dpo, with and without --zero 1: a checkpoint on rank 0's machine only resumes bit for bit" {
	ft-cat --encode < "$PREF/dpo.jsonl" > dpo.zst
	for z in 0 1; do
		args=(--stage dpo --train "$PWD/dpo.zst" --model_name_or_path "$MODEL" --adapter_name_or_path
			"$PREF/llama-lora" --max_steps 4 --save_steps 2 --logging_steps 1 --learning_rate 1e-3 -q
			--device cuda --zero $z)
		rm -rf full r0/out r1/out && mkdir r0/out
		run mpi2 ft-train "${args[@]}" --output_dir "$PWD/full"
		assert_success
		start_from 2 2
		run split ft-train "${args[@]}" --output_dir out --resume_from_checkpoint true
		assert_success
		same_as_full adapter_model.safetensors checkpoint-4/optimizer.safetensors
	done
}

@test "NCCL (emulated) grpo: a checkpoint on rank 0's machine only resumes bit for bit" {
	ft-cat --encode < "$FIXTURES/grpo/prompts.jsonl" > p8.zst
	printf 'while read -r l; do echo ${#l}; done\n' > len.sh
	args=(--stage grpo --train "$PWD/p8.zst" --max_completion_length 6 --logging_steps 1 --learning_rate 1e-3 -q
		--reward_funcs "len=sh $PWD/len.sh" --beta 0.04 --model_name_or_path "$MODEL" --num_generations 4
		--num_iterations 2 --max_steps 4 --save_steps 2 --gradient_accumulation_steps 1 --device cuda)
	run mpi2 ft-train "${args[@]}" --output_dir "$PWD/full"
	assert_success
	start_from 2 2
	run split ft-train "${args[@]}" --output_dir out --resume_from_checkpoint true
	assert_success
	same_as_full adapter_model.safetensors checkpoint-4/optimizer.safetensors
}
