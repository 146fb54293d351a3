/* act_kernels.cuh - the element type of the activation buffers that the
 * half modes store in half (--bf16 / --fp16, see docs/CUDA.md "Mixed
 * precision"): a runtime code per buffer, read and written through
 * ft_k_act_get / ft_k_act_put, so one kernel serves the fp32 mode (the
 * parity path, the same float stores as before) and both half types.
 * The rounding is model/kernels.h's round-to-nearest-even, the one the
 * matmul-operand casts and the CPU use: a kernel writing its output in
 * half gives the bits that its fp32 output cast afterwards gave.
 * Inline helpers only (common.cuh includes it); the kernels that use them
 * are in norm_kernels.cuh, compiled by tests/emu too. */
#ifndef FT_CUDA_ACT_KERNELS_CUH
#define FT_CUDA_ACT_KERNELS_CUH

#include <stddef.h>
#include <stdint.h>
#include "model/kernels.h"

/* ft_cu_act_type (common.cuh) maps a model to one of these */
enum { FT_ACT_F32 = 0, FT_ACT_BF16 = 1, FT_ACT_F16 = 2 };

static inline FT_HD float ft_k_act_get(const void *p, size_t i, int at)
{
	if (at == FT_ACT_F32)
		return ((const float *)p)[i];
	uint16_t h = ((const uint16_t *)p)[i];
	return at == FT_ACT_BF16 ? ft_k_bf16_to_f32(h) : ft_k_f16_to_f32(h);
}

static inline FT_HD void ft_k_act_put(void *p, size_t i, float v, int at)
{
	if (at == FT_ACT_F32)
		((float *)p)[i] = v;
	else
		((uint16_t *)p)[i] = at == FT_ACT_BF16 ? ft_k_f32_to_bf16(v) : ft_k_f32_to_f16(v);
}

/* Row i of a row kernel (D elements) starts at (i / H) * ld + (i % H) * D:
 * H = 1, ld = D for a plain [N, D] array; the heads of a fused q|k|v
 * buffer otherwise (H heads of hd per token, token stride ld). */
typedef struct { int H, ld; } ft_cu_rows;
static inline ft_cu_rows ft_cu_rows_of(int D) { ft_cu_rows r = { 1, D }; return r; }
static inline FT_HD size_t ft_cu_row(ft_cu_rows r, size_t i, int D)
{
	return i / r.H * r.ld + i % r.H * D;
}

#endif
