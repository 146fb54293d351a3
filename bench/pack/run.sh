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


secs() { awk -v a="$1" -v b="$2" 'BEGIN{printf "%.3f", b-a}'; }
jget() { "$PY" -c 'import json,sys; d=json.load(sys.stdin); print(eval("d" + sys.argv[1]))' "$1"; }

printf '%-15s %-4s %6s %8s | %-24s | %-32s\n' "" "" "input" "tokens" "pack only (s): ft LF ratio" \
	"tokenize+pack: ft s, LF s, ratio"
run_case() {   # dataset stage template [extra ft-pack flags]
	local ds=$1 stage=$2 tmpl=$3; shift 3
	local f; f=$(DS=$ds "$PY" -c 'import json,os; print(json.load(open("'"$tmp/data"'/dataset_info.json"))[os.environ["DS"]]["file_name"])')
	local mb; mb=$(awk -v b="$(stat -c %s "$tmp/data/$f")" 'BEGIN{printf "%.2f", b/1e6}')
	local lf; lf=$("$PY" bench/pack/lf_preprocess.py --stage "$stage" --dataset "$ds" --dataset_dir "$tmp/data" \
		--tokenizer "$TOK" --template "$tmpl" --cutoff_len 1024 --batch_size 4 --dump "$tmp/$ds.tok.jsonl" \
		2>/dev/null | tail -n 1)
	local lf_tot lf_coll lf_tok
	lf_tot=$(echo "$lf" | jget '["total_s"]'); lf_coll=$(echo "$lf" | jget '["collate_s"]')
	lf_tok=$(echo "$lf" | jget '["tokens"]')
	# ft-pack alone on LLaMA-Factory's token records (encoding them is not timed)
	ft-cat --encode < "$tmp/$ds.tok.jsonl" > "$tmp/$ds.tok.zst"
	local t0 t1 pk
	t0=$(date +%s.%N)
	ft-pack -q --cutoff_len 1024 --per_device_train_batch_size 4 "$@" "$tmp/$ds.tok.zst" -o "$tmp/out.ftb.zst"
	t1=$(date +%s.%N)
	pk=$(secs "$t0" "$t1")
	local pr; pr=$(awk -v a="$pk" -v b="$lf_coll" 'BEGIN{printf "%.1fx", b/a}')
	local full="(ft-tokenize has no dataset mode yet)"
	if ft-tokenize --help 2>&1 | grep -q -- "--dataset"; then
		t0=$(date +%s.%N)
		ft-tokenize --no_cache --stage "$stage" --tokenizer "$TOK" --template "$tmpl" --dataset "$ds" \
			--dataset_dir "$tmp/data" --cutoff_len 1024 -o - 2>/dev/null \
			| ft-pack -q --cutoff_len 1024 --per_device_train_batch_size 4 "$@" -o "$tmp/out2.ftb.zst"
		t1=$(date +%s.%N)
		local fs; fs=$(secs "$t0" "$t1")
		local ftok; ftok=$({ ft-cat "$tmp/out2.ftb.zst" || true; } | head -n 1 | jget '["meta"]["counts"]["tokens"]')
		full=$(awk -v s="$fs" -v l="$lf_tot" -v t="$ftok" -v mb="$mb" 'BEGIN{printf "%.3f %.3f %.1fx  ft %.0f tok/s %.2f MB/s, LF %.0f tok/s %.2f MB/s", s, l, l/s, t/s, mb/s, t/l, mb/l}')
	else
		full="n/a   $lf_tot  n/a   (ft-tokenize has no dataset mode in this build); LF $(awk -v t="$lf_tok" -v l="$lf_tot" -v mb="$mb" 'BEGIN{printf "%.0f tok/s %.2f MB/s", t/l, mb/l}')"
	fi
	printf '%-15s %-4s %5sMB %8s | %6s %6.3f %6s       | %s\n' "$ds" "$stage" "$mb" "$lf_tok" "$pk" "$lf_coll" "$pr" "$full"
}
run_case alpaca_en_demo sft qwen
run_case c4_demo pt default
run_case dpo_en_demo dpo qwen
