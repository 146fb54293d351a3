#!/usr/bin/env bash
# demo.sh - `make demo`: install what is missing, build, and run the whole
# ft workflow on the embedded default (demo/), offline, on the CPU:
#   generated data -> pretrain a tiny Llama from scratch (pt) -> LoRA sft
#   -> loss curve -> merge -> answers before/after on held-out prompts.
# Environment: DEMO_OUT (default demo-out), DEMO_FAST=1 (fewer epochs, for
# CI), DEMO_PT_EPOCHS, DEMO_SFT_EPOCHS.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh >/dev/null
printf '== 0. build (make -j%s): one line per file compiled\n' "$(nproc)"
# the build briefly: the file each compiler call makes, not its flags
make -j"$(nproc)" 2>&1 | sed -n 's/.* -o \([^ ]*\)$/   built \1/p; /error/p'
export PATH="$PWD/bin:$PATH"

out=${DEMO_OUT:-demo-out}
fast=${DEMO_FAST:-0}
pt_epochs=${DEMO_PT_EPOCHS:-$([ "$fast" = 1 ] && echo 1 || echo 2)}
# The reduced mode pretrains on a smaller corpus: the identity answers are
# learnt by the LoRA step whatever the base knows.
[ "$fast" = 1 ] && export DEMO_CORPUS_LINES=${DEMO_CORPUS_LINES:-800}
# 30: with every epoch reshuffled (as the HF Trainer) 20 stopped short of the
# loss plateau (2.65) on some runs
sft_epochs=${DEMO_SFT_EPOCHS:-30}
rm -rf "$out"
mkdir -p "$out"
step() { printf '\n== %s\n' "$*"; }
show() { printf '   $ %s\n' "$*"; "$@"; }

step "1. data: a generated corpus, an identity SFT set and held-out prompts ($out/data)"
scripts/demo-data.sh "$out/data"
wc -l "$out/data/corpus.jsonl" "$out/data/heldout.jsonl" | sed 's/^/   /'

step "2. pretrain a ~0.8M-parameter Llama from scratch on the corpus ($pt_epochs epochs)"
show ft-tokenize --stage pt --dataset "$out/data/corpus.jsonl" --tokenizer demo --template empty \
	--cutoff_len 128 -o "$out/pt.ftb.zst"
show ft-pack --stage pt --packing --cutoff_len 128 --per_device_train_batch_size 8 \
	--num_train_epochs "$pt_epochs" --output_dir "$out/pt-data" "$out/pt.ftb.zst"
show ft-train --stage pt --train "$out/pt-data" --train_from_scratch --config demo/config.json \
	--finetuning_type full --learning_rate 3e-3 --num_train_epochs "$pt_epochs" \
	--lr_scheduler_type cosine --warmup_ratio 0.05 --logging_steps 20 --save_steps 100000 \
	--output_dir "$out/base"
cp demo/tokenizer.json demo/tokenizer_config.json "$out/base/"

step "3. LoRA sft on the identity set with the default template ($sft_epochs epochs)"
show ft-tokenize --stage sft --dataset "$out/data/identity.json" --tokenizer "$out/base" \
	--template default --cutoff_len 128 -o "$out/sft.ftb.zst"
show ft-pack --per_device_train_batch_size 8 --num_train_epochs "$sft_epochs" \
	--output_dir "$out/sft-data" "$out/sft.ftb.zst"
show ft-train --stage sft --model_name_or_path "$out/base" --train "$out/sft-data" \
	--finetuning_type lora --lora_target all --lora_rank 8 --learning_rate 3e-3 \
	--num_train_epochs "$sft_epochs" --lr_scheduler_type cosine --logging_steps 5 \
	--save_steps 100000 --output_dir "$out/lora" --plot_loss

step "4. the loss curve"
show ft-plot --ascii --width 72 --height 12 "$out/lora/trainer_log.jsonl"

step "5. merge the adapter into the base model"
show ft-merge --model_name_or_path "$out/base" --adapter_name_or_path "$out/lora" \
	--export_dir "$out/merged"

step "6. held-out prompts, base vs tuned (greedy)"
for m in base merged; do
	ft-generate --model_name_or_path "$out/$m" --template default --do_sample false \
		--max_new_tokens 24 --do_predict --output_dir "$out/predict-$m" -q "$out/data/heldout.jsonl"
done
accuracy() {
	local hits total
	total=$(wc -l < "$1")
	hits=$(grep -c '"predict":"[^"]*ft-bot' "$1" || true)
	echo "$hits/$total"
}
for m in base merged; do
	printf '   %-6s first answer: %s\n' "$m" "$(head -1 "$out/predict-$m/generated_predictions.jsonl" | sed 's/.*"predict":"\([^"]*\)".*/\1/')"
done
base_acc=$(accuracy "$out/predict-base/generated_predictions.jsonl")
tuned_acc=$(accuracy "$out/predict-merged/generated_predictions.jsonl")
echo "   accuracy (answer names ft-bot): base $base_acc, tuned $tuned_acc"

step "artifacts"
cat <<EOT
   base model      $out/base/            (config.json, model.safetensors)
   adapter         $out/lora/            (adapter_model.safetensors, adapter_config.json)
   training log    $out/lora/trainer_log.jsonl
   loss curve      $out/lora/training_loss.png
   merged model    $out/merged/
   predictions     $out/predict-{base,merged}/generated_predictions.jsonl, predict_results.json
EOT
echo "demo: base $base_acc -> tuned $tuned_acc"
[ "${tuned_acc%%/*}" -gt "${base_acc%%/*}" ] || { echo "demo: the tuned model did not beat the base" >&2; exit 1; }
