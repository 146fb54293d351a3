/* rl_kernels.cuh - GRPO's label log-probabilities on the device (pref.cu's
 * head_rows launches it when a temperature or the entropies are set,
 * ft_cuda_logps_options): TRL's log softmax(logits / temperature) and
 * entropy_from_logits, the device form of model_pref.c's temper() and
 * row_entropy().  A kernel apart from pref_logp_k because the division
 * happens in registers: Gemma 2's cap gradient needs the capped logit,
 * which an in-place division (the CPU's order) would have overwritten;
 * the quotient is the same float either way.  The includer provides the
 * CUDA built-ins, reduce.cuh and pref_kernels.cuh (FT_PREF_TPB). */
#ifndef FT_CUDA_RL_KERNELS_CUH
#define FT_CUDA_RL_KERNELS_CUH

#include "model/kernels.h"

/* the tempered logit: z / t in float as torch's logits / t; t 0 is none */
static __device__ inline float rl_temper(float z, float t)
{
	return t != 0 ? z / t : z;
}

/* One block per row of (capped) logits l [n, V], as pref_logp_k with
 * z / temp in place of z: lp[row] = log softmax(z / temp)[target]; ent
 * (forward only, NULL: none) the entropy logsumexp - sum softmax * z of
 * the tempered row, summed in double as row_entropy; with g the row is
 * replaced by the gradient of g[row] * lp[row], (onehot - softmax) g /
 * temp, taken through the cap when cap > 0.  A target outside [0, V):
 * lp 0, ent 0, a zero row. */
static __global__ void rl_logp_k(float *l, double *lp, float *ent, const int32_t *targets,
				 const float *g, int V, float cap, float temp)
{
	__shared__ float shf[FT_PREF_TPB];
	__shared__ double shd[FT_PREF_TPB];
	float *row = l + (size_t)blockIdx.x * V;
	int tg = targets[blockIdx.x];
	if (tg < 0 || tg >= V) {
		if (g)
			for (int j = threadIdx.x; j < V; j += blockDim.x)
				row[j] = 0;
		if (threadIdx.x == 0) {
			lp[blockIdx.x] = 0;
			if (ent)
				ent[blockIdx.x] = 0;
		}
		return;
	}
	float m = -INFINITY;
	for (int j = threadIdx.x; j < V; j += blockDim.x)
		m = fmaxf(m, rl_temper(row[j], temp));
	m = ft_cu_block_max(m, shf);
	double s = 0;
	for (int j = threadIdx.x; j < V; j += blockDim.x)
		s += expf(rl_temper(row[j], temp) - m);
	double sum = ft_cu_block_sum(s, shd);
	float lt = rl_temper(row[tg], temp);
	if (threadIdx.x == 0)
		lp[blockIdx.x] = (double)lt - (m + log(sum));
	if (ent) {   /* row_entropy: exp in double, both sums in double */
		double se = 0, sz = 0;
		for (int j = threadIdx.x; j < V; j += blockDim.x) {
			double d = (double)rl_temper(row[j], temp) - m, e = exp(d);
			se += e;
			sz += e * d;
		}
		se = ft_cu_block_sum(se, shd);
		sz = ft_cu_block_sum(sz, shd);
		if (threadIdx.x == 0)
			ent[blockIdx.x] = (float)(log(se) - sz / se);
	}
	__syncthreads();   /* everyone has read row[tg] before it changes */
	if (!g)
		return;
	float gr = g[blockIdx.x];
	if (temp != 0)
		gr /= temp;   /* d (z / t) / dz, as model_pref.c divides dlogp */
	float sc = -gr;
	for (int j = threadIdx.x; j < V; j += blockDim.x) {
		float z = row[j], d = ft_k_ce_grad(rl_temper(z, temp), m, sum, sc, j == tg);
		row[j] = cap > 0 ? ft_k_softcap_grad(d, z, cap) : d;
	}
}

#endif
