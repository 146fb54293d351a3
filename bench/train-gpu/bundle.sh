#!/bin/sh
# bench/train-gpu/bundle.sh - build the CUDA-linked binaries here (a
# machine with nvcc and the Debian -dev packages) and gather them, the
# small shared libraries they need that a GPU image lacks, the fixtures
# and the scripts into bundle/ (ignored by git).  Then copy bundle/ to
# the GPU machine and run `bundle/run.sh` there (see README.md).
set -eu
cd "$(dirname "$0")/../.."
root=$(pwd)
out=$root/bundle
command -v /usr/local/cuda/bin/nvcc >/dev/null || { echo "bundle.sh: nvcc not found" >&2; exit 1; }
make -j2 all gpu-tests build/gpu/bench_gpu
rm -rf "$out"
mkdir -p "$out/bin" "$out/lib" "$out/tests/gpu" "$out/tests/fixtures" "$out/bench/train-gpu"
# the tools find libft_cuda.so beside themselves (lib/model/device.h)
# (ft-tokenize and ft-pack make features_check.sh's modules_to_save data)
cp build/gpu/test_* build/gpu/bench_gpu bin/ft-train bin/ft-cat bin/ft-generate bin/ft-tokenize \
	bin/ft-pack build/libft_cuda.so "$out/bin/"
cp tests/gpu/run.sh "$out/tests/gpu/"
cp -r tests/fixtures/models tests/fixtures/parity tests/fixtures/trainer tests/fixtures/generate \
	tests/fixtures/merge tests/fixtures/pref tests/fixtures/quant \
	tests/fixtures/grpo tests/fixtures/vocab tests/fixtures/ppo "$out/tests/fixtures/"
# the family models features_check.sh trains (their reference files are
# for the CPU's tests: 9 MB of the carry's 64 MiB)
for f in gemma2 gemma3 qwen3 phi3 phi4mini; do
	mkdir -p "$out/tests/fixtures/families/$f"
	cp -r tests/fixtures/families/$f/model "$out/tests/fixtures/families/$f/"
done
mkdir -p "$out/tests/fixtures/lf-examples/extras"
cp -r tests/fixtures/lf-examples/extras/multi_tokens "$out/tests/fixtures/lf-examples/extras/"
cp bench/train-gpu/run.sh bench/train-gpu/check_env.sh bench/train-gpu/train_check.sh \
	bench/train-gpu/pref_check.sh bench/train-gpu/qlora_check.sh bench/train-gpu/features_check.sh \
	bench/train-gpu/check_libs.sh bench/train-gpu/torch_gpu.py bench/train-gpu/gen_torch.py \
	"$out/bench/train-gpu/"
printf '#!/bin/sh\nexec "$(dirname "$0")/bench/train-gpu/run.sh" "$@"\n' > "$out/run.sh"
chmod +x "$out/run.sh"
# Shared libraries: everything ldd resolves except glibc's own and the
# CUDA/driver ones (the GPU machine has those, matched to its driver).
for b in "$out"/bin/*; do
	ldd "$b" | awk '/=> \//{print $3}'
done | sort -u | while read -r so; do
	case $(basename "$so") in
	libc.so*|libm.so*|libdl.so*|librt.so*|libpthread.so*|ld-linux*|libresolv.so*) ;;
	libcuda.so*|libcublas*|libcudart*|libnvidia*|libnvrtc*) ;;
	# every PyTorch machine has these; ours (Debian 12) need glibc 2.36,
	# so they are used only where the machine lacks them (run.sh)
	# (libexpat: Debian 12's needs glibc 2.36; every Python has one)
	libstdc++.so*|libgcc_s.so*|libexpat.so*) mkdir -p "$out/lib/fallback"; cp -L "$so" "$out/lib/fallback/" ;;
	*) cp -L "$so" "$out/lib/" ;;
	esac
done
strip --strip-unneeded "$out"/bin/* 2>/dev/null || true
# The newest glibc symbol version the binaries need: the GPU image's
# glibc must be at least this (ldd --version there).
need=$(for f in "$out"/bin/* "$out"/lib/*.so*; do objdump -T "$f" 2>/dev/null; done |
	grep -o 'GLIBC_[0-9.]*' | sort -t. -k1,1 -k2,2n -k3,3n -u | tail -1)
echo "$need" > "$out/GLIBC_NEEDED"
# every library the binaries need is in lib/ or in a PyTorch CUDA 13 image
bench/train-gpu/check_libs.sh "$out" || { echo "bundle.sh: bundle/ is not closed (above)" >&2; exit 1; }
# bitsandbytes for qlora_check.sh's QLoRA line (the GPU image has none,
# and its 43 MB wheel, a library per CUDA and ROCm version, would not fit):
# the wheel's package and metadata in py/ with only the CUDA 13.0 library
# (4 MB, 3.5 xz-compressed: the image's PyTorch is cu130, which picks
# libbitsandbytes_cuda130.so; BNB_CUDA_VERSION cannot pick another), put on
# PYTHONPATH by run.sh where the machine's Python lacks the package.
# BNB_WHEEL names the wheel; else pip downloads it into build/wheels/
# once; without one the QLoRA line says bitsandbytes is not installed.
bnb=0.50.2
py=${PYTHON:-python3}
whl=${BNB_WHEEL:-$(ls build/wheels/bitsandbytes-$bnb-*.whl 2>/dev/null | head -1)}
if [ -z "$whl" ]; then
	timeout 180 "$py" -m pip download -q --no-deps --only-binary=:all: --platform manylinux_2_24_x86_64 \
		-d build/wheels "bitsandbytes==$bnb" >/dev/null 2>&1
	whl=$(ls build/wheels/bitsandbytes-$bnb-*.whl 2>/dev/null | head -1)
fi
if [ -n "$whl" ]; then
	"$py" - "$whl" "$out/py" <<'PYEOF' || { echo "bundle.sh: cannot unpack $whl" >&2; exit 1; }
import re, sys, zipfile
z = zipfile.ZipFile(sys.argv[1])
for n in z.namelist():
    m = re.search(r"libbitsandbytes_(cuda\d+|rocm\d+|xpu\d+)\.so$", n)
    if not m or m.group(1) == "cuda130":
        z.extract(n, sys.argv[2])
PYEOF
else
	echo "bundle.sh: no bitsandbytes $bnb wheel (BNB_WHEEL, or pip download into build/wheels/ failed): the QLoRA line will say it is not installed" >&2
fi
# The device tool carries the checkout's tracked files and the carried
# bundle/ together, 64 MiB in all: bin/, lib/, tests/ and py/ travel
# as one xz-compressed tar (47 MB -> about 21), which run.sh unpacks first (tar,
# or Python's tarfile where tar lacks xz).
tar -C "$out" -cf - bin lib tests $([ -d "$out/py" ] && echo py) | xz -6 -T1 > "$out/payload.tar.xz.tmp" &&
	mv "$out/payload.tar.xz.tmp" "$out/payload.tar.xz" || { echo "bundle.sh: cannot pack bundle/payload.tar.xz" >&2; exit 1; }
rm -rf "$out/bin" "$out/lib" "$out/tests" "$out/py"
# what travels: the bundle plus the tracked and untracked, not ignored,
# files of the checkout the device tool sends (this one), under 62 MiB to
# leave room for the lead's tree growing
tree=$(git ls-files -z --cached --others --exclude-standard | xargs -0 stat -c %s 2>/dev/null |
	awk '{ s += $1 } END { print s + 0 }')
bsz=$(du -sb "$out" | cut -f1)
total=$((tree + bsz))
[ "$total" -le $((62 * 1048576)) ] || { echo "bundle.sh: the checkout ($((tree / 1048576)) MiB) and bundle/ ($((bsz / 1048576)) MiB) are $((total / 1048576)) MiB, over the 62 MiB kept under the device tool's 64 MiB" >&2; exit 1; }
echo "bundle.sh: bundle/ $((bsz / 1048576)) MiB + the checkout's files $((tree / 1048576)) MiB = $((total / 1048576)) MiB of the device tool's 64 MiB"
echo "bundle.sh: ready in bundle/ (needs $need or newer, cuBLAS 13 on the GPU machine)"
