# mpi_helper.bash - loaded (after helper) by the bats files that compare
# mpirun -np 2 ft-train with one process: the skip when MPI or the tools
# the comparison needs are absent, the launch, and log and tensor checks.

# one thread per rank: the sums are then in an order the tests can compare
export OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1
MAXDIFF="$FT_ROOT/build/tests/st_maxdiff"

need_mpi() {
	command -v mpirun >/dev/null || skip "mpirun is absent (apt-get install openmpi-bin libopenmpi-dev)"
	[ -f "$FT_ROOT/build/libft_mpi.so" ] || skip "build/libft_mpi.so is not built (make with mpicc present)"
	[ -x "$MAXDIFF" ] || skip "build/tests/st_maxdiff is not built (make unit)"
	command -v jq >/dev/null || skip "jq is not installed"
}
mpi2() { timeout 600 mpirun --oversubscribe --allow-run-as-root -np 2 "$@"; }
# need_nccl_emu: need_mpi, and the job's ranks on two emulated devices
# (build/libft_cuda_emu.so, one emulation thread) over the fake NCCL
# (build/libnccl_emu.so), or a skip
need_nccl_emu() {
	need_mpi
	[ -f "$FT_ROOT/build/libft_cuda_emu.so" ] && [ -f "$FT_ROOT/build/libnccl_emu.so" ] ||
		skip "the emulated backend or fake NCCL is not built (make unit)"
	export FT_CUDA_LIB="$FT_ROOT/build/libft_cuda_emu.so" FT_NCCL_LIB="$FT_ROOT/build/libnccl_emu.so"
	export FT_EMU_THREADS=1 FT_EMU_DEVICES=2
}
# field_diff A B FIELD [LINES]: largest |a - b| of FIELD (0 where absent)
# over the lines of two logs, line by line; LINES, a jq filter, picks the
# lines compared (default: all)
field_diff() {
	local sel=${4:-.}
	paste <(jq "$sel | .[\"$3\"] // 0" "$1") <(jq "$sel | .[\"$3\"] // 0" "$2") |
		awk '{ d = $1 - $2; if (d < 0) d = -d; if (d > m) m = d } END { printf "%g\n", m + 0 }'
}
within() { awk -v x="$1" -v t="$2" 'BEGIN { exit !(x <= t) }'; }
