/* pref_kernels.cuh - the kernels of the preference stages (pref.cu), each
 * the device form of a loop of lib/model/model_pref.c: per-row label
 * log-probabilities and their gradient with a per-row scale, the mean
 * over the vocabulary of the logits (h . mean(W)), and the value head
 * (score, weight/bias gradients, d(hidden)).  A header of its own so that
 * tests/emu compiles these very kernels for the host.  The includer
 * provides the CUDA built-ins, reduce.cuh and model/kernels.h.
 *
 * Row kernels run one block of FT_PREF_TPB threads per row (the block
 * reductions need a power of two); column kernels one thread per column,
 * summing the rows in order as the CPU's loops do. */
#ifndef FT_CUDA_PREF_KERNELS_CUH
#define FT_CUDA_PREF_KERNELS_CUH

#include "model/kernels.h"

#define FT_PREF_TPB 256

/* One block per row of logits l [n, V], for the preference stages, GRPO
 * and PPO alike: lp[row] = z[target] - (max + log(sum exp(z - max))) of z
 * = l / temp (ft_k_temper: TRL's log softmax(logits / temperature); temp
 * 0 is none), as ft_model_logps_forward; ent (forward only, NULL: none)
 * TRL's entropy_from_logits of z, summed as ft_k_row_entropy; with g !=
 * NULL the row is then replaced by the gradient of g[row] * lp[row]
 * (fp16: g carries the loss scale): (onehot - softmax) g / temp, which is
 * the cross-entropy gradient of z with scale -g / temp.  A target outside
 * [0, V) gives lp 0, ent 0 and a zero row.  cap > 0: the logits are Gemma
 * 2's soft-capped ones, the gradient taken through the cap (as
 * model_pref.c).  The division happens in registers (the row keeps the
 * capped logit the cap gradient needs): the same float quotient as the
 * CPU's in-place one. */
static __global__ void pref_logp_k(float *l, double *lp, const int32_t *targets, const float *g,
				   int V, float cap = 0, float temp = 0, float *ent = NULL)
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
	float mx, lt;
	double sum;
	ft_cu_row_lse(row, V, tg, shf, shd, &mx, &sum, &lt, temp);
	if (threadIdx.x == 0)
		lp[blockIdx.x] = (double)lt - (mx + log(sum));
	if (ent) {   /* ft_k_row_entropy's terms: exp in double, both sums in double */
		double se = 0, sz = 0;
		for (int j = threadIdx.x; j < V; j += blockDim.x) {
			double d = (double)ft_k_temper(row[j], temp) - mx, e = exp(d);
			se += e;
			sz += e * d;
		}
		se = ft_cu_block_sum(se, shd);
		sz = ft_cu_block_sum(sz, shd);
		if (threadIdx.x == 0)
			ent[blockIdx.x] = (float)(log(se) - sz / se);
	}
	if (!g)
		return;
	float gr = g[blockIdx.x];
	if (temp != 0)
		gr /= temp;   /* d (z / t) / dz, as model_pref.c divides dlogp */
	float s = -gr;
	for (int j = threadIdx.x; j < V; j += blockDim.x) {
		float z = row[j], d = ft_k_ce_grad(ft_k_temper(z, temp), mx, sum, s, j == tg);
		row[j] = cap > 0 ? ft_k_softcap_grad(d, z, cap) : d;
	}
}

/* out[row] = the mean of a row of V (soft-capped) logits, summed in
 * double: soft-capped logits have no linear mean (capped_means in
 * model_pref.c). */
static __global__ void pref_rowmean_k(float *out, const float *l, int V)
{
	__shared__ double sh[FT_PREF_TPB];
	const float *row = l + (size_t)blockIdx.x * V;
	double s = 0;
	for (int j = threadIdx.x; j < V; j += blockDim.x)
		s += row[j];
	s = ft_cu_block_sum(s, sh);
	if (threadIdx.x == 0)
		out[blockIdx.x] = (float)(s / V);
}

/* wm[d] = mean over v of W[v, d] (double, rows in order), from the fp32
 * weights or, for a frozen half matrix, its half copy (bf16 says which). */
static __global__ void pref_colmean_k(double *wm, const float *W, const uint16_t *Wh, int bf16,
				      int V, int D)
{
	int d = blockIdx.x * blockDim.x + threadIdx.x;
	if (d >= D)
		return;
	double s = 0;
	for (int v = 0; v < V; v++) {
		size_t i = (size_t)v * D + d;
		s += W ? W[i] : bf16 ? ft_k_bf16_to_f32(Wh[i]) : ft_k_f16_to_f32(Wh[i]);
	}
	wm[d] = s / V;
}

/* One block per row: out[row] = h[row] . wm (double sum), the row's mean
 * logit without the logits. */
static __global__ void pref_rowdot_k(float *out, const float *h, const double *wm, int D)
{
	__shared__ double shd[FT_PREF_TPB];
	const float *x = h + (size_t)blockIdx.x * D;
	double s = 0;
	for (int d = threadIdx.x; d < D; d += blockDim.x)
		s += x[d] * wm[d];
	s = ft_cu_block_sum(s, shd);
	if (threadIdx.x == 0)
		out[blockIdx.x] = (float)s;
}

/* One block per row: score[row] = w . h[row] + b (double sum), TRL's
 * ValueHead Linear(hidden, 1) on the (dropped) hidden row. */
static __global__ void pref_score_k(float *score, const float *h, const float *w, const float *b,
				    int D)
{
	__shared__ double shd[FT_PREF_TPB];
	const float *x = h + (size_t)blockIdx.x * D;
	double s = 0;
	for (int d = threadIdx.x; d < D; d += blockDim.x)
		s += (double)w[d] * x[d];
	s = ft_cu_block_sum(s, shd);
	if (threadIdx.x == 0)
		score[blockIdx.x] = (float)(s + b[0]);
}

/* The value head's parameter gradients, one thread per column d (and the
 * bias on the thread of column D): dw[d] += sum_k ds[k] h[k, d] in float,
 * k in order; db += (float)(sum_k ds[k] in double), as
 * ft_model_value_backward and rm_step. */
static __global__ void pref_vgrad_k(float *dw, float *db, const float *h, const float *ds, int n,
				    int D)
{
	int d = blockIdx.x * blockDim.x + threadIdx.x;
	if (d < D) {
		float a = dw[d];
		for (int k = 0; k < n; k++)
			a += ds[k] * h[(size_t)k * D + d];
		dw[d] = a;
	} else if (d == D) {
		double s = 0;
		for (int k = 0; k < n; k++)
			s += ds[k];
		db[0] += (float)s;
	}
}

/* dh[k, d] = ds[k] w[d]: d(score)/d(dropped hidden row). */
static __global__ void pref_dh_k(float *dh, const float *ds, const float *w, int n, int D)
{
	size_t N = (size_t)n * D;
	for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < N;
	     i += (size_t)gridDim.x * blockDim.x)
		dh[i] = ds[i / D] * w[i % D];
}

#endif
