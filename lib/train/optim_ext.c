/* optim_ext.c - what the optimizer extensions share; see optim_ext.h */
#include "train/optim_ext.h"
#include "train/optim_ext_internal.h"
#include "model/layers.h"
#include "util/error.h"

#include <jansson.h>

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

void ft_optim_ext_free(ft_optim_ext *e)
{
	if (!e) return;
	if (e->free) e->free(e->self);
	free(e);
}

void ft_ext_proj_alloc(ft_ext_proj *a, size_t n)
{
	size_t nn = n ? n : 1;
	a->kind = ft_xcalloc(nn, sizeof *a->kind);
	a->decay = ft_xcalloc(nn, sizeof *a->decay);
	a->right = ft_xcalloc(nn, sizeof *a->right);
	a->rank = ft_xcalloc(nn, sizeof *a->rank);
	a->n1 = ft_xcalloc(nn, sizeof *a->n1);
	a->n3 = ft_xcalloc(nn, sizeof *a->n3);
	a->s1 = ft_xcalloc(nn, sizeof *a->s1);
	a->s2 = ft_xcalloc(nn, sizeof *a->s2);
	a->s3 = ft_xcalloc(nn, sizeof *a->s3);
}

void ft_ext_proj_free(ft_ext_proj *a)
{
	free(a->kind); free(a->decay); free(a->right); free(a->rank);
	free(a->n1); free(a->n3); free(a->s1); free(a->s2); free(a->s3);
}

void ft_ext_proj_view(const ft_ext_proj *a, ft_ext_dev *d)
{
	d->kind = a->kind;
	d->decay = a->decay;
	d->right = a->right;
	d->rank = a->rank;
	d->n1 = d->n2 = a->n1;
	d->n3 = a->n3;
	d->s1 = a->s1;
	d->s2 = a->s2;
	d->s3 = a->s3;
}

int ftp_ext_read_vec(ft_st *st, const char *f, const char *pname, const char *what, size_t n,
		     float *dst)
{
	char *nm = ft_xasprintf("%s.%s", pname, what);
	const ft_st_tensor *t = ft_st_find(st, nm);
	int rc = !t || t->numel != n ? ft_fail("%s: %s is missing or has another size", f, nm)
				     : ft_st_read_f32(t, dst);
	free(nm);
	return rc;
}

int ftp_ext_read_step(ft_st *st, const char *f, int64_t *step)
{
	const json_t *meta = ft_st_metadata(st);
	const char *s = meta ? json_string_value(json_object_get(meta, "step")) : NULL;
	if (!s) return ft_fail("%s: no step in the metadata", f);
	*step = strtoll(s, NULL, 10);
	return 0;
}

void ftp_ext_add_lowrank(ft_st_writer *w, const ft_param *p, const ftp_lowrank *s, char **names,
			 size_t *nn, int64_t shape[2][2])
{
	int64_t *ls = shape[0], *ps = shape[1];
	ls[0] = s->right ? p->shape[0] : s->r;
	ls[1] = s->right ? s->r : p->shape[1];
	ps[0] = s->right ? s->r : p->shape[0];
	ps[1] = s->right ? p->shape[1] : s->r;
	const int64_t *ms = s->on ? ls : p->shape;
	int nd = s->on ? 2 : p->ndim;
	names[*nn] = ft_xasprintf("%s.exp_avg", p->name);
	ft_st_writer_add(w, names[(*nn)++], FT_F32, nd, ms, s->m);
	names[*nn] = ft_xasprintf("%s.exp_avg_sq", p->name);
	ft_st_writer_add(w, names[(*nn)++], FT_F32, nd, ms, s->v);
	if (!s->on) return;
	names[*nn] = ft_xasprintf("%s.ortho", p->name);
	ft_st_writer_add(w, names[(*nn)++], FT_F32, 2, ps, s->P);
}

/* ---- GaLore's and APOLLO's per-param state (optim_ext_internal.h) ---- */

void ftp_lowrank_init(ftp_lowrank *s, const ft_param *p, int on, int right, int r)
{
	size_t nm = p->n;
	*s = (ftp_lowrank){ .on = on };
	if (on) {
		int64_t out = p->shape[0], in = p->shape[1];
		s->right = right;
		s->r = r;
		s->nlow = (size_t)r * (size_t)(right ? out : in);
		s->np = (size_t)r * (size_t)(right ? in : out);
		s->P = ft_xcalloc(s->np, sizeof(float));
		nm = s->nlow;
	}
	s->m = ft_xcalloc(nm ? nm : 1, sizeof(float));
	s->v = ft_xcalloc(nm ? nm : 1, sizeof(float));
}

void ftp_lowrank_free(ftp_lowrank *s, size_t n)
{
	for (size_t k = 0; k < n; k++) {
		free(s[k].P);
		free(s[k].m);
		free(s[k].v);
	}
	free(s);
}

int ftp_lowrank_svd(ftp_lowrank *s, const float *G, int out, int in)
{
	int k = out < in ? out : in;
	float *U = ft_xmalloc((size_t)out * k * sizeof *U), *S = ft_xmalloc((size_t)k * sizeof *S);
	float *Vh = ft_xmalloc((size_t)k * in * sizeof *Vh);
	int rc = ft_svd_thin(G, out, in, U, S, Vh);
	if (!rc && s->right)
		memcpy(s->P, Vh, (size_t)s->r * in * sizeof *s->P);
	else if (!rc)
		for (int o = 0; o < out; o++)
			memcpy(s->P + (size_t)o * s->r, U + (size_t)o * k, s->r * sizeof *s->P);
	free(U); free(S); free(Vh);
	return rc;
}

ftp_old_adamw ftp_old_adamw_at(double beta1, double beta2, double eps, double lr, int64_t step)
{
	double bc1 = 1.0 - pow(beta1, (double)step), bc2 = 1.0 - pow(beta2, (double)step);
	return (ftp_old_adamw){ .alpha = (float)-(lr * sqrt(bc2) / bc1), .a1 = (float)(1.0 - beta1),
				.a2 = (float)(1.0 - beta2), .b1 = (float)beta1, .b2 = (float)beta2,
				.eps = (float)eps };
}

float *ftp_lowrank_adam(ftp_lowrank *s, ft_param *p, const ftp_old_adamw *a, float **R)
{
	const float *g = p->g;
	float *N = NULL;
	int out = (int)p->shape[0], in = (int)p->shape[1];
	*R = NULL;
	if (s->on) {
		*R = ft_xmalloc(s->nlow * sizeof **R);
		if (s->right)   /* G [out, in] @ P^T [in, r] */
			ft_sgemm(0, 1, out, s->r, in, 1.0f, g, in, s->P, in, 0.0f, *R, s->r);
		else            /* P^T [r, out] @ G [out, in] */
			ft_sgemm(1, 0, s->r, in, out, 1.0f, s->P, s->r, g, in, 0.0f, *R, in);
		g = *R;
		N = ft_xmalloc(s->nlow * sizeof *N);
	}
	size_t nl = s->on ? s->nlow : p->n;
	for (size_t i = 0; i < nl; i++) {
		s->m[i] = fmaf(a->a1, g[i], s->m[i] * a->b1);      /* mul_(b1).add_(g, alpha=1-b1) */
		s->v[i] = s->v[i] * a->b2 + (a->a2 * g[i]) * g[i];  /* mul_(b2).addcmul_(g, g, 1-b2) */
		float ng = s->m[i] / (sqrtf(s->v[i]) + a->eps);
		if (N) N[i] = ng;
		else p->w[i] = fmaf(a->alpha, ng, p->w[i]);
	}
	return N;
}

void ftp_ext_decay(ft_param *p, double lr, double wd)
{
	if (wd <= 0) return;
	float a = (float)(-lr * wd);
	for (size_t i = 0; i < p->n; i++) p->w[i] = fmaf(a, p->w[i], p->w[i]);
}

int ftp_lowrank_save(const char *dir, const char *file, const char *format, int64_t step,
		     ft_param *const *p, const ftp_lowrank *s, size_t n,
		     void (*meta)(void *ctx, ft_st_writer *w, size_t k, char **names, size_t *nn),
		     void *ctx)
{
	ft_st_writer *w = ft_st_writer_new();
	char **names = ft_xcalloc(6 * n + 1, sizeof *names), sstep[32];
	int64_t (*shapes)[2] = ft_xcalloc(2 * n + 1, sizeof *shapes);
	size_t nn = 0;
	snprintf(sstep, sizeof sstep, "%lld", (long long)step);
	ft_st_writer_meta(w, "format", format);
	ft_st_writer_meta(w, "step", sstep);
	for (size_t k = 0; k < n; k++) {
		ftp_ext_add_lowrank(w, p[k], &s[k], names, &nn, &shapes[2 * k]);
		if (meta) meta(ctx, w, k, names, &nn);
	}
	char *f = ft_xasprintf("%s/%s", dir, file);
	int rc = ft_st_writer_write(w, f);
	free(f);
	ft_st_writer_free(w);
	for (size_t i = 0; i < nn; i++) free(names[i]);
	free(names);
	free(shapes);
	return rc;
}

int ftp_lowrank_read(ft_st *st, const char *f, const ft_param *p, ftp_lowrank *s)
{
	size_t nl = s->on ? s->nlow : p->n;
	int rc = ftp_ext_read_vec(st, f, p->name, "exp_avg", nl, s->m);
	if (!rc) rc = ftp_ext_read_vec(st, f, p->name, "exp_avg_sq", nl, s->v);
	if (!rc && s->on) rc = ftp_ext_read_vec(st, f, p->name, "ortho", s->np, s->P);
	return rc;
}

void ftp_lowrank_arrays(ft_ext_proj *a, ft_param *const *p, const ftp_lowrank *s, size_t n)
{
	ft_ext_proj_alloc(a, n);
	for (size_t k = 0; k < n; k++) {
		a->kind[k] = s[k].on;
		a->decay[k] = p[k]->decay;
		a->right[k] = s[k].right;
		a->rank[k] = s[k].r;
		a->n1[k] = s[k].on ? s[k].nlow : p[k]->n;
		a->n3[k] = s[k].on ? s[k].np : 0;
		a->s1[k] = s[k].m;
		a->s2[k] = s[k].v;
		a->s3[k] = s[k].P;
	}
}
