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

setup() {
	cd "$BATS_TEST_TMPDIR"
	need_nccl_emu
	mkdir -p r0/out r1 tmp
}

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
	for z in 0 1; do
		dpo_resume_args --device cuda --zero $z
		resume_case adapter_model.safetensors
	done
}

@test "NCCL (emulated) grpo: a checkpoint on rank 0's machine only resumes bit for bit" {
	grpo_resume_args --device cuda
	resume_case adapter_model.safetensors
}
