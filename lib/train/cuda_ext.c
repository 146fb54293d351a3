/* cuda_ext.c - LLaMA-Factory's optimizer extras on the CUDA backend, for
 * every binding that trains a device model (see cuda_ext_internal.h). */
#include <stdlib.h>
#include "train/cuda_ext_internal.h"
#include "util/error.h"

void ftp_cuda_ext_init(ftp_cuda_ext *x, ft_model *m, ft_cuda_model *dm)
{
	*x = (ftp_cuda_ext){ m, dm, NULL, -1 };
}

/* The CPU model index of a param or of a copy sharing its weights
 * (BAdam's active params). */
static long weights_index(ftp_cuda_ext *x, const ft_param *p)
{
	for (size_t i = 0; i < ft_model_nparams(x->m); i++)
		if (ft_model_param(x->m, i)->w == p->w)
			return (long)i;
	return ft_fail("optimizer parameter %s is not the model's", p->name);
}

/* Block-wise AdamW's moments between the device and the extension's
 * AdamW: out before its checkpoint is written, in when the extension
 * holds moments the device lacks (a fresh block: zeros; a resume). */
static int block_moments(ftp_cuda_ext *x, ft_adamw *a, int out)
{
	for (size_t k = 0; k < ft_adamw_count(a); k++) {
		long i = weights_index(x, ft_adamw_param(a, k));
		float *m = ft_adamw_exp_avg(a, k), *v = ft_adamw_exp_avg_sq(a, k);
		if (i < 0 || (out ? ft_cuda_adamw_get(x->dm, (size_t)i, m, v)
				  : ft_cuda_adamw_set(x->dm, (size_t)i, m, v, ft_cuda_steps(x->dm))) < 0)
			return -1;
	}
	return 0;
}

/* Each param's update: LoRA+'s lr (the same group_lr * lambda its CPU
 * step computes), or BAdam's active block (its AdamW's params, with its
 * decay); *step the block's count + 1, else 0. */
static int ext_plan(ftp_cuda_ext *x, const ft_optim_ext *e, const ft_adamw_opts *o, double lr,
		    double lambda, ft_cuda_pstep *ps, int64_t *step)
{
	size_t n = ft_model_nparams(x->m);
	*step = 0;
	for (size_t i = 0; i < n && e->param_lr; i++) {
		ft_param *p = ft_model_param(x->m, i);
		int on = p->trainable && p->g;
		ps[i] = (ft_cuda_pstep){ on ? e->param_lr(e->self, p, lambda) : lr,
					 p->decay ? o->weight_decay : 0.0, on };
	}
	if (e->param_lr)
		return 0;
	double wd = 0;
	ft_adamw *a = e->block_adamw(e->self, &wd);
	if (ft_adamw_steps(a) != x->synced && block_moments(x, a, 0) < 0)
		return -1;
	for (size_t k = 0; k < ft_adamw_count(a); k++) {
		long i = weights_index(x, ft_adamw_param(a, k));
		if (i < 0)
			return -1;
		ps[i] = (ft_cuda_pstep){ lr, wd, 1 };
	}
	*step = ft_adamw_steps(a) + 1;
	return 0;
}

/* The CPU model index of an optimizer's param (same objects). */
long ftp_cuda_param_index(ft_model *m, const ft_param *p)
{
	long i = ft_model_param_index(m, p);
	return i >= 0 ? i : ft_fail("optimizer parameter %s is not the model's", p->name);
}

/* An optimizer in place of AdamW (Adam-mini, Muon, GaLore, APOLLO; ft_ext_dev): its
 * params' state between the device and the extension, in (its first
 * update, a resume) or out (before its checkpoint). */
static int dev_state(ftp_cuda_ext *x, const ft_ext_dev *d, int out)
{
	for (size_t k = 0; k < d->n; k++) {
		long i = ftp_cuda_param_index(x->m, d->p[k]);
		if (i < 0 || ft_cuda_xstate(x->dm, (size_t)i, d->s1[k], d->n1[k], d->s2[k], d->n2[k],
					    d->s3 ? d->s3[k] : NULL, d->n3 ? d->n3[k] : 0, out) < 0)
			return -1;
	}
	return 0;
}

/* ft_cuda_xopt.project: GaLore's SVD, APOLLO's draw by the extension, on the host */
typedef struct { ftp_cuda_ext *x; const ft_ext_dev *d; } proj_ctx;
static const float *dev_project(void *ctx, size_t i, const float *G)
{
	proj_ctx *c = ctx;
	for (size_t k = 0; k < c->d->n; k++)
		if (ft_model_param_index(c->x->m, c->d->p[k]) == (long)i)
			return c->d->project(c->d->self, k, G);
	ft_fail("parameter %zu is not the optimizer's", i);
	return NULL;
}

/* ft_cuda_xopt.limit: APOLLO's limiter, its state the extension's */
static float dev_limit(void *ctx, size_t i, float nrm)
{
	proj_ctx *c = ctx;
	for (size_t k = 0; k < c->d->n; k++)
		if (ft_model_param_index(c->x->m, c->d->p[k]) == (long)i)
			return c->d->limit(c->d->self, k, nrm);
	return 1.0f;   /* not reached: the device steps the optimizer's params only */
}

/* Its update on the device (lib/cuda/optim_x.cu) with the count the CPU
 * step would reach, which the extension then holds. */
static int dev_step(ftp_cuda_ext *x, const ft_ext_dev *d, double lr, double max_norm, double *gnorm,
		    int *skipped)
{
	if (*d->step != x->synced && dev_state(x, d, 0) < 0)
		return -1;
	x->synced = *d->step;
	size_t n = ft_model_nparams(x->m);
	ft_cuda_xparam *xp = ft_xcalloc(n ? n : 1, sizeof *xp);
	int rc = 0;
	for (size_t k = 0; k < d->n && !rc; k++) {
		long i = ftp_cuda_param_index(x->m, d->p[k]);
		if (i < 0)
			rc = -1;
		else
			xp[i] = (ft_cuda_xparam){ 1, d->kind[k], d->block ? d->block[k] : 0,
						  d->decay ? d->decay[k] : 1,
						  d->p[k]->ndim == 2 ? (int)d->p[k]->shape[0] : 0,
						  d->p[k]->ndim == 2 ? (int)d->p[k]->shape[1] : 0,
						  d->right ? d->right[k] : 0, d->rank ? d->rank[k] : 0,
						  d->project && d->kind[k] && *d->step % d->interval == 0 };
	}
	proj_ctx pc = { x, d };
	ft_cuda_xopt o = { d->algo == FT_EXT_MUON ? FT_CUDA_MUON
			   : d->algo == FT_EXT_GALORE ? FT_CUDA_GALORE
			   : d->algo == FT_EXT_APOLLO ? FT_CUDA_APOLLO : FT_CUDA_ADAM_MINI,
			   lr, d->wd, d->beta1, d->beta2, d->eps, *d->step + 1, d->scale,
			   d->scale_tensor, d->scale_front, d->project ? dev_project : NULL,
			   d->limit ? dev_limit : NULL, &pc };
	if (!rc)
		rc = ft_cuda_step_x(x->dm, &o, xp, n, max_norm, gnorm, skipped);
	free(xp);
	if (rc == 0 && !*skipped)
		x->synced = ++*d->step;
	return rc;
}

/* LLaMA-Factory's extras on the device (lib/cuda/optim_ext.cu, optim_x.cu). */
int ftp_cuda_ext_step(ftp_cuda_ext *x, const ft_optim_ext *e, const ft_adamw_opts *o, double lr,
		      double lambda, double max_norm, double *gnorm, int *skipped)
{
	*skipped = 0;
	if (e->dev) {
		x->ext = e;
		return dev_step(x, e->dev, lr, max_norm, gnorm, skipped);
	}
	if (!e->param_lr && !(e->block_adamw && e->after_step))
		return ft_fail("%s", "this optimizer of LLaMA-Factory's extras runs on the CPU only "
			       "(--device cpu)");
	x->ext = e;
	size_t n = ft_model_nparams(x->m);
	ft_cuda_pstep *ps = ft_xcalloc(n ? n : 1, sizeof *ps);
	ft_cuda_adamw_opts co = { o->beta1, o->beta2, o->eps, o->weight_decay };
	int64_t step = 0;
	int rc = ext_plan(x, e, o, lr, lambda, ps, &step);
	if (rc == 0)
		rc = ft_cuda_step_ext(x->dm, &co, ps, n, step, max_norm, gnorm, skipped);
	free(ps);
	if (rc < 0)
		return -1;
	if (step > 0 && !*skipped) {   /* the device holds the block's moments after it */
		ft_adamw_set_steps(e->block_adamw(e->self, &(double){ 0 }), step);
		x->synced = step;
		e->after_step(e->self);
	}
	return 0;
}

int ftp_cuda_ext_owns_state(const ftp_cuda_ext *x) { return x->ext && x->ext->dev; }

int ftp_cuda_ext_state_out(ftp_cuda_ext *x)
{
	if (!x->ext)
		return 0;
	if (x->ext->dev)
		return *x->ext->dev->step == x->synced ? dev_state(x, x->ext->dev, 1) : 0;
	/* only while the device holds them: after a switch the fresh block's
	 * zeros are the extension's until its first step uploads them */
	ft_adamw *a = x->ext->block_adamw ? x->ext->block_adamw(x->ext->self, &(double){ 0 }) : NULL;
	if (a && ft_adamw_steps(a) == x->synced)
		return block_moments(x, a, 1);
	return 0;
}

/* ---- the AdamW moments at checkpoints ---- */

void ftp_cuda_state_init(ftp_cuda_state *s, ft_cuda_model *dm, ftp_cuda_ext *ext, ftp_cuda_moments_get get,
			 ftp_cuda_moments_set set, void *b)
{
	*s = (ftp_cuda_state){ .dm = dm, .ext = ext, .get = get, .set = set, .b = b };
}

/* ft_adamw_fetch / ft_dist_own_out: the k-th param's moments straight from
 * the device as the checkpoint is written, none of the others' on the
 * host meanwhile */
static int fetch(void *ctx, size_t k, float *m, float *v)
{
	ftp_cuda_state *s = ctx;
	return s->get(s->b, ft_adamw_param(s->out, k), m, v);
}

/* ft_dist_own_in: this rank's piece of the k-th param's moments onto the
 * device as a ZeRO-1 resume streams them in (the step is set before) */
static int own_in(void *ctx, size_t k, const float *m, const float *v)
{
	ftp_cuda_state *s = ctx;
	return s->set(s->b, ft_adamw_param(s->out, k), m, v, ft_adamw_steps(s->out));
}

int ftp_cuda_state_out(ftp_cuda_state *s, ft_adamw *opt)
{
	/* the device's moments hold that optimizer's state; the AdamW the
	 * CPU run leaves untouched stays so */
	if (ftp_cuda_ext_owns_state(s->ext))
		return ftp_cuda_ext_state_out(s->ext);
	if (opt) {
		s->out = opt;
		ft_adamw_set_steps(opt, ft_cuda_steps(s->dm));
	}
	/* ZeRO-1: rank 0 writes each param's moments as the other ranks send
	 * their pieces (--zero 1 refuses the optimizer extras, so no block) */
	if (s->zero && opt)
		return ft_dist_save_moments(&s->zsave, s->zero, opt, fetch, s);
	if (opt)
		ft_adamw_set_fetch(opt, fetch, s);
	return ftp_cuda_ext_state_out(s->ext);   /* BAdam's block */
}

int ftp_cuda_state_zero_load(ftp_cuda_state *s, ft_adamw *opt, const char *path)
{
	if (!s->zero)
		return ft_fail("%s: a ZeRO-1 load on a device model without its slice", path);
	s->out = opt;
	if (ft_dist_load_moments(s->zero, opt, path, own_in, s) < 0)
		return -1;
	s->zero_loaded = 1;
	return 0;
}

int ftp_cuda_state_in(ftp_cuda_state *s, const ft_adamw *opt)
{
	ft_adamw *o = (ft_adamw *)opt;   /* read only: the accessors are shared */
	for (size_t k = 0; !s->zero_loaded && k < ft_adamw_count(o); k++)
		if (s->set(s->b, ft_adamw_param(o, k), ft_adamw_exp_avg(o, k), ft_adamw_exp_avg_sq(o, k),
			   ft_adamw_steps(o)) < 0)
			return -1;
	return 0;
}
