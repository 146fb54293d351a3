/* attention.cu - causal softmax attention with segment ids, sliding
 * window and GQA, as ft_attention_forward/backward (lib/model/layers.c).
 *
 * Implementation: cuBLAS strided-batched products plus fused masked
 * softmax kernels, NOT a fused flash kernel.  For each batch row b and
 * each position j inside a kv group, one batched product over the Hk kv
 * heads computes the scores S[g] = scale Q[b, g*grp+j] K[b, g]^T into a
 * [Hk, T, T] fp32 scratch; a kernel masks and normalises them in place
 * (saving the log-sum-exp per row, as the CPU does); a second batched
 * product gives O = P V.  The backward pass recomputes S and P from the
 * saved lse (no [T, T] is kept between passes) and forms dS = P (dP - D)
 * with D = rowsum(O dO), then dQ = scale dS K, dK += scale dS^T Q,
 * dV += P^T dO.
 * Limits: scratch is 2 * Hk * T^2 floats (T = 4096, Hk = 32: 4 GiB);
 * the masked upper triangle is computed and discarded (2x the FLOPs of a
 * causal flash kernel); products are fp32 (TF32 in the half modes).
 */
#include "cuda/common.cuh"

#define ATPB 128

static __device__ int allowed(const int32_t *seg, int t, int u, int window)
{
	return ft_k_attn_allowed(t, u, window, seg ? seg[t] : 1, seg ? seg[u] : 1);
}

/* Block (t, g): row t of S[g] -> probabilities in place; lse saved. */
static __global__ void softmax_fwd_k(float *S, float *lse, const int32_t *seg, int T,
				     int window, int b, int j, int grp, int Hq)
{
	__shared__ float sh[ATPB];
	int t = blockIdx.x, g = blockIdx.y, h = g * grp + j;
	float *row = S + ((size_t)g * T + t) * T;
	float mx = -INFINITY;
	for (int u = threadIdx.x; u <= t; u += blockDim.x)
		if (allowed(seg, t, u, window))
			mx = fmaxf(mx, row[u]);
	mx = ft_cu_block_max(mx, sh);
	float sum = 0;
	for (int u = threadIdx.x; u < T; u += blockDim.x) {
		float e = u <= t && allowed(seg, t, u, window) ? expf(row[u] - mx) : 0.0f;
		row[u] = e;
		sum += e;
	}
	sum = ft_cu_block_sum(sum, sh);
	float inv = 1.0f / sum;
	for (int u = threadIdx.x; u <= t; u += blockDim.x)
		row[u] *= inv;
	if (threadIdx.x == 0)
		lse[((size_t)b * Hq + h) * T + t] = mx + logf(sum);
}

/* Block (t, g): P = exp(S - lse) masked (into S), dS = P (dP - D) (into dP). */
static __global__ void softmax_bwd_k(float *S, float *dP, const float *lse, const float *Di,
				     const int32_t *seg, int T, int window, int b, int j,
				     int grp, int Hq)
{
	int t = blockIdx.x, g = blockIdx.y, h = g * grp + j;
	float *p = S + ((size_t)g * T + t) * T, *dp = dP + ((size_t)g * T + t) * T;
	float L = lse[((size_t)b * Hq + h) * T + t];
	float di = Di[((size_t)b * T + t) * Hq + h];
	for (int u = threadIdx.x; u < T; u += blockDim.x) {
		float pu = u <= t && allowed(seg, t, u, window) ? expf(p[u] - L) : 0.0f;
		p[u] = pu;
		dp[u] = pu * (dp[u] - di);
	}
}

/* Di[n, h] = sum_d O[n, h, d] dO[n, h, d] */
static __global__ void rowdot_k(float *Di, const float *O, const float *dO, size_t NH, int hd)
{
	for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < NH;
	     i += (size_t)gridDim.x * blockDim.x) {
		const float *o = O + i * hd, *g = dO + i * hd;
		float s = 0;
		for (int d = 0; d < hd; d++)
			s += o[d] * g[d];
		Di[i] = s;
	}
}

static int check_shape(const ft_cuda_model *dm, const ft_cu_attn *s)
{
	if (s->T > dm->o.max_seq || s->Hq % s->Hk)
		return ft_fail("attention: T=%d over the planned %d, or %d heads not a "
			       "multiple of %d kv heads", s->T, dm->o.max_seq, s->Hq, s->Hk);
	return 0;
}

int ft_cu_attention_forward(ft_cuda_model *dm, float *out, float *lse, const float *q,
			    const float *k, const float *v, const ft_cu_attn *s)
{
	TRY(check_shape(dm, s));
	int T = s->T, hd = s->hd, grp = s->Hq / s->Hk, ldq = s->Hq * hd, ldk = s->Hk * hd;
	float scale = 1.0f / sqrtf((float)hd);
	long long TT = (long long)T * T;
	for (int b = 0; b < s->B; b++) {
		const int32_t *seg = s->seg ? s->seg + (size_t)b * T : NULL;
		const float *qb = q + (size_t)b * T * ldq, *kb = k + (size_t)b * T * ldk;
		const float *vb = v + (size_t)b * T * ldk;
		for (int j = 0; j < grp; j++) {
			TRY(ft_cu_gemm_batched(dm, 0, 1, T, T, hd, scale, qb + j * hd, ldq,
					       (long long)grp * hd, kb, ldk, hd, 0, dm->att_s, T,
					       TT, s->Hk, "attention scores"));
			softmax_fwd_k<<<dim3(T, s->Hk), ATPB, 0, dm->stream>>>(
				dm->att_s, lse, seg, T, s->window, b, j, grp, s->Hq);
			LAUNCHED("attention softmax", "T=%d Hk=%d", T, s->Hk);
			TRY(ft_cu_gemm_batched(dm, 0, 0, T, hd, T, 1, dm->att_s, T, TT, vb, ldk,
					       hd, 0, out + (size_t)b * T * ldq + j * hd, ldq,
					       (long long)grp * hd, s->Hk, "attention P V"));
		}
	}
	return 0;
}

int ft_cu_attention_backward(ft_cuda_model *dm, float *dq, float *dk, float *dv,
			     const float *dout, const float *q, const float *k,
			     const float *v, const float *out, const float *lse,
			     const ft_cu_attn *s)
{
	TRY(check_shape(dm, s));
	int T = s->T, hd = s->hd, grp = s->Hq / s->Hk, ldq = s->Hq * hd, ldk = s->Hk * hd;
	float scale = 1.0f / sqrtf((float)hd);
	long long TT = (long long)T * T, sq = (long long)grp * hd;
	size_t N = (size_t)s->B * T, nk = N * ldk;
	TRY(ft_cu_zero(dm, dk, nk * sizeof(float)));
	TRY(ft_cu_zero(dm, dv, nk * sizeof(float)));
	size_t NH = N * s->Hq;
	rowdot_k<<<(unsigned)((NH + 255) / 256), 256, 0, dm->stream>>>(dm->att_di, out, dout,
									NH, hd);
	LAUNCHED("attention rowdot", "N=%zu Hq=%d hd=%d", N, s->Hq, hd);
	for (int b = 0; b < s->B; b++) {
		const int32_t *seg = s->seg ? s->seg + (size_t)b * T : NULL;
		size_t oq = (size_t)b * T * ldq, ok = (size_t)b * T * ldk;
		for (int j = 0; j < grp; j++) {
			size_t oj = oq + (size_t)j * hd;
			TRY(ft_cu_gemm_batched(dm, 0, 1, T, T, hd, scale, q + oj, ldq, sq, k + ok,
					       ldk, hd, 0, dm->att_s, T, TT, s->Hk,
					       "attention scores (backward)"));
			TRY(ft_cu_gemm_batched(dm, 0, 1, T, T, hd, 1, dout + oj, ldq, sq, v + ok,
					       ldk, hd, 0, dm->att_p, T, TT, s->Hk, "attention dO V^T"));
			softmax_bwd_k<<<dim3(T, s->Hk), ATPB, 0, dm->stream>>>(
				dm->att_s, dm->att_p, lse, dm->att_di, seg, T, s->window, b, j,
				grp, s->Hq);
			LAUNCHED("attention softmax backward", "T=%d Hk=%d", T, s->Hk);
			TRY(ft_cu_gemm_batched(dm, 0, 0, T, hd, T, scale, dm->att_p, T, TT, k + ok,
					       ldk, hd, 0, dq + oj, ldq, sq, s->Hk, "attention dQ"));
			TRY(ft_cu_gemm_batched(dm, 1, 0, T, hd, T, scale, dm->att_p, T, TT, q + oj,
					       ldq, sq, 1, dk + ok, ldk, hd, s->Hk, "attention dK"));
			TRY(ft_cu_gemm_batched(dm, 1, 0, T, hd, T, 1, dm->att_s, T, TT, dout + oj,
					       ldq, sq, 1, dv + ok, ldk, hd, s->Hk, "attention dV"));
		}
	}
	return 0;
}
