/* fp8_kernels.cuh - the kernels of --fp8's Float8Linear modules on the
 * device (lib/cuda/fp8.cu launches them): torchao's dynamic tensorwise
 * cast of one GEMM operand, as ft_fp8_quantize_tensorwise
 * (lib/util/dtype.c) does on the CPU.  A header so that
 * tests/emu/test_fp8_emu.cc runs these very kernels on the host.  Every
 * formula (the amax step, the scale, the per-element cast) is
 * util/dtype_inline.h's, which dtype.c calls too: both compute the same
 * bits.
 *
 * The operand is [rows, cols] at row stride ld (a module's columns of a
 * fused output gradient), of an activation type (act_kernels.cuh); the
 * result is contiguous [rows, cols] of the GEMM's operand type: fp32, or
 * bf16/f16 in the half modes, both of which hold every e4m3fn and e5m2
 * value exactly (e5m2's 57344 and 2^-16 are inside f16's range), so the
 * store rounds nothing.
 *
 * amax is a maximum: exact, so any order of the reduction gives the CPU's
 * value (a NaN anywhere gives NaN, as torch.max); fp8_amax_k leaves one
 * partial per block, fp8_scale_k reduces them in one block and writes
 * sc[0] = scale, sc[1] = 1 / scale (torch's scale.reciprocal()). */
#ifndef FT_CUDA_FP8_KERNELS_CUH
#define FT_CUDA_FP8_KERNELS_CUH

#include "util/dtype_inline.h"
#include "cuda/act_kernels.cuh"

#define FT_FP8_TPB 256      /* threads per block of both reductions */
#define FT_FP8_BLOCKS 128   /* partial maxima: fp8_amax_k's grid */

/* Block-wide amax of m (every thread gets it); sh: FT_FP8_TPB floats. */
static __device__ inline float fp8_block_amax(float m, float *sh)
{
	sh[threadIdx.x] = m;
	__syncthreads();
	for (int s = blockDim.x / 2; s > 0; s >>= 1) {
		if (threadIdx.x < (unsigned)s)
			sh[threadIdx.x] = ft_fp8_amax_step(sh[threadIdx.x], sh[threadIdx.x + s]);
		__syncthreads();
	}
	float r = sh[0];
	__syncthreads();
	return r;
}

/* part[blockIdx.x] = amax over the elements this block strides over. */
static __global__ void fp8_amax_k(float *part, const void *x, int at, int rows, int cols, int ld)
{
	__shared__ float sh[FT_FP8_TPB];
	size_t n = (size_t)rows * cols, step = (size_t)gridDim.x * blockDim.x;
	float m = 0;
	for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += step)
		m = ft_fp8_amax_step(m, ft_k_act_get(x, i / cols * ld + i % cols, at));
	m = fp8_block_amax(m, sh);
	if (threadIdx.x == 0)
		part[blockIdx.x] = m;
}

/* One block: sc[0] = the scale of the nb partials' amax, sc[1] = 1/scale. */
static __global__ void fp8_scale_k(float *sc, const float *part, int nb, int e5m2)
{
	__shared__ float sh[FT_FP8_TPB];
	float m = 0;
	for (int i = threadIdx.x; i < nb; i += blockDim.x)
		m = ft_fp8_amax_step(m, part[i]);
	m = fp8_block_amax(m, sh);
	if (threadIdx.x == 0) {
		float s = ft_fp8_scale(m, e5m2);
		sc[0] = s;
		sc[1] = 1.0f / s;
	}
}

/* q[i] (contiguous, of type qt) = fp8(clamp(x * scale)), one thread per
 * element. */
static __global__ void fp8_quant_k(void *q, int qt, const void *x, int at, int rows, int cols,
				   int ld, const float *sc, int e5m2)
{
	size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
	if (i >= (size_t)rows * cols)
		return;
	float v = ft_k_act_get(x, i / cols * ld + i % cols, at);
	ft_k_act_put(q, i, ft_fp8_quantize(v, sc[0], e5m2), qt);
}

#endif
