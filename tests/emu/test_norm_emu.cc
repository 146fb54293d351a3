/* test_norm_emu.cc - the kernels of lib/cuda/norm_kernels.cuh (the
 * source nvcc compiles into libft_cuda.so) run on the host under
 * tests/emu/emu.h: the fused residual add + RMSNorm against the CPU
 * path's residual add and ft_rmsnorm_forward (lib/model/layers.c); then
 * SwiGLU's hidden (swiglu_forward_k, read from a fused gate|up buffer)
 * bit-identical to ft_swiglu_forward (the same kernels.h formula); the
 * half outputs of the bf16/fp16 modes (rmsnorm_forward_k,
 * add_rmsnorm_forward_k, swiglu_forward_k, dropout_act_k) against their
 * fp32 outputs rounded by model/kernels.h's casts: bit-identical, since
 * each computes in fp32 and rounds once at the store (a wrong type code,
 * index or a second rounding would differ), with the statistics (rstd,
 * the fp32 sum) bit-identical to the fp32 run's; the per-head norm of a
 * half input (rmsnorm_forward_xk, Qwen3's q/k norms on the half q|k|v
 * buffer) likewise against the fp32 kernel on the widened input.
 *
 * The sum a + b is one float addition on both sides: bit-identical.  The
 * norm: the kernel adds the squares in 256 thread-strided partial sums
 * and a tree, the CPU left to right; the difference is a few ulps of the
 * row's sum of squares (all terms positive: no cancellation), so rstd
 * and out agree within 2e-6 relative (measured at most 5e-7 at D = 1000
 * and 4096); a wrong element or row would be O(1). */
#include "emu.h"
extern "C" {
#include "model/layers.h"
}
#include "tap.h"
#include "cuda/reduce.cuh"
#include "cuda/norm_kernels.cuh"

static unsigned rng = 4242;
static float frand(void)
{
	rng = rng * 1103515245u + 12345u;
	return ((rng >> 8) & 0xffff) / 32768.0f - 1.0f;
}

static void test_case(int N, int D)
{
	size_t n = (size_t)N * D;
	std::vector<float> a(n), b(n), w(D), s1(n), s2(n), o1(n), o2(n), r1(N), r2(N);
	for (size_t i = 0; i < n; i++) {
		a[i] = 2 * frand();
		b[i] = frand();
	}
	for (int d = 0; d < D; d++)
		w[d] = 1 + 0.5f * frand();
	for (size_t i = 0; i < n; i++)                 /* model_fwd.c's add_into */
		s1[i] = a[i] + b[i];
	ft_rmsnorm_forward(o1.data(), r1.data(), s1.data(), w.data(), N, D, 1e-5f);
	launch([&] { add_rmsnorm_forward_k(s2.data(), o2.data(), FT_ACT_F32, r2.data(), a.data(),
					   b.data(), w.data(), D, 1e-5f); },
	       { (unsigned)N, 1, 1 }, 0);
	double eo = 0, er = 0;
	for (size_t i = 0; i < n; i++)
		eo = fmax(eo, fabs((double)o2[i] - o1[i]) / fmax(fabs((double)o1[i]), 1e-3));
	for (int i = 0; i < N; i++)
		er = fmax(er, fabs((double)r2[i] - r1[i]) / fabs((double)r1[i]));
	ok(memcmp(s1.data(), s2.data(), n * sizeof(float)) == 0 && eo <= 2e-6 && er <= 2e-6,
	   "add + rmsnorm N=%d D=%d: sum bit-identical, out %.2g, rstd %.2g", N, D, eo, er);
}

static uint16_t round_as(float v, int at)
{
	return at == FT_ACT_BF16 ? ft_k_f32_to_bf16(v) : ft_k_f32_to_f16(v);
}

/* the n fp32 values `ref` rounded to at equal the kernel's half output */
static int same_rounded(const std::vector<float> &ref, const std::vector<uint16_t> &h, int at)
{
	for (size_t i = 0; i < ref.size(); i++)
		if (round_as(ref[i], at) != h[i])
			return 0;
	return 1;
}

static void test_half(int N, int D, int at)
{
	const char *nm = at == FT_ACT_BF16 ? "bf16" : "f16";
	size_t n = (size_t)N * D;
	std::vector<float> a(n), b(n), w(D), o(n), s1(n), s2(n), r1(N), r2(N);
	std::vector<uint16_t> h(n);
	for (size_t i = 0; i < n; i++) {
		a[i] = 2 * frand();
		b[i] = frand();
	}
	for (int d = 0; d < D; d++)
		w[d] = 1 + 0.5f * frand();
	dim3 grid = { (unsigned)N, 1, 1 };
	launch([&] { rmsnorm_forward_k(o.data(), FT_ACT_F32, r1.data(), a.data(), ft_cu_rows_of(D),
				       w.data(), D, 1e-5f); }, grid, 0);
	launch([&] { rmsnorm_forward_k(h.data(), at, r2.data(), a.data(), ft_cu_rows_of(D),
				       w.data(), D, 1e-5f); }, grid, 0);
	ok(same_rounded(o, h, at) && memcmp(r1.data(), r2.data(), N * sizeof(float)) == 0,
	   "rmsnorm %s out N=%d D=%d: the fp32 output rounded, rstd bit-identical", nm, N, D);
	launch([&] { add_rmsnorm_forward_k(s1.data(), o.data(), FT_ACT_F32, r1.data(), a.data(),
					   b.data(), w.data(), D, 1e-5f); }, grid, 0);
	launch([&] { add_rmsnorm_forward_k(s2.data(), h.data(), at, r2.data(), a.data(), b.data(),
					   w.data(), D, 1e-5f); }, grid, 0);
	ok(same_rounded(o, h, at) && memcmp(r1.data(), r2.data(), N * sizeof(float)) == 0 &&
	   memcmp(s1.data(), s2.data(), n * sizeof(float)) == 0,
	   "add + rmsnorm %s out N=%d D=%d: the fp32 output rounded, sum and rstd bit-identical",
	   nm, N, D);
	/* dropout of the half activation h (in place, as LoRA's dropped copy)
	 * against the fp32 dropout of its widened values, rounded */
	std::vector<float> xf(n), df(n);
	for (size_t i = 0; i < n; i++)
		xf[i] = at == FT_ACT_BF16 ? ft_k_bf16_to_f32(h[i]) : ft_k_f16_to_f32(h[i]);
	ft_k_dropout d = ft_k_dropout_prepare(0.25f);
	dim3 eg = { 7, 1, 1 };   /* a grid-stride loop of several rounds */
	launch([&] { dropout_act_k(df.data(), xf.data(), FT_ACT_F32, n, d, 99); }, eg, 0);
	launch([&] { dropout_act_k(h.data(), h.data(), at, n, d, 99); }, eg, 0);
	size_t zeros = 0;
	for (size_t i = 0; i < n; i++)
		zeros += df[i] == 0 && xf[i] != 0;
	ok(same_rounded(df, h, at) && zeros > n / 8 && zeros < n / 2,
	   "dropout %s in place n=%zu: the fp32 dropout rounded (%zu dropped)", nm, n, zeros);
}

/* Qwen3's q_norm / k_norm on the half q|k|v buffer (rmsnorm_forward_xk):
 * H heads of hd per token at token stride ld (other columns between), a
 * half input read widened: its output is the fp32 kernel's on the
 * widened values, rounded, and rstd bit-identical. */
static void test_head_half(int N, int H, int hd, int at)
{
	const char *nm = at == FT_ACT_BF16 ? "bf16" : "f16";
	int ld = H * hd + 7;
	size_t rows = (size_t)N * H, n = rows * hd;
	std::vector<uint16_t> x((size_t)N * ld), h(n);
	std::vector<float> xf((size_t)N * ld), w(hd), o(n), r1(rows), r2(rows);
	for (size_t i = 0; i < x.size(); i++) {
		x[i] = round_as(3 * frand(), at);
		xf[i] = at == FT_ACT_BF16 ? ft_k_bf16_to_f32(x[i]) : ft_k_f16_to_f32(x[i]);
	}
	for (int d = 0; d < hd; d++)
		w[d] = 1 + 0.5f * frand();
	ft_cu_rows xl = { H, ld };
	dim3 grid = { (unsigned)rows, 1, 1 };
	launch([&] { rmsnorm_forward_k(o.data(), FT_ACT_F32, r1.data(), xf.data(), xl, w.data(), hd,
				       1e-6f); }, grid, 0);
	launch([&] { rmsnorm_forward_xk(h.data(), at, r2.data(), x.data(), at, xl, w.data(), hd,
					1e-6f); }, grid, 0);
	ok(same_rounded(o, h, at) && memcmp(r1.data(), r2.data(), rows * sizeof(float)) == 0,
	   "head rmsnorm of a %s input N=%d H=%d hd=%d: the fp32 kernel's on the widened input, "
	   "rounded; rstd bit-identical", nm, N, H, hd);
}

static void test_swiglu(int N, int F)
{
	size_t ld = 2 * (size_t)F + 5, n = (size_t)N * F;
	std::vector<float> buf(N * ld), g(n), u(n), h1(n), h2(n);
	for (auto &v : buf)
		v = 4 * frand();
	for (int i = 0; i < N; i++)
		for (int f = 0; f < F; f++) {
			g[(size_t)i * F + f] = buf[i * ld + f];
			u[(size_t)i * F + f] = buf[i * ld + F + f];
		}
	ft_swiglu_forward(h1.data(), g.data(), u.data(), n);
	const float *G = buf.data(), *U = buf.data() + F;
	dim3 eg = { 5, 1, 1 };
	launch([&] { swiglu_forward_k(h2.data(), FT_ACT_F32, G, U, FT_ACT_F32, ld, N, F); }, eg, 0);
	ok(memcmp(h1.data(), h2.data(), n * 4) == 0,
	   "swiglu N=%d F=%d from the fused buffer: bit-identical to ft_swiglu_forward", N, F);
	for (int at = FT_ACT_BF16; at <= FT_ACT_F16; at++) {
		std::vector<uint16_t> h(n);
		launch([&] { swiglu_forward_k(h.data(), at, G, U, FT_ACT_F32, ld, N, F); }, eg, 0);
		ok(same_rounded(h1, h, at), "swiglu %s hidden N=%d F=%d: the fp32 one rounded",
		   at == FT_ACT_BF16 ? "bf16" : "f16", N, F);
		/* a half gate|up buffer (the half modes' training): read widened,
		 * forward and backward as the fp32 kernels on the widened values;
		 * the fp32 gradients into their own buffer, same layout */
		std::vector<uint16_t> hb(N * ld);
		std::vector<float> wb(N * ld), dh(n), hw(n), hh(n), d1(N * ld, -7), d2(N * ld, -7);
		for (size_t i = 0; i < hb.size(); i++) {
			hb[i] = round_as(buf[i], at);
			wb[i] = at == FT_ACT_BF16 ? ft_k_bf16_to_f32(hb[i]) : ft_k_f16_to_f32(hb[i]);
		}
		for (auto &v : dh)
			v = frand();
		const float *WG = wb.data(), *WU = wb.data() + F;
		const uint16_t *HG = hb.data(), *HU = hb.data() + F;
		launch([&] { swiglu_forward_k(hw.data(), FT_ACT_F32, WG, WU, FT_ACT_F32, ld, N, F); }, eg, 0);
		launch([&] { swiglu_forward_k(hh.data(), FT_ACT_F32, HG, HU, at, ld, N, F); }, eg, 0);
		launch([&] { swiglu_backward_k(d1.data(), d1.data() + F, dh.data(), WG, WU, FT_ACT_F32, ld,
					       N, F); }, eg, 0);
		launch([&] { swiglu_backward_k(d2.data(), d2.data() + F, dh.data(), HG, HU, at, ld, N,
					       F); }, eg, 0);
		ok(!memcmp(hw.data(), hh.data(), n * 4) && !memcmp(d1.data(), d2.data(), d1.size() * 4),
		   "swiglu from a %s gate|up N=%d F=%d: forward and backward bit-identical to fp32 on "
		   "the widened values", at == FT_ACT_BF16 ? "bf16" : "f16", N, F);
	}
}

int main(void)
{
	emu_init();
	test_case(3, 64);      /* fewer columns than threads */
	test_case(5, 1000);    /* D off the 256 threads */
	test_case(2, 4096);
	for (int at = FT_ACT_BF16; at <= FT_ACT_F16; at++) {
		test_half(3, 64, at);
		test_half(5, 1000, at);
		test_head_half(5, 3, 40, at);
	}
	test_swiglu(7, 300);
	return tap_done();
}
