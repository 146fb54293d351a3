#!/usr/bin/env bats
# The device check's scripts (bench/train-gpu, docs/CUDA-TESTING.md "The device
# check") on the host emulation, the parts that need no bundle: the
# features check's lines, bounds and isolation of failures, and the
# library closure check.  The whole bundle's dry run is `make
# gpu-check-dry` (minutes).
load helper

BENCH="$FT_ROOT/bench/train-gpu"
EMU="$FT_ROOT/build/libft_cuda_emu.so"

# gather DIR [SKIP]: bin/ft-cat and, in DIR/lib, every library it needs
# but glibc's (what bundle.sh copies) and SKIP
gather() {
	mkdir -p "$1/bin" "$1/lib"
	cp "$FT_ROOT/bin/ft-cat" "$1/bin/"
	ldd "$1/bin/ft-cat" | awk '/=> \//{ print $3 }' | while read -r so; do
		case $(basename "$so") in libc.so*|libm.so*|ld-linux*|"${2:-none}") ;; *) cp -L "$so" "$1/lib/" ;; esac
	done
}
# mini_bundle [SKIP]: b/, a bundle as bundle.sh packs it (the scripts beside
# payload.tar.xz), with ft-cat alone in the payload
mini_bundle() {
	mkdir -p b/bench/train-gpu
	cp "$BENCH"/*.sh "$BENCH"/*.py b/bench/train-gpu/
	gather p "${1:-}"
	tar -C p -cJf b/payload.tar.xz bin lib
}

emu() {
	[ -f "$EMU" ] || skip "the emulated backend is not built (make unit)"
	export FT_CUDA_LIB=$EMU DEVICE=emu BIN=$FT_ROOT/bin FIXTURES=$FIXTURES
}

@test "features_check.sh on the emulation: one PASS line per case with its worst difference, bound and bats file; PPO probed" {
	emu
	run env ONLY='^(loraplus|dora|grpo_lora|llama_lora_fp16|modules_to_save|ppo)$' "$BENCH/features_check.sh"
	assert_success
	[ "$(grep -c '^PASS ' <<< "$output")" -eq 6 ]
	assert_line --regexp '^PASS dora: worst [0-9.e+-]+ \(bound 0.0001; 10 losses and norms, worst relative; adapters max \|diff\| [0-9.e+-]+ \(bound 2e-4\)\) \([0-9]+s; tests/bats/ft-train-cuda-dora-emu.bats\)$'
	assert_line --regexp '^PASS llama_lora_fp16: worst [0-9.e+-]+ \(bound 0.001, grad norms 0.03; 20 steps;'
	assert_line --regexp '^PASS grpo_lora: .*tests/bats/ft-train-rl-emu.bats\)$'
	# ppo runs on the device (the probe's SKIP would say a build refuses it)
	assert_line --regexp '^PASS ppo: .+$'
	assert_line --regexp '^features_check: 6 passed, 0 failed'
}

@test "features_check.sh: a failing case fails its own line and the exit status, the others still run" {
	emu
	# an ft-train that fails the BAdam runs only
	mkdir fake
	for t in ft-cat ft-tokenize ft-pack; do ln -s "$FT_ROOT/bin/$t" fake/$t; done
	printf '#!/bin/sh\ncase " $* " in *" --use_badam "*) echo "ft-train: injected failure" >&2; exit 1;; esac\nexec "%s" "$@"\n' \
		"$FT_ROOT/bin/ft-train" > fake/ft-train
	chmod +x fake/ft-train
	run env BIN="$PWD/fake" ONLY='^(loraplus|badam|adam_mini)$' "$BENCH/features_check.sh"
	assert_failure 1
	assert_line --regexp '^FAIL badam: device run failed \(exit 1\): ft-train: injected failure \([0-9]+s; tests/bats/ft-train-cuda-optim-emu.bats\)$'
	assert_line --regexp '^PASS loraplus: '
	assert_line --regexp '^PASS adam_mini: '
	assert_line --regexp '^features_check: 2 passed, 1 failed'
}

@test "features_check.sh without a GPU and without DEVICE=emu: the device runs are skipped, exit 0" {
	command -v nvidia-smi >/dev/null && nvidia-smi -L >/dev/null 2>&1 && skip "a GPU is there"
	run env -u FT_CUDA_LIB DEVICE=cuda BIN="$FT_ROOT/bin" ONLY=loraplus "$BENCH/features_check.sh"
	assert_success
	assert_output "features_check: device runs skipped: no usable GPU (nvidia-smi -L fails or is absent)"
}

@test "check_libs.sh: a bundle missing a library fails naming it; with the libraries in lib/ it is closed" {
	gather b libzstd.so.1
	run "$BENCH/check_libs.sh" b
	assert_failure
	assert_line --regexp '^check_libs: bin/ft-cat needs libzstd.so.1 \(resolved to .*\): not in bundle/lib, and a PyTorch CUDA 13 image does not provide it$'
	gather b
	run "$BENCH/check_libs.sh" b
	assert_success
	assert_output --regexp '^check_libs: closed: [0-9]+ files, [0-9]+ libraries'
	# --runtime (the GPU machine's, with run.sh's LD_LIBRARY_PATH) keeps the rule
	rm b/lib/libzstd.so.1
	run env LD_LIBRARY_PATH="$PWD/b/lib" "$BENCH/check_libs.sh" b --runtime
	assert_failure
}

@test "run.sh: unpacks the payload, runs a part, ends with the short report, fills OUT with at most 8 files" {
	mini_bundle
	mkdir out
	run env OUT="$PWD/out" DEVICE=cuda b/bench/train-gpu/run.sh libs
	assert_success
	[ -x b/bin/ft-cat ] && [ -e b/.unpacked ]
	assert_line --regexp '^==== short report'
	[[ "${lines[-2]}" =~ ^libs:\ 2\ passed,\ 0\ failed\ \([0-9]+\ s\)$ ]]
	[[ "${lines[-1]}" =~ ^run.sh:\ [0-9]+\ s\ in\ all$ ]]
	grep -q '^## Library closure (check_libs.sh)' out/results.md
	grep -q '^libs: 2 passed' out/report.txt
	grep -q '^==> libs.log <==' out/logs.txt
	[ "$(ls out | wc -l)" -le 8 ]
}

@test "run.sh: a library the bundle lacks fails its part, named in the short report, exit 1" {
	mini_bundle libzstd.so.1
	run env -u OUT DEVICE=cuda b/bench/train-gpu/run.sh libs
	assert_failure 1
	assert_line --regexp '^libs: 0 passed, [1-9][0-9]* failed \([0-9]+ s, exit 1\)$'
	assert_line --regexp '^  check_libs: bin/ft-cat needs libzstd.so.1 '
	assert_line --regexp '^run.sh: [0-9]+ s in all, something failed \(results.md\)$'
}

@test "run.sh: a part that would start with under 15 s of TIME_BUDGET left is skipped, said in the report" {
	mini_bundle
	run env -u OUT TIME_BUDGET=10 DEVICE=cuda b/bench/train-gpu/run.sh libs,features
	assert_success
	assert_line 'libs: skipped: the time budget is spent'
	assert_line 'features: skipped: the time budget is spent'
	refute_line --partial 'check_libs: closed'
}
