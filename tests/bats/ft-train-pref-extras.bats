#!/usr/bin/env bats
# ft-train --stage dpo --pref_bco_weight / --ld_alpha: 5 AdamW steps with
# evaluations against make_pref_fixtures.py --dpo-extras (LLaMA-Factory's
# bco_loss over TRL's RunningMoments, get_batch_logps with ld_alpha, in
# torch over the real PEFT models), defaults, refusals, resume bit for bit
# with bco's baseline in the checkpoint.
load helper

PREF="$FIXTURES/pref"
LLAMA="$FIXTURES/models/tiny-llama"
export OMP_NUM_THREADS=1
# the wall-clock fields of a log line
TIMING='del(.elapsed_time, .remaining_time, .throughput)'

setup() {
	cd "$BATS_TEST_TMPDIR"
	command -v ft-cat >/dev/null || { echo "ft-cat is not built (run make)" >&2; return 1; }
	ft-cat --encode < "$PREF/dpo.jsonl" > dpo.zst
	ft-cat --encode < "$PREF/kto.jsonl" > kto.zst
}

# the flags of make_pref_fixtures.py EXTRA_STEPS
case_flags() {
	case $1 in
	sigmoid_bco) echo "--pref_bco_weight 0.5" ;;
	hinge_bco_ld_ftx) echo "--pref_loss hinge --pref_bco_weight 2.0 --ld_alpha 0.7 --pref_ftx 0.3" ;;
	ipo_bco_ld) echo "--pref_loss ipo --pref_bco_weight 1.0 --ld_alpha 0.3" ;;
	esac
}

# extras_diff KIND NAME LOG: "ok", or the first step and key of LOG off the
# fixture by more than 1e-4.  Five AdamW steps in float32 on both sides,
# summed in different orders (torch's reductions; ft's in double), as
# ft-train-pref.bats's 10-step bound (measured worst there 1.1e-5); the
# baseline adds one float32 rounding of TRL's mean per micro-batch.  eval_loss
# is the mean over the 6 --val batches after steps 2, 4 and 5, each of which
# moved the baseline too.
extras_diff() {
	jq -n -r --slurpfile ft "$3" --slurpfile ref "$PREF/$1-extras-steps.json" --arg c "$2" '
		def abs: if . < 0 then -. else . end;
		[$ft[] | select(.loss != null)] as $f | [$ft[] | select(.eval_loss != null)] as $e
		| $ref[0][$c] as $r
		| if ($r | length) != 5 or ($f | length) != 5 or ($e | length) != 3 then
			"steps: \($f | length) vs \($r | length), evaluations \($e | length)"
		  else [range(5) as $i | $r[$i] as $t | $f[$i] as $g | $t | to_entries[]
			| select(.key != "step" and .key != "eval_loss")
			| if $g[.key] == null then "step \($t.step): no \(.key)"
			  elif (($g[.key] - .value) | abs) > 1e-4 then "step \($t.step) \(.key): \($g[.key]) vs \(.value)"
			  else empty end] +
		       [range(3) as $j | [$r[] | select(.eval_loss != null)][$j] as $t
			| if (($e[$j].eval_loss - $t.eval_loss) | abs) > 1e-4
			  then "eval \($j): \($e[$j].eval_loss) vs \($t.eval_loss)" else empty end]
		    | first // "ok" end'
}

# dpo_run KIND OUT FLAGS...: the reference's 5 steps (evaluations at 2, 4, 5) into OUT
dpo_run() {
	local kind=$1 out=$2
	shift 2
	run ft-train --stage dpo --train dpo.zst --val dpo.zst "$@" \
		--model_name_or_path "$FIXTURES/models/tiny-$kind" --adapter_name_or_path "$PREF/$kind-lora" \
		--output_dir "$out" --max_steps 5 --logging_steps 1 --eval_steps 2 \
		--learning_rate 5e-3 --save_steps 0 -q
	assert_success
}

run_extras() {
	local kind=$1 name=$2
	dpo_run "$kind" "out-$kind-$name" $(case_flags "$name")
	run extras_diff "$kind" "$name" "out-$kind-$name/trainer_log.jsonl"
	assert_output "ok"
}

@test "bco and ld_alpha: 5 steps with evaluations match the torch reference (llama, qwen2)" {
	need_jq
	for k in llama qwen2; do
		for c in sigmoid_bco hinge_bco_ld_ftx ipo_bco_ld; do run_extras $k $c; done
	done
}

@test "the reference's steps differ without bco or ld_alpha (the comparison can fail)" {
	need_jq
	dpo_run llama no-ld --pref_loss ipo --pref_bco_weight 1.0
	run extras_diff llama ipo_bco_ld no-ld/trainer_log.jsonl
	refute_output "ok"
	dpo_run llama no-bco --pref_loss ipo --ld_alpha 0.3
	run extras_diff llama ipo_bco_ld no-bco/trainer_log.jsonl
	refute_output "ok"
}

@test "defaults: bco off (0), ld_alpha None; 0 and None give the plain run bit for bit" {
	need_jq
	args="--stage dpo --train dpo.zst --model_name_or_path $LLAMA --adapter_name_or_path $PREF/llama-lora --max_steps 2 --logging_steps 1 --learning_rate 5e-3 --save_steps 1 -q"
	run ft-train $args --output_dir plain
	assert_success
	run ft-train $args --output_dir explicit --pref_bco_weight 0 --ld_alpha None
	assert_success
	[ "$(jq -c "$TIMING" plain/trainer_log.jsonl)" = "$(jq -c "$TIMING" explicit/trainer_log.jsonl)" ]
	cmp plain/adapter_model.safetensors explicit/adapter_model.safetensors
	[ ! -e plain/checkpoint-1/bco_moments.json ]
	run ft-train --help
	assert_output --partial "--pref_bco_weight W (0)"
	assert_output --partial "--ld_alpha A (None)"
}

@test "refusals: bad values, losses without a reference, other stages, a checkpoint without the baseline" {
	base="--model_name_or_path $LLAMA --adapter_name_or_path $PREF/llama-lora --max_steps 1 --output_dir o -q"
	run ft-train --stage dpo --train dpo.zst $base --pref_bco_weight x
	assert_failure 2
	assert_output --partial "not a number"
	run ft-train --stage dpo --train dpo.zst $base --pref_bco_weight -0.5
	assert_failure 2
	assert_output --partial "--pref_bco_weight must be >= 0"
	run ft-train --stage dpo --train dpo.zst $base --ld_alpha -1
	assert_failure 2
	assert_output --partial "--ld_alpha must be >= 0"
	run ft-train --stage dpo --train dpo.zst $base --ld_alpha inf
	assert_failure 2
	for l in orpo simpo; do
		run ft-train --stage dpo --train dpo.zst $base --pref_loss $l --pref_bco_weight 0.5
		assert_failure 2
		assert_output --partial "not --pref_loss $l"
	done
	run ft-train --stage kto --train kto.zst $base --pref_bco_weight 0.5
	assert_failure 2
	assert_output --partial "not --stage kto"
	run ft-train --stage kto --train kto.zst $base --ld_alpha 0.5
	assert_failure 2
	assert_output --partial "LD-DPO weighs --stage dpo's log-probs, not --stage kto's"
	run ft-train --stage rm --train dpo.zst $base --ld_alpha 0.5
	assert_failure 2
	# a checkpoint of a run without bco does not resume one with it
	run ft-train --stage dpo --train dpo.zst --model_name_or_path "$LLAMA" --output_dir c --max_steps 2 --save_steps 1 -q
	assert_success
	run ft-train --stage dpo --train dpo.zst --model_name_or_path "$LLAMA" --output_dir c --max_steps 2 --save_steps 1 -q \
		--pref_bco_weight 0.5 --resume_from_checkpoint c/checkpoint-1
	assert_failure
	assert_output --partial "bco_moments.json"
}

@test "resume with bco (and ld_alpha, evaluations): bit for bit, the baseline from the checkpoint" {
	need_jq
	args="--stage dpo --train dpo.zst --val dpo.zst --pref_bco_weight 0.5 --ld_alpha 0.6 --model_name_or_path $LLAMA --adapter_name_or_path $PREF/llama-lora --max_steps 6 --save_steps 3 --eval_steps 2 --logging_steps 1 --learning_rate 5e-3 -q"
	run ft-train $args --output_dir a
	assert_success
	run jq -e '.count == 9 and (.mean | type) == "number" and (.var | type) == "number"' a/checkpoint-3/bco_moments.json
	assert_success   # 3 training micro-batches + the 6 --val batches of the evaluation after step 2
	run ft-train $args --output_dir b
	assert_success
	rm -rf b/checkpoint-6
	run ft-train $args --output_dir b --resume_from_checkpoint b/checkpoint-3
	assert_success
	[ "$(jq -c "$TIMING" a/trainer_log.jsonl)" = "$(jq -c "$TIMING" b/trainer_log.jsonl)" ]
	cmp a/adapter_model.safetensors b/adapter_model.safetensors
	cmp a/checkpoint-6/bco_moments.json b/checkpoint-6/bco_moments.json
	# a fresh baseline at the resume gives other losses: the state matters
	run ft-train $args --output_dir d
	assert_success
	rm -rf d/checkpoint-6
	echo '{"count": 1e-24, "mean": 0.0, "var": 1.0}' > d/checkpoint-3/bco_moments.json
	run ft-train $args --output_dir d --resume_from_checkpoint d/checkpoint-3
	assert_success
	[ "$(jq -c .loss a/trainer_log.jsonl)" != "$(jq -c .loss d/trainer_log.jsonl)" ]
}
