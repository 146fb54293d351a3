#!/bin/sh
# tests/gpu/run.sh - GPU parity checks of the CUDA backend (tests/gpu/*.c).
# Run from the repository root.  Without a usable GPU (nvidia-smi absent
# or failing) it says so and exits 0.  With one, it builds the tests
# (`make gpu-tests`, needs nvcc) unless FT_GPU_TEST_DIR points at
# prebuilt ones (the bench bundle ships them), runs each, and exits 1 if
# any check fails.  Tolerances are stated in each test's header.
set -u
cd "$(dirname "$0")/../.." || exit 1
if ! command -v nvidia-smi >/dev/null 2>&1; then
	echo "tests/gpu: skipped: nvidia-smi not found (no NVIDIA GPU or driver)"
	exit 0
fi
if ! nvidia-smi -L >/dev/null 2>&1; then
	echo "tests/gpu: skipped: nvidia-smi fails: $(nvidia-smi -L 2>&1 | head -1)"
	exit 0
fi
nvidia-smi -L
dir=${FT_GPU_TEST_DIR:-build/gpu}
if [ -z "${FT_GPU_TEST_DIR:-}" ]; then
	make -s gpu-tests || { echo "tests/gpu: build failed"; exit 1; }
fi
fail=0
for t in "$dir"/test_*; do
	[ -x "$t" ] || continue
	echo "# $t"
	"$t" || fail=1
done
[ $fail -eq 0 ] && echo "tests/gpu: all passed" || echo "tests/gpu: FAILED"
exit $fail
