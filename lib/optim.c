/* optim.c - AdamW and gradient clipping; see optim.h */
#include "optim.h"
#include "optim_impl.h"
#include "kernels.h"
#include "error.h"

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

/* Elements [i0, i1) of one tensor, on the calling thread; the element is
 * lib/kernels.h's, shared with the CUDA backend. */
static void adamw_range(float *restrict p, const float *restrict g, float *restrict m,
			float *restrict v, size_t i0, size_t i1, const ft_k_adamw *c)
{
	const ft_k_adamw k = *c;
#pragma omp simd
	for (size_t i = i0; i < i1; i++)
		ft_k_adamw_elem(&p[i], g[i], &m[i], &v[i], &k);
}

/* Thread t of nt takes the t-th slice of all parameters laid end to end,
 * so one parallel region covers the whole update: a small model's many
 * small tensors would otherwise each pay a fork and a join. */
static void adamw_slice(ft_adamw *a, const ft_k_adamw *c, size_t total, int t, int nt)
{
	size_t lo = total * (size_t)t / (size_t)nt, hi = total * (size_t)(t + 1) / (size_t)nt;
	size_t base = 0;
	for (size_t k = 0; k < a->n && base < hi; k++) {
		ft_param *p = a->p[k];
		size_t end = base + p->n;
		if (end > lo) {
			size_t i0 = lo > base ? lo - base : 0, i1 = (hi < end ? hi : end) - base;
			adamw_range(p->w, p->g, a->m[k], a->v[k], i0, i1, &c[k]);
		}
		base = end;
	}
}

void ft_adamw_step(ft_adamw *a, double lr)
{
	a->step++;
	/* torch keeps step as a float32 tensor and reads it back with
	 * .item(): exact for any realistic step count. */
	double step = (double)(float)a->step;
	ft_k_adamw *c = ft_xcalloc(a->n ? a->n : 1, sizeof *c);
	size_t total = 0;
	for (size_t k = 0; k < a->n; k++) {
		double wd = a->p[k]->decay ? a->o.weight_decay : 0.0;
		c[k] = ft_k_adamw_prepare(lr, wd, a->o.beta1, a->o.beta2, a->o.eps, step);
		total += a->p[k]->n;
	}
#pragma omp parallel if (total > 65536)
	adamw_slice(a, c, total, omp_get_thread_num(), omp_get_num_threads());
	free(c);
}

/* torch.linalg.vector_norm of each gradient (float32 result), then the
 * norm of those norms; clip_coef = max_norm / (total + 1e-6) clamped to 1
 * and every gradient multiplied by it (torch multiplies even when 1). */
double ft_clip_grad_norm(ft_param *const *params, size_t n, double max_norm)
{
	double total2 = 0;
	for (size_t i = 0; i < n; i++) {
		const float *g = params[i]->g;
		double s = 0;
#pragma omp parallel for reduction(+ : s) schedule(static) if (params[i]->n > 65536)
		for (size_t j = 0; j < params[i]->n; j++) s += (double)g[j] * g[j];
		float norm = (float)sqrt(s);
		total2 += (double)norm * norm;
	}
	float total = (float)sqrt(total2);
	if (max_norm > 0) {
		float coef = (float)max_norm / (total + 1e-6f);
		if (coef > 1.0f) coef = 1.0f;
		for (size_t i = 0; i < n; i++) {
			float *g = params[i]->g;
#pragma omp parallel for schedule(static) if (params[i]->n > 65536)
			for (size_t j = 0; j < params[i]->n; j++) g[j] *= coef;
		}
	}
	return total;
}

