#!/usr/bin/env bash
# demo.sh - `make demo`: install what is missing, build, and run the ft
# workflow on the embedded default.  It runs the stages whose tools exist
# and grows as tools land.  DEMO_OUT (default demo-out/) holds artifacts.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
make -j"$(nproc)" >/dev/null
out=${DEMO_OUT:-demo-out}
mkdir -p "$out"
export PATH="$PWD/bin:$PATH"

echo "== ft demo: artifacts in $out/"
if [ -x bin/ft-cat ]; then
	printf '%s\n' '{"format":"ft-stream","version":1,"kind":"demo","producer":"demo.sh","meta":{}}' \
		'{"text":"hello"}' '{"text":"world"}' | ft-cat --encode -o "$out/hello.ftb.zst"
	echo "-- ft-cat round trip of a two-record stream:"
	ft-cat "$out/hello.ftb.zst"
fi
echo "== demo done"
