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
#include <unistd.h>

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


static char *slurp(const char *path, size_t *n)
{
	FILE *f = fopen(path, "rb");
	char *b = NULL;
	*n = 0;
	if (!f) return NULL;
	fseek(f, 0, SEEK_END);
	long len = ftell(f);
	rewind(f);
	b = malloc(len > 0 ? (size_t)len : 1);
	if (fread(b, 1, (size_t)len, f) != (size_t)len) { free(b); b = NULL; }
	else *n = (size_t)len;
	fclose(f);
	return b;
}

/* ft_adamw_fetch of the test: the moments of another optimizer */
static int fetch_from(void *ctx, size_t k, float *m, float *v)
{
	ft_adamw *src = ctx;
	size_t n = ft_adamw_param(src, k)->n * sizeof(float);
	memcpy(m, ft_adamw_exp_avg(src, k), n);
	memcpy(v, ft_adamw_exp_avg_sq(src, k), n);
	return 0;
}

static int same_file(const char *a, const char *b)
{
	size_t na, nb;
	char *x = slurp(a, &na), *y = slurp(b, &nb);
	int same = x && y && na == nb && !memcmp(x, y, na);
	free(x);
	free(y);
	return same;
}

/* Host moments only while needed (the device's optimizer): a state saved
 * with the moments dropped and fetched param by param, or dropped without
 * a fetch (zeros), is byte for byte the one saved from host moments, and
 * loading brings the moments back. */
static void dropped_moments(void)
{
	char dir[] = "/tmp/test_optim.XXXXXX";
	if (!ok(mkdtemp(dir) != NULL, "mkdtemp")) return;
	float w1[6] = { 1, 2, 3, 4, 5, 6 }, g1[6] = { .5f, -1, 2, .25f, 3, -2 };
	float w2[3] = { -1, 0, 1 }, g2[3] = { 1, 1, -4 };
	ft_param a = { .name = "a.weight", .w = w1, .g = g1, .n = 6, .ndim = 2, .shape = { 2, 3 },
		       .trainable = 1, .decay = 1 };
	ft_param b = { .name = "b.bias", .w = w2, .g = g2, .n = 3, .ndim = 1, .shape = { 3, 0 },
		       .trainable = 1 };
	ft_param *ps[2] = { &a, &b };
	ft_adamw_opts o;
	ft_adamw_opts_default(&o);
	o.weight_decay = 0.1;
	ft_adamw *held = ft_adamw_new(ps, 2, &o), *zero = ft_adamw_new(ps, 2, &o);
	ft_adamw_step(held, 1e-2);
	ft_adamw_step(held, 1e-2);
	ft_adamw *dev = ft_adamw_new(ps, 2, &o);
	ft_adamw_set_steps(dev, ft_adamw_steps(held));
	ft_adamw_set_fetch(dev, fetch_from, held);
	char *f_held = ft_xasprintf("%s/held.safetensors", dir), *f_dev = ft_xasprintf("%s/dev.safetensors", dir),
	     *f_zero = ft_xasprintf("%s/zero.safetensors", dir), *f_zero2 = ft_xasprintf("%s/zero2.safetensors", dir);
	ok(ft_adamw_save(held, f_held) == 0 && ft_adamw_save(dev, f_dev) == 0, "save held and fetched");
	ok(same_file(f_held, f_dev), "fetched moments: the state file byte-identical to the held one's");
	ft_adamw_drop_moments(zero);
	ok(ft_adamw_save(zero, f_zero) == 0, "save with dropped moments");
	ft_adamw *fresh = ft_adamw_new(ps, 2, &o);
	ok(ft_adamw_save(fresh, f_zero2) == 0 && same_file(f_zero, f_zero2),
	   "dropped moments without a fetch save as zeros, as fresh ones");
	/* a host moment wins over the fetch */
	ft_adamw_exp_avg(dev, 1)[0] = 42;
	ok(ft_adamw_save(dev, f_dev) == 0 && !same_file(f_held, f_dev), "a held moment wins over the fetch");
	ft_adamw_drop_moments(dev);
	ok(ft_adamw_load(dev, f_held) == 0 && !memcmp(ft_adamw_exp_avg(dev, 0), ft_adamw_exp_avg(held, 0), 6 * 4) &&
	   !memcmp(ft_adamw_exp_avg_sq(dev, 1), ft_adamw_exp_avg_sq(held, 1), 3 * 4), "load refills dropped moments");
	ft_adamw_free(held);
	ft_adamw_free(zero);
	ft_adamw_free(dev);
	ft_adamw_free(fresh);
	const char *fs[] = { f_held, f_dev, f_zero, f_zero2 };
	for (int i = 0; i < 4; i++) {
		unlink(fs[i]);
		free((char *)fs[i]);
	}
	rmdir(dir);
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
	dropped_moments();
	return tap_done();
}
