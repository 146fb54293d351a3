#!/bin/sh
# tests/gpu/run.sh - checks of the CUDA backend (tests/gpu/*.c).
# Run from anywhere; it works in the repository root (or a bench bundle).
#   test_cuda_plan, test_cuda_infer_plan   host only: the memory plans
#                    (training, decoding) against docs/CUDA.md; run
#                    whenever the tests could be built (nvcc present)
#   test_gpu_parity  needs a GPU: parity with the PyTorch fixtures
#   test_gpu_generate  needs a GPU: the KV-cache decoder against the CPU's
#   test_gpu_generate_half  needs a GPU: the decoder's half q|k|v and KV
#                    cache (--bf16/--fp16) against the CPU's
#   test_gpu_qlora   needs a GPU: QLoRA (4-bit, 8-bit) against the bnb
#                    fixtures, checkpointing and decoding against the CPU
#   test_gpu_attn_half  needs a GPU: the bf16/fp16 (tensor-core) flash
#                    attention against the CPU's on the same rounded inputs
# DEVICE=emu with FT_CUDA_LIB=.../libft_cuda_emu.so: the GPU tests run on
# the host emulation (several CPU minutes; the dry run of the bundle).
# Without a usable GPU (nvidia-smi absent or failing) the GPU tests are
# skipped with a message and the exit status is 0 (unless the host-only
# test failed).  FT_GPU_TEST_DIR: prebuilt test binaries (the bundle);
# otherwise `make gpu-tests` builds them when nvcc is there.
# Tolerances are stated in each test's header comment.
set -u
cd "$(dirname "$0")/../.." || exit 1
dir=${FT_GPU_TEST_DIR:-build/gpu}
built=1
if [ -z "${FT_GPU_TEST_DIR:-}" ]; then
	if [ -x "${NVCC:-/usr/local/cuda/bin/nvcc}" ]; then
		make -s gpu-tests >/dev/null || { echo "tests/gpu: build failed"; exit 1; }
	else
		built=0
	fi
fi
fail=0
host_only="test_cuda_plan test_cuda_infer_plan"
for h in $host_only; do
	[ $built -eq 1 ] && [ -x "$dir/$h" ] || continue
	echo "# $dir/$h"
	"$dir/$h" || fail=1
done
gpu=""
if [ "${DEVICE:-}" = emu ]; then
	# the dry run (bench/train-gpu/run.sh DEVICE=emu): the tests load the
	# emulated backend FT_CUDA_LIB names instead of a GPU's
	[ -n "${FT_CUDA_LIB:-}" ] || gpu="DEVICE=emu without FT_CUDA_LIB (the emulated backend)"
	[ $built -eq 1 ] || gpu="no nvcc to build the GPU tests (set FT_GPU_TEST_DIR to prebuilt ones)"
elif ! command -v nvidia-smi >/dev/null 2>&1; then
	gpu="nvidia-smi not found (no NVIDIA GPU or driver)"
elif ! nvidia-smi -L >/dev/null 2>&1; then
	gpu="nvidia-smi fails: $(nvidia-smi -L 2>&1 | head -1)"
elif [ $built -eq 0 ]; then
	gpu="no nvcc to build the GPU tests (set FT_GPU_TEST_DIR to prebuilt ones)"
fi
if [ -n "$gpu" ]; then
	echo "tests/gpu: GPU tests skipped: $gpu"
	exit $fail
fi
[ "${DEVICE:-}" = emu ] && echo "# on the host emulation: $FT_CUDA_LIB" || nvidia-smi -L
for t in "$dir"/test_*; do
	[ -x "$t" ] || continue
	case " $host_only " in *" $(basename "$t") "*) continue ;; esac
	echo "# $t"
	"$t" || fail=1
done
[ $fail -eq 0 ] && echo "tests/gpu: all passed" || echo "tests/gpu: FAILED"
exit $fail
