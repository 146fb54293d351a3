#!/usr/bin/env bats
# mpirun -np 2 ft-train --device cuda: the NCCL path of data parallel
# (lib/train/dist.c, lib/train/cuda_train.c, docs/DISTRIBUTED.md) on the
# emulated device (FT_CUDA_LIB=build/libft_cuda_emu.so, docs/CUDA-TESTING.md) with
# the fake NCCL (FT_NCCL_LIB=build/libnccl_emu.so, tests/emu/fake_nccl.c:
# NCCL's calls over an anonymous shared file, slots added in rank order).  The
# real lib/cuda code and the real NCCL call sequence run; what a GPU and
# real NCCL would add (timing, stream concurrency, NVLink) does not.
#
# Tolerances.  Against one emulated device with twice the accumulation:
# the two ranks add the same four micro-batch gradients, (g0 + g2) + (g1 +
# g3) against ((g0 + g1) + g2) + g3, the argument and the 1e-6 of
# ft-train-mpi.bats (lr 1e-4, every number a float rounding apart; a wrong
# share of batches or a missing sum moves losses by ~1e-2).  Against the
# CPU's mpirun -np 2: the device's reductions and fused GEMMs against the
# CPU's loops, the 1e-4 relative of ft-train-cuda-emu.bats for losses and
# grad norms (measured there at most 7e-7, here 1e-7), and 1e-4 absolute
# for the weights: AdamW moves an element by at most lr = 1e-4 a step, so
# only an element whose near-cancelling gradient the two orders round
# apart can approach it (measured 3.3e-6 for full, 2.4e-7 for LoRA); the
# losses are what catches a wrong sum.  Repeated runs, and the fake
# NCCL's sums, are deterministic: bit for bit.
load helper

MODEL="$FIXTURES/models/tiny-llama"
EMU="$FT_ROOT/build/libft_cuda_emu.so"
NCCL="$FT_ROOT/build/libnccl_emu.so"
MAXDIFF="$FT_ROOT/build/tests/st_maxdiff"
# two emulated devices: each rank drives the one of its local rank
export OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 FT_EMU_THREADS=1 FT_EMU_DEVICES=2

setup() {
	cd "$BATS_TEST_TMPDIR"
	command -v mpirun >/dev/null || skip "mpirun is absent (apt-get install openmpi-bin libopenmpi-dev)"
	[ -f "$FT_ROOT/build/libft_mpi.so" ] || skip "build/libft_mpi.so is not built (make with mpicc present)"
	[ -f "$EMU" ] && [ -f "$NCCL" ] || skip "the emulated backend or fake NCCL is not built (make unit)"
	[ -x "$MAXDIFF" ] || skip "build/tests/st_maxdiff is not built (make unit)"
	command -v jq >/dev/null || skip "jq is not installed"
	export FT_CUDA_LIB=$EMU FT_NCCL_LIB=$NCCL
	ft-cat --encode < "$FIXTURES/trainer/train.jsonl" > train.zst
}
mpi2() { timeout 300 mpirun --oversubscribe --allow-run-as-root -np 2 "$@"; }
base() { echo --model_name_or_path "$MODEL" --train train.zst --logging_steps 1 --learning_rate 1e-4 \
	--max_steps 4 --save_strategy no -q; }
steady() { jq -c 'del(.elapsed_time, .remaining_time, .throughput, .device, .peak_memory_bytes)' "$1"; }
# the log without the clock and the peak memory (ZeRO-1 plans less)
no_mem() { jq -c 'del(.elapsed_time, .remaining_time, .throughput, .peak_memory_bytes)' "$1"; }
# after N LOG: the step lines past step N, as [step, loss, grad_norm]
after() { jq -c "select(.loss and .current_steps > $1) | {current_steps, loss, grad_norm}" "$2"; }
# largest relative difference of loss and grad_norm over two logs, line by line
rel_diff() {
	paste <(jq -r '[.loss, .grad_norm] | map(. // 0) | @tsv' "$1") \
	      <(jq -r '[.loss, .grad_norm] | map(. // 0) | @tsv' "$2") |
		awk '{ for (i = 1; i <= 2; i++) { d = $i - $(i + 2); if (d < 0) d = -d
		       m = $i < 0 ? -$i : $i; r = d / (m > 1e-30 ? m : 1e-30); if (r > w) w = r } }
		     END { printf "%g\n", w + 0 }'
}
within() { awk -v x="$1" -v t="$2" 'BEGIN { exit !(x <= t) }'; }
# the /dev/shm segments a fake NCCL before the anonymous file named so
# (tests/unit/test_fake_nccl.c checks the file itself)
shm_segments() { ls /dev/shm 2>/dev/null | grep '^ftnccl-' || true; }

# nccl_parity FT FILE: 2 emulated GPUs (fake NCCL) against 1 emulated GPU,
# against the CPU's 2 ranks, and against themselves with the sums after the
# backward instead of beside it.  The device backward reports each layer's
# gradients final (an event on the compute stream, then the hook) and the
# communication thread issues that group's NCCL sums on the communication
# stream while the backward goes on; FT_DIST_NO_OVERLAP=1 issues the same
# calls after it.  Two ranks: each element is one float addition either
# way, so bit for bit; a sum issued before its gradients were final would
# read partial ones here (the emulation runs every call when made) and
# differ.  The second run is also the rerun: the same bits again.
nccl_parity() {
	local ft=$1 file=$2
	args=($(base) --finetuning_type "$ft" --gradient_checkpointing)
	run --separate-stderr mpi2 ft-train "${args[@]}" -v --device cuda --gradient_accumulation_steps 2 \
		--output_dir two
	assert_success
	[[ "$stderr" == *"the gradient sums of 4 steps ran beside the backward"* ]]
	[[ "$(jq -r .ft.device two/trainer_state.json)" == "cuda:0 (ft host emulation, "* ]]
	[ "$(jq .ft.world_size two/trainer_state.json)" = 2 ]
	run ft-train "${args[@]}" --device cuda --gradient_accumulation_steps 4 --output_dir one
	assert_success
	[ "$(wc -l < one/trainer_log.jsonl)" = "$(wc -l < two/trainer_log.jsonl)" ]
	d=$(rel_diff one/trainer_log.jsonl two/trainer_log.jsonl)
	echo "# $ft: 2 emulated GPUs against 1: losses and grad norms within $d relative" >&3
	within "$d" 1e-6
	w=$("$MAXDIFF" "one/$file" "two/$file")
	echo "# $ft: weights within $w" >&3
	within "$w" 1e-6
	run mpi2 ft-train "${args[@]}" --device cpu --gradient_accumulation_steps 2 --output_dir cpu
	assert_success
	d=$(rel_diff cpu/trainer_log.jsonl two/trainer_log.jsonl)
	w=$("$MAXDIFF" "cpu/$file" "two/$file")
	echo "# $ft: against the CPU's 2 ranks: within $d relative, weights within $w" >&3
	within "$d" 1e-4
	within "$w" 1e-4
	run --separate-stderr mpi2 env FT_DIST_NO_OVERLAP=1 ft-train "${args[@]}" -v --device cuda \
		--gradient_accumulation_steps 2 --output_dir after
	assert_success
	[[ "$stderr" != *"beside the backward"* ]]
	cmp <(steady two/trainer_log.jsonl) <(steady after/trainer_log.jsonl)
	cmp "two/$file" "after/$file"
}

@test "NCCL (emulated): 2 ranks x accumulation 2 == 1 device x 4 == CPU's 2 ranks, LoRA; beside the backward == after it" {
	nccl_parity lora adapter_model.safetensors
}

@test "NCCL (emulated): 2 ranks x accumulation 2 == 1 device x 4 == CPU's 2 ranks, full; beside the backward == after it" {
	nccl_parity full model.safetensors
}

# --fp8 (lib/cuda/fp8.cu): each rank casts its own micro-batch's operands
# (amax per rank's tensor, as under DeepSpeed), on the device as on the CPU;
# the CPU's 2 ranks within ft-train-cuda-emu.bats's fp8 bound for fp32,
# 1e-4 (measured 1e-7).
@test "NCCL (emulated) --fp8: 2 ranks on the device == the CPU's 2 ranks, full" {
	args=($(base) --finetuning_type full --fp8 --gradient_accumulation_steps 2)
	run mpi2 ft-train "${args[@]}" --device cuda --output_dir two
	assert_success
	[[ "$(jq -r .ft.device two/trainer_state.json)" == "cuda:0 (ft host emulation, "* ]]
	run mpi2 ft-train "${args[@]}" --device cpu --output_dir cpu
	assert_success
	[ "$(wc -l < cpu/trainer_log.jsonl)" = "$(wc -l < two/trainer_log.jsonl)" ]
	d=$(rel_diff cpu/trainer_log.jsonl two/trainer_log.jsonl)
	echo "# fp8: against the CPU's 2 ranks: within $d relative" >&3
	within "$d" 1e-4
}

@test "NCCL (emulated): an NCCL library that does not load is refused naming it" {
	run mpi2 env FT_NCCL_LIB=/nonexistent/libnccl.so.2 ft-train $(base) --device cuda --output_dir out
	assert_failure
	assert_output --partial "/nonexistent/libnccl.so.2 does not load"
}

@test "NCCL (emulated): a hung rank is named after --ddp_timeout, as on the CPU path" {
	shm_segments > shm.before
	run --separate-stderr env FT_DIST_TEST_FAULT=stop:1:1 timeout 120 mpirun --oversubscribe \
		--allow-run-as-root -np 2 ft-train $(base) --device cuda --max_steps 100000 --output_dir out \
		--ddp_timeout 2
	assert_failure
	[[ "$stderr" == *"ft-train: rank 0 of 2: rank 1 did not reach the gradient all-reduce of step 2 within 2 s (--ddp_timeout)"* ]]
	run --separate-stderr env FT_DIST_TEST_FAULT=stop:0:1 timeout 120 mpirun --oversubscribe \
		--allow-run-as-root -np 2 ft-train $(base) --device cuda --max_steps 100000 --output_dir out2 \
		--ddp_timeout 2
	assert_failure
	[[ "$stderr" == *"ft-train: rank 1 of 2: the gradient all-reduce of step 2 has waited 2 s (--ddp_timeout): another rank died or hangs"* ]]
	diff shm.before <(shm_segments)
}

# ZeRO-1 on the device (lib/cuda/zero.cu): every rank has the same summed
# gradients, computes the same norm and clipping, updates its slice with
# the kernel plain AdamW uses, and the slices are copied back bit for bit
# (broadcast): so logs, weights and checkpoints equal plain data
# parallel's exactly (tolerance 0: no addition is reordered), in fp32,
# with bf16's half copies refreshed from the gathered masters, and with an
# fp16 step skipped for overflow.  Peak memory
# is lower by the other rank's half of the moments, 2 x 4 bytes / 2 per
# trainable element: the size of the fp32 model.safetensors of a full
# run.  Within 5%: its 2 KB header is 0.6%, and the plain plan rounds each
# tensor's m and v buffers up to 256 bytes (< 2 x 256 x 21 tensors = 2.8%)
# where ZeRO-1's one slice buffer is rounded once.  A 2-rank
# checkpoint resumed on 2 ranks gives the same bits again; on 1 device x
# accumulation 2 (the same global batch: one micro-batch per rank and
# step here, to keep the file's time down) and on the CPU, the 1e-6 and
# 1e-4 of the header.
@test "ZeRO-1 (emulated): 2 ranks == plain data parallel bit for bit, less memory; its checkpoint resumes on 2 ranks, 1 device and the CPU" {
	args=($(base) --finetuning_type full --save_strategy steps --save_steps 2)
	run mpi2 ft-train "${args[@]}" --device cuda --zero 1 --output_dir z
	assert_success
	run mpi2 ft-train "${args[@]}" --device cuda --output_dir p
	assert_success
	cmp <(no_mem z/trainer_log.jsonl) <(no_mem p/trainer_log.jsonl)
	for f in model.safetensors checkpoint-2/optimizer.safetensors checkpoint-2/model.safetensors; do
		cmp "z/$f" "p/$f"
	done
	[ "$(jq .ft.zero z/trainer_state.json)" = 1 ]
	zp=$(jq -s '.[0].peak_memory_bytes' z/trainer_log.jsonl)
	pp=$(jq -s '.[0].peak_memory_bytes' p/trainer_log.jsonl)
	half=$(stat -c %s p/model.safetensors)
	echo "# peak $zp bytes with ZeRO-1, $pp without; half the moments: $half" >&3
	within "$(awk -v d=$((pp - zp)) -v h=$half 'BEGIN { x = d / h - 1; print x < 0 ? -x : x }')" 0.05
	run mpi2 ft-train "${args[@]}" --device cuda --zero 1 --resume_from_checkpoint z/checkpoint-2 \
		--output_dir z2
	assert_success
	cmp <(after 2 z/trainer_log.jsonl) <(after 2 z2/trainer_log.jsonl)
	cmp z/model.safetensors z2/model.safetensors
	one=($(base) --finetuning_type full --gradient_accumulation_steps 2 \
		--resume_from_checkpoint z/checkpoint-2)
	run ft-train "${one[@]}" --device cuda --output_dir r1
	assert_success
	run ft-train "${one[@]}" --device cpu --output_dir rc
	assert_success
	[ "$(after 2 r1/trainer_log.jsonl | wc -l)" = 2 ]
	d1=$(rel_diff <(after 2 z/trainer_log.jsonl) <(after 2 r1/trainer_log.jsonl))
	dc=$(rel_diff <(after 2 z/trainer_log.jsonl) <(after 2 rc/trainer_log.jsonl))
	echo "# resumed on 1 device: within $d1 relative; on the CPU: $dc" >&3
	within "$d1" 1e-6
	within "$dc" 1e-4
	# LoRA in bf16: the half copies of the LoRA A matrices refreshed after the gather
	args=($(base) --finetuning_type lora --bf16 --learning_rate 1e-3)
	run mpi2 ft-train "${args[@]}" --device cuda --zero 1 --output_dir zb
	assert_success
	run mpi2 ft-train "${args[@]}" --device cuda --output_dir pb
	assert_success
	cmp <(no_mem zb/trainer_log.jsonl) <(no_mem pb/trainer_log.jsonl)
	cmp zb/adapter_model.safetensors pb/adapter_model.safetensors
	# fp16 at lr 1.2 (lr 1 no longer overflows at step 2 since q|k|v and
	# gate|up are half, as in ft-train-cuda-emu.bats): step 2 overflows at
	# the initial scale on both ranks alike, so no rank gathers; step 3
	# updates and gathers again
	args=($(base) --finetuning_type full --fp16 --learning_rate 1.2 --max_steps 3)
	run mpi2 ft-train "${args[@]}" --device cuda --zero 1 --output_dir zh
	assert_success
	run mpi2 ft-train "${args[@]}" --device cuda --output_dir ph
	assert_success
	[ "$(jq -sc 'map(select(.loss) | [.grad_norm == null, .loss_scale])' zh/trainer_log.jsonl)" \
		= "[[false,65536],[true,32768],[false,32768]]" ]
	cmp <(no_mem zh/trainer_log.jsonl) <(no_mem ph/trainer_log.jsonl)
	cmp zh/model.safetensors ph/model.safetensors
}

# The device ZeRO-1's checkpoints stream as the CPU's (ft-train-mpi.bats):
# a 12-layer model (hidden 256: P = 8.8M trainable parameters, the AdamW
# state 8P = 70 MB, the largest tensor 688 x 256) trains 2 steps on 2
# emulated devices without checkpoints, with one per step, and resumed
# from the first; each rank's max RSS (the emulated devices' memory is
# the process's too, the same in all three) may exceed the plain run's by
# P bytes at most.  Streaming holds one tensor's moments on the host
# (1.4 MB); measured within 0.5 MB.  Gathering on rank 0, as before,
# measured +53 MB on rank 0 and +36 MB on rank 1 at the save (whole-size
# host moments, each rank filling its own piece), and loading the whole
# file +153 MB on every rank at the resume.
@test "ZeRO-1 (emulated): a save or a resume adds at most 1/8 of the AdamW state to any rank's max RSS" {
	[ -x /usr/bin/time ] || skip "/usr/bin/time is absent (apt-get install time)"
	jq '.num_hidden_layers = 12 | .hidden_size = 256 | .intermediate_size = 688 | .head_dim = 64' \
		"$MODEL/config.json" > cfg.json
	zero1_rss_bound --device cuda
}

# Only rank 0 reads optimizer.safetensors at a resume (rank 1's copy of
# the checkpoint, named relatively, lacks it): a 1-device checkpoint
# resumed on 2 emulated ZeRO-1 ranks is bit for bit plain data parallel
# resumed from it.
@test "ZeRO-1 (emulated): a 1-device checkpoint on 2 ranks == plain data parallel; only rank 0 reads optimizer.safetensors" {
	args=(--model_name_or_path "$MODEL" --train "$PWD/train.zst" --logging_steps 1 --learning_rate 1e-4 \
		--max_steps 4 --save_steps 2 -q --device cuda --finetuning_type full)
	run ft-train "${args[@]}" --gradient_accumulation_steps 2 --output_dir one
	assert_success
	mkdir r0 r1
	cp -r one/checkpoint-2 r0/ck
	cp -r one/checkpoint-2 r1/ck
	rm r1/ck/optimizer.safetensors
	run mpi2 sh -c 'cd "r$OMPI_COMM_WORLD_RANK" && exec "$@"' sh ft-train "${args[@]}" --zero 1 \
		--resume_from_checkpoint ck --output_dir "$PWD/z"
	assert_success
	run mpi2 ft-train "${args[@]}" --resume_from_checkpoint one/checkpoint-2 --output_dir p
	assert_success
	cmp z/model.safetensors p/model.safetensors
	cmp z/checkpoint-4/optimizer.safetensors p/checkpoint-4/optimizer.safetensors
	cmp <(no_mem z/trainer_log.jsonl) <(no_mem p/trainer_log.jsonl)
}

@test "ZeRO-1 (emulated): a killed rank ends the job non-zero naming it; checkpoints are whole" {
	shm_segments > shm.before
	run env FT_DIST_TEST_FAULT=kill:1:3 timeout 120 mpirun --oversubscribe --allow-run-as-root -np 2 \
		ft-train $(base) --device cuda --zero 1 --max_steps 100000 --save_strategy steps --save_steps 2 \
		--output_dir out
	[ "$status" -ne 0 ]
	[ "$status" -ne 124 ]
	assert_output --partial "rank 1"
	[ -f out/checkpoint-2/optimizer.safetensors ]
	[ -f out/checkpoint-2/trainer_state.json ]
	[ ! -e out/adapter_model.safetensors ]
	# the communicator's shared memory went with the ranks
	diff shm.before <(shm_segments)
}

# 13 micro-batches in steps of 4: the last step has one, so rank 1 has
# none: it zeroes its gradients and sums zeros after its (empty) backward
# while rank 0's sums run beside its backward.
@test "NCCL (emulated): a step in which one rank has no micro-batch matches one device" {
	f=$FIXTURES/trainer/train.jsonl
	(head -1 "$f" | jq -c '.meta.counts = {batches: 13, examples: 26, tokens: 360, label_tokens: 294,
		pad_tokens: 56}'; sed -n 2,14p "$f") | ft-cat --encode > t13.zst
	args=(--model_name_or_path "$MODEL" --train t13.zst --logging_steps 1 --learning_rate 1e-4 \
		--num_train_epochs 1 --save_strategy no -q --device cuda --finetuning_type full)
	run mpi2 ft-train "${args[@]}" --gradient_accumulation_steps 2 --output_dir two
	assert_success
	run ft-train "${args[@]}" --gradient_accumulation_steps 4 --output_dir one
	assert_success
	[ "$(jq -s 'map(select(.loss)) | length' two/trainer_log.jsonl)" = 4 ]
	within "$(rel_diff one/trainer_log.jsonl two/trainer_log.jsonl)" 1e-6
	within "$("$MAXDIFF" one/model.safetensors two/model.safetensors)" 1e-6
}
