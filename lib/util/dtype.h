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

/* n elements of type `from` at src to f32 at dst, and back.  Only float
 * types (F32/F16/BF16/F64) are accepted; -1 otherwise. */
int ft_convert_to_f32(float *dst, const void *src, ft_dtype from, size_t n);
int ft_convert_from_f32(void *dst, ft_dtype to, const float *src, size_t n);

#endif
