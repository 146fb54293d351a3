/* cuda_bf16.h - __nv_bfloat16 for the host emulation (tests/emu/emu.h),
 * as cuda_fp16.h: storage and lib/model/kernels.h's RNE conversions. */
#ifndef FT_EMU_CUDA_BF16_H
#define FT_EMU_CUDA_BF16_H
#include <stdint.h>
#include "model/kernels.h"

struct __nv_bfloat16 { uint16_t __x; };
static inline __nv_bfloat16 __float2bfloat16_rn(float f)
{
	__nv_bfloat16 h;
	h.__x = ft_k_f32_to_bf16(f);
	return h;
}
static inline __nv_bfloat16 __float2bfloat16(float f) { return __float2bfloat16_rn(f); }
static inline float __bfloat162float(__nv_bfloat16 h) { return ft_k_bf16_to_f32(h.__x); }
#endif
