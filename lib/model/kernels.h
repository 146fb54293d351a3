/* kernels.h - per-element and per-row kernel bodies shared by the CPU
 * tests and the CUDA backend (lib/cuda/).
 *
 * Every function is `static inline FT_HD`: __host__ __device__ under
 * nvcc, plain static inline under gcc, so the arithmetic a CUDA kernel
 * does for one element (or one row) is the same source line that
 * tests/unit/test_kernels.c compiles for the host and compares with the
 * CPU layers in lib/model/layers.c and AdamW in lib/train/optim.c.  A GPU kernel adds
 * only the parallel part (which thread takes which element, and the
 * reductions over a row); the formulas live here.
 *
 * Nothing here allocates, prints or touches global state.
 */
#ifndef FT_KERNELS_H
#define FT_KERNELS_H

#include <math.h>
#include <stdint.h>
#include <string.h>
#include "model/vexp.h"
#include "util/dtype_inline.h"   /* FT_HD and the bf16 rounding */

/* ---- dtype casts (round to nearest even, as lib/util/dtype.c and torch; the
 * bf16 rounding is util/dtype_inline.h's, which dtype.c calls too) ---- */

static inline FT_HD uint32_t ft_k_f32_bits(float f)
{
	union { float f; uint32_t u; } c;
	c.f = f;
	return c.u;
}

static inline FT_HD float ft_k_bits_f32(uint32_t u)
{
	union { float f; uint32_t u; } c;
	c.u = u;
	return c.f;
}

static inline FT_HD float ft_k_bf16_to_f32(uint16_t h)
{
	return ft_k_bits_f32((uint32_t)h << 16);
}

static inline FT_HD uint16_t ft_k_f32_to_bf16(float f)
{
	return ft_bf16_round(f);
}

static inline FT_HD float ft_k_f16_to_f32(uint16_t h)
{
	uint32_t sign = (uint32_t)(h & 0x8000u) << 16;
	uint32_t e = (h >> 10) & 0x1fu, mant = h & 0x3ffu;
	if (e == 0x1f)
		return ft_k_bits_f32(sign | 0x7f800000u | (mant ? 0x400000u | (mant << 13) : 0));
	if (e != 0)
		return ft_k_bits_f32(sign | ((e + 112) << 23) | (mant << 13));
	if (mant == 0)
		return ft_k_bits_f32(sign);
	int s = -1;                         /* subnormal: normalise */
	do { mant <<= 1; s++; } while (!(mant & 0x400u));
	return ft_k_bits_f32(sign | ((uint32_t)(112 - s) << 23) | ((mant & 0x3ffu) << 13));
}

static inline FT_HD uint16_t ft_k_f32_to_f16(float f)
{
	uint32_t u = ft_k_f32_bits(f);
	uint16_t sign = (uint16_t)((u >> 16) & 0x8000u);
	uint32_t a = u & 0x7fffffffu;
	if (a > 0x7f800000u)
		return (uint16_t)(sign | 0x7e00u | ((a >> 13) & 0x3ffu));
	if (a >= 0x477ff000u)               /* rounds to >= 65520: Inf */
		return (uint16_t)(sign | 0x7c00u);
	if (a < 0x38800000u) {              /* f16 subnormal or zero */
		if (a < 0x33000000u)
			return sign;
		uint32_t e = a >> 23, mant = (a & 0x7fffffu) | 0x800000u;
		int shift = 126 - (int)e;
		uint32_t q = mant >> shift, rem = mant & ((1u << shift) - 1);
		uint32_t half = 1u << (shift - 1);
		if (rem > half || (rem == half && (q & 1u)))
			q++;
		return (uint16_t)(sign | q);
	}
	uint32_t r = a - 0x38000000u;
	r += 0xfffu + ((r >> 13) & 1u);
	return (uint16_t)(sign | (r >> 13));
}

/* ---- RMSNorm (transformers' LlamaRMSNorm) ---- */

/* rstd from the row's sum of squares. */
static inline FT_HD float ft_k_rmsnorm_rstd(float sumsq, int D, float eps)
{
	return 1.0f / sqrtf(sumsq / D + eps);
}

static inline FT_HD float ft_k_rmsnorm_out(float x, float w, float rstd)
{
	return w * (x * rstd);
}

/* dot = sum_d dout*w*x over the row; returns the scaled mean the input
 * gradient needs. */
static inline FT_HD float ft_k_rmsnorm_dot_scale(float dot, float rstd, int D)
{
	return dot * (rstd / D);
}

/* d(input) of one element (ADDED by the caller); `dots` from above. */
static inline FT_HD float ft_k_rmsnorm_dx(float g, float w, float x, float rstd,
					  float dots)
{
	return rstd * (g * w - x * rstd * dots);
}

/* d(weight) contribution of one element. */
static inline FT_HD float ft_k_rmsnorm_dw(float g, float x, float rstd)
{
	return g * x * rstd;
}

/* Deterministic two-stage column sums (the GPU's RMSNorm-weight and bias
 * gradients, lib/cuda/ops.cu): the N rows are cut into FT_COLSUM_CHUNKS
 * fixed chunks, each summed in row order, and the chunk partials are
 * added in chunk order.  A fixed order (no atomics) with enough blocks
 * to fill a GPU.  Rows [*r0, *r1) of chunk c. */
#define FT_COLSUM_CHUNKS 64
static inline FT_HD void ft_k_colsum_chunk(int c, int N, int *r0, int *r1)
{
	int per = (N + FT_COLSUM_CHUNKS - 1) / FT_COLSUM_CHUNKS;
	*r0 = c * per < N ? c * per : N;
	*r1 = *r0 + per < N ? *r0 + per : N;
}

/* One row, serially (the host reference of the GPU row kernel). */
static inline FT_HD float ft_k_rmsnorm_row_forward(float *out, const float *x,
						   const float *w, int D, float eps)
{
	float ss = 0;
	for (int d = 0; d < D; d++)
		ss += x[d] * x[d];
	float r = ft_k_rmsnorm_rstd(ss, D, eps);
	for (int d = 0; d < D; d++)
		out[d] = ft_k_rmsnorm_out(x[d], w[d], r);
	return r;
}

/* dx ADDED to; dw (may be NULL) ADDED to. */
static inline FT_HD void ft_k_rmsnorm_row_backward(float *dx, float *dw,
						   const float *g, const float *x,
						   const float *w, float rstd, int D)
{
	float dot = 0;
	for (int d = 0; d < D; d++)
		dot += g[d] * w[d] * x[d];
	float s = ft_k_rmsnorm_dot_scale(dot, rstd, D);
	for (int d = 0; d < D; d++)
		dx[d] += ft_k_rmsnorm_dx(g[d], w[d], x[d], rstd, s);
	if (dw)
		for (int d = 0; d < D; d++)
			dw[d] += ft_k_rmsnorm_dw(g[d], x[d], rstd);
}

/* ---- RoPE: rotate the pair (x[i], x[i + hd/2]); sign -1 = backward ---- */

static inline FT_HD void ft_k_rope_pair(float *a, float *b, float c, float s,
					float sign)
{
	float x0 = *a, x1 = *b, si = sign * s;
	*a = x0 * c - x1 * si;
	*b = x1 * c + x0 * si;
}

/* ---- SwiGLU: h = silu(gate) * up (exp from vexp.h, as the CPU layers) ---- */

static inline FT_HD float ft_k_swiglu(float g, float u)
{
	return g / (1.0f + ft_vexpf(-g)) * u;
}

static inline FT_HD void ft_k_swiglu_backward(float dh, float g, float u,
					      float *dg, float *du)
{
	float sg = 1.0f / (1.0f + ft_vexpf(-g)), silu = g * sg;
	*du = dh * silu;
	*dg = dh * u * sg * (1.0f + g * (1.0f - sg));
}

/* ---- Gemma: GeGLU with gelu_pytorch_tanh, and soft-capping ----
 * h = 0.5 g (1 + tanh(sqrt(2/pi) (g + 0.044715 g^3))) * up, in float32 as
 * torch evaluates it (lib/model/layers_gemma.c loops over these). */
#define FT_K_GELU_BETA 0.7978845608028654f    /* sqrt(2) * 2/sqrt(pi) * 0.5 */
#define FT_K_GELU_KAPPA 0.044715f

static inline FT_HD float ft_k_geglu(float x, float u)
{
	float inner = FT_K_GELU_BETA * (x + FT_K_GELU_KAPPA * x * x * x);
	return 0.5f * x * (1 + tanhf(inner)) * u;
}

static inline FT_HD void ft_k_geglu_backward(float dh, float x, float u, float *dg, float *du)
{
	float x2 = x * x, inner = FT_K_GELU_BETA * (x + FT_K_GELU_KAPPA * x2 * x);
	float t = tanhf(inner), g = 0.5f * x * (1 + t);
	float d = 0.5f * (1 + t) + 0.5f * x * (1 - t * t) * FT_K_GELU_BETA *
		  (1 + 3 * FT_K_GELU_KAPPA * x2);
	*du = dh * g;
	*dg = dh * u * d;
}

/* cap * tanh(x / cap), as transformers' Gemma 2 (attention scores after
 * the scale, final logits); the gradient through it from the capped
 * value c is d (1 - (c / cap)^2). */
static inline FT_HD float ft_k_softcap(float x, float cap)
{
	return tanhf(x / cap) * cap;
}

static inline FT_HD float ft_k_softcap_grad(float d, float c, float cap)
{
	float th = c / cap;
	return d * (1 - th * th);
}

/* ---- dropout mask: element i kept when splitmix64(seed + i) >= thr ---- */

static inline FT_HD uint64_t ft_k_splitmix64(uint64_t x)
{
	uint64_t z = x + 0x9e3779b97f4a7c15ULL;
	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
	z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
	return z ^ (z >> 31);
}

typedef struct {
	uint64_t thr;       /* p * 2^64, saturated */
	float keep;         /* 1/(1-p), 0 when p >= 1 */
	int all;            /* p >= 1: everything dropped */
} ft_k_dropout;

static inline FT_HD ft_k_dropout ft_k_dropout_prepare(float p)
{
	ft_k_dropout d;
	double th = (double)p * 18446744073709551616.0;
	d.thr = th >= 18446744073709551615.0 ? UINT64_MAX : (uint64_t)th;
	d.keep = p >= 1 ? 0 : 1.0f / (1.0f - p);
	d.all = p >= 1;
	return d;
}

static inline FT_HD float ft_k_dropout_elem(float x, uint64_t seed, uint64_t i,
					    const ft_k_dropout *d)
{
	return ft_k_splitmix64(seed + i) >= d->thr && !d->all ? x * d->keep : 0.0f;
}

/* ---- AdamW (torch.optim.AdamW single-tensor path, see lib/train/optim.c) ---- */

typedef struct {
	float decay, w1, b2, w2, neg_step_size, bc2_sqrt, inv_bc2_sqrt, eps;
	int small;
} ft_k_adamw;

/* The per-tensor scalars, computed in double and rounded as torch does.
 * step is the (float-exact) step number starting at 1.  Without weight
 * decay the factor is 1, and x * 1.0f == x exactly, so the element needs
 * no branch on it. */
static inline FT_HD ft_k_adamw ft_k_adamw_prepare(double lr, double wd, double beta1,
						  double beta2, double eps, double step)
{
	ft_k_adamw k;
	k.decay = wd != 0.0 ? (float)(1.0 - lr * wd) : 1.0f;
	k.w1 = (float)(1.0 - beta1);
	k.b2 = (float)beta2;
	k.w2 = (float)(1.0 - beta2);
	double bc1 = 1.0 - pow(beta1, step), bc2 = 1.0 - pow(beta2, step);
	k.neg_step_size = (float)-(lr / bc1);
	k.bc2_sqrt = (float)sqrt(bc2);
	k.inv_bc2_sqrt = 1.0f / k.bc2_sqrt;
	k.eps = (float)eps;
	k.small = k.w1 < 0.5f;
	return k;
}

/* x / c for x = sqrt(v) (0, [2^-75, 2^64), inf or NaN) and c in (0, 1] the
 * per-tensor constant, without a divide (the divider is what bounds the
 * update on a CPU): q = x * (1/c) is within an ulp, and one FMA correction
 * gives the correctly rounded quotient (Markstein's theorem; checked
 * exhaustively for x in [2^-75, 2^64) and 60 divisors, bc2_sqrt of steps
 * 1..100 among them).  inf and NaN keep q, which is then x / c too.
 * Bit-identical to torch's sqrt(v) / bias_correction2_sqrt. */
static inline FT_HD float ft_k_div_by_const(float x, float c, float inv_c)
{
	float q = x * inv_c;
	float r = fmaf(fmaf(-q, c, x), inv_c, q);
	return x < INFINITY ? r : q;
}

/* ATen's expression shapes: lerp is fma(weight, end - self, self) for
 * weight < 0.5; addcmul is self + value*t1*t2 and addcdiv
 * self + value*t1/t2, left to right. */
static inline FT_HD void ft_k_adamw_elem(float *p, float g, float *m, float *v,
					 const ft_k_adamw *k)
{
	float pi = *p * k->decay, mi = *m;
	mi = k->small ? fmaf(k->w1, g - mi, mi) : fmaf(k->w1 - 1.0f, g - mi, g);
	float vi = *v * k->b2;
	vi = vi + k->w2 * g * g;
	float den = ft_k_div_by_const(sqrtf(vi), k->bc2_sqrt, k->inv_bc2_sqrt) + k->eps;
	*p = pi + k->neg_step_size * mi / den;
	*m = mi;
	*v = vi;
}

/* clip_grad_norm_: the coefficient every gradient is multiplied by. */
static inline FT_HD float ft_k_clip_coef(float total_norm, double max_norm)
{
	float coef = (float)max_norm / (total_norm + 1e-6f);
	return coef > 1.0f ? 1.0f : coef;
}

/* ---- cross-entropy over one row of logits ---- */

/* Online log-sum-exp: merge (m2, s2) into (m1, s1), where s = sum exp(l - m). */
static inline FT_HD void ft_k_lse_merge(float *m1, double *s1, float m2, double s2)
{
	if (m2 > *m1) {
		*s1 = *s1 * exp((double)(*m1 - m2)) + s2;
		*m1 = m2;
	} else {
		*s1 += s2 * exp((double)(m2 - *m1));
	}
}

/* Gradient of grad_scale * CE at one logit, given the row's max and sum. */
static inline FT_HD float ft_k_ce_grad(float logit, float mx, double sum,
				       float grad_scale, int is_target)
{
	float g = expf(logit - mx) * (float)(grad_scale / sum);
	return is_target ? g - grad_scale : g;
}

/* transformers' LabelSmoother on one token (eps 0: the plain
 * cross-entropy, bit for bit): (1 - eps) (lse - z_t) + eps/V sum_v (lse -
 * z_v) with lse = mx + log(sum) and zsum = sum_v z_v, the same
 * denominator (num_items_in_batch) dividing both terms afterwards. */
static inline FT_HD double ft_k_ce_loss(float mx, double sum, float lt, double zsum,
					float eps, int V)
{
	double lse = mx + log(sum);
	if (eps == 0)
		return lse - lt;
	return lse - (1 - (double)eps) * lt - (double)eps * zsum / V;
}

/* The smoothed gradient of grad_scale * ft_k_ce_loss at one logit, from
 * its softmax numerator times grad_scale / sum: p - (1-eps)[target] - eps/V
 * (eps 0: ft_k_ce_grad's value). */
static inline FT_HD float ft_k_ce_grad_ls(float g, float grad_scale, int is_target, float eps,
					  int V)
{
	if (eps == 0)
		return is_target ? g - grad_scale : g;
	g -= grad_scale * eps / V;
	return is_target ? g - grad_scale * (1 - eps) : g;
}

/* The index of the largest of l[0..V), the first of equal ones
 * (torch.argmax on finite logits). */
static inline FT_HD int ft_k_argmax(const float *l, int V)
{
	int a = 0;
	for (int j = 1; j < V; j++)
		if (l[j] > l[a])
			a = j;
	return a;
}

/* One row serially: returns the loss (mx + log(sum) - l[target]) and,
 * when grad != NULL, writes the gradient of grad_scale * loss.  target
 * outside [0, V) (-100): returns 0 and writes zeros. */
static inline FT_HD double ft_k_ce_row(float *grad, const float *l, int V, int target,
				       float grad_scale)
{
	if (target < 0 || target >= V) {
		if (grad)
			for (int j = 0; j < V; j++)
				grad[j] = 0;
		return 0;
	}
	float mx = l[0];
	for (int j = 1; j < V; j++)
		if (l[j] > mx)
			mx = l[j];
	double sum = 0;
	for (int j = 0; j < V; j++)
		sum += expf(l[j] - mx);
	if (grad)
		for (int j = 0; j < V; j++)
			grad[j] = ft_k_ce_grad(l[j], mx, sum, grad_scale, j == target);
	return mx + log(sum) - l[target];
}

/* TRL's tempered logit z / t (GRPO's logits / temperature) in float, as
 * torch divides; t 0 means none */
static inline FT_HD float ft_k_temper(float z, float t)
{
	return t != 0 ? z / t : z;
}

/* entropy_from_logits of one row: logsumexp(l) - sum softmax(l) l, exp
 * and both sums in double (model_pref.c's rows; the device's pref_logp_k
 * sums the same terms in its block order) */
static inline FT_HD float ft_k_row_entropy(const float *l, int V)
{
	float mx = -INFINITY;
	for (int j = 0; j < V; j++)
		mx = l[j] > mx ? l[j] : mx;
	double s = 0, sz = 0;
	for (int j = 0; j < V; j++) {
		double e = exp((double)l[j] - mx);
		s += e;
		sz += e * ((double)l[j] - mx);
	}
	return (float)(log(s) - sz / s);
}

/* ---- attention mask (causal, sliding window, segment ids, key padding) ---- */

/* Does query t of a row with len real tokens (HF's attention_mask: 1 on
 * positions [0, len), 0 on the right padding) see no real key at all?
 * Only when len == 0 (an empty row) or a sliding window has moved past
 * the last real token; such a query attends to itself alone (what HF
 * gives a fully masked row depends on the attention implementation), so
 * every row keeps at least one key. */
static inline FT_HD int ft_k_attn_blind(int t, int window, int len)
{
	return len <= 0 || (window > 0 && t - (len - 1) >= window);
}

/* May query t attend to key u?  seg_t/seg_u are the segment ids (pass 1
 * for both when there are none); len is the row's real length (pass T
 * when every position is real): keys at u >= len are padding, hidden
 * from every query as HF's attention_mask hides them.  With right
 * padding a real query t < len never reaches such a key (u <= t), so
 * len changes only the padding queries' rows. */
static inline FT_HD int ft_k_attn_allowed(int t, int u, int window, int32_t seg_t,
					  int32_t seg_u, int len)
{
	if (u > t)
		return 0;
	if (window > 0 && t - u >= window)
		return 0;
	if (u >= len)
		return u == t && ft_k_attn_blind(t, window, len);
	if (seg_t == 0)
		return u == t;
	return seg_u == seg_t;
}

/* ---- EAFT (lib/model/model_tokloss.c, lib/cuda/tokloss.cu) ---- */
#define FT_EAFT_TOPK 20   /* torch.topk(k=20) in LLaMA-Factory's _eaft_cross_entropy */

/* v into top[0..*k), the largest values seen so far in descending order
 * (at most FT_EAFT_TOPK): the multiset of the top k is the same whatever
 * order the values come in, so a thread's partial lists merge into the
 * CPU's list. */
static inline FT_HD void ft_k_topk_insert(float *top, int *k, float v)
{
	if (*k == FT_EAFT_TOPK && v <= top[*k - 1])
		return;
	int i = *k < FT_EAFT_TOPK ? (*k)++ : *k - 1;
	while (i > 0 && top[i - 1] < v) {
		top[i] = top[i - 1];
		i--;
	}
	top[i] = v;
}

/* The entropy of softmax(top[0..k)), top descending: torch's logsumexp,
 * log-probs, probs and sum, here in double (float32 there: ~1e-7
 * relative apart). */
static inline FT_HD double ft_k_topk_entropy(const float *top, int k)
{
	double s = 0, h = 0;
	for (int i = 0; i < k; i++)
		s += exp((double)top[i] - top[0]);
	double lse = top[0] + log(s);
	for (int i = 0; i < k; i++) {
		double lp = top[i] - lse;
		h -= exp(lp) * lp;
	}
	return h;
}

#endif
