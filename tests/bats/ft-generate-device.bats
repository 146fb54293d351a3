#!/usr/bin/env bats
# ft-generate --device cpu|cuda|cuda:N|auto and --bf16/--fp16: resolved as
# ft-train resolves --device (lib/model/device.h).  Runs anywhere: the GPU
# decoder itself is checked by tests/gpu/test_gpu_generate.c.
load helper

MODEL="$FT_ROOT/tests/fixtures/models/tiny-llama"
TOK="$FT_ROOT/tests/fixtures/generate/tokenizer"

gen() { ft-generate --model_name_or_path "$MODEL" --tokenizer "$TOK" --template default --max_new_tokens 6 --do_sample false "$@"; }

prompts() { printf '%s\n' '{"prompt": "Who are you?"}' '{"prompt": "the tea is hot"}' > p.jsonl; }

@test "--device: a bad value is a usage error (exit 2)" {
	prompts
	run -2 gen --device gpu p.jsonl
	assert_output --partial "'gpu' is not a device (cpu, cuda, cuda:N, auto)"
	run -2 gen --device cuda:x p.jsonl
	assert_output --partial "bad device index"
	run -2 gen --device cuda:-1 p.jsonl
	assert_output --partial "bad device index"
	run -2 gen --bf16 --fp16 p.jsonl
	assert_output --partial "exclude each other"
}

@test "--device cuda without a usable GPU fails in one line saying why (exit 1)" {
	prompts
	FT_CUDA_LIB=/nonexistent/libft_cuda.so run -1 --separate-stderr gen --device cuda p.jsonl
	assert_equal "$stderr" "ft-generate: --device cuda: FT_CUDA_LIB=/nonexistent/libft_cuda.so: no such file"
	assert_equal "$output" ""
	# this tree's backend on a machine without a GPU: the CUDA runtime says why
	if [ -e "$FT_ROOT/build/libft_cuda.so" ] && ! nvidia-smi -L >/dev/null 2>&1; then
		run -1 --separate-stderr gen --device cuda:0 p.jsonl
		[[ "$stderr" == "ft-generate: --device cuda:0: CUDA: cudaGetDeviceCount"* ]]
		[ "$(printf '%s\n' "$stderr" | wc -l)" -eq 1 ]
		assert_equal "$output" ""
	fi
}

@test "--device auto falls back to the CPU with a note; the answers are the CPU's" {
	prompts
	gen p.jsonl > cpu.jsonl
	FT_CUDA_LIB=/nonexistent/libft_cuda.so run -0 --separate-stderr gen --device auto p.jsonl
	[[ "$stderr" == *"note: --device auto: running on the CPU (FT_CUDA_LIB=/nonexistent"* ]]
	assert_equal "$output" "$(cat cpu.jsonl)"
	# --device cpu is the default and says nothing
	run -0 --separate-stderr gen --device cpu p.jsonl
	assert_equal "$stderr" ""
	assert_equal "$output" "$(cat cpu.jsonl)"
}

@test "--bf16/--fp16 on the CPU: a note, float32 answers" {
	prompts
	gen p.jsonl > cpu.jsonl
	run -0 --separate-stderr gen --bf16 p.jsonl
	assert_equal "$stderr" "ft-generate: note: --bf16: the CPU computes in float32"
	assert_equal "$output" "$(cat cpu.jsonl)"
	run -0 --separate-stderr gen --fp16=true p.jsonl
	assert_equal "$stderr" "ft-generate: note: --fp16: the CPU computes in float32"
	run -0 --separate-stderr gen --bf16 false p.jsonl
	assert_equal "$stderr" ""
}

@test "--device is listed in --help" {
	run -0 ft-generate --help
	assert_output --partial "--device cpu|cuda|cuda:N|auto"
	assert_output --partial "--bf16, --fp16"
}
