#!/bin/bash
# bench/train-gpu/check_libs.sh [BUNDLE] - is the bundle (default
# bundle/) closed: does every binary and shared library in it resolve
# with only what a PyTorch CUDA 13 image provides plus BUNDLE/lib?  Runs
# ldd on each ELF file of BUNDLE/bin and BUNDLE/lib with
# LD_LIBRARY_PATH=BUNDLE/lib and accepts a needed library only when
#   - it resolved inside BUNDLE/lib, or
#   - its name is in IMAGE below (glibc's, the GCC runtime a PyTorch
#     image has for itself, CUDA's runtime/cuBLAS and the driver's), or
#   - BUNDLE/lib/fallback has it (run.sh uses that copy only where the
#     machine lacks the library: libstdc++/libgcc_s, whose Debian 12
#     builds need glibc 2.36, and libexpat, likewise).
# Anything else (this machine's libzstd, libcairo's X11 tree, ...) would
# be missing on the GPU machine: one line each, exit 1.  bundle.sh runs
# this after gathering.
#   --runtime: the GPU machine's check (run.sh's first part): ldd with
#   run.sh's LD_LIBRARY_PATH (bundle/lib, cuBLAS's directory, the
#   fallbacks in use), and a library not found is an error even when the
#   image should have had it (a missing cuBLAS shows here, not as a
#   failed dlopen in every part after).
set -u
b=$(cd "${1:-bundle}" 2>/dev/null && pwd) || { echo "check_libs: no bundle at ${1:-bundle}" >&2; exit 1; }
runtime=0
[ "${2:-}" = --runtime ] && runtime=1
ldpath=$b/lib
[ $runtime = 1 ] && ldpath=${LD_LIBRARY_PATH:-$b/lib}
IMAGE="linux-vdso.so.1 ld-linux-x86-64.so.2 libc.so.6 libm.so.6 libdl.so.2 librt.so.1
	libpthread.so.0 libresolv.so.2 libutil.so.1
	libstdc++.so.6 libgcc_s.so.1 libgomp.so.1
	libcudart.so.13 libcublas.so.13 libcublasLt.so.13 libcuda.so.1"
bad=0 files=0
declare -A seen=()
for f in "$b"/bin/* "$b"/lib/*.so* "$b"/lib/fallback/*.so*; do
	[ -f "$f" ] && [ "$(head -c 4 "$f" 2>/dev/null | od -An -c | tr -d ' ')" = '177ELF' ] || continue
	files=$((files + 1))
	while read -r name arrow path _; do
		case $name in
		linux-vdso*|statically|not) continue ;;
		/*) path=$name; name=$(basename "$name") ;;   # the loader, by path
		esac
		[ "$arrow" = "=>" ] || [ -n "$path" ] || continue
		seen[$name]=1
		if [ $runtime = 1 ] && [ "$path" = not ]; then
			echo "check_libs: ${f#"$b"/} needs $name: not found with LD_LIBRARY_PATH=$ldpath"
			bad=1
			continue
		fi
		case $path in "$b"/lib/*) continue ;; esac
		case " $(echo $IMAGE) " in *" $name "*) continue ;; esac
		[ -e "$b/lib/fallback/$name" ] && continue
		where="resolved to $path here"
		[ "$path" = not ] && where="not found"
		echo "check_libs: ${f#"$b"/} needs $name ($where): not in bundle/lib, and a PyTorch CUDA 13 image does not provide it"
		bad=1
	done < <(LD_LIBRARY_PATH=$ldpath ldd "$f" 2>&1)
done
[ $files -gt 0 ] || { echo "check_libs: no ELF files under $b/bin or $b/lib"; exit 1; }
if [ $bad -eq 0 ]; then
	echo "check_libs: closed$([ $runtime = 1 ] && echo " (runtime: every library found)"): $files files, ${#seen[@]} libraries, each in bundle/lib or in the image's list"
fi
exit $bad
