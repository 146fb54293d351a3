/* dtype.c - element types and f16/bf16 <-> f32 conversion; see dtype.h
 *
 * Conversions are done on the bit patterns with integer arithmetic so they
 * do not depend on the compiler's floating-point mode or the CPU.  They
 * match what torch produces on x86 (Tensor.to(dtype) on CPU) bit for bit,
 * checked by tests/unit/test_dtype.c against torch-made fixtures:
 *   f32 -> f16: round to nearest even, overflow to +-Inf, subnormals kept;
 *               NaN keeps sign and top payload bits and is made quiet
 *               (sign | 0x7E00 | mantissa >> 13), as the F16C instruction
 *               torch uses does.
 *   f32 -> bf16: round to nearest even; every NaN becomes 0xFFFF, as
 *               torch's AVX2/AVX-512 kernels do (torch's scalar fallback,
 *               ATEN_CPU_CAPABILITY=default, gives 0x7FC0 instead).
 *   f16 -> f32: exact; NaN made quiet (sign | 0x7FC00000 | mantissa << 13)
 *               as F16C and torch's vectorised kernel do (torch's scalar
 *               tail, e.g. a 1-element tensor, gives 0x7FFFFFFF instead).
 *   bf16 -> f32: exact, NaN payload kept as is (a shift, in torch too).
 */
#include "util/dtype.h"
#include "util/dtype_inline.h"
#include "util/error.h"

#include <math.h>
#include <string.h>

static const struct {
	const char *name, *torch;
	size_t size;
} dtypes[FT_DTYPE_COUNT] = {
	[FT_F32] = {"F32", "float32", 4},
	[FT_F16] = {"F16", "float16", 2},
	[FT_BF16] = {"BF16", "bfloat16", 2},
	[FT_F64] = {"F64", "float64", 8},
	[FT_I8] = {"I8", "int8", 1},
	[FT_U8] = {"U8", "uint8", 1},
	[FT_I16] = {"I16", "int16", 2},
	[FT_I32] = {"I32", "int32", 4},
	[FT_I64] = {"I64", "int64", 8},
	[FT_BOOL] = {"BOOL", "bool", 1},
};

static int valid(ft_dtype t) { return (unsigned)t < FT_DTYPE_COUNT; }

size_t ft_dtype_size(ft_dtype t) { return valid(t) ? dtypes[t].size : 0; }
const char *ft_dtype_name(ft_dtype t) { return valid(t) ? dtypes[t].name : "?"; }
const char *ft_dtype_torch_name(ft_dtype t) { return valid(t) ? dtypes[t].torch : "?"; }

int ft_dtype_parse(const char *s, ft_dtype *out)
{
	for (int i = 0; i < FT_DTYPE_COUNT; i++)
		if (strcmp(s, dtypes[i].name) == 0) {
			*out = (ft_dtype)i;
			return 0;
		}
	return ft_fail("unknown dtype \"%s\" (known: F32 F16 BF16 F64 I8 U8 I16 I32 I64 BOOL)", s);
}

int ft_dtype_parse_torch(const char *s, ft_dtype *out)
{
	/* config.json may say "torch.float16" or the aliases torch accepts */
	static const struct { const char *alias; ft_dtype t; } aliases[] = {
		{"half", FT_F16}, {"float", FT_F32}, {"double", FT_F64},
		{"long", FT_I64}, {"int", FT_I32}, {"short", FT_I16},
	};
	if (strncmp(s, "torch.", 6) == 0) s += 6;
	for (int i = 0; i < FT_DTYPE_COUNT; i++)
		if (strcmp(s, dtypes[i].torch) == 0) {
			*out = (ft_dtype)i;
			return 0;
		}
	for (size_t i = 0; i < sizeof aliases / sizeof *aliases; i++)
		if (strcmp(s, aliases[i].alias) == 0) {
			*out = aliases[i].t;
			return 0;
		}
	return ft_fail("unknown torch dtype \"%s\" (known: float32 float16 bfloat16 float64 int8 uint8 int16 int32 int64 bool)", s);
}

static uint32_t f32_bits(float f) { uint32_t u; memcpy(&u, &f, 4); return u; }
static float bits_f32(uint32_t u) { float f; memcpy(&f, &u, 4); return f; }

float ft_f16_to_f32(uint16_t h)
{
	uint32_t sign = (uint32_t)(h & 0x8000) << 16;
	uint32_t exp = (h >> 10) & 0x1f, mant = h & 0x3ff;
	if (exp == 0x1f) /* Inf, or NaN made quiet with its payload on top */
		return bits_f32(sign | 0x7f800000 | (mant ? 0x400000 | (mant << 13) : 0));
	if (exp != 0)
		return bits_f32(sign | ((exp + 112) << 23) | (mant << 13));
	if (mant == 0)
		return bits_f32(sign);
	/* subnormal: normalise; value is mant * 2^-24 */
	int e = -1;
	do { mant <<= 1; e++; } while (!(mant & 0x400));
	return bits_f32(sign | ((uint32_t)(112 - e) << 23) | ((mant & 0x3ff) << 13));
}

uint16_t ft_f32_to_f16(float f)
{
	uint32_t u = f32_bits(f);
	uint16_t sign = (u >> 16) & 0x8000;
	uint32_t abs = u & 0x7fffffff;
	if (abs > 0x7f800000) /* NaN: quiet, top payload bits kept */
		return sign | 0x7e00 | ((abs >> 13) & 0x3ff);
	if (abs >= 0x477ff000) /* rounds to >= 65520: Inf (includes Inf) */
		return sign | 0x7c00;
	if (abs < 0x38800000) { /* below 2^-14: f16 subnormal or zero */
		if (abs < 0x33000000) /* < 2^-25: rounds to zero (2^-25 is a tie to 0) */
			return sign;
		uint32_t exp = abs >> 23, mant = (abs & 0x7fffff) | 0x800000;
		int shift = 126 - (int)exp;          /* 14..24 */
		uint32_t q = mant >> shift, rem = mant & ((1u << shift) - 1);
		uint32_t half = 1u << (shift - 1);
		if (rem > half || (rem == half && (q & 1))) q++;
		return sign | (uint16_t)q;
	}
	/* normal: rebias exponent, round 13 dropped bits to nearest even; a
	 * carry into the exponent is the correct result */
	uint32_t r = abs - 0x38000000;
	r += 0xfff + ((r >> 13) & 1);
	return sign | (uint16_t)(r >> 13);
}

float ft_bf16_to_f32(uint16_t h) { return bits_f32((uint32_t)h << 16); }

uint16_t ft_f32_to_bf16(float f) { return ft_bf16_round(f); }

/* Loads go through memcpy: tensor data inside an mmap need not be aligned. */
int ft_convert_to_f32(float *dst, const void *src, ft_dtype from, size_t n)
{
	const unsigned char *p = src;
	switch (from) {
	case FT_F32:
		if (n) memmove(dst, src, n * 4);  /* dst may be NULL when n is 0 */
		return 0;
	case FT_F16:
		for (size_t i = 0; i < n; i++) {
			uint16_t h; memcpy(&h, p + 2 * i, 2);
			dst[i] = ft_f16_to_f32(h);
		}
		return 0;
	case FT_BF16:
		for (size_t i = 0; i < n; i++) {
			uint16_t h; memcpy(&h, p + 2 * i, 2);
			dst[i] = ft_bf16_to_f32(h);
		}
		return 0;
	case FT_F64:
		for (size_t i = 0; i < n; i++) {
			double d; memcpy(&d, p + 8 * i, 8);
			dst[i] = (float)d;
		}
		return 0;
	default:
		return ft_fail("cannot convert %s to F32: not a float type", ft_dtype_name(from));
	}
}

int ft_convert_from_f32(void *dst, ft_dtype to, const float *src, size_t n)
{
	unsigned char *p = dst;
	switch (to) {
	case FT_F32:
		if (n) memmove(dst, src, n * 4);  /* dst may be NULL when n is 0 */
		return 0;
	case FT_F16:
		for (size_t i = 0; i < n; i++) {
			uint16_t h = ft_f32_to_f16(src[i]);
			memcpy(p + 2 * i, &h, 2);
		}
		return 0;
	case FT_BF16:
		for (size_t i = 0; i < n; i++) {
			uint16_t h = ft_f32_to_bf16(src[i]);
			memcpy(p + 2 * i, &h, 2);
		}
		return 0;
	case FT_F64:
		for (size_t i = 0; i < n; i++) {
			double d = src[i];
			memcpy(p + 8 * i, &d, 8);
		}
		return 0;
	default:
		return ft_fail("cannot convert F32 to %s: not a float type", ft_dtype_name(to));
	}
}

/* ---- fp8: util/dtype_inline.h's, shared with the CUDA backend ---- */

float ft_fp8_max(ft_fp8_format f) { return f == FT_FP8_E4M3 ? 448.0f : 57344.0f; }

uint8_t ft_f32_to_fp8(float v, ft_fp8_format f) { return ft_fp8_round(v, f == FT_FP8_E5M2); }

float ft_fp8_to_f32(uint8_t b, ft_fp8_format f) { return ft_fp8_value(b, f == FT_FP8_E5M2); }

float ft_fp8_quantize_tensorwise(float *q, const float *x, size_t n, ft_fp8_format f)
{
	int e5 = f == FT_FP8_E5M2;
	float amax = 0;
	for (size_t i = 0; i < n; i++)
		amax = ft_fp8_amax_step(amax, x[i]);
	float scale = ft_fp8_scale(amax, e5);
	for (size_t i = 0; i < n; i++)
		q[i] = ft_fp8_quantize(x[i], scale, e5);
	return 1.0f / scale;
}
