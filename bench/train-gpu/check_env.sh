# bench/train-gpu/check_env.sh NAME - sourced by train_check.sh,
# pref_check.sh and qlora_check.sh: where the tools and fixtures are (BIN,
# FIXTURES, PYTHON, DEVICE from the environment, else this tree or the
# bundle the script stands in), and a scratch directory ft-NAME.XXXXXX,
# removed on exit, as the current directory.
set -u
here=$(cd "$(dirname "$(readlink -f "$0")")/../.." && pwd)
BIN=${BIN:-$here/bin}
FIX=${FIXTURES:-$here/tests/fixtures}
PY=${PYTHON:-python3}
DEV=${DEVICE:-cuda}
work=$(mktemp -d "${TMPDIR:-/tmp}/ft-$1.XXXXXX")
trap 'rm -rf "$work"' EXIT
cd "$work" || exit 1

# sft_data: the trainer fixture as train.zst and val.zst
sft_data() {
	"$BIN/ft-cat" --encode < "$FIX/trainer/train.jsonl" > train.zst || exit 1
	"$BIN/ft-cat" --encode < "$FIX/trainer/val.jsonl" > val.zst || exit 1
}
