#!/usr/bin/env bats
# ft-train --stage rm | dpo | kto: parity of every loss with LLaMA-Factory
# 0.9.3's trainers over TRL 0.9.6 (tests/reference/make_pref_trl_fixtures.py:
# 10 AdamW steps, loss and every metric per step within 1e-4), TRL's metric
# names in the log and results, plots, rm's value head and its scores in
# TRL's AutoModelForCausalLMWithValueHead, the reference model options,
# refusals.
load helper

PREF="$FIXTURES/pref"
LLAMA="$FIXTURES/models/tiny-llama"
export OMP_NUM_THREADS=1

setup() {
	cd "$BATS_TEST_TMPDIR"
	command -v ft-cat >/dev/null || { echo "ft-cat is not built (run make)" >&2; return 1; }
	for s in dpo rm kto; do ft-cat --encode < "$PREF/$s.jsonl" > $s.zst; done
	ft-cat --encode < "$FIXTURES/trainer/train.jsonl" > sft.zst
}

# the flags of each fixture case (make_pref_fixtures.py CASES)
case_flags() {
	case $1 in
	sigmoid) echo "--stage dpo --train dpo.zst" ;;
	sigmoid_ls_ftx) echo "--stage dpo --train dpo.zst --pref_beta 0.3 --dpo_label_smoothing 0.2 --pref_ftx 0.5" ;;
	hinge|ipo|orpo) echo "--stage dpo --train dpo.zst --pref_loss $1" ;;
	simpo) echo "--stage dpo --train dpo.zst --pref_loss simpo --pref_beta 2.0 --simpo_gamma 0.5" ;;
	kto) echo "--stage kto --train kto.zst" ;;
	kto_weights_ftx) echo "--stage kto --train kto.zst --pref_beta 0.2 --kto_chosen_weight 1.5 --kto_rejected_weight 0.5 --pref_ftx 0.3" ;;
	rm) echo "--stage rm --train rm.zst" ;;
	esac
}

# run_case KIND NAME: the 10 steps of LLaMA-Factory 0.9.3 / TRL 0.9.6 in
# trl-steps.json (make_pref_trl_fixtures.py), compared per step
run_case() {
	local kind=$1 name=$2 model="$FIXTURES/models/tiny-$1"
	[ "$name" = rm ] && model="$PREF/$kind-model-nodrop"   # summary_dropout_prob 0
	run ft-train $(case_flags "$name") --model_name_or_path "$model" --adapter_name_or_path "$PREF/$kind-lora" \
		--output_dir "out-$kind-$name" --max_steps 10 --logging_steps 1 --learning_rate 5e-3 --save_steps 0 -q
	assert_success
	run trl_diff "$kind" "$name" "out-$kind-$name/trainer_log.jsonl"
	assert_output "ok"
}

# trl_diff KIND NAME LOG: "ok", or the first step and key of LOG off TRL's
# values by more than 1e-4: ten AdamW steps in float32 on both sides with
# different summation orders; measured worst 1.1e-5 (ipo's loss near 23;
# logps near -56: 7e-6).  grad_norm, a norm over every gradient that reaches
# 50 for rm, is compared relative to its size above 1 (measured 3.5e-6).  Every key TRL logged
# (loss, grad_norm, learning_rate as ft's lr, each metric) must be in LOG,
# logits/ metrics included on padded batches (their padding positions see
# the real tokens only, the batch's lengths as HF's attention_mask).  kto's
# logits/ are not means but per-sequence sums of T x V = 14 x 256 = 3584
# logits (LLaMA-Factory's logits/chosen_sum / count), so float32 drift of
# 3e-8 per logit after some AdamW steps adds up to the measured worst
# 1.2e-4 (qwen2 kto; unpadded step 7: 3.8e-5); they are compared within
# 1e-3, while padding positions attending to padding keys move them by
# 0.02 to 25 (measured).
trl_diff() {
	jq -n -r --slurpfile ft "$3" --slurpfile ref "$PREF/trl-steps.json" --arg k "$1" --arg c "$2" '
		def abs: if . < 0 then -. else . end;
		[$ft[] | select(.loss != null)] as $f | $ref[0][$k][$c] as $r
		| if ($r | length) != 10 or ($f | length) != 10 then "steps: \($f | length) vs \($r | length)"
		  else [range(10) as $i | $r[$i] as $t | $f[$i] as $g | $t | to_entries[]
			| select(.key != "step" and .key != "padded")
			| (if .key == "learning_rate" then "lr" else .key end) as $fk
			| if $g[$fk] == null then "step \($t.step): no \($fk)"
			  elif (($g[$fk] - .value) | abs) > (if ($c | startswith("kto")) and (.key | startswith("logits/"))
				then 1e-3 else 1e-4 * (if .key == "grad_norm" then [1, (.value | abs)] | max else 1 end) end)
			  then "step \($t.step) \(.key): \($g[$fk]) vs TRL \(.value)"
			  else empty end] | first // "ok" end'
}

@test "dpo sigmoid, hinge, ipo, orpo, simpo: 10 steps match TRL 0.9.6 per step, loss and metrics (llama)" {
	need_jq
	for c in sigmoid sigmoid_ls_ftx hinge ipo orpo simpo; do run_case llama $c; done
}

@test "dpo: 10 steps match TRL 0.9.6 per step, loss and metrics (qwen2)" {
	need_jq
	for c in sigmoid sigmoid_ls_ftx hinge ipo orpo simpo; do run_case qwen2 $c; done
}

@test "kto (plain; weights and ftx) and rm: 10 steps match TRL 0.9.6 per step, loss and metrics" {
	need_jq
	for k in llama qwen2; do for c in kto kto_weights_ftx rm; do run_case $k $c; done; done
}

@test "dpo: TRL's metric names in trainer_log.jsonl, eval_ ones in the results, no perplexity" {
	need_jq
	ft-cat --encode < "$PREF/dpo.jsonl" > val.zst
	run ft-train --stage dpo --model_name_or_path "$LLAMA" --train dpo.zst --val val.zst --output_dir out \
		--max_steps 2 --logging_steps 1 --eval_steps 2 -q
	assert_success
	for k in rewards/chosen rewards/rejected rewards/accuracies rewards/margins logps/chosen logps/rejected \
		 logits/chosen logits/rejected; do
		jq -e -s --arg k "$k" 'map(select(.loss != null)) | length > 0 and all(has($k))' \
			out/trainer_log.jsonl >/dev/null
		jq -e -s --arg k "eval_$k" 'map(select(.eval_loss != null)) | length > 0 and all(has($k))' \
			out/trainer_log.jsonl >/dev/null
		jq -e --arg k "eval_$k" 'has($k)' out/eval_results.json >/dev/null
		jq -e --arg k "eval_$k" 'has($k)' out/all_results.json >/dev/null
		jq -e --arg k "$k" '.log_history[0] | has($k)' out/trainer_state.json >/dev/null
	done
	run jq -e 'has("perplexity")' out/eval_results.json
	assert_failure
	# orpo adds its two terms
	run ft-train --stage dpo --pref_loss orpo --model_name_or_path "$LLAMA" --train dpo.zst --output_dir o2 \
		--max_steps 1 --logging_steps 1 -q
	assert_success
	jq -e -s 'map(select(.loss != null)) | length > 0 and all(has("sft_loss") and has("odds_ratio_loss"))' \
		o2/trainer_log.jsonl
}

@test "kto: the kl estimate and the chosen/rejected metrics in the log" {
	need_jq
	run ft-train --stage kto --model_name_or_path "$LLAMA" --train kto.zst --output_dir out --max_steps 2 \
		--logging_steps 1 -q
	assert_success
	jq -e -s 'map(select(.loss != null)) | length > 0 and all(has("kl") and has("rewards/chosen") and
		has("rewards/rejected") and has("rewards/margins") and has("logps/chosen") and has("logits/rejected"))' \
		out/trainer_log.jsonl
}

@test "--plot_loss: training_loss.png and training_rewards_accuracies.png (dpo); ft-plot --keys draws them" {
	run ft-train --stage dpo --model_name_or_path "$LLAMA" --train dpo.zst --output_dir out --max_steps 4 \
		--logging_steps 1 --plot_loss -q
	assert_success
	[ -s out/training_loss.png ]
	[ -s out/training_rewards_accuracies.png ]
	run ft-plot --keys rewards/margins,logps/chosen -o m.png out
	assert_success
	[ -s m.png ]
}

@test "rm: value_head.safetensors beside the adapter, reloaded; --do_predict writes the scores" {
	run ft-train --stage rm --model_name_or_path "$LLAMA" --train rm.zst --output_dir out --max_steps 2 -q
	assert_success
	[ -s out/value_head.safetensors ]
	[ -s out/adapter_model.safetensors ]
	[ -s out/checkpoint-2/value_head.safetensors ]
	if [ -x /work/venv/bin/python ]; then   # the keys and shapes, read with torch
		run /work/venv/bin/python "$FT_ROOT/tests/reference/make_pref_fixtures.py" --check-value-head out
		assert_output --partial "value head OK: (1, 64)"
	fi
	ft-cat --encode < "$PREF/rm.jsonl" > val.zst
	run ft-train --stage rm --model_name_or_path "$LLAMA" --adapter_name_or_path out --val val.zst \
		--do_predict --output_dir pred -q
	assert_success
	[ "$(wc -l < pred/generated_predictions.jsonl)" -eq 11 ]   # 12 pairs, no final newline
	run head -1 pred/generated_predictions.jsonl
	assert_output --regexp '^\{"chosen": -?[0-9]+\.[0-9]+, "rejected": -?[0-9]+\.[0-9]+\}$'
	# the same head gives the same scores twice
	run ft-train --stage rm --model_name_or_path "$LLAMA" --adapter_name_or_path out --val val.zst \
		--do_predict --output_dir pred2 -q
	cmp pred/generated_predictions.jsonl pred2/generated_predictions.jsonl
	# evaluation: eval_accuracy
	run ft-train --stage rm --model_name_or_path "$LLAMA" --adapter_name_or_path out --val val.zst \
		--do_eval --output_dir ev -q
	assert_success
	grep -q '"eval_accuracy"' ev/eval_results.json
}

@test "rm --do_predict: the fixture adapter's scores are TRL's AutoModelForCausalLMWithValueHead ones" {
	need_jq
	# trl-rm-scores.json: TRL 0.9.6's scores of rm.jsonl's pairs with the same
	# adapter and value_head.safetensors (make_pref_trl_fixtures.py); ft
	# writes them rounded to 2 decimals, as LLaMA-Factory: each must be TRL's
	# rounded, or within 1e-4 of a rounding boundary its neighbour
	for k in llama qwen2; do
		run ft-train --stage rm --model_name_or_path "$PREF/$k-model-nodrop" --adapter_name_or_path "$PREF/$k-lora" \
			--val rm.zst --do_predict --output_dir pred-$k -q
		assert_success
		run jq -n -r --slurpfile ft pred-$k/generated_predictions.jsonl --slurpfile ref "$PREF/trl-rm-scores.json" \
			--arg k $k '
			def abs: if . < 0 then -. else . end;
			$ref[0][$k] as $r
			| if ($ft | length) != ($r | length) or ($r | length) != 12 then "pairs: \($ft | length) vs \($r | length)"
			  else [range($r | length) as $i | ("chosen", "rejected") as $s | $r[$i][$s] as $t | $ft[$i][$s] as $g
				| (($t * 100 | round) / 100) as $want
				| (($t * 100) - ($t * 100 | trunc) | abs) as $frac
				| select(($g - $want | abs) > 1e-9
					and ((($frac - 0.5) | abs) >= 1e-2 or ($g - $t | abs) > 0.0051))
				| "pair \($i) \($s): \($g) vs TRL \($t)"] | first // "ok" end'
		assert_output "ok"
	done
}

@test "ft-merge keeps the value head beside the merged model" {
	run ft-train --stage rm --model_name_or_path "$LLAMA" --train rm.zst --output_dir out --max_steps 1 -q
	assert_success
	run ft-merge --model_name_or_path "$LLAMA" --adapter_name_or_path out --export_dir merged -q
	assert_success
	cmp out/value_head.safetensors merged/value_head.safetensors
}

@test "rm: a value head of the wrong size cannot attach" {
	mkdir bad
	cp "$PREF/qwen2-lora/"adapter_* bad/
	ft-cat --encode < "$PREF/rm.jsonl" > /dev/null
	# a head for hidden size 2 instead of 64
	printf '%s' '{"v_head.summary.weight":{"dtype":"F32","shape":[1,2],"data_offsets":[0,8]},"v_head.summary.bias":{"dtype":"F32","shape":[1],"data_offsets":[8,12]}}' > h.json
	python3 -c "import struct,sys; h=open('h.json','rb').read(); h+=b' '*((8-len(h)%8)%8); sys.stdout.buffer.write(struct.pack('<Q',len(h))+h+bytes(12))" > bad/value_head.safetensors
	run ft-train --stage rm --model_name_or_path "$LLAMA" --adapter_name_or_path bad --train rm.zst --output_dir out -q
	assert_failure 1
	assert_output --partial "the value head cannot be attached"
}

@test "reference models: --ref_model (base) equals the disabled adapters; full finetuning starts at log 2" {
	need_jq
	run ft-train --stage dpo --model_name_or_path "$LLAMA" --adapter_name_or_path "$PREF/llama-lora" \
		--train dpo.zst --output_dir a --max_steps 2 --logging_steps 1 -q
	assert_success
	run ft-train --stage dpo --model_name_or_path "$LLAMA" --adapter_name_or_path "$PREF/llama-lora" \
		--ref_model "$LLAMA" --train dpo.zst --output_dir b --max_steps 2 --logging_steps 1 -q
	assert_success
	[ "$(jq -c .loss a/trainer_log.jsonl)" = "$(jq -c .loss b/trainer_log.jsonl)" ]
	# --ref_model_adapters: the reference is the adapted model: rewards start at 0
	run ft-train --stage dpo --model_name_or_path "$LLAMA" --adapter_name_or_path "$PREF/llama-lora" \
		--ref_model "$LLAMA" --ref_model_adapters "$PREF/llama-lora" --train dpo.zst --output_dir c \
		--max_steps 1 --logging_steps 1 -q
	assert_success
	run jq -r 'select(.loss != null) | .loss' c/trainer_log.jsonl
	assert_output --regexp '^0\.693147'
	run ft-train --stage dpo --finetuning_type full --model_name_or_path "$LLAMA" --train dpo.zst \
		--output_dir d --max_steps 1 --logging_steps 1 -q
	assert_success
	run jq -r 'select(.loss != null) | .loss' d/trainer_log.jsonl
	assert_output --regexp '^0\.693147'
}

@test "dpo --do_eval alone: the model is its own reference, rewards dropped (LLaMA-Factory)" {
	need_jq
	ft-cat --encode < "$PREF/dpo.jsonl" > val.zst
	run ft-train --stage dpo --model_name_or_path "$LLAMA" --val val.zst --do_eval --output_dir ev -q
	assert_success
	run jq -r .eval_loss ev/eval_results.json
	assert_output --regexp '^0\.693147'
	run jq -e 'has("eval_rewards/chosen")' ev/eval_results.json
	assert_failure
	jq -e 'has("eval_logps/chosen")' ev/eval_results.json
}

@test "refusals: unknown --pref_loss, kto_pair, label smoothing off sigmoid, ppo, --do_predict off rm" {
	run -2 ft-train --stage dpo --pref_loss unknown --model_name_or_path "$LLAMA" --train dpo.zst --output_dir o
	assert_output --partial "--pref_loss: 'unknown' is not a loss (sigmoid, hinge, ipo, orpo, simpo)"
	[ "${#lines[@]}" -le 2 ]
	run -2 ft-train --stage dpo --pref_loss kto_pair --model_name_or_path "$LLAMA" --train dpo.zst --output_dir o
	assert_output --partial "kto_pair"
	run -2 ft-train --stage dpo --pref_loss hinge --dpo_label_smoothing 0.1 --model_name_or_path "$LLAMA" \
		--train dpo.zst --output_dir o
	assert_output --partial "only valid for sigmoid loss"
	run -2 ft-train --stage ppo --model_name_or_path "$LLAMA" --train dpo.zst --output_dir o
	assert_output --partial "--stage ppo needs --reward_model"
	run -2 ft-train --stage dpo --do_predict --model_name_or_path "$LLAMA" --val dpo.zst --output_dir o
	assert_output --partial "--do_predict"
	run -2 ft-train --stage dpo --pref_loss simpo --ref_model "$LLAMA" --model_name_or_path "$LLAMA" \
		--train dpo.zst --output_dir o
	assert_output --partial "uses no reference model"
	run -2 ft-train --stage dpo --pref_beta 0 --model_name_or_path "$LLAMA" --train dpo.zst --output_dir o
	assert_output --partial "--pref_beta must be > 0"
	run -2 ft-train --stage kto --kto_chosen_weight -1 --model_name_or_path "$LLAMA" --train kto.zst --output_dir o
	assert_output --partial "kto_chosen_weight"
	run -2 ft-train --stage dpo --ref_model_adapters x --model_name_or_path "$LLAMA" --train dpo.zst --output_dir o
	assert_output --partial "--ref_model_adapters needs --ref_model"
}

@test "refusals: a pairwise stage on sft batches, sft on pairwise ones, kto on dpo ones" {
	run -1 ft-train --stage dpo --model_name_or_path "$LLAMA" --train sft.zst --output_dir o
	assert_output --partial "packed for stage 'sft' but --stage is dpo"
	[ "${#lines[@]}" -eq 1 ]
	run -1 ft-train --stage sft --model_name_or_path "$LLAMA" --train dpo.zst --output_dir o
	assert_output --partial "packed for stage 'dpo' but --stage is sft"
	run -1 ft-train --stage rm --model_name_or_path "$LLAMA" --train kto.zst --output_dir o
	assert_output --partial "packed for stage 'kto' but --stage is rm"
}

@test "--device cuda without a usable GPU: rm, dpo, kto fail in one line as sft does; auto trains on the CPU" {
	for s in rm dpo kto; do
		FT_CUDA_LIB=/nonexistent/libft_cuda.so run -1 --separate-stderr ft-train --stage $s --device cuda \
			--model_name_or_path "$LLAMA" --train $s.zst --output_dir o --max_steps 1
		assert_equal "$stderr" "ft-train: --device cuda: FT_CUDA_LIB=/nonexistent/libft_cuda.so: no such file"
	done
	FT_CUDA_LIB=/nonexistent/libft_cuda.so run -0 --separate-stderr ft-train --stage dpo --device auto \
		--model_name_or_path "$LLAMA" --train dpo.zst --output_dir a --max_steps 1
	[[ "$stderr" == *"note: --device auto: running on the CPU (FT_CUDA_LIB=/nonexistent"* ]]
	# the tree's .so, no GPU here: the loader's or the driver's one line, never a refusal
	if [ -f "$BATS_TEST_DIRNAME/../../build/libft_cuda.so" ] && ! nvidia-smi -L >/dev/null 2>&1; then
		run -1 --separate-stderr ft-train --stage rm --device cuda:0 --model_name_or_path "$LLAMA" \
			--train rm.zst --output_dir c0 --max_steps 1
		[[ "$stderr" == "ft-train: --device cuda:0: CUDA: cudaGetDeviceCount"* ]]
	fi
}

@test "a dataset without chosen/rejected for a pairwise stage: LLaMA-Factory's error" {
	mkdir data
	echo '[{"instruction": "a", "output": "b"}]' > data/d.json
	echo '{"d": {"file_name": "d.json"}}' > data/dataset_info.json
	mkdir tok
	cp "$FIXTURES/tokenizer/small-sp/tokenizer.json" tok/
	printf '{"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"}\n' > tok/tokenizer_config.json
	export XDG_CACHE_HOME="$BATS_TEST_TMPDIR/cache"
	run -1 ft-tokenize --stage dpo --dataset d --dataset_dir data --tokenizer tok --template alpaca -o t.zst
	assert_output --partial "The dataset is not applicable in the current training stage."
}

@test "resume from a checkpoint: the same losses and value head as an uninterrupted run (rm, dpo, kto)" {
	need_jq
	for s in rm dpo kto; do
		args="--stage $s --model_name_or_path $LLAMA --train $s.zst --max_steps 4 --save_steps 2 --logging_steps 1 --learning_rate 5e-3 -q"
		run ft-train $args --output_dir a-$s
		assert_success
		run ft-train $args --output_dir b-$s --max_steps 4
		assert_success
		rm -rf b-$s/checkpoint-4
		run ft-train $args --output_dir b-$s --resume_from_checkpoint b-$s/checkpoint-2
		assert_success
		[ "$(jq -c .loss a-$s/trainer_log.jsonl)" = "$(jq -c .loss b-$s/trainer_log.jsonl)" ]
		cmp a-$s/adapter_model.safetensors b-$s/adapter_model.safetensors
	done
	cmp a-rm/value_head.safetensors b-rm/value_head.safetensors
}

@test "gradient accumulation: the step loss is the mean of its micro-batches' losses" {
	need_jq
	run ft-train --stage dpo --model_name_or_path "$LLAMA" --adapter_name_or_path "$PREF/llama-lora" \
		--train dpo.zst --output_dir one --max_steps 2 --logging_steps 1 --learning_rate 0 -q
	assert_success
	run ft-train --stage dpo --model_name_or_path "$LLAMA" --adapter_name_or_path "$PREF/llama-lora" \
		--train dpo.zst --output_dir two --max_steps 1 --gradient_accumulation_steps 2 --logging_steps 1 \
		--learning_rate 0 -q
	assert_success
	run jq -n --slurpfile a one/trainer_log.jsonl --slurpfile b two/trainer_log.jsonl \
		'(($a[0].loss + $a[1].loss) / 2 - $b[0].loss) | fabs < 1e-6'
	assert_output true
}

@test "rm on neat-packed pairs: every pair scores as in padded batches (segments, positions)" {
	python3 - > tok.jsonl <<-'EOT'
	import json, random
	random.seed(3)
	print(json.dumps({"format": "ft-stream", "version": 1, "kind": "tokens", "producer": "test",
	                  "meta": {"stage": "rm", "tokenizer": "tiny", "pad_id": 0, "eos_id": 2, "vocab_size": 256}}))
	for i in range(10):
	    p = [random.randrange(3, 256) for _ in range(random.randrange(2, 6))]
	    c = [random.randrange(3, 256) for _ in range(random.randrange(2, 9))] + [2]
	    r = [random.randrange(3, 256) for _ in range(random.randrange(2, 9))] + [2]
	    print(json.dumps({"chosen_input_ids": p + c, "chosen_labels": [-100] * len(p) + c,
	                      "rejected_input_ids": p + r, "rejected_labels": [-100] * len(p) + r}))
	EOT
	ft-cat --encode < tok.jsonl > tok.zst
	ft-pack -q --stage rm --per_device_train_batch_size 2 --cutoff_len 32 --output_dir pad tok.zst
	ft-pack -q --stage rm --neat_packing --per_device_train_batch_size 1 --cutoff_len 40 --output_dir neat tok.zst
	for d in pad neat; do
		run ft-train --stage rm --model_name_or_path "$PREF/llama-model-nodrop" \
			--adapter_name_or_path "$PREF/llama-lora" --val $d --do_predict --output_dir p$d -q
		assert_success
	done
	[ "$(grep -c chosen ppad/generated_predictions.jsonl)" -eq 10 ]
	diff <(sort ppad/generated_predictions.jsonl) <(sort pneat/generated_predictions.jsonl)
}

@test "ft-run: the preference settings reach ft-train; rm do_predict is refused with the ft-train command" {
	run --separate-stderr ft-run -n train --stage dpo --dataset d --output_dir o --do_train true \
		--pref_beta 0.2 --pref_loss ipo --pref_ftx 0.1 --simpo_gamma 0.7 --dpo_label_smoothing 0 \
		--ref_model r --ref_model_adapters ra
	assert_success
	[[ "$output" == *"ft-train"*"--stage dpo"*"--pref_beta 0.2 --pref_loss ipo --pref_ftx 0.1 --simpo_gamma 0.7"* ]]
	[[ "$output" == *"--ref_model r --ref_model_adapters ra"* ]]
	run --separate-stderr ft-run -n train --stage kto --dataset d --output_dir o --do_train true \
		--kto_chosen_weight 2 --kto_rejected_weight 0.5
	assert_success
	[[ "$output" == *"--kto_chosen_weight 2 --kto_rejected_weight 0.5"* ]]
	run --separate-stderr ft-run -n train --stage rm --dataset d --output_dir o --do_predict true
	assert_failure 1
	[[ "$stderr" == *"ft-train --stage rm --do_predict"* ]]
}

@test "full fine-tuning from scratch has no base to refer to: --ref_model is asked for" {
	run -2 ft-train --stage dpo --train_from_scratch --config "$LLAMA/config.json" --finetuning_type full \
		--train dpo.zst --output_dir o
	assert_output --partial "give --ref_model DIR"
	run ft-train --stage dpo --train_from_scratch --config "$LLAMA/config.json" --finetuning_type full \
		--ref_model "$LLAMA" --train dpo.zst --output_dir o --max_steps 1 -q
	assert_success
}
