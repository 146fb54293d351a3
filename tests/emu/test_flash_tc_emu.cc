/* test_flash_tc_emu.cc - the bf16 and fp16 flash-attention kernels
 * (lib/cuda/flash_tc.cuh: products on tensor cores through WMMA, the
 * source nvcc compiles into libft_cuda.so) run on the host with emulated
 * threads and an emulated WMMA (tests/emu/include/mma.h), against the CPU
 * attention ft_attention_forward/backward on the same half-rounded
 * inputs.  Forward and backward; T not a multiple of the 32-row tile, hd
 * not a multiple of the 16-feature fragment, GQA up to 4:1, windows,
 * packed segments, right padding (lengths), Gemma 2's soft-cap; and the
 * strided layout of layer.cu's fused q|k|v, bit for bit.  And the
 * CUDA-core kernels of flash_kernels.cuh on the same half elements
 * (half shared tiles, fp32 products): attention.cu's fallback where the
 * tensor-core kernels' shared memory does not fit the device.
 *
 * Tolerance, element by element, from where the kernels round: the
 * bounds of tests/unit/attn_bound.h (which tests/gpu/test_gpu_attn_half.c
 * applies on a device).  A misplaced element or a missed mask is an O(1) error.
 * The bounds hold for the CUDA-core fallback a fortiori: it rounds the
 * same inputs and outputs but keeps P and dS in fp32. */
#include "emu.h"
#include <mma.h>
extern "C" {
#include "model/flash.h"
#include "model/layers.h"
#include "attn_bound.h"
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
/* the absolute error of a subnormal (attn_bound.h) */
template <typename H> static double subnormal_error();
template <> double subnormal_error<__nv_bfloat16>() { return 0; }
template <> double subnormal_error<__half>() { return ldexp(1.0, -25); }
template <typename H> static const char *type_name();
template <> const char *type_name<__nv_bfloat16>() { return "bf16"; }
template <> const char *type_name<__half>() { return "fp16"; }

static unsigned rng = 4242;

/* forward, then (backward) rowdot and the two backward kernels; core:
 * the CUDA-core kernels (FA_MAX_NDR accumulators, as attention.cu's
 * fallback) */
template <typename E>
static void run_tc(fa_args<E> &p, int B, int backward, int core = 0)
{
	unsigned tiles = (unsigned)((p.T + FT_FA_BR - 1) / FT_FA_BR);
	size_t es = sizeof(E);
	if (!backward) {
		if (core)
			launch([&] { fa_fwd_k<E, FA_MAX_NDR>(p); },
			       { tiles, (unsigned)p.Hq, (unsigned)B }, fa_smem_fwd<E>(p.hd));
		else
			launch([&] { fa_fwd_tc<E>(p); }, { tiles, (unsigned)p.Hq, (unsigned)B },
			       fa_tc_smem_fwd(p.hd, es));
		return;
	}
	size_t NH = (size_t)B * p.T * p.Hq;
	launch([&] { rowdot_k<E>(p.Di, p.o, p.dout, NH, p.hd); },
	       { (unsigned)((NH + 255) / 256), 1, 1 }, 0);
	if (core) {
		launch([&] { fa_dkdv_k<E, FA_MAX_NDR>(p); },
		       { tiles, (unsigned)p.Hk, (unsigned)B }, fa_smem_dkdv<E>(p.hd));
		launch([&] { fa_dq_k<E, FA_MAX_NDR>(p); }, { tiles, (unsigned)p.Hq, (unsigned)B },
		       fa_smem_dq<E>(p.hd));
		return;
	}
	launch([&] { fa_dkdv_tc<E>(p); }, { tiles, (unsigned)p.Hk, (unsigned)B },
	       fa_tc_smem_dkdv(p.hd, es));
	launch([&] { fa_dq_tc<E>(p); }, { tiles, (unsigned)p.Hq, (unsigned)B },
	       fa_tc_smem_dq(p.hd, es));
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
static void test_tc(int B, int T, int Hq, int Hk, int hd, int window, int packed, float cap,
		    int core = 0)
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
	run_tc(p, B, 0, core);
	run_tc(p, B, 1, core);

	std::vector<double> bo(nq), bq(nq), bk(nk), bv(nk);
	attn_half_bounds(&s, unit_roundoff<H>(), subnormal_error<H>(), f[0].data(), f[1].data(),
			 f[2].data(), f[3].data(), o1.data(), l1.data(), g1[0].data(),
			 g1[1].data(), g1[2].data(), bo.data(), bq.data(), bk.data(), bv.data());
	auto ratio = [](const std::vector<float> &got, const std::vector<float> &ref,
			const std::vector<double> &bound) {
		return attn_bound_ratio(got.data(), ref.data(), bound.data(), got.size());
	};
	double ro = ratio(widen(o2), o1, bo), rq = ratio(widen(g2[0]), g1[0], bq);
	double rk = ratio(widen(g2[1]), g1[1], bk), rv = ratio(widen(g2[2]), g1[2], bv);
	double el = max_rel01(l2.data(), l1.data(), nl);
	ok(ro <= 1 && rq <= 1 && rk <= 1 && rv <= 1 && el <= 1e-5,
	   "%s %s kernels B=%d T=%d Hq=%d Hk=%d hd=%d window=%d packed=%d cap=%g: "
	   "error / bound out %.2f dq %.2f dk %.2f dv %.2f; lse %.2g; of the largest: out %.2g "
	   "dq %.2g dk %.2g dv %.2g", type_name<H>(), core ? "CUDA-core" : "tensor-core", B, T,
	   Hq, Hk, hd, window, packed, cap, ro,
	   rq, rk, rv, el, max_rel01(widen(o2).data(), o1.data(), nq),
	   max_rel01(widen(g2[0]).data(), g1[0].data(), nq),
	   max_rel01(widen(g2[1]).data(), g1[1].data(), nk),
	   max_rel01(widen(g2[2]).data(), g1[2].data(), nk));
}

/* q, k, v read from one fused [N, qd + 2 kd + 5] buffer (the last columns
 * stand for LoRA's, as layer.cu's fused q|k|v) and dq, dk, dv written into
 * another: bit-identical to the contiguous layout (only addresses change:
 * tc_load's row strides), the LoRA columns of the gradients untouched. */
template <typename H>
static void test_strided(int B, int T, int Hq, int Hk, int hd, int window)
{
	size_t N = (size_t)B * T, qd = (size_t)Hq * hd, kd = (size_t)Hk * hd, nl = N * Hq;
	size_t tot = qd + 2 * kd + 5, off[4] = { 0, qd, qd + kd, 0 }, w[4] = { qd, kd, kd, qd };
	float amp[4] = { 1.5f, 1.5f, 1, 1 };
	std::vector<H> h[4], fused(N * tot), dfused(N * tot);
	for (int i = 0; i < 4; i++) {
		std::vector<float> f = rnd_vec(rng, N * w[i], amp[i]);
		h[i].resize(f.size());
		for (size_t j = 0; j < f.size(); j++)
			put(&h[i][j], f[j]);
	}
	for (size_t n = 0; n < N; n++) {
		for (int i = 0; i < 3; i++)
			memcpy(&fused[n * tot + off[i]], &h[i][n * w[i]], w[i] * sizeof(H));
		for (size_t c = 0; c < tot; c++)
			put(&dfused[n * tot + c], 12288.0f);   /* exact in both */
	}
	std::vector<H> o1(N * qd), o2(N * qd), g[3] = { std::vector<H>(N * qd),
		std::vector<H>(N * kd), std::vector<H>(N * kd) };
	std::vector<float> l1(nl), l2(nl), Di(nl);
	fa_args<H> p;
	memset(&p, 0, sizeof p);
	p.T = T, p.Hq = Hq, p.Hk = Hk, p.hd = hd, p.window = window;
	p.scale = 1.0f / sqrtf((float)hd);
	p.q = h[0].data(), p.k = h[1].data(), p.v = h[2].data(), p.dout = h[3].data();
	p.Di = Di.data(), p.o = p.out = o1.data(), p.lse = l1.data();
	p.dq = g[0].data(), p.dk = g[1].data(), p.dv = g[2].data();
	p.ldq = p.lddq = (int)qd;
	p.ldk = p.ldv = p.lddk = p.lddv = (int)kd;
	run_tc(p, B, 0);
	run_tc(p, B, 1);
	p.q = fused.data(), p.k = fused.data() + qd, p.v = fused.data() + qd + kd;
	p.o = p.out = o2.data(), p.lse = l2.data();
	p.dq = dfused.data(), p.dk = dfused.data() + qd, p.dv = dfused.data() + qd + kd;
	p.ldq = p.ldk = p.ldv = p.lddq = p.lddk = p.lddv = (int)tot;
	run_tc(p, B, 0);
	run_tc(p, B, 1);
	int same = !memcmp(o1.data(), o2.data(), o1.size() * sizeof(H)) &&
		   !memcmp(l1.data(), l2.data(), nl * 4), kept = 1;
	for (size_t n = 0; n < N; n++) {
		for (int i = 0; i < 3; i++)
			same = same && !memcmp(&dfused[n * tot + off[i]], &g[i][n * w[i]],
					       w[i] * sizeof(H));
		for (size_t c = qd + 2 * kd; c < tot; c++)
			kept = kept && to_f(dfused[n * tot + c]) == 12288.0f;
	}
	ok(same && kept, "%s strided q|k|v B=%d T=%d Hq=%d Hk=%d hd=%d window=%d: out, lse, dq, "
	   "dk, dv bit-identical to the contiguous layout%s", type_name<H>(), B, T, Hq, Hk, hd,
	   window, kept ? "" : " (LoRA columns overwritten)");
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
	/* the CUDA-core fallback on half elements */
	test_tc<__nv_bfloat16>(1, 33, 2, 1, 256, 0, 0, 0, 1);   /* Gemma's head */
	test_tc<__nv_bfloat16>(1, 75, 4, 1, 36, 25, 0, 5.0f, 1);
	test_tc<__nv_bfloat16>(2, 130, 4, 2, 24, 0, 2, 0, 1);
	test_tc<__half>(2, 97, 4, 1, 16, 0, 1, 0, 1);
	test_tc<__half>(1, 40, 2, 1, 200, 9, 0, 30.0f, 1);
	test_strided<__nv_bfloat16>(2, 45, 4, 2, 16, 0);
	test_strided<__half>(1, 70, 2, 1, 72, 20);  /* hd off the fragment */
	return tap_done();
}
