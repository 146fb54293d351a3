#!/usr/bin/env bats
# mpirun -np 2 ft-train --stage ppo --device cuda: each rank generates,
# scores and whitens its own rollouts (as on the CPU,
# tests/bats/ft-train-ppo-mpi.bats), decoded on its own emulated device,
# the policy's and the value head's gradients summed over the fake NCCL
# (lib/train/cuda_pref.c's sum_group; the head goes with the last group).
# FT_CUDA_LIB=build/libft_cuda_emu.so, FT_EMU_DEVICES=2,
# FT_NCCL_LIB=build/libnccl_emu.so, as ft-train-grpo-nccl-emu.bats.
#
# Tolerances.  Against the CPU's 2 ranks: ft-train-rl-emu.bats's PPO
# argument, rank by rank (each rank's decoder draws the CPU rank's tokens,
# so what each reward command reads, the rewards and the gathered score
# statistics are equal exactly; every other number within 1e-4 relative or
# 1e-5 absolute, the loss one unit of its 4th decimal); the gathered
# statistics are means of two such numbers, within the same bounds.
# Exact: the ranks' prompts swapped (a + b = b + a in the NCCL sum and the
# statistics' all-reduce), and a 2-rank checkpoint resumed on 2 ranks.
bats_require_minimum_version 1.5.0
load helper
load mpi_helper

LLAMA="$FIXTURES/models/tiny-llama"

setup() {
	cd "$BATS_TEST_TMPDIR"
	need_nccl_emu
	f="$FIXTURES/ppo/prompts.jsonl"   # two batches of two prompts: rank 0 takes the first, rank 1 the second
	ft-cat --encode < "$f" > ab.zst
	{ head -1 "$f"; sed -n 3p "$f" | jq -c '.index = 0'; sed -n 2p "$f" | jq -c '.index = 1'; } | ft-cat --encode > ba.zst
	# 4 prompts per rank (--ppo_buffer_size 2 or accumulation 2): ab's two
	# batches for rank 0, then each with its rows swapped for rank 1
	rev='.input_ids = (.input_ids[.T:] + .input_ids[:.T])'
	{ head -1 "$f"; sed -n 2,3p "$f"; sed -n 2p "$f" | jq -c ".index = 2 | $rev"; sed -n 3p "$f" | jq -c ".index = 3 | $rev"; } |
		jq -c 'if .meta then .meta.counts.batches = 4 | .meta.counts.examples = 8 else . end' | ft-cat --encode > abab.zst
}

# p DEVICE OUT [flags]: ft-train-rl-emu.bats's 4 sampled PPO steps on 2
# ranks; what each rank's reward filter reads in OUT.seen.<its pid>
LOW="awk -F'\"response\":\"' '{ n = split(\$2, t, /[ \"]/); c = 0; for (i = 1; i <= n; i++) c += (t[i] != \"\" && t[i] + 0 < 64); print c }'"
p() {
	local dev=$1 out=$2
	shift 2
	run --separate-stderr mpi2 ft-train --stage ppo --model_name_or_path "$LLAMA" --train ab.zst --output_dir "$out" \
		--device "$dev" --reward_model_type api --reward_model "tee -a $BATS_TEST_TMPDIR/$out.seen.\$PPID | $LOW" \
		--do_sample true --temperature 1.0 --top_p 1.0 --max_new_tokens 6 --max_steps 4 --logging_steps 1 \
		--learning_rate 3e-3 --seed 2 "$@"
	[ "$status" -eq 0 ] || { echo "$stderr" >&2; return 1; }
}
# the rank 0 reward filter's lines, then rank 1's (the pid order is not the rank order: sorted)
seen() { for f in "$1".seen.*; do sort "$f"; done | sort; }

gnums() { jq -r 'del(.elapsed_time, .remaining_time, .throughput) | to_entries[] |
		select(.value | type == "number") | "\(.key) \(.value)"' "$1"; }
# both_logs A B: ft-train-rl-emu.bats's bounds; the scores and lengths exact
both_logs() {
	[ "$(gnums "$1/trainer_log.jsonl" | wc -l)" -gt 10 ]
	paste -d' ' <(gnums "$1/trainer_log.jsonl") <(gnums "$2/trainer_log.jsonl") | awk '
		$1 != $3 { print "# key " $1 " against " $3; bad = 1 }
		{ d = $2 - $4; if (d < 0) d = -d; m = $2 < 0 ? -$2 : $2
		  exact = $1 ~ /^(reward|ppo\/mean_scores|ppo\/std_scores|tokens\/|lr|epoch|current_steps)/
		  if (exact && d > 0) { print "# " $1 ": " $2 " against " $4; bad = 1 }
		  if (d > ($1 == "loss" ? 1.01e-4 : 1e-5) && d > 1e-4 * m) { print "# " $1 ": " $2 " against " $4; bad = 1 }
		  if (m > 1e-2 && d / m > w) w = d / m; n++ }
		END { printf "# %d numbers, worst relative difference %.3g on those above 1e-2\n", n, w
		      exit bad || n == 0 }' >&3
}

@test "NCCL (emulated) ppo: 2 ranks on 2 emulated devices == the CPU's 2 ranks (lora, value-head dropout, accumulation)" {
	for flags in "--ppo_buffer_size 2 --max_grad_norm 0.5" \
		     "--gradient_accumulation_steps 2 --lora_target all --ppo_epochs 2 --ppo_score_norm true" \
		     "--finetuning_type full --ppo_buffer_size 2"; do
		p cpu cpu $flags --train abab.zst
		p cuda dev $flags --train abab.zst
		[[ "$stderr" == *"rank 0: note: training on cuda:0 (ft host emulation"* ]]
		[ "$(ls dev.seen.* | wc -l)" -eq 2 ] && [ "$(seen cpu | wc -l)" -ge 16 ]
		cmp <(seen cpu) <(seen dev)
		both_logs cpu dev
		rm -rf cpu dev cpu.seen.* dev.seen.*
	done
}

@test "NCCL (emulated) ppo: the ranks' prompts swapped give the same weights and gathered statistics" {
	p cuda ab
	p cuda ba --train ba.zst
	cmp ab/adapter_model.safetensors ba/adapter_model.safetensors
	cmp ab/value_head.safetensors ba/value_head.safetensors
	diff <(jq -c 'del(.reward, ."tokens/queries_len_mean", ."tokens/queries_len_std", ."tokens/responses_len_mean",
		."tokens/responses_len_std")' ab/trainer_log.jsonl) \
	     <(jq -c 'del(.reward, ."tokens/queries_len_mean", ."tokens/queries_len_std", ."tokens/responses_len_mean",
		."tokens/responses_len_std")' ba/trainer_log.jsonl)
}

@test "NCCL (emulated) ppo: a 2-rank checkpoint resumed on 2 ranks, bit for bit" {
	args=(--ppo_buffer_size 2 --train abab.zst --save_steps 2 --lora_dropout 0.1 --ppo_score_norm true)
	p cuda U "${args[@]}"
	[ "$(jq .processes U/checkpoint-2/ppo_state.json)" -eq 2 ]
	mkdir K && cp -r U/checkpoint-2 K/ && head -n 2 U/trainer_log.jsonl > K/trainer_log.jsonl
	p cuda K "${args[@]}" --resume_from_checkpoint K/checkpoint-2
	cmp U/trainer_log.jsonl K/trainer_log.jsonl
	cmp U/adapter_model.safetensors K/adapter_model.safetensors
	cmp U/value_head.safetensors K/value_head.safetensors
	cmp U/checkpoint-4/optimizer.safetensors K/checkpoint-4/optimizer.safetensors
}
