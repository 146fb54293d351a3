/* test_optim.c - AdamW and clip_grad_norm_ against torch
 * (tests/fixtures/trainer/adamw.txt, made by make_trainer_fixtures.py:
 * two param groups with and without weight decay, cosine warmup LR,
 * clipping that triggers on some steps, a beta1 < 0.5 lerp branch).
 * Tolerance: params after each step within 1e-6 relative (we expect and
 * report bit-identical results); clip norm within 1e-6 relative (torch
 * reduces in a different order). */
#define _GNU_SOURCE
#include "tap.h"
#include "train/optim.h"
#include "util/error.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#define MAXP 8

typedef struct {
	char name[64];
	ft_param p;
} tparam;

static void read_vals(char **save, float *dst, size_t n)
{
	for (size_t i = 0; i < n; i++) dst[i] = (float)strtod(strtok_r(NULL, " \n", save), NULL);
}

static tparam *find(tparam *ps, int np, const char *name)
{
	for (int i = 0; i < np; i++)
		if (strcmp(ps[i].name, name) == 0) return &ps[i];
	return NULL;
}

int main(void)
{
	FILE *f = fopen("tests/fixtures/trainer/adamw.txt", "r");
	if (!ok(f != NULL, "open adamw.txt")) return tap_done();
	char *line = NULL, casename[64] = "";
	size_t cap = 0;
	tparam ps[MAXP];
	int np = 0;
	ft_adamw *opt = NULL;
	ft_adamw_opts o;
	double max_norm = 0, lr = 0, worst_norm = 0, worst_p = 0;
	long nvals = 0, nexact = 0;
	int ncases = 0;
	float *tmp = NULL;

	while (getline(&line, &cap, f) > 0) {
		char *save, *tok = strtok_r(line, " \n", &save);
		if (strcmp(tok, "case") == 0) {
			if (opt) {
				ok(worst_p <= 1e-6 && worst_norm <= 1e-6,
				   "%s: params after every step within 1e-6 of torch (max rel %.3g; %ld of %ld "
				   "bit-identical), norm max rel %.3g", casename, worst_p, nexact, nvals, worst_norm);
				ft_adamw_free(opt);
				opt = NULL;
				for (int i = 0; i < np; i++) { free(ps[i].p.w); free(ps[i].p.g); }
			}
			np = 0; worst_norm = worst_p = 0; nvals = nexact = 0; ncases++;
			snprintf(casename, sizeof casename, "%s", strtok_r(NULL, " \n", &save));
			o.beta1 = strtod(strtok_r(NULL, " \n", &save), NULL);
			o.beta2 = strtod(strtok_r(NULL, " \n", &save), NULL);
			o.eps = strtod(strtok_r(NULL, " \n", &save), NULL);
			o.weight_decay = strtod(strtok_r(NULL, " \n", &save), NULL);
			max_norm = strtod(strtok_r(NULL, " \n", &save), NULL);
		} else if (strcmp(tok, "param") == 0) {
			tparam *t = &ps[np++];
			memset(t, 0, sizeof *t);
			snprintf(t->name, sizeof t->name, "%s", strtok_r(NULL, " \n", &save));
			t->p.name = t->name;
			t->p.decay = atoi(strtok_r(NULL, " \n", &save));
			t->p.n = (size_t)atol(strtok_r(NULL, " \n", &save));
			t->p.ndim = 1;
			t->p.shape[0] = (int64_t)t->p.n;
			t->p.trainable = 1;
			t->p.w = calloc(t->p.n, sizeof(float));
			t->p.g = calloc(t->p.n, sizeof(float));
			read_vals(&save, t->p.w, t->p.n);
		} else if (strcmp(tok, "step") == 0) {
			if (!opt) {
				ft_param *pp[MAXP];
				for (int i = 0; i < np; i++) pp[i] = &ps[i].p;
				opt = ft_adamw_new(pp, (size_t)np, &o);
			}
			strtok_r(NULL, " \n", &save);
			lr = strtod(strtok_r(NULL, " \n", &save), NULL);
		} else if (strcmp(tok, "grad") == 0) {
			tparam *t = find(ps, np, strtok_r(NULL, " \n", &save));
			strtok_r(NULL, " \n", &save);
			read_vals(&save, t->p.g, t->p.n);
		} else if (strcmp(tok, "norm") == 0) {
			double want = strtod(strtok_r(NULL, " \n", &save), NULL);
			ft_param *pp[MAXP];
			for (int i = 0; i < np; i++) pp[i] = &ps[i].p;
			double got = ft_clip_grad_norm(pp, (size_t)np, max_norm);
			worst_norm = fmax(worst_norm, fabs(got - want) / fabs(want));
			ft_adamw_step(opt, lr);
		} else if (strcmp(tok, "after") == 0) {
			tparam *t = find(ps, np, strtok_r(NULL, " \n", &save));
			strtok_r(NULL, " \n", &save);
			tmp = realloc(tmp, t->p.n * sizeof(float));
			read_vals(&save, tmp, t->p.n);
			for (size_t i = 0; i < t->p.n; i++) {
				nvals++;
				if (tmp[i] == t->p.w[i]) nexact++;
				double d = fabs((double)tmp[i] - t->p.w[i]) / fmax(fabs((double)tmp[i]), 1e-6);
				worst_p = fmax(worst_p, d);
			}
		}
	}
	if (opt) {
		ok(worst_p <= 1e-6 && worst_norm <= 1e-6,
		   "%s: params after every step within 1e-6 of torch (max rel %.3g; %ld of %ld bit-identical), "
		   "norm max rel %.3g", casename, worst_p, nexact, nvals, worst_norm);
		ok(ft_adamw_steps(opt) == 5, "step counter");
		ft_adamw_free(opt);
		for (int i = 0; i < np; i++) { free(ps[i].p.w); free(ps[i].p.g); }
	}
	ok(ncases == 3, "3 cases");
	free(tmp);
	free(line);
	fclose(f);

	/* Clipping: the norm is returned before clipping, grads scaled after. */
	float g1[2] = {3, 4}, w1[2] = {0, 0};
	ft_param p = { .name = "x", .w = w1, .g = g1, .n = 2, .ndim = 1, .shape = {2, 0}, .trainable = 1 };
	ft_param *pp = &p;
	double n = ft_clip_grad_norm(&pp, 1, 1.0);
	ok(n == 5.0 && fabsf(g1[0] - 0.6f) < 1e-6f && fabsf(g1[1] - 0.8f) < 1e-6f, "clip 3,4 to unit norm");
	g1[0] = 0.3f; g1[1] = 0.4f;
	n = ft_clip_grad_norm(&pp, 1, 1.0);
	ok(fabs(n - 0.5) < 1e-7 && g1[0] == 0.3f, "norm below max: unchanged");
	return tap_done();
}
