/* attn_bound.h - element-wise error bounds of the half-precision
 * (bf16/fp16) flash attention against the CPU attention on the same
 * rounded inputs: shared by tests/emu/test_flash_tc_emu.cc (the kernels
 * on the host emulation) and tests/gpu/test_gpu_attn_half.c (on a device).
 *
 * Where the tensor-core kernels (lib/cuda/flash_tc.cuh) round, u being
 * the element type's unit roundoff (2^-8 bf16, 2^-11 fp16): scores and
 * dP are exact half products summed in fp32; P and dS are rounded before
 * their products; each output is rounded once; D = rowsum(dO O) uses the
 * rounded O.  Hence, per element:
 *   O   u|O| + u sum_u P|V|                 (P >= 0; l sums the fp32 P)
 *   dV  u|dV| + u sum_t P|dO|
 *   dK  u|dK| + scale (u M + dD) sum_t P|Q|
 *   dQ  u|dQ| + scale (u M + dD) sum_u P|K|
 * M bounds |dP - D| over the allowed pairs (Gemma 2's cap only shrinks
 * dS: 1 - tanh^2 <= 1), dD bounds D's error (sum_d of O's bound times
 * |dO|), and the sums of P times absolute values are the CPU attention run
 * on |V|, |dO|, |Q|, |K|.  A P or dS below the element type's smallest
 * normal has an absolute, not a relative, error of at most eta (half the
 * subnormal spacing: 2^-25 fp16; bf16's 2^-134 is below fp32's own
 * rounding, 0): eta times the number of terms of the sum times the
 * largest |other factor| (O: a query's allowed keys, |V|; dV, dK: the
 * allowed (query, head) pairs of a key, |dO|, scale |Q|; dQ: the keys,
 * scale |K|).  On top, 1e-5 of the largest element for the fp32 sums in
 * another order (the fp32 kernels' tolerance) and a factor 1 + 4u for the
 * second-order terms.  The lse is fp32 throughout: 1e-5. */
#ifndef FT_TESTS_ATTN_BOUND_H
#define FT_TESTS_ATTN_BOUND_H

#include <math.h>
#include <stdlib.h>
#include "model/kernels.h"
#include "model/layers.h"

/* max over allowed (t, u) of |dO_t . V_u - D_t|, D_t = dO_t . O_t */
static inline double attnb_max_dp(const ft_attn_shape *s, const float *dO, const float *O,
				  const float *V)
{
	int qd = s->Hq * s->hd, kd = s->Hk * s->hd, grp = s->Hq / s->Hk;
	double M = 0;
	for (int b = 0; b < s->B; b++)
		for (int h = 0; h < s->Hq; h++)
			for (int t = 0; t < s->T; t++) {
				size_t n = (size_t)b * s->T + t;
				const float *g = dO + n * qd + h * s->hd, *o = O + n * qd + h * s->hd;
				double D = 0;
				for (int d = 0; d < s->hd; d++)
					D += (double)g[d] * o[d];
				int32_t st = s->seg ? s->seg[n] : 1;
				int len = s->len ? s->len[b] : s->T;
				for (int u = 0; u < s->T; u++) {
					size_t m = (size_t)b * s->T + u;
					if (!ft_k_attn_allowed(t, u, s->window, st, s->seg ? s->seg[m] : 1,
							       len))
						continue;
					const float *v = V + m * kd + h / grp * s->hd;
					double dp = 0;
					for (int d = 0; d < s->hd; d++)
						dp += (double)g[d] * v[d];
					M = fmax(M, fabs(dp - D));
				}
			}
	return M;
}

static inline float *attnb_abs(const float *x, size_t n)
{
	float *r = (float *)malloc(n * sizeof *r);
	for (size_t i = 0; i < n; i++)
		r[i] = fabsf(x[i]);
	return r;
}

static inline double attnb_big(const float *x, size_t n)
{
	double m = 0;
	for (size_t i = 0; i < n; i++)
		m = fmax(m, fabs(x[i]));
	return m;
}

/* Per token of each row, the allowed keys of the query there (nkeys) and
 * the allowed queries of the key there (nqs), over every row of s. */
static inline void attnb_counts(const ft_attn_shape *s, int *nkeys, int *nqs)
{
	for (int b = 0; b < s->B; b++) {
		const int32_t *seg = s->seg ? s->seg + (size_t)b * s->T : NULL;
		int len = s->len ? s->len[b] : s->T, *nk = nkeys + (size_t)b * s->T;
		int *nq = nqs + (size_t)b * s->T;
		for (int t = 0; t < s->T; t++)
			nk[t] = nq[t] = 0;
		for (int t = 0; t < s->T; t++)
			for (int u = 0; u <= t; u++)
				if (ft_k_attn_allowed(t, u, s->window, seg ? seg[t] : 1,
						      seg ? seg[u] : 1, len))
					nk[t]++, nq[u]++;
	}
}

/* The bounds bo, bq, bk, bv (sizes of out, dq, dk, dv) for inputs q, k,
 * v, dout already rounded to the element type (unit roundoff u, subnormal
 * error eta) and the CPU's results out, lse, dq, dk, dv on them; s->scale
 * is the scale used (not 0). */
static inline void attn_half_bounds(const ft_attn_shape *s, double u, double eta,
				    const float *q, const float *k, const float *v,
				    const float *dout, const float *out, const float *lse,
				    const float *dq, const float *dk, const float *dv, double *bo,
				    double *bq, double *bk, double *bv)
{
	size_t N = (size_t)s->B * s->T, nq = N * s->Hq * s->hd, nk = N * s->Hk * s->hd;
	int qd = s->Hq * s->hd, kd = s->Hk * s->hd, grp = s->Hq / s->Hk;
	float *aq = attnb_abs(q, nq), *ak = attnb_abs(k, nk), *av = attnb_abs(v, nk);
	float *ag = attnb_abs(dout, nq), *Oabs = (float *)malloc(nq * 4), *PK = (float *)malloc(nq * 4);
	float *lx = (float *)malloc(N * s->Hq * 4), *x0 = (float *)malloc(nq * 4);
	float *x1 = (float *)malloc(nk * 4), *PdO = (float *)malloc(nk * 4), *PQ = (float *)malloc(nk * 4);
	int *nkeys = (int *)malloc(N * sizeof(int)), *nqs = (int *)malloc(N * sizeof(int));
	ft_attention_forward(Oabs, lx, q, k, av, s);
	ft_attention_forward(PK, lx, q, k, ak, s);
	ft_attention_backward(x0, x1, PdO, ag, q, k, v, out, lse, s);
	ft_attention_backward(x0, x1, PQ, aq, q, k, v, out, lse, s);
	attnb_counts(s, nkeys, nqs);
	double M = attnb_max_dp(s, dout, out, v), f = 1 + 4 * u, dD = 0;
	double so = 1e-5 * attnb_big(out, nq), sq = 1e-5 * attnb_big(dq, nq);
	double sk = 1e-5 * attnb_big(dk, nk), sv = 1e-5 * attnb_big(dv, nk);
	double ev = eta * attnb_big(v, nk), eg = eta * attnb_big(dout, nq) * grp;
	double eq = eta * s->scale * attnb_big(q, nq) * grp, ek = eta * s->scale * attnb_big(k, nk);
	for (size_t i = 0; i < nq; i++)
		bo[i] = f * (u * fabs(out[i]) + u * Oabs[i] + ev * nkeys[i / qd]) + so;
	for (size_t n = 0; n < N * s->Hq; n++) {
		double e = 0;
		for (int d = 0; d < s->hd; d++)
			e += bo[n * s->hd + d] * fabs(dout[n * s->hd + d]);
		dD = fmax(dD, e);
	}
	double w = s->scale * (u * M + dD);
	for (size_t i = 0; i < nq; i++)
		bq[i] = f * (u * fabs(dq[i]) + w * PK[i] + ek * nkeys[i / qd]) + sq;
	for (size_t i = 0; i < nk; i++) {
		bk[i] = f * (u * fabs(dk[i]) + w * PQ[i] + eq * nqs[i / kd]) + sk;
		bv[i] = f * (u * fabs(dv[i]) + u * PdO[i] + eg * nqs[i / kd]) + sv;
	}
	free(aq), free(ak), free(av), free(ag), free(Oabs), free(PK), free(lx), free(x0);
	free(x1), free(PdO), free(PQ), free(nkeys), free(nqs);
}

/* worst |got - ref| / bound (> 1: out of bound; NaN: infinite) */
static inline double attn_bound_ratio(const float *got, const float *ref, const double *bound,
				      size_t n)
{
	double r = 0;
	for (size_t i = 0; i < n; i++) {
		double e = fabs((double)got[i] - ref[i]) / bound[i];
		if (e > r || e != e)
			r = e != e ? INFINITY : e;
	}
	return r;
}

#endif
