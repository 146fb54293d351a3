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
	assert_output --partial "--learning_rate 5e-4 --num_train_epochs 20.0 --plot_loss --fp16 --train saves/cail-data"
}

@test "ft-run: config file, key=value overrides, notes for settings without effect" {
	printf 'stage: sft\nmodel_name_or_path: m\ndataset: d\noutput_dir: o\ntrust_remote_code: true\nlearning_rate: 1.0e-4\nval_size: 0.1\n' > c.yaml
	run --separate-stderr ft-run -v -n train c.yaml learning_rate=2e-4 --do_sample false
	assert_success
	assert_output --partial "--learning_rate 2e-4"
	assert_output --partial "--val o-data/val"
	# ft-train's default of 3 epochs, packed reshuffled as the HF Trainer samples them
	assert_output --partial "--num_train_epochs 3 --overwrite_output_dir --output_dir o-data -"
	[[ "$stderr" == *"c.yaml:5: trust_remote_code accepted with no effect"* ]]
}

@test "ft-run: predict with eval_dataset and export/chat plans" {
	run ft-run -n --stage sft --model_name_or_path m --dataset d --eval_dataset e --output_dir o --do_train false --do_predict --do_sample false
	assert_success
	assert_output --partial "ft-tokenize --stage sft --model_name_or_path m --dataset e --predict_with_generate"
	assert_output --partial "ft-generate --model_name_or_path m --do_sample=false --do_predict --output_dir o/predict"
	run ft-run -n export --model_name_or_path m --adapter_name_or_path a --export_dir x --export_size 2
	assert_success
	assert_output --partial "ft-merge --model_name_or_path m --adapter_name_or_path a --export_dir x --export_size 2"
	run ft-run -n chat --model_name_or_path m --template qwen
	assert_success
	assert_output --partial "ft-generate -i --model_name_or_path m --template qwen"
}

@test "ft-run refuses unsupported settings and bad input" {
	run ft-run -n --stage sft --dataset d --output_dir o --deepspeed ds.json
	assert_failure 1
	assert_output --partial "'deepspeed' is not supported"
	run ft-run -n --stage ppo --dataset d --output_dir o
	assert_failure 1
	assert_output --partial "pt and sft"
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
