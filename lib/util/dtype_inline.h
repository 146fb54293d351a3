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

#endif
