/* dtype_inline.h - element conversions that C and CUDA code share.
 *
 * static inline, and __host__ __device__ under nvcc (FT_HD), so that
 * lib/util/dtype.c, the kernel bodies of lib/model/kernels.h and through
 * them the CUDA backend (lib/cuda/) round with one implementation: the
 * CPU and the GPU cannot drift apart bit-wise.  See dtype.c for what each
 * conversion matches in torch.
 */
#ifndef FT_DTYPE_INLINE_H
#define FT_DTYPE_INLINE_H

#include <stdint.h>

#ifdef __CUDACC__
#define FT_HD __host__ __device__
#else
#define FT_HD
#endif

/* f32 -> bf16 bits: round to nearest even; every NaN becomes 0xFFFF. */
static inline FT_HD uint16_t ft_bf16_round(float f)
{
	union { float f; uint32_t u; } c;
	c.f = f;
	uint32_t u = c.u;
	if ((u & 0x7fffffffu) > 0x7f800000u)
		return 0xffff;
	u += 0x7fffu + ((u >> 16) & 1u);
	return (uint16_t)(u >> 16);
}

/* ---- fp8 (lib/util/dtype.c's ft_f32_to_fp8 and friends call these; the
 * CUDA backend's fp8 kernels too, lib/cuda/fp8_kernels.cuh) ----
 * On the bit pattern as c10's fp8e4m3fn_from_fp32_value and
 * fp8e5m2_from_fp32_value do, generalised over the two formats (e5m2: 0
 * e4m3fn, 1 e5m2), with what torch 2.15's eager cast does past the top:
 * e4m3fn saturates (finite overflow and Inf give +-448), e5m2 rounds to
 * +-Inf.  A normal result rounds the f32 mantissa to mb bits with the
 * add-half-minus-one-plus-odd trick (round to nearest even); a subnormal
 * one rounds the full 24-bit significand shifted to the subnormal
 * quantum, ties to even. */
static inline FT_HD uint8_t ft_fp8_round(float v, int e5m2)
{
	union { float f; uint32_t u; } c;
	c.f = v;
	uint32_t u = c.u;
	int bias = e5m2 ? 15 : 7, mb = e5m2 ? 2 : 3;
	uint32_t over = e5m2 ? 143u << 23 : 0x43E80000u;   /* 65536 / 464 and up */
	uint8_t over_code = e5m2 ? 0x7C : 0x7E;             /* Inf / 448 */
	uint8_t sign = (uint8_t)((u >> 24) & 0x80);
	u &= 0x7FFFFFFFu;
	if (u > 0x7F800000u)   /* NaN, in both formats */
		return sign | 0x7F;
	if (u >= over)
		return sign | over_code;
	int shift = 23 - mb;
	uint32_t min_normal = (uint32_t)(127 + 1 - bias) << 23;
	if (u >= min_normal) {
		uint32_t odd = (u >> shift) & 1;
		u += ((uint32_t)(bias - 127) << 23) + ((1u << (shift - 1)) - 1) + odd;
		return sign | (uint8_t)(u >> shift);
	}
	int e = (int)(u >> 23);            /* biased f32 exponent, < 128 - bias */
	if (e == 0)                        /* f32 subnormals are far below */
		return sign;
	uint32_t sig = (u & 0x7FFFFFu) | 0x800000u;
	int s = (1 - bias - mb) - (e - 127 - 23);   /* right shift, >= 1 */
	if (s > 25)
		return sign;
	uint32_t q = sig >> s, rem = sig & ((1u << s) - 1), half = 1u << (s - 1);
	if (rem > half || (rem == half && (q & 1)))
		q++;
	return sign | (uint8_t)q;   /* q == 1 << mb is the smallest normal */
}

/* The float an fp8 byte is (exact); every NaN is 0x7FC00000. */
static inline FT_HD float ft_fp8_value(uint8_t b, int e5m2)
{
	union { float f; uint32_t u; } c;
	int bias = e5m2 ? 15 : 7, mb = e5m2 ? 2 : 3, emax = (1 << (7 - mb)) - 1;
	int ex = (b >> mb) & emax, mant = b & ((1 << mb) - 1);
	uint32_t sign = (uint32_t)(b & 0x80) << 24;
	if (e5m2 ? ex == emax : (b & 0x7F) == 0x7F) {
		c.u = e5m2 && mant == 0 ? sign | 0x7F800000u : 0x7FC00000u;
		return c.f;
	}
	if (ex == 0) {   /* mant * 2^(1 - bias - mb): a normal float, exact */
		c.f = (float)mant;
		if (mant)
			c.u -= (uint32_t)(bias + mb - 1) << 23;
		c.u |= sign;
		return c.f;
	}
	c.u = sign | ((uint32_t)(ex - bias + 127) << 23) | ((uint32_t)mant << (23 - mb));
	return c.f;
}

/* torchao's amax as torch.max(|x|): the larger, a NaN once seen kept
 * (any order gives the same: max is exact, NaN absorbing). */
static inline FT_HD float ft_fp8_amax_step(float m, float x)
{
	float a = x < 0 ? -x : x;   /* a NaN stays NaN */
	return m != m || a <= m ? m : a;
}

/* amax_to_scale: fp8 max / max(amax, 1e-12) in double, rounded to float */
static inline FT_HD float ft_fp8_scale(float amax, int e5m2)
{
	double a = amax, mx = e5m2 ? 57344.0 : 448.0;
	return (float)(mx / (a > 1e-12 || a != a ? a : 1e-12));
}

/* One element of to_fp8_saturated: x * scale clamped to +-max (NaN
 * passes), to fp8, as the float it is. */
static inline FT_HD float ft_fp8_quantize(float x, float scale, int e5m2)
{
	float mx = e5m2 ? 57344.0f : 448.0f, y = x * scale;
	y = y > mx ? mx : y < -mx ? -mx : y;
	return ft_fp8_value(ft_fp8_round(y, e5m2), e5m2);
}

#endif
