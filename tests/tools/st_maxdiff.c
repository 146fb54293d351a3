/* st_maxdiff A B - the largest |a - b| over the tensors of two safetensors
 * files (or model directories) holding the same names and shapes, printed
 * as one number; exit 1 when the names, shapes or files differ.  The
 * bats tests compare trained weights within a stated tolerance with it
 * (tests/bats/ft-train-mpi.bats); make test never needs Python. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "format/safetensors.h"
#include "util/error.h"

int main(int argc, char **argv)
{
	if (argc != 3) {
		fprintf(stderr, "usage: st_maxdiff A B\n");
		return 2;
	}
	ft_st *a = ft_st_open(argv[1]), *b = ft_st_open(argv[2]);
	if (!a || !b) {
		fprintf(stderr, "st_maxdiff: %s\n", ft_errmsg());
		return 1;
	}
	if (ft_st_count(a) != ft_st_count(b)) {
		fprintf(stderr, "st_maxdiff: %zu tensors vs %zu\n", ft_st_count(a), ft_st_count(b));
		return 1;
	}
	double worst = 0;
	for (size_t i = 0; i < ft_st_count(a); i++) {
		const ft_st_tensor *x = ft_st_at(a, i), *y = ft_st_find(b, x->name);
		if (!y || y->numel != x->numel) {
			fprintf(stderr, "st_maxdiff: %s: absent or another size in %s\n", x->name, argv[2]);
			return 1;
		}
		float *u = malloc(x->numel * sizeof *u + 1), *v = malloc(y->numel * sizeof *v + 1);
		if (!u || !v || ft_st_read_f32(x, u) < 0 || ft_st_read_f32(y, v) < 0) {
			fprintf(stderr, "st_maxdiff: %s: %s\n", x->name, ft_errmsg());
			return 1;
		}
		for (size_t k = 0; k < x->numel; k++) {
			double d = fabs((double)u[k] - (double)v[k]);
			if (!(d <= worst)) worst = d;   /* NaN counts as worst */
		}
		free(u);
		free(v);
	}
	printf("%.3g\n", worst);
	ft_st_close(a);
	ft_st_close(b);
	return 0;
}
