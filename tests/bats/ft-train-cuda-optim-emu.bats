#!/usr/bin/env bats
# LLaMA-Factory's optimizer extras with ft-train --device cuda on the
# emulated device (build/libft_cuda_emu.so, docs/CUDA-TESTING.md "Host emulation")
# against --device cpu, and device checkpoints resumed on both sides.
#
# Tolerances.  LoRA+ is the device AdamW with one lr per param: the same
# fp32 forward/backward as tests/bats/ft-train-cuda-emu.bats (summation
# order only, <= 4e-6 relative observed there), each update the CPU's
# formula with the CPU's lr (group_lr * lambda, the same double), so the
# bound stays 1e-4.  A ratio of 16 makes lora_B's steps 16 times the
# others' and a wrong group (ratio 1 or 16 on the wrong factor) moves the
# losses by far more than 1e-3.  BAdam is the same device AdamW over the
# active block only (the others' gradients zeroed before the norm, as the
# CPU's pre_clip), with the block's own step count: 1e-4 again; interval
# 2 switches blocks every other step and wraps back to block 0, whose
# moments must restart from zero.  Adam-mini (lib/cuda/optim_x.cu) is the
# CPU's am_step operation for operation; the one reordered sum is each
# block's sum of g^2, in double on both sides (relative error ~1e-16 x
# block size before the float mean), so the bound stays the fp32 run's
# 1e-4.  Muon runs Newton-Schulz in bfloat16 with every rounding of the
# CPU's ns5, but the fp32 GEMMs (cuBLAS; the emulation's calls reach
# OpenBLAS in another layout) and the norm's partial sums add in another
# order and flip a bfloat16 rounding now and then (2^-8 on that element):
# the bound is the CPU's own against torch's Muon (tests/bats/extras.bats:
# 1e-4 full, where every linear is Muon's, measured 3e-5 here; 1e-5 LoRA,
# measured 4e-7), at its learning rate 1e-3.  GaLore's per-step Adam and
# projections are the CPU's operations (fp32 GEMMs in another order), and
# its SVD is the CPU's own (the clipped gradient goes to the host every
# update_interval steps): 1e-4, as fp32.  But a top-r subspace moves by
# |dG| / (s_r - s_r+1), and at ranks 2 to 8 the fixture's step-3
# gradients have near-equal singular values there: the CPU's own 1- and
# 2-thread runs then differ by 1e-3, which no bound can pin.  So the
# checks reproject where the gap is wide (rank 4 at step 0 only, rank 1
# every 2 steps: the 1- vs 2-thread spread is <= 2e-6 there, the device's
# <= 7e-7).  APOLLO is GaLore's projected Adam with the CPU's random
# projection (drawn on the host, torch's generator) and scaled_grad's
# per-channel or per-tensor factors and Fira's limiter (the norms' sums
# in double; the limiter's state stays on the host): ratios of norms of
# fp32 values, measured 3e-6, bound 1e-4.  apollo_proj svd goes through
# the same SVD conditioning: at rank 4 the CPU's own 1- vs 2-thread runs
# differ by 7e-5 (rank 1 by 0.8: a degenerate top value), so that one
# check is rank 4 at 1e-3.  Resumes are compared bit for bit.
load helper
load emu_helper

LLAMA="$FIXTURES/models/tiny-llama"

# resumes WEIGHTS STATE both|one ARGS...: ARGS (6 steps, saved every 3)
# run on the device (a) and resumed there from checkpoint-3 (b): log,
# WEIGHTS and the optimizer's STATE file bit-identical; the device's
# checkpoint-3 resumed on the CPU (d) within the fp32 bound (1e-4) of the
# CPU's own run (c); with `both`, the CPU's checkpoint-3 on the device (e)
resumes() {
	local weights=$1 state=$2 both=$3
	shift 3
	ft-train --output_dir a --device cuda "$@"
	from_checkpoint a b && ft-train --output_dir b --device cuda "$@" --resume_from_checkpoint true
	diff <(steady a/trainer_log.jsonl) <(steady b/trainer_log.jsonl)
	cmp a/$weights b/$weights
	cmp a/checkpoint-6/$state b/checkpoint-6/$state
	ft-train --output_dir c --device cpu "$@"
	from_checkpoint a d && ft-train --output_dir d --device cpu "$@" --resume_from_checkpoint true
	close c/trainer_log.jsonl d/trainer_log.jsonl 1e-4
	[ "$both" = both ] || return 0
	from_checkpoint c e && ft-train --output_dir e --device cuda "$@" --resume_from_checkpoint true
	close c/trainer_log.jsonl e/trainer_log.jsonl 1e-4
}
# from_checkpoint SRC DST: DST holds SRC's checkpoint-3 and its first 3 log lines
from_checkpoint() { mkdir "$2" && cp -r "$1/checkpoint-3" "$2/" && head -n 3 "$1/trainer_log.jsonl" > "$2/trainer_log.jsonl"; }

@test "emulated device LoRA+ (ratio 16, cosine warmup, clipping, accumulation): the CPU's losses within 1e-4" {
	sft_data
	common=(--train train.zst --val val.zst --eval_steps 2 --gradient_accumulation_steps 2
		--max_grad_norm 0.5 --lr_scheduler_type cosine --warmup_steps 2 --finetuning_type lora
		--lora_target all)
	same_run "$LLAMA" 1e-4 "${common[@]}" --loraplus_lr_ratio 16
	# the groups matter: ratio 1 (plain AdamW) is far from ratio 16
	tr cuda r16 "$LLAMA" "${common[@]}" --loraplus_lr_ratio 16
	tr cuda r1 "$LLAMA" "${common[@]}" --loraplus_lr_ratio 1
	run close r16/trainer_log.jsonl r1/trainer_log.jsonl 1e-3
	assert_failure
}

@test "emulated device LoRA+ resume: bit-identical on the device, and a device checkpoint resumes on the CPU" {
	sft_data
	args=(--model_name_or_path "$LLAMA" --train train.zst --finetuning_type lora --lora_dropout 0.1
	      --learning_rate 5e-3 --max_steps 6 --gradient_accumulation_steps 2 --max_grad_norm 0.5
	      --lr_scheduler_type cosine --warmup_steps 2 --logging_steps 1 --save_steps 3
	      --loraplus_lr_ratio 8 -q)
	resumes adapter_model.safetensors optimizer.safetensors one "${args[@]}"
}

@test "emulated device BAdam (switch every 2 steps, ascending and random): the CPU's losses within 1e-4, resume bit-identical" {
	sft_data
	common=(--train train.zst --finetuning_type full --use_badam true --badam_switch_interval 2
		--max_grad_norm 0.5 --max_steps 6)
	tr cpu cpu "$LLAMA" "${common[@]}"
	tr cuda dev "$LLAMA" "${common[@]}"
	close cpu/trainer_log.jsonl dev/trainer_log.jsonl 1e-4
	rm -rf cpu dev
	same_run "$LLAMA" 1e-4 "${common[@]}" --badam_switch_mode random
	args=(--model_name_or_path "$LLAMA" "${common[@]}" --learning_rate 5e-3 --logging_steps 1
	      --save_steps 3 -q)
	# the device's checkpoint holds the fresh block 0 after the switch
	resumes model.safetensors badam_optimizer.safetensors one "${args[@]}"
}

@test "emulated device Adam-mini (llama, qwen2 biases; decay, clipping, accumulation, eval): the CPU's losses within 1e-4, resume bit-identical" {
	sft_data
	base=(--train train.zst --val val.zst --eval_steps 2 --finetuning_type full --weight_decay 0.1
	      --max_grad_norm 0.5 --gradient_accumulation_steps 2)
	same_run "$LLAMA" 1e-4 "${base[@]}" --use_adam_mini true
	same_run "$FIXTURES/models/tiny-qwen2" 1e-4 "${base[@]}" --use_adam_mini true
	same_run "$LLAMA" 1e-4 --train train.zst --finetuning_type freeze --optim adam_mini
	# one moment per block is not AdamW's per element
	tr cuda mini "$LLAMA" "${base[@]}" --use_adam_mini true
	tr cuda adamw "$LLAMA" "${base[@]}"
	run close mini/trainer_log.jsonl adamw/trainer_log.jsonl 1e-3
	assert_failure
	args=(--model_name_or_path "$LLAMA" --train train.zst --finetuning_type full --use_adam_mini true
	      --weight_decay 0.1 --max_grad_norm 0.5 --learning_rate 5e-3 --max_steps 6 --logging_steps 1
	      --save_steps 3 -q)
	resumes model.safetensors adam_mini_optimizer.safetensors both "${args[@]}"
}

@test "emulated device Muon (full, LoRA; decay, clipping, accumulation, eval): the CPU's losses within bfloat16's bound, resume bit-identical" {
	sft_data
	base=(--train train.zst --val val.zst --eval_steps 2 --weight_decay 0.1 --max_grad_norm 0.5
	      --gradient_accumulation_steps 2 --learning_rate 1e-3)
	same_run "$LLAMA" 1e-4 "${base[@]}" --finetuning_type full --use_muon true
	same_run "$LLAMA" 1e-5 "${base[@]}" --finetuning_type lora --lora_target all --use_muon true
	# orthogonalized momentum is not AdamW
	tr cuda muon "$LLAMA" "${base[@]}" --finetuning_type full --use_muon true
	tr cuda adamw "$LLAMA" "${base[@]}" --finetuning_type full
	run close muon/trainer_log.jsonl adamw/trainer_log.jsonl 1e-3
	assert_failure
	args=(--model_name_or_path "$LLAMA" --train train.zst --finetuning_type full --use_muon true
	      --weight_decay 0.1 --max_grad_norm 0.5 --learning_rate 1e-3 --max_steps 6 --logging_steps 1
	      --save_steps 3 -q)
	resumes model.safetensors muon_optimizer.safetensors both "${args[@]}"
}

@test "emulated device GaLore (std, reverse_std, right, left; reprojection; layer-wise): the CPU's losses within 1e-4, resume bit-identical" {
	sft_data
	base=(--train train.zst --finetuning_type full --use_galore true --weight_decay 0.1
	      --max_grad_norm 0.5)
	same_run "$LLAMA" 1e-4 "${base[@]}" --val val.zst --eval_steps 2 --gradient_accumulation_steps 2 \
		--galore_rank 4 --galore_update_interval 200
	for pt in reverse_std right left; do
		same_run "$LLAMA" 1e-4 "${base[@]}" --galore_rank 4 --galore_update_interval 200 \
			--galore_proj_type $pt
	done
	same_run "$LLAMA" 1e-4 "${base[@]}" --galore_rank 1 --galore_update_interval 2 --galore_scale 4
	same_run "$LLAMA" 1e-4 "${base[@]}" --galore_rank 1 --galore_update_interval 2 --galore_layerwise true
	# the projection matters: GaLore is not AdamW
	tr cuda galore "$LLAMA" "${base[@]}" --galore_rank 1 --galore_update_interval 2
	tr cuda adamw "$LLAMA" --train train.zst --finetuning_type full --weight_decay 0.1 --max_grad_norm 0.5
	run close galore/trainer_log.jsonl adamw/trainer_log.jsonl 1e-3
	assert_failure
	# resumed at step 3, reprojecting at step 4 (0-based) from the checkpoint's projector on
	args=(--model_name_or_path "$LLAMA" "${base[@]}" --galore_rank 1 --galore_update_interval 2
	      --learning_rate 5e-3 --max_steps 6 --logging_steps 1 --save_steps 3 -q)
	resumes model.safetensors galore_optimizer.safetensors both "${args[@]}"
}

@test "emulated device APOLLO (channel, tensor + scale_front, re-projections, layer-wise, svd): the CPU's losses within 1e-4, resume bit-identical" {
	sft_data
	base=(--train train.zst --finetuning_type full --use_apollo true --weight_decay 0.1
	      --max_grad_norm 0.5)
	same_run "$LLAMA" 1e-4 "${base[@]}" --val val.zst --eval_steps 2 --gradient_accumulation_steps 2 \
		--apollo_rank 4 --apollo_update_interval 2
	same_run "$LLAMA" 1e-4 "${base[@]}" --apollo_rank 8 --apollo_update_interval 3 --apollo_scale 16 \
		--apollo_scale_type tensor --apollo_scale_front
	same_run "$LLAMA" 1e-4 "${base[@]}" --apollo_rank 4 --apollo_update_interval 2 --apollo_layerwise true
	same_run "$LLAMA" 1e-3 "${base[@]}" --apollo_rank 4 --apollo_update_interval 200 --apollo_proj svd
	# the scaling matters: APOLLO is not AdamW
	tr cuda apollo "$LLAMA" "${base[@]}" --apollo_rank 4 --apollo_update_interval 2
	tr cuda adamw "$LLAMA" --train train.zst --finetuning_type full --weight_decay 0.1 --max_grad_norm 0.5
	run close apollo/trainer_log.jsonl adamw/trainer_log.jsonl 1e-3
	assert_failure
	# resumed at step 3, re-projecting right after (the checkpoint's seeds and limits)
	args=(--model_name_or_path "$LLAMA" "${base[@]}" --apollo_rank 4 --apollo_update_interval 3
	      --learning_rate 5e-3 --max_steps 6 --logging_steps 1 --save_steps 3 -q)
	resumes model.safetensors apollo_optimizer.safetensors both "${args[@]}"
}

# pref_data: the preference fixtures encoded as dpo.zst and kto.zst
pref_data() { for s in dpo kto; do ft-cat --encode < "$FIXTURES/pref/$s.jsonl" > $s.zst; done; }
# pref_run OTHER flags...: the CPU and the emulated device within 1e-4, and
# the device's losses more than 1e-3 from OTHER's (the extra really ran)
pref_run() {
	local other=$1
	shift
	tr cpu cpu "$LLAMA" "$@"
	tr cuda dev "$LLAMA" "$@"
	[[ "$(jq -r .ft.device dev/trainer_state.json)" == "cuda:0 (ft host emulation, "* ]]
	close cpu/trainer_log.jsonl dev/trainer_log.jsonl 1e-4
	run close dev/trainer_log.jsonl $other/trainer_log.jsonl 1e-3
	assert_failure
	rm -rf cpu dev
}

# dpo and kto step through the preference binding (lib/train/cuda_pref.c)
# with sft's device code (lib/train/cuda_ext.c): the bounds argued above
# for sft hold, measured <= 5e-5 (BAdam), <= 1.5e-5 (Muon at 1e-3),
# <= 5e-7 (the rest).  LoRA+ goes without accumulation here: DPO's step-0
# LoRA gradients summed over two pairs nearly cancel in some elements, whose
# Adam updates sign(g) * lr * 16 then follow roundoff (the CPU's own 1- vs
# 2-thread runs differ by 1e-4 with accumulation 2, 1e-5 with eps 1e-5);
# one pair per step measured 6e-6.  The full runs' GaLore reprojects at
# step 0 only (rank 4) and every 2 steps at rank 1, where the gaps are wide.
@test "emulated device dpo and kto with each extra (LoRA+, BAdam, Adam-mini, Muon, GaLore, APOLLO): the CPU's losses within 1e-4, and not AdamW's" {
	pref_data
	for st in dpo kto; do
		base=(--stage $st --train $st.zst --max_grad_norm 0.5)
		full=("${base[@]}" --finetuning_type full --weight_decay 0.1)
		lora=("${base[@]}" --finetuning_type lora --lora_target all)
		tr cuda adamw "$LLAMA" "${full[@]}"
		tr cuda r1 "$LLAMA" "${lora[@]}" --loraplus_lr_ratio 1
		pref_run r1 "${lora[@]}" --loraplus_lr_ratio 16
		pref_run adamw "${full[@]}" --use_badam true --badam_switch_interval 2
		pref_run adamw "${full[@]}" --use_adam_mini true
		pref_run adamw "${full[@]}" --use_muon true --learning_rate 1e-3
		pref_run adamw "${full[@]}" --use_galore true --galore_rank 4 --galore_update_interval 200
		pref_run adamw "${full[@]}" --use_galore true --galore_rank 1 --galore_update_interval 2
		pref_run adamw "${full[@]}" --use_apollo true --apollo_rank 4 --apollo_update_interval 2
		rm -rf adamw r1
	done
}

@test "emulated device dpo/kto resume with the extras: bit-identical on the device, and device checkpoints resume on the CPU" {
	pref_data
	common=(--model_name_or_path "$LLAMA" --max_grad_norm 0.5 --learning_rate 5e-3 --max_steps 6
		--logging_steps 1 --save_steps 3 -q)
	# an optimizer in place of AdamW (its state out of the device, in at the first step)
	resumes model.safetensors adam_mini_optimizer.safetensors both "${common[@]}" --stage dpo \
		--train dpo.zst --finetuning_type full --use_adam_mini true --weight_decay 0.1
	rm -rf a b c d e
	resumes model.safetensors galore_optimizer.safetensors both "${common[@]}" --stage kto \
		--train kto.zst --finetuning_type full --use_galore true --galore_rank 1 \
		--galore_update_interval 2 --weight_decay 0.1
	rm -rf a b c d e
	# BAdam's block moments, the fresh block 0 after the switch at step 3
	resumes model.safetensors badam_optimizer.safetensors one "${common[@]}" --stage kto \
		--train kto.zst --finetuning_type full --use_badam true --badam_switch_interval 2
	rm -rf a b c d
	# LoRA+: the device AdamW's moments, fetched as the checkpoint is written
	resumes adapter_model.safetensors optimizer.safetensors one "${common[@]}" --stage dpo \
		--train dpo.zst --finetuning_type lora --loraplus_lr_ratio 8
}

@test "--device cuda refuses the extras with --stage rm and Muon/Adam-mini/GaLore/APOLLO on Phi-3's fused modules in one line; --device auto trains them on the CPU" {
	sft_data
	ft-cat --encode < "$FIXTURES/pref/rm.jsonl" > rm.zst
	# rm's value head is stepped by the device's AdamW beside the model
	base=(--model_name_or_path "$LLAMA" --train rm.zst --stage rm --output_dir o --max_steps 1)
	for f in "lora --loraplus_lr_ratio 16" "full --use_badam true" "full --use_muon true" \
		 "full --use_adam_mini true" "full --use_galore true" "full --use_apollo true"; do
		run -2 --separate-stderr ft-train "${base[@]}" -q --device cuda --finetuning_type $f
		f=${f#* }
		[[ "$stderr" == "ft-train: ${f% *} with --stage rm runs on the CPU only in ft (use --device cpu)"$'\n'* ]]
	done
	run -0 --separate-stderr ft-train "${base[@]}" --device auto --finetuning_type full --use_apollo true
	[[ "$stderr" == *"--device auto: training on the CPU: --use_apollo with --stage rm runs on the CPU only"* ]]
	[ "$(jq -r .ft.device o/trainer_state.json)" = cpu ]
	# dpo/kto: on the device, under auto too
	ft-cat --encode < "$FIXTURES/pref/dpo.jsonl" > dpo.zst
	run -0 --separate-stderr ft-train --model_name_or_path "$LLAMA" --train dpo.zst --stage dpo --output_dir k \
		--max_steps 1 --device auto --finetuning_type full --use_apollo true
	[[ "$stderr" != *"training on the CPU"* ]]
	[[ "$(jq -r .ft.device k/trainer_state.json)" == "cuda:0 (ft host emulation, "* ]]
	# Phi-3's qkv_proj is three device tensors: these whole-matrix steps
	# cannot run there; refused before anything is bound, and auto picks the CPU
	phi=(--model_name_or_path "$FIXTURES/families/phi3/model" --train train.zst --max_steps 1)
	for f in use_muon use_adam_mini use_galore use_apollo; do
		run -2 --separate-stderr ft-train -q "${phi[@]}" --output_dir p --device cuda --finetuning_type full --$f true
		[ "$stderr" = "ft-train: --$f with Phi-3's fused qkv_proj/gate_up_proj runs on the CPU only in ft (use --device cpu)"$'\n'"Try 'ft-train --help' for more information." ]
	done
	run -0 --separate-stderr ft-train "${phi[@]}" --output_dir pa --device auto --use_muon true
	[[ "$stderr" == *"--device auto: training on the CPU: --use_muon with Phi-3's fused qkv_proj/gate_up_proj runs on the CPU only"* ]]
	[ "$(jq -r .ft.device pa/trainer_state.json)" = cpu ]
}
