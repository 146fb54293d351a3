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
	ft_param *const *p;
	size_t n;
	ftp_lowrank *s;
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

static int ga_step(void *self, ft_adamw *opt, double lr, double lambda)
{
	galore *x = self;
	(void)opt; (void)lambda;
	int64_t t = x->step++;   /* the projector's iter: the step before it */
	ftp_old_adamw a = ftp_old_adamw_at(x->o.beta1, x->o.beta2, x->o.eps, lr, x->step);
	for (size_t k = 0; k < x->n; k++) {
		ft_param *p = x->p[k];
		ftp_lowrank *st = &x->s[k];
		int out = (int)p->shape[0], in = (int)p->shape[1];
		if (st->on && t % x->o.update_interval == 0 && ftp_lowrank_svd(st, p->g, out, in) < 0)
			return ft_fail_ctx("GaLore: %s: ", p->name);
		float *R, *N = ftp_lowrank_adam(st, p, &a, &R);
		if (N) {   /* project_back, times scale */
			float *F = ft_xmalloc(p->n * sizeof *F);
			if (st->right)   /* low @ P: [out, r] @ [r, in] */
				ft_sgemm(0, 0, out, in, st->r, 1.0f, N, st->r, st->P, in, 0.0f, F, in);
			else             /* P @ low: [out, r] @ [r, in] */
				ft_sgemm(0, 0, out, in, st->r, 1.0f, st->P, st->r, N, in, 0.0f, F, in);
			float sc = (float)x->o.scale;
			for (size_t i = 0; i < p->n; i++) p->w[i] = fmaf(a.alpha, F[i] * sc, p->w[i]);
			free(F);
		}
		ftp_ext_decay(p, lr, st->on || p->decay ? x->o.weight_decay : 0.0);
		free(R);
		free(N);
	}
	return 0;
}

/* ft_ext_dev.project: ortho from a gradient the model hands over */
static const float *ga_project(void *self, size_t k, const float *G)
{
	galore *x = self;
	ftp_lowrank *st = &x->s[k];
	if (ftp_lowrank_svd(st, G, (int)x->p[k]->shape[0], (int)x->p[k]->shape[1]) < 0) {
		ft_fail_ctx("GaLore: %s: ", x->p[k]->name);
		return NULL;
	}
	return st->P;
}

static int ga_save(void *self, const char *dir)
{
	galore *x = self;
	return ftp_lowrank_save(dir, "galore_optimizer.safetensors", "ft-galore", x->step, x->p, x->s,
				x->n, NULL, NULL);
}

static int ga_load(void *self, const char *dir)
{
	galore *x = self;
	char *f = ft_xasprintf("%s/galore_optimizer.safetensors", dir);
	ft_st *st = ft_st_open(f);
	int rc = st ? 0 : -1;
	for (size_t k = 0; k < x->n && !rc; k++)
		rc = ftp_lowrank_read(st, f, x->p[k], &x->s[k]);
	if (!rc) rc = ftp_ext_read_step(st, f, &x->step);
	if (st) ft_st_close(st);
	free(f);
	return rc;
}

static void ga_free(void *self)
{
	galore *x = self;
	ftp_lowrank_free(x->s, x->n);
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
	ftp_lowrank_arrays(&x->arr, x->p, x->s, x->n);
	x->dev = (ft_ext_dev){ .algo = FT_EXT_GALORE, .p = x->p, .n = x->n, .step = &x->step,
			       .wd = x->o.weight_decay, .beta1 = x->o.beta1, .beta2 = x->o.beta2,
			       .eps = x->o.eps, .interval = x->o.update_interval, .scale = x->o.scale,
			       .project = ga_project, .self = x };
	ft_ext_proj_view(&x->arr, &x->dev);
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
		int on = is_galore[k] && p->ndim == 2, right = 0, r = 0;
		if (on) {
			int64_t out = p->shape[0], in = p->shape[1], kk = out < in ? out : in;
			right = side_right(o, out, in);
			r = (int)(o->rank < kk ? o->rank : kk);   /* Vh[:rank] keeps what there is */
		}
		ftp_lowrank_init(&x->s[k], p, on, right, r);
	}
	dev_arrays(x);
	ft_optim_ext *e = ft_xcalloc(1, sizeof *e);
	*e = (ft_optim_ext){ .self = x, .step = ga_step, .save = ga_save, .load = ga_load, .free = ga_free,
			     .dev = &x->dev };
	return e;
}
