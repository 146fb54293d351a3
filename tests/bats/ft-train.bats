#!/usr/bin/env bats
# ft-train: flags, errors, outputs, checkpoints, resume equality, SIGINT.
# Batches: tests/fixtures/trainer/{train,val}.jsonl (16 and 4 batches of
# 2 x 16 tokens for tiny-llama, made by tests/reference/make_trainer_fixtures.py)
# turned into streams with ft-cat --encode.
load helper

MODEL="$FIXTURES/models/tiny-llama"
# a tiny model: threads only add overhead, and spin badly on a busy machine
export OMP_NUM_THREADS=1

setup() {
	cd "$BATS_TEST_TMPDIR"
	# no ft-cat is a broken build: fail here rather than skip every test
	command -v ft-cat >/dev/null || { echo "ft-cat is not built (run make)" >&2; return 1; }
	ft-cat --encode < "$FIXTURES/trainer/train.jsonl" > train.zst
	ft-cat --encode < "$FIXTURES/trainer/val.jsonl" > val.zst
}
# the fields that must not depend on timing
steady() { jq -c '{current_steps, total_steps, loss, eval_loss, lr, epoch, grad_norm, total_tokens}' "$1"; }
train() { ft-train --model_name_or_path "$MODEL" --train train.zst --output_dir out "$@"; }

@test "--help: usage, every section, EXIT STATUS and an example pipeline" {
	run ft-train --help
	assert_success
	assert_output --partial "Usage: ft-train"
	assert_output --partial "EXIT STATUS"
	assert_output --partial "| ft-pack"
	assert_output --partial "--resume_from_checkpoint"
}

@test "no arguments: usage on stderr, exit 2" {
	run -2 ft-train
	assert_output --partial "Usage: ft-train"
}

@test "unknown flag: exit 2 naming it" {
	run -2 train --no_such_flag 3
	assert_output --partial "unknown option --no_such_flag"
	assert_output --partial "Try 'ft-train --help'"
}

@test "a flag of another tool: exit 2 naming the owner" {
	run -2 train --dataset alpaca_en_demo
	assert_output --partial "--dataset belongs to ft-tokenize"
	run -2 train --neat_packing true
	assert_output --partial "belongs to ft-pack"
	run -2 train --export_dir x
	assert_output --partial "belongs to ft-merge"
}

@test "bad values: exit 2" {
	run -2 train --learning_rate abc
	assert_output --partial "not a number"
	run -2 train --lr_scheduler_type cosin
	assert_output --partial "cosine_with_restarts"
	run -2 train --optim sgd
	assert_output --partial "adamw_torch"
	run -2 train --finetuning_type qlora
	run -2 train --lora_target q_proj,z_proj
	assert_output --partial "z_proj"
	run -2 train --stage ppo
	assert_output --partial "--stage ppo needs --reward_model"
	run -2 train --device gpu
	assert_output --partial "'gpu' is not a device"
	run -2 train --device cuda:x
	assert_output --partial "bad device index"
	run -2 ft-train --model_name_or_path "$MODEL" --output_dir out
	assert_output --partial "--train"
	# the optimizer ft-train has, by its transformers name
	run train --optim adamw_torch --max_steps 1 -q --output_dir optim
	assert_success
}

@test "--device: cuda without a usable GPU fails in one line; auto trains on the CPU and says so" {
	need_jq
	# no backend at all (FT_CUDA_LIB names the only place looked at)
	FT_CUDA_LIB=/nonexistent/libft_cuda.so run -1 --separate-stderr train --device cuda --max_steps 1
	assert_equal "$stderr" "ft-train: --device cuda: FT_CUDA_LIB=/nonexistent/libft_cuda.so: no such file"
	[ ! -e out ]
	FT_CUDA_LIB=/nonexistent/libft_cuda.so run -0 --separate-stderr train --device auto --max_steps 2
	[[ "$stderr" == *"note: --device auto: running on the CPU (FT_CUDA_LIB=/nonexistent"* ]]
	run jq -r .ft.device out/trainer_state.json
	assert_output cpu
	# the same run with the default device: identical log
	train --max_steps 2 -q --output_dir cpu 2>/dev/null
	diff <(steady out/trainer_log.jsonl) <(steady cpu/trainer_log.jsonl)
	# the backend of this tree (built where nvcc is), on a machine without a GPU
	if [ -e "$BATS_TEST_DIRNAME/../../build/libft_cuda.so" ] && ! nvidia-smi -L >/dev/null 2>&1; then
		run -1 --separate-stderr train --device cuda:0 --max_steps 1 --output_dir c0
		[[ "$stderr" == "ft-train: --device cuda:0: CUDA: cudaGetDeviceCount"* ]]
		[ "$(printf '%s\n' "$stderr" | wc -l)" -eq 1 ]
	fi
}

@test "stage mismatch with the batches' header: exit 1" {
	sed '1s/"stage": "sft"/"stage": "pt"/' "$FIXTURES/trainer/train.jsonl" | ft-cat --encode > pt.zst
	run -1 ft-train --model_name_or_path "$MODEL" --train pt.zst --output_dir out --stage sft
	assert_output --partial "packed for stage 'pt'"
	[ ! -e out ]
}

@test "--per_device_train_batch_size differing from the batches: exit 1 before training" {
	run -1 train --per_device_train_batch_size 4
	assert_output --partial "does not match the batches (batch_size 2"
	[ ! -e out ]
	run train --per_device_train_batch_size 2 --max_steps 1
	assert_success
}

@test "bad inputs: not a stream, a directory without manifest, a missing model: exit 1" {
	echo "hello" > junk.zst
	run -1 ft-train --model_name_or_path "$MODEL" --train junk.zst --output_dir out
	mkdir empty
	run -1 ft-train --model_name_or_path "$MODEL" --train empty --output_dir out
	assert_output --partial "manifest"
	run -1 ft-train --model_name_or_path nowhere --train train.zst --output_dir out --max_steps 1
	mkdir badman && echo '{"batch_size": 2, "seq_len": 16}' > badman/manifest.json
	run -1 ft-train --model_name_or_path "$MODEL" --train badman --output_dir out
	assert_output --partial "badman/manifest.json"
	[ ! -e out ]
}

@test "non-empty output_dir needs --overwrite_output_dir" {
	mkdir out && touch out/something
	run -1 train --max_steps 1
	assert_output --partial "--overwrite_output_dir"
	run train --max_steps 1 --overwrite_output_dir
	assert_success
}

@test "lora run: adapter, log lines with LLaMA-Factory's fields, results, checkpoints, save_total_limit" {
	need_jq
	run train --val val.zst --finetuning_type lora --lora_rank 4 --lora_target q_proj,v_proj \
		--learning_rate 1e-3 --num_train_epochs 1.5 --gradient_accumulation_steps 3 \
		--lr_scheduler_type cosine --warmup_ratio 0.1 --logging_steps 2 --save_steps 3 \
		--save_total_limit 2 --eval_steps 4 -q
	assert_success
	# ceil(16/3) = 6 steps per epoch, ceil(1.5 * 6) = 9 steps
	[ -f out/adapter_model.safetensors ] && [ -f out/adapter_config.json ]
	[ "$(jq -r .r out/adapter_config.json)" = 4 ]
	[ "$(ls -d out/checkpoint-* | xargs -n1 basename | sort -V | tr '\n' ' ')" = "checkpoint-6 checkpoint-9 " ]
	for f in adapter_model.safetensors optimizer.safetensors scheduler.json rng_state.json trainer_state.json; do
		[ -f out/checkpoint-9/$f ]
	done
	[ "$(jq -s 'map(select(.loss)) | map(.current_steps) | join(",")' -r out/trainer_log.jsonl)" = "2,4,6,8" ]
	[ "$(jq -s 'map(select(.eval_loss)) | map(.current_steps) | join(",")' -r out/trainer_log.jsonl)" = "4,8,9" ]
	jq -s -e 'map(select(.loss)) | all(has("lr") and has("epoch") and has("percentage") and has("elapsed_time")
		and has("remaining_time") and has("throughput") and .total_steps == 9)' out/trainer_log.jsonl
	[ "$(jq -s '.[0].epoch' out/trainer_log.jsonl)" = 0.375 ]
	# HF's epoch: pass + micro-batches done / batches per pass = 1 + 9/16
	jq -e '.eval_loss and .perplexity and .train_loss and .train_runtime and .epoch == 1.5625' out/all_results.json
	jq -e '.train_loss and (has("eval_loss") | not)' out/train_results.json
	jq -e '.global_step == 9 and .max_steps == 9 and (.log_history | length) > 4' out/trainer_state.json
}

@test "full fine-tuning writes a HF model directory" {
	run train --finetuning_type full --max_steps 2 -q
	assert_success
	[ -f out/config.json ] && [ -f out/model.safetensors ] && [ -f out/checkpoint-2/model.safetensors ]
}

@test "freeze fine-tuning and gradient checkpointing run" {
	run train --finetuning_type freeze --freeze_trainable_layers 1 --freeze_trainable_modules mlp \
		--gradient_checkpointing --max_steps 2 -q
	assert_success
	[ -f out/model.safetensors ]
}

@test "resume from a checkpoint: the log after it equals the uninterrupted run's" {
	need_jq
	args=(--finetuning_type lora --learning_rate 5e-3 --max_steps 12 --gradient_accumulation_steps 2
	      --lr_scheduler_type cosine --warmup_steps 2 --logging_steps 1 --save_steps 5 -q)
	run train "${args[@]}"
	assert_success
	mkdir b && cp -r out/checkpoint-5 b/
	head -n 5 out/trainer_log.jsonl > b/trainer_log.jsonl
	run ft-train --model_name_or_path "$MODEL" --train train.zst --output_dir b "${args[@]}" \
		--resume_from_checkpoint true
	assert_success
	diff <(steady out/trainer_log.jsonl) <(steady b/trainer_log.jsonl)
	cmp out/adapter_model.safetensors b/adapter_model.safetensors
	[ "$(jq .train_loss out/train_results.json)" = "$(jq .train_loss b/train_results.json)" ]
}

@test "resume with LoRA dropout: the dropout masks continue, so the run still matches" {
	need_jq
	args=(--finetuning_type lora --lora_dropout 0.2 --learning_rate 5e-3 --max_steps 10
	      --logging_steps 1 --save_steps 4 -q)
	run train "${args[@]}"
	assert_success
	mkdir b && cp -r out/checkpoint-4 b/
	head -n 4 out/trainer_log.jsonl > b/trainer_log.jsonl
	run ft-train --model_name_or_path "$MODEL" --train train.zst --output_dir b "${args[@]}" \
		--resume_from_checkpoint b/checkpoint-4
	assert_success
	diff <(steady out/trainer_log.jsonl) <(steady b/trainer_log.jsonl)
	# and dropout is really on: a run without it differs
	run ft-train --model_name_or_path "$MODEL" --train train.zst --output_dir c --finetuning_type lora \
		--learning_rate 5e-3 --max_steps 10 --logging_steps 1 -q
	! diff -q <(steady out/trainer_log.jsonl) <(steady c/trainer_log.jsonl) || false
}

@test "--adapter_name_or_path: the adapter trains with its own lora_dropout (adapter_config.json), as PeftModel.from_pretrained" {
	need_jq
	run train --lora_dropout 0.2 --learning_rate 5e-3 --max_steps 2 -q
	assert_success
	[ "$(jq .lora_dropout out/adapter_config.json)" = 0.2 ]
	more=(--model_name_or_path "$MODEL" --train train.zst --learning_rate 5e-3 --max_steps 3 --logging_steps 1)
	ft-train "${more[@]}" -q --adapter_name_or_path out --output_dir a
	ft-train "${more[@]}" -q --adapter_name_or_path out --output_dir b --lora_dropout 0.2
	run ft-train "${more[@]}" --adapter_name_or_path out --output_dir c --lora_dropout 0
	assert_success
	assert_output --partial "note: --lora_dropout 0: the adapter out trains with its own lora_dropout 0.2"
	cmp a/adapter_model.safetensors b/adapter_model.safetensors
	cmp a/adapter_model.safetensors c/adapter_model.safetensors
	[ "$(jq .lora_dropout c/adapter_config.json)" = 0.2 ]
	# the same adapter saved with lora_dropout 0 trains without dropout: it differs
	mkdir nodrop && cp out/adapter_model.safetensors nodrop/
	jq '.lora_dropout = 0' out/adapter_config.json > nodrop/adapter_config.json
	ft-train "${more[@]}" -q --adapter_name_or_path nodrop --output_dir d
	! cmp -s a/adapter_model.safetensors d/adapter_model.safetensors || false
	# a lora_dropout that is not a probability is refused, naming the file
	jq '.lora_dropout = "x"' out/adapter_config.json > nodrop/adapter_config.json
	run ft-train "${more[@]}" -q --adapter_name_or_path nodrop --output_dir e
	[ "$status" -ne 0 ]
	assert_output --partial "nodrop/adapter_config.json: lora_dropout is not a number in [0, 1)"
}

@test "resume refuses other settings" {
	run train --max_steps 4 --save_steps 2 -q
	assert_success
	run -1 train --max_steps 4 --gradient_accumulation_steps 2 --resume_from_checkpoint out/checkpoint-2
	assert_output --partial "gradient_accumulation_steps"
	run -1 train --max_steps 4 --resume_from_checkpoint out/nothing
}

@test "SIGINT: finishes the step, writes a checkpoint, exits 1 with the resume command; resuming matches" {
	need_jq
	args=(--finetuning_type lora --max_steps 4000 --logging_steps 1 --save_steps 100000 -q)
	ft-train --model_name_or_path "$MODEL" --train train.zst --output_dir a "${args[@]}"
	ft-train --model_name_or_path "$MODEL" --train train.zst --output_dir out "${args[@]}" 2> err &
	pid=$!
	for i in $(seq 100); do [ -s out/trainer_log.jsonl ] && break; sleep 0.05; done
	sleep 0.1
	kill -INT $pid
	rc=0; wait $pid || rc=$?
	[ "$rc" = 1 ]
	grep -q "interrupted (SIGINT) at step" err
	grep -q "resume with:" err
	ck=$(ls -d out/checkpoint-* | head -n 1)
	[ -f "$ck/optimizer.safetensors" ] && [ -f "$ck/trainer_state.json" ]
	grep -q -- "--resume_from_checkpoint $ck" err
	[ ! -e out/train_results.json ]
	run ft-train --model_name_or_path "$MODEL" --train train.zst --output_dir out "${args[@]}" \
		--resume_from_checkpoint "$ck"
	assert_success
	diff <(steady a/trainer_log.jsonl) <(steady out/trainer_log.jsonl)
}

@test "--do_eval alone on a trained adapter" {
	need_jq
	train --max_steps 2 -q
	run ft-train --model_name_or_path "$MODEL" --adapter_name_or_path out --do_eval --val val.zst \
		--output_dir ev -q
	assert_success
	jq -e '.eval_loss > 0 and .perplexity > 1' ev/eval_results.json
	run -2 ft-train --model_name_or_path "$MODEL" --do_eval --output_dir ev2
	assert_output --partial "--val"
}

@test "YAML config with overrides; keys of other tools in it are ignored with a warning" {
	need_jq
	cat > cfg.yaml <<-YAML
	model_name_or_path: $MODEL
	stage: sft
	do_train: true
	finetuning_type: lora
	lora_target: all
	dataset: identity
	template: llama3
	report_to: none
	output_dir: out
	max_steps: 3
	logging_steps: 1
	YAML
	run ft-train cfg.yaml --train train.zst max_steps=2
	assert_success
	assert_output --partial "'dataset' ignored: it belongs to ft-tokenize"
	[ "$(jq -s 'map(select(.loss)) | length' out/trainer_log.jsonl)" = 2 ]
}

@test "batches on stdin: one epoch works, a second is refused" {
	run bash -c "ft-train --model_name_or_path '$MODEL' --train - --output_dir out --num_train_epochs 1 -q < train.zst"
	assert_success
	run bash -c "ft-train --model_name_or_path '$MODEL' --train - --output_dir out2 --num_train_epochs 2 -q < train.zst"
	assert_failure 2
	assert_output --partial "read only once"
}

@test "--bf16 is accepted with a note; --plot_loss draws the loss" {
	run train --bf16 --max_steps 2 --logging_steps 1 --plot_loss
	assert_success
	assert_output --partial "float32"
	[ -s out/training_loss.png ]
}

@test "progress is drawn when forced, not otherwise" {
	run --separate-stderr env FT_FORCE_PROGRESS=1 ft-train --model_name_or_path "$MODEL" --train train.zst --output_dir p --max_steps 3
	assert_success
	[[ "$stderr" == *"/3 ["* ]]
	[ -z "$output" ]
}

@test "pipeline: ft-pack directory output (manifest.json, val/) and a pipe from ft-pack" {
	need_jq
	ft-cat --encode < "$FIXTURES/trainer/tokens.jsonl" > tok.zst
	ft-pack -q --per_device_train_batch_size 2 --val_size 8 -o packed/ tok.zst
	run ft-train --model_name_or_path "$MODEL" --train packed --val packed/val --output_dir out \
		--num_train_epochs 2 --logging_steps 4 -q
	assert_success
	# 16 batches, 2 epochs
	[ "$(jq .global_step out/trainer_state.json)" = 32 ]
	jq -e '.eval_loss and .perplexity' out/all_results.json
	run bash -c "set -o pipefail; ft-pack -q --per_device_train_batch_size 4 tok.zst |
		ft-train --model_name_or_path '$MODEL' --train - --output_dir piped --num_train_epochs 1 -q"
	assert_success
	[ "$(jq .global_step piped/trainer_state.json)" = 10 ]
}

@test "--logging_strategy/--eval_strategy/--save_strategy epoch: at each epoch's end (16 batches, accumulation 4)" {
	need_jq
	run train --val val.zst --num_train_epochs 3 --gradient_accumulation_steps 4 --logging_strategy epoch \
		--eval_strategy epoch --save_strategy epoch --logging_steps 1 --save_steps 1 -q
	assert_success
	# 4 steps per epoch: logs, evaluations and checkpoints at 4, 8, 12 (steps ignore *_steps)
	[ "$(jq -s -c 'map(select(.loss)) | map(.current_steps)' out/trainer_log.jsonl)" = "[4,8,12]" ]
	[ "$(jq -s -c 'map(select(.eval_loss)) | map(.current_steps)' out/trainer_log.jsonl)" = "[4,8,12]" ]
	[ "$(ls -d out/checkpoint-* | sed 's/.*-//' | sort -n | tr '\n' ' ')" = "4 8 12 " ]
	# the epoch's logged loss is the mean of its 4 steps, as with --logging_steps 4
	run train --num_train_epochs 3 --gradient_accumulation_steps 4 --logging_steps 4 -q --output_dir s
	diff <(jq -c 'select(.loss) | .loss' out/trainer_log.jsonl) <(jq -c 'select(.loss) | .loss' s/trainer_log.jsonl)
}

@test "--save_strategy no: no checkpoint, the final model still saved; --logging_strategy no; bad names" {
	need_jq
	run train --max_steps 4 --save_strategy no --logging_strategy no --logging_steps 1 -q
	assert_success
	! ls -d out/checkpoint-* 2>/dev/null || false
	[ -f out/adapter_model.safetensors ]
	[ "$(jq -s 'map(select(.loss)) | length' out/trainer_log.jsonl)" = 0 ]
	run train --val val.zst --max_steps 4 --eval_strategy no --logging_steps 1 -q --output_dir e
	assert_success
	[ "$(jq -s 'map(select(.eval_loss)) | length' e/trainer_log.jsonl)" = 0 ]
	run -2 train --save_strategy best
	assert_output --partial "steps, epoch, no"
	run -2 train --logging_strategy epochs
	assert_output --partial "--logging_strategy"
}

# ft-pack --num_train_epochs N writes N reshuffled epochs; epoch e must read
# the e-th.  Reference: the same records relabelled as one long epoch
# (same steps, same schedule when batches divide by the accumulation).
multi_epoch_pack() {
	ft-cat --encode < "$FIXTURES/trainer/tokens.jsonl" > tok.zst
	ft-pack -q --per_device_train_batch_size 2 --num_train_epochs 3 -o multi/ tok.zst
}

@test "per-epoch reshuffle: epoch e reads ft-pack's e-th epoch, in order" {
	need_jq
	multi_epoch_pack
	[ "$(jq .epochs multi/manifest.json)" = 3 ]
	ft-cat multi | jq -c 'if .kind then .meta.epochs = 1 | .meta.counts.batches *= 3 else . end' |
		ft-cat --encode > flat.zst
	args=(--logging_steps 1 --gradient_accumulation_steps 2 --learning_rate 5e-3 -q)
	run ft-train --model_name_or_path "$MODEL" --train multi --output_dir a --num_train_epochs 3 "${args[@]}"
	assert_success
	run ft-train --model_name_or_path "$MODEL" --train flat.zst --output_dir b --num_train_epochs 1 "${args[@]}"
	assert_success
	[ "$(jq -s "map(select(.loss)) | length" a/trainer_log.jsonl)" = 30 ]
	diff <(jq -c '{current_steps, loss, lr, grad_norm}' a/trainer_log.jsonl) \
	     <(jq -c '{current_steps, loss, lr, grad_norm}' b/trainer_log.jsonl)
	# and a one-epoch pack, reread every epoch, trains differently
	ft-pack -q --per_device_train_batch_size 2 -o one.zst tok.zst
	run ft-train --model_name_or_path "$MODEL" --train one.zst --output_dir c --num_train_epochs 3 "${args[@]}"
	assert_success
	! diff -q <(jq -c .loss a/trainer_log.jsonl) <(jq -c .loss c/trainer_log.jsonl) || false
}

@test "per-epoch reshuffle: resuming inside the second packed epoch matches the uninterrupted run" {
	need_jq
	multi_epoch_pack
	args=(--logging_steps 1 --gradient_accumulation_steps 2 --learning_rate 5e-3 --num_train_epochs 3
	      --save_steps 11 -q)
	run ft-train --model_name_or_path "$MODEL" --train multi --output_dir out "${args[@]}"
	assert_success
	mkdir b && cp -r out/checkpoint-11 b/
	head -n 11 out/trainer_log.jsonl > b/trainer_log.jsonl
	run ft-train --model_name_or_path "$MODEL" --train multi --output_dir b "${args[@]}" \
		--resume_from_checkpoint b/checkpoint-11
	assert_success
	diff <(steady out/trainer_log.jsonl) <(steady b/trainer_log.jsonl)
	cmp out/adapter_model.safetensors b/adapter_model.safetensors
	# other data under the checkpoint is refused
	ft-pack -q --per_device_train_batch_size 2 --num_train_epochs 2 -o two/ tok.zst
	run -1 ft-train --model_name_or_path "$MODEL" --train two --output_dir b "${args[@]}" \
		--resume_from_checkpoint b/checkpoint-11
	assert_output --partial "packed for 3 epochs; these hold 2"
}

@test "per-epoch reshuffle: stdin carries as many epochs as were packed; a note when orders repeat" {
	need_jq
	ft-cat --encode < "$FIXTURES/trainer/tokens.jsonl" > tok.zst
	run bash -c "set -o pipefail; ft-pack -q --per_device_train_batch_size 4 --num_train_epochs 2 tok.zst |
		ft-train --model_name_or_path '$MODEL' --train - --output_dir piped --num_train_epochs 2 -q"
	assert_success
	[ "$(jq .global_step piped/trainer_state.json)" = 20 ]
	run bash -c "ft-pack -q --per_device_train_batch_size 4 --num_train_epochs 2 tok.zst |
		ft-train --model_name_or_path '$MODEL' --train - --output_dir p3 --num_train_epochs 3"
	[ "$status" -eq 2 ]
	assert_output --partial "ft-pack --num_train_epochs 3"
	ft-pack -q --per_device_train_batch_size 4 -o one.zst tok.zst
	run --separate-stderr ft-train --model_name_or_path "$MODEL" --train one.zst --output_dir n \
		--num_train_epochs 2 --logging_steps 100
	assert_success
	[[ "$stderr" == *"one.zst holds 1 epoch of batches and this run makes 2"* ]]
	[[ "$stderr" == *"ft-pack --num_train_epochs 2"* ]]
	run --separate-stderr ft-train --model_name_or_path "$MODEL" --train one.zst --output_dir q \
		--num_train_epochs 2 --logging_steps 100 -q
	[[ "$stderr" != *"note:"* ]]
	ft-pack -q --per_device_train_batch_size 4 --num_train_epochs 2 -o two.zst tok.zst
	run -2 ft-train --model_name_or_path "$MODEL" --train two.zst,one.zst --output_dir m -q
	assert_output --partial "holds 2 epochs of batches"
	run -2 ft-train --model_name_or_path "$MODEL" --train one.zst --val two.zst --output_dir m -q
	assert_output --partial "--val: two.zst holds 2 epochs of training batches"
}

@test "--train_from_scratch with --config: full training from a random init" {
	run ft-train --train_from_scratch --config "$MODEL/config.json" --finetuning_type full \
		--train train.zst --output_dir out --max_steps 2 -q
	assert_success
	[ -f out/model.safetensors ] && [ -f out/config.json ]
	run -2 ft-train --train_from_scratch --train train.zst --output_dir out2 --max_steps 1
	assert_output --partial "--config"
}

# The tool end to end against PyTorch: the 10-step runs of
# tests/fixtures/parity/README.md (20 micro-batches, accumulation 2, AdamW
# with weight decay 0.1, cosine with 2 warmup steps, clipping at 1.0);
# every logged step loss within 1e-5 relative of transformers'.
PARITY_REF=trainer/parity_losses.txt

@test "parity with PyTorch through the tool: lora from PEFT's initial adapter" {
	need_jq
	parity_run lora lora --learning_rate 2e-3 --adapter_name_or_path "$FIXTURES/parity/llama-lora-init"
}

@test "parity with PyTorch through the tool: freeze (last layer) and full" {
	need_jq
	parity_run freeze freeze --learning_rate 1e-3 --freeze_trainable_layers 1
	parity_run full full --learning_rate 1e-3
}

# the schedules' own values are tests/unit/test_sched.c's (transformers'
# get_scheduler with scheduler_specific_kwargs, within 2 ulp); here the
# flag, a YAML mapping, and the refusals
@test "--lr_scheduler_kwargs: JSON on the command line, a mapping in YAML; transformers' refusals" {
	need_jq
	run ft-train --model_name_or_path "$MODEL" --train train.zst --output_dir c --max_steps 6 --logging_steps 1 \
		-q --learning_rate 1e-3 --lr_scheduler_type cosine_with_min_lr --lr_scheduler_kwargs '{"min_lr_rate": 0.5}'
	assert_success
	# half-cosine from 1e-3 down to 5e-4 instead of 0: the last step's lr stays above the floor
	jq -s -e '[.[] | select(.lr) | .lr] | (.[0] == 0.001) and (.[-1] > 0.0005) and (.[-1] < 0.001)' c/trainer_log.jsonl
	printf 'lr_scheduler_type: warmup_stable_decay\nlr_scheduler_kwargs:\n  num_decay_steps: 2\n  decay_type: linear\n' > w.yaml
	run ft-train w.yaml --model_name_or_path "$MODEL" --train train.zst --output_dir w --max_steps 6 \
		--logging_steps 1 -q --learning_rate 1e-3
	assert_success
	[ "$(jq -s -c '[.[] | select(.lr) | .lr]' w/trainer_log.jsonl)" = '[0.001,0.001,0.001,0.001,0.001,0.0005]' ]
	run -2 ft-train --model_name_or_path "$MODEL" --train train.zst --output_dir x --lr_scheduler_type cosine_with_min_lr
	assert_output --partial "One of min_lr or min_lr_rate should be set"
	run -2 ft-train --model_name_or_path "$MODEL" --train train.zst --output_dir x --lr_scheduler_kwargs '{"min_lr": 1}'
	assert_output --partial "the linear schedule takes no argument 'min_lr'"
	run -2 ft-train --model_name_or_path "$MODEL" --train train.zst --output_dir x --lr_scheduler_kwargs 'min_lr'
	assert_output --partial "expected a mapping"
	run -2 ft-train --model_name_or_path "$MODEL" --train train.zst --output_dir x --lr_scheduler_type reduce_lr_on_plateau
	assert_output --partial "not implemented in ft yet"
}

@test "--eval_on_start: an evaluation before the first step (the untrained model's), again when resuming" {
	need_jq
	ft-cat --encode < "$FIXTURES/trainer/val.jsonl" > val.zst
	args=(--val val.zst --eval_steps 2 --max_steps 4 --logging_steps 1 --save_steps 2 -q --eval_on_start)
	run train "${args[@]}"
	assert_success
	[ "$(jq -s -c '[.[] | select(.eval_loss) | .current_steps]' out/trainer_log.jsonl)" = '[0,2,4]' ]
	# step 0 evaluates the model as it starts: a new adapter (B = 0) is the base
	run ft-train --model_name_or_path "$MODEL" --val val.zst --do_eval --output_dir e0 -q
	assert_success
	[ "$(jq -s '[.[] | select(.eval_loss)][0].eval_loss' out/trainer_log.jsonl)" = "$(jq .eval_loss e0/eval_results.json)" ]
	# resumed, HF's loop evaluates again before its first step
	mkdir b && cp -r out/checkpoint-2 b/ && head -n 4 out/trainer_log.jsonl > b/trainer_log.jsonl
	run ft-train --model_name_or_path "$MODEL" --train train.zst --output_dir b "${args[@]}" \
		--resume_from_checkpoint b/checkpoint-2
	assert_success
	[ "$(jq -s -c '[.[] | select(.eval_loss) | .current_steps]' b/trainer_log.jsonl)" = '[0,2,2,4]' ]
	cmp out/adapter_model.safetensors b/adapter_model.safetensors
	run -2 train --eval_on_start --max_steps 1
	assert_output --partial "evaluation requires an eval dataset"
}

@test "--ignore_data_skip: a resumed run reads its epoch from the first batch again, as HF's" {
	need_jq
	# learning rate 0: the weights stay, so a batch read again logs the same loss
	args=(--max_steps 4 --logging_steps 1 --save_steps 2 -q --learning_rate 0 --gradient_accumulation_steps 2)
	run train "${args[@]}"
	assert_success
	for d in skip noskip; do
		mkdir $d && cp -r out/checkpoint-2 $d/ && head -n 2 out/trainer_log.jsonl > $d/trainer_log.jsonl
	done
	run ft-train --model_name_or_path "$MODEL" --train train.zst --output_dir noskip "${args[@]}" \
		--resume_from_checkpoint noskip/checkpoint-2 --ignore_data_skip
	assert_success
	losses() { jq -s -c '[.[] | select(.loss) | .loss]' "$1"; }
	[ "$(losses noskip/trainer_log.jsonl | jq '.[2] == .[0] and .[3] == .[1]')" = true ]
	# HF's epoch counts the batches read in the epoch: back to the start
	[ "$(jq -s '[.[] | select(.loss)][2].epoch' noskip/trainer_log.jsonl)" = "$(jq -s '[.[] | select(.loss)][0].epoch' out/trainer_log.jsonl)" ]
	# without it the run continues where it stopped
	run ft-train --model_name_or_path "$MODEL" --train train.zst --output_dir skip "${args[@]}" \
		--resume_from_checkpoint skip/checkpoint-2
	assert_success
	[ "$(losses skip/trainer_log.jsonl)" = "$(losses out/trainer_log.jsonl)" ]
	[ "$(losses out/trainer_log.jsonl | jq '.[2] != .[0]')" = true ]
}

@test "--eval_delay: no evaluation before that step (DefaultFlowCallback's eval_delay <= global_step)" {
	need_jq
	ft-cat --encode < "$FIXTURES/trainer/val.jsonl" > val.zst
	evals() { jq -s -c '[.[] | select(.eval_loss) | .current_steps]' "$1/trainer_log.jsonl"; }
	run train --val val.zst --eval_steps 2 --max_steps 7 --logging_steps 1 -q
	assert_success
	[ "$(evals out)" = '[2,4,6,7]' ]
	run ft-train --model_name_or_path "$MODEL" --train train.zst --output_dir d --val val.zst --eval_steps 2 \
		--max_steps 7 --logging_steps 1 -q --eval_delay 3
	assert_success
	[ "$(evals d)" = '[4,6,7]' ]
	run -2 train --eval_delay -1
	assert_output --partial "--eval_delay must be >= 0"
}
