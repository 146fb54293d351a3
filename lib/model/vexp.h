/* vexp.h - an exp() for float that vectorizes inside `omp simd` loops.
 *
 * libm's expf is a function call per element, so the elementwise layers
 * that need one (SiLU, softmax in attention and in the loss) could not
 * vectorize and took about 7% of a small model's training step.  PyTorch's
 * CPU kernels use SLEEF's vector exp for the same reason; this one is of
 * the same kind: Cody-Waite reduction by ln 2 and a degree-7 Taylor
 * polynomial on [-ln2/2, ln2/2] (truncation error below 6e-9), then the
 * power of two built in the exponent bits.  Against glibc's correctly
 * rounded expf it is at most 1 ulp apart over [-104, 89] (a sweep in
 * tests/unit/test_layers.c); exact 0 below the float range, +inf above it,
 * NaN for NaN.  It has no branches: with config.mk's -fno-trapping-math
 * GCC if-converts the selects and turns a loop of calls into AVX2 code. */
#ifndef FT_VEXP_H
#define FT_VEXP_H

#include <stdint.h>
#include <string.h>
#include <math.h>

/* Shared with the CUDA kernels through lib/model/kernels.h.  The quiet
 * comparison builtins are GCC's; device code has no traps to avoid. */
#ifdef __CUDACC__
#define FT_VEXP_HD __host__ __device__
#endif
#ifdef __CUDA_ARCH__
#define FT_VEXP_GE(a, b) ((a) >= (b))
#define FT_VEXP_GT(a, b) ((a) > (b))
#define FT_VEXP_LT(a, b) ((a) < (b))
#define FT_VEXP_NAN(a) ((a) != (a))
#else
#define FT_VEXP_GE(a, b) __builtin_isgreaterequal(a, b)
#define FT_VEXP_GT(a, b) __builtin_isgreater(a, b)
#define FT_VEXP_LT(a, b) __builtin_isless(a, b)
#define FT_VEXP_NAN(a) __builtin_isunordered(a, a)
#endif
#ifndef FT_VEXP_HD
#define FT_VEXP_HD
#endif

static inline FT_VEXP_HD float ft_vexpf(float x)
{
	/* Clamp first (a NaN goes to the low end) so the integer conversion
	 * below is always in range; NaN and overflow are restored at the end. */
	float xc = FT_VEXP_GE(x, -104.0f) ? x : -104.0f;
	xc = FT_VEXP_GT(xc, 88.75f) ? 88.75f : xc;
	/* round to nearest by the 1.5 * 2^23 shift: rintf is a call that
	 * keeps the loop from vectorizing */
	float n = (xc * 1.44269504088896341f + 12582912.0f) - 12582912.0f;
	/* ln 2 split so n * hi is exact for |n| < 256 */
	float r = fmaf(n, -0.693145751953125f, xc);
	r = fmaf(n, -1.428606765330187045e-06f, r);
	float p = 1.0f / 5040;
	p = fmaf(p, r, 1.0f / 720);
	p = fmaf(p, r, 1.0f / 120);
	p = fmaf(p, r, 1.0f / 24);
	p = fmaf(p, r, 1.0f / 6);
	p = fmaf(p, r, 0.5f);
	p = fmaf(p, r, 1.0f);
	p = fmaf(p, r, 1.0f);
	/* 2^n as two factors, so n = 128 (results near FLT_MAX) and
	 * n = -126 and below (subnormal results) are both reachable. */
	int32_t k = (int32_t)n, k1 = k / 2, k2 = k - k1;
	uint32_t b1 = (uint32_t)(k1 + 127) << 23, b2 = (uint32_t)(k2 + 127) << 23;
	float s1, s2;
	memcpy(&s1, &b1, sizeof s1);
	memcpy(&s2, &b2, sizeof s2);
	float y = p * s1 * s2;
	/* The special cases, selected on the bits (the NaN passes through
	 * with its payload). */
	uint32_t yb, xb;
	memcpy(&yb, &y, sizeof yb);
	memcpy(&xb, &x, sizeof xb);
	yb = FT_VEXP_LT(x, -104.0f) ? 0u : yb;
	yb = FT_VEXP_GT(x, 88.75f) ? 0x7f800000u : yb;
	yb = FT_VEXP_NAN(x) ? xb : yb;
	memcpy(&y, &yb, sizeof y);
	return y;
}

#endif
