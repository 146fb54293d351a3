/* optim.c - AdamW and gradient clipping; see optim.h */
#include "train/optim.h"
#include "train/optim_internal.h"
#include "model/kernels.h"
#include "util/error.h"

#include <math.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>


void ft_adamw_opts_default(ft_adamw_opts *o)
{
	o->beta1 = 0.9;
	o->beta2 = 0.999;
	o->eps = 1e-8;
	o->weight_decay = 0.0;
}

ft_adamw *ft_adamw_new(ft_param *const *params, size_t n, const ft_adamw_opts *o)
{
	ft_adamw *a = ft_xcalloc(1, sizeof *a);
	a->n = n;
	a->o = *o;
	a->p = ft_xcalloc(n ? n : 1, sizeof *a->p);
	a->m = ft_xcalloc(n ? n : 1, sizeof *a->m);
	a->v = ft_xcalloc(n ? n : 1, sizeof *a->v);
	for (size_t i = 0; i < n; i++) {
		a->p[i] = params[i];
		a->m[i] = ft_xcalloc(params[i]->n ? params[i]->n : 1, sizeof(float));
		a->v[i] = ft_xcalloc(params[i]->n ? params[i]->n : 1, sizeof(float));
	}
	return a;
}

void ft_adamw_free(ft_adamw *a)
{
	if (!a) return;
	for (size_t i = 0; i < a->n; i++) {
		free(a->m[i]);
		free(a->v[i]);
	}
	free(a->p); free(a->m); free(a->v);
	free(a);
}

int64_t ft_adamw_steps(const ft_adamw *a) { return a->step; }
size_t ft_adamw_count(const ft_adamw *a) { return a->n; }
ft_param *ft_adamw_param(const ft_adamw *a, size_t k) { return a->p[k]; }
void ft_adamw_set_steps(ft_adamw *a, int64_t step) { a->step = step; }

/* A dropped moment comes back as zeros, as ft_adamw_new made it. */
static float *moment(float **slot, const ft_param *p)
{
	if (!*slot) *slot = ft_xcalloc(p->n ? p->n : 1, sizeof(float));
	return *slot;
}

float *ft_adamw_exp_avg(ft_adamw *a, size_t k) { return moment(&a->m[k], a->p[k]); }
float *ft_adamw_exp_avg_sq(ft_adamw *a, size_t k) { return moment(&a->v[k], a->p[k]); }

void ft_adamw_drop_moments(ft_adamw *a)
{
	for (size_t i = 0; i < a->n; i++) {
		free(a->m[i]);
		free(a->v[i]);
		a->m[i] = a->v[i] = NULL;
	}
}

void ft_adamw_set_fetch(ft_adamw *a, ft_adamw_fetch get, void *ctx)
{
	ft_adamw_drop_moments(a);
	a->get = get;
	a->get_ctx = ctx;
}

/* Elements [i0, i1) of one tensor, on the calling thread; the element is
 * lib/model/kernels.h's, shared with the CUDA backend. */
static void adamw_range(float *restrict p, const float *restrict g, float *restrict m,
			float *restrict v, size_t i0, size_t i1, const ft_k_adamw *c)
{
	const ft_k_adamw k = *c;
#pragma omp simd
	for (size_t i = i0; i < i1; i++)
		ft_k_adamw_elem(&p[i], g[i], &m[i], &v[i], &k);
}

typedef struct { ft_adamw *a; const ft_k_adamw *c; } adamw_ctx;

static void adamw_part(ft_param *p, size_t k, size_t i0, size_t i1, void *ctx)
{
	adamw_ctx *x = ctx;
	adamw_range(p->w, p->g, x->a->m[k], x->a->v[k], i0, i1, &x->c[k]);
}

static void adamw_step(ft_adamw *a, double lr, const double *lrs);

void ft_adamw_step(ft_adamw *a, double lr) { adamw_step(a, lr, NULL); }
void ft_adamw_step_lrs(ft_adamw *a, const double *lr) { adamw_step(a, 0, lr); }

static void adamw_step(ft_adamw *a, double lr, const double *lrs)
{
	a->step++;
	/* torch keeps step as a float32 tensor and reads it back with
	 * .item(): exact for any realistic step count. */
	double step = (double)(float)a->step;
	ft_k_adamw *c = ft_xcalloc(a->n ? a->n : 1, sizeof *c);
	for (size_t k = 0; k < a->n; k++) {
		ft_adamw_exp_avg(a, k);   /* a no-op unless dropped */
		ft_adamw_exp_avg_sq(a, k);
		double wd = a->p[k]->decay ? a->o.weight_decay : 0.0;
		c[k] = ft_k_adamw_prepare(lrs ? lrs[k] : lr, wd, a->o.beta1, a->o.beta2, a->o.eps, step);
	}
	size_t total = ft_params_elements(a->p, a->n);
	adamw_ctx x = { a, c };
#pragma omp parallel if (total > FT_PARAMS_SPLIT)
	ft_params_slice(a->p, a->n, total, omp_get_thread_num(), omp_get_num_threads(), adamw_part, &x);
	free(c);
}

/* Sums of squares of each tensor's part of a slice, into this thread's
 * row of per-tensor partial sums. */
static void sumsq_part(ft_param *p, size_t k, size_t i0, size_t i1, void *ctx)
{
	double *row = ctx, s = 0;
	const float *g = p->g;
#pragma omp simd reduction(+ : s)
	for (size_t j = i0; j < i1; j++) s += (double)g[j] * g[j];
	row[k] += s;
}

static void scale_part(ft_param *p, size_t k, size_t i0, size_t i1, void *ctx)
{
	const float coef = *(const float *)ctx;
	float *g = p->g;
	(void)k;
#pragma omp simd
	for (size_t j = i0; j < i1; j++) g[j] *= coef;
}

/* torch.linalg.vector_norm of each gradient (float32 result; the squares
 * summed in double, so the order of the partial sums does not show), then
 * the norm of those norms; clip_coef = max_norm / (total + 1e-6) clamped
 * to 1 and every gradient multiplied by it (torch multiplies even when 1).
 * Both passes are one parallel region over all gradients. */
double ft_clip_grad_norm(ft_param *const *params, size_t n, double max_norm)
{
	size_t total = ft_params_elements(params, n);
	int nt = total > FT_PARAMS_SPLIT ? omp_get_max_threads() : 1;
	double *part = ft_xcalloc((size_t)nt * (n ? n : 1), sizeof *part);
#pragma omp parallel num_threads(nt)
	{
		int t = omp_get_thread_num(), got = omp_get_num_threads();
		ft_params_slice(params, n, total, t, got, sumsq_part, part + (size_t)t * n);
	}
	double total2 = 0;
	for (size_t k = 0; k < n; k++) {
		double s = 0;
		for (int t = 0; t < nt; t++) s += part[(size_t)t * n + k];
		float norm = (float)sqrt(s);
		total2 += (double)norm * norm;
	}
	free(part);
	float tnorm = (float)sqrt(total2);
	if (max_norm > 0) {
		float coef = (float)max_norm / (tnorm + 1e-6f);
		if (coef > 1.0f) coef = 1.0f;
#pragma omp parallel if (total > FT_PARAMS_SPLIT)
		ft_params_slice(params, n, total, omp_get_thread_num(), omp_get_num_threads(), scale_part,
			    &coef);
	}
	return tnorm;
}
