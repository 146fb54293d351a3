/* reduce.cuh - block-wide reductions of the CUDA backend (one block per
 * row).  Included by common.cuh; a header of its own so that tests/emu
 * compiles the row kernels that use them (norm_kernels.cuh) for the host
 * with emulated threads.  Needs the CUDA built-ins and model/kernels.h's
 * formulas. */
#ifndef FT_CUDA_REDUCE_CUH
#define FT_CUDA_REDUCE_CUH

#include "model/kernels.h"

/* ---- block reductions (one block per row) ---- */

/* Block-wide sum; every thread gets the result.  sh: blockDim.x elements;
 * blockDim.x a power of two.  The tree order is fixed, so a row sums the
 * same way in every kernel that reduces with it. */
template <typename T>
static __device__ T ft_cu_block_sum(T x, T *sh)
{
	sh[threadIdx.x] = x;
	__syncthreads();
	for (int s = blockDim.x / 2; s > 0; s >>= 1) {
		if (threadIdx.x < (unsigned)s)
			sh[threadIdx.x] += sh[threadIdx.x + s];
		__syncthreads();
	}
	T r = sh[0];
	__syncthreads();
	return r;
}

/* Block-wide maximum (fmaxf: a NaN loses to a number), as above. */
static __device__ inline float ft_cu_block_max(float x, float *sh)
{
	sh[threadIdx.x] = x;
	__syncthreads();
	for (int s = blockDim.x / 2; s > 0; s >>= 1) {
		if (threadIdx.x < (unsigned)s)
			sh[threadIdx.x] = fmaxf(sh[threadIdx.x], sh[threadIdx.x + s]);
		__syncthreads();
	}
	float r = sh[0];
	__syncthreads();
	return r;
}

/* ---- the log-softmax pieces of one row of logits ---- */

/* For row[V] and a target tg in [0, V), by the whole block: the row's
 * max *mx, sum of exp(row - max) *sum (double) and the target's logit
 * *lt, for every thread, all of the row divided by temp (ft_k_temper; 0,
 * the default: none) in registers, so the row keeps what it held (Gemma
 * 2's cap gradient needs the capped logit); after it the row may be
 * overwritten (the cross-entropy loss and the label log-probability both
 * start here). */
static __device__ inline void ft_cu_row_lse(const float *row, int V, int tg, float *shf,
					    double *shd, float *mx, double *sum, float *lt, float temp = 0)
{
	float m = -INFINITY;
	for (int j = threadIdx.x; j < V; j += blockDim.x)
		m = fmaxf(m, ft_k_temper(row[j], temp));
	m = ft_cu_block_max(m, shf);
	double s = 0;
	for (int j = threadIdx.x; j < V; j += blockDim.x)
		s += expf(ft_k_temper(row[j], temp) - m);
	*sum = ft_cu_block_sum(s, shd);
	*mx = m;
	*lt = ft_k_temper(row[tg], temp);
	__syncthreads();   /* everyone has read row[tg] before it changes */
}

#endif
