#!/usr/bin/env bash
# run-tests.sh - run every test suite and print one closing line:
#   N passed, N failed, N skipped
# C unit tests (built with ASan+UBSan) and bats tests emit TAP; this script
# counts "ok", "not ok" and "# skip" lines.  Exit status 1 on any failure.
set -u
cd "$(dirname "$0")/.."

passed=0 failed=0 skipped=0
log=build/test-log.txt
mkdir -p build && : > "$log"

count_tap() {   # reads TAP on stdin, echoes it, updates the counters
	local line
	while IFS= read -r line; do
		printf '%s\n' "$line"
		printf '%s\n' "$line" >> "$log"
		case "$line" in
		"ok "*"# skip"*|"ok "*"# SKIP"*) skipped=$((skipped + 1)) ;;
		"ok "*) passed=$((passed + 1)) ;;
		"not ok "*) failed=$((failed + 1)) ;;
		esac
	done
}

export ASAN_OPTIONS=detect_leaks=1:abort_on_error=0
export UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1
export FT_SHARED="${FT_SHARED:-$(cd .. && pwd)/shared}"

echo "# layers: scripts/check-layers.sh (rules in docs/ARCHITECTURE.md)"
out=$(scripts/check-layers.sh 2>&1)
count_tap <<< "$out"

for t in build/asan/tests/test_*; do
	[ -x "$t" ] || continue
	echo "# unit: $t"
	out=$("$t" 2>&1); rc=$?
	count_tap <<< "$out"
	if [ $rc -ne 0 ] && ! grep -q '^not ok' <<< "$out"; then
		echo "not ok - $t exited with status $rc (crash or sanitizer report)"
		failed=$((failed + 1))
	fi
done

# CUDA: the host-only plan test when nvcc is present; the GPU tests skip
# (counted as skipped) without a GPU.
if [ -x tests/gpu/run.sh ]; then
	echo "# gpu: tests/gpu/run.sh"
	out=$(tests/gpu/run.sh 2>&1); rc=$?
	count_tap <<< "$out"
	if grep -q "GPU tests skipped" <<< "$out"; then
		line="ok - # skip $(grep -m1 "GPU tests skipped" <<< "$out")"
		count_tap <<< "$line"
	fi
	if [ $rc -ne 0 ] && ! grep -q '^not ok' <<< "$out"; then
		echo "not ok - tests/gpu/run.sh exited with status $rc"
		failed=$((failed + 1))
	fi
fi

# tests/gpu checks quick enough to run on the emulated backend (Makefile
# EMU_QUICK; the others are `make emu-gpu-tests`).
if [ -f build/libft_cuda_emu.so ]; then
	for t in build/emu-gpu/test_gpu_qlora build/emu-gpu/test_gpu_generate_half; do
		[ -x "$t" ] || continue
		echo "# emulated device: $t"
		out=$(FT_CUDA_LIB=build/libft_cuda_emu.so OMP_NUM_THREADS=1 "$t" 2>&1); rc=$?
		count_tap <<< "$out"
		if [ $rc -ne 0 ] && ! grep -q '^not ok' <<< "$out"; then
			echo "not ok - $t exited with status $rc on the emulated device"
			failed=$((failed + 1))
		fi
	done
fi

shopt -s nullglob
bats_files=(tests/bats/*.bats)
if [ ${#bats_files[@]} -gt 0 ]; then
	if command -v bats >/dev/null; then
		echo "# bats: ${#bats_files[@]} files"
		count_tap < <(bats --tap "${bats_files[@]}" 2>&1)
	else
		echo "not ok - bats is not installed (run scripts/install-deps.sh)"
		failed=$((failed + 1))
	fi
fi

echo "$passed passed, $failed failed, $skipped skipped"
[ "$failed" -eq 0 ]
