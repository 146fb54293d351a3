/* test_flash_tc_emu.cc - the bf16 and fp16 flash-attention kernels
 * (lib/cuda/flash_tc.cuh: products on tensor cores through WMMA, the
 * source nvcc compiles into libft_cuda.so) run on the host with emulated
 * threads and an emulated WMMA (tests/emu/include/mma.h), against the CPU
 * attention ft_attention_forward/backward on the same half-rounded
 * inputs.  Forward and backward; T not a multiple of the 32-row tile, hd
 * not a multiple of the 16-feature fragment, GQA up to 4:1, windows,
 * packed segments, right padding (lengths), Gemma 2's soft-cap.
 *
 * Tolerance, element by element, from where the kernels round (u: the
 * unit roundoff of the element type, 2^-8 bf16, 2^-11 fp16).  Scores and
 * dP are exact products summed in fp32; the new errors are P and dS
 * rounded to the element type before their products, the outputs rounded
 * once, and D = rowsum(dO O) computed from the rounded O:
 *   O   u|O| + u sum_u P|V|                 (P >= 0; l is from fp32 P)
 *   dV  u|dV| + u sum_t P|dO|
 *   dK  u|dK| + scale (u M + dD) sum_t P|Q|
 *   dQ  u|dQ| + scale (u M + dD) sum_u P|K|
 * where M bounds |dP - D| over the allowed pairs (computed here; the
 * soft-cap's 1 - tanh^2 <= 1 only shrinks dS), dD bounds the error of D
 * (sum_d of O's bound times |dO|), and the sums of P times absolute
 * values are the CPU attention run on |V|, |dO|, |Q|, |K|.  Plus 1e-5
 * of the largest element for the fp32 sums (as the fp32 kernels' test,
 * which also covers fp16's subnormal P: at most 2^-25 absolute each),
 * and a factor 1 + 4u for the second-order terms.  lse is fp32 only:
 * 1e-5.  A misplaced element or a missed mask is an O(1) error. */
#include "emu.h"
#include <mma.h>
extern "C" {
#include "model/flash.h"
#include "model/layers.h"
}
#include "tap.h"
#include "emu_test.h"

static inline float to_f(__nv_bfloat16 x) { return __bfloat162float(x); }
static inline float to_f(__half x) { return __half2float(x); }
static inline void put(__nv_bfloat16 *p, float x) { *p = __float2bfloat16_rn(x); }
static inline void put(__half *p, float x) { *p = __float2half_rn(x); }

#include "cuda/flash_tc.cuh"

template <typename H> static double unit_roundoff();
template <> double unit_roundoff<__nv_bfloat16>() { return ldexp(1.0, -8); }
template <> double unit_roundoff<__half>() { return ldexp(1.0, -11); }
template <typename H> static const char *type_name();
template <> const char *type_name<__nv_bfloat16>() { return "bf16"; }
template <> const char *type_name<__half>() { return "fp16"; }

static unsigned rng = 4242;

/* forward, then (backward) rowdot and the two backward kernels */
template <typename E>
static void run_tc(fa_args<E> &p, int B, int backward)
{
	unsigned tiles = (unsigned)((p.T + FT_FA_BR - 1) / FT_FA_BR);
	size_t es = sizeof(E);
	if (!backward) {
		launch([&] { fa_fwd_tc<E>(p); }, { tiles, (unsigned)p.Hq, (unsigned)B },
		       fa_tc_smem_fwd(p.hd, es));
		return;
	}
	size_t NH = (size_t)B * p.T * p.Hq;
	launch([&] { rowdot_k<E>(p.Di, p.o, p.dout, NH, p.hd); },
	       { (unsigned)((NH + 255) / 256), 1, 1 }, 0);
	launch([&] { fa_dkdv_tc<E>(p); }, { tiles, (unsigned)p.Hk, (unsigned)B },
	       fa_tc_smem_dkdv(p.hd, es));
	launch([&] { fa_dq_tc<E>(p); }, { tiles, (unsigned)p.Hq, (unsigned)B },
	       fa_tc_smem_dq(p.hd, es));
}

static std::vector<float> absv(const std::vector<float> &x)
{
	std::vector<float> r(x.size());
	for (size_t i = 0; i < x.size(); i++)
		r[i] = fabsf(x[i]);
	return r;
}

/* max over allowed (t, u) of |dO_t . V_u - D_t|, D_t = dO_t . O_t */
static double max_dp_minus_d(const ft_attn_shape &s, const float *dO, const float *O,
			     const float *V)
{
	int qd = s.Hq * s.hd, kd = s.Hk * s.hd, grp = s.Hq / s.Hk;
	double M = 0;
	for (int b = 0; b < s.B; b++)
		for (int h = 0; h < s.Hq; h++)
			for (int t = 0; t < s.T; t++) {
				const float *g = dO + ((size_t)b * s.T + t) * qd + h * s.hd;
				const float *o = O + ((size_t)b * s.T + t) * qd + h * s.hd;
				double D = 0;
				for (int d = 0; d < s.hd; d++)
					D += (double)g[d] * o[d];
				int32_t st = s.seg ? s.seg[b * s.T + t] : 1;
				int len = s.len ? s.len[b] : s.T;
				for (int u = 0; u < s.T; u++) {
					int32_t su = s.seg ? s.seg[b * s.T + u] : 1;
					if (!ft_k_attn_allowed(t, u, s.window, st, su, len))
						continue;
					const float *v = V + ((size_t)b * s.T + u) * kd + h / grp * s.hd;
					double dp = 0;
					for (int d = 0; d < s.hd; d++)
						dp += (double)g[d] * v[d];
					M = fmax(M, fabs(dp - D));
				}
			}
	return M;
}

/* worst |got - ref| / bound over the elements (> 1: out of bound) */
static double ratio(const std::vector<float> &got, const std::vector<float> &ref,
		    const std::vector<double> &bound)
{
	double r = 0;
	for (size_t i = 0; i < got.size(); i++) {
		double e = fabs((double)got[i] - ref[i]) / bound[i];
		r = e > r || e != e ? (e != e ? INFINITY : e) : r;
	}
	return r;
}

template <typename H>
static std::vector<float> widen(const std::vector<H> &x)
{
	std::vector<float> r(x.size());
	for (size_t i = 0; i < x.size(); i++)
		r[i] = to_f(x[i]);
	return r;
}

/* packed 1: neat packing (segment ids, padding id 0 at each row's end);
 * 2: right padding, rows of T - 37 b real tokens. */
template <typename H>
static void test_tc(int B, int T, int Hq, int Hk, int hd, int window, int packed, float cap)
{
	size_t N = (size_t)B * T, nq = N * Hq * hd, nk = N * Hk * hd, nl = N * Hq;
	std::vector<float> f[4] = { rnd_vec(rng, nq, 1.5f), rnd_vec(rng, nk, 1.5f),
				    rnd_vec(rng, nk, 1), rnd_vec(rng, nq, 1) };
	std::vector<H> h[4];
	for (int i = 0; i < 4; i++) {
		h[i].resize(f[i].size());
		for (size_t j = 0; j < f[i].size(); j++) {
			put(&h[i][j], f[i][j]);
			f[i][j] = to_f(h[i][j]);
		}
	}
	std::vector<int32_t> seg(N), len(B);
	for (int b = 0; b < B; b++) {
		for (int t = 0; t < T; t++)
			seg[(size_t)b * T + t] = t >= T - 5 - b ? 0 : 1 + (t + 7 * b) / 23;
		len[b] = T - 37 * b > 0 ? T - 37 * b : 1;
	}
	float scale = 1.0f / sqrtf((float)hd);
	ft_attn_shape s = { B, T, Hq, Hk, hd, window, packed == 1 ? seg.data() : NULL, scale, cap,
			    packed == 2 ? len.data() : NULL };
	std::vector<float> o1(nq), l1(nl), g1[3] = { std::vector<float>(nq),
		std::vector<float>(nk), std::vector<float>(nk) };
	ft_attention_forward(o1.data(), l1.data(), f[0].data(), f[1].data(), f[2].data(), &s);
	ft_attention_backward(g1[0].data(), g1[1].data(), g1[2].data(), f[3].data(), f[0].data(),
			      f[1].data(), f[2].data(), o1.data(), l1.data(), &s);

	std::vector<H> o2(nq), g2[3] = { std::vector<H>(nq), std::vector<H>(nk),
					 std::vector<H>(nk) };
	std::vector<float> l2(nl), Di(nl);
	fa_args<H> p;
	memset(&p, 0, sizeof p);
	p.q = h[0].data(), p.k = h[1].data(), p.v = h[2].data(), p.dout = h[3].data();
	p.o = o2.data(), p.out = o2.data(), p.lse = l2.data(), p.Di = Di.data();
	p.dq = g2[0].data(), p.dk = g2[1].data(), p.dv = g2[2].data();
	p.seg = s.seg, p.len = s.len;
	p.T = T, p.Hq = Hq, p.Hk = Hk, p.hd = hd, p.window = window, p.scale = scale;
	p.softcap = cap;
	p.ldq = p.lddq = Hq * hd;
	p.ldk = p.ldv = p.lddk = p.lddv = Hk * hd;
	run_tc(p, B, 0);
	run_tc(p, B, 1);

	/* the sums of P times absolute values (see the top) */
	std::vector<float> Oabs(nq), PK(nq), lx(nl), x0(nq), x1(nk), PdO(nk), PQ(nk);
	ft_attention_forward(Oabs.data(), lx.data(), f[0].data(), f[1].data(), absv(f[2]).data(), &s);
	ft_attention_forward(PK.data(), lx.data(), f[0].data(), f[1].data(), absv(f[1]).data(), &s);
	ft_attention_backward(x0.data(), x1.data(), PdO.data(), absv(f[3]).data(), f[0].data(),
			      f[1].data(), f[2].data(), o1.data(), l1.data(), &s);
	ft_attention_backward(x0.data(), x1.data(), PQ.data(), absv(f[0]).data(), f[0].data(),
			      f[1].data(), f[2].data(), o1.data(), l1.data(), &s);
	double u = unit_roundoff<H>(), M = max_dp_minus_d(s, f[3].data(), o1.data(), f[2].data());
	auto big = [](const std::vector<float> &x) {
		double m = 0;
		for (float v : x)
			m = fmax(m, fabs(v));
		return m;
	};
	std::vector<double> bo(nq), bq(nq), bk(nk), bv(nk);
	double so = 1e-5 * big(o1), dD = 0;
	for (size_t i = 0; i < nq; i++)
		bo[i] = (1 + 4 * u) * (u * fabs(o1[i]) + u * Oabs[i]) + so;
	for (size_t n = 0; n < nl; n++) {
		double e = 0;
		for (int d = 0; d < hd; d++)
			e += bo[n * hd + d] * fabs(f[3][n * hd + d]);
		dD = fmax(dD, e);
	}
	double w = scale * (u * M + dD), sq = 1e-5 * big(g1[0]), sk = 1e-5 * big(g1[1]);
	double sv = 1e-5 * big(g1[2]);
	for (size_t i = 0; i < nq; i++)
		bq[i] = (1 + 4 * u) * (u * fabs(g1[0][i]) + w * PK[i]) + sq;
	for (size_t i = 0; i < nk; i++) {
		bk[i] = (1 + 4 * u) * (u * fabs(g1[1][i]) + w * PQ[i]) + sk;
		bv[i] = (1 + 4 * u) * (u * fabs(g1[2][i]) + u * PdO[i]) + sv;
	}
	double ro = ratio(widen(o2), o1, bo), rq = ratio(widen(g2[0]), g1[0], bq);
	double rk = ratio(widen(g2[1]), g1[1], bk), rv = ratio(widen(g2[2]), g1[2], bv);
	double el = max_rel01(l2.data(), l1.data(), nl);
	ok(ro <= 1 && rq <= 1 && rk <= 1 && rv <= 1 && el <= 1e-5,
	   "%s tensor-core kernels B=%d T=%d Hq=%d Hk=%d hd=%d window=%d packed=%d cap=%g: "
	   "error / bound out %.2f dq %.2f dk %.2f dv %.2f; lse %.2g; of the largest: out %.2g "
	   "dq %.2g dk %.2g dv %.2g", type_name<H>(), B, T, Hq, Hk, hd, window, packed, cap, ro,
	   rq, rk, rv, el, max_rel01(widen(o2).data(), o1.data(), nq),
	   max_rel01(widen(g2[0]).data(), g1[0].data(), nq),
	   max_rel01(widen(g2[1]).data(), g1[1].data(), nk),
	   max_rel01(widen(g2[2]).data(), g1[2].data(), nk));
}

int main(void)
{
	test_tc<__nv_bfloat16>(1, 1, 1, 1, 8, 0, 0, 0);      /* one row, hd below a fragment */
	test_tc<__nv_bfloat16>(2, 40, 4, 2, 80, 0, 0, 0);
	test_tc<__nv_bfloat16>(1, 70, 4, 1, 36, 0, 0, 0);    /* GQA 4:1, hd off the fragment */
	test_tc<__nv_bfloat16>(1, 100, 2, 1, 64, 17, 0, 0);  /* window: tiles skipped */
	test_tc<__nv_bfloat16>(2, 97, 4, 1, 16, 0, 1, 0);    /* packed rows */
	test_tc<__nv_bfloat16>(2, 130, 4, 2, 24, 0, 2, 0);   /* right padding (lengths) */
	test_tc<__nv_bfloat16>(3, 75, 2, 1, 8, 17, 2, 0);    /* blind queries past the window */
	test_tc<__nv_bfloat16>(1, 75, 4, 1, 32, 25, 0, 5.0f); /* Gemma 2: cap and window */
	test_tc<__nv_bfloat16>(1, 33, 2, 1, 256, 0, 0, 0);   /* the largest head */
	test_tc<__half>(2, 40, 4, 2, 80, 0, 0, 0);
	test_tc<__half>(1, 70, 4, 1, 36, 0, 1, 0);
	test_tc<__half>(1, 100, 2, 1, 64, 17, 2, 0);
	test_tc<__half>(2, 61, 4, 1, 48, 0, 0, 30.0f);
	return tap_done();
}
