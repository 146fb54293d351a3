/* dtype.h - tensor element types and conversions (f16/bf16 <-> f32). */
#ifndef FT_DTYPE_H
#define FT_DTYPE_H

#include <stddef.h>
#include <stdint.h>

typedef enum {
	FT_F32, FT_F16, FT_BF16, FT_F64, FT_I8, FT_U8, FT_I16, FT_I32, FT_I64, FT_BOOL,
	FT_DTYPE_COUNT
} ft_dtype;

size_t ft_dtype_size(ft_dtype t);
const char *ft_dtype_name(ft_dtype t);          /* safetensors spelling: "F32" */
int ft_dtype_parse(const char *s, ft_dtype *out); /* "F32"; -1 if unknown */
/* torch_dtype names in config.json: "float32", "float16", "bfloat16". */
const char *ft_dtype_torch_name(ft_dtype t);
int ft_dtype_parse_torch(const char *s, ft_dtype *out);

float ft_f16_to_f32(uint16_t h);
uint16_t ft_f32_to_f16(float f);    /* round to nearest even, like torch */
float ft_bf16_to_f32(uint16_t h);
uint16_t ft_f32_to_bf16(float f);   /* round to nearest even, NaN kept */

/* fp8 as torch.float8_e4m3fn (bias 7, 3 mantissa bits, max 448, no Inf:
 * 0x7F/0xFF is NaN) and torch.float8_e5m2 (bias 15, 2 bits, max 57344,
 * Inf and NaN as IEEE).  ft_f32_to_fp8 is torch's Tensor.to(float8): round
 * to nearest even, subnormals kept, e4m3fn saturating (464 and up, Inf
 * too, give +-448, as torch 2.12+), e5m2 not (61440 and up give +-Inf),
 * NaN keeps its sign;
 * ft_fp8_to_f32 is exact. */
typedef enum { FT_FP8_E4M3, FT_FP8_E5M2 } ft_fp8_format;
float ft_fp8_max(ft_fp8_format f);
uint8_t ft_f32_to_fp8(float v, ft_fp8_format f);
float ft_fp8_to_f32(uint8_t b, ft_fp8_format f);
/* torchao's dynamic tensorwise cast (hp_tensor_to_float8_dynamic with
 * to_fp8_saturated): amax = max |x| (NaN if any is), scale = fp8 max /
 * max(amax, 1e-12) in double rounded to float, q[i] = fp8(clamp(x[i] *
 * scale, +-max)) written as the float it is (exact).  Returns 1/scale in
 * float, torch's scale.reciprocal(): the factor _scaled_mm applies. */
float ft_fp8_quantize_tensorwise(float *q, const float *x, size_t n, ft_fp8_format f);

/* n elements of type `from` at src to f32 at dst, and back.  Only float
 * types (F32/F16/BF16/F64) are accepted; -1 otherwise. */
int ft_convert_to_f32(float *dst, const void *src, ft_dtype from, size_t n);
int ft_convert_from_f32(void *dst, ft_dtype to, const float *src, size_t n);

#endif
