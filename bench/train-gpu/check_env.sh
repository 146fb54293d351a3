# bench/train-gpu/check_env.sh NAME - sourced by train_check.sh,
# pref_check.sh, qlora_check.sh and features_check.sh: where the tools and
# fixtures are (BIN, FIXTURES, PYTHON, DEVICE from the environment, else
# this tree or the bundle the script stands in), whether the device runs
# can run (gpu_skip: empty, or why not), and a scratch directory
# ft-NAME.XXXXXX, removed on exit, as the current directory.
# DEVICE: cuda (default; needs a GPU nvidia-smi sees), cpu (the "device"
# runs on the CPU: checks a script against itself), emu (the dry run,
# run.sh's DEVICE=emu: --device cuda on the backend FT_CUDA_LIB names,
# build/libft_cuda_emu.so, no nvidia-smi needed).
set -u
here=$(cd "$(dirname "$(readlink -f "$0")")/../.." && pwd)
BIN=${BIN:-$here/bin}
FIX=${FIXTURES:-$here/tests/fixtures}
PY=${PYTHON:-python3}
DEV=${DEVICE:-cuda}
gpu_skip=""
case $DEV in
cpu) ;;
emu)	DEV=cuda
	[ -n "${FT_CUDA_LIB:-}" ] || gpu_skip="DEVICE=emu without FT_CUDA_LIB (the emulated backend)" ;;
*)	nvidia-smi -L >/dev/null 2>&1 || gpu_skip="no usable GPU (nvidia-smi -L fails or is absent)" ;;
esac
work=$(mktemp -d "${TMPDIR:-/tmp}/ft-$1.XXXXXX")
trap 'rm -rf "$work"' EXIT
cd "$work" || exit 1

# sft_data: the trainer fixture as train.zst and val.zst
sft_data() {
	"$BIN/ft-cat" --encode < "$FIX/trainer/train.jsonl" > train.zst || exit 1
	"$BIN/ft-cat" --encode < "$FIX/trainer/val.jsonl" > val.zst || exit 1
}
