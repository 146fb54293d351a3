#!/bin/sh
# bench/train-dist/run.sh - data parallel scaling on the CPU: 2 ranks x 1
# thread (mpirun) against 1 rank x 1 thread on the same global batch
# (accumulation 2 per rank vs 4), for LoRA and full fine-tuning of a 10M
# Llama-shaped model from --train_from_scratch, and the share of the
# 2-rank run spent in collectives (ft-train's end note: the gradient and
# loss all-reduces, waiting for the slower rank included) and in the part
# of the gradient sums the backward did not hide.  Run from the
# repository root after `make`; about a minute.
#
#   bench/train-dist/run.sh          # STEPS=6 by default
#
# Scaling efficiency = t(1 rank) / (2 x t(2 ranks)) for the same steps: 1.0
# is perfect.  Two ranks need two free cores: on a loaded machine the
# numbers say more about the load than about ft.
set -eu
STEPS=${STEPS:-6}
out=build/bench/train-dist
rm -rf "$out" && mkdir -p "$out"
command -v mpirun >/dev/null || { echo "run.sh: mpirun is absent (apt-get install openmpi-bin)" >&2; exit 1; }
[ -f build/libft_mpi.so ] || { echo "run.sh: build/libft_mpi.so is absent (make with mpicc)" >&2; exit 1; }
# before OMP_NUM_THREADS=1, which GNU nproc reports instead of the cores
cores=$(nproc)
export OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1
MPIRUN="mpirun --oversubscribe --allow-run-as-root --bind-to core -np 2"

# the model: hidden 384, 6 layers, 8 heads / 4 kv, inter 1024, vocab 256 (~10M)
cat > "$out/config.json" <<EOC
{"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 384,
 "intermediate_size": 1024, "num_hidden_layers": 6, "num_attention_heads": 8,
 "num_key_value_heads": 4, "head_dim": 48, "vocab_size": 256, "max_position_embeddings": 256,
 "rms_norm_eps": 1e-05, "rope_theta": 10000.0, "hidden_act": "silu", "tie_word_embeddings": false,
 "bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 0, "dtype": "float32",
 "initializer_range": 0.02, "attention_bias": false, "mlp_bias": false}
EOC
# 32 micro-batches of 4 x 128 random tokens (every token a label)
awk -v n=32 -v B=4 -v T=128 'BEGIN {
	srand(7)
	printf "{\"format\": \"ft-stream\", \"version\": 1, \"kind\": \"batches\", \"producer\": \"bench\", "
	printf "\"meta\": {\"stage\": \"pt\", \"layout\": \"padded\", \"split\": \"train\", \"pad_id\": 0, "
	printf "\"eos_id\": 2, \"seq_len\": %d, \"batch_size\": %d, \"rows_per_batch\": %d, ", T, B, B
	printf "\"pairwise\": false, \"cutoff_len\": %d, \"seed\": 7, \"tokenizer\": \"bench\", ", T
	printf "\"vocab_size\": 256, \"counts\": {\"batches\": %d, \"examples\": %d, \"tokens\": %d, ", n, n * B, n * B * T
	printf "\"label_tokens\": %d, \"pad_tokens\": 0}}}\n", n * B * T
	for (i = 0; i < n; i++) {
		ids = ""
		for (j = 0; j < B * T; j++) ids = ids (j ? ", " : "") int(3 + rand() * 253)
		printf "{\"index\": %d, \"B\": %d, \"T\": %d, \"n_label_tokens\": %d, \"n_tokens\": %d, ", i, B, T, B * T, B * T
		printf "\"n_examples\": %d, \"input_ids\": [%s], \"labels\": [%s]}\n", B, ids, ids
	}
}' > "$out/batches.jsonl"
bin/ft-cat --encode < "$out/batches.jsonl" > "$out/train.zst"

secs() { sed -n 's/.*"train_runtime": \([0-9.]*\).*/\1/p' "$1/train_results.json"; }
echo "machine: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'), $cores cores; $STEPS steps of 4 x 4 x 128 tokens"
echo "load average before: $(cut -d' ' -f1-3 /proc/loadavg)"
printf '%-6s %12s %12s %8s %11s %12s %9s\n' mode "1x1 s/step" "2x1 s/step" speedup efficiency "collectives" exposed
for mode in lora full; do
	args="--stage pt --train_from_scratch --config $out/config.json --train $out/train.zst
	      --finetuning_type $mode --max_steps $STEPS --logging_steps 1 --save_strategy no
	      --learning_rate 1e-4"
	# shellcheck disable=SC2086
	bin/ft-train $args --gradient_accumulation_steps 4 --output_dir "$out/$mode-1" -q
	# shellcheck disable=SC2086
	$MPIRUN bin/ft-train $args --gradient_accumulation_steps 2 --output_dir "$out/$mode-2" \
		2> "$out/$mode-2.err" > /dev/null
	# "X s of Y s in collectives on rank 0; ... Z s of them not hidden by it"
	note=$(sed -n 's/.*: \([0-9.]*\) s of \([0-9.]*\) s.* in collectives on rank 0\(.*, \([0-9.]*\) s of them not hidden\)\{0,1\}.*/\1 \2 \4/p' \
		"$out/$mode-2.err")
	[ -n "$note" ] || { echo "run.sh: no collectives note in $out/$mode-2.err" >&2; exit 1; }
	awk -v m="$mode" -v a="$(secs "$out/$mode-1")" -v b="$(secs "$out/$mode-2")" -v s="$STEPS" -v n="$note" \
		'BEGIN { split(n, x, " "); if (x[3] == "") x[3] = x[1]   # not overlapped: all exposed
			printf "%-6s %12.3f %12.3f %8.2f %11.2f %11.1f%% %8.1f%%\n",
			m, a / s, b / s, a / b, a / (2 * b), 100 * x[1] / x[2], 100 * x[3] / x[2] }'
done
echo "load average after: $(cut -d' ' -f1-3 /proc/loadavg)"
