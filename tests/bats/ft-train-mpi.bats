#!/usr/bin/env bats
# mpirun -np 2 ft-train: data parallel on the CPU (lib/train/dist.h,
# docs/DISTRIBUTED.md).  Batches: tests/fixtures/trainer/train.jsonl (16
# micro-batches of 2 x 16 tokens for tiny-llama).  Skipped with a message
# where mpirun or build/libft_mpi.so is absent.
#
# Tolerances.  Two ranks x accumulation 2 add the same four micro-batch
# gradients as one process x accumulation 4, in another order:
# (g0 + g2) + (g1 + g3) against ((g0 + g1) + g2) + g3, so they differ by
# float rounding (~1e-7 relative per element).  The losses of a step are
# computed by the same forward passes on the same weights and summed in
# the same order, so step 1 matches exactly and later steps only through
# weights that differ by the update's rounding; AdamW divides each element
# by its own RMS, so an element whose gradient nearly cancels carries a
# larger relative error, bounded by lr per step.  At lr 1e-4 over 8 steps
# we measured weights within 1.5e-8 (LoRA) and 3.5e-7 (full) and losses
# equal to the last digit: 1e-6 holds with margin and still catches a
# wrong share of batches or a missing sum (errors ~1e-2).
load helper
load mpi_helper

MODEL="$FIXTURES/models/tiny-llama"

setup() {
	cd "$BATS_TEST_TMPDIR"
	command -v ft-cat >/dev/null || { echo "ft-cat is not built (run make)" >&2; return 1; }
	ft-cat --encode < "$FIXTURES/trainer/train.jsonl" > train.zst
}
base() { echo --model_name_or_path "$MODEL" --train train.zst --logging_steps 1 --learning_rate 1e-4 -q; }

compare_with_one_process() {
	local ft=$1 file=$2
	run ft-train $(base) --finetuning_type "$ft" --max_steps 8 --gradient_accumulation_steps 4 \
		--output_dir one --save_strategy no
	assert_success
	run mpi2 ft-train $(base) --finetuning_type "$ft" --max_steps 8 --gradient_accumulation_steps 2 \
		--output_dir two --save_strategy no
	assert_success
	# one log, written once: the same lines as the single process's
	[ "$(wc -l < one/trainer_log.jsonl)" = "$(wc -l < two/trainer_log.jsonl)" ]
	d=$(field_diff one/trainer_log.jsonl two/trainer_log.jsonl loss)
	within "$d" 1e-6 || { echo "loss differs by $d"; return 1; }
	# step 1: the same forward passes on the same weights
	[ "$(jq -s '.[0].loss' one/trainer_log.jsonl)" = "$(jq -s '.[0].loss' two/trainer_log.jsonl)" ]
	w=$("$MAXDIFF" "one/$file" "two/$file")
	within "$w" 1e-6 || { echo "weights differ by $w"; return 1; }
	[ "$(jq .ft.world_size two/trainer_state.json)" = 2 ]
	[ "$(jq .ft.world_size one/trainer_state.json)" = 1 ]
	# every log line says how many ranks made it; one process writes none
	[ "$(jq -s 'map(.world_size) | unique' two/trainer_log.jsonl)" = "$(jq -n '[2]')" ]
	[ "$(jq -s 'map(.world_size) | unique' one/trainer_log.jsonl)" = "$(jq -n '[null]')" ]
}

@test "plain ft-train does not link MPI" {
	! ldd "$FT_ROOT/bin/ft-train" | grep -q libmpi || false
}

@test "2 ranks x accumulation 2 == 1 process x 4: LoRA losses and adapter within 1e-6" {
	need_mpi
	compare_with_one_process lora adapter_model.safetensors
}

@test "2 ranks x accumulation 2 == 1 process x 4: full fine-tuning within 1e-6" {
	need_mpi
	compare_with_one_process full model.safetensors
}

@test "--zero 1 equals plain data parallel bit for bit, checkpoints included" {
	need_mpi
	args=($(base) --finetuning_type full --max_steps 6 --gradient_accumulation_steps 2 --save_steps 3)
	run mpi2 ft-train "${args[@]}" --output_dir dp
	assert_success
	run mpi2 ft-train "${args[@]}" --output_dir z1 --zero 1
	assert_success
	cmp dp/model.safetensors z1/model.safetensors
	# the whole AdamW state in the single-process format
	cmp dp/checkpoint-3/optimizer.safetensors z1/checkpoint-3/optimizer.safetensors
	diff <(jq -c '{current_steps, loss, grad_norm}' dp/trainer_log.jsonl) \
	     <(jq -c '{current_steps, loss, grad_norm}' z1/trainer_log.jsonl)
	[ "$(jq .ft.zero z1/trainer_state.json)" = 1 ]
}

@test "a 2-rank ZeRO-1 checkpoint resumes on 2 ranks bit for bit and on 1 rank within 1e-6" {
	need_mpi
	args=($(base) --finetuning_type lora --learning_rate 1e-3 --max_steps 8 --save_steps 4)
	run mpi2 ft-train "${args[@]}" --gradient_accumulation_steps 2 --output_dir a --zero 1
	assert_success
	for d in b c; do mkdir $d && cp -r a/checkpoint-4 $d/ && head -n 4 a/trainer_log.jsonl > $d/trainer_log.jsonl; done
	run mpi2 ft-train "${args[@]}" --gradient_accumulation_steps 2 --output_dir b --zero 1 \
		--resume_from_checkpoint true
	assert_success
	diff <(jq -c '{current_steps, loss, grad_norm, lr}' a/trainer_log.jsonl) \
	     <(jq -c '{current_steps, loss, grad_norm, lr}' b/trainer_log.jsonl)
	cmp a/adapter_model.safetensors b/adapter_model.safetensors
	# one rank, the same global batch (1 x 4 = 2 x 2)
	run ft-train "${args[@]}" --gradient_accumulation_steps 4 --output_dir c --resume_from_checkpoint true
	assert_success
	d=$(field_diff a/trainer_log.jsonl c/trainer_log.jsonl loss)
	within "$d" 1e-6 || { echo "loss differs by $d"; return 1; }
	within "$("$MAXDIFF" a/adapter_model.safetensors c/adapter_model.safetensors)" 1e-6
	# another global batch is refused, naming both splits
	run -1 ft-train "${args[@]}" --gradient_accumulation_steps 2 --output_dir c --resume_from_checkpoint \
		a/checkpoint-4
	assert_output --partial "2 ranks x gradient_accumulation_steps 2"
}

# ZeRO-1's point is that no rank holds the whole AdamW state; checkpoints
# must not bring it back.  A 24-layer model (hidden 256, P = 17.5M
# trainable parameters: the state is 8P = 140 MB, its largest tensor 688 x
# 256) trains 2 steps on 2 ranks, without checkpoints, with one per step,
# and resumed from the first; each rank's max RSS (/usr/bin/time) may
# exceed the run without checkpoints by P bytes (1/8 of the state) at
# most.  Streaming holds one tensor's pair of moments (8 x 176128 bytes =
# 1.4 MB) and gives back each tensor's mapped pages once read; measured:
# within 1.2 MB of the plain run at the save, below it at the resume.
# Gathering the state on rank 0, as before, measured +101 MB at the save
# (8P, partly under the training's own peak) and loading the whole file
# +186 MB on every rank at the resume.
@test "ZeRO-1 checkpoints stream: a save or a resume adds at most 1/8 of the AdamW state to any rank's max RSS" {
	need_mpi
	[ -x /usr/bin/time ] || skip "/usr/bin/time is absent (apt-get install time)"
	jq '.num_hidden_layers = 24 | .hidden_size = 256 | .intermediate_size = 688 | .head_dim = 64' \
		"$MODEL/config.json" > cfg.json
	zero1_rss_bound
}

# The other nodes of a job without a shared filesystem never get rank 0's
# optimizer.safetensors: only rank 0 reads it at a resume (with or without
# ZeRO-1).  Rank 1 runs in
# a directory whose copy of the checkpoint (named relatively) lacks the
# file.  A 1-rank checkpoint resumed on 2 ZeRO-1 ranks (the same global
# batch) is bit for bit plain data parallel resumed from it.
@test "ZeRO-1 resume: a 1-rank checkpoint on 2 ranks == plain data parallel; only rank 0 reads optimizer.safetensors" {
	need_mpi
	args=($(base) --finetuning_type full --learning_rate 1e-3 --max_steps 8 --save_steps 4)
	run ft-train "${args[@]}" --gradient_accumulation_steps 4 --output_dir one
	assert_success
	mkdir r0 r1
	cp -r one/checkpoint-4 r0/ck
	cp -r one/checkpoint-4 r1/ck
	rm r1/ck/optimizer.safetensors
	two=(--model_name_or_path "$MODEL" --train "$PWD/train.zst" --logging_steps 1 -q --finetuning_type full \
		--learning_rate 1e-3 --max_steps 8 --save_steps 4 --gradient_accumulation_steps 2)
	run mpi2 sh -c 'cd "r$OMPI_COMM_WORLD_RANK" && exec "$@"' sh ft-train "${two[@]}" --zero 1 \
		--resume_from_checkpoint ck --output_dir "$PWD/z"
	assert_success
	run mpi2 ft-train "${two[@]}" --resume_from_checkpoint one/checkpoint-4 --output_dir dp
	assert_success
	cmp z/model.safetensors dp/model.safetensors
	cmp z/checkpoint-8/optimizer.safetensors dp/checkpoint-8/optimizer.safetensors
	diff <(jq -c '{current_steps, loss, grad_norm}' z/trainer_log.jsonl) \
	     <(jq -c '{current_steps, loss, grad_norm}' dp/trainer_log.jsonl)
	# and what one process makes from it, within the header's 1e-6
	within "$("$MAXDIFF" one/model.safetensors z/model.safetensors)" 1e-6
	# plain data parallel too: rank 0 sends every rank the whole state
	# (ft-train-resume-mpi.bats has rank 1 without any of the checkpoint)
	run mpi2 sh -c 'cd "r$OMPI_COMM_WORLD_RANK" && exec "$@"' sh ft-train "${two[@]}" \
		--resume_from_checkpoint ck --output_dir "$PWD/dp1"
	assert_success
	cmp dp1/model.safetensors dp/model.safetensors
}

# Three ranks: slices that end inside tensors on both sides of a middle
# rank, pieces of unequal size.  The streamed checkpoint is plain data
# parallel's, and resuming it streams each rank its slice back.
@test "ZeRO-1 on 3 ranks: the streamed checkpoint is plain data parallel's; it resumes on 3 ranks bit for bit" {
	need_mpi
	mpi3() { mpirun --oversubscribe --allow-run-as-root -np 3 "$@"; }
	args=($(base) --finetuning_type full --max_steps 4 --save_steps 2)
	run mpi3 ft-train "${args[@]}" --output_dir dp
	assert_success
	run mpi3 ft-train "${args[@]}" --output_dir z --zero 1
	assert_success
	cmp dp/checkpoint-2/optimizer.safetensors z/checkpoint-2/optimizer.safetensors
	cmp dp/checkpoint-4/optimizer.safetensors z/checkpoint-4/optimizer.safetensors
	run mpi3 ft-train "${args[@]}" --output_dir r --zero 1 --resume_from_checkpoint z/checkpoint-2
	assert_success
	cmp z/model.safetensors r/model.safetensors
	cmp z/checkpoint-4/optimizer.safetensors r/checkpoint-4/optimizer.safetensors
}

@test "the gradient sum runs beside the backward, with the same numbers as summing after it" {
	need_mpi
	for ft in lora full; do
		run --separate-stderr mpi2 ft-train $(base) -v --finetuning_type $ft --max_steps 4 \
			--gradient_accumulation_steps 2 --gradient_checkpointing --output_dir ov-$ft --save_strategy no
		assert_success
		[[ "$stderr" == *"the gradient sums of 4 steps ran beside the backward"* ]]
		run --separate-stderr env FT_DIST_NO_OVERLAP=1 mpirun --oversubscribe --allow-run-as-root -np 2 \
			ft-train $(base) -v --finetuning_type $ft --max_steps 4 --gradient_accumulation_steps 2 \
			--gradient_checkpointing --output_dir after-$ft --save_strategy no
		assert_success
		[[ "$stderr" != *"beside the backward"* ]]
		# two ranks: each element is one float addition either way
		cmp <(jq -c 'del(.elapsed_time, .remaining_time, .throughput, .peak_memory_bytes)' ov-$ft/trainer_log.jsonl) \
			<(jq -c 'del(.elapsed_time, .remaining_time, .throughput, .peak_memory_bytes)' after-$ft/trainer_log.jsonl)
	done
	cmp ov-lora/adapter_model.safetensors after-lora/adapter_model.safetensors
	cmp ov-full/model.safetensors after-full/model.safetensors
}

@test "a killed rank ends the job non-zero, naming it; no half-written checkpoint" {
	need_mpi
	run env FT_DIST_TEST_FAULT=kill:1:5 timeout 120 mpirun --oversubscribe --allow-run-as-root -np 2 \
		ft-train $(base) --max_steps 100000 --save_steps 3 --output_dir out
	[ "$status" -ne 0 ] && [ "$status" -ne 124 ]
	assert_output --partial "rank 1"
	for c in out/checkpoint-*; do [ -f "$c/trainer_state.json" ] && [ -f "$c/optimizer.safetensors" ]; done
	[ ! -e out/adapter_model.safetensors ]
}

@test "a hung rank: the others give up after --ddp_timeout; rank 0 names the missing rank" {
	need_mpi
	SECONDS=0
	run --separate-stderr env FT_DIST_TEST_FAULT=stop:1:3 timeout 120 mpirun --oversubscribe \
		--allow-run-as-root -np 2 ft-train $(base) --max_steps 100000 --output_dir out --ddp_timeout 2
	[ "$status" -ne 0 ] && [ "$status" -ne 124 ]
	[ "$SECONDS" -lt 60 ]
	[[ "$stderr" == *"ft-train: rank 0 of 2: rank 1 did not reach the gradient all-reduce of step 4 within 2 s (--ddp_timeout)"* ]]
	# rank 0 hung: the others cannot tell who is missing, but still stop
	run --separate-stderr env FT_DIST_TEST_FAULT=stop:0:3 timeout 120 mpirun --oversubscribe \
		--allow-run-as-root -np 2 ft-train $(base) --max_steps 100000 --output_dir out2 --ddp_timeout 2
	[ "$status" -ne 0 ] && [ "$status" -ne 124 ]
	[[ "$stderr" == *"ft-train: rank 1 of 2: the gradient all-reduce of step 4 has waited 2 s (--ddp_timeout): another rank died or hangs"* ]]
}

@test "a rank's error ends the job at once, with the rank in the message" {
	need_mpi
	run timeout 120 mpirun --oversubscribe --allow-run-as-root -np 2 \
		ft-train $(base) --max_steps 2 --output_dir out --resume_from_checkpoint nowhere
	[ "$status" -ne 0 ] && [ "$status" -ne 124 ]
	# rank 0 alone resolves the checkpoint (ft-train-resume-mpi.bats) and
	# its error aborts the job
	assert_output --partial "ft-train: rank 0: --resume_from_checkpoint nowhere: not a checkpoint directory"
}

@test "--deepspeed is refused naming mpirun --zero 1; --zero 2 refused; --ddp_timeout checked" {
	run -2 ft-train $(base) --output_dir out --deepspeed ds_z3_config.json
	assert_output --partial "mpirun -np N ft-train ... --zero 1"
	printf 'deepspeed: examples/deepspeed/ds_z2_config.json\n' > cfg.yaml
	run -2 ft-train cfg.yaml --model_name_or_path "$MODEL" --train train.zst --output_dir out
	assert_output --partial "ft does not run DeepSpeed"
	run -2 ft-train $(base) --output_dir out --zero 2
	assert_output --partial "only ZeRO stage 1"
	run -2 ft-train $(base) --output_dir out --ddp_timeout 0
	assert_output --partial "--ddp_timeout must be > 0"
	# one process: accepted, and the run is the plain one
	run ft-train $(base) --output_dir out --max_steps 1 --ddp_timeout 180000000 --zero 1
	assert_success
}

@test "ft-run: --nproc N and NPROC_PER_NODE start ft-train under mpirun; ddp_timeout routed" {
	args=(-n --stage sft --do_train --model_name_or_path m --dataset d --output_dir o --ddp_timeout 600)
	run ft-run --nproc 2 "${args[@]}" zero=1
	assert_success
	assert_output --partial "mpirun -np 2 ft-train --stage sft"
	assert_output --partial "--ddp_timeout 600"
	assert_output --partial "--zero 1"
	run env NPROC_PER_NODE=4 FORCE_TORCHRUN=1 ft-run "${args[@]}"
	assert_success
	assert_output --partial "mpirun -np 4 ft-train"
	# one rank: the plain command
	run env NPROC_PER_NODE=1 ft-run "${args[@]}"
	assert_success
	refute_output --partial "mpirun"
	run -2 env NNODES=2 NPROC_PER_NODE=8 ft-run "${args[@]}"
	assert_output --partial "--hostfile"
	run -2 env FORCE_TORCHRUN=1 ft-run "${args[@]}"
	assert_output --partial "NPROC_PER_NODE=N"
	run -2 ft-run -np 2 -n export --model_name_or_path m --export_dir x
	assert_output --partial "only training"
	# a deepspeed config is ft's data parallel, with a note (ZeRO-1 when it shards)
	echo '{"zero_optimization": {"stage": 2}}' > ds.json
	run --separate-stderr ft-run -v -np 2 -n --stage sft --do_train --dataset d --output_dir o --deepspeed ds.json
	assert_success
	[[ "$output" == *"mpirun -np 2 ft-train "*" --zero 1 "* ]]
	[[ "$stderr" == *"deepspeed ds.json (ZeRO stage 2): runs as ft's data parallel"* ]]
}

@test "ft-run: ray_num_workers starts that many ranks under USE_RAY=1 only, as LLaMA-Factory uses Ray" {
	args=(-n --stage sft --do_train --model_name_or_path m --dataset d --output_dir o ray_num_workers=4)
	run --separate-stderr env USE_RAY=1 ft-run -v "${args[@]}" ray_init_kwargs='{a: 1}'
	assert_success
	assert_output --partial "mpirun -np 4 ft-train --stage sft"
	[[ "$stderr" == *"USE_RAY=1: ray_num_workers 4: 4 ranks, started by mpirun instead of Ray"* ]]
	# without USE_RAY LLaMA-Factory ignores the Ray settings: one process
	run --separate-stderr ft-run -v "${args[@]}" ray_storage_path=/tmp/r
	assert_success
	refute_output --partial "mpirun"
	[[ "$stderr" == *"ray_num_workers"*"without it LLaMA-Factory and ft-run train in one process"* ]]
	# USE_RAY with the default single worker; --nproc wins over it
	run env USE_RAY=true ft-run -n --stage sft --do_train --model_name_or_path m --dataset d --output_dir o
	assert_success
	refute_output --partial "mpirun"
	run env USE_RAY=y ft-run --nproc 2 "${args[@]}"
	assert_output --partial "mpirun -np 2 ft-train"
	run -2 env USE_RAY=1 ft-run "${args[@]}" ray_num_workers=many
	assert_output --partial "ray_num_workers"
	# LLaMA-Factory's is_env_enabled: FORCE_TORCHRUN=yes is not set
	run env FORCE_TORCHRUN=yes ft-run "${args[@]}"
	assert_success
}

@test "ft-run --nproc 2 trains end to end: one log, one adapter" {
	need_mpi
	skip_without_shared
	cp -r "$MODEL" model
	cp "$FT_ROOT/tests/fixtures/generate/tokenizer/"* model/
	cat > sft.yaml <<-EOT
	stage: sft
	do_train: true
	model_name_or_path: model
	dataset: identity
	dataset_dir: $SHARED/data/llamafactory
	template: default
	finetuning_type: lora
	cutoff_len: 64
	max_samples: 16
	output_dir: saves
	logging_steps: 1
	per_device_train_batch_size: 2
	gradient_accumulation_steps: 1
	num_train_epochs: 1.0
	ddp_timeout: 180000000
	EOT
	run env OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMPI_MCA_rmaps_base_oversubscribe=1 \
		ft-run -q --nproc 2 train sft.yaml
	assert_success
	[ -s saves/adapter_model.safetensors ]
	[ "$(jq .ft.world_size saves/trainer_state.json)" = 2 ]
	# 16 examples in 8 micro-batches of 2, 2 per step: 4 steps, each logged once
	[ "$(jq -s '[.[] | select(.loss)] | length' saves/trainer_log.jsonl)" = 4 ]
}

@test "an epoch's shorter last step and sharded evaluation match one process" {
	need_mpi
	ft-cat --encode < "$FIXTURES/trainer/val.jsonl" > val.zst
	# 16 batches in steps of 6: 6, 6 and a last step of 4 (2 per rank)
	args=($(base) --val val.zst --eval_steps 2 --num_train_epochs 2 --save_strategy no)
	run ft-train "${args[@]}" --gradient_accumulation_steps 6 --output_dir one
	assert_success
	run mpi2 ft-train "${args[@]}" --gradient_accumulation_steps 3 --output_dir two
	assert_success
	diff <(jq -c '[.current_steps, .epoch, (.eval_loss != null)]' one/trainer_log.jsonl) \
	     <(jq -c '[.current_steps, .epoch, (.eval_loss != null)]' two/trainer_log.jsonl)
	within "$(field_diff one/trainer_log.jsonl two/trainer_log.jsonl loss)" 1e-6
	within "$(field_diff one/trainer_log.jsonl two/trainer_log.jsonl eval_loss)" 1e-6
}

@test "SIGTERM to mpirun: all ranks stop at the same step, rank 0 checkpoints and says how to resume" {
	need_mpi
	mpirun --oversubscribe --allow-run-as-root -np 2 ft-train $(base) --max_steps 1000000 \
		--save_steps 1000000 --output_dir out 2> err &
	pid=$!
	for i in $(seq 200); do [ -s out/trainer_log.jsonl ] && break; sleep 0.05; done
	sleep 0.2
	kill -TERM $pid
	rc=0; wait $pid || rc=$?
	[ "$rc" -ne 0 ]
	grep -q "rank 0: interrupted (SIGTERM)" err
	grep -q "resume with:" err
	grep -q "mpirun -np 2 ft-train" err
	ck=$(ls -d out/checkpoint-*)
	[ -f "$ck/optimizer.safetensors" ]
}

@test "under mpirun, --train - is refused: only rank 0 gets stdin" {
	need_mpi
	run -2 bash -c "mpirun --oversubscribe --allow-run-as-root -np 2 ft-train $(base) --train - \
		--output_dir out < train.zst 2>&1"
	assert_output --partial "--train -: under mpirun every rank reads the batches"
}

# Where a machine has two GPUs (never in CI here: skipped): NCCL sums the
# device gradients; fp32 on the GPU, so the same 1e-6 as on the CPU.
@test "GPU: 2 ranks x 1 GPU == 1 GPU with twice the accumulation (NCCL)" {
	need_mpi
	command -v nvidia-smi >/dev/null && [ "$(nvidia-smi -L 2>/dev/null | wc -l)" -ge 2 ] ||
		skip "needs 2 NVIDIA GPUs"
	ldconfig -p | grep -q libnccl.so.2 || [ -n "${FT_NCCL_LIB:-}" ] || skip "libnccl.so.2 is absent"
	run ft-train $(base) --device cuda --max_steps 6 --gradient_accumulation_steps 4 --output_dir one \
		--save_strategy no
	assert_success
	run mpi2 ft-train $(base) --device cuda --max_steps 6 --gradient_accumulation_steps 2 --output_dir two \
		--save_strategy no
	assert_success
	within "$(field_diff one/trainer_log.jsonl two/trainer_log.jsonl loss)" 1e-6
	within "$("$MAXDIFF" one/adapter_model.safetensors two/adapter_model.safetensors)" 1e-6
}
