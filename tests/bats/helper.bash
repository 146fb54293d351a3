# helper.bash - loaded by every bats file: assertions, bin/ on PATH, a
# scratch directory, and where the shared reference data lives.
bats_require_minimum_version 1.5.0
load '/usr/lib/bats/bats-support/load'
load '/usr/lib/bats/bats-assert/load'

FT_ROOT="$(cd "$BATS_TEST_DIRNAME/../.." && pwd)"
# FT_BIN: run the tools from another build (e.g. build/asan/bin)
PATH="${FT_BIN:-$FT_ROOT/bin}:$PATH"
FIXTURES="$FT_ROOT/tests/fixtures"
SHARED="${FT_SHARED:-$FT_ROOT/../shared}"

setup() {
	cd "$BATS_TEST_TMPDIR"
}

# skip_without_shared: skip a test that needs ../shared
skip_without_shared() {
	[ -d "$SHARED" ] || skip "../shared is absent"
}

# from_scratch CONFIG: model/ from --train_from_scratch with config.json
# CONFIG, one full step on the trainer fixture, and the real Qwen3
# tokenizer from ../shared (the vocabulary CONFIG must then be Qwen's)
from_scratch() {
	ft-cat --encode < "$FIXTURES/trainer/train.jsonl" > init.zst
	ft-train -q --train_from_scratch --config "$1" --finetuning_type full --train init.zst \
		--output_dir model --max_steps 1
	cp "$SHARED/tokenizers/qwen3/"tokenizer*.json model/
}
