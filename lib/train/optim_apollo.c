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

/* APOLLO's per-param state besides GaLore's (ftp_lowrank) */
typedef struct {
	uint64_t seed;
	int has_limit;
	float limit;                  /* state["scaled_grad"]: the last update's norm */
} aseed;

typedef struct {
	ft_param *const *p;
	size_t n;
	ftp_lowrank *s;
	aseed *z;
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
static int draw(ftp_lowrank *st, aseed *z, int svd, const float *G, int out, int in)
{
	if (svd)
		return ftp_lowrank_svd(st, G, out, in);
	size_t n = st->np;   /* >= 16: checked by ft_apollo_new */
	torch_randn(st->P, n, z->seed);
	float rs = (float)sqrt((double)st->r);
	for (size_t i = 0; i < n; i++) st->P[i] /= rs;
	z->seed = next_seed(z->seed);
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
static float fira_limit(aseed *st, float nrm)
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
static void scaled_grad(const apollo *x, ftp_lowrank *st, aseed *z, const ft_param *p, const float *N, const float *R,
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
	float lim = fira_limit(z, (float)sqrt(norm2(F, p->n)));
	for (size_t i = 0; i < p->n; i++) F[i] /= lim;   /* the first step's 1 leaves F as it is */
	if (!x->o.scale_front)
		for (size_t i = 0; i < p->n; i++) F[i] *= sf;
}

static int ap_step(void *self, ft_adamw *opt, double lr, double lambda)
{
	apollo *x = self;
	(void)opt; (void)lambda;
	int64_t t = x->step++;
	ftp_old_adamw a = ftp_old_adamw_at(x->o.beta1, x->o.beta2, x->o.eps, lr, x->step);
	for (size_t k = 0; k < x->n; k++) {
		ft_param *p = x->p[k];
		ftp_lowrank *st = &x->s[k];
		int out = (int)p->shape[0], in = (int)p->shape[1];
		if (st->on && t % x->o.update_interval == 0 && draw(st, &x->z[k], x->o.svd, p->g, out, in) < 0)
			return ft_fail_ctx("APOLLO: %s: ", p->name);
		float *R, *N = ftp_lowrank_adam(st, p, &a, &R);
		if (N) {
			float *F = ft_xmalloc(p->n * sizeof *F);
			scaled_grad(x, st, &x->z[k], p, N, R, F);
			for (size_t i = 0; i < p->n; i++) p->w[i] = fmaf(a.alpha, F[i], p->w[i]);
			free(F);
		}
		ftp_ext_decay(p, lr, st->on || p->decay ? x->o.weight_decay : 0.0);
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
	if (draw(&x->s[k], &x->z[k], x->o.svd, G, (int)p->shape[0], (int)p->shape[1]) < 0) {
		ft_fail_ctx("APOLLO: %s: ", p->name);
		return NULL;
	}
	return x->s[k].P;
}

static float ap_limit(void *self, size_t k, float nrm)
{
	return fira_limit(&((apollo *)self)->z[k], nrm);
}

/* ".seed": the projector's seed and the limiter's state, in the metadata */
static void seed_meta(void *ctx, ft_st_writer *w, size_t k, char **names, size_t *nn)
{
	apollo *x = ctx;
	if (!x->s[k].on) return;
	const aseed *z = &x->z[k];
	names[*nn] = ft_xasprintf("%s.seed", x->p[k]->name);
	char *v = ft_xasprintf("%llu %d %a", (unsigned long long)z->seed, z->has_limit, z->limit);
	ft_st_writer_meta(w, names[(*nn)++], v);
	free(v);
}

static int ap_save(void *self, const char *dir)
{
	apollo *x = self;
	return ftp_lowrank_save(dir, "apollo_optimizer.safetensors", "ft-apollo", x->step, x->p, x->s,
				x->n, seed_meta, x);
}

static int read_seed(const json_t *meta, const char *f, const char *pname, aseed *s)
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
		rc = ftp_lowrank_read(st, f, x->p[k], &x->s[k]);
		if (!rc && x->s[k].on) rc = read_seed(meta, f, x->p[k]->name, &x->z[k]);
	}
	if (!rc) rc = ftp_ext_read_step(st, f, &x->step);
	if (st) ft_st_close(st);
	free(f);
	return rc;
}

static void ap_free(void *self)
{
	apollo *x = self;
	ftp_lowrank_free(x->s, x->n);
	free(x->z);
	ft_ext_proj_free(&x->arr);
	free(x);
}

/* ft_ext_dev over the states */
static void dev_arrays(apollo *x)
{
	ftp_lowrank_arrays(&x->arr, x->p, x->s, x->n);
	x->dev = (ft_ext_dev){ .algo = FT_EXT_APOLLO, .p = x->p, .n = x->n, .step = &x->step,
			       .wd = x->o.weight_decay, .beta1 = x->o.beta1, .beta2 = x->o.beta2,
			       .eps = x->o.eps, .interval = x->o.update_interval, .scale = x->o.scale,
			       .project = ap_project, .self = x,
			       .scale_tensor = x->o.scale_tensor, .scale_front = x->o.scale_front,
			       .limit = ap_limit };
	ft_ext_proj_view(&x->arr, &x->dev);
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
	x->z = ft_xcalloc(n ? n : 1, sizeof *x->z);
	/* the 1-based index in the groups [nodecay, decay, apollo] */
	size_t before = 0, idx = 0;
	for (size_t k = 0; k < n; k++) before += !(is_apollo[k] && params[k]->ndim == 2);
	for (size_t k = 0; k < n; k++) {
		const ft_param *p = params[k];
		int on = is_apollo[k] && p->ndim == 2, right = 0, r = 0;
		if (on) {
			int64_t out = p->shape[0], in = p->shape[1], kk = out < in ? out : in;
			right = o->proj_type == FT_GALORE_RIGHT ? 1 : o->proj_type == FT_GALORE_LEFT ? 0 : out >= in;
			r = o->svd && o->rank > kk ? (int)kk : o->rank;   /* svd: Vh[:rank]; randn (rank, in): no cap */
			x->z[k].seed = o->layerwise ? 1 : before + (++idx);
		}
		ftp_lowrank_init(&x->s[k], p, on, right, r);
	}
	dev_arrays(x);
	ft_optim_ext *e = ft_xcalloc(1, sizeof *e);
	*e = (ft_optim_ext){ .self = x, .step = ap_step, .save = ap_save, .load = ap_load, .free = ap_free,
			     .dev = &x->dev };
	return e;
}
