/* norm_kernels.cuh - the residual add fused into the RMSNorm that follows
 * it (layer_forward's xmid = x + attn_out; ln2 = RMSNorm(xmid)): one pass
 * over the row instead of an add kernel writing xmid and a norm kernel
 * reading it back.  A header of its own so that tests/emu compiles this
 * very kernel for the host (with reduce.cuh and emulated built-ins).
 * The includer provides the CUDA built-ins and model/kernels.h. */
#ifndef FT_CUDA_NORM_KERNELS_CUH
#define FT_CUDA_NORM_KERNELS_CUH

#include "model/kernels.h"

#define FT_NORM_TPB 256

/* One block of FT_NORM_TPB threads per row: sum = a + b, out =
 * RMSNorm(sum) * w, rstd saved.  The element arithmetic (a + b, then the
 * sum of squares in thread-strided order, the block tree sum, and
 * ft_k_rmsnorm_*) is add_k's followed by rmsnorm_forward_k's (ops.cu),
 * the same operations in the same order, so it gives their bits. */
static __global__ void add_rmsnorm_forward_k(float *sum, float *out, float *rstd,
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
		out[row + d] = ft_k_rmsnorm_out(sum[row + d], w[d], r);
}

#endif
