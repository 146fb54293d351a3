/* lmhead.cu - LM head + cross-entropy in row chunks, as ft_lm_head_loss
 * (lib/model/layers.c): logits for `head_chunk` rows at a time (fp32, from
 * half or fp32 operands), one block per row for the log-sum-exp, loss and
 * in-place gradient, then dx = G W and dW += G^T x for the chunk.
 * Per-row losses are summed on the host in row order (deterministic). */
#include "cuda/common.cuh"

#define CTPB 256

/* Block per row: loss[row] (double) and, when grad, G in place; cap > 0:
 * the logits are soft-capped (Gemma 2), G taken through the cap from the
 * capped value it overwrites, as ft_lm_head_loss_cap; ls: label smoothing
 * (ft_k_ce_loss, ft_k_ce_grad_ls), the row's logit sum a block sum. */
static __global__ void ce_k(float *l, double *loss, const int32_t *targets, int V,
			    float grad_scale, int grad, float cap, float ls)
{
	__shared__ float shf[CTPB];
	__shared__ double shd[CTPB];
	float *row = l + (size_t)blockIdx.x * V;
	int tg = targets[blockIdx.x];
	if (tg < 0 || tg >= V) {
		if (grad)
			for (int j = threadIdx.x; j < V; j += blockDim.x)
				row[j] = 0;
		if (threadIdx.x == 0)
			loss[blockIdx.x] = 0;
		return;
	}
	float mx, lt;
	double sum;
	ft_cu_row_lse(row, V, tg, shf, shd, &mx, &sum, &lt);
	double zs = 0;   /* label smoothing: the row's logits summed */
	if (ls != 0) {
		for (int j = threadIdx.x; j < V; j += blockDim.x)
			zs += row[j];
		zs = ft_cu_block_sum(zs, shd);
	}
	if (threadIdx.x == 0)
		loss[blockIdx.x] = ft_k_ce_loss(mx, sum, lt, zs, ls, V);
	if (grad)
		for (int j = threadIdx.x; j < V; j += blockDim.x) {
			float z = row[j];
			float d = ft_k_ce_grad_ls(expf(z - mx) * (float)(grad_scale / sum), grad_scale,
						  j == tg, ls, V);
			row[j] = cap > 0 ? ft_k_softcap_grad(d, z, cap) : d;
		}
}

int ft_cu_lm_head_loss(ft_cuda_model *dm, float *dx, float *logits, const float *x,
		       const int32_t *targets, int n, float grad_scale, double *loss)
{
	int D = dm->v.D, V = dm->v.V, chunk = dm->head_chunk;
	float cap = dm->v.final_softcap;
	ft_dt *W = dm->lm_head;
	ft_mat w = ft_cu_weight(dm, W);
	for (int r0 = 0; r0 < n; r0 += chunk) {
		int nr = n - r0 < chunk ? n - r0 : chunk;
		const float *xc = x + (size_t)r0 * D;
		ft_mat xo, go;
		TRY(ft_cu_operand(dm, &xo, xc, (size_t)nr * D, dm->hx, w.half));
		TRY(ft_cu_gemm(dm, 0, 1, nr, V, D, 1, xo, D, w, D, 0, dm->head_scratch, V,
			       "lm_head logits"));
		if (cap > 0)
			TRY(ft_cu_softcap(dm, dm->head_scratch, (size_t)nr * V, cap));
		if (logits) {
			CU(cudaMemcpyAsync(logits + (size_t)r0 * V, dm->head_scratch,
					   (size_t)nr * V * sizeof(float), cudaMemcpyDeviceToHost,
					   dm->stream), "logits rows %d..%d, V=%d", r0, r0 + nr, V);
		}
		FT_LAUNCH(ce_k, nr, CTPB, 0, dm->stream)(dm->head_scratch, dm->row_loss + r0,
						  targets + r0, V, grad_scale, dx != NULL, cap,
						  dm->v.label_smoothing);
		LAUNCHED("cross_entropy", "rows=%d V=%d", nr, V);
		if (!dx)
			continue;
		TRY(ft_cu_operand(dm, &go, dm->head_scratch, (size_t)nr * V, dm->hhead, w.half));
		TRY(ft_cu_gemm(dm, 0, 0, nr, D, V, 1, go, V, w, D, 0, dx + (size_t)r0 * D, D,
			       "lm_head dx"));
		if (W->g)
			TRY(ft_cu_gemm(dm, 1, 0, V, D, nr, 1, go, V, xo, D, 1, W->g, D,
				       "lm_head dW"));
	}
	double s = 0;
	if (n > 0) {
		CU(cudaMemcpyAsync(dm->h_row_loss, dm->row_loss, (size_t)n * sizeof(double),
				   cudaMemcpyDeviceToHost, dm->stream), "%d row losses", n);
		CU(cudaStreamSynchronize(dm->stream), "after the LM head, %d rows", n);
	}
	for (int i = 0; i < n; i++)
		s += dm->h_row_loss[i];
	*loss = s;
	return 0;
}
