/* asft.cu - LLaMA-Factory's ASFT loss on the device, mirroring
 * lib/model/model_asft.c (asft_run, asft_row): over the n label positions
 * of a micro-batch,
 *
 *   L = 1/n sum_i ce_i w_i + alpha/n sum_i KL(q_i || p_i),
 *   dL/dz = (w (p - onehot(y)) + alpha (p - q)) / n      (w = exp(-ce) detached)
 *
 * with q the frozen reference model's softmax.  The reference is a device
 * model of its own (its final hidden rows and logits in its buffers, on
 * its stream); the two streams meet by host waits: after the reference's
 * forward and after its logits of each chunk, and before the next chunk
 * overwrites them.  One block per row computes both log-sum-exps, the
 * DFT term, the KL and, training, the row's gradient in place (through
 * the soft cap on Gemma 2, from the capped value as the CPU's
 * ft_softcap_backward), in the CPU's arithmetic (double sums, torch's
 * float32 per-token ce and its exp); the per-row terms are summed on the
 * host in row order.  Then dx = G W and dW += G^T x, as the LM head. */
#include "cuda/common.cuh"

#define ATPB 256

static __global__ void asft_k(float *z, const float *zr, const int32_t *targets, int V,
			      double alpha, int grad, double gs, float cap, double *dft, double *kl)
{
	__shared__ float shf[ATPB];
	__shared__ double shd[ATPB];
	float *row = z + (size_t)blockIdx.x * V;
	const float *rr = zr + (size_t)blockIdx.x * V;
	int tg = targets[blockIdx.x];
	float mz = -INFINITY, mr = -INFINITY;
	for (int j = threadIdx.x; j < V; j += blockDim.x) {
		mz = fmaxf(mz, row[j]);
		mr = fmaxf(mr, rr[j]);
	}
	mz = ft_cu_block_max(mz, shf);
	mr = ft_cu_block_max(mr, shf);
	double sz = 0, sr = 0;
	for (int j = threadIdx.x; j < V; j += blockDim.x) {
		sz += exp((double)row[j] - mz);
		sr += exp((double)rr[j] - mr);
	}
	sz = ft_cu_block_sum(sz, shd);
	sr = ft_cu_block_sum(sr, shd);
	double lz = mz + log(sz), lr = mr + log(sr), k = 0;
	float ce = (float)(lz - row[tg]), w = expf(-ce);
	__syncthreads();   /* everyone has read row[tg] before it changes */
	for (int j = threadIdx.x; j < V; j += blockDim.x) {
		double lq = rr[j] - lr, lp = row[j] - lz, q = exp(lq);
		k += q * (lq - lp);   /* kl_div's xlogy: q = 0 adds 0 */
		if (!grad)
			continue;
		double p = exp(lp);
		float d = (float)(gs * (w * p + alpha * (p - q)));
		if (j == tg)
			d -= (float)(gs * w);
		row[j] = cap > 0 ? ft_k_softcap_grad(d, row[j], cap) : d;
	}
	k = ft_cu_block_sum(k, shd);
	if (threadIdx.x == 0) {
		dft[blockIdx.x] = (double)ce * w;
		kl[blockIdx.x] = k;
	}
}

/* The logits of rows [r0, r0 + nr) of m's head_x into its head_scratch. */
static int logits(ft_cuda_model *m, int r0, int nr, ft_mat *xo)
{
	int D = m->v.D, V = m->v.V;
	ft_mat w = ft_cu_weight(m, m->lm_head);
	TRY(ft_cu_operand(m, xo, m->head_x + (size_t)r0 * D, (size_t)nr * D, m->hx, w.half));
	TRY(ft_cu_gemm(m, 0, 1, nr, V, D, 1, *xo, D, w, D, 0, m->head_scratch, V,
		       "lm_head logits (ASFT)"));
	if (m->v.final_softcap > 0)
		TRY(ft_cu_softcap(m, m->head_scratch, (size_t)nr * V, m->v.final_softcap));
	return 0;
}

/* Chunk [r0, r0 + nr): both models' logits, the rows' terms into
 * dm->row_loss (DFT) and ref->row_loss (KL), and with grad the head's
 * gradients. */
static int chunk(ft_cuda_model *dm, ft_cuda_model *ref, int r0, int nr, double alpha, int grad,
		 double scale)
{
	int D = dm->v.D, V = dm->v.V;
	ft_mat xo, xr, go;
	TRY(logits(ref, r0, nr, &xr));
	TRY(ft_cuda_sync(ref));
	TRY(logits(dm, r0, nr, &xo));
	FT_LAUNCH(asft_k, nr, ATPB, 0, dm->stream)(dm->head_scratch, ref->head_scratch,
						   dm->targets + r0, V, alpha, grad, scale,
						   dm->v.final_softcap, dm->row_loss + r0,
						   ref->row_loss + r0);
	LAUNCHED("asft", "rows=%d V=%d", nr, V);
	if (grad) {
		ft_dt *W = dm->lm_head;
		ft_mat w = ft_cu_weight(dm, W);
		TRY(ft_cu_operand(dm, &go, dm->head_scratch, (size_t)nr * V, dm->hhead, w.half));
		TRY(ft_cu_gemm(dm, 0, 0, nr, D, V, 1, go, V, w, D, 0, dm->head_dx + (size_t)r0 * D, D,
			       "lm_head dx (ASFT)"));
		if (W->g)
			TRY(ft_cu_gemm(dm, 1, 0, V, D, nr, 1, go, V, xo, D, 1, W->g, D,
				       "lm_head dW (ASFT)"));
	}
	return ft_cuda_sync(dm);   /* before the next chunk overwrites ref's logits */
}

int ft_cuda_asft(ft_cuda_model *dm, ft_cuda_model *ref, const ft_cuda_batch *b, int train,
		 float grad_scale, double alpha, double *loss)
{
	if (!ref || ref == dm)
		return ft_fail("use_asft_loss: no reference model on the device");
	if (ref->v.V != dm->v.V)
		return ft_fail("use_asft_loss: the reference model's vocabulary (%d) is not the model's (%d)",
			       ref->v.V, dm->v.V);
	if (!b->labels)
		return ft_fail("batch: no labels");
	ref->training = 0;
	int n = 0, nr = 0;
	TRY(ft_cu_forward_body(ref, b));
	TRY(ft_cu_gather_targets(ref, b, &nr));
	TRY(ft_cuda_sync(ref));
	dm->training = train;
	if (train)
		dm->dropout_calls++;
	TRY(ft_cu_forward_body(dm, b));
	TRY(ft_cu_gather_targets(dm, b, &n));
	*loss = 0;
	if (n != nr)
		return ft_fail("use_asft_loss: the reference model saw another batch");
	if (n == 0)
		return 0;
	int ch = dm->head_chunk < ref->head_chunk ? dm->head_chunk : ref->head_chunk;
	/* fp16: the loss scale rides on the gradient; the step unscales */
	double scale = train ? (double)(grad_scale * (float)dm->loss_scale) / n : 0;
	for (int r0 = 0; r0 < n; r0 += ch)
		TRY(chunk(dm, ref, r0, n - r0 < ch ? n - r0 : ch, alpha, train, scale));
	double sd = 0, sk = 0;
	TRY(ft_cu_copy(dm, dm->h_row_loss, dm->row_loss, (size_t)n * sizeof(double),
		       cudaMemcpyDeviceToHost, "ASFT's DFT terms"));
	for (int i = 0; i < n; i++)
		sd += dm->h_row_loss[i];
	TRY(ft_cu_copy(ref, ref->h_row_loss, ref->row_loss, (size_t)n * sizeof(double),
		       cudaMemcpyDeviceToHost, "ASFT's KL terms"));
	for (int i = 0; i < n; i++)
		sk += ref->h_row_loss[i];
	*loss = sd / n + alpha * sk / n;
	ft_cu_sample_peak(dm);
	if (!train)
		return 0;
	dm->grads_scale = dm->loss_scale;
	return ft_cu_backward_body(dm, b, n);
}
