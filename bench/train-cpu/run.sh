#!/bin/sh
# bench/train-cpu/run.sh - full fine-tuning speed on the CPU: ft (lib/model
# through bench_train.c) against PyTorch eager (transformers' Llama) on the
# same model shape, batch and steps, same thread count, plus the machine's
# OpenBLAS sgemm rate.  Run from the repository root after `make`:
#
#   bench/train-cpu/run.sh            # threads = nproc
#   THREADS=2 PYTHON=/work/venv/bin/python bench/train-cpu/run.sh
#
# Prints a table: tokens/s of both, the ratio, and GFLOP/s counted as
# 6 * params * tokens/s (the usual full fine-tuning estimate; 4 * for the
# LoRA rows, whose frozen weights get no gradient) and as a
# share of the measured sgemm rate.
set -eu
THREADS=${THREADS:-$(nproc)}
PYTHON=${PYTHON:-/work/venv/bin/python}
here=$(dirname "$0")
out=build/bench
mkdir -p "$out"
make -s build/libft.a
LIBS=${BENCH_EXTRA_LIBS:-}
# shellcheck disable=SC2046
cc -std=gnu11 -O3 -fno-math-errno -fopenmp -iquote lib "$here/bench_train.c" build/libft.a $LIBS \
	$(pkg-config --libs jansson libzstd msgpack 2>/dev/null) -lopenblas -lm -o "$out/bench_train"
export OMP_NUM_THREADS="$THREADS" OPENBLAS_NUM_THREADS="$THREADS"

sgemm=$("$out/bench_train" sgemm 2048 10 | sed 's/.*"gflops": \([0-9.]*\).*/\1/')
echo "machine: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'), $THREADS threads"
echo "OpenBLAS sgemm 2048^3: $sgemm GFLOP/s"
echo "GF/s: 6 x parameters x tokens/s for full fine-tuning, 4 x for LoRA (frozen weights: no dW)"
printf '%-34s %10s %10s %6s %9s %9s %7s\n' model "ft tok/s" "torch t/s" ratio "ft GF/s" "pt GF/s" "ft/sgemm"

field() { sed "s/.*\"$1\": \([0-9.]*\).*/\1/"; }

run() {   # name, full|lora, then HIDDEN LAYERS HEADS KV INTER VOCAB B T STEPS WARMUP
	name=$1
	mode=$([ "$2" = lora ] && echo lora || true)
	shift 2
	# shellcheck disable=SC2086
	ft=$("$out/bench_train" train "$@" $mode)
	# shellcheck disable=SC2086
	pt=$("$PYTHON" "$here/torch_train.py" "$@" "$THREADS" $mode 2>/dev/null)
	[ -n "$pt" ] || { echo "run.sh: $name: torch_train.py failed" >&2; exit 1; }
	ft_t=$(echo "$ft" | field tokens_per_s)
	pt_t=$(echo "$pt" | field tokens_per_s)
	ft_g=$(echo "$ft" | field gflops)
	pt_g=$(echo "$pt" | field gflops)
	awk -v n="$name" -v a="$ft_t" -v b="$pt_t" -v g="$ft_g" -v h="$pt_g" -v s="$sgemm" \
		'BEGIN { printf "%-34s %10.0f %10.0f %6.2f %9.1f %9.1f %6.0f%%\n", n, a, b, a / b, g, h, 100 * g / s }'
}

# tiny: 0.36M parameters (hidden 128, 2 layers, 4 heads / 2 kv, vocab 256)
run "tiny 0.36M, batch 1x32"     full 128 2 4 2 256 256 1 32 300 20
run "tiny 0.36M, batch 4x64"     full 128 2 4 2 256 256 4 64 100 10
run "tiny 0.36M LoRA, batch 1x32" lora 128 2 4 2 256 256 1 32 300 20
# Llama-shaped 134M (hidden 768, 12 layers, 12 heads, inter 2048, vocab 32000)
run "llama 134M, batch 4x256"    full 768 12 12 12 2048 32000 4 256 5 1
run "llama 134M LoRA, batch 4x256" lora 768 12 12 12 2048 32000 4 256 5 1
