/* test_dtype.c - f16/bf16 <-> f32 against torch, bit for bit.
 * Fixture: tests/fixtures/safetensors/dtype.json, from
 * tests/reference/make_safetensors_fixture.py (see it for how the input
 * sets and hashes are made; the generator below mirrors dtype_inputs()). */
#include "util/dtype.h"
#include "util/error.h"
#include "util/json.h"
#include "tap.h"

#include <stdlib.h>
#include <string.h>

#define FIX "tests/fixtures/safetensors/dtype.json"

static uint32_t fbits(float f) { uint32_t u; memcpy(&u, &f, 4); return u; }
static float bitsf(uint32_t u) { float f; memcpy(&f, &u, 4); return f; }

/* FNV-1a 64, one xor-multiply per 16- or 32-bit word (as the script) */
typedef struct { uint64_t h; } fnv;
static void fnv_init(fnv *s) { s->h = 0xcbf29ce484222325ULL; }
static void fnv_add(fnv *s, uint32_t w) { s->h = (s->h ^ w) * 0x100000001b3ULL; }
static int fnv_is(const fnv *s, const char *hex)
{
	char buf[17];
	snprintf(buf, sizeof buf, "%016llx", (unsigned long long)s->h);
	return hex && strcmp(buf, hex) == 0;
}

static void push4(uint32_t *v, size_t *n, uint32_t a, uint32_t b, uint32_t c, uint32_t d)
{
	uint32_t q[4] = {a, b, c, d};
	for (int s = 0; s < 2; s++)
		for (int i = 0; i < 4; i++) v[(*n)++] = q[i] | (s ? 0x80000000u : 0);
}

/* The script's input set: halves and their ties, bf16 and their ties, a
 * sweep over all f32 patterns. */
static uint32_t *make_inputs(size_t *np)
{
	size_t cap = 0x7c00 * 8 + 0x7f80 * 8 + (1u << 20), n = 0;
	uint32_t *v = ft_xmalloc(cap * sizeof *v);
	for (uint32_t h = 0; h < 0x7c00; h++) {
		float x = ft_f16_to_f32((uint16_t)h);
		float nx = h + 1 < 0x7c00 ? ft_f16_to_f32((uint16_t)(h + 1)) : 65536.0f;
		uint32_t m = fbits((float)(((double)x + (double)nx) / 2));
		push4(v, &n, fbits(x), m, m - 1, m + 1);
	}
	for (uint32_t b = 0; b < 0x7f80; b++) {
		uint32_t x = b << 16, m = x | 0x8000;
		push4(v, &n, x, m, m - 1, m + 1);
	}
	for (uint64_t i = 0; i < (1u << 20); i++)
		v[n++] = (uint32_t)(i * 2654435761ULL);
	*np = n;
	return v;
}

static void test_fixture(void)
{
	json_t *fx = ft_json_load_file(FIX);
	if (!ok(fx != NULL, "load %s: %s", FIX, fx ? "" : ft_errmsg())) return;

	fnv a, b;
	fnv_init(&a); fnv_init(&b);
	for (uint32_t h = 0; h < 65536; h++) {
		fnv_add(&a, fbits(ft_f16_to_f32((uint16_t)h)));
		fnv_add(&b, fbits(ft_bf16_to_f32((uint16_t)h)));
	}
	ok(fnv_is(&a, ft_json_str(fx, "f16_to_f32_all", NULL)), "f16 -> f32: all 65536 patterns match torch");
	ok(fnv_is(&b, ft_json_str(fx, "bf16_to_f32_all", NULL)), "bf16 -> f32: all 65536 patterns match torch");

	size_t n;
	uint32_t *in = make_inputs(&n);
	fnv hi, h16, hb;
	fnv_init(&hi); fnv_init(&h16); fnv_init(&hb);
	for (size_t i = 0; i < n; i++) {
		fnv_add(&hi, in[i]);
		fnv_add(&h16, ft_f32_to_f16(bitsf(in[i])));
		fnv_add(&hb, ft_f32_to_bf16(bitsf(in[i])));
	}
	ok((long long)n == ft_json_int(fx, "n_inputs", -1) && fnv_is(&hi, ft_json_str(fx, "inputs_hash", NULL)),
	   "f32 input set (%zu values) is the script's", n);
	ok(fnv_is(&h16, ft_json_str(fx, "f32_to_f16", NULL)), "f32 -> f16: %zu values match torch (ties, subnormals, overflow)", n);
	ok(fnv_is(&hb, ft_json_str(fx, "f32_to_bf16", NULL)), "f32 -> bf16: %zu values match torch", n);

	/* Explicit specials, so a failure says which value */
	json_t *sp = json_object_get(fx, "specials");
	size_t i;
	json_t *row;
	int bad = 0;
	json_array_foreach(sp, i, row) {
		uint32_t x = (uint32_t)strtoul(json_string_value(json_array_get(row, 0)), NULL, 16);
		unsigned w16 = (unsigned)strtoul(json_string_value(json_array_get(row, 1)), NULL, 16);
		unsigned wb = (unsigned)strtoul(json_string_value(json_array_get(row, 2)), NULL, 16);
		unsigned g16 = ft_f32_to_f16(bitsf(x)), gb = ft_f32_to_bf16(bitsf(x));
		if (g16 != w16 || gb != wb) {
			bad++;
			printf("# %08x: f16 %04x (torch %04x), bf16 %04x (torch %04x)\n", x, g16, w16, gb, wb);
		}
	}
	ok(json_array_size(sp) > 30 && bad == 0, "%zu special values (NaN payloads, ties, limits) match torch",
	   json_array_size(sp));
	free(in);
	json_decref(fx);
}

static void test_basics(void)
{
	ok(ft_f32_to_f16(1.0f) == 0x3c00 && ft_f32_to_bf16(1.0f) == 0x3f80, "1.0");
	ok(ft_f32_to_f16(65504.0f) == 0x7bff && ft_f32_to_f16(65520.0f) == 0x7c00, "f16 max and overflow tie");
	ok(ft_f32_to_f16(5.9604645e-8f) == 0x0001 && ft_f16_to_f32(1) == 5.9604645e-8f, "smallest f16 subnormal");
	/* round trips of every finite half through f32 */
	int rt = 1;
	for (uint32_t h = 0; h < 65536; h++) {
		if ((h & 0x7c00) == 0x7c00 && (h & 0x3ff)) continue; /* NaN */
		if (ft_f32_to_f16(ft_f16_to_f32((uint16_t)h)) != h) rt = 0;
		if ((h & 0x7f80) != 0x7f80 || !(h & 0x7f))
			if (ft_f32_to_bf16(ft_bf16_to_f32((uint16_t)h)) != h) rt = 0;
	}
	ok(rt, "every non-NaN f16/bf16 survives f16 -> f32 -> f16");

	for (int t = 0; t < FT_DTYPE_COUNT; t++) {
		ft_dtype d, e;
		int good = ft_dtype_parse(ft_dtype_name(t), &d) == 0 && d == (ft_dtype)t &&
			   ft_dtype_parse_torch(ft_dtype_torch_name(t), &e) == 0 && e == (ft_dtype)t;
		ok(good, "dtype %s / %s parses back", ft_dtype_name(t), ft_dtype_torch_name(t));
	}
	static const size_t sizes[FT_DTYPE_COUNT] = {4, 2, 2, 8, 1, 1, 2, 4, 8, 1};
	int sz = 1;
	for (int t = 0; t < FT_DTYPE_COUNT; t++) sz &= ft_dtype_size(t) == sizes[t];
	ok(sz, "element sizes");
	ft_dtype d;
	ok(ft_dtype_parse_torch("torch.bfloat16", &d) == 0 && d == FT_BF16, "\"torch.bfloat16\"");
	ok(ft_dtype_parse_torch("half", &d) == 0 && d == FT_F16, "\"half\" alias");
	int bad = ft_dtype_parse("F8_E4M3", &d);
	ok(bad < 0 && strstr(ft_errmsg(), "F8_E4M3"), "unknown dtype named: %s", ft_errmsg());
	ok(ft_dtype_parse_torch("complex64", &d) < 0 && strstr(ft_errmsg(), "complex64"), "unknown torch dtype named");
	ok(ft_dtype_size((ft_dtype)99) == 0 && strcmp(ft_dtype_name((ft_dtype)99), "?") == 0, "out-of-range dtype is safe");
}

static void test_bulk(void)
{
	enum { N = 1001 };
	float src[N], back[N];
	for (int i = 0; i < N; i++) src[i] = (float)(i - 500) * 0.1234567f;
	src[3] = 1e-6f; src[4] = -70000.0f;
	/* +1 byte: unaligned source and destination must work */
	unsigned char raw[N * 8 + 1];
	static const ft_dtype ts[] = {FT_F32, FT_F16, FT_BF16, FT_F64};
	for (int k = 0; k < 4; k++) {
		ft_dtype t = ts[k];
		int r = ft_convert_from_f32(raw + 1, t, src, N) == 0 && ft_convert_to_f32(back, raw + 1, t, N) == 0;
		int same = r;
		for (int i = 0; i < N && same; i++) {
			float want = t == FT_F16 ? ft_f16_to_f32(ft_f32_to_f16(src[i]))
				   : t == FT_BF16 ? ft_bf16_to_f32(ft_f32_to_bf16(src[i])) : src[i];
			same = fbits(back[i]) == fbits(want);
		}
		ok(same, "bulk %s round trip (unaligned buffers) equals the scalar conversion", ft_dtype_name(t));
	}
	int bad = ft_convert_to_f32(back, raw, FT_I32, 4);
	ok(bad < 0 && strstr(ft_errmsg(), "I32"), "bulk refuses I32: %s", ft_errmsg());
	ok(ft_convert_from_f32(raw, FT_U8, src, 4) < 0, "bulk refuses U8 destination");
}

/* fp8 casts against torch's Tensor.to(float8_e4m3fn / float8_e5m2), byte
 * for byte, and torchao's tensorwise cast (tests/fixtures/extras/fp8_cast.txt
 * from tests/reference/make_fp8_fixtures.py). */
#define FP8FIX "tests/fixtures/extras/fp8_cast.txt"

static void test_fp8_quant(char *line, const float *x, int n)
{
	ft_fp8_format f = strncmp(line, "e4m3", 4) ? FT_FP8_E5M2 : FT_FP8_E4M3;
	char *p = line + 4;
	float want_inv = bitsf((uint32_t)strtoul(p, &p, 16)), q[300];
	float inv = ft_fp8_quantize_tensorwise(q, x, (size_t)n, f);
	int bad = 0;
	for (int i = 0; i < n; i++)
		bad += fbits(q[i]) != (uint32_t)strtoul(p, &p, 16);
	ok(fbits(inv) == fbits(want_inv) && bad == 0, "fp8 %.4s: torchao's tensorwise cast of %d values "
	   "(inverse scale %g vs %g, %d differ)", line, n, inv, want_inv, bad);
}

static void test_fp8(void)
{
	FILE *fp = fopen(FP8FIX, "r");
	if (!ok(fp != NULL, "open " FP8FIX)) return;
	char line[8192];
	int n = 0, bad4 = 0, bad5 = 0, nq = 0;
	float x[300];
	while (fgets(line, sizeof line, fp)) {
		if (line[0] == 'q') {
			char *p = line + 1;
			for (nq = 0; nq < 300 && *p && *p != '\n'; nq++)
				x[nq] = bitsf((uint32_t)strtoul(p, &p, 16));
			continue;
		}
		if (line[0] == 'e') {
			test_fp8_quant(line, x, nq);
			continue;
		}
		unsigned u, b4, b5;
		if (sscanf(line, "%x %x %x", &u, &b4, &b5) != 3) continue;
		float v = bitsf(u);
		uint8_t g4 = ft_f32_to_fp8(v, FT_FP8_E4M3), g5 = ft_f32_to_fp8(v, FT_FP8_E5M2);
		if (g4 != b4 && bad4++ < 5) printf("# e4m3 %08x (%g): %02x, torch %02x\n", u, v, g4, b4);
		if (g5 != b5 && bad5++ < 5) printf("# e5m2 %08x (%g): %02x, torch %02x\n", u, v, g5, b5);
		n++;
	}
	fclose(fp);
	ok(n > 4000 && bad4 == 0, "fp8 e4m3fn: %d values cast as torch (%d differ)", n, bad4);
	ok(n > 4000 && bad5 == 0, "fp8 e5m2: %d values cast as torch (%d differ)", n, bad5);
	/* decoding: every code round-trips, the edges are what the formats say */
	int rt = 0;
	for (int b = 0; b < 256; b++)
		for (int f = 0; f < 2; f++) {
			float v = ft_fp8_to_f32((uint8_t)b, (ft_fp8_format)f);
			rt += v == v && ft_f32_to_fp8(v, (ft_fp8_format)f) != b && !(v == 0 && (b & 0x7F) == 0);
		}
	ok(rt == 0, "fp8: every non-NaN code decodes and encodes back (%d do not)", rt);
	ok(ft_fp8_to_f32(0x7E, FT_FP8_E4M3) == 448 && ft_fp8_to_f32(0x01, FT_FP8_E4M3) == 0x1p-9f &&
	   ft_fp8_to_f32(0x7B, FT_FP8_E5M2) == 57344 && ft_fp8_to_f32(0x01, FT_FP8_E5M2) == 0x1p-16f &&
	   isinf(ft_fp8_to_f32(0xFC, FT_FP8_E5M2)) && isnan(ft_fp8_to_f32(0x7F, FT_FP8_E4M3)),
	   "fp8: max, smallest subnormal, Inf and NaN decode");
}

int main(void)
{
	test_basics();
	test_bulk();
	test_fixture();
	test_fp8();
	return tap_done();
}
