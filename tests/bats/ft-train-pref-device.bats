#!/usr/bin/env bats
# ft-train --stage rm | dpo | kto --device cuda through the backend table,
# without a GPU: FT_CUDA_LIB loads build/tests/libft_fake_cuda.so
# (tests/emu/fake_backend.c), which implements the table's preference
# entries with the CPU model's own arithmetic.  Every number the run writes
# must then be the CPU path's, bit for bit: what is tested is the device
# wiring (the tool's bindings, lib/train/cuda_pref.c: the optimizer
# stepping itself, lazy zeroing, the reference as disabled adapters or a
# second device model, rm's value head kept and stepped by the device,
# checkpoints and resume through state_out/state_in, lib/cuda/backend.c's
# forwarding).  The kernels are tests/emu/test_pref_emu.cc's and, on a GPU,
# bench/train-gpu/pref_check.sh's.
load helper

PREF="$FIXTURES/pref"
LLAMA="$FIXTURES/models/tiny-llama"
FAKE="$FT_ROOT/build/tests/libft_fake_cuda.so"
export OMP_NUM_THREADS=1

setup() {
	cd "$BATS_TEST_TMPDIR"
	[ -f "$FAKE" ] || skip "the fake backend is not built (make unit)"
	command -v jq >/dev/null || skip "jq is not installed"
	for s in dpo rm kto; do ft-cat --encode < "$PREF/$s.jsonl" > $s.zst; done
}

# tr DEVICE OUT [flags]: 4 steps, eval every 2
tr() {
	local dev=$1 out=$2
	shift 2
	FT_CUDA_LIB=$FAKE ft-train -q --model_name_or_path "$LLAMA" --output_dir "$out" --device "$dev" \
		--max_steps 4 --logging_steps 1 --eval_steps 2 --save_steps 0 --learning_rate 5e-3 --seed 3 "$@"
}
# the log without what names the device or the clock
steady() { jq -c 'del(.elapsed_time, .remaining_time, .throughput, .device, .peak_memory_bytes)' "$1"; }
same_run() {   # flags...: the cpu and the device run agree in every logged number
	tr cpu cpu "$@"
	tr cuda dev "$@"
	[ "$(jq -r .ft.device dev/trainer_state.json)" = "cuda:0 (fake (the CPU model behind the backend table)), fp32" ]
	diff <(steady cpu/trainer_log.jsonl) <(steady dev/trainer_log.jsonl)
	[ "$(grep -c eval_loss dev/trainer_log.jsonl)" -eq 2 ]
	[ "$(grep -c '"loss"' dev/trainer_log.jsonl)" -eq 4 ]
	diff <(jq -S 'del(.eval_runtime, .eval_samples_per_second, .eval_steps_per_second)' cpu/eval_results.json) \
	     <(jq -S 'del(.eval_runtime, .eval_samples_per_second, .eval_steps_per_second)' dev/eval_results.json)
	rm -rf cpu dev
}

@test "device dpo: sigmoid (reference: the adapters disabled), ipo, orpo: the CPU path's numbers" {
	for l in sigmoid ipo orpo; do
		same_run --stage dpo --pref_loss $l --train dpo.zst --val dpo.zst --adapter_name_or_path "$PREF/llama-lora"
	done
}

@test "device dpo --pref_bco_weight and --ld_alpha (host-side: baseline and weights around the device's log-probs)" {
	same_run --stage dpo --pref_bco_weight 0.5 --ld_alpha 0.6 --train dpo.zst --val dpo.zst \
		--adapter_name_or_path "$PREF/llama-lora"
	same_run --stage dpo --pref_loss ipo --pref_bco_weight 1.0 --ld_alpha 0.3 --train dpo.zst --val dpo.zst \
		--adapter_name_or_path "$PREF/llama-lora"
}

@test "device dpo full fine-tuning (reference: a frozen copy of the base on the device) and kto" {
	same_run --stage dpo --finetuning_type full --train dpo.zst --val dpo.zst
	same_run --stage kto --train kto.zst --val kto.zst --adapter_name_or_path "$PREF/llama-lora"
}

@test "device rm: the value head stepped on the device; saved head, adapter and predictions as the CPU's" {
	# the adapter trains with its own lora_dropout (adapter_config.json)
	mkdir ad && cp "$PREF/llama-lora"/* ad/
	jq '.lora_dropout = 0.1' "$PREF/llama-lora/adapter_config.json" > ad/adapter_config.json
	for d in cpu cuda; do
		tr $d $d --stage rm --train rm.zst --val rm.zst --adapter_name_or_path ad \
			--gradient_accumulation_steps 2 --do_train true --do_predict true
	done
	diff <(steady cpu/trainer_log.jsonl) <(steady cuda/trainer_log.jsonl)
	cmp cpu/value_head.safetensors cuda/value_head.safetensors
	cmp cpu/adapter_model.safetensors cuda/adapter_model.safetensors
	cmp cpu/generated_predictions.jsonl cuda/generated_predictions.jsonl
	# the head did train (it is not the initial one written back)
	tr cuda c1 --stage rm --train rm.zst --adapter_name_or_path "$PREF/llama-lora" --max_steps 1
	! cmp -s c1/value_head.safetensors cuda/value_head.safetensors || false
	# a head loaded from an earlier run reaches the device: eval-only scores it
	tr cuda ev --stage rm --val rm.zst --adapter_name_or_path cuda --do_eval true
	tr cpu evc --stage rm --val rm.zst --adapter_name_or_path cuda --do_eval true
	[ "$(jq .eval_loss ev/eval_results.json)" = "$(jq .eval_loss evc/eval_results.json)" ]
	[ "$(jq .eval_accuracy ev/eval_results.json)" = "$(jq .eval_accuracy evc/eval_results.json)" ]
}

@test "device rm resume: from checkpoint-2 in a new process, bit-identical; the checkpoint resumes on the CPU too" {
	local f=(--stage rm --train rm.zst --adapter_name_or_path "$PREF/llama-lora" --save_steps 2)
	tr cuda full "${f[@]}"
	for d in cuda cpu; do
		mkdir r-$d && cp -r full/checkpoint-2 r-$d/ && cp full/trainer_log.jsonl r-$d/
		tr $d r-$d "${f[@]}" --resume_from_checkpoint r-$d/checkpoint-2
		diff <(steady full/trainer_log.jsonl) <(steady r-$d/trainer_log.jsonl)
		cmp full/value_head.safetensors r-$d/value_head.safetensors
	done
}
