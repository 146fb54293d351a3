# helper.bash - loaded by every bats file: assertions, bin/ on PATH, a
# scratch directory, and where the shared reference data lives.
bats_require_minimum_version 1.5.0
load '/usr/lib/bats/bats-support/load'
load '/usr/lib/bats/bats-assert/load'

FT_ROOT="$(cd "$BATS_TEST_DIRNAME/../.." && pwd)"
# FT_BIN: run the tools from another build (e.g. build/asan/bin)
PATH="${FT_BIN:-$FT_ROOT/bin}:$PATH"
FIXTURES="$FT_ROOT/tests/fixtures"
SHARED="${FT_SHARED:-$FT_ROOT/../shared}"

setup() {
	cd "$BATS_TEST_TMPDIR"
}

# skip_without_shared: skip a test that needs ../shared
skip_without_shared() {
	[ -d "$SHARED" ] || skip "../shared is absent"
}

# from_scratch CONFIG: model/ from --train_from_scratch with config.json
# CONFIG, one full step on the trainer fixture, and the real Qwen3
# tokenizer from ../shared (the vocabulary CONFIG must then be Qwen's)
from_scratch() {
	ft-cat --encode < "$FIXTURES/trainer/train.jsonl" > init.zst
	ft-train -q --train_from_scratch --config "$1" --finetuning_type full --train init.zst \
		--output_dir model --max_steps 1
	cp "$SHARED/tokenizers/qwen3/"tokenizer*.json model/
}

# need_jq: skip a test that reads JSON with jq where it is not installed
need_jq() { command -v jq >/dev/null || skip "jq is not installed"; }

# resumes_exactly N FILE FLAGS...: ft-train on $MODEL and train.zst with
# FLAGS (logging every step, saving at step N) into out, then the same run
# resumed from a copy of out/checkpoint-N in b: the logged steps and b/FILE
# (the adapter or model) bit-identical to the uninterrupted run's
resumes_exactly() {
	local n=$1 file=$2 keys='{current_steps, total_steps, loss, eval_loss, lr, epoch, grad_norm, total_tokens}'
	shift 2
	run ft-train --model_name_or_path "$MODEL" --train train.zst --output_dir out "$@"
	assert_success
	mkdir b && cp -r "out/checkpoint-$n" b/ && head -n "$n" out/trainer_log.jsonl > b/trainer_log.jsonl
	run ft-train --model_name_or_path "$MODEL" --train train.zst --output_dir b "$@" \
		--resume_from_checkpoint "b/checkpoint-$n"
	assert_success
	diff <(jq -c "$keys" out/trainer_log.jsonl) <(jq -c "$keys" b/trainer_log.jsonl)
	cmp "out/$file" "b/$file"
}

# merge_evaluates_as ADAPTER [FLAGS...]: ft-merge ADAPTER onto $MODEL (into
# ADAPTER-merged); the merged model's eval loss on val.zst equals the
# adapter's (evaluated with FLAGS) within 1e-5 relative, the float32
# rounding of the merged weights against the unmerged sum, and differs
# from the base's
merge_evaluates_as() {
	local ad=$1
	shift
	run ft-merge --model_name_or_path "$MODEL" --adapter_name_or_path "$ad" --export_dir "$ad-merged" -q
	assert_success
	run ft-train --model_name_or_path "$MODEL" --adapter_name_or_path "$ad" --val val.zst --do_eval \
		--output_dir "$ad-ea" -q "$@"
	assert_success
	run ft-train --model_name_or_path "$ad-merged" --finetuning_type full --val val.zst --do_eval \
		--output_dir "$ad-em" -q
	assert_success
	jq -n --slurpfile a "$ad-ea/eval_results.json" --slurpfile b "$ad-em/eval_results.json" \
		'($a[0].eval_loss - $b[0].eval_loss) / $b[0].eval_loss | fabs < 1e-5' | grep -qx true
	run ft-train --model_name_or_path "$MODEL" --finetuning_type full --val val.zst --do_eval \
		--output_dir "$ad-e0" -q
	assert_success
	[ "$(jq .eval_loss "$ad-e0/eval_results.json")" != "$(jq .eval_loss "$ad-em/eval_results.json")" ]
}

# parity_run NAME MODE [flags]: the 10-step parity run (parity20.jsonl,
# accumulation 2, cosine with 2 warmup steps, clipping at 1, weight decay
# 0.1) of --finetuning_type MODE into NAME/, every step loss within TOL
# (default 1e-5) relative of line NAME of $FIXTURES/$REF (default
# $PARITY_REF, set by the file that loads this)
parity_run() {
	local name=$1 mode=$2 tol=${TOL:-1e-5} ref=${REF:-$PARITY_REF}; shift 2
	ft-cat --encode < "$FIXTURES/trainer/parity20.jsonl" > p20.zst
	run ft-train --model_name_or_path "$MODEL" --train p20.zst --output_dir "$name" --finetuning_type "$mode" \
		--weight_decay 0.1 --max_grad_norm 1.0 --lr_scheduler_type cosine --warmup_steps 2 \
		--gradient_accumulation_steps 2 --num_train_epochs 1 --logging_steps 1 -q "$@"
	assert_success
	jq -r 'select(.loss) | .loss' "$name/trainer_log.jsonl" > got
	grep "^$name " "$FIXTURES/$ref" | tr ' ' '\n' | tail -n +2 > want
	[ "$(wc -l < got)" = 10 ]
	paste got want | awk -v tol="$tol" '{ d = ($1 - $2) / $2; if (d < 0) d = -d; if (d > tol + 0) { print "step " NR ": " $1 " vs " $2; bad = 1 } } END { exit bad }'
}

# magnitudes DIR: how many DoRA magnitudes DIR's adapter holds (its
# safetensors header)
magnitudes() {
	local f=$1/adapter_model.safetensors
	tail -c +9 "$f" | head -c "$(od -An -t u8 -N8 "$f" | tr -d ' ')" |
		jq '[keys[] | select(endswith(".lora_magnitude_vector"))] | length'
}

# zero1_rss_bound [FLAGS...]: --zero 1 full fine-tuning of cfg.json (in
# the test's directory) for 2 steps on 2 ranks (the file's mpi2) without
# checkpoints, with one per step, and resumed from the first; each rank's
# max RSS (/usr/bin/time) may exceed the run without checkpoints by P
# bytes, P the trainable parameters (1/8 of the AdamW state).  FLAGS: the
# device (--device cuda).
zero1_rss_bound() {
	rss() {   # OUT FLAGS...: OUT.rss.R, rank R's max RSS in KiB
		local out=$1
		shift
		mpi2 sh -c 'exec /usr/bin/time -f %M -o "$0.rss.$OMPI_COMM_WORLD_RANK" "$@"' "$out" \
			ft-train --train_from_scratch --config cfg.json --train train.zst --finetuning_type full \
			--max_steps 2 --learning_rate 1e-4 -q --zero 1 --output_dir "$out" "$@"
	}
	run rss plain --save_strategy no "$@"
	assert_success
	run rss saved --save_steps 1 "$@"
	assert_success
	run rss resumed --save_strategy no --resume_from_checkpoint saved/checkpoint-1 "$@"
	assert_success
	cmp saved/model.safetensors resumed/model.safetensors
	local p=$(( $(stat -c %s plain/model.safetensors) / 4 ))   # fp32: 4 bytes a parameter
	for r in 0 1; do
		for run in saved resumed; do
			local d=$(( ($(cat $run.rss.$r) - $(cat plain.rss.$r)) * 1024 ))
			echo "# rank $r, $run: max RSS $d bytes over the run without checkpoints (P = $p)" >&3
			[ "$d" -le "$p" ]
		done
	done
}
