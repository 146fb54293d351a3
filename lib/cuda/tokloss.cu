/* tokloss.cu - the device half of LLaMA-Factory's EAFT token loss
 * (lib/model/model_tokloss.c is the reference): the entropy of the
 * softmax over each label position's 20 largest logits, from which the
 * host computes the weight (h / 3)^alpha as the CPU does.  DFT needs
 * nothing here: its weight is exp of the label log-prob that pref.cu's
 * ft_cuda_logps_forward already returns, and both losses' gradients are
 * ft_cuda_logps_backward's with dL/dlogp = -w (lib/train/cuda_losses.c).
 *
 * The rows are the n gathered into dm->head_x by the last
 * ft_cuda_logps_forward; their logits are computed again head_chunk rows
 * at a time into the head's scratch (soft-capped on Gemma 2, as the CPU),
 * one block per row: each thread keeps the top 20 of its stride of the
 * row (kernels.h's insertion, the CPU's), thread 0 merges the lists and
 * takes the entropy.  The top 20 of a row is one multiset whichever
 * thread saw which value, so the merged list and the entropy are the
 * CPU's. */
#include "cuda/common.cuh"

#define EAFT_TPB 32

static __global__ void eaft_entropy_k(const float *l, double *h, int V)
{
	__shared__ float top[EAFT_TPB * FT_EAFT_TOPK];
	__shared__ int cnt[EAFT_TPB];
	const float *row = l + (size_t)blockIdx.x * V;
	float *mine = top + threadIdx.x * FT_EAFT_TOPK;
	int k = 0;
	for (int j = threadIdx.x; j < V; j += blockDim.x)
		ft_k_topk_insert(mine, &k, row[j]);
	cnt[threadIdx.x] = k;
	__syncthreads();
	if (threadIdx.x != 0)
		return;
	float all[FT_EAFT_TOPK];
	int n = 0;
	for (int t = 0; t < (int)blockDim.x; t++)
		for (int i = 0; i < cnt[t]; i++)
			ft_k_topk_insert(all, &n, top[t * FT_EAFT_TOPK + i]);
	h[blockIdx.x] = ft_k_topk_entropy(all, n);
}

int ft_cuda_eaft_entropy(ft_cuda_model *dm, int n, double *h)
{
	int D = dm->v.D, V = dm->v.V, chunk = dm->head_chunk;
	if (V < FT_EAFT_TOPK)
		return ft_fail("use_eaft_loss needs a vocabulary of at least %d tokens", FT_EAFT_TOPK);
	ft_mat w = ft_cu_weight(dm, dm->lm_head);
	float cap = dm->v.final_softcap;
	for (int r0 = 0; r0 < n; r0 += chunk) {
		int nr = n - r0 < chunk ? n - r0 : chunk;
		ft_mat xo;
		TRY(ft_cu_operand(dm, &xo, dm->head_x + (size_t)r0 * D, (size_t)nr * D, dm->hx, w.half));
		TRY(ft_cu_gemm(dm, 0, 1, nr, V, D, 1, xo, D, w, D, 0, dm->head_scratch, V,
			       "lm_head logits (EAFT)"));
		if (cap > 0)
			TRY(ft_cu_softcap(dm, dm->head_scratch, (size_t)nr * V, cap));
		/* row_loss is free: logps_forward has copied its log-probs out */
		FT_LAUNCH(eaft_entropy_k, nr, EAFT_TPB, 0, dm->stream)(dm->head_scratch,
								     dm->row_loss + r0, V);
		LAUNCHED("eaft_entropy", "rows=%d V=%d", nr, V);
	}
	if (n > 0)
		TRY(ft_cu_copy(dm, h, dm->row_loss, (size_t)n * sizeof(double), cudaMemcpyDeviceToHost,
			       "EAFT's entropies"));
	return 0;
}
