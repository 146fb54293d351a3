#!/bin/sh
# bench/train-pref/run.sh - a DPO step with LoRA against an sft step on the
# same tokens (bench_pref.c), then the same two steps in PyTorch + PEFT
# (torch_pref.py: what TRL's DPOTrainer runs per step), and through the
# trainers themselves where the legacy environment of
# tests/reference/make_pref_trl_fixtures.py is (trl_pref.py: LLaMA-Factory
# 0.9.3's CustomDPOTrainer over TRL 0.9.6 against transformers' Trainer),
# same threads.  Run from the repository root after `make`:
#   THREADS=2 bench/train-pref/run.sh        (LEGACY=/work/legacy by default)
set -eu
THREADS=${THREADS:-$(nproc)}
PYTHON=${PYTHON:-/work/venv/bin/python}
LEGACY=${LEGACY:-/work/legacy}
here=$(dirname "$0")
out=build/bench
mkdir -p "$out"
make -s build/libft.a
# shellcheck disable=SC2046
cc -std=gnu11 -O2 -fopenmp -iquote lib "$here/bench_pref.c" build/libft.a \
	$(pkg-config --libs jansson libzstd msgpack cairo yaml-0.1 libpcre2-8 libutf8proc 2>/dev/null) -lopenblas -lm -o "$out/bench_pref"
export OMP_NUM_THREADS="$THREADS" OPENBLAS_NUM_THREADS="$THREADS"
shape="256 4 8 4 688 8000 2 128"   # hidden layers heads kv inter vocab pairs T
echo "shape: $shape, LoRA r 8 on every linear module, $THREADS threads"
# shellcheck disable=SC2086
echo "ft:    $("$out/bench_pref" $shape 5)"
# shellcheck disable=SC2086
[ -x "$PYTHON" ] && echo "torch: $("$PYTHON" "$here/torch_pref.py" $shape 5 2>/dev/null | tail -1)"
# shellcheck disable=SC2086
[ -x "$PYTHON" ] && [ -d "$LEGACY/trl" ] &&
	echo "trl:   $(PYTHONPATH="$LEGACY" "$PYTHON" "$here/trl_pref.py" $shape 5 2>/dev/null | tail -1)"
exit 0
