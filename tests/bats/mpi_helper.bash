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
mpi2() { mpirun --oversubscribe --allow-run-as-root -np 2 "$@"; }
# field_diff A B FIELD [LINES]: largest |a - b| of FIELD (0 where absent)
# over the lines of two logs, line by line; LINES, a jq filter, picks the
# lines compared (default: all)
field_diff() {
	local sel=${4:-.}
	paste <(jq "$sel | .[\"$3\"] // 0" "$1") <(jq "$sel | .[\"$3\"] // 0" "$2") |
		awk '{ d = $1 - $2; if (d < 0) d = -d; if (d > m) m = d } END { printf "%g\n", m + 0 }'
}
within() { awk -v x="$1" -v t="$2" 'BEGIN { exit !(x <= t) }'; }
