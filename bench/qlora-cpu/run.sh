#!/bin/sh
# bench/qlora-cpu/run.sh - a QLoRA step (4-bit NF4 + double quantization,
# FP4, 8-bit) against a LoRA step of the same model on the CPU, same
# threads.  Run from the repository root after `make`:
#
#   THREADS=2 bench/qlora-cpu/run.sh
#
# Shape: a Llama of hidden 1024, 8 layers, 16 heads / 8 kv heads,
# intermediate 2816, vocab 8000 (111M parameters),
# LoRA r=8 on every linear, batch 2 x 256; the four models take steps in
# turn, so the load of a shared machine falls on each alike.  Results: docs/BENCHMARKS.md,
# section "QLoRA (CPU)".
set -eu
THREADS=${THREADS:-$(nproc)}
here=$(dirname "$0")
out=build/bench
mkdir -p "$out"
make -s build/libft.a
# shellcheck disable=SC2046
cc -std=gnu11 -O3 -march=x86-64-v3 -fno-math-errno -fopenmp -iquote lib "$here/bench_qlora.c" \
	build/libft.a $(pkg-config --libs libzstd msgpack jansson libpcre2-8 libutf8proc cairo yaml-0.1) \
	-lopenblas -lm -lpthread -ldl -o "$out/bench_qlora"
export OMP_NUM_THREADS="$THREADS" OPENBLAS_NUM_THREADS="$THREADS"
echo "machine: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'), $THREADS threads"
"$out/bench_qlora" dequant 2816 1024 512 5
SHAPE=${SHAPE:-"1024 8 16 8 2816 8000 2 256 ${STEPS:-4} 1"}
# shellcheck disable=SC2086
"$out/bench_qlora" $SHAPE
