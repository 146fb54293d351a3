#!/usr/bin/env bats
# mpirun -np 2 ft-train --stage dpo | kto | rm --device cuda: the
# preference stages data parallel on GPUs (lib/train/cuda_pref.c's
# sum_group, docs/DISTRIBUTED.md) on two emulated devices
# (FT_CUDA_LIB=build/libft_cuda_emu.so, FT_EMU_DEVICES=2) with the fake
# NCCL (FT_NCCL_LIB=build/libnccl_emu.so), as ft-train-nccl-emu.bats does
# for sft.  tests/fixtures/pref: 6 micro-batches of 2 pairs, LoRA on
# tiny-llama (rm on its dropout-free copy, as ft-train-pref-mpi.bats: the
# value head's dropout masks are drawn per rank).
#
# Tolerances.  Against one emulated device with twice the accumulation:
# each micro-batch's forward passes are the same computations on the same
# weights, so its loss and metrics are the same bits; the gradients are
# g0 + g1 added by the fake NCCL against g1 accumulated onto g0 inside the
# device's backward GEMMs (beta = 1), one float rounding apart per element,
# and the step's loss and the metrics' sums are summed over the ranks in
# another order: the 1e-6 (absolute, on numbers of order 1-100 for the
# log-probs, and on the weights after 3 AdamW steps at lr 1e-3) of
# ft-train-pref-mpi.bats, where a rank's missing share moves the losses
# and metrics by ~1e-1 and the weights by ~1e-3.  Against the CPU's
# mpirun -np 2: the device's reductions against the CPU's loops, the 1e-4
# relative of ft-train-cuda-emu.bats's device-vs-CPU preference runs for
# the losses, grad norms and log-probs, and the 1e-4 absolute of
# ft-train-nccl-emu.bats for the weights (AdamW moves an element by at
# most lr = 1e-3 a step here; the near-cancelling gradients of a few
# elements are what two summation orders can round apart; measured below,
# printed).  A 2-rank checkpoint resumed on 2 ranks: bit for bit.
bats_require_minimum_version 1.5.0
load helper
load mpi_helper

PREF="$FIXTURES/pref"
MODEL="$FIXTURES/models/tiny-llama"
setup() {
	cd "$BATS_TEST_TMPDIR"
	need_nccl_emu
	for s in dpo rm kto; do ft-cat --encode < "$PREF/$s.jsonl" > $s.zst; done
}
# pargs STAGE [BATCHES]: the run of ft-train-pref-mpi.bats (on STAGE.zst)
pargs() {
	local m=$MODEL
	[ "$1" = rm ] && m=$PREF/llama-model-nodrop
	args=(--stage "$1" --train "${2:-$1.zst}" --model_name_or_path "$m" --adapter_name_or_path "$PREF/llama-lora"
	      --max_steps 3 --logging_steps 1 --learning_rate 1e-3 --save_strategy no -q)
}
# worst ABS|REL A B KEYS...: the largest absolute (or relative) difference
# of KEYS over the training lines of two logs, line by line
worst() {
	local how=$1 a=$2 b=$3 k
	shift 3
	for k in "$@"; do
		paste <(jq -r "select(.loss != null) | .[\"$k\"] // \"none\"" "$a") \
		      <(jq -r "select(.loss != null) | .[\"$k\"] // \"none\"" "$b")
	done | awk -v how="$how" '
		$1 == "none" || $2 == "none" { bad = 1; next }
		{ d = $1 - $2; if (d < 0) d = -d; m = $1 < 0 ? -$1 : $1
		  if (how == "rel") d = d / (m > 1e-30 ? m : 1e-30); if (d > w) w = d; n++ }
		END { if (bad || n == 0) print "missing"; else printf "%g\n", w }'
}
# parity STAGE FILE METRICS...: 2 emulated GPUs x 1 against 1 x 2 and
# against the CPU's 2 ranks x 1
parity() {
	local stage=$1 file=$2
	shift 2
	pargs "$stage"
	run mpi2 ft-train "${args[@]}" --device cuda --gradient_accumulation_steps 1 --output_dir two
	assert_success
	[[ "$(jq -r .ft.device two/trainer_state.json)" == "cuda:0 (ft host emulation, "* ]]
	[ "$(jq .ft.world_size two/trainer_state.json)" = 2 ]
	[ "$(jq -s 'map(select(.loss != null)) | length' two/trainer_log.jsonl)" = 3 ]
	run ft-train "${args[@]}" --device cuda --gradient_accumulation_steps 2 --output_dir one
	assert_success
	d=$(worst abs one/trainer_log.jsonl two/trainer_log.jsonl loss grad_norm "$@")
	w=$("$MAXDIFF" "one/$file" "two/$file")
	echo "# $stage: 2 emulated GPUs against 1: log within $d, $file within $w" >&3
	within "$d" 1e-6
	within "$w" 1e-6
	run mpi2 ft-train "${args[@]}" --device cpu --gradient_accumulation_steps 1 --output_dir cpu
	assert_success
	d=$(worst rel cpu/trainer_log.jsonl two/trainer_log.jsonl loss grad_norm)
	w=$("$MAXDIFF" "cpu/$file" "two/$file")
	echo "# $stage: against the CPU's 2 ranks: losses, grad norms within $d relative, $file within $w" >&3
	within "$d" 1e-4
	within "$w" 1e-4
}

@test "NCCL (emulated) dpo: 2 ranks == 1 device x 2 == the CPU's 2 ranks (sigmoid; ipo, orpo against 1 device)" {
	parity dpo adapter_model.safetensors rewards/chosen rewards/rejected rewards/margins logps/chosen logps/rejected
	d=$(worst rel cpu/trainer_log.jsonl two/trainer_log.jsonl logps/chosen logps/rejected)
	within "$d" 1e-4
	for l in ipo orpo; do
		pargs dpo
		run mpi2 ft-train "${args[@]}" --pref_loss $l --device cuda --output_dir two-$l
		assert_success
		run ft-train "${args[@]}" --pref_loss $l --device cuda --gradient_accumulation_steps 2 --output_dir one-$l
		assert_success
		within "$(worst abs one-$l/trainer_log.jsonl two-$l/trainer_log.jsonl loss grad_norm)" 1e-6
		within "$("$MAXDIFF" one-$l/adapter_model.safetensors two-$l/adapter_model.safetensors)" 1e-6
	done
}

# each rank evaluates every 2nd validation batch; the loss and TRL's
# metrics are sums and counts reduced over the ranks: the same forward
# passes, summed in another order (1e-6 as above; a rank's missing share
# moves them by ~1e-1)
@test "NCCL (emulated) dpo --val: the evaluation sharded over the 2 devices == 1 device's (TRL's eval metrics summed)" {
	pargs dpo
	args+=(--val dpo.zst --eval_steps 2 --device cuda)
	run mpi2 ft-train "${args[@]}" --output_dir two
	assert_success
	run ft-train "${args[@]}" --gradient_accumulation_steps 2 --output_dir one
	assert_success
	[ "$(jq -s 'map(select(.eval_loss)) | length' two/trainer_log.jsonl)" = 2 ]
	evals() { jq -r 'select(.eval_loss) | del(.eval_runtime, .eval_samples_per_second, .eval_steps_per_second,
		.elapsed_time, .remaining_time, .throughput, .world_size) | to_entries[] | "\(.key) \(.value)"' "$1"; }
	paste -d' ' <(evals one/trainer_log.jsonl) <(evals two/trainer_log.jsonl) | awk '
		$1 != $3 { bad = 1 } { d = $2 - $4; if (d < 0) d = -d; if (d > 1e-6) bad = 1; n++ }
		END { exit bad || n < 10 }'
}

# --fp16 / --bf16: each rank's fp32 gradients carry the same loss scale,
# the overflow check and the scale's update run on the summed gradients on
# every rank, so the ranks step (or skip) together; against one device the
# argument and bound above hold (measured 0)
@test "NCCL (emulated) dpo --fp16, --bf16: 2 ranks == 1 device x 2, the same loss scale" {
	for p in fp16 bf16; do
		pargs dpo
		args+=(--device cuda --$p)
		run mpi2 ft-train "${args[@]}" --output_dir two-$p
		assert_success
		run ft-train "${args[@]}" --gradient_accumulation_steps 2 --output_dir one-$p
		assert_success
		within "$(worst abs one-$p/trainer_log.jsonl two-$p/trainer_log.jsonl loss grad_norm)" 1e-6
		within "$("$MAXDIFF" one-$p/adapter_model.safetensors two-$p/adapter_model.safetensors)" 1e-6
	done
	[ "$(jq -sc 'map(select(.loss) | .loss_scale)' two-fp16/trainer_log.jsonl)" = "[65536,65536,65536]" ]
	# the half path was taken: bf16's numbers are not fp16's
	! cmp -s <(jq -c 'select(.loss) | .loss' two-fp16/trainer_log.jsonl) <(jq -c 'select(.loss) | .loss' two-bf16/trainer_log.jsonl) || false
}

@test "NCCL (emulated) kto: 2 ranks == 1 device x 2 == the CPU's 2 ranks" {
	parity kto adapter_model.safetensors rewards/chosen rewards/rejected kl
}

@test "NCCL (emulated) rm: 2 ranks == 1 device x 2 == the CPU's 2 ranks, the value head summed too" {
	parity rm adapter_model.safetensors
	w=$("$MAXDIFF" one/value_head.safetensors two/value_head.safetensors)
	echo "# rm: value head within $w of 1 device" >&3
	within "$w" 1e-6
	within "$("$MAXDIFF" cpu/value_head.safetensors two/value_head.safetensors)" 1e-4
	# the head did move in the 2-rank run (its sum is not a no-op on one rank's)
	run ft-train "${args[@]}" --device cuda --max_steps 1 --output_dir h1
	assert_success
	! cmp -s h1/value_head.safetensors two/value_head.safetensors || false
}

@test "NCCL (emulated) rm, dpo: a 2-rank device checkpoint resumed on 2 ranks, bit for bit" {
	for s in rm dpo; do
		pargs $s
		args+=(--device cuda --max_steps 4 --save_strategy steps --save_steps 2)
		run mpi2 ft-train "${args[@]}" --output_dir full-$s
		assert_success
		mkdir r-$s && cp -r full-$s/checkpoint-2 r-$s/ && head -n 2 full-$s/trainer_log.jsonl > r-$s/trainer_log.jsonl
		run mpi2 ft-train "${args[@]}" --output_dir r-$s --resume_from_checkpoint r-$s/checkpoint-2
		assert_success
		cmp <(jq -c 'del(.elapsed_time, .remaining_time, .throughput)' full-$s/trainer_log.jsonl) \
		    <(jq -c 'del(.elapsed_time, .remaining_time, .throughput)' r-$s/trainer_log.jsonl)
		cmp full-$s/adapter_model.safetensors r-$s/adapter_model.safetensors
		cmp full-$s/checkpoint-4/optimizer.safetensors r-$s/checkpoint-4/optimizer.safetensors
	done
	cmp full-rm/value_head.safetensors r-rm/value_head.safetensors
}

# ZeRO-1 (lib/cuda/zero.cu through cuda_pref.c): every rank has the same
# summed gradients, the same norm and clipping, updates its slice with
# plain AdamW's kernel and the slices are broadcast back bit for bit, so
# logs (but the peak memory), weights and checkpoints equal plain data
# parallel's exactly, as ft-train-nccl-emu.bats's sft ZeRO-1 test argues;
# its checkpoint resumed on 2 ranks gives the same bits again.  Full dpo
# has its reference as a second (frozen, unsliced) device model.
@test "NCCL (emulated) dpo, kto --zero 1: == plain data parallel bit for bit; its checkpoint resumes on 2 ranks" {
	no_mem() { jq -c 'del(.elapsed_time, .remaining_time, .throughput, .peak_memory_bytes)' "$1"; }
	for s in dpo kto full; do
		if [ $s = full ]; then
			args=(--stage dpo --train dpo.zst --model_name_or_path "$MODEL" --finetuning_type full
			      --logging_steps 1 --learning_rate 1e-4 -q)
			f=model.safetensors
		else pargs $s; f=adapter_model.safetensors; fi
		args+=(--device cuda --max_steps 4 --save_strategy steps --save_steps 2)
		run mpi2 ft-train "${args[@]}" --zero 1 --output_dir z-$s
		assert_success
		[ "$(jq .ft.zero z-$s/trainer_state.json)" = 1 ]
		run mpi2 ft-train "${args[@]}" --output_dir p-$s
		assert_success
		# the slices are real: the plan holds half the moments
		zp=$(jq -s '.[0].peak_memory_bytes' z-$s/trainer_log.jsonl)
		pp=$(jq -s '.[0].peak_memory_bytes' p-$s/trainer_log.jsonl)
		echo "# $s: peak $zp bytes with ZeRO-1, $pp without" >&3
		[ "$zp" -lt "$pp" ]
		cmp <(no_mem z-$s/trainer_log.jsonl) <(no_mem p-$s/trainer_log.jsonl)
		for g in $f checkpoint-2/optimizer.safetensors checkpoint-2/$f; do
			cmp "z-$s/$g" "p-$s/$g"
		done
		run mpi2 ft-train "${args[@]}" --zero 1 --resume_from_checkpoint z-$s/checkpoint-2 --output_dir r-$s
		assert_success
		cmp <(no_mem z-$s/trainer_log.jsonl | tail -n 2) <(no_mem r-$s/trainer_log.jsonl | tail -n 2)
		cmp z-$s/$f r-$s/$f
	done
}

@test "NCCL (emulated) rm --zero 1 on GPUs refused with its reason; --device auto takes the CPU for it" {
	pargs rm
	run mpi2 ft-train "${args[@]}" --device cuda --zero 1 --output_dir z
	[ "$status" -eq 2 ]
	assert_output --partial "--zero 1 --stage rm --device cuda: under mpirun ZeRO-1 of --stage rm runs on the CPU"
	run --separate-stderr mpi2 ft-train "${args[@]}" -v --device auto --zero 1 --max_steps 1 --output_dir za
	assert_success
	[[ "$stderr" == *"note: --device auto: training on the CPU: under mpirun ZeRO-1 of --stage rm"* ]]
	[ "$(jq -r .ft.device za/trainer_state.json)" = cpu ]
	# without --zero, auto takes the (emulated) GPUs
	run mpi2 ft-train "${args[@]}" --device auto --max_steps 1 --output_dir a
	assert_success
	[[ "$(jq -r .ft.device a/trainer_state.json)" == "cuda:0 (ft host emulation, "* ]]
}

# 5 micro-batches in steps of 4: the last step has one, so rank 1 has
# none: it zeroes its gradients (the lazy zeroing its forward_backward did
# not run) and adds zeros, not the last step's gradients
@test "NCCL (emulated) dpo: a step in which one rank has no micro-batch matches one device" {
	(head -1 "$PREF/dpo.jsonl" | jq -c '.meta.counts.batches = 5 | .meta.counts.examples = 10'
	 sed -n 2,6p "$PREF/dpo.jsonl") | ft-cat --encode > d5.zst
	pargs dpo d5.zst
	args+=(--max_steps -1 --num_train_epochs 1 --device cuda)
	run mpi2 ft-train "${args[@]}" --gradient_accumulation_steps 2 --output_dir two
	assert_success
	run ft-train "${args[@]}" --gradient_accumulation_steps 4 --output_dir one
	assert_success
	[ "$(jq -s 'map(select(.loss != null)) | length' two/trainer_log.jsonl)" = 2 ]
	within "$(worst abs one/trainer_log.jsonl two/trainer_log.jsonl loss grad_norm logps/chosen)" 1e-6
	within "$("$MAXDIFF" one/adapter_model.safetensors two/adapter_model.safetensors)" 1e-6
}
