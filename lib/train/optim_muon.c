/* optim_muon.c - Muon as LLaMA-Factory runs it (use_muon:
 * _create_muon_optimizer over its third_party/muon/muon.py):
 *
 * - 2-D trainable params whose names hold neither "embed" nor "lm_head"
 *   get Muon: buf = 0.95 buf + g; g' = g + 0.95 buf (Nesterov);
 *   u = NewtonSchulz5(g') (5 steps, in bfloat16, see ns5);
 *   p *= 1 - lr wd;  p -= lr * 0.2 sqrt(max(rows, cols)) * u
 * - the rest get that file's AdamW (not torch's): m = lerp(m, g, 1-b1),
 *   v = lerp(v, g^2, 1-b2), p *= 1 - lr wd, p -= lr / (bc1 / sqrt(bc2)) *
 *   m / (eps + sqrt(v)).
 * Weight decay is --weight_decay on every param, norms and biases included
 * (Muon has one group); lr is the scheduled rate.
 * The Newton-Schulz iteration is computed as torch does it on bfloat16
 * tensors: every product and sum rounded to bfloat16, matrix products
 * accumulated in float32 (ft_sgemm) before rounding.  Summation order may
 * flip a bfloat16 rounding now and then, so it agrees with torch to
 * bfloat16 precision, not bit for bit.
 * State (checkpoint-N/muon_optimizer.safetensors): "<param>.momentum_buffer"
 * or "<param>.moment1" / ".moment2", and the AdamW step in the metadata.
 */
#include "train/optim_ext.h"
#include "train/optim_ext_internal.h"
#include "format/safetensors.h"
#include "model/layers.h"
#include "util/dtype.h"
#include "util/error.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MUON_MOMENTUM 0.95f
#define MUON_NS_STEPS 5

typedef struct {
	ft_param *const *p;
	size_t n;
	int *muon;                     /* per param */
	float **s1, **s2;              /* momentum_buffer, or moment1 / moment2 */
	double wd, beta1, beta2, eps;
	int64_t step;                  /* the AdamW params' */
	size_t *n1, *n2;               /* per param: s1's and s2's floats (dev) */
	ft_ext_dev dev;
} muon;

static float bf(float x) { return ft_bf16_to_f32(ft_f32_to_bf16(x)); }

static void bf_all(float *x, size_t n)
{
	for (size_t i = 0; i < n; i++) x[i] = bf(x[i]);
}

/* zeropower_via_newtonschulz5(G, 5) on G [r, c], into U [r, c]. */
static void ns5(const float *G, int r, int c, float *U)
{
	const float a = 3.4445f, b = -4.7750f, cc = 2.0315f;
	int tr = r > c, R = tr ? c : r, C = tr ? r : c;   /* X is [R, C], R <= C */
	size_t nx = (size_t)R * C;
	float *X = malloc(nx * sizeof *X), *A = malloc((size_t)R * R * sizeof *A);
	float *B = malloc((size_t)R * R * sizeof *B), *T = malloc((size_t)R * R * sizeof *T);
	float *Y = malloc(nx * sizeof *Y);
	if (!X || !A || !B || !T || !Y) abort();
	for (int i = 0; i < r; i++)
		for (int j = 0; j < c; j++) {
			float v = bf(G[(size_t)i * c + j]);
			if (tr) X[(size_t)j * C + i] = v;
			else X[(size_t)i * C + j] = v;
		}
	double s = 0;
	for (size_t i = 0; i < nx; i++) s += (double)X[i] * X[i];
	float d = bf(bf((float)sqrt(s)) + 1e-7f);   /* X.norm() + 1e-7, bf16 */
	for (size_t i = 0; i < nx; i++) X[i] = bf(X[i] / d);
	for (int it = 0; it < MUON_NS_STEPS; it++) {
		ft_sgemm(0, 1, R, R, C, 1.0f, X, C, X, C, 0.0f, A, R);          /* A = X X^T */
		bf_all(A, (size_t)R * R);
		for (size_t i = 0; i < (size_t)R * R; i++) T[i] = bf(cc * A[i]);   /* c * A */
		ft_sgemm(0, 0, R, R, R, 1.0f, T, R, A, R, 0.0f, B, R);          /* (c A) @ A */
		for (size_t i = 0; i < (size_t)R * R; i++) B[i] = bf(bf(b * A[i]) + bf(B[i]));
		ft_sgemm(0, 0, R, C, R, 1.0f, B, R, X, C, 0.0f, Y, C);          /* B @ X */
		for (size_t i = 0; i < nx; i++) X[i] = bf(bf(a * X[i]) + bf(Y[i]));
	}
	for (int i = 0; i < r; i++)
		for (int j = 0; j < c; j++) U[(size_t)i * c + j] = tr ? X[(size_t)j * C + i] : X[(size_t)i * C + j];
	free(X); free(A); free(B); free(T); free(Y);
}

static void muon_param(muon *x, size_t k, float lr)
{
	ft_param *p = x->p[k];
	size_t n = p->n;
	float *buf = x->s1[k], *g = p->g;
	float *gn = ft_xmalloc(n * sizeof *gn), *u = ft_xmalloc(n * sizeof *u);
	for (size_t i = 0; i < n; i++) {
		buf[i] = buf[i] * MUON_MOMENTUM + g[i];
		gn[i] = fmaf(MUON_MOMENTUM, buf[i], g[i]);   /* g.add(buf, alpha=momentum): ATen's fmadd */
	}
	int rows = (int)p->shape[0], cols = (int)p->shape[1];
	ns5(gn, rows, cols, u);
	double adj = (double)lr * (0.2 * sqrt((double)(rows > cols ? rows : cols)));
	float keep = (float)(1.0 - (double)lr * x->wd), alpha = (float)-adj;
	for (size_t i = 0; i < n; i++) {
		p->w[i] *= keep;
		p->w[i] = fmaf(alpha, u[i], p->w[i]);
	}
	free(gn);
	free(u);
}

static void adamw_param(muon *x, size_t k, double lr)
{
	ft_param *p = x->p[k];
	float *m = x->s1[k], *v = x->s2[k], *g = p->g;
	float w1 = (float)(1 - x->beta1), w2 = (float)(1 - x->beta2), eps = (float)x->eps;
	double bc1 = 1 - pow(x->beta1, (double)x->step), bc2 = 1 - pow(x->beta2, (double)x->step);
	double scale = bc1 / sqrt(bc2);
	float keep = (float)(1.0 - lr * x->wd), alpha = (float)(-lr / scale);
	for (size_t i = 0; i < p->n; i++) {
		m[i] = fmaf(w1, g[i] - m[i], m[i]);               /* lerp, weight < 0.5 (ATen) */
		v[i] = fmaf(w2, g[i] * g[i] - v[i], v[i]);
		float upd = m[i] / (eps + sqrtf(v[i]));
		p->w[i] *= keep;
		p->w[i] = fmaf(alpha, upd, p->w[i]);
	}
}

static int mu_step(void *self, ft_adamw *opt, double lr, double lambda)
{
	muon *x = self;
	(void)opt; (void)lambda;
	x->step++;
	for (size_t k = 0; k < x->n; k++)
		if (x->muon[k]) muon_param(x, k, (float)lr);
	for (size_t k = 0; k < x->n; k++)
		if (!x->muon[k]) adamw_param(x, k, lr);
	return 0;
}

static int mu_save(void *self, const char *dir)
{
	muon *x = self;
	ft_st_writer *w = ft_st_writer_new();
	char **names = ft_xcalloc(2 * x->n + 1, sizeof *names), step[32];
	snprintf(step, sizeof step, "%lld", (long long)x->step);
	ft_st_writer_meta(w, "format", "ft-muon");
	ft_st_writer_meta(w, "step", step);
	size_t nn = 0;
	for (size_t k = 0; k < x->n; k++) {
		ft_param *p = x->p[k];
		names[nn] = ft_xasprintf("%s.%s", p->name, x->muon[k] ? "momentum_buffer" : "moment1");
		ft_st_writer_add(w, names[nn++], FT_F32, p->ndim, p->shape, x->s1[k]);
		if (x->muon[k]) continue;
		names[nn] = ft_xasprintf("%s.moment2", p->name);
		ft_st_writer_add(w, names[nn++], FT_F32, p->ndim, p->shape, x->s2[k]);
	}
	char *f = ft_xasprintf("%s/muon_optimizer.safetensors", dir);
	int rc = ft_st_writer_write(w, f);
	free(f);
	ft_st_writer_free(w);
	for (size_t i = 0; i < nn; i++) free(names[i]);
	free(names);
	return rc;
}

static int mu_load(void *self, const char *dir)
{
	muon *x = self;
	char *f = ft_xasprintf("%s/muon_optimizer.safetensors", dir);
	ft_st *st = ft_st_open(f);
	int rc = st ? 0 : -1;
	for (size_t k = 0; k < x->n && !rc; k++) {
		const char *nm = x->p[k]->name;
		rc = ftp_ext_read_vec(st, f, nm, x->muon[k] ? "momentum_buffer" : "moment1", x->p[k]->n,
				      x->s1[k]);
		if (!rc && !x->muon[k]) rc = ftp_ext_read_vec(st, f, nm, "moment2", x->p[k]->n, x->s2[k]);
	}
	if (!rc) rc = ftp_ext_read_step(st, f, &x->step);
	if (st) ft_st_close(st);
	free(f);
	return rc;
}

static void mu_free(void *self)
{
	muon *x = self;
	for (size_t k = 0; k < x->n; k++) {
		free(x->s1[k]);
		free(x->s2[k]);
	}
	free(x->s1); free(x->s2); free(x->muon); free(x->n1); free(x->n2);
	free(x);
}

ft_optim_ext *ft_muon_new(ft_param *const *params, size_t n, double wd, double beta1, double beta2,
			  double eps)
{
	muon *x = ft_xcalloc(1, sizeof *x);
	*x = (muon){ .p = params, .n = n, .wd = wd, .beta1 = beta1, .beta2 = beta2, .eps = eps };
	x->muon = ft_xcalloc(n ? n : 1, sizeof *x->muon);
	x->s1 = ft_xcalloc(n ? n : 1, sizeof *x->s1);
	x->s2 = ft_xcalloc(n ? n : 1, sizeof *x->s2);
	x->n1 = ft_xcalloc(n ? n : 1, sizeof *x->n1);
	x->n2 = ft_xcalloc(n ? n : 1, sizeof *x->n2);
	for (size_t k = 0; k < n; k++) {
		const ft_param *p = params[k];
		x->muon[k] = p->ndim == 2 && !strstr(p->name, "embed") && !strstr(p->name, "lm_head");
		x->s1[k] = ft_xcalloc(p->n ? p->n : 1, sizeof(float));
		if (!x->muon[k]) x->s2[k] = ft_xcalloc(p->n ? p->n : 1, sizeof(float));
		x->n1[k] = p->n;
		x->n2[k] = x->muon[k] ? 0 : p->n;
	}
	/* weight decay on every param: decay NULL */
	x->dev = (ft_ext_dev){ .algo = FT_EXT_MUON, .p = params, .n = n, .kind = x->muon, .n1 = x->n1,
			       .n2 = x->n2, .s1 = x->s1, .s2 = x->s2, .step = &x->step, .wd = wd,
			       .beta1 = beta1, .beta2 = beta2, .eps = eps };
	ft_optim_ext *e = ft_xcalloc(1, sizeof *e);
	*e = (ft_optim_ext){ .self = x, .step = mu_step, .save = mu_save, .load = mu_load, .free = mu_free,
			     .dev = &x->dev };
	return e;
}
