/* norm_kernels.cuh - the kernels that write the activations the half
 * modes store in half (act_kernels.cuh): RMSNorm; the residual add fused
 * into the RMSNorm that follows it (layer_forward's xmid = x + attn_out;
 * ln2 = RMSNorm(xmid)): one pass over the row instead of an add kernel
 * writing xmid and a norm kernel reading it back; LoRA dropout of a
 * normed input; SwiGLU's hidden.  A header of its own so that tests/emu compiles these
 * very kernels for the host (with reduce.cuh and emulated built-ins).
 * The includer provides the CUDA built-ins and model/kernels.h. */
#ifndef FT_CUDA_NORM_KERNELS_CUH
#define FT_CUDA_NORM_KERNELS_CUH

#include "model/kernels.h"
#include "cuda/act_kernels.cuh"

#define FT_NORM_TPB 256

/* One block of FT_NORM_TPB threads per row (rows of x addressed by xl):
 * out [rows, D] = RMSNorm(x) * w, written as type at (the half modes'
 * normed layer inputs are half: the q|k|v and gate|up GEMMs read them as
 * their operand, no cast), rstd saved in fp32.  The statistics are fp32
 * whatever at is. */
static __device__ __forceinline__ void rmsnorm_row(void *out, int at, float *rstd,
						   const void *x, int xt, ft_cu_rows xl,
						   const float *w, int D, float eps, float *sh)
{
	size_t xr = ft_cu_row(xl, blockIdx.x, D), o = (size_t)blockIdx.x * D;
	float ss = 0;
	for (int d = threadIdx.x; d < D; d += blockDim.x) {
		float v = ft_k_act_get(x, xr + d, xt);
		ss += v * v;
	}
	float r = ft_k_rmsnorm_rstd(ft_cu_block_sum(ss, sh), D, eps);
	if (threadIdx.x == 0)
		rstd[blockIdx.x] = r;
	for (int d = threadIdx.x; d < D; d += blockDim.x)
		ft_k_act_put(out, o + d, ft_k_rmsnorm_out(ft_k_act_get(x, xr + d, xt), w[d], r), at);
}

static __global__ void rmsnorm_forward_k(void *out, int at, float *rstd, const float *x,
					 ft_cu_rows xl, const float *w, int D, float eps)
{
	__shared__ float sh[FT_NORM_TPB];
	rmsnorm_row(out, at, rstd, x, FT_ACT_F32, xl, w, D, eps, sh);
}

/* The same on x of type xt (Qwen3's q_norm / k_norm on the half q|k|v
 * buffer of the half modes: read widened, the statistics in fp32). */
static __global__ void rmsnorm_forward_xk(void *out, int at, float *rstd, const void *x, int xt,
					  ft_cu_rows xl, const float *w, int D, float eps)
{
	__shared__ float sh[FT_NORM_TPB];
	rmsnorm_row(out, at, rstd, x, xt, xl, w, D, eps, sh);
}

/* One block of FT_NORM_TPB threads per row: sum = a + b (the residual
 * stream: fp32), out = RMSNorm(sum) * w as type at, rstd saved.  The element arithmetic (a + b, then the
 * sum of squares in thread-strided order, the block tree sum, and
 * ft_k_rmsnorm_*) is add_k's followed by rmsnorm_forward_k's (ops.cu),
 * the same operations in the same order, so it gives their bits. */
static __global__ void add_rmsnorm_forward_k(float *sum, void *out, int at, float *rstd,
					     const float *a, const float *b, const float *w,
					     int D, float eps)
{
	__shared__ float sh[FT_NORM_TPB];
	size_t row = (size_t)blockIdx.x * D;
	float ss = 0;
	for (int d = threadIdx.x; d < D; d += blockDim.x) {
		float x = a[row + d] + b[row + d];
		sum[row + d] = x;
		ss += x * x;
	}
	float r = ft_k_rmsnorm_rstd(ft_cu_block_sum(ss, sh), D, eps);
	if (threadIdx.x == 0)
		rstd[blockIdx.x] = r;
	/* each thread reads back only the elements it wrote */
	for (int d = threadIdx.x; d < D; d += blockDim.x)
		ft_k_act_put(out, row + d, ft_k_rmsnorm_out(sum[row + d], w[d], r), at);
}

/* SwiGLU's h [N, F] (of type at: down_proj's operand) from gate and up,
 * rows of stride ld (the fused gate|up buffer, of type gt: half when
 * training in the half modes, read widened). */
static __global__ void swiglu_forward_k(void *h, int at, const void *g, const void *u, int gt,
					size_t ld, size_t N, int F)
{
	for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < N * F;
	     i += (size_t)gridDim.x * blockDim.x) {
		size_t e = i / F * ld + i % F;
		ft_k_act_put(h, i, ft_k_swiglu(ft_k_act_get(g, e, gt), ft_k_act_get(u, e, gt)), at);
	}
}

/* Its backward: dg, du (fp32, rows of stride ld) from dh [N, F] and g, u
 * of type gt; element e is read and then written by one thread only, so
 * dg, du may be g, u themselves when those are fp32 (in place). */
static __global__ void swiglu_backward_k(float *dg, float *du, const float *dh, const void *g,
					 const void *u, int gt, size_t ld, size_t N, int F)
{
	for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < N * F;
	     i += (size_t)gridDim.x * blockDim.x) {
		size_t e = i / F * ld + i % F;
		float gv = ft_k_act_get(g, e, gt), uv = ft_k_act_get(u, e, gt);
		ft_k_swiglu_backward(dh[i], gv, uv, dg + e, du + e);
	}
}

/* LoRA dropout on an activation of type at, out of the same type (the
 * half modes' dropped copy of a half layer input is half, the GEMM
 * operand its A product reads).  In place allowed. */
static __global__ void dropout_act_k(void *out, const void *x, int at, size_t n,
				     ft_k_dropout d, uint64_t seed)
{
	for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n;
	     i += (size_t)gridDim.x * blockDim.x)
		ft_k_act_put(out, i, ft_k_dropout_elem(ft_k_act_get(x, i, at), seed, i, &d), at);
}

#endif
