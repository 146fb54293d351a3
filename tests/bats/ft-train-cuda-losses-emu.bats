#!/usr/bin/env bats
# LLaMA-Factory's SFT extras on the emulated device (FT_CUDA_LIB=
# build/libft_cuda_emu.so, docs/CUDA-TESTING.md "Host emulation") against the CPU:
# the DFT, EAFT and ASFT losses, NEFTune and modules_to_save (embed_tokens
# and lm_head trained beside LoRA for new tokens).
#
# Tolerances.  Both paths compute in fp32 with the same formulas; they
# differ in summation order only (the device's block-tree reductions and
# fused GEMMs against the CPU's loops), ~1e-6 relative as
# ft-train-cuda-emu.bats argues, and its bound of 1e-4 holds here too:
# - DFT's weight exp(logp) and EAFT's (H20 / 3)^alpha are smooth functions
#   of the label log-prob and of the top 20 logits (the same 20 on both:
#   a rounding cannot reorder values that far apart on these models), so
#   they move by alpha times the logits' ~1e-6; ASFT's KL term adds one
#   more softmax of the reference, computed by the same device code.
# - NEFTune's noise is the CPU's own draws (host generator, uploaded), so
#   the device adds the same floats and only the order of sums differs.
# - modules_to_save trains the embedding and lm_head with AdamW: each
#   element moves by lr * m / sqrt(v), which passes the gradients' ~1e-6
#   relative difference on unamplified (rows without a gradient stay
#   exact on both); after 4 steps at lr 5e-3 the adapter's tensors are
#   within 4 * 5e-3 * 1e-5 = 2e-7 per unit of movement, so 1e-4 absolute
#   (observed <= 1e-6) is far below one wrong row (lr = 5e-3 per step).
# Observed: <= 1e-6 relative in every loss, grad norm and eval loss.
# Each feature is also shown to matter, so a device that dropped it would
# fail: the device run without it differs by far more than the bound.
# Resume is compared bit for bit (the emulation is deterministic).
load helper
load emu_helper

LLAMA="$FIXTURES/models/tiny-llama"
QWEN="$FIXTURES/models/tiny-qwen2"
GEMMA2="$FIXTURES/families/gemma2/model"
MAXDIFF="$FT_ROOT/build/tests/st_maxdiff"
CFG="$FIXTURES/lf-examples/extras/multi_tokens/tokens_cfg.yaml"

# differ A B: some loss or grad norm of the two logs apart by > 1e-2 relative
differ() {
	paste <(nums "$1") <(nums "$2") | awk '
		{ d = $1 - $2; if (d < 0) d = -d; m = $1 < 0 ? -$1 : $1; if (d > 1e-2 * m) n++ }
		END { exit !(n > 0) }'
}

# resumed DIR_A flags...: a 6-step device run and one resumed from its
# step-3 checkpoint, logs and saved files bit-identical
resumed() {
	local args=(--device cuda --max_steps 6 --logging_steps 1 --save_steps 3 --seed 3 -q "$@")
	ft-train --output_dir a "${args[@]}"
	mkdir b && cp -r a/checkpoint-3 b/ && head -n 3 a/trainer_log.jsonl > b/trainer_log.jsonl
	ft-train --output_dir b "${args[@]}" --resume_from_checkpoint true
	diff <(steady a/trainer_log.jsonl) <(steady b/trainer_log.jsonl)
	for f in adapter_model.safetensors model.safetensors; do
		[ ! -f a/$f ] || cmp a/$f b/$f
	done
	cmp a/checkpoint-6/optimizer.safetensors b/checkpoint-6/optimizer.safetensors
	rm -rf a b
}

@test "emulated device DFT and EAFT: lora, full, qwen2, with accumulation, clipping and eval" {
	sft_data
	common=(--train train.zst --val val.zst --eval_steps 2 --gradient_accumulation_steps 2
		--max_grad_norm 0.5)
	same_run "$LLAMA" 1e-4 "${common[@]}" --use_dft_loss true --finetuning_type lora --lora_dropout 0.1
	same_run "$LLAMA" 1e-4 "${common[@]}" --use_eaft_loss true --eaft_alpha 1.5 --finetuning_type full
	same_run "$QWEN" 1e-4 "${common[@]}" --use_eaft_loss true --finetuning_type lora --lora_target all
	# a vocabulary of 802: each of the entropy kernel's 32 threads sees 25
	# logits of a row, more than the 20 it keeps (the 256 above: 8)
	same_run "$FIXTURES/vocab/base" 1e-4 --train train.zst --use_eaft_loss true --eaft_alpha 20
	# the weights matter: plain cross-entropy is far from either
	tr cuda ce "$LLAMA" --train train.zst
	tr cuda dft "$LLAMA" --train train.zst --use_dft_loss true
	# (a random model's top-20 entropy is near log 20 ~ 3, so EAFT's
	# weight (H / 3)^alpha is near 1 unless alpha is large)
	tr cuda eaft "$LLAMA" --train train.zst --use_eaft_loss true --eaft_alpha 20
	differ ce/trainer_log.jsonl dft/trainer_log.jsonl
	differ ce/trainer_log.jsonl eaft/trainer_log.jsonl
}

@test "emulated device ASFT: the frozen copy (full), --ref_model (lora, dropout), eval, accumulation" {
	sft_data
	same_run "$LLAMA" 1e-4 --train train.zst --val val.zst --eval_steps 2 --gradient_accumulation_steps 2 \
		--finetuning_type full --use_asft_loss true --asft_alpha 2 --learning_rate 1e-2
	same_run "$LLAMA" 1e-4 --train train.zst --finetuning_type lora --lora_dropout 0.1 \
		--use_asft_loss true --ref_model "$LLAMA" --asft_alpha 2 --learning_rate 1e-2
	# the KL term matters once the model has moved from its reference
	tr cuda k0 "$LLAMA" --train train.zst --finetuning_type full --use_asft_loss true --asft_alpha 0 \
		--learning_rate 1e-2
	tr cuda k2 "$LLAMA" --train train.zst --finetuning_type full --use_asft_loss true --asft_alpha 2 \
		--learning_rate 1e-2
	differ k0/trainer_log.jsonl k2/trainer_log.jsonl
}

@test "emulated device NEFTune: the CPU's noise, sft lora and full, dpo; none in eval" {
	sft_data
	same_run "$LLAMA" 1e-4 --train train.zst --val val.zst --eval_steps 2 --gradient_accumulation_steps 2 \
		--neftune_noise_alpha 5 --lora_dropout 0.1
	same_run "$QWEN" 1e-4 --train train.zst --finetuning_type full --neftune_noise_alpha 5
	ft-cat --encode < "$FIXTURES/pref/dpo.jsonl" > dpo.zst
	same_run "$LLAMA" 1e-4 --stage dpo --train dpo.zst --adapter_name_or_path "$FIXTURES/pref/llama-lora" \
		--neftune_noise_alpha 5
	tr cuda quiet "$LLAMA" --train train.zst --val val.zst --eval_steps 2
	tr cuda noisy "$LLAMA" --train train.zst --val val.zst --eval_steps 2 --neftune_noise_alpha 5
	differ quiet/trainer_log.jsonl noisy/trainer_log.jsonl
	# evaluation adds no noise: an eval-only run is the same with and without
	for d in quiet noisy; do
		ft-train -q --model_name_or_path "$LLAMA" --output_dir e$d --device cuda --val val.zst \
			--do_train false --do_eval true $([ $d = noisy ] && echo --neftune_noise_alpha 5)
	done
	cmp <(jq .eval_loss equiet/eval_results.json) <(jq .eval_loss enoisy/eval_results.json)
}

@test "emulated device Gemma 2 (final_logit_softcapping): EAFT, ASFT and NEFTune through the cap" {
	sft_data
	same_run "$GEMMA2" 1e-4 --train train.zst --use_eaft_loss true
	same_run "$GEMMA2" 1e-4 --train train.zst --finetuning_type full --use_asft_loss true --asft_alpha 0.5
	same_run "$GEMMA2" 1e-4 --train train.zst --neftune_noise_alpha 5
}

@test "emulated device resume with DFT + NEFTune and with ASFT: bit-identical" {
	sft_data
	resumed --model_name_or_path "$LLAMA" --train train.zst --use_dft_loss true --neftune_noise_alpha 5 \
		--lora_dropout 0.1 --gradient_accumulation_steps 2
	resumed --model_name_or_path "$LLAMA" --train train.zst --finetuning_type full --use_asft_loss true
}

# the vocabulary fixture (tests/bats/vocab.bats) with new tokens in its data
vocab_data() {
	cp -r "$FIXTURES/vocab/base" model
	mkdir -p data
	cat > data/svg.json <<-'EOT'
	[{"instruction": "Draw a box", "input": "", "output": "<|START_OF_SVG|><|start_of_rect|>w 2<|end_of_rect|><|END_OF_SVG|>"},
	 {"instruction": "Write hi", "input": "", "output": "<|START_OF_SVG|><|start_of_text|>hi<|end_of_text|><|END_OF_SVG|> <tool_x>"},
	 {"instruction": "A circle", "input": "", "output": "<|start_of_circle|>r 1<|end_of_circle|>"}]
	EOT
	echo '{"svg": {"file_name": "svg.json"}}' > data/dataset_info.json
}
vocab_pack() {
	ft-tokenize -q --dataset svg --dataset_dir data --template empty --model_name_or_path model \
		--cutoff_len 64 --no_cache "$@" -o t.zst
	ft-pack -q --cutoff_len 64 --per_device_train_batch_size 2 -o packed t.zst
}

@test "emulated device modules_to_save: new tokens train embed_tokens and lm_head beside LoRA; tied; resume" {
	[ -x "$MAXDIFF" ] || skip "build/tests/st_maxdiff is not built (make unit)"
	vocab_data
	tok=(--add_tokens "<tool_x>" --new_special_tokens_config "$CFG")
	vocab_pack "${tok[@]}"
	tok+=(--init_special_tokens desc_init_w_noise)
	for d in cpu cuda; do
		tr $d $d model --train packed "${tok[@]}"
	done
	close cpu/trainer_log.jsonl cuda/trainer_log.jsonl 1e-4
	[ "$(jq -c '.modules_to_save | sort' cuda/adapter_config.json)" = '["embed_tokens","lm_head"]' ]
	# the same tensors (names, shapes: modules_to_save and original_module
	# copies) within 1e-4 absolute
	run "$MAXDIFF" cpu/adapter_model.safetensors cuda/adapter_model.safetensors
	assert_success
	awk -v d="$output" 'BEGIN { printf "# adapter max |cpu - device| %s\n", d; exit !(d + 0 <= 1e-4) }' >&3
	resumed --model_name_or_path model --train packed "${tok[@]}" --learning_rate 5e-3
	rm -rf cpu cuda
	# a tied model: PEFT's two copies untie it, on the device as on the CPU
	jq '.tie_word_embeddings = true' model/config.json > c.json
	ft-cat --encode < "$FIXTURES/trainer/train.jsonl" > init.zst
	ft-train -q --train_from_scratch --config c.json --finetuning_type full --train init.zst \
		--output_dir tied --max_steps 1
	cp model/tokenizer*.json tied/
	rm -rf model && mv tied model
	vocab_pack --add_special_tokens "<a>,<b>"
	for d in cpu cuda; do
		tr $d $d model --train packed --add_special_tokens "<a>,<b>"
	done
	close cpu/trainer_log.jsonl cuda/trainer_log.jsonl 1e-4
	run "$MAXDIFF" cpu/adapter_model.safetensors cuda/adapter_model.safetensors
	assert_success
	awk -v d="$output" 'BEGIN { exit !(d + 0 <= 1e-4) }'
	# --device auto trains them on the (emulated) GPU
	tr auto auto model --train packed --add_special_tokens "<a>,<b>"
	[[ "$(jq -r .ft.device auto/trainer_state.json)" == "cuda:0 (ft host emulation, "* ]]
}

@test "--device auto picks the (emulated) GPU for the losses, NEFTune and modules_to_save" {
	sft_data
	for f in "--use_dft_loss true" "--use_eaft_loss true" "--neftune_noise_alpha 5" \
		 "--use_asft_loss true --finetuning_type full"; do
		tr auto o "$LLAMA" --train train.zst $f
		[[ "$(jq -r .ft.device o/trainer_state.json)" == "cuda:0 (ft host emulation, "* ]]
		rm -rf o
	done
}
