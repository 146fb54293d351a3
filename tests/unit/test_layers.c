/* test_layers.c - each layer's backward against central finite
 * differences of its forward, plus RoPE frequencies against transformers.
 *
 * Objective: f = sum(forward(...) * R) for a fixed random R, so the
 * backward pass is called with dout = R.  Finite differences in float32
 * with step 1e-2 on inputs of size ~1: tolerance max |analytic - numeric|
 * / max |numeric| <= 5e-3 (float rounding of f dominates).  RoPE inverse
 * frequencies: relative error <= 1e-6 against the fixture.
 */
#include <stdlib.h>
#include <string.h>
#include "tap.h"
#include "model/layers.h"
#include "model/vexp.h"
#include <math.h>
#include "format/safetensors.h"

static unsigned long long rs = 88172645463325252ULL;
static float frand(void)
{
	rs ^= rs << 13; rs ^= rs >> 7; rs ^= rs << 17;
	return (float)((rs >> 11) * 0x1.0p-53 * 2 - 1);
}
static float *rnd(size_t n, float s)
{
	float *v = malloc(n * sizeof(float));
	for (size_t i = 0; i < n; i++)
		v[i] = s * frand();
	return v;
}
static float *zeros(size_t n) { return calloc(n, sizeof(float)); }
static double dot(const float *a, const float *b, size_t n)
{
	double s = 0;
	for (size_t i = 0; i < n; i++)
		s += (double)a[i] * b[i];
	return s;
}

/* The layer under test: forward into out, return sum(out * R). */
typedef double (*objective)(void *ctx);

/* Compare the analytic gradient g of f wrt x[n] with central differences
 * on up to 40 coordinates. */
static double fd_check(objective f, void *ctx, float *x, const float *g, size_t n)
{
	double num_max = 0, diff_max = 0;
	size_t step = n > 40 ? n / 40 : 1;
	for (size_t i = 0; i < n; i += step) {
		float keep = x[i], h = 1e-2f;
		x[i] = keep + h;
		double fp = f(ctx);
		x[i] = keep - h;
		double fm = f(ctx);
		x[i] = keep;
		double num = (fp - fm) / (2 * h);
		if (fabs(num) > num_max) num_max = fabs(num);
		if (fabs(num - g[i]) > diff_max) diff_max = fabs(num - g[i]);
	}
	return diff_max / (num_max > 1e-6 ? num_max : 1e-6);
}

#define TOL 5e-3

/* ---- RMSNorm ---- */
struct rn { int N, D; float *x, *w, *out, *rstd, *R; };
static double rn_f(void *c)
{
	struct rn *a = c;
	ft_rmsnorm_forward(a->out, a->rstd, a->x, a->w, a->N, a->D, 1e-5f);
	return dot(a->out, a->R, (size_t)a->N * a->D);
}
static void test_rmsnorm(void)
{
	struct rn a = { .N = 5, .D = 24 };
	size_t n = (size_t)a.N * a.D;
	a.x = rnd(n, 1); a.w = rnd(a.D, 1); a.out = zeros(n); a.rstd = zeros(a.N); a.R = rnd(n, 1);
	float *dx = zeros(n), *dw = zeros(a.D);
	rn_f(&a);
	ft_rmsnorm_backward(dx, dw, a.R, a.x, a.w, a.rstd, a.N, a.D);
	double e1 = fd_check(rn_f, &a, a.x, dx, n), e2 = fd_check(rn_f, &a, a.w, dw, a.D);
	ok(e1 < TOL && e2 < TOL, "rmsnorm backward: dx %.2g, dw %.2g", e1, e2);
	free(a.x); free(a.w); free(a.out); free(a.rstd); free(a.R); free(dx); free(dw);
}

/* ---- RoPE ---- */
static void test_rope(void)
{
	ft_st *st = ft_st_open("tests/fixtures/parity/rope.safetensors");
	const char *types[] = { "default", "linear", "dynamic", "llama3" };
	for (int i = 0; st && i < 4; i++) {
		ft_rope_params p = { "", 10000.0, i == 3 ? 8.0 : 2.0, 1.0, 4.0, 16, 8, 0, 0, 0, 0, NULL, NULL };
		snprintf(p.type, sizeof p.type, "%s", types[i]);
		float inv[8], ref[8];
		char name[64];
		snprintf(name, sizeof name, "inv_freq.%s", types[i]);
		const ft_st_tensor *t = ft_st_find(st, name);
		int rc = ft_rope_inv_freq(inv, 16, &p, 24);
		double e = 0;
		if (t && !rc) {
			ft_st_read_f32(t, ref);
			for (int k = 0; k < 8; k++)
				e = fmax(e, rel_err(inv[k], ref[k], 1e-30));
		}
		ok(t && !rc && e <= 1e-6, "rope inv_freq %s matches transformers (rel err %.2g)",
		   types[i], e);
	}
	if (!st)
		ok(0, "rope fixture: run from the repository root");
	ft_st_close(st);
	ft_rope_params bad = { "ntk", 10000, 2, 1, 4, 16, 8, 0, 0, 0, 0, NULL, NULL };
	float inv[8];
	ok(ft_rope_inv_freq(inv, 16, &bad, 8) < 0, "an unknown rope type is refused");
	/* dynamic does nothing up to max_position_embeddings */
	ft_rope_params d = { "dynamic", 10000, 2, 1, 4, 16, 8, 0, 0, 0, 0, NULL, NULL },
		       z = { "default", 10000, 1, 1, 4, 16, 8, 0, 0, 0, 0, NULL, NULL };
	float a[8], b[8];
	ft_rope_inv_freq(a, 16, &d, 8);
	ft_rope_inv_freq(b, 16, &z, 8);
	ok(!memcmp(a, b, sizeof a), "dynamic rope equals default within max_position_embeddings");
	/* backward is the transpose: <R x, y> = <x, R^T y> */
	int N = 6, H = 3, hd = 8;
	size_t n = (size_t)N * H * hd;
	int32_t pos[6] = { 0, 1, 2, 7, 3, 100 };
	float cs[24], sn[24];
	ft_rope_inv_freq(inv, hd, &z, N);
	ft_rope_tables(cs, sn, pos, N, inv, hd);
	float *x = rnd(n, 1), *y = rnd(n, 1), *rx = malloc(n * 4), *ry = malloc(n * 4);
	memcpy(rx, x, n * 4);
	memcpy(ry, y, n * 4);
	ft_rope_forward(rx, cs, sn, N, H, hd, hd);
	ft_rope_backward(ry, cs, sn, N, H, hd, hd);
	ok(fabs(dot(rx, y, n) - dot(x, ry, n)) < 1e-4, "rope backward is the transposed rotation");
	/* position 0 is the identity; a rotation keeps the norm */
	ok(!memcmp(rx, x, (size_t)H * hd * 4) && fabs(dot(rx, rx, n) - dot(x, x, n)) < 1e-3,
	   "rope: identity at position 0, norm preserved");
	/* partial rotary (rd 4 of hd 8): the first 4 values of each head
	 * rotate as a 4-wide head would, the last 4 pass through */
	float inv4[2], cs4[12], sn4[12], *px = malloc(n * 4), *q4 = malloc(n / 2 * 4);
	ft_rope_inv_freq(inv4, 4, &z, N);
	ft_rope_tables(cs4, sn4, pos, N, inv4, 4);
	memcpy(px, x, n * 4);
	for (size_t r = 0; r < (size_t)N * H; r++) memcpy(q4 + r * 4, x + r * hd, 16);
	ft_rope_forward(px, cs4, sn4, N, H, hd, 4);
	ft_rope_forward(q4, cs4, sn4, N, H, 4, 4);
	int same = 1;
	for (size_t r = 0; r < (size_t)N * H; r++)
		same &= !memcmp(px + r * hd, q4 + r * 4, 16) && !memcmp(px + r * hd + 4, x + r * hd + 4, 16);
	memcpy(ry, y, n * 4);
	ft_rope_backward(ry, cs4, sn4, N, H, hd, 4);
	ok(same && fabs(dot(px, y, n) - dot(x, ry, n)) < 1e-4,
	   "partial rope: the rotary part as a narrow head, the rest passed through, backward its transpose");
	free(px); free(q4);
	free(x); free(y); free(rx); free(ry);
}

/* ---- attention ---- */
/* Direct softmax attention with the mask spelled out, for comparison. */
static double attn_naive_err(const ft_attn_shape *s, const float *q, const float *k,
			     const float *v, const float *out)
{
	int T = s->T, hd = s->hd, grp = s->Hq / s->Hk;
	double worst = 0, *w = malloc(T * sizeof(double));
	for (int b = 0; b < s->B; b++)
		for (int h = 0; h < s->Hq; h++)
			for (int t = 0; t < T; t++) {
				const int32_t *sg = s->seg ? s->seg + b * T : NULL;
				double mx = -1e300, sum = 0;
				for (int u = 0; u < T; u++) {
					int ok_ = u <= t && (s->window <= 0 || t - u < s->window) &&
						  (!sg || (sg[t] ? sg[u] == sg[t] : u == t));
					w[u] = -1e300;
					if (!ok_)
						continue;
					double d = 0;
					for (int e = 0; e < hd; e++)
						d += (double)q[((size_t)(b * T + t) * s->Hq + h) * hd + e] *
						     k[((size_t)(b * T + u) * s->Hk + h / grp) * hd + e];
					w[u] = d / sqrt(hd);
					mx = fmax(mx, w[u]);
				}
				for (int u = 0; u < T; u++)
					sum += w[u] > -1e299 ? exp(w[u] - mx) : 0;
				for (int e = 0; e < hd; e++) {
					double o = 0;
					for (int u = 0; u < T; u++)
						if (w[u] > -1e299)
							o += exp(w[u] - mx) / sum *
							     v[((size_t)(b * T + u) * s->Hk + h / grp) * hd + e];
					double got = out[((size_t)(b * T + t) * s->Hq + h) * hd + e];
					worst = fmax(worst, fabs(got - o));
				}
			}
	free(w);
	return worst;
}

struct at { ft_attn_shape s; float *q, *k, *v, *out, *lse, *R; };
static double at_f(void *c)
{
	struct at *a = c;
	ft_attention_forward(a->out, a->lse, a->q, a->k, a->v, &a->s);
	return dot(a->out, a->R, (size_t)a->s.B * a->s.T * a->s.Hq * a->s.hd);
}
static void test_attention(int T, int window, int use_seg)
{
	static int32_t seg[2 * 80];
	struct at a = { .s = { 2, T, 4, 2, 8, window, use_seg ? seg : NULL } };
	for (int t = 0; t < T; t++) {   /* row 0: 3 segments and padding; row 1: 2 */
		seg[t] = t < T / 3 ? 1 : t < T * 2 / 3 ? 2 : t < T - 2 ? 3 : 0;
		seg[T + t] = use_seg == 2 ? t % 3 + 1 : t < T / 2 ? 1 : 2;   /* 2: interleaved */
	}
	size_t nq = (size_t)2 * T * 4 * 8, nk = (size_t)2 * T * 2 * 8;
	a.q = rnd(nq, 1); a.k = rnd(nk, 1); a.v = rnd(nk, 1); a.out = zeros(nq);
	a.lse = zeros((size_t)2 * 4 * T); a.R = rnd(nq, 1);
	float *dq = zeros(nq), *dk = zeros(nk), *dv = zeros(nk);
	at_f(&a);
	double ne = attn_naive_err(&a.s, a.q, a.k, a.v, a.out);
	ok(ne < 1e-5, "attention T=%d window=%d seg=%d forward equals direct softmax "
	   "(max abs err %.2g)", T, window, use_seg, ne);
	ft_attention_backward(dq, dk, dv, a.R, a.q, a.k, a.v, a.out, a.lse, &a.s);
	double e1 = fd_check(at_f, &a, a.q, dq, nq), e2 = fd_check(at_f, &a, a.k, dk, nk);
	double e3 = fd_check(at_f, &a, a.v, dv, nk);
	ok(e1 < TOL && e2 < TOL && e3 < TOL, "attention T=%d window=%d seg=%d backward: "
	   "dq %.2g dk %.2g dv %.2g", T, window, use_seg, e1, e2, e3);
	if (use_seg == 1) {
		/* changing segment 1's keys/values leaves segment 2's outputs alone */
		float *o1 = malloc(nq * 4);
		memcpy(o1, a.out, nq * 4);
		for (int t = 0; t < T / 3; t++)
			for (int d = 0; d < 16; d++)
				a.k[(size_t)t * 16 + d] += 1, a.v[(size_t)t * 16 + d] -= 1;
		at_f(&a);
		int same = 1, changed = 0;
		for (int t = 0; t < T; t++)
			for (int d = 0; d < 32; d++) {
				int eq = o1[(size_t)t * 32 + d] == a.out[(size_t)t * 32 + d];
				if (seg[t] != 1) same &= eq;
				else changed |= !eq;
			}
		ok(same && changed, "attention: segments do not see each other");
		free(o1);
	}
	free(a.q); free(a.k); free(a.v); free(a.out); free(a.lse); free(a.R);
	free(dq); free(dk); free(dv);
}

/* ---- SwiGLU ---- */
struct sw { size_t n; float *g, *u, *h, *R; };
static double sw_f(void *c)
{
	struct sw *a = c;
	ft_swiglu_forward(a->h, a->g, a->u, a->n);
	return dot(a->h, a->R, a->n);
}
static void test_swiglu(void)
{
	struct sw a = { .n = 200 };
	a.g = rnd(a.n, 3); a.u = rnd(a.n, 1); a.h = zeros(a.n); a.R = rnd(a.n, 1);
	float *dg = zeros(a.n), *du = zeros(a.n);
	ft_swiglu_backward(dg, du, a.R, a.g, a.u, a.n);
	double e1 = fd_check(sw_f, &a, a.g, dg, a.n), e2 = fd_check(sw_f, &a, a.u, du, a.n);
	ok(e1 < TOL && e2 < TOL, "swiglu backward: dgate %.2g dup %.2g", e1, e2);
	free(a.g); free(a.u); free(a.h); free(a.R); free(dg); free(du);
}

/* ft_vexpf (the exp of SiLU and the softmaxes) against glibc's expf,
 * which is correctly rounded: a sweep over every 257th float of
 * [-104, 89], at most 1 ulp apart; exact at the edges and special values. */
static int ulp_apart(float a, float b)
{
	int32_t ia, ib;
	memcpy(&ia, &a, 4);
	memcpy(&ib, &b, 4);
	return ia > ib ? ia - ib : ib - ia;
}
static void test_vexp(void)
{
	int worst = 0;
	float at = 0;
	for (float x = -104.0f; x < 89.0f;) {
		float a = ft_vexpf(x), b = expf(x);
		int d = isinf(a) && isinf(b) ? 0 : ulp_apart(a, b);
		if (d > worst) { worst = d; at = x; }
		uint32_t bits, mag;   /* next: 257 floats on, through zero */
		memcpy(&bits, &x, 4);
		mag = bits & 0x7fffffffu;
		if (x < 0)
			bits = mag > 257 ? bits - 257 : 0;
		else
			bits += 257;
		memcpy(&x, &bits, 4);
	}
	ok(worst <= 1, "ft_vexpf within 1 ulp of expf on [-104, 89] (worst %d at %g)", worst, at);
	ok(ft_vexpf(0) == 1.0f && ft_vexpf(-200) == 0.0f && isinf(ft_vexpf(100)) &&
	   ft_vexpf(-INFINITY) == 0.0f && isinf(ft_vexpf(INFINITY)) && isnan(ft_vexpf(NAN)),
	   "ft_vexpf: exp(0) = 1, 0 below the range, inf above it, NaN for NaN");
	ok(ft_vexpf(88.72f) == expf(88.72f) && ft_vexpf(-103.9f) == expf(-103.9f),
	   "ft_vexpf: the largest finite and the subnormal results");
}

/* ft_linear_forward_many = ft_linear_forward on each output (q, k, v with
 * biases; small products run side by side on their own threads).  The two
 * run the same sums through different OpenBLAS blockings (a whole product
 * against a split one, and on some CPUs other micro-kernels), so their
 * order of additions differs.  Each computed y = sum_i x_i W_i + b has
 * |y - exact| <= gamma(in+1) * (sum_i |x_i W_i| + |b|), gamma(n) = n u /
 * (1 - n u), u = 2^-24 (Higham, Accuracy and Stability, 3.1); so the two
 * differ by at most twice that, which is what is checked per element. */
static void test_linear_many(void)
{
	int N = 24, in = 40, outs[3] = { 40, 16, 16 };
	float *x = rnd((size_t)N * in, 1), *W[3], *b[3], *y[3], *ref[3];
	ft_linear_out o[3];
	for (int i = 0; i < 3; i++) {
		W[i] = rnd((size_t)outs[i] * in, 0.5f);
		b[i] = i ? rnd((size_t)outs[i], 0.1f) : NULL;
		y[i] = zeros((size_t)N * outs[i]);
		ref[i] = zeros((size_t)N * outs[i]);
		o[i] = (ft_linear_out){ y[i], W[i], b[i], outs[i] };
		ft_linear_forward(ref[i], x, W[i], b[i], N, in, outs[i]);
	}
	ft_linear_forward_many(o, 3, x, N, in);
	double u = ldexp(1.0, -24), gamma = (in + 1) * u / (1 - (in + 1) * u), worst = 0;
	for (int i = 0; i < 3; i++)
		for (int n = 0; n < N; n++)
			for (int j = 0; j < outs[i]; j++) {
				double mag = b[i] ? fabs(b[i][j]) : 0;
				for (int c = 0; c < in; c++)
					mag += fabs((double)x[(size_t)n * in + c] * W[i][(size_t)j * in + c]);
				size_t k = (size_t)n * outs[i] + j;
				double e = fabs((double)y[i][k] - ref[i][k]) / (2 * gamma * mag);
				if (e > worst) worst = e;
			}
	ok(worst <= 1, "ft_linear_forward_many = ft_linear_forward per output "
	   "(worst %.2g of the summation bound)", worst);
	for (int i = 0; i < 3; i++) { free(W[i]); free(b[i]); free(y[i]); free(ref[i]); }
	free(x);
}

/* ---- linear + LoRA ---- */
struct li { int N, in, out, r; float *x, *W, *b, *A, *B, *y, *h, *R; };
static double li_f(void *c)
{
	struct li *a = c;
	ft_linear_forward(a->y, a->x, a->W, a->b, a->N, a->in, a->out);
	if (a->A)
		ft_lora_forward(a->y, a->h, a->x, a->A, a->B, a->N, a->in, a->out, a->r, 2.5f);
	return dot(a->y, a->R, (size_t)a->N * a->out);
}
static void test_linear(int lora)
{
	struct li a = { .N = 7, .in = 12, .out = 9, .r = 3 };
	size_t nx = (size_t)a.N * a.in, nw = (size_t)a.in * a.out, ny = (size_t)a.N * a.out;
	a.x = rnd(nx, 1); a.W = rnd(nw, 1); a.b = rnd(a.out, 1); a.y = zeros(ny); a.R = rnd(ny, 1);
	a.A = lora ? rnd((size_t)a.r * a.in, 1) : NULL;
	a.B = lora ? rnd((size_t)a.out * a.r, 1) : NULL;
	a.h = zeros((size_t)a.N * a.r);
	float *dx = zeros(nx), *dW = zeros(nw), *db = zeros(a.out), *hs = zeros((size_t)a.N * a.r);
	float *dA = zeros((size_t)a.r * a.in), *dB = zeros((size_t)a.out * a.r);
	li_f(&a);
	ft_linear_backward(dx, dW, db, a.R, a.x, a.W, a.N, a.in, a.out);
	if (lora)
		ft_lora_backward(dx, dA, dB, hs, a.R, a.x, a.h, a.A, a.B, a.N, a.in, a.out, a.r, 2.5f);
	double e1 = fd_check(li_f, &a, a.x, dx, nx), e2 = fd_check(li_f, &a, a.W, dW, nw);
	double e3 = fd_check(li_f, &a, a.b, db, a.out);
	if (!lora)
		ok(e1 < TOL && e2 < TOL && e3 < TOL, "linear backward: dx %.2g dW %.2g db %.2g",
		   e1, e2, e3);
	else {
		double e4 = fd_check(li_f, &a, a.A, dA, (size_t)a.r * a.in);
		double e5 = fd_check(li_f, &a, a.B, dB, (size_t)a.out * a.r);
		ok(e1 < TOL && e4 < TOL && e5 < TOL, "linear+lora backward: dx %.2g dA %.2g dB %.2g",
		   e1, e4, e5);
	}
	free(a.x); free(a.W); free(a.b); free(a.y); free(a.R); free(a.A); free(a.B); free(a.h);
	free(dx); free(dW); free(db); free(hs); free(dA); free(dB);
}

/* ---- LM head + cross-entropy ---- */
struct lm { int n, D, V, chunk; float *x, *W, *scratch; int32_t *tg; };
static double lm_f(void *c)
{
	struct lm *a = c;
	return ft_lm_head_loss(NULL, NULL, NULL, a->x, a->W, a->tg, a->n, a->D, a->V, 1,
			       a->scratch, a->chunk, NULL);
}
static void test_lm_head(void)
{
	struct lm a = { .n = 9, .D = 16, .V = 50, .chunk = 4 };
	int32_t tg[9] = { 3, -100, 49, 0, 7, -100, 7, 11, 20 };
	a.tg = tg;
	a.x = rnd((size_t)a.n * a.D, 1); a.W = rnd((size_t)a.V * a.D, 1);
	a.scratch = zeros((size_t)a.n * a.V);
	float *dx = zeros((size_t)a.n * a.D), *dW = zeros((size_t)a.V * a.D);
	int64_t nt = 0;
	double l1 = ft_lm_head_loss(dx, dW, NULL, a.x, a.W, tg, a.n, a.D, a.V, 1, a.scratch, 4, &nt);
	a.chunk = a.n;
	double l2 = lm_f(&a);
	double e1 = fd_check(lm_f, &a, a.x, dx, (size_t)a.n * a.D);
	double e2 = fd_check(lm_f, &a, a.W, dW, (size_t)a.V * a.D);
	ok(e1 < TOL && e2 < TOL, "lm head + cross-entropy backward: dx %.2g dW %.2g", e1, e2);
	ok(nt == 7 && rel_err(l1, l2, 1e-9) < 1e-6, "chunked loss equals one chunk, 7 targets");
	int zero = 1;
	for (int d = 0; d < a.D; d++)
		zero &= dx[a.D + d] == 0 && dx[5 * a.D + d] == 0;
	ok(zero, "ignored rows (-100) get no gradient");
	/* the loss of a single row by hand */
	double mx = -1e30, s = 0, lg[50];
	for (int v = 0; v < a.V; v++) {
		lg[v] = dot(a.x, a.W + (size_t)v * a.D, a.D);
		mx = fmax(mx, lg[v]);
	}
	for (int v = 0; v < a.V; v++)
		s += exp(lg[v] - mx);
	int32_t one[9] = { 3, -100, -100, -100, -100, -100, -100, -100, -100 };
	a.tg = one;
	ok(rel_err(lm_f(&a), mx + log(s) - lg[3], 1e-9) < 1e-5, "cross-entropy of one row");
	free(a.x); free(a.W); free(a.scratch); free(dx); free(dW);
}

static void test_embedding_dropout(void)
{
	int N = 5, D = 4, V = 3;
	int32_t ids[5] = { 2, 0, 2, 2, 1 };
	float *wte = rnd((size_t)V * D, 1), *out = zeros((size_t)N * D), *dw = zeros((size_t)V * D);
	float *g = rnd((size_t)N * D, 1);
	ft_embedding_forward(out, ids, wte, N, D);
	ft_embedding_backward(dw, g, ids, N, D);
	ok(!memcmp(out + 2 * D, wte + 2 * D, D * 4) &&
	   fabsf(dw[2 * D + 1] - (g[1] + g[2 * D + 1] + g[3 * D + 1])) < 1e-6,
	   "embedding: rows gathered, repeated ids accumulate");
	size_t n = 100000;
	float *x = rnd(n, 1), *y1 = zeros(n), *y2 = zeros(n);
	ft_dropout_apply(y1, x, n, 0.25f, 123);
	ft_dropout_apply(y2, x, n, 0.25f, 123);
	size_t dropped = 0, scaled = 1;
	for (size_t i = 0; i < n; i++) {
		dropped += y1[i] == 0;
		if (y1[i] != 0)
			scaled &= fabsf(y1[i] - x[i] / 0.75f) < 1e-6;
	}
	ok(!memcmp(y1, y2, n * 4) && scaled && fabs(dropped / (double)n - 0.25) < 0.01,
	   "dropout: same seed same mask, %.3f dropped, kept scaled by 1/(1-p)",
	   dropped / (double)n);
	ft_dropout_apply(y2, x, n, 0.25f, 124);
	ok(memcmp(y1, y2, n * 4) != 0, "dropout: another seed, another mask");
	free(wte); free(out); free(dw); free(g); free(x); free(y1); free(y2);
}

int main(void)
{
	test_rmsnorm();
	test_rope();
	test_attention(7, 0, 0);
	test_attention(70, 0, 1);     /* two row tiles */
	test_attention(12, 4, 0);     /* sliding window */
	test_attention(80, 5, 1);     /* window and segments past the first tile */
	test_attention(70, 0, 2);     /* non-contiguous segment ids */
	test_swiglu();
	test_vexp();
	test_linear_many();
	test_linear(0);
	test_linear(1);
	test_lm_head();
	test_embedding_dropout();
	return tap_done();
}
