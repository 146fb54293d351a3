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
 */
#ifndef FT_QUANT_KERNELS_H
#define FT_QUANT_KERNELS_H

#include <stddef.h>
#include <stdint.h>
#include "util/dtype_inline.h"   /* FT_HD */

#define FT_Q4_BLOCK 64            /* bnb's default blocksize for 4-bit */
#define FT_Q4_BLOCK2 256          /* the nested absmax's blocksize */

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
	return code8[qa[b]] * absmax2[b / FT_Q4_BLOCK2] + offset;
}

static inline FT_HD float ft_k_int8_scale(float scb)
{
	return scb * (float)(1.0 / 127.0);
}

#endif
