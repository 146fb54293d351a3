/* test_norm_emu.cc - the fused residual add + RMSNorm kernel
 * (lib/cuda/norm_kernels.cuh, the source nvcc compiles into
 * libft_cuda.so) run on the host under tests/emu/emu.h, against the CPU
 * path's residual add and ft_rmsnorm_forward (lib/model/layers.c).
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
	launch([&] { add_rmsnorm_forward_k(s2.data(), o2.data(), r2.data(), a.data(), b.data(),
					   w.data(), D, 1e-5f); },
	       { (unsigned)N, 1, 1 }, 0);
	double eo = 0, er = 0;
	for (size_t i = 0; i < n; i++)
		eo = fmax(eo, fabs((double)o2[i] - o1[i]) / fmax(fabs((double)o1[i]), 1e-3));
	for (int i = 0; i < N; i++)
		er = fmax(er, fabs((double)r2[i] - r1[i]) / fabs((double)r1[i]));
	ok(memcmp(s1.data(), s2.data(), n * sizeof(float)) == 0 && eo <= 2e-6 && er <= 2e-6,
	   "add + rmsnorm N=%d D=%d: sum bit-identical, out %.2g, rstd %.2g", N, D, eo, er);
}

int main(void)
{
	emu_init();
	test_case(3, 64);      /* fewer columns than threads */
	test_case(5, 1000);    /* D off the 256 threads */
	test_case(2, 4096);
	return tap_done();
}
