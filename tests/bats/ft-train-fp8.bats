#!/usr/bin/env bats
# ft-train --fp8: LLaMA-Factory's fp8 (torchao's Float8Linear, docs/EXTRAS.md
# "fp8") against tests/fixtures/extras/fp8_losses.txt, which
# tests/reference/make_fp8_fixtures.py writes from torchao itself on the
# CPU; the flags, the notes and the refusals.
load helper

MODEL="$FIXTURES/models/tiny-llama"
EMU="$FT_ROOT/build/libft_cuda_emu.so"
export OMP_NUM_THREADS=1

ref() { grep "^$1 " "$FIXTURES/extras/fp8_losses.txt" | tr ' ' '\n' | tail -n +2; }
train() { ft-train --model_name_or_path "$MODEL" --train p20.zst --output_dir out "$@"; }

setup() {
	cd "$BATS_TEST_TMPDIR"
	ft-cat --encode < "$FIXTURES/trainer/parity20.jsonl" > p20.zst
}

# worst A B FROM TO: the largest relative difference of lines FROM..TO
worst() {
	paste "$1" "$2" | sed -n "$3,$4p" | awk '{ d = ($1 - $2) / $2; if (d < 0) d = -d; if (d > w) w = d }
		END { printf "%.3g\n", w }'
}
within() { awk -v w="$1" -v t="$2" 'BEGIN { exit !(w <= t) }'; }

# The 10-step run of extras.bats (accumulation 2, cosine, clipping 1.0,
# weight_decay 0.1).  Bounds, from the computation:
#  - step 0 (loss, grad norm) and step 1 (loss) within 1e-5: the products
#    of two fp8 values are exact in float32, so ft and torch differ only in
#    summation order (measured 1e-7); a single element rounded to the other
#    fp8 neighbour moves them far less.  Without fp8 the fixture's step 0
#    is 1.7e-4 (loss) and 1.5e-3 (grad norm) away: fp8 must be on to pass.
#  - every step's loss within 1e-3 and grad norm within 3e-2: from step 2-4
#    on, float32 noise in the weights makes some element cross an fp8
#    rounding boundary and AdamW turns the changed small gradients into
#    lr-sized steps.  make_fp8_fixtures.py --nudge shows torch itself
#    moving by up to 1e-4 (loss) and 4e-3 (grad norm) from 1e-7 noise in
#    the initial weights; ft measured 2e-4 and 6e-3 (x5 margin).
fp8_parity() {
	local name=$1; shift
	run ft-train --model_name_or_path "${FP8_MODEL:-$MODEL}" --train p20.zst --output_dir "$name" \
		--weight_decay 0.1 --max_grad_norm 1.0 --lr_scheduler_type cosine --warmup_steps 2 \
		--gradient_accumulation_steps 2 --num_train_epochs 1 --logging_steps 1 --fp8 -q "$@"
	assert_success
	jq -r 'select(.loss) | .loss' "$name/trainer_log.jsonl" > loss
	jq -r 'select(.loss) | .grad_norm' "$name/trainer_log.jsonl" > gnorm
	ref "$name" > want_loss
	ref "${name}_gnorm" > want_gnorm
	[ "$(wc -l < loss)" = 10 ] && [ "$(wc -l < want_loss)" = 10 ]
	w0=$(worst loss want_loss 1 2) g0=$(worst gnorm want_gnorm 1 1)
	wl=$(worst loss want_loss 1 10) gl=$(worst gnorm want_gnorm 1 10)
	echo "# $name: steps 0-1 loss $w0, step 0 grad norm $g0; all steps loss $wl, grad norm $gl" >&3
	within "$w0" 1e-5 && within "$g0" 1e-5 && within "$wl" 1e-3 && within "$gl" 3e-2
}

@test "fp8: the fixture's fp8 and plain runs are far apart at step 0 (the bounds can tell)" {
	ref fp8_full | head -1 > a
	ref plain_full | head -1 > b
	within 1e-4 "$(worst a b 1 1)"
	ref fp8_full_gnorm | head -1 > a
	ref plain_full_gnorm | head -1 > b
	within 1e-3 "$(worst a b 1 1)"
}

@test "fp8: parity with torchao's Float8Linear (full, 13 of 14 linears converted)" {
	need_jq
	fp8_parity fp8_full --finetuning_type full --learning_rate 1e-3
	run --separate-stderr train --finetuning_type full --max_steps 1 --fp8 --overwrite_output_dir
	[[ "$stderr" == *"--fp8: 13 of 14 decoder linears as torchao's Float8Linear"* ]]
}

@test "fp8: parity with torchao's Float8Linear (freeze, last layer; LoRA r=4)" {
	need_jq
	fp8_parity fp8_freeze --finetuning_type freeze --freeze_trainable_layers 1 --learning_rate 1e-3
	fp8_parity fp8_lora --finetuning_type lora --learning_rate 2e-3 \
		--adapter_name_or_path "$FIXTURES/parity/llama-lora-init"
}

@test "fp8: parity on Qwen2 (q/k/v biases added after the fp8 product)" {
	need_jq
	FP8_MODEL="$FIXTURES/models/tiny-qwen2" fp8_parity fp8_qwen2 --finetuning_type full --learning_rate 1e-3 \
		--allow_tokenizer_mismatch
}

# The device (lib/cuda/fp8.cu) on the host emulation against the same
# torchao fixture, with the same bounds: its fp8 operands are the CPU's bit
# for bit and its fp32 GEMMs differ from sgemm's only in summation order,
# as the CPU's differ from torch's (tests/bats/ft-train-cuda-emu.bats has
# the device against the CPU, and the half modes).
@test "fp8: the device's parity with torchao's Float8Linear (full, LoRA r=4; emulated device)" {
	[ -f "$EMU" ] || skip "the emulated backend is not built (make unit)"
	need_jq
	export FT_CUDA_LIB=$EMU
	fp8_parity fp8_full --finetuning_type full --learning_rate 1e-3 --device cuda
	[[ "$(jq -r .ft.device fp8_full/trainer_state.json)" == "cuda:0 (ft host emulation, "*", fp32" ]]
	fp8_parity fp8_lora --finetuning_type lora --learning_rate 2e-3 --device cuda \
		--adapter_name_or_path "$FIXTURES/parity/llama-lora-init"
}

@test "fp8: backends, notes and refusals as LLaMA-Factory's" {
	for b in auto torchao; do
		run train --finetuning_type full --max_steps 1 -q --fp8 --fp8_backend $b --overwrite_output_dir
		assert_success
	done
	run --separate-stderr train --finetuning_type full --max_steps 1 --fp8 --fp8_backend msamp --overwrite_output_dir
	assert_success
	[[ "$stderr" == *"--fp8_backend msamp trains with torchao's Float8Linear"* ]]
	run train --finetuning_type full --max_steps 1 --fp8 --fp8_backend te --overwrite_output_dir
	[ "$status" -eq 2 ]
	assert_output --partial "--fp8_backend te: Transformer Engine's HYBRID recipe"
	run train --finetuning_type full --max_steps 1 --fp8 --fp8_backend fast --overwrite_output_dir
	[ "$status" -eq 2 ]
	assert_output --partial "'fast' is not a backend"
	run train --max_steps 1 --fp8 --quantization_bit 4 --overwrite_output_dir
	[ "$status" -eq 2 ]
	assert_output --partial "FP8 training is not compatible with quantization"
	run train --max_steps 1 --fp8 --lora_rank 16 --overwrite_output_dir
	[ "$status" -eq 2 ]
	assert_output --partial "lora_rank 16 is not implemented"
	run train --max_steps 1 --fp8 --use_dora --overwrite_output_dir
	[ "$status" -eq 2 ]
	assert_output --partial "fp8 with DoRA is not implemented"
	# the FSDP2 all-gather setting: nothing to gather; alone it does not turn fp8 on
	run --separate-stderr train --finetuning_type full --max_steps 1 --fp8 \
		--fp8_enable_fsdp_float8_all_gather --overwrite_output_dir
	assert_success
	[[ "$stderr" == *"ft's ranks hold whole models (no FSDP), so there is nothing to gather"* ]]
	run --separate-stderr train --finetuning_type full --max_steps 1 --fp8_enable_fsdp_float8_all_gather \
		--overwrite_output_dir
	assert_success
	[[ "$stderr" == *"without --fp8"*"fp8 stays off"* && "$stderr" != *"Float8Linear"* ]]
}

@test "fp8: only the pt and sft trainers read it, as in LLaMA-Factory" {
	ft-cat --encode < "$FIXTURES/pref/dpo.jsonl" > dpo.zst
	run --separate-stderr ft-train --model_name_or_path "$MODEL" --train dpo.zst --output_dir d --stage dpo \
		--max_steps 1 --fp8
	assert_success
	[[ "$stderr" == *"--fp8 is ignored by --stage dpo"* && "$stderr" != *"Float8Linear"* ]]
}

@test "fp8: --device cuda trains on the device, --device auto picks it (no CPU fallback)" {
	[ -f "$EMU" ] || skip "the emulated backend is not built (make unit)"
	need_jq
	export FT_CUDA_LIB=$EMU
	run --separate-stderr train --finetuning_type full --max_steps 1 --fp8 --device cuda
	assert_success
	[[ "$stderr" == *"--fp8: 13 of 14 decoder linears as torchao's Float8Linear"* ]]
	[[ "$(jq -r .ft.device out/trainer_state.json)" == "cuda:0 (ft host emulation, "* ]]
	run --separate-stderr train --finetuning_type full --max_steps 1 --fp8 --device auto --overwrite_output_dir
	assert_success
	[[ "$stderr" != *"training on the CPU"* ]]
	[[ "$(jq -r .ft.device out/trainer_state.json)" == "cuda:0 (ft host emulation, "* ]]
}
