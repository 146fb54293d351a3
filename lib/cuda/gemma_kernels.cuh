/* gemma_kernels.cuh - Gemma's element kernels: GeGLU (gelu_pytorch_tanh)
 * forward and backward over the fused gate|up buffer, and the (1 +
 * weight) of its RMSNorms.  A header of its own so that
 * tests/emu/test_gemma_emu.cc compiles these very kernels for the host and
 * checks them against lib/model/layers_gemma.c; the formulas are
 * model/kernels.h's, the CPU's.  The includer provides the CUDA built-ins. */
#ifndef FT_CUDA_GEMMA_KERNELS_CUH
#define FT_CUDA_GEMMA_KERNELS_CUH

#include "model/kernels.h"
#include "cuda/act_kernels.cuh"

#define FT_GEMMA_TPB 256

#define FT_GEMMA_FOR(i, n) for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; \
				i < (size_t)(n); i += (size_t)gridDim.x * blockDim.x)

/* gate and up are rows of stride ld (the fused gate|up buffer, of type
 * gt: half when training in the half modes), h and dh [N, F]; element i
 * is read and written by one thread only, so the backward may write dg,
 * du (fp32, stride ld) over fp32 g, u, as swiglu_backward_k (ops.cu). */
static __global__ void geglu_forward_k(void *h, int at, const void *g, const void *u, int gt,
				       size_t ld, size_t N, int F)
{
	FT_GEMMA_FOR(i, N * F) {   /* h of type at (act_kernels.cuh): down_proj's operand */
		size_t e = i / F * ld + i % F;
		ft_k_act_put(h, i, ft_k_geglu(ft_k_act_get(g, e, gt), ft_k_act_get(u, e, gt)), at);
	}
}

static __global__ void geglu_backward_k(float *dg, float *du, const float *dh, const void *g,
					const void *u, int gt, size_t ld, size_t N, int F)
{
	FT_GEMMA_FOR(i, N * F) {
		size_t e = i / F * ld + i % F;
		float gv = ft_k_act_get(g, e, gt), uv = ft_k_act_get(u, e, gt);
		ft_k_geglu_backward(dh[i], gv, uv, dg + e, du + e);
	}
}

/* out = 1 + w: the weight Gemma's RMSNorm scales by (ftp_norm_w) */
static __global__ void plus_one_k(float *out, const float *w, int n)
{
	FT_GEMMA_FOR(i, n)
		out[i] = 1.0f + w[i];
}

/* Gemma 2's final_logit_softcapping, in place on n logits */
static __global__ void softcap_k(float *x, size_t n, float cap)
{
	FT_GEMMA_FOR(i, n)
		x[i] = ft_k_softcap(x[i], cap);
}

#endif
