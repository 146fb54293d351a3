/* test_kernels.c - the shared kernel bodies of lib/model/kernels.h (what the
 * CUDA kernels compute per element / per row), compiled for the host and
 * compared with the CPU reference layers (lib/model/layers.c), AdamW and
 * clipping (lib/train/optim.c) and the dtype casts (lib/util/dtype.c).
 * Tolerance: relative 1e-6 (max |a - b| / max |b|); the casts, RoPE,
 * SwiGLU, dropout and AdamW are the same expressions and must agree
 * bit for bit.
 */
#include <stdlib.h>
#include <string.h>
#include "tap.h"
#include "util/dtype.h"
#include "model/kernels.h"
#include "model/layers.h"
#include "train/optim.h"

static uint64_t rs = 0x1234567;

static float frand(void)   /* uniform in [-1, 1) */
{
	rs = rs * 6364136223846793005ULL + 1442695040888963407ULL;
	return (float)((rs >> 40) / 8388608.0 - 1.0);
}

static float *rnd(size_t n, float scale)
{
	float *p = malloc(n * sizeof(float));
	for (size_t i = 0; i < n; i++)
		p[i] = scale * frand();
	return p;
}

static void test_casts(void)
{
	int bad16 = 0, badb = 0;
	for (uint32_t h = 0; h < 65536; h++) {
		float a = ft_k_f16_to_f32((uint16_t)h), b = ft_f16_to_f32((uint16_t)h);
		bad16 += memcmp(&a, &b, 4) != 0;
		a = ft_k_bf16_to_f32((uint16_t)h);
		b = ft_bf16_to_f32((uint16_t)h);
		badb += memcmp(&a, &b, 4) != 0;
	}
	ok(!bad16 && !badb, "f16/bf16 -> f32: all 65536 codes as lib/util/dtype.c");
	int bad = 0;
	/* a stride through every exponent plus the special values */
	for (uint64_t u = 0; u < 0x100000000ULL; u += 0x10001) {
		float f = ft_k_bits_f32((uint32_t)u);
		bad += ft_k_f32_to_f16(f) != ft_f32_to_f16(f);
		bad += ft_k_f32_to_bf16(f) != ft_f32_to_bf16(f);
	}
	float sp[] = { 0.0f, -0.0f, INFINITY, -INFINITY, NAN, 65504.0f, 65520.0f,
		       5.96e-8f, 2.98e-8f, 1.0f + 1.0f / 2048, 3.0e38f };
	for (size_t i = 0; i < sizeof sp / sizeof *sp; i++) {
		bad += ft_k_f32_to_f16(sp[i]) != ft_f32_to_f16(sp[i]);
		bad += ft_k_f32_to_bf16(sp[i]) != ft_f32_to_bf16(sp[i]);
	}
	ok(bad == 0, "f32 -> f16/bf16 rounding as lib/util/dtype.c (%d mismatches)", bad);
}

static void test_rmsnorm(void)
{
	int N = 5, D = 37;
	float *x = rnd((size_t)N * D, 2), *w = rnd(D, 1), *g = rnd((size_t)N * D, 1);
	float *o1 = calloc((size_t)N * D, 4), *o2 = calloc((size_t)N * D, 4);
	float r1[5], r2[5];
	ft_rmsnorm_forward(o1, r1, x, w, N, D, 1e-5f);
	for (int n = 0; n < N; n++)
		r2[n] = ft_k_rmsnorm_row_forward(o2 + n * D, x + n * D, w, D, 1e-5f);
	ok(max_rel(o2, o1, (size_t)N * D) <= 1e-6 && max_rel(r2, r1, N) <= 1e-6,
	   "rmsnorm row forward = ft_rmsnorm_forward");
	float *dx1 = rnd((size_t)N * D, 1), *dx2 = malloc((size_t)N * D * 4);
	memcpy(dx2, dx1, (size_t)N * D * 4);
	float *dw1 = calloc(D, 4), *dw2 = calloc(D, 4);
	ft_rmsnorm_backward(dx1, dw1, g, x, w, r1, N, D);
	for (int n = 0; n < N; n++)
		ft_k_rmsnorm_row_backward(dx2 + n * D, dw2, g + n * D, x + n * D, w, r1[n], D);
	double e1 = max_rel(dx2, dx1, (size_t)N * D), e2 = max_rel(dw2, dw1, D);
	ok(e1 <= 1e-6 && e2 <= 1e-6, "rmsnorm row backward = ft_rmsnorm_backward "
	   "(dx %.2g, dw %.2g)", e1, e2);
	free(x); free(w); free(g); free(o1); free(o2); free(dx1); free(dx2); free(dw1); free(dw2);
}

static void test_rope(void)
{
	int N = 6, H = 3, hd = 8, half = hd / 2;
	size_t n = (size_t)N * H * hd;
	float *x1 = rnd(n, 1), *x2 = malloc(n * 4), *c = malloc(N * half * 4), *s = malloc(N * half * 4);
	memcpy(x2, x1, n * 4);
	float inv[4];
	int32_t pos[6] = { 0, 1, 2, 7, 100, 3 };
	ft_rope_params p = { "default", 10000, 1, 1, 4, 8192, 8192, 0, 0, 0, 0, NULL, NULL };
	ft_rope_inv_freq(inv, hd, &p, 101);
	ft_rope_tables(c, s, pos, N, inv, hd);
	for (int dir = 0; dir < 2; dir++) {
		float sign = dir ? -1.0f : 1.0f;
		if (dir)
			ft_rope_backward(x1, c, s, N, H, hd, hd);
		else
			ft_rope_forward(x1, c, s, N, H, hd, hd);
		for (int t = 0; t < N; t++)
			for (int h = 0; h < H; h++)
				for (int i = 0; i < half; i++) {
					float *v = x2 + ((size_t)t * H + h) * hd;
					ft_k_rope_pair(v + i, v + i + half, c[t * half + i],
						       s[t * half + i], sign);
				}
		ok(!memcmp(x1, x2, n * 4), "rope pair %s = ft_rope_%s (bitwise)",
		   dir ? "backward" : "forward", dir ? "backward" : "forward");
	}
	free(x1); free(x2); free(c); free(s);
}

static void test_swiglu_dropout(void)
{
	size_t n = 1000;
	float *g = rnd(n, 6), *u = rnd(n, 2), *dh = rnd(n, 1);
	float *h1 = malloc(n * 4), *dg1 = malloc(n * 4), *du1 = malloc(n * 4);
	int bad = 0;
	ft_swiglu_forward(h1, g, u, n);
	ft_swiglu_backward(dg1, du1, dh, g, u, n);
	for (size_t i = 0; i < n; i++) {
		float h = ft_k_swiglu(g[i], u[i]), dg, du;
		ft_k_swiglu_backward(dh[i], g[i], u[i], &dg, &du);
		bad += h != h1[i] || dg != dg1[i] || du != du1[i];
	}
	ok(bad == 0, "swiglu forward/backward elements = ft_swiglu_* (bitwise)");
	float ps[] = { 0.0f, 0.1f, 0.5f, 1.0f };
	for (int k = 0; k < 4; k++) {
		ft_dropout_apply(h1, g, n, ps[k], 77);
		ft_k_dropout d = ft_k_dropout_prepare(ps[k]);
		bad = 0;
		for (size_t i = 0; i < n; i++)
			bad += (ps[k] > 0 ? ft_k_dropout_elem(g[i], 77, i, &d) : g[i]) != h1[i];
		ok(bad == 0, "dropout p=%.1f element = ft_dropout_apply", ps[k]);
	}
	free(g); free(u); free(dh); free(h1); free(dg1); free(du1);
}

/* The divide-free x / c of the AdamW denominator against the division,
 * for the bias corrections of steps 1..2000 and x spread over every
 * binade sqrt(v) can reach, plus 0, inf and NaN. */
static void test_div_by_const(void)
{
	long bad = 0, n = 0;
	unsigned long long s = 12345;
	for (int step = 1; step <= 2000; step++) {
		float c = (float)sqrt(1.0 - pow(0.999, step)), ic = 1.0f / c;
		for (int i = 0; i < 2000; i++) {
			s = s * 6364136223846793005ULL + 1442695040888963407ULL;
			uint32_t bits = 0x1a000000u + (uint32_t)((s >> 33) % (0x5f800000u - 0x1a000000u));
			float x;
			memcpy(&x, &bits, 4);
			bad += ft_k_div_by_const(x, c, ic) != x / c;
			n++;
		}
		bad += ft_k_div_by_const(0.0f, c, ic) != 0.0f;
		bad += ft_k_div_by_const(INFINITY, c, ic) != INFINITY;
		bad += !isnan(ft_k_div_by_const(NAN, c, ic));
	}
	ok(bad == 0, "divide-free x / bc2_sqrt = x / bc2_sqrt (%ld values, %ld differ)", n, bad);
}

static void test_adamw(void)
{
	size_t n = 300;
	float *w = rnd(n, 1), *g = rnd(n, 0.1f), *w2 = malloc(n * 4);
	float *m = calloc(n, 4), *v = calloc(n, 4);
	memcpy(w2, w, n * 4);
	ft_param p = { .name = "w", .w = w, .g = g, .n = n, .ndim = 1, .shape = { (int64_t)n },
		       .trainable = 1, .decay = 1 };
	ft_param *pp = &p;
	ft_adamw_opts o;
	ft_adamw_opts_default(&o);
	o.weight_decay = 0.1;
	ft_adamw *a = ft_adamw_new(&pp, 1, &o);
	int bad = 0;
	for (int step = 1; step <= 5; step++) {
		double lr = 1e-3 * step;
		ft_adamw_step(a, lr);
		ft_k_adamw k = ft_k_adamw_prepare(lr, o.weight_decay, o.beta1, o.beta2, o.eps,
						  (double)(float)step);
		for (size_t i = 0; i < n; i++)
			ft_k_adamw_elem(w2 + i, g[i], m + i, v + i, &k);
		bad += memcmp(w, w2, n * 4) != 0;
	}
	ok(bad == 0, "AdamW element over 5 steps = ft_adamw_step (bitwise)");
	/* clipping: sum of squares in double, per-tensor float norm, coef */
	double ss = 0;
	for (size_t i = 0; i < n; i++)
		ss += (double)g[i] * g[i];
	float norm = (float)sqrt(ss), total = (float)sqrt((double)norm * norm);
	float coef = ft_k_clip_coef(total, 0.5);
	float want0 = g[0] * coef;
	double got = ft_clip_grad_norm(&pp, 1, 0.5);
	ok((float)got == total && g[0] == want0, "clip coefficient = ft_clip_grad_norm "
	   "(norm %.6f)", got);
	ft_adamw_free(a);
	free(w); free(g); free(w2); free(m); free(v);
}

static void test_ce(void)
{
	/* W = identity (V = D) so the LM head's logits are exactly x */
	int n = 4, V = 50;
	float *x = rnd((size_t)n * V, 8), *W = calloc((size_t)V * V, 4);
	for (int i = 0; i < V; i++)
		W[(size_t)i * V + i] = 1;
	int32_t tg[4] = { 3, -100, 49, 0 };
	float *dx = malloc((size_t)n * V * 4), *scratch = malloc((size_t)n * V * 4);
	float *gk = malloc((size_t)n * V * 4);
	int64_t cnt = 0;
	double want = ft_lm_head_loss(dx, NULL, NULL, x, W, tg, n, V, V, 0.25f, scratch, 2, &cnt);
	double got = 0;
	for (int i = 0; i < n; i++)
		got += ft_k_ce_row(gk + (size_t)i * V, x + (size_t)i * V, V, tg[i], 0.25f);
	ok(rel_err(got, want, 1e-9) <= 1e-6, "CE row loss %.9f = ft_lm_head_loss %.9f", got, want);
	double e = max_rel(gk, dx, (size_t)n * V);
	ok(e <= 1e-6, "CE row gradient = ft_lm_head_loss dx (max rel %.2g)", e);
	/* online log-sum-exp over two halves = the whole row */
	float m1 = -INFINITY, m2 = -INFINITY;
	double s1 = 0, s2 = 0, s = 0;
	float mx = -INFINITY;
	for (int j = 0; j < V; j++)
		if (x[j] > mx) mx = x[j];
	for (int j = 0; j < V; j++)
		s += exp((double)x[j] - mx);
	for (int j = 0; j < V; j++) {
		float *mm = j < V / 2 ? &m1 : &m2;
		double *ss = j < V / 2 ? &s1 : &s2;
		ft_k_lse_merge(mm, ss, x[j], 1.0);
	}
	ft_k_lse_merge(&m1, &s1, m2, s2);
	ok(m1 == mx && rel_err(s1, s, 1e-12) <= 1e-6, "online log-sum-exp merge");
	free(x); free(W); free(dx); free(scratch); free(gk);
}

/* A naive attention built on ft_k_attn_allowed against ft_attention_forward
 * (causal, sliding window, segment ids with padding, GQA). */
static void test_attn_mask(void)
{
	int B = 2, T = 9, Hq = 4, Hk = 2, hd = 4, grp = Hq / Hk;
	size_t nq = (size_t)B * T * Hq * hd, nk = (size_t)B * T * Hk * hd;
	float *q = rnd(nq, 1), *k = rnd(nk, 1), *v = rnd(nk, 1);
	float *o1 = calloc(nq, 4), *o2 = calloc(nq, 4), *lse = calloc((size_t)B * Hq * T, 4);
	int32_t seg[18] = { 1, 1, 1, 2, 2, 2, 2, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1, 1 };
	for (int win = 0; win <= 3; win += 3) {
		ft_attn_shape s = { B, T, Hq, Hk, hd, win, seg, 0, 0, NULL };
		ft_attention_forward(o1, lse, q, k, v, &s);
		float sc = 1.0f / sqrtf((float)hd);
		for (int b = 0; b < B; b++)
			for (int h = 0; h < Hq; h++)
				for (int t = 0; t < T; t++) {
					double p[9], mx = -INFINITY, sum = 0;
					const float *qt = q + ((size_t)(b * T + t) * Hq + h) * hd;
					for (int u = 0; u < T; u++) {
						const float *ku = k + ((size_t)(b * T + u) * Hk + h / grp) * hd;
						double d = 0;
						for (int i = 0; i < hd; i++) d += qt[i] * ku[i];
						p[u] = ft_k_attn_allowed(t, u, win, seg[b * T + t],
									 seg[b * T + u], T) ? d * sc : -INFINITY;
						if (p[u] > mx) mx = p[u];
					}
					for (int u = 0; u < T; u++) sum += p[u] = exp(p[u] - mx);
					float *ot = o2 + ((size_t)(b * T + t) * Hq + h) * hd;
					for (int i = 0; i < hd; i++) {
						double a = 0;
						for (int u = 0; u < T; u++)
							a += p[u] / sum * v[((size_t)(b * T + u) * Hk + h / grp) * hd + i];
						ot[i] = (float)a;
					}
				}
		double e = max_rel(o2, o1, nq);
		ok(e <= 1e-5, "attention mask (window %d, segments, GQA) = "
		   "ft_attention_forward (max rel %.2g)", win, e);
	}
	free(q); free(k); free(v); free(o1); free(o2); free(lse);
}

/* HF's attention with an attention_mask of right padding, written out
 * in double without ft_k_attn_allowed: query t of row b sees the keys
 * u <= t with u < len[b] (len >= 1, so the set is never empty).  The
 * forward output, lse and the gradients for dout (pad rows included). */
typedef struct { int B, T, Hq, Hk, hd; const int32_t *len; } kp_shape;

static void kp_reference(const kp_shape *s, const float *q, const float *k, const float *v,
			 const float *go, double *o, double *dq, double *dk, double *dv)
{
	int T = s->T, hd = s->hd, grp = s->Hq / s->Hk;
	double sc = 1.0 / sqrt((double)hd), p[64];
	size_t nq = (size_t)s->B * T * s->Hq * hd, nk = (size_t)s->B * T * s->Hk * hd;
	memset(dq, 0, nq * sizeof *dq);
	memset(dk, 0, nk * sizeof *dk);
	memset(dv, 0, nk * sizeof *dv);
	for (int b = 0; b < s->B; b++)
		for (int h = 0; h < s->Hq; h++)
			for (int t = 0; t < T; t++) {
				size_t qi = ((size_t)(b * T + t) * s->Hq + h) * hd;
				int nu = t + 1 < s->len[b] ? t + 1 : s->len[b];
				double mx = -INFINITY, sum = 0, D = 0, dp[64];
				for (int u = 0; u < nu; u++) {
					size_t ki = ((size_t)(b * T + u) * s->Hk + h / grp) * hd;
					double d = 0;
					for (int i = 0; i < hd; i++) d += (double)q[qi + i] * k[ki + i];
					p[u] = d * sc;
					mx = p[u] > mx ? p[u] : mx;
				}
				for (int u = 0; u < nu; u++) sum += p[u] = exp(p[u] - mx);
				for (int i = 0; i < hd; i++) o[qi + i] = 0;
				for (int u = 0; u < nu; u++) {
					size_t ki = ((size_t)(b * T + u) * s->Hk + h / grp) * hd;
					p[u] /= sum;
					dp[u] = 0;
					for (int i = 0; i < hd; i++) {
						o[qi + i] += p[u] * v[ki + i];
						dp[u] += (double)go[qi + i] * v[ki + i];
						dv[ki + i] += p[u] * go[qi + i];
					}
					D += p[u] * dp[u];
				}
				for (int u = 0; u < nu; u++) {
					size_t ki = ((size_t)(b * T + u) * s->Hk + h / grp) * hd;
					double ds = p[u] * (dp[u] - D) * sc;
					for (int i = 0; i < hd; i++) {
						dq[qi + i] += ds * k[ki + i];
						dk[ki + i] += ds * q[qi + i];
					}
				}
			}
}

static double kp_err(const float *a, const double *ref, size_t n)
{
	double e = 0, m = 1e-3;
	for (size_t i = 0; i < n; i++) {
		double d = fabs(a[i] - ref[i]);
		e = d > e || d != d ? (d != d ? INFINITY : d) : e;
		m = fabs(ref[i]) > m ? fabs(ref[i]) : m;
	}
	return e / m;
}

/* Key padding (ft_attn_shape.len): every output, padding queries
 * included, is HF's masked attention (kp_reference); and the real
 * queries' outputs and lse, and with dout 0 on the padding rows (as the
 * loss gives: no label there) every gradient, are bit-identical to the
 * attention without lengths, so losses and gradients of padded batches
 * do not move.  Tolerance 1e-5 relative to the largest value: fp32 sums
 * of at most 11 products against double (the masks differ by O(1)). */
static void test_attn_key_padding(void)
{
	enum { B = 3, T = 11, Hq = 4, Hk = 2, hd = 8 };
	static const int32_t len[B] = { T, 7, 1 };
	size_t nq = (size_t)B * T * Hq * hd, nk = (size_t)B * T * Hk * hd, nl = (size_t)B * Hq * T;
	float *q = rnd(nq, 1.5f), *k = rnd(nk, 1.5f), *v = rnd(nk, 1), *go = rnd(nq, 1);
	float *o[2], *l[2], *g[2][3];
	for (int j = 0; j < 2; j++) {
		o[j] = malloc(nq * 4);
		l[j] = malloc(nl * 4);
		g[j][0] = malloc(nq * 4);
		g[j][1] = malloc(nk * 4);
		g[j][2] = malloc(nk * 4);
	}
	double *ro = malloc(nq * 8), *rq = malloc(nq * 8), *rk = malloc(nk * 8), *rv = malloc(nk * 8);
	ft_attn_shape sl = { B, T, Hq, Hk, hd, 0, NULL, 0, 0, len }, s0 = sl;
	s0.len = NULL;
	kp_shape ks = { B, T, Hq, Hk, hd, len };
	kp_reference(&ks, q, k, v, go, ro, rq, rk, rv);
	ft_attention_forward(o[0], l[0], q, k, v, &sl);
	ft_attention_backward(g[0][0], g[0][1], g[0][2], go, q, k, v, o[0], l[0], &sl);
	double eo = kp_err(o[0], ro, nq), eq = kp_err(g[0][0], rq, nq);
	double ek = kp_err(g[0][1], rk, nk), ev = kp_err(g[0][2], rv, nk);
	ok(eo <= 1e-5 && eq <= 1e-5 && ek <= 1e-5 && ev <= 1e-5,
	   "key padding: out %.2g, dq %.2g, dk %.2g, dv %.2g of HF's masked attention "
	   "(padding queries included)", eo, eq, ek, ev);
	ft_attention_forward(o[1], l[1], q, k, v, &s0);
	int same_real = 1, moved_pad = 0;
	for (int b = 0; b < B; b++)
		for (int t = 0; t < T; t++)
			for (int h = 0; h < Hq; h++) {
				size_t i = ((size_t)(b * T + t) * Hq + h) * hd, li = ((size_t)b * Hq + h) * T + t;
				int d = memcmp(o[0] + i, o[1] + i, hd * 4) || memcmp(l[0] + li, l[1] + li, 4);
				if (t < len[b]) same_real &= !d;
				else moved_pad |= d;
			}
	ok(same_real && moved_pad, "key padding: real queries' out and lse bit-identical to "
	   "no lengths, padding queries' differ");
	for (int b = 0; b < B; b++)           /* the loss's dout: 0 on padding */
		memset(go + (size_t)(b * T + len[b]) * Hq * hd, 0, (size_t)(T - len[b]) * Hq * hd * 4);
	ft_attention_backward(g[0][0], g[0][1], g[0][2], go, q, k, v, o[0], l[0], &sl);
	ft_attention_backward(g[1][0], g[1][1], g[1][2], go, q, k, v, o[1], l[1], &s0);
	int same = 1;
	size_t ng[3] = { nq, nk, nk };
	for (int j = 0; j < 3; j++)
		for (size_t i = 0; i < ng[j]; i++)
			same &= g[0][j][i] == g[1][j][i];
	ok(same, "key padding: with dout 0 on padding rows dq, dk, dv are bit-identical to "
	   "no lengths");
	for (int j = 0; j < 2; j++) {
		free(o[j]); free(l[j]);
		for (int i = 0; i < 3; i++) free(g[j][i]);
	}
	free(q); free(k); free(v); free(go); free(ro); free(rq); free(rk); free(rv);
}

/* The GPU's two-stage column sums (ft_k_colsum_chunk): the chunks cover
 * every row once, in order, for N below, at and above the chunk count;
 * the chunked sum of a column is within float rounding of the row-order
 * sum the CPU computes (both orders add the same numbers). */
static void test_colsum_chunks(void)
{
	static const int Ns[] = { 1, 5, 63, 64, 65, 520, 4096, 4097 };
	int cover = 1;
	for (size_t k = 0; k < sizeof Ns / sizeof *Ns; k++) {
		int next = 0;
		for (int c = 0; c < FT_COLSUM_CHUNKS; c++) {
			int r0, r1;
			ft_k_colsum_chunk(c, Ns[k], &r0, &r1);
			if (r0 != next || r1 < r0 || r1 > Ns[k]) cover = 0;
			next = r1;
		}
		if (next != Ns[k]) cover = 0;
	}
	ok(cover, "column-sum chunks cover rows 0..N once, in order, for N 1 to 4097");
	enum { N = 4097 };
	static float y[N];
	unsigned x = 7;
	for (int n = 0; n < N; n++) {
		x = x * 1103515245u + 12345u;
		y[n] = (float)((int)(x >> 9) % 2001 - 1000) / 1000.0f;
	}
	float plain = 0, chunked = 0;
	double exact = 0, mag = 0;
	for (int n = 0; n < N; n++) {
		plain += y[n];
		exact += y[n];
		mag += fabs(y[n]);
	}
	for (int c = 0; c < FT_COLSUM_CHUNKS; c++) {
		int r0, r1;
		ft_k_colsum_chunk(c, N, &r0, &r1);
		float part = 0;
		for (int n = r0; n < r1; n++) part += y[n];
		chunked += part;
	}
	/* float sums of N terms: error bounded by ~N eps sum|y| (row order) */
	double bound = N * 6e-8 * mag;
	ok(fabs(chunked - exact) <= bound && fabs(plain - exact) <= bound,
	   "two-stage sum %.7g, row order %.7g, exact %.7g (bound %.2g)", chunked, plain, exact, bound);
}

int main(void)
{
	test_casts();
	test_rmsnorm();
	test_rope();
	test_swiglu_dropout();
	test_div_by_const();
	test_adamw();
	test_ce();
	test_attn_mask();
	test_attn_key_padding();
	test_colsum_chunks();
	return tap_done();
}
