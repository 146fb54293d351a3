#!/usr/bin/env bats
# ft-train and ft-generate --device cuda on the emulated device: FT_CUDA_LIB
# loads build/libft_cuda_emu.so, the real lib/cuda sources compiled for the
# host (tests/emu/emu.h, docs/CUDA-TESTING.md "Host emulation"), so every kernel,
# GEMM layout, the device AdamW, clipping, loss scaling and the checkpoint
# copies run; only timing, TF32 and memory limits are not the GPU's.
#
# Tolerances.  Both paths compute in fp32 with the same formulas
# (lib/model/kernels.h), in different summation orders: the device's
# block-tree reductions and fused GEMMs (q|k|v, gate|up, LoRA A rows
# appended) against the CPU's loops and separate products.  One reordered
# fp32 sum of n terms moves by at most ~n * 6e-8 relative and typically
# sqrt(n) * 6e-8 (n <= 256 here: ~1e-6); AdamW's g / sqrt(v) passes that
# on unamplified except where g is near 0, and 3-4 steps compound it a
# few times.  Observed: <= 4e-6 relative in every loss, grad norm and eval
# loss; the bound is 1e-4, 25 times that and still far below what a
# wrong index, mask or missed term does (>= 1e-3 on these losses).
# --bf16 / --fp16 on the device against the CPU's fp32: one rounding of a
# matmul operand is 2^-9 (bf16) or 2^-12 (fp16) relative, two layers
# and the backward compound a few: losses within 1e-2 (bf16) and 2e-3
# (fp16), grad norms 5e-2 and 1e-2.  Resume, the thread order and the
# block spread are compared bit for bit (the emulation is deterministic).
load helper
load emu_helper

LLAMA="$FIXTURES/models/tiny-llama"
QWEN="$FIXTURES/models/tiny-qwen2"
QWEN3="$FIXTURES/families/qwen3/model"
GQA4="$FIXTURES/models/tiny-llama-gqa4"
PREF="$FIXTURES/pref"
GEMMA256="$FIXTURES/models/tiny-gemma2-hd256"

# rows of 30 to 90 tokens (three flash-attention tiles, T off the tile)
long_data() {
	ft-cat --encode < "$FIXTURES/emu/tokens.jsonl" > tok.zst
	ft-pack -q --cutoff_len 96 --per_device_train_batch_size 2 --pad_to_multiple_of 1 \
		--val_size 4 --seed 1 -o long.zst --val_output longval.zst tok.zst
}

@test "emulated device sft: lora (dropout), freeze, full, qwen2 (biases), qwen3 (q_norm/k_norm) with accumulation, clipping, warmup, eval" {
	sft_data
	common=(--train train.zst --val val.zst --eval_steps 2 --gradient_accumulation_steps 2
		--max_grad_norm 0.5 --lr_scheduler_type cosine --warmup_steps 2)
	same_run "$LLAMA" 1e-4 "${common[@]}" --finetuning_type lora --lora_dropout 0.1
	same_run "$LLAMA" 1e-4 "${common[@]}" --finetuning_type freeze
	same_run "$LLAMA" 1e-4 "${common[@]}" --finetuning_type full
	same_run "$QWEN" 1e-4 "${common[@]}" --finetuning_type lora --lora_target all
	same_run "$QWEN" 1e-4 --train train.zst --finetuning_type full
	same_run "$QWEN3" 1e-4 --train train.zst --finetuning_type full
}

@test "emulated device QLoRA: 4-bit NF4 (double quantization), FP4 and 8-bit bases, with eval and checkpointing" {
	sft_data
	# the device dequantizes bnb's codes bit-equal to the CPU (test_quant_emu),
	# so the runs differ only in summation order: 1e-4 as fp32 above.  8-bit
	# trains through the dequantized weight; its eval is LLM.int8(), whose
	# integer product is exact on both.
	common=(--train train.zst --val val.zst --eval_steps 2 --finetuning_type lora --lora_target all)
	same_run "$LLAMA" 1e-4 "${common[@]}" --quantization_bit 4
	same_run "$LLAMA" 1e-4 "${common[@]}" --quantization_bit 4 --quantization_type fp4 --double_quantization false
	same_run "$QWEN" 1e-4 "${common[@]}" --quantization_bit 8 --gradient_checkpointing
}

@test "emulated device, rows over the attention tile, 4 query heads per kv head: full + gradient checkpointing, neat packing, pt" {
	long_data
	same_run "$GQA4" 1e-4 --train long.zst --val longval.zst --eval_steps 2 --finetuning_type full \
		--gradient_checkpointing
	ft-pack -q --cutoff_len 96 --per_device_train_batch_size 2 --neat_packing --seed 1 -o neat.zst tok.zst
	same_run "$GQA4" 1e-4 --train neat.zst --finetuning_type lora --lora_target all
	ft-cat --encode < "$FIXTURES/emu/pt_tokens.jsonl" |
		ft-pack -q --cutoff_len 80 --per_device_train_batch_size 2 -o pt.zst -
	same_run "$GQA4" 1e-4 --stage pt --train pt.zst --finetuning_type lora
}

@test "emulated device resume: bit-identical to the uninterrupted device run (lora with dropout, full, full --fp16)" {
	sft_data
	for ft in lora full "full --fp16"; do
		args=(--model_name_or_path "$LLAMA" --train train.zst --device cuda --finetuning_type $ft
		      --lora_dropout 0.1 --learning_rate 5e-3 --max_steps 6 --gradient_accumulation_steps 2
		      --max_grad_norm 0.5 --lr_scheduler_type cosine --warmup_steps 2 --logging_steps 1
		      --save_steps 3 -q)
		ft-train --output_dir a "${args[@]}"
		mkdir b && cp -r a/checkpoint-3 b/ && head -n 3 a/trainer_log.jsonl > b/trainer_log.jsonl
		ft-train --output_dir b "${args[@]}" --resume_from_checkpoint true
		diff <(steady a/trainer_log.jsonl) <(steady b/trainer_log.jsonl)
		for f in adapter_model.safetensors model.safetensors; do
			[ ! -f a/$f ] || cmp a/$f b/$f
		done
		# the checkpoint written after the resume: moments copied out of the device
		cmp a/checkpoint-6/optimizer.safetensors b/checkpoint-6/optimizer.safetensors
		rm -rf a b
	done
}

@test "emulated device --fp16 resume after an overflow: the loss scale and its growth tracker come back (scaler.json)" {
	sft_data
	# --learning_rate 1.2: the first update makes step 2's gradients overflow
	# fp16 at the initial scale 65536 (skipped, scale halved), and the later
	# steps stay finite at 32768; without the scaler in the checkpoint the
	# resumed run logs 65536 and its tracker lags by the steps before it.
	# Where such a wild trajectory first overflows is chaotic: lr 1 did
	# this while q|k|v and attention were fp32; with them in half, lr 1
	# never overflows and 1.2 (like 1.3) overflows at step 2 alone.
	args=(--model_name_or_path "$LLAMA" --train train.zst --device cuda --finetuning_type full
	      --fp16 --learning_rate 1.2 --max_steps 6 --gradient_accumulation_steps 2
	      --logging_steps 1 --save_steps 3 -q)
	ft-train --output_dir a "${args[@]}"
	# the skipped step: no update (grad_norm inf, written null), scale halved
	[ "$(jq -sc 'map(select(.loss) | [.current_steps, .grad_norm == null, .loss_scale])' a/trainer_log.jsonl)" \
		= "[[1,false,65536],[2,true,32768],[3,false,32768],[4,false,32768],[5,false,32768],[6,false,32768]]" ]
	[ "$(jq -c '[.scale, ._growth_tracker]' a/checkpoint-3/scaler.json)" = "[32768,1]" ]
	mkdir b && cp -r a/checkpoint-3 b/ && head -n 3 a/trainer_log.jsonl > b/trainer_log.jsonl
	ft-train --output_dir b "${args[@]}" --resume_from_checkpoint true
	diff <(steady a/trainer_log.jsonl) <(steady b/trainer_log.jsonl)
	cmp a/model.safetensors b/model.safetensors
	cmp a/checkpoint-6/optimizer.safetensors b/checkpoint-6/optimizer.safetensors
	cmp a/checkpoint-6/scaler.json b/checkpoint-6/scaler.json
	[ "$(jq -c '[.scale, ._growth_tracker]' a/checkpoint-6/scaler.json)" = "[32768,4]" ]
	# growth: a tracker one step short of 2000 doubles the scale at step 4
	mkdir c && cp -r a/checkpoint-3 c/ && head -n 3 a/trainer_log.jsonl > c/trainer_log.jsonl
	jq '._growth_tracker = 1999' a/checkpoint-3/scaler.json > c/checkpoint-3/scaler.json
	ft-train --output_dir c "${args[@]}" --resume_from_checkpoint true
	[ "$(jq -c 'select(.current_steps == 4 and .loss) | .loss_scale' c/trainer_log.jsonl)" = 65536 ]
	[ "$(jq -c '[.scale, ._growth_tracker]' c/checkpoint-6/scaler.json)" = "[65536,2]" ]
	# a damaged one is refused, naming the file
	jq '.scale = 0' a/checkpoint-3/scaler.json > b/checkpoint-3/scaler.json
	run -1 --separate-stderr ft-train --output_dir b "${args[@]}" --resume_from_checkpoint b/checkpoint-3
	[[ "$stderr" == *"b/checkpoint-3/scaler.json: loss scale 0 (a finite number > 0)"* ]]
	# the preference stages' policy scaler too (orpo: step 2 skipped as
	# well, at lr 0.6 with the half q|k|v, as lr 1 did before)
	ft-cat --encode < "$PREF/dpo.jsonl" > dpo.zst
	args=(--model_name_or_path "$LLAMA" --train dpo.zst --device cuda --stage dpo --pref_loss orpo
	      --finetuning_type full --fp16 --learning_rate 0.6 --max_steps 6 --logging_steps 1
	      --save_steps 3 -q)
	ft-train --output_dir p "${args[@]}"
	[ "$(jq -c 'select(.current_steps == 2 and .loss) | .grad_norm' p/trainer_log.jsonl)" = null ]
	[ "$(jq -c .scale p/checkpoint-3/scaler.json)" = 32768 ]
	mkdir q && cp -r p/checkpoint-3 q/ && head -n 3 p/trainer_log.jsonl > q/trainer_log.jsonl
	ft-train --output_dir q "${args[@]}" --resume_from_checkpoint true
	diff <(steady p/trainer_log.jsonl) <(steady q/trainer_log.jsonl)
	cmp p/model.safetensors q/model.safetensors
	cmp p/checkpoint-6/scaler.json q/checkpoint-6/scaler.json
}

@test "emulated device --bf16 and --fp16: half operands against the CPU's fp32, within their rounding" {
	sft_data
	tr cpu cpu "$LLAMA" --train train.zst --finetuning_type lora
	for p in bf16 fp16; do
		tr cuda $p "$LLAMA" --train train.zst --finetuning_type lora --$p
		[[ "$(jq -r .ft.device $p/trainer_state.json)" == *", $p" ]]
	done
	half_close cpu/trainer_log.jsonl bf16/trainer_log.jsonl fp16/trainer_log.jsonl
}

# --fp8 (lib/cuda/fp8.cu) against the CPU's --fp8 (lib/model/model_fp8.c).
# fp32: both cast with the same functions (util/dtype_inline.h) and
# multiply the same fp8-valued floats, every product exact in fp32, so
# they differ only in sum order, as any fp32 pair here; the one new effect
# is an element whose reordered input lands on the other side of an fp8
# rounding boundary, one fp8 ulp (2^-4 relative) of one of thousands of
# terms: at step 0, before AdamW can amplify anything, within 1e-5 (loss
# and grad norm; measured 1e-7), every step within the file's 1e-4.  fp8
# off moves step 0's grad norm by 4e-3: the bounds tell fp8 from plain,
# and e4m3 for the output gradient (a mutation) by 4e-3.  --bf16 and
# --fp16 against the CPU's fp32: a half input's amax is the fp32 one
# rounded, so its scale differs and every element's fp8 rounding is drawn
# anew: the two operands then differ by fp8's own quantization noise, not
# by the half rounding (torch on 4096 normal values: 1.3e-2 relative for a
# bf16-rounded input, 1.7e-3 for fp16, 8 times the rounding itself), so
# both modes get bf16's bounds above, losses 1e-2 and grad norms 5e-2
# (measured: 4e-4 and 2.4e-2).
fp8_close() {
	paste <(jq -r 'select(.loss) | "\(.loss) \(.grad_norm)"' "$1") \
	      <(jq -r 'select(.loss) | "\(.loss) \(.grad_norm)"' "$2") | awk -v t0="$3" -v tl="$4" -v tg="$5" '
		function rel(a, b) { d = (a - b) / a; return d < 0 ? -d : d }
		{ b0 = NR == 1 ? t0 : tl; bg = NR == 1 ? t0 : tg
		  if (rel($1, $3) > w) w = rel($1, $3); if (rel($2, $4) > w) w = rel($2, $4)
		  if (rel($1, $3) > b0 || rel($2, $4) > bg) bad = 1; n++ }
		END { printf "# %d steps, worst relative difference %.3g\n", n, w; exit !(n == 4 && !bad) }' >&3
}

@test "emulated device --fp8: full and LoRA with gradient checkpointing, fp32, --bf16 and --fp16; freeze, Qwen2's biases, Gemma 2; against the CPU's --fp8" {
	sft_data
	for ft in full lora; do
		tr cpu cpu "$LLAMA" --train train.zst --finetuning_type $ft --fp8 --gradient_checkpointing
		tr cuda dev "$LLAMA" --train train.zst --finetuning_type $ft --fp8 --gradient_checkpointing
		[[ "$(jq -r .ft.device dev/trainer_state.json)" == "cuda:0 (ft host emulation, "*", fp32" ]]
		fp8_close cpu/trainer_log.jsonl dev/trainer_log.jsonl 1e-5 1e-4 1e-4
		for p in bf16 fp16; do
			tr cuda $p "$LLAMA" --train train.zst --finetuning_type $ft --fp8 --gradient_checkpointing --$p
			[[ "$(jq -r .ft.device $p/trainer_state.json)" == *", $p" ]]
			fp8_close cpu/trainer_log.jsonl $p/trainer_log.jsonl 1e-2 1e-2 5e-2
			! diff -q <(nums dev/trainer_log.jsonl) <(nums $p/trainer_log.jsonl) || false
		done
		rm -rf cpu dev bf16 fp16
	done
	# freeze (the frozen layers' dx alone); Qwen2: q/k/v biases added in
	# full precision after the fp8 product; Gemma 2 (its layer, gemma.cu)
	for m in "$LLAMA --finetuning_type freeze --freeze_trainable_layers 1" "$QWEN --finetuning_type full" \
		 "$FIXTURES/families/gemma2/model --finetuning_type full --allow_tokenizer_mismatch"; do
		tr cpu cpu $m --train train.zst --fp8
		tr cuda dev $m --train train.zst --fp8
		fp8_close cpu/trainer_log.jsonl dev/trainer_log.jsonl 1e-5 1e-4 1e-4
		rm -rf cpu dev
	done
	# the same run without fp8 is outside the fp32 bounds: fp8 was on
	tr cpu cpu "$LLAMA" --train train.zst --finetuning_type full --fp8 --gradient_checkpointing
	tr cuda plain "$LLAMA" --train train.zst --finetuning_type full --gradient_checkpointing
	! fp8_close cpu/trainer_log.jsonl plain/trainer_log.jsonl 1e-5 1e-4 1e-4 || false
}

@test "emulated device --fp8 resume: bit-identical to the uninterrupted device run (full, gradient checkpointing; fp32 and --fp16)" {
	sft_data
	WEIGHTS=model.safetensors resume_same --model_name_or_path "$LLAMA" --train train.zst --finetuning_type full \
		--fp8 --gradient_checkpointing
}

# Gemma's head_dim 256 in fp32 on a card with less shared memory per
# block than an A100 (FT_EMU_SMEM_OPTIN sets the emulated opt-in bound;
# docs/CUDA-ATTENTION.md "Which attention kernel runs").  Bytes per block at hd 256
# (fa_smem_*, dynamic; the emulation knows no static): 32-row tiles
# forward 102912, dK/dV 140032, dQ 135808; 16-row tiles 50432, 67968,
# 66880.  At sm_86 / sm_89's 101376 every pass runs the 16-row kernels
# (FT_CUDA_CHECK_ATTN=fp32-16 holds each call of each pass to them), at
# 110592 the forward keeps its 32-row tiles and the backward falls back,
# at 65536 dK/dV fits neither.  Rows of 30 to 64 tokens (up to four
# 16-row tiles, T off the tile) so the forward's online softmax really
# folds more key tiles than on 32-row ones.  Tolerance: the 16-row
# kernels do each row's arithmetic in the 32-row ones' order except the
# forward's one extra rescale per 16 keys where a row's maximum rises
# (a few ulp each; test_flash_emu.cc: their backward equals the 32-row
# one from the same O and lse), so the runs differ from the CPU as the
# fp32 device does anyway, by summation order: this file's 1e-4.
# Measured worst (full, 4 steps with eval): 1.5e-5, a grad norm; the
# 32-row kernels at the default bound: 1.1e-5 (Gemma's caps make these
# larger than llama's 4e-6).
@test "emulated device with 99 KiB of shared memory (sm_86): Gemma's head_dim 256 in fp32 falls back per pass to the 16-row CUDA-core attention, within 1e-4 of the CPU" {
	ft-cat --encode < "$FIXTURES/emu/tokens.jsonl" > tok.zst
	ft-pack -q --cutoff_len 64 --per_device_train_batch_size 2 --pad_to_multiple_of 1 \
		--val_size 4 --seed 1 -o g.zst --val_output gval.zst tok.zst
	FT_EMU_SMEM_OPTIN=101376 FT_CUDA_CHECK_ATTN=fp32-16 same_run "$GEMMA256" 1e-4 \
		--train g.zst --val gval.zst --eval_steps 2 --finetuning_type full
	FT_EMU_SMEM_OPTIN=101376 FT_CUDA_CHECK_ATTN=fp32-16 same_run "$GEMMA256" 1e-4 \
		--train g.zst --finetuning_type lora --gradient_checkpointing
	# forward on 32-row tiles, the backward on 16-row ones
	FT_EMU_SMEM_OPTIN=110592 same_run "$GEMMA256" 1e-4 --train g.zst --finetuning_type full
	# which passes fell back: the first pass off the wanted family names itself
	FT_EMU_SMEM_OPTIN=101376 FT_CUDA_CHECK_ATTN=fp32 run -1 --separate-stderr tr cuda a "$GEMMA256" --train g.zst
	[[ "$stderr" == *"FT_CUDA_CHECK_ATTN=fp32, but the 16-row fp32 (CUDA-core) kernels run: flash attention forward on 32-row tiles needs 102912 bytes of shared memory per block, the device allows 101376" ]]
	FT_EMU_SMEM_OPTIN=110592 FT_CUDA_CHECK_ATTN=fp32 run -1 --separate-stderr tr cuda b "$GEMMA256" --train g.zst
	[[ "$stderr" == *"FT_CUDA_CHECK_ATTN=fp32, but the 16-row fp32 (CUDA-core) kernels run: flash attention dK/dV on 32-row tiles needs 140032 bytes of shared memory per block, the device allows 110592" ]]
	FT_EMU_SMEM_OPTIN=110592 FT_CUDA_CHECK_ATTN=fp32-16 run -1 --separate-stderr tr cuda c "$GEMMA256" --train g.zst
	[[ "$stderr" == *"FT_CUDA_CHECK_ATTN=fp32-16, but the fp32 (CUDA-core) kernels run" ]]
	FT_EMU_SMEM_OPTIN=65536 run -1 --separate-stderr tr cuda d "$GEMMA256" --train g.zst
	[[ "$stderr" == *"flash attention dK/dV: head_dim 256 needs 140032 bytes of shared memory per block on 32-row tiles, 67968 on 16-row tiles, the device allows 65536" ]]
	# the default bound (an H100's 227 KiB): every pass on 32-row tiles
	FT_CUDA_CHECK_ATTN=fp32 tr cuda e "$GEMMA256" --train g.zst
}

@test "emulated device rm, dpo (reference: the adapters disabled), orpo full, kto: the CPU's numbers within 1e-4" {
	for s in dpo rm kto; do ft-cat --encode < "$PREF/$s.jsonl" > $s.zst; done
	same_run "$LLAMA" 1e-4 --stage dpo --train dpo.zst --val dpo.zst --eval_steps 2 \
		--adapter_name_or_path "$PREF/llama-lora"
	same_run "$LLAMA" 1e-4 --stage dpo --pref_loss orpo --finetuning_type full --train dpo.zst
	same_run "$LLAMA" 1e-4 --stage kto --train kto.zst --adapter_name_or_path "$PREF/llama-lora"
	same_run "$LLAMA" 1e-4 --stage rm --train rm.zst --val rm.zst --eval_steps 2
}

@test "emulated device --fp16 dpo and kto: the loss scale on every training log line, as sft's (none at evaluations, none in fp32)" {
	for s in dpo kto; do ft-cat --encode < "$PREF/$s.jsonl" > $s.zst; done
	for s in dpo kto; do
		tr cuda $s "$LLAMA" --stage $s --train $s.zst --val $s.zst --eval_steps 2 --fp16 \
			--adapter_name_or_path "$PREF/llama-lora"
		[ "$(jq -sc 'map(select(.loss) | .loss_scale)' $s/trainer_log.jsonl)" = "[65536,65536,65536,65536]" ]
		[ "$(jq -sc 'map(select(.eval_loss) | has("loss_scale"))' $s/trainer_log.jsonl)" = "[false,false]" ]
		# the preference metrics are still there, before it
		jq -se 'map(select(.loss) | has("rewards/chosen")) | length == 4 and all' $s/trainer_log.jsonl
	done
	tr cuda f32 "$LLAMA" --stage dpo --train dpo.zst --adapter_name_or_path "$PREF/llama-lora"
	[ "$(jq -s 'map(select(has("loss_scale"))) | length' f32/trainer_log.jsonl)" -eq 0 ]
}

@test "emulated device ft-generate: the CPU's greedy tokens, batched, over several tiles of the cache" {
	for m in "$GQA4" "$QWEN" "$QWEN3"; do
		same_tokens "$m" 60
	done
}

# ft-generate's prefill runs training's attention forward (the decode
# step's cache_attention_k has 512 bytes of static shared memory at any
# head_dim): at sm_86's bound a Gemma with hd 256 in fp32 prefills on the
# 16-row tiles (FT_CUDA_CHECK_ATTN=fp32-16 holds it to them), and its
# greedy tokens are the CPU's.
@test "emulated device ft-generate with 99 KiB of shared memory (sm_86): Gemma's head_dim 256 in fp32, the CPU's greedy tokens" {
	FT_EMU_SMEM_OPTIN=101376 FT_CUDA_CHECK_ATTN=fp32-16 same_tokens "$GEMMA256" 60
}

@test "the emulation itself: threads in reverse order and one OS thread give the same bits (no races it can see)" {
	long_data
	tr cuda a "$GQA4" --train long.zst --finetuning_type lora --lora_target all
	FT_EMU_ORDER=reverse FT_EMU_THREADS=1 tr cuda b "$GQA4" --train long.zst --finetuning_type lora \
		--lora_target all
	diff <(steady a/trainer_log.jsonl) <(steady b/trainer_log.jsonl)
	cmp a/adapter_model.safetensors b/adapter_model.safetensors
}

# freeze_extra_modules: the trainable embedding (and the tied head through
# it), head and norms are the device's full fine-tuning paths, so the fp32
# bound of the full runs above holds
@test "emulated device freeze_extra_modules: embed_tokens, norm, lm_head (llama), a tied embedding (qwen2)" {
	sft_data
	common=(--train train.zst --val val.zst --eval_steps 2 --finetuning_type freeze --freeze_trainable_layers 1)
	same_run "$LLAMA" 1e-4 "${common[@]}" --freeze_trainable_modules mlp \
		--freeze_extra_modules embed_tokens,norm,lm_head
	same_run "$QWEN" 1e-4 "${common[@]}" --freeze_extra_modules embed_tokens,norm
}
