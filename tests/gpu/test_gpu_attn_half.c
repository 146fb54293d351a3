/* test_gpu_attn_half.c - the device attention in bf16 and fp16 (the
 * tensor-core kernels of lib/cuda/flash_tc.cuh, through
 * ft_cuda_attention_run_as) against the CPU's ft_attention_* on the same
 * half-rounded inputs.  Built by `make gpu-tests`, run by tests/gpu/run.sh;
 * without a CUDA device it prints a TAP skip and exits 0.
 *
 * Shapes as test_gpu_parity.c's fp32 attention cases: rows of up to 1100
 * keys, T off the 32-row tile, GQA up to 4:1, head sizes 64..256 (80 off
 * the 16-feature fragment), sliding windows, packed segment ids (packed
 * 1), right padding by row lengths (packed 2), Gemma 2's soft-cap 50.
 *
 * Tolerance: element by element, tests/unit/attn_bound.h (where the
 * kernels round P, dS and the outputs, from the element type's unit
 * roundoff; the same bound tests/emu/test_flash_tc_emu.cc applies on the
 * emulation); lse within 2e-5 (fp32, as the fp32 cases).  A second run
 * must be bit-identical (no atomics, fixed fragment order). */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "tap.h"
#include "gpu_test.h"
#include "attn_bound.h"
#include "cuda/ft_cuda.h"
#include "model/device.h"
#include "model/layers.h"
#include "util/error.h"

static float round_to(float x, ft_cuda_precision p)
{
	return p == FT_CUDA_BF16 ? ft_k_bf16_to_f32(ft_k_f32_to_bf16(x))
				 : ft_k_f16_to_f32(ft_k_f32_to_f16(x));
}

static void half_case(ft_cuda_precision p, int B, int T, int Hq, int Hk, int hd, int window,
		      int packed, float cap)
{
	gpu_attn a;
	gpu_attn_new(&a, B, T, Hq, Hk, hd, packed, (unsigned)(T * 37 + hd), round_to, p);
	double *bound[5];
	for (int i = 0; i < 5; i++)
		bound[i] = malloc(a.nres[i] * sizeof(double));
	float scale = 1.0f / sqrtf((float)hd);
	ft_attn_shape cs = { B, T, Hq, Hk, hd, window, a.seg, scale, cap, a.len };
	ft_cuda_attn_shape gs = { B, T, Hq, Hk, hd, window, a.seg, a.len, scale, cap };
	ft_attention_forward(a.cpu[0], a.cpu[1], a.in[0], a.in[1], a.in[2], &cs);
	ft_attention_backward(a.cpu[2], a.cpu[3], a.cpu[4], a.in[3], a.in[0], a.in[1], a.in[2],
			      a.cpu[0], a.cpu[1], &cs);
	int rc = ft_cuda_attention_run_as(0, p, &gs, a.in[0], a.in[1], a.in[2], a.in[3], a.gpu[0],
					  a.gpu[1], a.gpu[2], a.gpu[3], a.gpu[4]);
	int rc2 = rc ? rc : ft_cuda_attention_run_as(0, p, &gs, a.in[0], a.in[1], a.in[2], a.in[3],
						     a.again[0], a.again[1], a.again[2],
						     a.again[3], a.again[4]);
	double u = p == FT_CUDA_BF16 ? ldexp(1.0, -8) : ldexp(1.0, -11);
	double eta = p == FT_CUDA_BF16 ? 0 : ldexp(1.0, -25);   /* subnormals, attn_bound.h */
	attn_half_bounds(&cs, u, eta, a.in[0], a.in[1], a.in[2], a.in[3], a.cpu[0], a.cpu[1],
			 a.cpu[2], a.cpu[3], a.cpu[4], bound[0], bound[2], bound[3], bound[4]);
	double r[5], worst = 0;
	size_t nl = a.nres[1];
	for (int i = 0; i < 5; i++) {
		r[i] = rc ? INFINITY : i == 1 ? max_rel(a.gpu[1], a.cpu[1], nl) / 2e-5
				     : attn_bound_ratio(a.gpu[i], a.cpu[i], bound[i], a.nres[i]);
		worst = r[i] > worst || r[i] != r[i] ? (r[i] != r[i] ? INFINITY : r[i]) : worst;
	}
	ok(rc == 0 && worst <= 1, "device attention %s B=%d T=%d Hq=%d Hk=%d hd=%d window=%d "
	   "packed=%d cap=%g: error / bound out %.2f lse %.2f dq %.2f dk %.2f dv %.2f%s%s",
	   pname(p), B, T, Hq, Hk, hd, window, packed, cap, r[0], r[1], r[2], r[3], r[4],
	   rc ? ": " : "", rc ? ft_errmsg() : "");
	ok(rc2 == 0 && gpu_attn_same(&a), "device attention %s T=%d hd=%d: a second run is bit-identical",
	   pname(p), T, hd);
	for (int i = 0; i < 5; i++)
		free(bound[i]);
	gpu_attn_free(&a);
}

int main(void)
{
	if (!gpu_test_start())
		return 0;
	ft_cuda_precision ps[] = { FT_CUDA_BF16, FT_CUDA_F16 };
	for (int i = 0; i < 2; i++) {
		half_case(ps[i], 2, 520, 8, 2, 64, 0, 0, 0);
		half_case(ps[i], 1, 1100, 16, 4, 128, 0, 1, 0);
		half_case(ps[i], 1, 600, 12, 4, 80, 100, 1, 0);
		half_case(ps[i], 3, 520, 8, 2, 64, 0, 2, 0);   /* right padding: 520, 309, 98 */
	}
	half_case(FT_CUDA_BF16, 1, 777, 8, 8, 128, 256, 0, 0);
	half_case(FT_CUDA_BF16, 1, 300, 4, 1, 256, 0, 0, 0);
	half_case(FT_CUDA_BF16, 2, 600, 4, 2, 64, 100, 2, 0); /* blind queries past the window */
	half_case(FT_CUDA_BF16, 1, 520, 8, 2, 256, 0, 0, 50.0f); /* Gemma 2 */
	half_case(FT_CUDA_F16, 1, 520, 8, 4, 128, 4096, 0, 50.0f);
	return tap_done();
}
