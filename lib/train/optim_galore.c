/* optim_galore.c - GaLore (Zhao et al. 2024) as LLaMA-Factory runs it
 * (use_galore: _create_galore_optimizer with galore_torch 1.0's
 * GaLoreAdamW, the optimizer for --optim adamw_torch):
 *
 * - GaLore params: the 2-D weights of the linear modules galore_target
 *   names ("all": every linear of the decoder layers); every other
 *   trainable param gets the same AdamW without a projection.
 * - Each GaLore param keeps a projector: at its steps 0, interval,
 *   2 interval, ... the SVD of the (clipped) gradient G [out, in] gives
 *   P = Vh[:r] (out >= in, "std") or P = U[:, :r] (out < in); the Adam
 *   moments live in the projected space, R = G P^T or P^T G, and the
 *   normalized update m / (sqrt(v) + eps) goes back as N P or P N, times
 *   galore_scale.  reverse_std, right and left choose the side as
 *   galore_torch does.
 * - The AdamW is galore_torch's (transformers' old AdamW): m = b1 m +
 *   (1-b1) g, v = b2 v + (1-b2) g g, p -= lr sqrt(bc2)/bc1 * update, then
 *   p -= lr wd p (after the update, not before as torch's AdamW).
 *   Weight decay: --weight_decay on GaLore params and on the decaying
 *   others (transformers' decay names), none on the rest.
 * The SVD is LAPACK's sgesdd, as torch.linalg.svd on the CPU.
 * State (checkpoint-N/galore_optimizer.safetensors): "<param>.exp_avg",
 * ".exp_avg_sq" (projected shapes), ".ortho" (the projector), the step in
 * the metadata.
 */
#include "train/optim_ext.h"
#include "train/optim_ext_internal.h"
#include "format/safetensors.h"
#include "model/layers.h"
#include "util/error.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct {
	int galore;                   /* projected */
	int right;                    /* R = G P^T (P [r, in]); else R = P^T G (P [out, r]) */
	int r;                        /* the projection's rank */
	size_t nlow;                  /* elements of R */
	float *P, *m, *v;
} gstate;

typedef struct {
	ft_param *const *p;
	size_t n;
	gstate *s;
	ft_galore_opts o;
	int64_t step;
	/* the state as ft_ext_dev's arrays (a model that steps itself) */
	ft_ext_proj arr;
	ft_ext_dev dev;
} galore;

/* galore_torch's choice of side for a gradient [out, in] */
static int side_right(const ft_galore_opts *o, int64_t out, int64_t in)
{
	switch (o->proj_type) {
	case FT_GALORE_REVERSE_STD: return out < in;
	case FT_GALORE_RIGHT: return 1;
	case FT_GALORE_LEFT: return 0;
	default: return out >= in;
	}
}

/* get_orthogonal_matrix: the top r right (Vh[:r]) or left (U[:, :r])
 * singular vectors of G. */
static int ortho(gstate *st, const float *G, int out, int in)
{
	int k = out < in ? out : in;
	float *U = ft_xmalloc((size_t)out * k * sizeof *U), *S = ft_xmalloc((size_t)k * sizeof *S);
	float *Vh = ft_xmalloc((size_t)k * in * sizeof *Vh);
	int rc = ft_svd_thin(G, out, in, U, S, Vh);
	if (!rc && st->right) {
		memcpy(st->P, Vh, (size_t)st->r * in * sizeof *st->P);
	} else if (!rc) {
		for (int o = 0; o < out; o++) memcpy(st->P + (size_t)o * st->r, U + (size_t)o * k, st->r * sizeof *st->P);
	}
	free(U); free(S); free(Vh);
	return rc;
}

static int ga_step(void *self, ft_adamw *opt, double lr, double lambda)
{
	galore *x = self;
	(void)opt; (void)lambda;
	int64_t t = x->step++;   /* the projector's iter: the step before it */
	double b1 = x->o.beta1, b2 = x->o.beta2;
	double bc1 = 1.0 - pow(b1, (double)x->step), bc2 = 1.0 - pow(b2, (double)x->step);
	float alpha = (float)-(lr * sqrt(bc2) / bc1), a1 = (float)(1.0 - b1), a2 = (float)(1.0 - b2);
	float fb1 = (float)b1, fb2 = (float)b2, eps = (float)x->o.eps;
	for (size_t k = 0; k < x->n; k++) {
		ft_param *p = x->p[k];
		gstate *st = &x->s[k];
		const float *g = p->g;
		float *R = NULL, *N = NULL;
		int out = (int)p->shape[0], in = (int)p->shape[1];
		if (st->galore) {
			if (t % x->o.update_interval == 0 && ortho(st, g, out, in) < 0)
				return ft_fail_ctx("GaLore: %s: ", p->name);
			R = ft_xmalloc(st->nlow * sizeof *R);
			if (st->right)   /* G [out, in] @ P^T [in, r] */
				ft_sgemm(0, 1, out, st->r, in, 1.0f, g, in, st->P, in, 0.0f, R, st->r);
			else             /* P^T [r, out] @ G [out, in] */
				ft_sgemm(1, 0, st->r, in, out, 1.0f, st->P, st->r, g, in, 0.0f, R, in);
			g = R;
			N = ft_xmalloc(st->nlow * sizeof *N);
		}
		size_t nl = st->galore ? st->nlow : p->n;
		for (size_t i = 0; i < nl; i++) {
			st->m[i] = fmaf(a1, g[i], st->m[i] * fb1);      /* mul_(b1).add_(g, alpha=1-b1) */
			st->v[i] = st->v[i] * fb2 + (a2 * g[i]) * g[i];   /* mul_(b2).addcmul_(g, g, 1-b2) */
			float ng = st->m[i] / (sqrtf(st->v[i]) + eps);
			if (N) N[i] = ng;
			else p->w[i] = fmaf(alpha, ng, p->w[i]);
		}
		if (st->galore) {   /* project_back, times scale */
			float *F = ft_xmalloc(p->n * sizeof *F);
			if (st->right)   /* low @ P: [out, r] @ [r, in] */
				ft_sgemm(0, 0, out, in, st->r, 1.0f, N, st->r, st->P, in, 0.0f, F, in);
			else             /* P @ low: [out, r] @ [r, in] */
				ft_sgemm(0, 0, out, in, st->r, 1.0f, st->P, st->r, N, in, 0.0f, F, in);
			float sc = (float)x->o.scale;
			for (size_t i = 0; i < p->n; i++) p->w[i] = fmaf(alpha, F[i] * sc, p->w[i]);
			free(F);
		}
		double wd = st->galore || p->decay ? x->o.weight_decay : 0.0;
		if (wd > 0) {   /* p.add_(p, alpha=-lr * wd) */
			float a = (float)(-lr * wd);
			for (size_t i = 0; i < p->n; i++) p->w[i] = fmaf(a, p->w[i], p->w[i]);
		}
		free(R);
		free(N);
	}
	return 0;
}

/* ft_ext_dev.project: ortho from a gradient the model hands over */
static const float *ga_project(void *self, size_t k, const float *G)
{
	galore *x = self;
	gstate *st = &x->s[k];
	if (ortho(st, G, (int)x->p[k]->shape[0], (int)x->p[k]->shape[1]) < 0) {
		ft_fail_ctx("GaLore: %s: ", x->p[k]->name);
		return NULL;
	}
	return st->P;
}

static int ga_save(void *self, const char *dir)
{
	galore *x = self;
	ft_st_writer *w = ft_st_writer_new();
	char **names = ft_xcalloc(3 * x->n + 1, sizeof *names), step[32];
	int64_t (*shapes)[2] = ft_xcalloc(2 * x->n + 1, sizeof *shapes);
	size_t nn = 0;
	snprintf(step, sizeof step, "%lld", (long long)x->step);
	ft_st_writer_meta(w, "format", "ft-galore");
	ft_st_writer_meta(w, "step", step);
	for (size_t k = 0; k < x->n; k++) {
		ft_param *p = x->p[k];
		gstate *st = &x->s[k];
		ftp_ext_add_lowrank(w, p, st->galore, st->right, st->r, st->m, st->v, st->P, names, &nn,
				    &shapes[2 * k]);
	}
	char *f = ft_xasprintf("%s/galore_optimizer.safetensors", dir);
	int rc = ft_st_writer_write(w, f);
	free(f);
	ft_st_writer_free(w);
	for (size_t i = 0; i < nn; i++) free(names[i]);
	free(names);
	free(shapes);
	return rc;
}

static int ga_load(void *self, const char *dir)
{
	galore *x = self;
	char *f = ft_xasprintf("%s/galore_optimizer.safetensors", dir);
	ft_st *st = ft_st_open(f);
	int rc = st ? 0 : -1;
	for (size_t k = 0; k < x->n && !rc; k++) {
		gstate *s = &x->s[k];
		size_t nl = s->galore ? s->nlow : x->p[k]->n;
		rc = ftp_ext_read_vec(st, f, x->p[k]->name, "exp_avg", nl, s->m);
		if (!rc) rc = ftp_ext_read_vec(st, f, x->p[k]->name, "exp_avg_sq", nl, s->v);
		size_t np = (size_t)s->r * (size_t)(s->right ? x->p[k]->shape[1] : x->p[k]->shape[0]);
		if (!rc && s->galore) rc = ftp_ext_read_vec(st, f, x->p[k]->name, "ortho", np, s->P);
	}
	if (!rc) rc = ftp_ext_read_step(st, f, &x->step);
	if (st) ft_st_close(st);
	free(f);
	return rc;
}

static void ga_free(void *self)
{
	galore *x = self;
	for (size_t k = 0; k < x->n; k++) {
		free(x->s[k].P);
		free(x->s[k].m);
		free(x->s[k].v);
	}
	free(x->s);
	ft_ext_proj_free(&x->arr);
	free(x);
}

int ft_galore_proj_parse(const char *s)
{
	static const char *const names[] = { "std", "reverse_std", "right", "left" };
	for (int i = 0; i < 4; i++)
		if (!strcmp(s, names[i])) return i;
	if (!strcmp(s, "full"))
		return ft_fail("galore_proj_type full (projections on both sides) is not implemented in ft "
			       "(std, reverse_std, right, left are)");
	return ft_fail("'%s' is not a GaLore projection (std, reverse_std, right, left, full)", s);
}

/* ft_ext_dev over the states */
static void dev_arrays(galore *x)
{
	ft_ext_proj *a = &x->arr;
	ft_ext_proj_alloc(a, x->n);
	for (size_t k = 0; k < x->n; k++) {
		const ft_param *p = x->p[k];
		gstate *st = &x->s[k];
		a->kind[k] = st->galore;
		a->decay[k] = p->decay;
		a->right[k] = st->right;
		a->rank[k] = st->r;
		a->n1[k] = st->galore ? st->nlow : p->n;
		a->n3[k] = st->galore ? (size_t)st->r * (size_t)(st->right ? p->shape[1] : p->shape[0]) : 0;
		a->s1[k] = st->m;
		a->s2[k] = st->v;
		a->s3[k] = st->P;
	}
	x->dev = (ft_ext_dev){ .algo = FT_EXT_GALORE, .p = x->p, .n = x->n, .step = &x->step,
			       .wd = x->o.weight_decay, .beta1 = x->o.beta1, .beta2 = x->o.beta2,
			       .eps = x->o.eps, .interval = x->o.update_interval, .scale = x->o.scale,
			       .project = ga_project, .self = x };
	ft_ext_proj_view(a, &x->dev);
}

ft_optim_ext *ft_galore_new(ft_param *const *params, size_t n, const int *is_galore, const ft_galore_opts *o)
{
	if (o->rank < 1) return ft_fail("galore_rank must be >= 1"), NULL;
	if (o->update_interval < 1) return ft_fail("galore_update_interval must be >= 1"), NULL;
	galore *x = ft_xcalloc(1, sizeof *x);
	x->p = params;
	x->n = n;
	x->o = *o;
	x->s = ft_xcalloc(n ? n : 1, sizeof *x->s);
	for (size_t k = 0; k < n; k++) {
		const ft_param *p = params[k];
		gstate *st = &x->s[k];
		st->galore = is_galore[k] && p->ndim == 2;
		size_t nm = p->n;
		if (st->galore) {
			int64_t out = p->shape[0], in = p->shape[1], kk = out < in ? out : in;
			st->right = side_right(o, out, in);
			st->r = (int)(o->rank < kk ? o->rank : kk);   /* Vh[:rank] keeps what there is */
			st->nlow = (size_t)st->r * (size_t)(st->right ? out : in);
			st->P = ft_xcalloc((size_t)st->r * (size_t)(st->right ? in : out), sizeof(float));
			nm = st->nlow;
		}
		st->m = ft_xcalloc(nm ? nm : 1, sizeof(float));
		st->v = ft_xcalloc(nm ? nm : 1, sizeof(float));
	}
	dev_arrays(x);
	ft_optim_ext *e = ft_xcalloc(1, sizeof *e);
	*e = (ft_optim_ext){ .self = x, .step = ga_step, .save = ga_save, .load = ga_load, .free = ga_free,
			     .dev = &x->dev };
	return e;
}
