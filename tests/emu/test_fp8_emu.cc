/* test_fp8_emu.cc - --fp8's device kernels (lib/cuda/fp8_kernels.cuh, the
 * source nvcc compiles into libft_cuda.so) run on the host under
 * tests/emu/emu.h, against the CPU's ft_fp8_quantize_tensorwise
 * (lib/util/dtype.c), as fp8.cu's quantize chains them: amax partials,
 * the scale, the cast.
 *
 * Tolerance: none.  amax is a maximum (exact in any order), the scale and
 * the cast are util/dtype_inline.h's functions, the ones dtype.c calls,
 * so the scale, its inverse and every quantized value must be bit-equal
 * (a NaN as NaN: the CPU's and the kernel's are both every-NaN-is-NaN),
 * on e4m3fn and e5m2, for: random values over many blocks; zeros only
 * (amax clamped at 1e-12); values whose scaled magnitudes are fp8
 * subnormals and f32 subnormals; a scale whose rounding pushes the
 * largest value past fp8 max (the saturating clamp); an Inf; a NaN
 * (amax NaN: everything NaN); a strided [rows, cols] operand (a module's
 * columns of a fused gradient); bf16 in and bf16 out (the half modes'
 * operands: every fp8 value exact in bf16). */
#include "emu.h"
extern "C" {
#include "util/dtype.h"
}
#include "tap.h"
#include "emu_test.h"
#include "cuda/fp8_kernels.cuh"
#include <cmath>

static emu_dim3 grid(size_t n) { return { (unsigned)((n + 255) / 256), 1, 1 }; }

/* fp8.cu's chain on x [rows, cols] (stride ld, of type at) into q (of
 * type qt); sc: scale, 1/scale. */
static void chain(void *q, int qt, const void *x, int at, int rows, int cols, int ld, int e5,
		  float sc[2])
{
	std::vector<float> part(FT_FP8_BLOCKS);
	float *pp = part.data();
	size_t n = (size_t)rows * cols;
	launch([&] { fp8_amax_k(pp, x, at, rows, cols, ld); }, { FT_FP8_BLOCKS, 1, 1 }, 0,
	       FT_FP8_TPB);
	launch([&] { fp8_scale_k(sc, pp, FT_FP8_BLOCKS, e5); }, { 1, 1, 1 }, 0, FT_FP8_TPB);
	launch([&] { fp8_quant_k(q, qt, x, at, rows, cols, ld, sc, e5); }, grid(n), 0);
}

static int same_bits(float a, float b)
{
	return (a != a && b != b) || !memcmp(&a, &b, sizeof a);
}

/* Compare kernel vs CPU on x (fp32, contiguous); returns 1 when equal. */
static int check(const std::vector<float> &x, int e5, const char *what)
{
	size_t n = x.size();
	std::vector<float> cpu(n), gpu(n);
	float sc[2];
	float inv = ft_fp8_quantize_tensorwise(cpu.data(), x.data(), n, e5 ? FT_FP8_E5M2 : FT_FP8_E4M3);
	chain(gpu.data(), FT_ACT_F32, x.data(), FT_ACT_F32, 1, (int)n, (int)n, e5, sc);
	if (!same_bits(sc[1], inv)) {
		printf("# %s: inverse scale kernel %.9g, cpu %.9g\n", what, sc[1], inv);
		return 0;
	}
	for (size_t i = 0; i < n; i++)
		if (!same_bits(gpu[i], cpu[i])) {
			printf("# %s[%zu] (x %.9g): kernel %.9g, cpu %.9g\n", what, i, x[i], gpu[i],
			       cpu[i]);
			return 0;
		}
	return 1;
}

static void test_cases(int e5)
{
	const char *f = e5 ? "e5m2" : "e4m3fn";
	unsigned st = 17 + e5;
	/* more elements than the grid's threads: the grid-stride loop and
	 * every partial */
	ok(check(rnd_vec(st, 40000, 3.0f), e5, "random"), "%s: 40000 random values bit-equal", f);
	ok(check(std::vector<float>(1000, 0.0f), e5, "zeros"),
	   "%s: all zeros (amax clamped at 1e-12) bit-equal", f);
	/* one large value and many tiny ones: the tiny ones scale to fp8
	 * subnormals (and below: flushed to +-0), f32 subnormals among them */
	std::vector<float> s = rnd_vec(st, 3000, 1e-6f);
	s[0] = 1.0f, s[1] = 1e-40f, s[2] = -1e-42f, s[3] = -0.0f, s[4] = 4e-3f, s[5] = -3e-3f;
	for (int i = 6; i < 60; i++)
		s[i] = ldexpf(1.0f + i / 64.0f, -(i % 24) - 4) * (i & 1 ? -1 : 1);
	ok(check(s, e5, "subnormals"), "%s: fp8 and f32 subnormals, -0 bit-equal", f);
	/* fp8 max / amax rounded up: amax * scale > max, the clamp saturates */
	std::vector<float> sat = rnd_vec(st, 500, 1.0f);
	int hits = 0;
	for (float a = 1.0f; a < 1.01f && !hits; a = nextafterf(a, 2.0f)) {
		float sc = ft_fp8_scale(a, e5), mx = ft_fp8_max(e5 ? FT_FP8_E5M2 : FT_FP8_E4M3);
		if (a * sc > mx)
			sat[7] = -a, sat[8] = a, hits = 1;
	}
	ok(hits && check(sat, e5, "saturation"),
	   "%s: a value past fp8 max after scaling saturates, bit-equal", f);
	std::vector<float> inf = rnd_vec(st, 300, 2.0f);
	inf[100] = INFINITY;
	ok(check(inf, e5, "inf"), "%s: an Inf (scale 0) bit-equal", f);
	std::vector<float> nan = rnd_vec(st, 300, 2.0f);
	nan[250] = NAN;
	ok(check(nan, e5, "nan"), "%s: a NaN (amax NaN, all NaN) as the CPU", f);
}

/* A module's columns [c0, c0 + cols) of a fused [rows, ld] buffer. */
static void test_strided(void)
{
	unsigned st = 5;
	int rows = 37, ld = 96, c0 = 32, cols = 48;
	std::vector<float> buf = rnd_vec(st, (size_t)rows * ld, 1.0f), x((size_t)rows * cols);
	buf[5 * ld + 2] = 50.0f;   /* outside the columns: must not be the amax */
	for (int r = 0; r < rows; r++)
		memcpy(&x[(size_t)r * cols], &buf[(size_t)r * ld + c0], cols * sizeof(float));
	std::vector<float> cpu(x.size()), gpu(x.size());
	float sc[2], inv = ft_fp8_quantize_tensorwise(cpu.data(), x.data(), x.size(), FT_FP8_E5M2);
	chain(gpu.data(), FT_ACT_F32, buf.data() + c0, FT_ACT_F32, rows, cols, ld, 1, sc);
	ok(same_bits(sc[1], inv) && !memcmp(cpu.data(), gpu.data(), x.size() * sizeof(float)),
	   "e5m2: a strided [%d, %d] of stride %d bit-equal to its contiguous copy's", rows, cols, ld);
}

/* bf16 in (a half activation), bf16 out (the half modes' operand). */
static void test_bf16(void)
{
	unsigned st = 9;
	size_t n = 5000;
	std::vector<float> x = rnd_vec(st, n, 4.0f), xw(n), cpu(n);
	std::vector<uint16_t> xh(n), qh(n);
	for (size_t i = 0; i < n; i++) {
		xh[i] = ft_f32_to_bf16(x[i]);
		xw[i] = ft_bf16_to_f32(xh[i]);
	}
	float sc[2], inv = ft_fp8_quantize_tensorwise(cpu.data(), xw.data(), n, FT_FP8_E4M3);
	chain(qh.data(), FT_ACT_BF16, xh.data(), FT_ACT_BF16, 1, (int)n, (int)n, 0, sc);
	int eq = same_bits(sc[1], inv);
	for (size_t i = 0; eq && i < n; i++)
		eq = same_bits(ft_bf16_to_f32(qh[i]), cpu[i]);
	ok(eq, "e4m3fn: bf16 in, bf16 out: every value exact, bit-equal to the CPU's on the widened input");
}

int main(void)
{
	test_cases(0);
	test_cases(1);
	test_strided();
	test_bf16();
	return tap_done();
}
