/* optim.c - AdamW and gradient clipping; see optim.h */
#include "optim.h"
#include "optim_impl.h"
#include "error.h"

#include <math.h>
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

/* One tensor.  Every scalar is computed in double as Python does, then
 * rounded to float where ATen converts the Python scalar for a float32
 * kernel.  The expression shapes follow ATen's CPU kernels: lerp is
 * fma(weight, end - self, self) for weight < 0.5; addcmul is
 * self + value*t1*t2 and addcdiv self + value*t1/t2, left to right. */
static void adamw_tensor(float *restrict p, const float *restrict g, float *restrict m,
			 float *restrict v, size_t n, double lr, double wd, double beta1,
			 double beta2, double eps, double step)
{
	const float decay = (float)(1.0 - lr * wd);
	const float w1 = (float)(1.0 - beta1);
	const float b2 = (float)beta2;
	const float w2 = (float)(1.0 - beta2);
	const double bc1 = 1.0 - pow(beta1, step);
	const double bc2 = 1.0 - pow(beta2, step);
	const float neg_step_size = (float)-(lr / bc1);
	const float bc2_sqrt = (float)sqrt(bc2);
	const float feps = (float)eps;
	/* Without decay the factor is 1, and x * 1.0f == x exactly, so one
	 * branch-free loop per lerp form serves both and vectorizes. */
	const float dec = wd != 0.0 ? decay : 1.0f;
	if (w1 < 0.5f) {
#pragma omp parallel for simd schedule(static) if (n > 16384)
		for (size_t i = 0; i < n; i++) {
			float gi = g[i], mi = fmaf(w1, gi - m[i], m[i]);
			float vi = v[i] * b2;
			vi = vi + w2 * gi * gi;
			float den = sqrtf(vi) / bc2_sqrt + feps;
			p[i] = p[i] * dec + neg_step_size * mi / den;
			m[i] = mi;
			v[i] = vi;
		}
	} else {
#pragma omp parallel for simd schedule(static) if (n > 16384)
		for (size_t i = 0; i < n; i++) {
			float gi = g[i], mi = fmaf(w1 - 1.0f, gi - m[i], gi);
			float vi = v[i] * b2;
			vi = vi + w2 * gi * gi;
			float den = sqrtf(vi) / bc2_sqrt + feps;
			p[i] = p[i] * dec + neg_step_size * mi / den;
			m[i] = mi;
			v[i] = vi;
		}
	}
}

void ft_adamw_step(ft_adamw *a, double lr)
{
	a->step++;
	for (size_t i = 0; i < a->n; i++) {
		ft_param *p = a->p[i];
		double wd = p->decay ? a->o.weight_decay : 0.0;
		/* torch keeps step as a float32 tensor and reads it back with
		 * .item(): exact for any realistic step count. */
		adamw_tensor(p->w, p->g, a->m[i], a->v[i], p->n, lr, wd, a->o.beta1, a->o.beta2,
			     a->o.eps, (double)(float)a->step);
	}
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

