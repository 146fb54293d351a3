#!/usr/bin/env bats
# ft-run: LLaMA-Factory flags or configs -> ft pipelines.
load helper

@test "ft-run --help shows examples and exit status" {
	run ft-run --help
	assert_success
	assert_output --partial "Examples"
	assert_output --partial "Exit status"
}

@test "ft-run -n prints the classic SFT command as a pipeline" {
	run ft-run -n --stage sft --model_name_or_path llama/chinese-alpaca-2-13b-hf --do_train \
		--dataset cail_law_train --template default --finetuning_type lora --lora_target q_proj,v_proj \
		--output_dir saves/cail --overwrite_cache --per_device_train_batch_size 4 \
		--gradient_accumulation_steps 4 --lr_scheduler_type cosine --logging_steps 10 --save_steps 100 \
		--learning_rate 5e-4 --num_train_epochs 20.0 --max_samples 100000 --plot_loss --fp16
	assert_success
	assert_line --index 0 "set -euo pipefail"
	assert_output --partial "ft-tokenize --stage sft --model_name_or_path llama/chinese-alpaca-2-13b-hf --dataset cail_law_train --template default --overwrite_cache --max_samples 100000 | \\"
	assert_output --partial "ft-pack --stage sft --per_device_train_batch_size 4 --num_train_epochs 20.0 --overwrite_output_dir --output_dir saves/cail-data -"
	assert_output --partial "ft-train --stage sft --model_name_or_path llama/chinese-alpaca-2-13b-hf --do_train --finetuning_type lora --lora_target q_proj,v_proj --output_dir saves/cail"
	assert_output --partial "--learning_rate 5e-4 --num_train_epochs 20.0 --plot_loss --fp16 --gradient_checkpointing --device auto --train saves/cail-data"
}

@test "ft-run: config file, key=value overrides, notes for settings without effect" {
	printf 'stage: sft\ndo_train: true\nmodel_name_or_path: m\ndataset: d\noutput_dir: o\ntrust_remote_code: true\nlearning_rate: 1.0e-4\nval_size: 0.1\n' > c.yaml
	run --separate-stderr ft-run -v -n train c.yaml learning_rate=2e-4 --do_sample false
	assert_success
	assert_output --partial "--learning_rate 2e-4"
	assert_output --partial "--val o-data/val"
	# ft-train's default of 3 epochs, packed reshuffled as the HF Trainer samples them
	assert_output --partial "--num_train_epochs 3 --overwrite_output_dir --output_dir o-data -"
	[[ "$stderr" == *"c.yaml:6: trust_remote_code accepted with no effect"* ]]
}

@test "ft-run: predict with eval_dataset and export/chat plans" {
	run ft-run -n --stage sft --model_name_or_path m --dataset d --eval_dataset e --output_dir o --do_train false --do_predict --do_sample false
	assert_success
	assert_output --partial "ft-tokenize --stage sft --model_name_or_path m --dataset e --predict_with_generate"
	# predict only: LLaMA-Factory writes generated_predictions.jsonl into output_dir
	assert_output --partial "ft-generate --model_name_or_path m --do_sample=false --device auto --do_predict --output_dir o --overwrite_output_dir -"
	run ft-run -n export --model_name_or_path m --adapter_name_or_path a --export_dir x --export_size 2
	assert_success
	assert_output --partial "ft-merge --model_name_or_path m --adapter_name_or_path a --export_dir x --export_size 2"
	run ft-run -n chat --model_name_or_path m --template qwen
	assert_success
	assert_output --partial "ft-generate -i --model_name_or_path m --template qwen"
}

@test "ft-run refuses unsupported settings and bad input" {
	run ft-run -n --stage sft --dataset d --output_dir o --use_unsloth true
	assert_failure 1
	assert_output --partial "'use_unsloth' is not supported"
	run ft-run -n --stage grpo --dataset d --output_dir o
	assert_failure 1
	assert_output --partial "ft-run plans pt, sft, rm, dpo, kto and ppo, LLaMA-Factory's stages (grpo: ft-train --stage grpo)"
	run ft-run -n --stage sft --dataset d
	assert_failure 1
	assert_output --partial "output_dir"
	run ft-run -n bogusword
	assert_failure 2
	run ft-run
	assert_failure 2
	printf 'stage: [sft\n' > bad.yaml
	run ft-run -n bad.yaml
	assert_failure 1
	assert_output --partial "bad.yaml:"
}

@test "ft-run trains from a LLaMA-Factory YAML and predicts" {
	skip_without_shared
	cp -r "$FT_ROOT/tests/fixtures/models/tiny-llama" model
	cp "$FT_ROOT/tests/fixtures/generate/tokenizer/"* model/
	cat > sft.yaml <<-EOT
	model_name_or_path: model
	trust_remote_code: true
	stage: sft
	do_train: true
	finetuning_type: lora
	lora_target: q_proj,v_proj
	dataset: identity
	dataset_dir: $SHARED/data/llamafactory
	template: default
	cutoff_len: 64
	max_samples: 16
	output_dir: saves
	logging_steps: 1
	plot_loss: true
	per_device_train_batch_size: 4
	gradient_accumulation_steps: 2
	learning_rate: 1.0e-3
	num_train_epochs: 1.0
	EOT
	run ft-run -q train sft.yaml do_predict=true max_new_tokens=2 do_sample=false
	assert_success
	[ -s saves/adapter_model.safetensors ]
	[ -s saves/training_loss.png ]
	[ -s saves/predict/predict_results.json ]
	run ft-run -q train sft.yaml learning_rate=-1
	assert_failure 1
	assert_output --partial "pipeline failed"
}

@test "ft-run names every setting it cannot run at once, each with its reason" {
	cat > c.yaml <<-EOT
	stage: grpo
	do_train: true
	model_name_or_path: m
	dataset: d
	template: nosuch
	finetuning_type: qlora
	use_unsloth: true
	image_max_pixels: 262144
	mixture_of_depths: convert
	made_up_key: 1
	output_dir: o
	EOT
	run --separate-stderr ft-run -n c.yaml
	assert_failure 1
	[[ "$stderr" == *"c.yaml:1: stage grpo: ft-run plans pt, sft, rm, dpo, kto and ppo"* ]]
	[[ "$stderr" == *"c.yaml:5: template nosuch is not one ft has (default, "* ]]
	[[ "$stderr" == *"c.yaml:6: finetuning_type qlora: ft supports lora, freeze, full and oft"* ]]
	[[ "$stderr" == *"c.yaml:7: 'use_unsloth' is not supported: unsloth's kernels"* ]]
	[[ "$stderr" == *"c.yaml:8: 'image_max_pixels' is not supported: ft trains text-only models"* ]]
	[[ "$stderr" == *"c.yaml:9: 'mixture_of_depths' is not supported: Mixture-of-Depths"* ]]
	[[ "$stderr" == *"c.yaml:10: 'made_up_key' is not a LLaMA-Factory setting ft knows"* ]]
	[[ "$stderr" == *"7 settings ft cannot run"* ]]
	[ -z "$output" ]
}

@test "ft-run accepts harmless settings with a note, refuses export_legacy_format true" {
	run --separate-stderr ft-run -v -n chat --model_name_or_path m --template qwen --infer_backend vllm \
		--run_name r --report_to wandb --export_device cpu --export_legacy_format false --plot_loss true
	assert_success
	[[ "$stderr" == *"infer_backend vllm: runs with ft-generate"* ]]
	[[ "$stderr" == *"report_to wandb: ft-train logs to trainer_log.jsonl only"* ]]
	[[ "$stderr" == *"run_name accepted with no effect"* ]]
	[[ "$stderr" == *"export_device accepted with no effect"* ]]
	run ft-run -n chat --model_name_or_path m --infer_backend huggingface
	assert_success
	run ft-run -n chat --model_name_or_path m --infer_backend ktransformers
	assert_failure 1
	assert_output --partial "infer_backend ktransformers is not supported"
	run ft-run -n export --model_name_or_path m --export_dir x --export_legacy_format true
	assert_failure 1
	assert_output --partial "export_legacy_format true is not supported"
}

@test "ft-run: YAML shapes name the setting; a mapping value is read" {
	printf 'stage: sft\ngradient_checkpointing_kwargs:\n  use_reentrant: false\ndo_train: true\nmodel_name_or_path: m\ndataset: d\noutput_dir: o\n' > ok.yaml
	run --separate-stderr ft-run -v -n ok.yaml
	assert_success
	[[ "$stderr" == *"gradient_checkpointing_kwargs accepted with no effect"* ]]
	printf 'stage: sft\nlora_target:\n  - [q_proj, v_proj]\n' > bad.yaml
	run ft-run -n bad.yaml
	assert_failure 1
	assert_output --partial "bad.yaml:3:5: lora_target: a list inside a list is not a setting ft can read"
}

@test "ft-run checks dataset names against dataset_dir and refuses pre-quantized models" {
	mkdir data q
	echo '{"local": {"file_name": "local.json"}, "hub": {"hf_hub_url": "org/set"}}' > data/dataset_info.json
	echo '[]' > data/local.json
	echo '{"model_type": "llama", "quantization_config": {"quant_method": "gptq", "bits": 4}}' > q/config.json
	run ft-run -n --stage sft --do_train --model_name_or_path m --dataset local --dataset_dir data --output_dir o
	assert_success
	run --separate-stderr ft-run -n --stage sft --do_train --model_name_or_path q --dataset local,hub,gone \
		--dataset_dir data --output_dir o
	assert_failure 1
	[[ "$stderr" == *"dataset 'hub'"*"hf_hub_url"* ]]
	[[ "$stderr" == *"gone"* ]]
	[[ "$stderr" == *"q is a pre-quantized checkpoint (gptq)"* ]]
	[[ "$stderr" == *"3 settings ft cannot run"* ]]
}

@test "ft-run: tokenized_path packs there and stops, then trains from it; predict-only configs" {
	run --separate-stderr ft-run -v -n --stage sft --do_train --model_name_or_path m --dataset d \
		--tokenized_path tok --output_dir o
	assert_success
	assert_output --partial "ft-pack --stage sft --num_train_epochs 3 --output_dir tok -"
	refute_output --partial "ft-train"
	[[ "$stderr" == *"tokenized_path tok does not exist yet"* ]]
	mkdir tok
	run ft-run -n --stage sft --do_train --model_name_or_path m --dataset d --tokenized_path tok --output_dir o
	assert_success
	refute_output --partial "ft-pack"
	assert_output --partial "ft-train --stage sft --do_train --model_name_or_path m --output_dir o --gradient_checkpointing --device auto --train tok"
	# predict only: nothing trained, the config's adapter, predictions in output_dir
	run ft-run -n --stage sft --model_name_or_path m --adapter_name_or_path a --do_predict \
		--eval_dataset e --output_dir p
	assert_success
	refute_output --partial "ft-train"
	assert_output --partial "--adapter_name_or_path a --do_predict --output_dir p"
	run ft-run -n --stage sft --model_name_or_path m --dataset d --output_dir o
	assert_failure 1
	assert_output --partial "nothing to do: set do_train or do_predict"
}

@test "ft-run finds its sibling tools beside its own executable, not only on PATH" {
	mkdir model && cp "$FT_ROOT/tests/fixtures/models/tiny-llama/"* model/
	run env PATH=/usr/bin:/bin "$FT_ROOT/bin/ft-run" -q export --model_name_or_path model --export_dir out
	assert_success
	[ -f out/model.safetensors ]
}

@test "ft-run trains and generates on the GPU when there is one (--device auto), unless device names one" {
	run ft-run -n --stage sft --do_train --model_name_or_path m --dataset d --output_dir o
	assert_success
	assert_output --partial "--device auto --train o-data"
	run ft-run -n chat --model_name_or_path m --template qwen
	assert_success
	assert_output --partial "ft-generate -i --model_name_or_path m --template qwen --device auto"
	run ft-run -n --stage sft --do_train --model_name_or_path m --dataset d --output_dir o --device cpu
	assert_success
	assert_output --partial "--output_dir o --device cpu --gradient_checkpointing --train o-data"
	refute_output --partial "auto"
	run ft-run -n export --model_name_or_path m --export_dir e
	assert_success
	refute_output --partial "--device"
}

@test "ft-run plans ppo: reward and ppo settings and the generating arguments go to ft-train" {
	cat > ppo.yaml <<-EOT
	stage: ppo
	do_train: true
	model_name_or_path: m
	reward_model: saves/rm
	reward_model_type: lora
	ppo_epochs: 2
	ppo_score_norm: true
	dataset: d
	template: qwen
	finetuning_type: lora
	max_new_tokens: 32
	top_k: 0
	top_p: 0.9
	output_dir: o
	EOT
	run ft-run -n ppo.yaml
	assert_success
	assert_output --partial "ft-tokenize --stage ppo"
	assert_output --partial "ft-pack --stage ppo"
	assert_output --partial "ft-train --stage ppo --do_train --model_name_or_path m --reward_model saves/rm --reward_model_type lora --ppo_epochs 2 --ppo_score_norm --finetuning_type lora --output_dir o --max_new_tokens 32 --top_p 0.9 --top_k 0 --gradient_checkpointing --device auto --train o-data"
	# an sft plan keeps generating arguments for ft-generate only
	run ft-run -n --stage sft --do_train --model_name_or_path m --dataset d --output_dir o --max_new_tokens 32
	assert_success
	refute_output --partial "max_new_tokens"
}

# tests/fixtures/llamafactory/settings.txt: every field of LLaMA-Factory's
# argument dataclasses and of transformers' Seq2SeqTrainingArguments
# (tests/reference/list_lf_settings.py); ft-run routes each, accepts it
# with a reason, or refuses it with one, never "not a setting ft knows"
@test "ft-run knows every LLaMA-Factory and HF trainer setting" {
	args=()
	while read -r src key; do args+=("--$key" 1); done < "$FIXTURES/llamafactory/settings.txt"
	[ "${#args[@]}" -gt 700 ]
	run --separate-stderr ft-run -n --stage sft --do_train --model_name_or_path m --dataset d \
		--output_dir o "${args[@]}"
	[[ "$stderr" == *"settings ft cannot run"* ]]   # many are refused with 1
	run grep -c "is not a LLaMA-Factory setting ft knows" <<< "$stderr"
	[ "$output" = 0 ]
	run ft-run -n --stage sft --do_train --model_name_or_path m --dataset d --output_dir o --made_up 1
	assert_output --partial "'made_up' is not a LLaMA-Factory setting ft knows"
}

@test "ft-run: a refused setting given as off asks for nothing; on, it is refused with why" {
	for v in false null 0; do
		run ft-run -n --stage sft --do_train --model_name_or_path m --dataset d --output_dir o \
			--use_unsloth $v --streaming $v --use_mca $v --push_to_hub $v
		assert_success
	done
	run --separate-stderr ft-run -n --stage sft --do_train --model_name_or_path m --dataset d --output_dir o \
		--streaming true --use_mca true --task mmlu_test --sortish_sampler true
	assert_failure 1
	[[ "$stderr" == *"'streaming' is not supported: dataset streaming is not implemented in ft yet"* ]]
	[[ "$stderr" == *"'use_mca' is not supported: another distributed backend's"* ]]
	[[ "$stderr" == *"'task' is not supported: a setting of \`llamafactory-cli eval\`"* ]]
	[[ "$stderr" == *"4 settings ft cannot run"* ]]
}

@test "ft-run: gradient checkpointing as LLaMA-Factory's (on unless disable_gradient_checkpointing)" {
	run ft-run -n --stage sft --do_train --model_name_or_path m --dataset d --output_dir o
	assert_output --regexp "ft-train .*--gradient_checkpointing --device auto"
	run ft-run -n --stage sft --do_train --model_name_or_path m --dataset d --output_dir o \
		--disable_gradient_checkpointing true
	assert_success
	refute_output --partial "gradient_checkpointing"
	run ft-run -n --stage sft --do_train --model_name_or_path m --dataset d --output_dir o \
		--disable_gradient_checkpointing true --gradient_checkpointing true
	assert_output --partial "--gradient_checkpointing"
	run ft-run -n --stage sft --do_train --model_name_or_path m --dataset d --output_dir o \
		--gradient_checkpointing false
	assert_output --partial "--gradient_checkpointing=false"
	run ft-run -n --stage sft --do_train --model_name_or_path m --dataset d --output_dir o \
		--disable_gradient_checkpointing maybe --use_cpu sometimes
	assert_failure 1
	assert_output --partial "disable_gradient_checkpointing 'maybe': expected true or false"
	assert_output --partial "use_cpu 'sometimes': expected true or false"
}

@test "ft-run: disable_shuffling and train_sampling_strategy sequential keep the order; use_cpu; value checks" {
	for s in "--disable_shuffling true" "--train_sampling_strategy sequential"; do
		run ft-run -n --stage sft --do_train --model_name_or_path m --dataset d --output_dir o $s
		assert_success
		assert_output --regexp "ft-pack .*--shuffle=false"
	done
	run ft-run -n --stage sft --do_train --model_name_or_path m --dataset d --output_dir o
	refute_output --partial "shuffle"
	run ft-run -n --stage sft --do_train --model_name_or_path m --dataset d --output_dir o --use_cpu true
	assert_output --regexp "ft-train .*--device cpu"
	refute_output --partial "auto"
	run ft-run -n --stage sft --do_train --model_name_or_path m --dataset d --output_dir o \
		--num_beams 1 --ignore_pad_token_for_loss true --average_tokens_across_devices true
	assert_success
	run --separate-stderr ft-run -n --stage sft --do_train --model_name_or_path m --dataset d --output_dir o \
		--num_beams 4 --ignore_pad_token_for_loss false --train_sampling_strategy group_by_length
	assert_failure 1
	[[ "$stderr" == *"num_beams 4 with do_sample true is transformers' beam sampling"* ]]
	[[ "$stderr" == *"ignore_pad_token_for_loss false is not supported: ft never trains on padding tokens"* ]]
	[[ "$stderr" == *"train_sampling_strategy group_by_length"* ]]
	# beam search proper goes to ft-generate
	run ft-run -n chat --model_name_or_path m --template qwen --num_beams 4 --do_sample false --length_penalty 0.5
	assert_success
	assert_output --regexp "ft-generate .*--num_beams 4 .*--length_penalty 0.5"
}

@test "ft-run -v names the trainer settings with no effect and why" {
	run --separate-stderr ft-run -v -n --stage sft --do_train --model_name_or_path m --dataset d --output_dir o \
		--use_liger_kernel true --swanlab_project p --torch_compile true --upcast_layernorm true
	assert_success
	[[ "$stderr" == *"use_liger_kernel accepted with no effect: fused kernels for torch"* ]]
	[[ "$stderr" == *"swanlab_project accepted with no effect: an experiment tracker's"* ]]
	[[ "$stderr" == *"torch_compile accepted with no effect: ft is compiled C and CUDA"* ]]
	[[ "$stderr" == *"upcast_layernorm accepted with no effect"* ]]
}
