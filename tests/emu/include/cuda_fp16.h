/* cuda_fp16.h - __half for the host emulation (tests/emu/emu.h): storage
 * and the round-to-nearest-even conversions of lib/model/kernels.h,
 * which are the CPU path's (and match the toolkit's __float2half_rn). */
#ifndef FT_EMU_CUDA_FP16_H
#define FT_EMU_CUDA_FP16_H
#include <stdint.h>
#include "model/kernels.h"

struct __half { uint16_t __x; };
static inline __half __float2half_rn(float f) { __half h; h.__x = ft_k_f32_to_f16(f); return h; }
static inline __half __float2half(float f) { return __float2half_rn(f); }
static inline float __half2float(__half h) { return ft_k_f16_to_f32(h.__x); }
#endif
