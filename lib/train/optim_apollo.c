/* optim_apollo.c - APOLLO (Zhu et al. 2024) as LLaMA-Factory runs it
 * (use_apollo: _create_apollo_optimizer with apollo-torch 1.0's
 * APOLLOAdamW, the optimizer for --optim adamw_torch):
 *
 * - APOLLO params: the 2-D weights of the apollo_target linears; the other
 *   trainable params get the same AdamW without a projection.
 * - Each APOLLO param's gradient G [out, in] is projected by a random
 *   matrix (GradientProjector, apollo_proj random; svd: GaLore's top
 *   singular vectors of G instead): std picks R = G P^T
 *   with P [rank, in] when out >= in, else R = P^T G with P [out, rank];
 *   P is torch.randn from a torch.Generator seeded with the projector's
 *   seed, / sqrt(rank), drawn again at steps 0, interval, 2 interval, ...
 *   with the seed advanced by next_seed (the last of 15 torch.randint
 *   draws).  The seeds start at the param's 1-based index in the
 *   optimizer's groups (nodecay, decay, apollo), so layer-wise mode (one
 *   optimizer per param) seeds every projector with 1.
 * - Adam's moments live in R's space; the update is the raw gradient
 *   scaled by ||m/(sqrt v + eps)|| / (||R|| + 1e-8) per channel (the norm
 *   along R's low-rank dimension) or per tensor, through Fira's
 *   norm-growth limiter (the update's norm may grow by 1.01 a step), times
 *   sqrt(apollo_scale) (before the limiter with apollo_scale_front).
 * - transformers' old AdamW step: p -= lr sqrt(bc2)/bc1 * update, then
 *   p -= lr wd p.
 * torch's generator is mt19937 (32-bit seed), uniform floats from 24 bits,
 * and randn's Box-Muller over blocks of 16 (normal_fill); torch's AVX2 path
 * evaluates log/sin/cos with SLEEF in float, so P agrees to about 1 ulp.
 * State (checkpoint-N/apollo_optimizer.safetensors): "<param>.exp_avg",
 * ".exp_avg_sq", ".ortho" and ".seed"/".limit" in the metadata.
 */
#include "train/optim_ext.h"
#include "train/optim_ext_internal.h"
#include "format/safetensors.h"
#include "model/layers.h"
#include "util/error.h"
#include "util/rng.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- torch's CPU generator (util/rng.h's MT19937) ---------------------- */

static float mt_uniform(ft_mt *g) { return (float)(ft_mt_next(g) & ((1u << 24) - 1)) * (1.0f / (1 << 24)); }

static void fill16(float *d)
{
	for (int j = 0; j < 8; j++) {
		float u1 = 1 - d[j], u2 = d[j + 8];
		float radius = sqrtf(-2 * logf(u1));
		float theta = (float)(2.0f * M_PI * u2);
		d[j] = radius * cosf(theta);
		d[j + 8] = radius * sinf(theta);
	}
}

/* torch.randn(n, generator=manual_seed(seed)) for n >= 16 (normal_fill) */
static void torch_randn(float *d, size_t n, uint64_t seed)
{
	ft_mt g;
	ft_mt_seed_torch(&g, seed);
	for (size_t i = 0; i < n; i++) d[i] = mt_uniform(&g);
	for (size_t i = 0; i + 16 <= n; i += 16) fill16(d + i);
	if (n % 16) {   /* the last 16 again, from fresh draws */
		float *t = d + n - 16;
		for (int i = 0; i < 16; i++) t[i] = mt_uniform(&g);
		fill16(t);
	}
}

/* apollo-torch's next_seed: torch.randint(0, 2^63 - 1, (15,)).tolist()[-1] */
static uint64_t next_seed(uint64_t seed)
{
	ft_mt g;
	ft_mt_seed_torch(&g, seed);
	uint64_t v = 0;
	for (int i = 0; i < 15; i++) {
		uint64_t hi = ft_mt_next(&g), lo = ft_mt_next(&g);
		v = ((hi << 32) | lo) % 9223372036854775807ull;
	}
	return v;
}

/* ---- the optimizer ------------------------------------------------------ */

typedef struct {
	int apollo, right, r;
	size_t nlow, np;
	uint64_t seed;
	int has_limit;
	float limit;                  /* state["scaled_grad"]: the last update's norm */
	float *P, *m, *v;
} astate;

typedef struct {
	ft_param *const *p;
	size_t n;
	astate *s;
	ft_apollo_opts o;
	int64_t step;
	/* the state as ft_ext_dev's arrays (a model that steps itself) */
	ft_ext_proj arr;
	ft_ext_dev dev;
} apollo;

/* A new projection.  random: GradientProjector's randn / sqrt(rank), the
 * seed advanced; svd: GaLoreProjector's top-r right (Vh[:r]) or left
 * (U[:, :r]) singular vectors of the gradient (LAPACK's sgesdd, as
 * torch.linalg.svd). */
static int draw(astate *st, int svd, const float *G, int out, int in)
{
	if (svd) {
		int k = out < in ? out : in;
		float *U = ft_xmalloc((size_t)out * k * sizeof *U), *S = ft_xmalloc((size_t)k * sizeof *S);
		float *Vh = ft_xmalloc((size_t)k * in * sizeof *Vh);
		int rc = ft_svd_thin(G, out, in, U, S, Vh);
		if (!rc && st->right)
			memcpy(st->P, Vh, (size_t)st->r * in * sizeof *st->P);
		else if (!rc)
			for (int o = 0; o < out; o++)
				memcpy(st->P + (size_t)o * st->r, U + (size_t)o * k, st->r * sizeof *st->P);
		free(U); free(S); free(Vh);
		return rc;
	}
	size_t n = st->np;   /* >= 16: checked by ft_apollo_new */
	torch_randn(st->P, n, st->seed);
	float rs = (float)sqrt((double)st->r);
	for (size_t i = 0; i < n; i++) st->P[i] /= rs;
	st->seed = next_seed(st->seed);
	return 0;
}

static double norm2(const float *x, size_t n)
{
	double s = 0;
	for (size_t i = 0; i < n; i++) s += (double)x[i] * x[i];
	return s;
}

/* Fira's norm-growth limiter on an update of norm nrm: what to divide it
 * by (1 on the first step, which only records the norm). */
static float fira_limit(astate *st, float nrm)
{
	if (!st->has_limit) {
		st->limit = nrm;
		st->has_limit = 1;
		return 1.0f;
	}
	float q = nrm / (st->limit + 1e-8f);
	float lim = q > 1.01f ? q / 1.01f : 1.0f;
	st->limit = nrm / lim;
	return lim;
}

/* The scaled raw gradient of an APOLLO param into F [out, in] from the
 * normalized low-rank update N and the projected gradient R. */
static void scaled_grad(const apollo *x, astate *st, const ft_param *p, const float *N, const float *R,
			float *F)
{
	int out = (int)p->shape[0], in = (int)p->shape[1], r = st->r;
	/* norm_dim: 0 when out < in (R [r, in]: a factor per column), else 1
	 * (R [out, r]: a factor per row) */
	int per_row = !(out < in);
	float sf = (float)sqrt(x->o.scale);
	if (x->o.scale_tensor) {
		float f = (float)(sqrt(norm2(N, st->nlow)) / ((float)sqrt(norm2(R, st->nlow)) + 1e-8f));
		for (size_t i = 0; i < p->n; i++) F[i] = p->g[i] * f;
	} else if (per_row) {
		for (int o = 0; o < out; o++) {
			float f = (float)sqrt(norm2(N + (size_t)o * r, r)) /
				  ((float)sqrt(norm2(R + (size_t)o * r, r)) + 1e-8f);
			for (int i = 0; i < in; i++) F[(size_t)o * in + i] = p->g[(size_t)o * in + i] * f;
		}
	} else {
		for (int i = 0; i < in; i++) {
			double a = 0, b = 0;
			for (int k = 0; k < r; k++) {
				a += (double)N[(size_t)k * in + i] * N[(size_t)k * in + i];
				b += (double)R[(size_t)k * in + i] * R[(size_t)k * in + i];
			}
			float f = (float)sqrt(a) / ((float)sqrt(b) + 1e-8f);
			for (int o = 0; o < out; o++) F[(size_t)o * in + i] = p->g[(size_t)o * in + i] * f;
		}
	}
	if (x->o.scale_front)
		for (size_t i = 0; i < p->n; i++) F[i] *= sf;
	float lim = fira_limit(st, (float)sqrt(norm2(F, p->n)));
	for (size_t i = 0; i < p->n; i++) F[i] /= lim;   /* the first step's 1 leaves F as it is */
	if (!x->o.scale_front)
		for (size_t i = 0; i < p->n; i++) F[i] *= sf;
}

static int ap_step(void *self, ft_adamw *opt, double lr, double lambda)
{
	apollo *x = self;
	(void)opt; (void)lambda;
	int64_t t = x->step++;
	double b1 = x->o.beta1, b2 = x->o.beta2;
	double bc1 = 1.0 - pow(b1, (double)x->step), bc2 = 1.0 - pow(b2, (double)x->step);
	float alpha = (float)-(lr * sqrt(bc2) / bc1), a1 = (float)(1.0 - b1), a2 = (float)(1.0 - b2);
	float fb1 = (float)b1, fb2 = (float)b2, eps = (float)x->o.eps;
	for (size_t k = 0; k < x->n; k++) {
		ft_param *p = x->p[k];
		astate *st = &x->s[k];
		const float *g = p->g;
		float *R = NULL, *N = NULL;
		int out = (int)p->shape[0], in = (int)p->shape[1];
		if (st->apollo) {
			if (t % x->o.update_interval == 0 && draw(st, x->o.svd, g, out, in) < 0)
				return ft_fail_ctx("APOLLO: %s: ", p->name);
			R = ft_xmalloc(st->nlow * sizeof *R);
			if (st->right)   /* G [out, in] @ P^T [in, r] */
				ft_sgemm(0, 1, out, st->r, in, 1.0f, g, in, st->P, in, 0.0f, R, st->r);
			else             /* P^T [r, out] @ G [out, in] */
				ft_sgemm(1, 0, st->r, in, out, 1.0f, st->P, st->r, g, in, 0.0f, R, in);
			g = R;
			N = ft_xmalloc(st->nlow * sizeof *N);
		}
		size_t nl = st->apollo ? st->nlow : p->n;
		for (size_t i = 0; i < nl; i++) {
			st->m[i] = fmaf(a1, g[i], st->m[i] * fb1);
			st->v[i] = st->v[i] * fb2 + (a2 * g[i]) * g[i];
			float ng = st->m[i] / (sqrtf(st->v[i]) + eps);
			if (N) N[i] = ng;
			else p->w[i] = fmaf(alpha, ng, p->w[i]);
		}
		if (st->apollo) {
			float *F = ft_xmalloc(p->n * sizeof *F);
			scaled_grad(x, st, p, N, R, F);
			for (size_t i = 0; i < p->n; i++) p->w[i] = fmaf(alpha, F[i], p->w[i]);
			free(F);
		}
		double wd = st->apollo || p->decay ? x->o.weight_decay : 0.0;
		if (wd > 0) {
			float a = (float)(-lr * wd);
			for (size_t i = 0; i < p->n; i++) p->w[i] = fmaf(a, p->w[i], p->w[i]);
		}
		free(R);
		free(N);
	}
	return 0;
}

/* ft_ext_dev.project and .limit: draw and fira_limit for a model that
 * steps itself */
static const float *ap_project(void *self, size_t k, const float *G)
{
	apollo *x = self;
	const ft_param *p = x->p[k];
	if (draw(&x->s[k], x->o.svd, G, (int)p->shape[0], (int)p->shape[1]) < 0) {
		ft_fail_ctx("APOLLO: %s: ", p->name);
		return NULL;
	}
	return x->s[k].P;
}

static float ap_limit(void *self, size_t k, float nrm)
{
	return fira_limit(&((apollo *)self)->s[k], nrm);
}

static int ap_save(void *self, const char *dir)
{
	apollo *x = self;
	ft_st_writer *w = ft_st_writer_new();
	char **names = ft_xcalloc(6 * x->n + 1, sizeof *names), step[32];
	int64_t (*shapes)[2] = ft_xcalloc(2 * x->n + 1, sizeof *shapes);
	size_t nn = 0;
	snprintf(step, sizeof step, "%lld", (long long)x->step);
	ft_st_writer_meta(w, "format", "ft-apollo");
	ft_st_writer_meta(w, "step", step);
	for (size_t k = 0; k < x->n; k++) {
		ft_param *p = x->p[k];
		astate *st = &x->s[k];
		ftp_ext_add_lowrank(w, p, st->apollo, st->right, st->r, st->m, st->v, st->P, names, &nn,
				    &shapes[2 * k]);
		if (!st->apollo) continue;
		names[nn] = ft_xasprintf("%s.seed", p->name);
		char *v = ft_xasprintf("%llu %d %a", (unsigned long long)st->seed, st->has_limit, st->limit);
		ft_st_writer_meta(w, names[nn++], v);
		free(v);
	}
	char *f = ft_xasprintf("%s/apollo_optimizer.safetensors", dir);
	int rc = ft_st_writer_write(w, f);
	free(f);
	ft_st_writer_free(w);
	for (size_t i = 0; i < nn; i++) free(names[i]);
	free(names);
	free(shapes);
	return rc;
}

static int read_seed(const json_t *meta, const char *f, const char *pname, astate *s)
{
	char *nm = ft_xasprintf("%s.seed", pname);
	const char *v = meta ? json_string_value(json_object_get(meta, nm)) : NULL;
	unsigned long long seed;
	int has;
	float lim;
	int rc = v && sscanf(v, "%llu %d %a", &seed, &has, &lim) == 3 ? 0
		 : ft_fail("%s: no valid %s in the metadata", f, nm);
	if (!rc) s->seed = seed, s->has_limit = has, s->limit = lim;
	free(nm);
	return rc;
}

static int ap_load(void *self, const char *dir)
{
	apollo *x = self;
	char *f = ft_xasprintf("%s/apollo_optimizer.safetensors", dir);
	ft_st *st = ft_st_open(f);
	int rc = st ? 0 : -1;
	const json_t *meta = st ? ft_st_metadata(st) : NULL;
	for (size_t k = 0; k < x->n && !rc; k++) {
		astate *s = &x->s[k];
		size_t nl = s->apollo ? s->nlow : x->p[k]->n;
		rc = ftp_ext_read_vec(st, f, x->p[k]->name, "exp_avg", nl, s->m);
		if (!rc) rc = ftp_ext_read_vec(st, f, x->p[k]->name, "exp_avg_sq", nl, s->v);
		if (!rc && s->apollo) rc = ftp_ext_read_vec(st, f, x->p[k]->name, "ortho", s->np, s->P);
		if (!rc && s->apollo) rc = read_seed(meta, f, x->p[k]->name, s);
	}
	if (!rc) rc = ftp_ext_read_step(st, f, &x->step);
	if (st) ft_st_close(st);
	free(f);
	return rc;
}

static void ap_free(void *self)
{
	apollo *x = self;
	for (size_t k = 0; k < x->n; k++) {
		free(x->s[k].P);
		free(x->s[k].m);
		free(x->s[k].v);
	}
	free(x->s);
	ft_ext_proj_free(&x->arr);
	free(x);
}

/* ft_ext_dev over the states */
static void dev_arrays(apollo *x)
{
	ft_ext_proj *a = &x->arr;
	ft_ext_proj_alloc(a, x->n);
	for (size_t k = 0; k < x->n; k++) {
		const ft_param *p = x->p[k];
		astate *st = &x->s[k];
		a->kind[k] = st->apollo;
		a->decay[k] = p->decay;
		a->right[k] = st->right;
		a->rank[k] = st->r;
		a->n1[k] = st->apollo ? st->nlow : p->n;
		a->n3[k] = st->apollo ? st->np : 0;
		a->s1[k] = st->m;
		a->s2[k] = st->v;
		a->s3[k] = st->P;
	}
	x->dev = (ft_ext_dev){ .algo = FT_EXT_APOLLO, .p = x->p, .n = x->n, .step = &x->step,
			       .wd = x->o.weight_decay, .beta1 = x->o.beta1, .beta2 = x->o.beta2,
			       .eps = x->o.eps, .interval = x->o.update_interval, .scale = x->o.scale,
			       .project = ap_project, .self = x,
			       .scale_tensor = x->o.scale_tensor, .scale_front = x->o.scale_front,
			       .limit = ap_limit };
	ft_ext_proj_view(a, &x->dev);
}

ft_optim_ext *ft_apollo_new(ft_param *const *params, size_t n, const int *is_apollo, const ft_apollo_opts *o)
{
	if (o->rank < 1) return ft_fail("apollo_rank must be >= 1"), NULL;
	if (o->update_interval < 1) return ft_fail("apollo_update_interval must be >= 1"), NULL;
	for (size_t k = 0; k < n; k++) {   /* what apollo-torch cannot run, or ft not */
		const ft_param *p = params[k];
		if (!is_apollo[k] || p->ndim != 2) continue;
		int64_t out = p->shape[0], in = p->shape[1];
		int right = o->proj_type == FT_GALORE_RIGHT ? 1 : o->proj_type == FT_GALORE_LEFT ? 0 : out >= in;
		/* apollo-torch scales by norms along dim 0 (out < in) or 1: the
		 * other side's projection does not broadcast there */
		if (right != (out >= in))
			return ft_fail("apollo_proj_type %s on %s [%lld, %lld]: apollo-torch's channel scaling "
				       "fails on that side (use std)", right ? "right" : "left", p->name,
				       (long long)out, (long long)in), NULL;
		if (!o->svd && (size_t)o->rank * (size_t)(right ? in : out) < 16)
			return ft_fail("apollo: %s's projection has under 16 elements; torch.randn draws those "
				       "another way, which ft does not reproduce", p->name), NULL;
	}
	apollo *x = ft_xcalloc(1, sizeof *x);
	x->p = params;
	x->n = n;
	x->o = *o;
	x->s = ft_xcalloc(n ? n : 1, sizeof *x->s);
	/* the 1-based index in the groups [nodecay, decay, apollo] */
	size_t before = 0, idx = 0;
	for (size_t k = 0; k < n; k++) before += !(is_apollo[k] && params[k]->ndim == 2);
	for (size_t k = 0; k < n; k++) {
		const ft_param *p = params[k];
		astate *st = &x->s[k];
		st->apollo = is_apollo[k] && p->ndim == 2;
		size_t nm = p->n;
		if (st->apollo) {
			int64_t out = p->shape[0], in = p->shape[1];
			int right = o->proj_type == FT_GALORE_RIGHT ? 1 : o->proj_type == FT_GALORE_LEFT ? 0 : out >= in;
			st->right = right;
			int64_t kk = out < in ? out : in;   /* svd: Vh[:rank] keeps what there is */
			st->r = o->svd && o->rank > kk ? (int)kk : o->rank;   /* randn (rank, in): no cap */
			st->nlow = (size_t)st->r * (size_t)(right ? out : in);
			st->np = (size_t)st->r * (size_t)(right ? in : out);
			st->P = ft_xcalloc(st->np, sizeof(float));
			st->seed = o->layerwise ? 1 : before + (++idx);
			nm = st->nlow;
		}
		st->m = ft_xcalloc(nm ? nm : 1, sizeof(float));
		st->v = ft_xcalloc(nm ? nm : 1, sizeof(float));
	}
	dev_arrays(x);
	ft_optim_ext *e = ft_xcalloc(1, sizeof *e);
	*e = (ft_optim_ext){ .self = x, .step = ap_step, .save = ap_save, .load = ap_load, .free = ap_free,
			     .dev = &x->dev };
	return e;
}
