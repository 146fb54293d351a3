#!/usr/bin/env bats
# ft-train --stage grpo and --stage ppo --device cuda on the emulated device
# (build/libft_cuda_emu.so, docs/CUDA-TESTING.md "Host emulation") against the
# CPU: the policy's log-probs at the sampling temperature, their entropies,
# the backward pass, the device AdamW and clipping, the reference (LoRA's
# adapters off, or a frozen copy of the base as a second device model),
# the weights copied back for each generation and the checkpoints; for
# PPO also the value head (its dropout, its gradient and AdamW step on the
# device with the model's, TRL's clipping of the first step only).
#
# What must be equal.  The completions are decoded by the device's
# KV-cache decoder (lib/cuda/decoder.h), built before each generation from
# the host model into which the device copies its weights, and drawn on
# the host by the CPU sampler from its logits with the same generator and
# seeds as the CPU run, so the tokens, the rewards (of those tokens) and
# the advantages (of those rewards) come out identical as long as the
# weights and the fp32 logits agree to far better than the sampler's
# resolution (the decoder's agree with the CPU's to ~1e-6; a uniform draw
# would have to fall within ~1e-6 of a cumulative probability boundary to
# pick another token), and
# completions.jsonl is compared byte for byte (PPO writes none: what its
# reward filter reads, every prompt and response, byte for byte, and the
# scores and response lengths logged exactly).
#
# Tolerances.  The device computes in fp32 with the CPU's formulas in
# other summation orders (block-tree reductions, fused GEMMs; see
# ft-train-cuda-emu.bats): a log-prob (|logp| <= log V ~ 5.5) moves by
# ~1e-6 and the entropies likewise; the loss is a masked mean of ratio x
# advantage (|A| <= ~2.5 for groups of 8) plus beta x KL, so it moves by a
# few 1e-6 absolute; AdamW's first steps pass gradient rounding on
# unamplified except where a gradient is near 0.  Each logged number must
# lie within 1e-4 relative or 1e-5 absolute of the CPU's (the absolute
# part for numbers near 0: the loss of zero-mean advantages, the KL of a
# policy that has barely moved, PPO's zero-mean advantages and its
# policykl, a mean of old - new log-probs ~1e-4); observed: worst 1.5e-5 relative (the full
# policy's KL at step 4), 3e-6 for LoRA, on
# numbers above 1e-2.  --top_entropy_quantile is left out: each group
# repeats its prompt, so the entropies at the prompt's last position are
# ties that each path breaks by its own rounding (1e-7, also between rows
# on the CPU alone), and a threshold among ties masks other tokens; the
# entropies themselves are compared (the entropy metric).  A missed temperature (logits / 0.7) changes the
# entropies and KL by > 10%, a wrong index or mask the losses by > 1e-3.
bats_require_minimum_version 1.5.0
load helper
load emu_helper

LLAMA="$FIXTURES/models/tiny-llama"
PEAKY="$FIXTURES/grpo/peaky-llama"

count() {
	printf '%s' "while IFS= read -r l; do c=\${l#*\\\"completion\\\":\\\"}; c=\${c%%\\\"*}; n=0; for t in \$c; do [ \"\$t\" = $1 ] && n=\$((n+1)); done; echo \$n; done"
}

# g DEVICE OUT [flags]: 4 GRPO steps on the peaky model, rewarded for its
# frequent token 221 (so the groups differ in reward from the first step:
# with all advantages 0 the first gradient would be rounding noise, which
# AdamW's first step turns into whole lr-sized updates), completions logged
g() {
	local dev=$1 out=$2
	shift 2
	ft-train -q --stage grpo --model_name_or_path "$PEAKY" --train p8.zst --output_dir "$out" --device "$dev" \
		--reward_funcs "c221=$(count 221)" --max_completion_length 6 --max_steps 4 --logging_steps 1 \
		--learning_rate 1e-2 --seed 5 --log_completions true "$@"
}

# every number of every log line but the clock's (the loss is rounded to
# 4 decimals: one step of 1e-4 is allowed on it)
gnums() { jq -r 'del(.elapsed_time, .remaining_time, .throughput) | to_entries[] |
		select(.value | type == "number") | "\(.key) \(.value)"' "$1"; }

# both A B: the same keys and completions; numbers within 1e-4 relative or 1e-5 absolute
both() {
	cmp "$1/completions.jsonl" "$2/completions.jsonl"
	both_logs "$1" "$2"
}

# both_logs A B: the trainer logs alone (as both)
both_logs() {
	[ "$(gnums "$1/trainer_log.jsonl" | wc -l)" -gt 10 ]
	paste -d' ' <(gnums "$1/trainer_log.jsonl") <(gnums "$2/trainer_log.jsonl") | awk '
		$1 != $3 { print "# key " $1 " against " $3; bad = 1 }
		{ d = $2 - $4; if (d < 0) d = -d; m = $2 < 0 ? -$2 : $2
		  if (d > ($1 == "loss" ? 1.01e-4 : 1e-5) && d > 1e-4 * m) { print "# " $1 ": " $2 " against " $4; bad = 1 }
		  if (m > 1e-2 && d / m > w) w = d / m; n++ }
		END { printf "# %d numbers, worst relative difference %.3g on those above 1e-2\n", n, w
		      exit bad || n == 0 }' >&3
}

same() {
	g cpu cpu "$@"
	g cuda dev "$@"
	both cpu dev
	rm -rf cpu dev
}

@test "emulated device grpo: lora (temperature, KL against the adapters off, two iterations, accumulation), full against a frozen base on the device" {
	ft-cat --encode < "$FIXTURES/grpo/prompts.jsonl" > p8.zst
	same --temperature 0.7 --beta 0.04 --num_iterations 2 --max_grad_norm 0.5
	same --gradient_accumulation_steps 2 --beta 0.04 --lora_target all --loss_type grpo
	same --finetuning_type full --beta 0.04 --temperature 1.3
	same --beta 0.04 --use_dora true
	same --beta 0.04 --use_dora true --lora_dropout 0.1 --lora_target all
	# a loss that must move: the device's KL is that of a policy that trained
	g cuda k --beta 0.04 --temperature 0.7 --max_steps 4
	[ "$(jq -r '.kl > 0' k/trainer_log.jsonl | tail -1)" = true ]
}

# NEFTune (docs/GRPO.md): TRL noises the sampling, the old, LoRA's
# reference and the training passes; the device adds the CPU's host draws
# (the decoder's included), so the completions stay byte-identical and
# the tolerance argument above holds: the kl, now dominated by the two
# passes' independent noise (8 to 160 here: the peaky model's logits move
# far with alpha 1; TRL's own run gives 240 and 2100 with alpha 5), is a
# mean of exp(x) - x - 1 (x = ref - logp) whose relative error is about the
# log-probs' ~1e-6 difference, well inside 1e-4 (observed: 4.1e-6 for
# LoRA, 2.9e-6 full).
@test "emulated device grpo: NEFTune in the sampling and every log-prob pass as the CPU; ppo ignores it with the note on both" {
	ft-cat --encode < "$FIXTURES/grpo/prompts.jsonl" > p8.zst
	same --beta 0.04 --num_iterations 2 --neftune_noise_alpha 1
	same --finetuning_type full --beta 0.04 --neftune_noise_alpha 1
	# the noise is on in the sampling: not the noise-free run's completions
	g cuda n --beta 0.04 --neftune_noise_alpha 1
	g cuda z --beta 0.04
	! cmp -s n/completions.jsonl z/completions.jsonl || false
	# resumed inside a generation batch (step 3 of 2 x 2): the noise streams continue, bit for bit
	args=(--beta 0.04 --num_iterations 2 --save_steps 3 --max_steps 6 --neftune_noise_alpha 1)
	g cuda U "${args[@]}"
	g cuda K "${args[@]}"
	rm -rf K/checkpoint-6 K/adapter_model.safetensors
	g cuda K "${args[@]}" --resume_from_checkpoint K/checkpoint-3
	cmp U/trainer_log.jsonl K/trainer_log.jsonl
	cmp U/completions.jsonl K/completions.jsonl
	cmp U/adapter_model.safetensors K/adapter_model.safetensors
	ft-cat --encode < "$FIXTURES/ppo/prompts.jsonl" > ppo.zst
	for d in cpu cuda; do   # -q -v: the notes back
		run --separate-stderr p $d $d-n -v --neftune_noise_alpha 5
		assert_success
		[[ "$stderr" == *"note: --neftune_noise_alpha is ignored by --stage ppo"* ]]
		p $d $d-z
		cmp $d-n.seen $d-z.seen
		diff <(gnums $d-n/trainer_log.jsonl) <(gnums $d-z/trainer_log.jsonl)
	done
}

@test "emulated device grpo: resumed from a checkpoint inside a generation batch, bit for bit; the CPU run within tolerance" {
	ft-cat --encode < "$FIXTURES/grpo/prompts.jsonl" > p8.zst
	args=(--beta 0.04 --num_iterations 2 --save_steps 3 --max_steps 6 --lora_dropout 0.1)
	g cuda U "${args[@]}"
	g cuda K "${args[@]}" --max_steps 6 --save_steps 3
	rm -rf K/checkpoint-6 K/adapter_model.safetensors
	# resume from step 3 (one iteration of the second batch done)
	g cuda K "${args[@]}" --resume_from_checkpoint K/checkpoint-3
	cmp U/trainer_log.jsonl K/trainer_log.jsonl
	cmp U/completions.jsonl K/completions.jsonl
	cmp U/adapter_model.safetensors K/adapter_model.safetensors
	cmp U/checkpoint-6/optimizer.safetensors K/checkpoint-6/optimizer.safetensors
	# the CPU's own run within tolerance, the same completions
	g cpu C "${args[@]}"
	both C U
	# and the device's checkpoint-3 resumed on the CPU: within tolerance of it
	mkdir R && cp -r U/checkpoint-3 R/ && cp U/trainer_log.jsonl U/completions.jsonl R/
	g cpu R "${args[@]}" --resume_from_checkpoint R/checkpoint-3
	[ "$(wc -l < R/trainer_log.jsonl)" -eq 6 ]
	both C R
}

# scale_logged DIR: fp16's loss scale after each step on its log line (4
# steps), as sft's; DIR/checkpoint-2 saved step 2's
scale_logged() {
	[ "$(jq -s 'map(select(.loss) | has("loss_scale")) | length == 4 and all' "$1/trainer_log.jsonl")" = true ]
	[ "$(jq 'select(.current_steps == 2 and .loss) | .loss_scale' "$1/trainer_log.jsonl")" = \
	  "$(jq .scale "$1/checkpoint-2/scaler.json")" ]
}

@test "emulated device grpo: --fp16 (dynamic loss scale in checkpoints), --device auto picks the device" {
	ft-cat --encode < "$FIXTURES/grpo/prompts.jsonl" > p8.zst
	run --separate-stderr g cuda h --fp16 --save_steps 2 --beta 0.04
	assert_success
	[ -f h/checkpoint-2/scaler.json ] && [ -f h/checkpoint-4/optimizer.safetensors ]
	# GradScaler's start of 65536 halves on overflowing steps (skipped), as torch's
	[ "$(jq -r '.scale <= 65536 and .scale >= 1024' h/checkpoint-2/scaler.json)" = true ]
	[ "$(jq -r '.loss | type' h/trainer_log.jsonl | sort -u)" = number ]
	scale_logged h
	run --separate-stderr g auto a -v   # -q -v: the notes back
	assert_success
	[[ "$stderr" == *"training on cuda:0 (ft host emulation"* ]]
	[ "$(grep -c "rollouts decoded on cuda:0 (ft host emulation.*over the policy.s device weights; device memory planned .* beside the training" <<< "$stderr")" -eq 1 ]
	# the CPU's run (which --device auto would be without the backend) samples the same completions
	g cpu c
	cmp a/completions.jsonl c/completions.jsonl
}

# p DEVICE OUT [flags]: 4 PPO steps with sampling on the tiny Llama, a
# reward filter counting token ids below 64, two prompts per mini-batch;
# what the filter reads (the prompts and sampled responses) in OUT.seen
p() {
	local dev=$1 out=$2
	shift 2
	ft-train -q --stage ppo --model_name_or_path "$LLAMA" --train ppo.zst --output_dir "$out" --device "$dev" \
		--reward_model_type api --reward_model "tee -a $BATS_TEST_TMPDIR/$out.seen | $LOW" --do_sample true \
		--temperature 1.0 --top_p 1.0 --max_new_tokens 6 --max_steps 4 --logging_steps 1 --learning_rate 3e-3 \
		--seed 2 "$@"
}
LOW="awk -F'\"response\":\"' '{ n = split(\$2, t, /[ \"]/); c = 0; for (i = 1; i <= n; i++) c += (t[i] != \"\" && t[i] + 0 < 64); print c }'"

# the same responses: their scores and lengths exactly
same_scores() {
	for f in "$1" "$2"; do jq -c '[.reward, ."ppo/mean_scores", ."ppo/std_scores", ."tokens/responses_len_mean"]' \
		$f/trainer_log.jsonl > $f.scores; done
	cmp "$1.scores" "$2.scores"
}

psame() {
	p cpu cpu "$@"
	p cuda dev "$@"
	[ "$(wc -l < cpu.seen)" -ge 8 ]
	cmp cpu.seen dev.seen
	same_scores cpu dev
	both_logs cpu dev
	rm -rf cpu dev cpu.seen dev.seen
}

@test "emulated device ppo: lora (value-head dropout, first-step clipping, accumulation) and full against a frozen base on the device" {
	ft-cat --encode < "$FIXTURES/ppo/prompts.jsonl" > ppo.zst
	psame --ppo_buffer_size 2 --max_grad_norm 0.5
	psame --gradient_accumulation_steps 2 --lora_target all --ppo_epochs 2
	psame --finetuning_type full --ppo_buffer_size 2
	psame --use_dora true --ppo_buffer_size 2
	psame --use_dora true --lora_dropout 0.1 --ppo_buffer_size 2
}

# OFT: the rollouts decode through the trained rotations (unmerged: the
# CPU decoder rotates each module's input as training does, the device's
# decoding model computes each rotation once per generation and its kept
# decoder gets the new oft_R before the next).  GRPO at 3e-3, not the
# file's 1e-2: Adam's first step divides by sqrt(v) + eps, so a gradient
# near eps (the group-normalised advantages nearly cancel on some
# elements) moves by up to 3e-4 of lr between the CPU's and the device's
# sums, which at 1e-2 changed one draw of the second generation on this
# fixture; at 3e-3 every draw is the same (measured), as for LoRA.
@test "emulated device grpo and ppo with OFT: the CPU's completions, decoded through the trained rotations" {
	ft-cat --encode < "$FIXTURES/grpo/prompts.jsonl" > p8.zst
	ft-cat --encode < "$FIXTURES/ppo/prompts.jsonl" > ppo.zst
	same --finetuning_type oft --learning_rate 3e-3
	psame --finetuning_type oft --ppo_buffer_size 2
}

@test "emulated device ppo: resumed from a checkpoint, bit for bit (adapter, value head, optimizer state)" {
	ft-cat --encode < "$FIXTURES/ppo/prompts.jsonl" > ppo.zst
	args=(--ppo_buffer_size 2 --save_steps 2 --lora_dropout 0.1)
	p cuda U "${args[@]}"
	p cuda K "${args[@]}"
	rm -rf K/checkpoint-4 K/adapter_model.safetensors K/value_head.safetensors
	p cuda K "${args[@]}" --resume_from_checkpoint K/checkpoint-2
	cmp U/trainer_log.jsonl K/trainer_log.jsonl
	cmp U/adapter_model.safetensors K/adapter_model.safetensors
	cmp U/value_head.safetensors K/value_head.safetensors
	cmp U/checkpoint-4/optimizer.safetensors K/checkpoint-4/optimizer.safetensors
	# and the CPU's own run within tolerance, the same responses
	p cpu C "${args[@]}"
	cmp C.seen U.seen
	same_scores C U
	both_logs C U
	# the device's checkpoint-2 resumed on the CPU: steps 3 and 4 sample
	# the CPU run's responses, and the whole log (two device steps, two
	# CPU ones) lies within tolerance of it
	mkdir R && cp -r U/checkpoint-2 R/ && cp U/trainer_log.jsonl R/
	p cpu R "${args[@]}" --resume_from_checkpoint R/checkpoint-2
	[ "$(wc -l < R.seen)" -gt 0 ] && [ $(($(wc -l < R.seen) * 2)) -eq "$(wc -l < C.seen)" ]
	cmp R.seen <(tail -n "$(wc -l < R.seen)" C.seen)
	[ "$(wc -l < R/trainer_log.jsonl)" -eq 4 ]
	same_scores C R
	both_logs C R
	[ -f R/value_head.safetensors ] && [ -f R/checkpoint-4/optimizer.safetensors ]
}

@test "emulated device ppo: --device auto picks the device; --fp16 keeps its loss scale in checkpoints" {
	ft-cat --encode < "$FIXTURES/ppo/prompts.jsonl" > ppo.zst
	run --separate-stderr p auto a -v   # -q -v: the notes back
	assert_success
	[[ "$stderr" == *"training on cuda:0 (ft host emulation"* ]]
	[ "$(grep -c "rollouts decoded on cuda:0 (ft host emulation.*over the policy.s device weights; device memory planned .* beside the training" <<< "$stderr")" -eq 1 ]
	p cpu c
	cmp a.seen c.seen
	same_scores a c
	run --separate-stderr p cuda h --fp16 --save_steps 2
	assert_success
	[ -f h/checkpoint-2/scaler.json ] && [ -f h/checkpoint-4/optimizer.safetensors ]
	[ "$(jq -r '.scale <= 65536 and .scale >= 1' h/checkpoint-2/scaler.json)" = true ]
	[ "$(jq -r '.loss | type' h/trainer_log.jsonl | sort -u)" = number ]
	scale_logged h
}

# The rollouts' decoder is a second device model: FT_EMU_MEM (the
# emulated device's bytes) holds the training's plan and the 768 MiB
# context margin that both plans keep (~801 MiB for either tiny job) but not
# the decoder's 0.03 GiB on top (~834 MiB): the first generation refuses
# with the plan, before any step, rather than decoding on the CPU, naming
# the stage's own settings to lower (not ft-generate's flags).  The
# plans are sizes, not arithmetic, so the window does not move with BLAS.
@test "emulated device grpo and ppo: a rollouts' decoder the device cannot hold fails the run with its plan (no CPU fallback)" {
	ft-cat --encode < "$FIXTURES/grpo/prompts.jsonl" > p8.zst
	ft-cat --encode < "$FIXTURES/ppo/prompts.jsonl" > ppo.zst
	FT_EMU_MEM=$((816 << 20)) run -1 --separate-stderr g cuda m
	[[ "$stderr" == "ft-train: --stage grpo: the rollouts' decoder on cuda:0 (ft host emulation"*"fp32: the GPU has "*" but generation needs "*" for 8 sequences of up to "*" tokens: "*"lower the generation batch (per_device_train_batch_size x gradient_accumulation_steps) or --"* ]]
	[[ "$stderr" != *"eval_batch_size"* ]]
	[ "$(wc -l <<< "$stderr")" -eq 1 ]
	[ ! -s m/completions.jsonl ]
	FT_EMU_MEM=$((816 << 20)) run -1 --separate-stderr p cuda n
	[[ "$stderr" == "ft-train: --stage ppo: the rollouts' decoder on cuda:0 (ft host emulation"*"but generation needs "*"lower the rollout batch (per_device_train_batch_size x gradient_accumulation_steps x --ppo_buffer_size) or --"* ]]
	[[ "$stderr" != *"eval_batch_size"* ]]
	[ "$(wc -l <<< "$stderr")" -eq 1 ]
	[ ! -e n.seen ]
}
