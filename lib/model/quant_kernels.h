/* quant_kernels.h - the per-element dequantization formulas of
 * bitsandbytes' 4-bit and 8-bit weights, shared by the CPU path
 * (lib/model/model_quant.c) and the CUDA kernel (lib/cuda/quant.cu), so
 * both compute every weight with the same float32 operations as bnb:
 *
 *   nested absmax  a[b] = code8[qa[b]] * absmax2[b / 256] + offset
 *   4-bit weight   w[i] = code4[nibble(i)] * a[i / 64]
 *   8-bit weight   w[i] = CB[i] * (SCB[row] * (1/127))   (MatMul8bitFp)
 *
 * nibble(i): byte i/2, high nibble for even i (bnb packs q[2k] << 4 | q[2k+1]).
 *
 * LLM.int8() (bnb's MatMul8bitLt, llm_int8_threshold 6) on activations h
 * rounded to float16:
 *   outlier        |h| >= 6 (its input column goes the float32 way)
 *   row scale      s = (1 / absmax_row) * 127    (torch's 127 / t)
 *   int8 value     rint(h * s)
 *   output         acc * (SCA * SCB) * (1/127^2) + sum_c x[c] * (CB[c] * SCB * (1/127))
 *
 * Every product and sum is one float32 operation, in the order written.
 * The C side is built with -ffp-contract=off; nvcc would fuse a * b + c
 * into one fma (rounded once), so on the device FT_QMUL / FT_QADD are the
 * round-to-nearest intrinsics nvcc never contracts, and the GPU computes
 * the same bits as the CPU.
 */
#ifndef FT_QUANT_KERNELS_H
#define FT_QUANT_KERNELS_H

#include <stddef.h>
#include <math.h>
#include <stdint.h>
#include "util/dtype_inline.h"   /* FT_HD */

#define FT_Q4_BLOCK 64            /* bnb's default blocksize for 4-bit */
#define FT_Q4_BLOCK2 256          /* the nested absmax's blocksize */
#define FT_INT8_THRESHOLD 6.0f    /* BitsAndBytesConfig's llm_int8_threshold */

#ifdef __CUDA_ARCH__
#define FT_QMUL(a, b) __fmul_rn(a, b)
#define FT_QADD(a, b) __fadd_rn(a, b)
#define FT_QDIV(a, b) __fdiv_rn(a, b)
#else
#define FT_QMUL(a, b) ((a) * (b))
#define FT_QADD(a, b) ((a) + (b))
#define FT_QDIV(a, b) ((a) / (b))
#endif

static inline FT_HD int ft_k_nibble(const uint8_t *packed, size_t i)
{
	uint8_t b = packed[i >> 1];
	return i & 1 ? b & 15 : b >> 4;
}

/* absmax of 4-bit block b: plain, or double-quantized (qa != NULL). */
static inline FT_HD float ft_k_q4_absmax(const float *absmax, const uint8_t *qa,
					 const float *absmax2, const float *code8,
					 float offset, size_t b)
{
	if (!qa)
		return absmax[b];
	return FT_QADD(FT_QMUL(code8[qa[b]], absmax2[b / FT_Q4_BLOCK2]), offset);
}

static inline FT_HD float ft_k_q4_weight(float code, float absmax)
{
	return FT_QMUL(code, absmax);
}

static inline FT_HD float ft_k_int8_scale(float scb)
{
	return scb * (float)(1.0 / 127.0);
}

static inline FT_HD float ft_k_int8_weight(int8_t cb, float scb)
{
	return FT_QMUL((float)cb, ft_k_int8_scale(scb));
}

/* ---- LLM.int8() ---- */

/* |h| of an activation rounded to float16 (h16: that rounding done). */
static inline FT_HD int ft_k_int8_outlier(float h16)
{
	return fabsf(h16) >= FT_INT8_THRESHOLD;
}

/* The row's int8 scale from its absmax over the non-outliers (am > 0). */
static inline FT_HD float ft_k_int8_row_scale(float am)
{
	return FT_QMUL(FT_QDIV(1.0f, am), 127.0f);
}

static inline FT_HD float ft_k_int8_act(float h16, float s)
{
	return rintf(FT_QMUL(h16, s));   /* nearbyint: ties to even */
}

/* The int32 product's output, before the outlier columns. */
static inline FT_HD float ft_k_int8_out(int32_t acc, float sca, float scb)
{
	return FT_QMUL(FT_QMUL((float)acc, FT_QMUL(sca, scb)), 6.200124e-05f);
}

/* v plus outlier column x * its dequantized weight (CB * SCB / 127). */
static inline FT_HD float ft_k_int8_outlier_add(float v, float x, int8_t cb, float scb)
{
	return FT_QADD(v, FT_QMUL(x, FT_QMUL(FT_QMUL((float)cb, scb), 7.874015718698502e-3f)));
}

#endif
