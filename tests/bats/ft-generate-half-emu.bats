#!/usr/bin/env bats
# ft-generate --device cuda --bf16/--fp16 on the emulated device
# (FT_CUDA_LIB=build/libft_cuda_emu.so, docs/CUDA-TESTING.md "Host emulation"):
# the decoder's q|k|v, gate|up outputs and KV cache in half, its decode
# attention widening them into fp32 (lib/cuda/infer.cu).  The logits
# bound and the margin argument are tests/gpu/test_gpu_generate_half.c's
# (in make test too); here the tool end to end.
load helper
load emu_helper

QWEN="$FIXTURES/models/tiny-qwen2"
GQA4="$FIXTURES/models/tiny-llama-gqa4"

prompts() {
	printf '%s\n' '{"prompt": "Who are you?"}' '{"prompt": "the tea is hot and the cup is full of it"}' \
		'{"prompt": "x"}' > p.jsonl
}
# gen MODEL MAX_NEW DEVICE-FLAGS...: greedy, batched two by two
gen() {
	local model=$1 n=$2
	shift 2
	ft-generate --model_name_or_path "$model" --tokenizer "$FIXTURES/generate/tokenizer" \
		--template default --max_new_tokens "$n" --do_sample false \
		--per_device_eval_batch_size 2 "$@" p.jsonl
}

@test "emulated device --bf16/--fp16: an answer per prompt, the precision named; threads in reverse order and one OS thread give the same text" {
	prompts
	for h in bf16 fp16; do
		run -0 --separate-stderr gen "$GQA4" 60 --device cuda --$h
		[[ "$stderr" == *"generating on cuda:0 (ft host emulation, "*"), $h; device memory planned "*"KV cache"* ]]
		[ "$(printf '%s\n' "$output" | wc -l)" -eq 3 ]
		printf '%s\n' "$output" > $h.out
		FT_EMU_ORDER=reverse FT_EMU_THREADS=1 gen "$GQA4" 60 --device cuda --$h > $h.rev 2>/dev/null
		diff $h.out $h.rev
	done
}

@test "emulated device --bf16/--fp16: the CPU's and the fp32 device's greedy text where every decision has margin (tiny-qwen2, also QLoRA); fp32 the CPU's" {
	prompts
	gen "$QWEN" 30 --device cpu > cpu.out
	gen "$QWEN" 30 --device cuda 2>/dev/null > f32.out
	diff cpu.out f32.out
	# tiny-qwen2's greedy decisions have wide margins: on
	# test_gpu_generate_half's prompts all 48 have a top-2 gap over twice
	# the logits bound in bf16 and fp16, and on these it answers one
	# token throughout
	for h in bf16 fp16; do
		gen "$QWEN" 30 --device cuda --$h 2>/dev/null > $h.out
		diff cpu.out $h.out
	done
	# QLoRA's base: its module-by-module fp32 products rounded into the
	# half q|k|v and gate|up buffers through dqkv
	gen "$QWEN" 30 --device cpu --quantization_bit 4 > q4.out
	gen "$QWEN" 30 --device cuda --bf16 --quantization_bit 4 2>/dev/null > q4bf16.out
	diff q4.out q4bf16.out
	# and GQA groups of 4 over a longer cache: fp32 unchanged, the CPU's
	gen "$GQA4" 60 --device cpu > cpu4.out
	gen "$GQA4" 60 --device cuda 2>/dev/null > f324.out
	diff cpu4.out f324.out
}
