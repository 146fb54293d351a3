#!/usr/bin/env bash
# bench/pack/run.sh - tokenize+pack throughput: ft-tokenize | ft-pack against
# LLaMA-Factory's own preprocessing (get_dataset + its data collator over all
# batches), same tokenizer, template, cutoff_len and batch size, in one run.
#
#   bench/pack/run.sh [REPEAT]      (default REPEAT=10)
#
# Each demo dataset of ../shared/data/llamafactory is repeated REPEAT times
# (a temporary dataset_dir) so that the timings are not all start-up.
# Needs: `make` done, ../shared, and a Python with llamafactory 0.9.5
# (PYTHON, default /work/venv/bin/python; see lf_preprocess.py).
# Prints one line per case and the ratio; record results in
# docs/BENCHMARKS.md (## Pack).
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT=$PWD
SHARED=${FT_SHARED:-$ROOT/../shared}
PY=${PYTHON:-/work/venv/bin/python}
REPEAT=${1:-10}
TOK=$SHARED/tokenizers/qwen3
export PATH="$ROOT/bin:$PATH"
[ -d "$SHARED/data/llamafactory" ] || { echo "bench/pack: $SHARED is absent" >&2; exit 1; }
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT

# A dataset_dir with each demo dataset repeated REPEAT times.
"$PY" - "$SHARED/data/llamafactory" "$tmp/data" "$REPEAT" <<'PYEOF'
import json, os, sys
src, dst, rep = sys.argv[1], sys.argv[2], int(sys.argv[3])
os.makedirs(dst)
info = json.load(open(os.path.join(src, "dataset_info.json")))
out = {}
for name in ("alpaca_en_demo", "c4_demo", "dpo_en_demo"):
    e = dict(info[name]); f = e["file_name"]
    text = open(os.path.join(src, f), encoding="utf-8").read()
    if f.endswith(".jsonl"):
        data = text if text.endswith("\n") else text + "\n"
        open(os.path.join(dst, f), "w", encoding="utf-8").write(data * rep)
    else:
        json.dump(json.loads(text) * rep, open(os.path.join(dst, f), "w", encoding="utf-8"), ensure_ascii=False)
    out[name] = e
json.dump(out, open(os.path.join(dst, "dataset_info.json"), "w"), indent=2)
PYEOF

have_ft_tokenize_dataset() {
	ft-tokenize --help 2>&1 | grep -q -- "--dataset" 
}

printf '%-16s %-5s %8s %10s | %-10s %9s %9s | %-10s %9s %9s | %s\n' dataset stage MB tokens \
	"ft s" "ft tok/s" "ft MB/s" "LF s" "LF tok/s" "LF MB/s" "ft/LF"
run_case() {   # dataset stage template extra-ft-pack-flags
	local ds=$1 stage=$2 tmpl=$3; shift 3
	local f; f=$(DS=$ds "$PY" -c 'import json,os; print(json.load(open("'"$tmp/data"'/dataset_info.json"))[os.environ["DS"]]["file_name"])')
	local mb; mb=$(awk -v b="$(stat -c %s "$tmp/data/$f")" 'BEGIN{printf "%.2f", b/1e6}')
	local lf; lf=$("$PY" bench/pack/lf_preprocess.py --stage "$stage" --dataset "$ds" --dataset_dir "$tmp/data" \
		--tokenizer "$TOK" --template "$tmpl" --cutoff_len 1024 --batch_size 4 2>/dev/null | tail -n 1)
	local lf_s lf_tok
	lf_s=$(echo "$lf" | "$PY" -c 'import json,sys; print(json.load(sys.stdin)["total_s"])')
	lf_tok=$(echo "$lf" | "$PY" -c 'import json,sys; print(json.load(sys.stdin)["tokens"])')
	local ft_s="n/a" ft_tok=0 ratio="n/a"
	if have_ft_tokenize_dataset; then
		local t0 t1
		t0=$(date +%s.%N)
		ft-tokenize --stage "$stage" --model_name_or_path "$TOK" --template "$tmpl" --dataset "$ds" \
			--dataset_dir "$tmp/data" --cutoff_len 1024 -o - 2>/dev/null \
			| ft-pack -q --cutoff_len 1024 --per_device_train_batch_size 4 "$@" -o "$tmp/out.ftb.zst"
		t1=$(date +%s.%N)
		ft_s=$(awk -v a="$t0" -v b="$t1" 'BEGIN{printf "%.3f", b-a}')
		ft_tok=$(ft-cat "$tmp/out.ftb.zst" | head -n 1 | "$PY" -c 'import json,sys; print(json.load(sys.stdin)["meta"]["counts"]["tokens"])')
		ratio=$(awk -v a="$ft_s" -v b="$lf_s" 'BEGIN{printf "%.1fx", b/a}')
	fi
	awk -v ds="$ds" -v st="$stage" -v mb="$mb" -v ft_s="$ft_s" -v ft_tok="$ft_tok" -v lf_s="$lf_s" \
	    -v lf_tok="$lf_tok" -v r="$ratio" 'BEGIN{
		fts = ft_s == "n/a" ? "n/a" : sprintf("%.0f", ft_tok / ft_s); ftm = ft_s == "n/a" ? "n/a" : sprintf("%.2f", mb / ft_s)
		printf "%-16s %-5s %8s %10d | %-10s %9s %9s | %-10.3f %9.0f %9.2f | %s\n", ds, st, mb, lf_tok, ft_s, fts, ftm, lf_s, lf_tok / lf_s, mb / lf_s, r }'
}
run_case alpaca_en_demo sft qwen
run_case c4_demo pt default
run_case dpo_en_demo dpo qwen
have_ft_tokenize_dataset || echo "(ft-tokenize has no dataset mode in this build: ft columns not measured)"
