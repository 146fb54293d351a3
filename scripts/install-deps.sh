#!/bin/sh
# install-deps.sh - install the Debian packages ft needs to build and test.
# Idempotent: installs only what is missing.  As root it runs apt-get;
# otherwise it prints the exact command to run.
#
#   libzstd-dev      record stream compression
#   libmsgpack-dev   record encoding (msgpack-c)
#   libjansson-dev   JSON with line/column errors
#   libpcre2-dev     tokenizer pre-tokenizer regexes (UTF + UCP + JIT)
#   libutf8proc-dev  Unicode normalization (NFC/NFKC)
#   libopenblas-dev  CPU matrix products
#   libcairo2-dev    ft-plot PNG/SVG/PDF output
#   libyaml-dev      ft-run reads LLaMA-Factory YAML configs
#   bats bats-assert bats-support   command-line tests
#   pkg-config make gcc zstd        build and test tools
#   jq               bats tests check batch streams as JSON (ft-cat | jq)
#   openmpi-bin libopenmpi-dev   mpirun ft-train (data parallel; build/libft_mpi.so)
set -e
PKGS="libzstd-dev libmsgpack-dev libjansson-dev libpcre2-dev libutf8proc-dev
libopenblas-dev libcairo2-dev libyaml-dev bats bats-assert bats-support pkg-config make gcc zstd jq
openmpi-bin libopenmpi-dev"

missing=""
for p in $PKGS; do
	dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing="$missing $p"
done
if [ -z "$missing" ]; then
	echo "install-deps: all dependencies present"
	exit 0
fi
if [ "$(id -u)" -ne 0 ]; then
	echo "install-deps: missing:$missing" >&2
	echo "run: sudo apt-get update && sudo apt-get install -y$missing" >&2
	exit 1
fi
echo "install-deps: installing$missing"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq $missing
