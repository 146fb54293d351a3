/* test_oft_emu.cc - OFT's Cayley-Neumann kernels (lib/cuda/oft_kernels.cuh,
 * the source nvcc compiles into libft_cuda.so) run on the host under
 * tests/emu/emu.h, against the CPU's ft_oft_rotation and
 * ft_oft_rotation_backward (lib/format/adapter_oft.c).
 *
 * Tolerance: none.  The kernels do the CPU's double b x b products, each
 * element's sum in the CPU's order (the powers, the transposed powers,
 * the pairs j, k - 1 - j), and round once to float as it does; this build
 * has -ffp-contract=off as the library, so R and dL/dw are bit-equal.  (On
 * the GPU nvcc may contract the double sums into FMAs: ~1e-16 relative,
 * far below the float rounding.)  Shapes: blocks smaller and larger than
 * the 256 threads (b = 5, 32), several blocks, the 5-term default, 2
 * terms (I + 2Q) and 1 (I).  A wrong triangle index, sign or transpose
 * would be O(|w|). */
#include "emu.h"
extern "C" {
#include "format/adapter_oft.h"
}
#include "tap.h"
#include "emu_test.h"
#include "cuda/oft_kernels.cuh"

static unsigned rng = 515;

static int same(const float *a, const float *b, size_t n, const char *what)
{
	for (size_t i = 0; i < n; i++)
		if (memcmp(&a[i], &b[i], sizeof(float))) {
			printf("# %s[%zu]: kernel %.9g, cpu %.9g\n", what, i, a[i], b[i]);
			return 0;
		}
	return 1;
}

static void test_case(int r, int b, int terms)
{
	size_t bb = (size_t)b * b, ne = (size_t)b * (b - 1) / 2;
	oft_coefs c;
	int K = ft_oft_coefs(terms, c.c);
	std::vector<float> w = rnd_vec(rng, r * ne, 0.2f), dR = rnd_vec(rng, r * bb, 1.0f);
	std::vector<float> dw0 = rnd_vec(rng, r * ne, 0.5f), dw1 = dw0, dw2 = dw0;
	std::vector<float> R1(r * bb), R2(r * bb);
	std::vector<double> scr((size_t)r * (K + 3) * bb);
	ft_oft_rotation(w.data(), r, b, terms, R1.data());
	launch([&] { oft_rotation_k(R2.data(), w.data(), b, K, c, scr.data()); }, dim3(r), 0);
	ok(same(R2.data(), R1.data(), R1.size(), "R"), "rotation: %d blocks of %d, %d terms: bit-equal",
	   r, b, terms);
	ft_oft_rotation_backward(w.data(), r, b, terms, dR.data(), dw1.data());
	launch([&] { oft_rotation_backward_k(dw2.data(), w.data(), dR.data(), b, K, c, scr.data()); },
	       dim3(r), 0);
	ok(same(dw2.data(), dw1.data(), dw1.size(), "dw"),
	   "rotation backward (accumulated): %d blocks of %d, %d terms: bit-equal", r, b, terms);
	/* 1 term: R = I, no gradient reaches w */
	int moved = memcmp(dw2.data(), dw0.data(), dw0.size() * sizeof(float)) != 0;
	ok(moved == (K > 0), "the gradient %s", K > 0 ? "moved dw" : "is zero (R = I)");
}

int main(void)
{
	emu_init();
	test_case(3, 5, 5);
	test_case(2, 32, 5);
	test_case(2, 4, 2);
	test_case(1, 6, 1);
	return tap_done();
}
