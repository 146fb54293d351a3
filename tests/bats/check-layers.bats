#!/usr/bin/env bats
# scripts/check-layers.sh (run on the tree itself by scripts/run-tests.sh):
# a file that breaks a rule of docs/ARCHITECTURE.md fails with its name,
# line and rule.
load helper

ROOT="$BATS_TEST_DIRNAME/../.."

copy_tree() {
	mkdir -p t/scripts t/docs
	cp -r "$ROOT/lib" t/lib
	cp "$ROOT/scripts/check-layers.sh" t/scripts/
	cp "$ROOT/docs/ARCHITECTURE.md" t/docs/
}

@test "check-layers: an upward include fails, naming the file, line and rule" {
	copy_tree
	printf '#include "train/trainer.h"\n' >> t/lib/util/rng.c
	run t/scripts/check-layers.sh
	assert_failure
	assert_output --partial "not ok"
	assert_output --regexp "lib/util/rng.c:[0-9]+: includes train/trainer.h, but lib/util/ may include only: nothing"
}

@test "check-layers: a private header of another folder, a bare include, a file in lib/" {
	copy_tree
	printf '#include "text/tokenizer_internal.h"\n' >> t/lib/gen/sample.c
	printf '#include "error.h"\n' >> t/lib/format/trainlog.c
	touch t/lib/loose.c
	run t/scripts/check-layers.sh
	assert_failure
	assert_output --regexp "lib/gen/sample.c:[0-9]+: includes text/tokenizer_internal.h, private to lib/text/"
	assert_output --regexp "lib/format/trainlog.c:[0-9]+: \"error.h\" names no folder"
	assert_output --partial "lib/loose.c"
}

@test "check-layers: a folder without a rule fails" {
	copy_tree
	mkdir t/lib/extra && touch t/lib/extra/x.c
	run t/scripts/check-layers.sh
	assert_failure
	assert_output --partial "lib/extra/ has a rule"
}
