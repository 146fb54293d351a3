/* gpu_test.h - what the device checks under tests/gpu share beside
 * tap.h and st_test.h: the device probe every main() starts with, the
 * device decoder as ft_generate_on's callbacks, the
 * mid-size random model of the parity and decoding checks, and the
 * inputs, outputs and masks of the attention checks (test_gpu_parity.c's
 * fp32 cases, test_gpu_attn_half.c's bf16/fp16 ones).  One copy, so the
 * shapes and fills the tests argue their bounds on cannot drift apart. */
#ifndef FT_TESTS_GPU_TEST_H
#define FT_TESTS_GPU_TEST_H

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "cuda/ft_cuda.h"
#include "model/device.h"
#include "model/model.h"
#include "util/error.h"

__attribute__((unused))
static const char *pname(ft_cuda_precision p)
{
	return p == FT_CUDA_F32 ? "fp32" : p == FT_CUDA_BF16 ? "bf16" : "fp16";
}

/* gpu_test_start: 1 when a CUDA device is there (its name printed as a
 * TAP comment); 0 after printing the TAP skip the caller exits 0 with. */
__attribute__((unused))
static int gpu_test_start(void)
{
	char desc[256];
	if (ft_device_cuda_count(desc, sizeof desc) <= 0) {
		printf("1..0 # skip no CUDA device (%s)\n", ft_errmsg());
		return 0;
	}
	printf("# device: %s\n", desc);
	return 1;
}

/* ft_generate_on over the device decoder, as ft-generate's device.c:
 * ctx is the ft_cuda_infer, and a group must fit its plan. */
__attribute__((unused))
static void *gpu_dec_open(void *ctx, int rows, int cap)
{
	const ft_cuda_infer_opts *o = ft_cuda_infer_options(ctx);
	if (rows > o->rows || cap > o->cap) {
		ft_fail("test: a group of %d x %d does not fit the planned %d x %d", rows, cap,
			o->rows, o->cap);
		return NULL;
	}
	ft_cuda_infer_reset(ctx);
	return ctx;
}

__attribute__((unused))
static int gpu_dec_forward(void *ctx, void *cache, const int32_t *t, const int *r, int N,
			   const int *w, float *lg)
{
	(void)ctx;
	return ft_cuda_infer_forward(cache, t, r, N, w, lg);
}

__attribute__((unused))
static void gpu_dec_close(void *ctx, void *cache) { (void)ctx, (void)cache; }

/* The mid-size random model: D 512, V 8192, 8 query heads over 2 kv
 * heads (4 per group), head size 64, two layers; Mistral's variant has a
 * 200-token sliding window, shorter than the tests' rows. */
__attribute__((unused))
static ft_config gpu_midsize_config(ft_arch arch)
{
	ft_config c = { .arch = arch, .vocab_size = 8192, .hidden_size = 512,
			.intermediate_size = 1408, .num_hidden_layers = 2, .num_attention_heads = 8,
			.num_key_value_heads = 2, .head_dim = 64, .max_position_embeddings = 4096,
			.rms_norm_eps = 1e-5, .rope_theta = 10000, .initializer_range = 0.02,
			.sliding_window = arch == FT_ARCH_MISTRAL ? 200 : 0 };
	snprintf(c.rope_type, sizeof c.rope_type, "default");
	snprintf(c.torch_dtype, sizeof c.torch_dtype, "float32");
	return c;
}

/* One attention case's buffers: inputs q, k, v, dout; results out, lse,
 * dq, dk, dv of the CPU, the device and the device's second run (which
 * must be bit-identical); the masks.  packed 1: segment ids as ft-pack's
 * neat packing (runs of 97 tokens, 13 padding at each row's end); packed
 * 2: right padding by row lengths (T, T - 211, ...). */
typedef struct {
	size_t nin[4], nres[5];
	float *in[4], *cpu[5], *gpu[5], *again[5];
	int32_t *seg, *len;
} gpu_attn;

/* gpu_attn_new: the buffers, and the inputs drawn from a linear
 * congruential generator seeded with seed, uniform in [-1.5, 1.5) for q
 * and k, [-1, 1) for v and dout, each passed through round (NULL: kept
 * as drawn) so a half case's inputs are exact in its element type. */
__attribute__((unused))
static void gpu_attn_new(gpu_attn *a, int B, int T, int Hq, int Hk, int hd, int packed,
			 unsigned seed, float (*round)(float, ft_cuda_precision), ft_cuda_precision p)
{
	size_t N = (size_t)B * T, nq = N * Hq * hd, nk = N * Hk * hd, nl = N * Hq;
	size_t nin[4] = { nq, nk, nk, nq }, nres[5] = { nq, nl, nq, nk, nk };
	memcpy(a->nin, nin, sizeof nin);
	memcpy(a->nres, nres, sizeof nres);
	unsigned x = seed;
	for (int i = 0; i < 4; i++) {
		a->in[i] = malloc(nin[i] * sizeof(float));
		for (size_t j = 0; j < nin[i]; j++) {
			x = x * 1103515245u + 12345u;
			float v = (i < 2 ? 1.5f : 1.0f) * (((x >> 8) & 0xffff) / 32768.0f - 1.0f);
			a->in[i][j] = round ? round(v, p) : v;
		}
	}
	for (int i = 0; i < 5; i++) {
		a->cpu[i] = malloc(nres[i] * sizeof(float));
		a->gpu[i] = malloc(nres[i] * sizeof(float));
		a->again[i] = malloc(nres[i] * sizeof(float));
	}
	a->seg = packed == 1 ? malloc(N * sizeof *a->seg) : NULL;
	for (size_t i = 0; a->seg && i < N; i++) {
		int t = (int)(i % T);
		a->seg[i] = t >= T - 13 ? 0 : 1 + t / 97;
	}
	a->len = packed == 2 ? malloc((size_t)B * sizeof *a->len) : NULL;
	for (int b = 0; a->len && b < B; b++)
		a->len[b] = T - 211 * b > 0 ? T - 211 * b : 1;
}

/* gpu_attn_same: the second device run equals the first bit for bit */
__attribute__((unused))
static int gpu_attn_same(const gpu_attn *a)
{
	for (int i = 0; i < 5; i++)
		if (memcmp(a->gpu[i], a->again[i], a->nres[i] * sizeof(float)))
			return 0;
	return 1;
}

__attribute__((unused))
static void gpu_attn_free(gpu_attn *a)
{
	for (int i = 0; i < 4; i++)
		free(a->in[i]);
	for (int i = 0; i < 5; i++) {
		free(a->cpu[i]);
		free(a->gpu[i]);
		free(a->again[i]);
	}
	free(a->seg);
	free(a->len);
}

#endif
